# TorchSAE: the user's verbs. Every target builds or refreshes .venv from requirements.lock first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lock-stamp
RECIPE ?= recipes/quickstart.toml
NPROC ?= 1
CKPT ?=
FORMAT ?= dfm
OUT ?=
DEVICE ?=
PYTEST_WORKERS ?= 2
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv train test test-latest parity bench data export merge eval clean-venv

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests

# The suite against the newest versions pyproject.toml allows (not the lock): a second venv, .venv-latest,
# rebuilt from pyproject's ranges with every dependency upgraded to its newest allowed release (torch stays
# at its pin). Catches a new major release (e.g. OpenCV 5) before users installing with pip do.
LATEST_VENV := .venv-latest
test-latest:
	@test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[test]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/resolved.txt
	@grep -iE '^(torch|numpy|opencv-python-headless|onnx|onnxruntime|scipy|pillow)==' $(LATEST_VENV)/resolved.txt
	$(LATEST_VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) -m "not slow" tests

parity: $(STAMP)
	$(PY) -m pytest -q -m "parity" tests

bench: $(STAMP)
	$(PY) -m bench $(if $(SUITE),--suite $(SUITE),) $(if $(OVERWRITE),--overwrite,) $(if $(DEVICE),--device $(DEVICE),)

data: $(STAMP)
	$(PY) -m engine demo-data --out workspace/demo

train: $(STAMP)
	@if [ "$(RECIPE)" = "recipes/quickstart.toml" ] && [ ! -d workspace/demo/data_src/aligned ]; then $(MAKE) data; fi
	@if [ "$(NPROC)" -gt 1 ]; then \
	  $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) -m engine train $(RECIPE) $(ARGS); \
	else \
	  $(PY) -m engine train $(RECIPE) $(ARGS); \
	fi

export: $(STAMP)
	$(PY) -m engine export $(if $(CKPT),$(CKPT),$(RECIPE)) --format $(FORMAT) $(ARGS)

merge: $(STAMP)
	$(PY) -m engine merge $(RECIPE) $(ARGS)

# CKPT: checkpoints, run folders, .onnx/.dfm files (several: CKPT="a.pt b.dfm"); none = every checkpoint of RECIPE's run
eval: $(STAMP)
	$(PY) -m engine eval $(if $(CKPT),$(CKPT),$(RECIPE)) --out $(if $(OUT),$(OUT),runs/eval) $(ARGS)

clean-venv:
	rm -rf $(VENV)
