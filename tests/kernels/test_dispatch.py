"""kernels/dispatch.py: the one set of rules every op's choice follows (a made-up op exercises them), and the
three real ops wired to it: auto falls back and logs why, an explicit request that cannot run raises, a word
naming no implementation of an op runs auto and says so, force_reference() overrides everything, each line
once per process."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import dfl_update, dispatch, dssim, warp
from kernels.dfl_update import cpu as dfl_cpu
from kernels.dssim import cpu as dssim_cpu
from kernels.errors import KernelChoiceError, KernelError, KernelUnavailableError
from kernels.warp import cpu as warp_cpu


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)


def _never():
    raise AssertionError("evaluated a candidate the rules did not need")


def _toy(impl, device="cpu", cpu_why=None, triton_why="no CUDA here"):
    candidates = {"reference": None, "batched": None, "cpu": (lambda: cpu_why), "triton": (lambda: triton_why)}
    order = ("cpu", "batched") if torch.device(device).type == "cpu" else ("triton", "batched")
    return dispatch.choose("toy", device, impl, candidates, order)


def test_auto_takes_the_first_runnable_and_logs_each_skip(caplog):
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        assert _toy("auto") == "cpu"
        assert _toy("auto", cpu_why="the C kernel cannot be built: no C compiler") == "batched"
    assert "toy: cpu (auto on cpu)" in caplog.text
    assert "toy: batched (auto on cpu: cpu unavailable: the C kernel cannot be built: no C compiler)" in caplog.text


def test_explicit_requests_run_or_raise_never_substitute():
    assert _toy("batched") == "batched" and _toy("reference") == "reference" and _toy("cpu") == "cpu"
    with pytest.raises(KernelUnavailableError, match="toy: cpu was requested but no compiler"):
        _toy("cpu", cpu_why="no compiler")
    with pytest.raises(KernelUnavailableError, match=r"toy: triton \(fast on cuda\) was requested but no CUDA here"):
        _toy("fast", device="cuda")
    assert _toy("fast", triton_why=None) == "cpu"  # fast = cpu for CPU tensors


def test_a_word_naming_no_implementation_of_the_op_runs_auto_and_says_so(caplog):
    def no_triton(impl):
        return dispatch.choose("toy2", "cpu", impl, {"reference": None, "cpu": None}, ("cpu", "reference"))

    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        assert no_triton("triton") == "cpu"
    assert "toy2: cpu (triton requested, which names no toy2 implementation; auto on cpu)" in caplog.text


def test_candidates_are_evaluated_only_when_the_rules_need_them():
    lazy = {"reference": None, "cpu": _never, "triton": _never}
    assert dispatch.choose("lazy", "cpu", "reference", lazy, ("cpu", "reference")) == "reference"
    lazy_auto = {"reference": None, "batched": None, "cpu": None, "triton": _never}
    assert dispatch.choose("lazy", "cpu", "auto", lazy_auto, ("cpu", "batched")) == "cpu"


def test_request_precedence_and_validation(monkeypatch):
    monkeypatch.setenv("TORCHSAE_KERNELS", "reference")
    assert _toy("auto") == "reference"  # auto defers to the environment
    assert _toy("batched") == "batched"  # an explicit impl= wins over it
    monkeypatch.setenv("TORCHSAE_KERNELS", "fastest")
    with pytest.raises(KernelChoiceError, match="TORCHSAE_KERNELS = 'fastest': expected one of auto, reference, fast, "
                                                "cpu, triton, batched"):
        _toy("auto")
    with pytest.raises(KernelChoiceError, match="impl = 'gpu'"):
        _toy("gpu")
    assert issubclass(KernelChoiceError, (KernelError, ValueError))
    assert issubclass(KernelUnavailableError, (KernelError, RuntimeError))


def test_each_line_is_logged_once(caplog):
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        for _ in range(3):
            _toy("auto")
            _toy("reference")
    assert caplog.text.count("toy: cpu (auto on cpu)") == 1 and caplog.text.count("toy: reference (requested)") == 1


def test_force_reference_overrides_every_request_of_every_op(caplog):
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"), dispatch.force_reference("export"):
        assert dispatch.forced() == "export"
        assert dssim.choose("cpu", "cpu") == "reference"
        assert warp.choose("cpu", "triton") == "reference"
        assert dfl_update.choose("cuda", "batched") == "reference"
    assert dispatch.forced() is None
    assert "dssim: reference (forced: export)" in caplog.text and "warp: reference (forced: export)" in caplog.text
    assert dssim.choose("cpu", "cpu") == "cpu"  # restored on exit


class _Missing:
    """Stands in for a cpu module's LazyLibrary when the C source did not ship (the packaging bug)."""

    def __init__(self, source):
        self.reason = f"[Errno 2] No such file or directory: '{source}'"

    def get(self):
        return None


