"""The training loop end to end on tiny models: every recipe runs a step, exact resume, NaN guard,
previews, summary, incompatible checkpoints refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import recipe
from engine.errors import CheckpointError
from engine.train import checkpoint as ck
from engine.train.build import build_trainer
from engine.train.loop import run, train

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").rglob("*.toml"))


def _load(path, facesets, run_dir, *extra):
    a, b = facesets
    ov = [f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0", f"train.run_dir='{run_dir}'", *extra]
    if "identities" in Path(path).read_text():  # explicit graphs: the third identity trains on A's faces
        ov.append(f"data.identities={{alice='{a}'}}")
    return recipe.load(path, ov)


def _xseg_step(path, facesets, run_dir):
    """An XSeg recipe (kind = "xseg"): one step of DFL's XSeg at the recipe's own size, on faceset B (its
    stored xseg masks are the labels when no face has polygons, as DFL)."""
    from engine.xseg.train import XSegTrainer

    r = recipe.load(path, [f"xseg.facesets=['{facesets[1]}']", "xseg.workers=0", f"train.run_dir='{run_dir}'",
                           "train.batch_size=1"])
    t = XSegTrainer.create(r)
    t.make_loader()
    try:
        batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
        assert batch["image"].shape == (1, 3, r.xseg.resolution, r.xseg.resolution)
        before = next(t.net.parameters()).detach().clone()
        loss = t.train_one(batch)["loss"]
    finally:
        t.loader.close()
    assert t.step == 1 and np.isfinite(loss) and loss > 0
    assert not torch.equal(before, next(t.net.parameters()))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_every_recipe_runs_a_step(path, facesets, tmp_path):
    # Full-size recipes run one step at batch 1 (the architecture is the recipe's own).
    # No checkpoint is written here: saving a 145M-parameter model and its optimizer state is disk time, not
    # what this test is about (the tiny recipes exercise saving).
    if recipe.load(path).kind == "xseg":
        return _xseg_step(path, facesets, tmp_path / "run")
    r = _load(path, facesets, tmp_path / "run", "train.batch_size=1", "compile.mode='off'", "train.amp='off'")
    t = build_trainer(r)
    t.make_loader()
    try:
        t.apply_schedules()
        batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
        assert batch["warped_src"].shape == (1, 3, r.model.resolution, r.model.resolution)
        before = next(p for p in t.model.parameters() if p.requires_grad).detach().clone()
        losses = t.train_one(batch)
    finally:
        t.loader.close()
    assert t.step == 1 and t.skipped == 0
    assert np.isfinite(losses["G_loss"]) and losses["G_loss"] > 0
    assert not torch.equal(before, next(p for p in t.model.parameters() if p.requires_grad))


def _weights(run_dir):
    return ck.load_model_payload(run_dir)["model"]


def _state(run_dir):
    return ck.load_train_state(ck.resolve_latest(run_dir))


@pytest.mark.parametrize("name", ["tiny_df.toml", "tiny_liae.toml"])
def test_exact_resume_bit_for_bit(name, facesets, tmp_path):
    path = ROOT / "recipes" / "tests" / name
    extra = ["train.target_iter=0", "train.save_every_steps=0", "optim.lr_dropout='y'"]
    straight = _load(path, facesets, tmp_path / "straight", *extra)
    train(straight, max_steps=4, progress=False)
    split = _load(path, facesets, tmp_path / "split", *extra)
    train(split, max_steps=2, progress=False)
    train(split, resume=True, max_steps=2, progress=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = _state(tmp_path / "straight"), _state(tmp_path / "split")
    assert torch.equal(sa["history"], sb["history"]) and sa["step"] == sb["step"] == 4
    assert sa["loader"] == sb["loader"]


def test_new_run_refuses_existing_checkpoints_and_resume_needs_one(facesets, tmp_path):
    path = ROOT / "recipes" / "tests" / "tiny_df.toml"
    r = _load(path, facesets, tmp_path / "run")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(r, resume=True, max_steps=1, progress=False)
    train(r, max_steps=1, progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        train(r, max_steps=1, progress=False)
    other = _load(ROOT / "recipes" / "tests" / "tiny_liae.toml", facesets, tmp_path / "run")
    with pytest.raises(CheckpointError, match="model.archi: checkpoint 'df-ud' != recipe 'liae-ud'"):
        train(other, resume=True, max_steps=1, progress=False)


def test_preview_and_summary(facesets, tmp_path):
    r = _load(ROOT / "recipes" / "tests" / "tiny_df.toml", facesets, tmp_path / "run", "train.preview_every=1")
    s = train(r, max_steps=2, progress=False)
    previews = sorted((tmp_path / "run" / "logs" / "previews").glob("step_*.png"))
    assert [p.name for p in previews] == ["step_000001.png", "step_000002.png"]
    import cv2

    img = cv2.imread(str(previews[-1]))
    n = min(4, r.train.batch_size)
    label_band = img.shape[0] - 100 - n * 64  # labels (1-3 lines, wrapped to the column), loss graph, rows
    assert img.shape[1] == 7 * 64 and 20 <= label_band <= 48
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s))
    assert {"steps_done", "median_s_per_step", "final_losses", "checkpoint"} <= set(summary)
    assert set(summary["final_losses"]) >= {"src_loss", "dst_loss", "G_loss"}
    assert list((tmp_path / "run" / "logs").glob("events.out.tfevents.*")), "TensorBoard log missing"


def test_nan_guard_skips_then_rolls_back(facesets, tmp_path):
    r = _load(ROOT / "recipes" / "tests" / "tiny_df.toml", facesets, tmp_path / "run", "train.max_bad_steps=2",
              "train.lr_backoff=0.5")
    t = build_trainer(r)
    t.make_loader()
    run(t, max_steps=1, progress=False)  # a good checkpoint at step 1
    good = {k: v.clone() for k, v in t.model.state_dict().items()}
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    bad = dict(batch, warped_src=torch.full_like(batch["warped_src"], float("nan")))
    t.apply_schedules()
    t.train_one(bad)
    assert t.skipped == 1 and t.step == 1 and t.rollbacks == 0
    for k, v in t.model.state_dict().items():
        assert torch.equal(v, good[k]), f"{k} changed on a skipped step"
    t.train_one(bad)  # second in a row: roll back to the checkpoint and halve the lr
    assert t.rollbacks == 1 and t.lr_scale == 0.5 and t.step == 1
    t.apply_schedules()
    assert t.g_opt.param_groups[0]["lr"] == pytest.approx(r.optim.lr * 0.5)
    t.train_one(batch)
    assert t.step == 2 and t.bad_steps == 0
    t.loader.close()


def _part(run_dir, part):
    sd = ck.load_model_payload(run_dir)["model"]
    return {k: v for k, v in sd.items() if k.startswith(part + ".")}


def test_modular_graph_trains_every_identity_and_freezes_and_reuses_parts(facesets, tmp_path):
    path = ROOT / "recipes" / "tests" / "tiny_modular.toml"
    first = _load(path, facesets, tmp_path / "first", "train.target_iter=0")
    s = train(first, max_steps=2, progress=False)
    assert {"src_loss", "dst_loss", "alice_loss"} <= set(s["final_losses"])
    t0 = build_trainer(first, run_dir=tmp_path / "fresh")
    init = {k: v for k, v in t0.model.state_dict().items() if k.startswith("decoder_alice.")}
    trained = _part(tmp_path / "first", "decoder_alice")
    assert any(not torch.equal(init[k], trained[k]) for k in init), "alice's decoder did not train"
    # reuse alice's trained decoder in a new run and keep it frozen; the shared parts keep training
    ckpt = ck.resolve_latest(tmp_path / "first")
    second = _load(path, facesets, tmp_path / "second", "train.target_iter=0", "train.freeze=['decoder_alice']",
                   f"train.init_parts={{decoder_alice='{ckpt}'}}")
    train(second, max_steps=2, progress=False)
    reused = _part(tmp_path / "second", "decoder_alice")
    assert all(torch.equal(reused[k], trained[k]) for k in trained)
    assert not all(torch.equal(a, b) for a, b in zip(_part(tmp_path / "second", "encoder").values(),
                                                     _part(tmp_path / "first", "encoder").values()))
    bad = _load(path, facesets, tmp_path / "third", "train.freeze=['decoder_bob']")
    with pytest.raises(Exception, match="no model part named 'decoder_bob'"):
        build_trainer(bad)


def test_latent_distillation_from_a_teacher(facesets, tmp_path):
    path = ROOT / "recipes" / "tests" / "tiny_df.toml"
    teacher_run = tmp_path / "teacher"
    train(_load(path, facesets, teacher_run, "train.target_iter=0"), max_steps=1, progress=False)
    teacher = ck.resolve_latest(teacher_run)
    student = _load(path, facesets, tmp_path / "student", "train.target_iter=0", "loss.latent_distill_weight=1.0",
                    f"loss.latent_distill_teacher='{teacher}'")
    s = train(student, max_steps=1, progress=False)
    assert s["final_losses"]["latent_distill"] > 0
    g = s["final_losses"]
    assert g["G_loss"] == pytest.approx(g["src_loss"] + g["dst_loss"] + g["latent_distill"], rel=1e-5)


def test_ctrl_c_saves_and_stops(facesets, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    a, b = facesets
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine", "train", str(ROOT / "recipes" / "tests" / "tiny_df.toml"), f"data.src='{a}'",
           f"data.dst='{b}'", "data.workers=0", f"train.run_dir='{run}'", "train.target_iter=0",
           "train.save_every_steps=0", "train.preview_every=1000", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "latest").exists():  # DFL's first save after step 1
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "Ctrl-C" in out
    step = ck.load_model_payload(run)["step"]
    assert step >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == step and summary["checkpoint"].endswith(f"step_{step:08d}")


@pytest.mark.parametrize("amp,compile_mode", [("bf16", "off"), ("fp16", "off"), ("off", "default")])
def test_amp_and_compile_train(amp, compile_mode, facesets, tmp_path):
    # bf16/fp16 autocast (DSSIM accumulates in fp32; fp16 uses a grad scaler) and torch.compile run the real loop
    r = _load(ROOT / "recipes" / "tests" / "tiny_df.toml", facesets, tmp_path / "run", f"train.amp='{amp}'",
              f"compile.mode='{compile_mode}'", "train.target_iter=2")
    s = train(r, progress=False)  # fp16: the grad scaler's overflow steps (scale calibration) are retried
    assert s["step"] == 2 and s["skipped_steps"] == 0
    assert np.isfinite(s["final_losses"]["G_loss"])
    if amp == "fp16":
        assert "scaler" in _state(tmp_path / "run")


def test_compile_kernels_reaches_losses_optimizer_and_loader(facesets, tmp_path, monkeypatch, caplog):
    """[compile].kernels picks the implementation of every kernel the trainer uses (DSSIM in the loss, the
    warp in the loader, the optimizer update), not only $TORCHSAE_KERNELS."""
    import logging

    from kernels import dispatch

    monkeypatch.delenv("TORCHSAE_KERNELS", raising=False)
    monkeypatch.setattr(dispatch, "_logged", set())
    r = _load(ROOT / "recipes" / "tests" / "tiny_df.toml", facesets, tmp_path / "run", "compile.kernels='reference'")
    t = build_trainer(r)
    t.make_loader()
    try:
        assert t.step_fn.runtime.kernels == "reference"
        assert t.g_opt.opt.kernels == "reference"
        assert t.loader._loader.batches.warp_impl == "reference"
        t.apply_schedules()
        batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
        with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
            t.train_one(batch)
    finally:
        t.loader.close()
    assert "dssim: reference (requested)" in caplog.text and "dfl_update: reference (requested)" in caplog.text
    assert "fast" not in caplog.text


def _denormals_kept() -> bool:
    return (torch.tensor([1e-40]) * 1.0).item() != 0.0  # a float32 denormal survives unless flushed to zero


def test_training_scopes_its_process_settings(facesets, tmp_path):
    """Flush-to-zero, [train].threads and [train].deterministic hold while a run trains and are undone after:
    building a trainer changes none of them, and train() leaves torch as it found it."""
    from engine.train.device import process_settings

    threads = torch.get_num_threads()
    r = _load(ROOT / "recipes" / "tests" / "tiny_df.toml", facesets, tmp_path / "run", f"train.threads={threads + 1}",
              "train.deterministic=true")
    assert _denormals_kept() and not torch.are_deterministic_algorithms_enabled()
    with process_settings(r.train):
        assert torch.get_num_threads() == threads + 1 and torch.are_deterministic_algorithms_enabled()
        if torch.set_flush_denormal(True):  # the CPU can flush (x86 with SSE3)
            assert not _denormals_kept()
    assert _denormals_kept() and torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    build_trainer(r)
    assert _denormals_kept() and torch.get_num_threads() == threads
    train(r, max_steps=1, progress=False)
    assert _denormals_kept() and torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()



def test_both_trainers_satisfy_the_loop_protocol():
    """engine.train.loop.run drives SAEHD's Trainer and XSeg's XSegTrainer through LoopTrainer alone."""
    import attrs

    from engine.train.loop import LoopTrainer
    from engine.train.trainer import Trainer
    from engine.xseg.train import XSegTrainer

    members = [m for m in vars(LoopTrainer) if not m.startswith("_")] + list(LoopTrainer.__annotations__)
    for cls in (Trainer, XSegTrainer):
        fields = {f.name for f in attrs.fields(cls)}
        missing = [m for m in members if not hasattr(cls, m) and m not in fields]
        assert not missing, (cls.__name__, missing)
