"""bench/harness.py (the `python -m bench` driver the DSSIM benchmarks report through): storage and the gate.

pytest-benchmark itself is not run here; `run_suite` is replaced by synthetic rows.
"""

from __future__ import annotations

import json
import socket

import pytest

from bench import harness


def _row(name, median, provider="fast", group="g", items=8):
    return {"suite": "kernels", "name": name, "group": group, "provider": provider, "items": items, "extra": {},
            "median_s": median, "iqr_s": median / 10, "q1_s": median, "q3_s": median, "min_s": median,
            "mean_s": median, "stddev_s": 0.0, "rounds": 5, "iterations": 1}


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.delenv("OVERWRITE", raising=False)
    monkeypatch.delenv("BENCH_THRESHOLD", raising=False)
    return tmp_path / "results"


def _run(monkeypatch, rows, *argv):
    monkeypatch.setattr(harness, "run_suite", lambda suite, keyword: rows)
    monkeypatch.setattr(harness, "suites", lambda: ["kernels"])
    return harness.main(["--suite", "kernels", *argv])


def test_machine_id_is_cpu_and_cores_not_hostname(monkeypatch):
    m = harness.machine()
    assert m["id"].endswith(f"-{m['cores']}c")
    monkeypatch.setattr(socket, "gethostname", lambda: "another-host")
    monkeypatch.setattr(harness.platform, "node", lambda: "another-host")
    assert harness.machine()["id"] == m["id"]


def test_first_run_is_stored_with_provenance(results, monkeypatch, capsys):
    rc = _run(monkeypatch, [_row("a", 1.0, "reference"), _row("b", 0.25, "fast")])
    assert rc == 0
    files = list(results.glob("*/*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    for key in ("git_sha", "versions", "machine", "torch_threads", "created", "benchmarks"):
        assert key in doc
    assert {"torch", "numpy", "cv2", "python"} <= set(doc["versions"])
    out = capsys.readouterr().out
    assert "4.00x" in out  # fast vs reference: 1.0 / 0.25
    assert "32.0" in out  # items/s of the fast row: 8 / 0.25
    assert "this run becomes the baseline" in out


def test_regression_fails_and_is_not_stored_unless_overwrite(results, monkeypatch, capsys):
    assert _run(monkeypatch, [_row("a", 1.0)]) == 0
    (stored,) = list(results.glob("*/*.json"))
    before = stored.read_text()
    assert _run(monkeypatch, [_row("a", 1.2)]) == 0  # +20%: within the 25% threshold
    assert _run(monkeypatch, [_row("a", 1.6)]) == 1  # +33% vs the last stored 1.2
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "NOT stored" in out
    assert json.loads(stored.read_text())["benchmarks"][0]["median_s"] == 1.2
    assert _run(monkeypatch, [_row("a", 1.6)], "--overwrite") == 0
    assert json.loads(stored.read_text())["benchmarks"][0]["median_s"] == 1.6
    assert before != stored.read_text()


def test_threshold_option_and_same_day_merge(results, monkeypatch):
    assert _run(monkeypatch, [_row("a", 1.0), _row("b", 1.0)]) == 0
    assert _run(monkeypatch, [_row("a", 1.1)], "--threshold", "0.05") == 1
    assert _run(monkeypatch, [_row("a", 0.9)]) == 0  # faster is never a regression
    (stored,) = list(results.glob("*/*.json"))
    rows = {r["name"]: r["median_s"] for r in json.loads(stored.read_text())["benchmarks"]}
    assert rows == {"a": 0.9, "b": 1.0}  # b, not re-run, is kept


def test_previous_takes_the_newest_value_per_figure(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"created": "2026-01-02T00:00:00+00:00", "git_sha": "new",
                                                 "benchmarks": [_row("a", 2.0)]}))
    (tmp_path / "y.json").write_text(json.dumps({"created": "2026-01-01T00:00:00+00:00", "git_sha": "old",
                                                 "benchmarks": [_row("a", 1.0), _row("b", 3.0)]}))
    prev = harness._previous(tmp_path)
    assert prev["a"]["median_s"] == 2.0 and prev["a"]["sha"] == "new"
    assert prev["b"]["median_s"] == 3.0
