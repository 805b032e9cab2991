"""The loop's data side (issue #12): loader wait in the progress bar / TensorBoard / summary.json, the device
pipeline as the default, and [compile].mode = "reduce-overhead" (CUDA graphs; eager with a logged reason
without CUDA)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from engine import recipe
from engine.train import loopstats
from engine.train.compiled import StaticInputs, resolve_mode
from engine.train.build import build_trainer
from engine.train.loop import train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tests" / "tiny_df.toml"


def _load(facesets, run_dir, *extra):
    a, b = facesets
    return recipe.load(TINY, [f"data.src='{a}'", f"data.dst='{b}'", f"train.run_dir='{run_dir}'", *extra])


def test_loop_clock_splits_wait_and_wall(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(loopstats.time, "perf_counter", lambda: now[0])
    c = loopstats.LoopClock(window=2)
    for wait, step in ((1.0, 3.0), (0.0, 2.0), (0.5, 1.5)):
        c.data_begin()
        now[0] += wait
        c.data_end()
        now[0] += step
    c.iteration_end()
    assert c.loops == [4.0, 2.0, 2.0] and c.waits == [1.0, 0.0, 0.5]
    assert c.wait_pct() == pytest.approx(100 * 0.5 / 4.0)  # the last two iterations
    s = c.summary(warmup=1)
    assert s == {"loop_s_per_step": 2.0, "loader_wait_s_per_step": 0.25, "loader_wait_pct": pytest.approx(12.5)}
    assert loopstats.LoopClock().summary(3)["loop_s_per_step"] is None


def test_summary_and_tensorboard_report_loader_wait(facesets, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = _load(facesets, tmp_path / "run", "train.log_every=1", "data.workers='auto'", "data.pipeline='auto'")
    s = train(r, max_steps=5, progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s))
    assert summary["loop_s_per_step"] >= summary["median_s_per_step"] > 0
    assert 0 <= summary["loader_wait_pct"] < 100 and summary["loader_wait_s_per_step"] >= 0
    assert summary["data"]["pipeline"] == "device" and summary["data"]["device"] == "cpu"
    ev = EventAccumulator(str(tmp_path / "run" / "logs"))
    ev.Reload()
    assert {"loader/wait_pct", "loader/wait_s"} <= set(ev.Tags()["scalars"])


def test_reduce_overhead_runs_eagerly_without_cuda(facesets, tmp_path, caplog):
    assert resolve_mode("reduce-overhead", torch.device("cuda"))[0] == "reduce-overhead"
    assert resolve_mode("default", torch.device("cpu"))[0] == "default"
    r = _load(facesets, tmp_path / "run", "compile.mode='reduce-overhead'", "train.device='cpu'")
    with caplog.at_level(logging.INFO, logger="torchsae.train"):
        t = build_trainer(r)
    assert any("reduce-overhead: CUDA graphs need a CUDA device" in m for m in caplog.messages)
    assert t.compile_mode == "off" and t.step_inputs is None
    assert not hasattr(t.model.forward_train, "_torchdynamo_orig_callable")  # not compiled
    t.make_loader()
    try:
        t.apply_schedules()
        t.train_one(next(iter(t.loader)))
    finally:
        t.loader.close()
    assert t.step == 1


def test_static_inputs_keep_one_buffer_per_graphed_input():
    si = StaticInputs()
    a = {"warped_src": torch.rand(2, 3, 8, 8), "warped_dst": torch.rand(2, 3, 8, 8), "target_src": torch.rand(2, 3, 8, 8)}
    out1 = si(a)
    ptr = {k: out1[k].data_ptr() for k in si.keys}
    b = {k: torch.rand_like(v) for k, v in a.items()}
    out2 = si(b)
    for k in si.keys:
        assert out2[k].data_ptr() == ptr[k] and torch.equal(out2[k], b[k])
    assert out2["target_src"] is b["target_src"]  # not graphed: passed through
    out3 = si({k: torch.rand(1, 3, 8, 8) for k in a})  # another batch size: new buffers
    assert out3["warped_src"].shape[0] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_reduce_overhead_trains_on_cuda(facesets, tmp_path):
    """CUDA graphs: steps after recording match an eager twin's losses closely and never re-record."""
    r = _load(facesets, tmp_path / "g", "compile.mode='reduce-overhead'", "train.device='cuda'")
    e = _load(facesets, tmp_path / "e", "train.device='cuda'")
    tg, te = build_trainer(r), build_trainer(e)
    tg.model.load_state_dict(te.model.state_dict())
    te.make_loader()
    try:
        batches = [{k: v.clone() for k, v in next(iter(te.loader)).items()} for _ in range(5)]
    finally:
        te.loader.close()
    for b in batches:
        tg.apply_schedules()
        te.apply_schedules()
        lg, le = tg.train_one(b), te.train_one(b)
        assert abs(lg["G_loss"] - le["G_loss"]) <= 1e-3 * abs(le["G_loss"]) + 1e-4
    assert tg.step == 5