@pytest.mark.parametrize("name,mod,choose", [("dssim", dssim_cpu, dssim.choose), ("warp", warp_cpu, warp.choose),
                                             ("dfl_update", dfl_cpu, dfl_update.choose)])
def test_a_missing_c_source_is_named_explicit_raises_auto_falls_back(monkeypatch, caplog, name, mod, choose):
    monkeypatch.setattr(mod, "_LIB", _Missing(mod.SOURCE))
    with pytest.raises(KernelUnavailableError, match=f"{name}: cpu was requested but the C kernel cannot be built: "
                                                     r"\[Errno 2\] No such file or directory: .*_cpu\.c"):
        choose("cpu", "cpu")
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        fallback = choose("cpu")
    assert fallback == ("reference" if name == "dssim" else "batched")
    assert f"{name}: {fallback} (auto on cpu: cpu unavailable: the C kernel cannot be built: [Errno 2]" in caplog.text


def test_auto_per_op_and_device(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if not (dssim_cpu.available() and warp_cpu.available() and dfl_cpu.available()):
        pytest.skip("a C kernel is unavailable here")
    assert (dssim.choose("cpu"), warp.choose("cpu"), dfl_update.choose("cpu")) == ("cpu", "cpu", "cpu")
    assert dssim.choose("cpu", dtype=torch.float64) == "reference"
    assert dfl_update.choose("cpu", dtype=torch.float64) == "batched"
    if not torch.cuda.is_available():
        monkeypatch.setattr(dispatch, "_triton_importable", lambda: False)
        # a CUDA device without triton (what a CPU-only build reports for device "cuda")
        assert (dssim.choose("cuda"), warp.choose("cuda"), dfl_update.choose("cuda")) == \
            ("reference", "batched", "batched")
        # no CUDA at all: triton requested explicitly on CPU tensors raises (no TRITON_INTERPRET)
        with pytest.raises(KernelUnavailableError, match="warp: triton was requested but the Triton kernels run on "
                                                         "CUDA"):
            warp.choose("cpu", "triton")


def test_the_recipe_offers_exactly_the_request_words():
    """[compile].kernels is validated by the torch-free recipe layer with its own list: keep it in step."""
    import attrs

    from engine.recipe.specs import CompileSpec

    assert tuple(attrs.fields(CompileSpec).kernels.metadata["choices"]) == dispatch.REQUESTS


def test_the_cli_reports_a_kernel_error_like_any_user_error(monkeypatch, capsys, tmp_path):
    """Kernel errors are not TorchSAEErrors (kernels import nothing from engine); the CLI still prints them as
    one line and exits 2 instead of a traceback."""
    from engine import __main__ as cli

    class Boom:
        @staticmethod
        def run(args):
            raise KernelUnavailableError("dssim: cpu was requested but the C kernel cannot be built: no C compiler")

    monkeypatch.setattr(cli, "parse_command", lambda name, argv: (Boom, None))
    assert cli.main(["validate", "x.toml"]) == 2
    assert "torchsae validate: dssim: cpu was requested but" in capsys.readouterr().err
