"""What a run left going overnight must survive: the pretrain -> normal switch (once, also across resumes),
a NaN in the newest checkpoint (rollback to a finite one, bounded), a damaged or incomplete newest
checkpoint on resume (fallback with a warning), and preview pruning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from engine import recipe
from engine.errors import TorchSAEError
from engine.train import checkpoint as ck
from engine.train.build import build_trainer
from engine.train.loop import run, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tests" / "tiny_df.toml"


def _load(facesets, run_dir, *extra):
    a, b = facesets
    ov = [f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0", f"train.run_dir='{run_dir}'",
          "train.preview_every=1000", *extra]
    return recipe.load(TINY, ov)


def _names(run):
    return [p.name for p in ck.complete_checkpoints(Path(run) / "checkpoints")]


@pytest.mark.parametrize("target", [4, 2])
def test_pretrain_until_switches_once_and_reaches_the_target(facesets, tmp_path, caplog, target):
    a, _ = facesets
    r = _load(facesets, tmp_path / "run", "schedule.pretrain_until=3", f"data.pretrain_faceset='{a}'",
              f"train.target_iter={target}", "train.save_every_steps=2", "train.keep_last=5", "optim.lr_dropout='y'")
    with caplog.at_level(logging.INFO, logger="torchsae.train"):
        s = train(r, progress=False)
    assert caplog.text.count("pretrain finished") == 1
    # 3 pretrain steps, then target_iter after the counter restart (even when target_iter < pretrain_until)
    assert s["step"] == target and s["steps_done"] == 3 + target
    names = _names(tmp_path / "run")
    # the pretrain phase's saves (incl. the pretrained model at the switch) are kept beside the normal ones
    assert "pretrain_step_00000003" in names and names[-1] == f"step_{target:08d}"
    st = ck.load_train_state(tmp_path / "run")
    assert st["pretrain"] is False and st["pretrain_done"] is True
    assert st["g_opt"]["param_groups"][0]["lr_dropout"] == pytest.approx(0.3)  # lr_dropout back on after pretrain
    pre = ck.load_train_state(tmp_path / "run" / "checkpoints" / "pretrain_step_00000003")
    assert pre["pretrain"] is True and pre["g_opt"]["param_groups"][0]["lr_dropout"] == 1.0


def test_resume_after_the_switch_does_not_pretrain_again(facesets, tmp_path, caplog):
    a, _ = facesets
    extra = ("schedule.pretrain_until=2", f"data.pretrain_faceset='{a}'", "train.target_iter=0",
             "train.save_every_steps=1")
    train(_load(facesets, tmp_path / "run", *extra), max_steps=3, progress=False)  # 2 pretrain + 1 normal
    assert ck.resolve_latest(tmp_path / "run").name == "step_00000001"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="torchsae.train"):
        s = train(_load(facesets, tmp_path / "run", *extra), resume=True, max_steps=2, progress=False)
    assert "pretrain finished" not in caplog.text and s["step"] == 3


def test_turning_pretrain_off_on_resume_makes_dfls_switch(facesets, tmp_path, caplog):
    """DFL's flow: pretrain with pretrain=True, then continue the model with pretrain off (§11.6)."""
    a, _ = facesets
    train(_load(facesets, tmp_path / "run", "train.pretrain=true", f"data.pretrain_faceset='{a}'",
                "train.target_iter=0"), max_steps=2, progress=False)
    assert _names(tmp_path / "run")[-1] == "pretrain_step_00000002"
    with caplog.at_level(logging.INFO, logger="torchsae.train"):
        s = train(_load(facesets, tmp_path / "run", f"data.pretrain_faceset='{a}'", "train.target_iter=0"),
                  resume=True, max_steps=1, progress=False)
    assert caplog.text.count("pretrain finished") == 1 and s["step"] == 1
    assert ck.load_train_state(tmp_path / "run")["pretrain_done"] is True


def _poison(ckpt_dir: Path) -> None:
    payload = torch.load(ckpt_dir / ck.MODEL_FILE, weights_only=True)
    w = next(v for v in payload["model"].values() if v.is_floating_point() and v.dim())
    w[(0,) * w.dim()] = float("nan")
    torch.save(payload, ckpt_dir / ck.MODEL_FILE)
    (ckpt_dir / ck.MANIFEST_FILE).unlink()  # as if written that way: only the finiteness check can tell


def test_rollback_skips_a_checkpoint_with_nan_weights(facesets, tmp_path):
    r = _load(facesets, tmp_path / "run", "train.max_bad_steps=1", "train.target_iter=0", "train.save_every_steps=1")
    t = build_trainer(r)
    t.make_loader()
    run(t, max_steps=2, progress=False)
    _poison(tmp_path / "run" / "checkpoints" / "step_00000002")
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    t.apply_schedules()
    t.train_one(dict(batch, warped_src=torch.full_like(batch["warped_src"], float("nan"))))
    assert t.rollbacks == 1 and t.step == 1  # step 2's checkpoint was not finite: back to step 1
    assert all(torch.isfinite(v).all() for v in t.model.state_dict().values() if v.is_floating_point())
    t.apply_schedules()
    t.train_one(batch)
    assert t.step == 2 and t.skipped == 1
    t.loader.close()


def test_rollbacks_without_progress_stop_with_a_clear_error(facesets, tmp_path):
    r = _load(facesets, tmp_path / "run", "train.max_bad_steps=1", "train.max_rollbacks=3", "train.target_iter=0")
    t = build_trainer(r)
    t.make_loader()
    run(t, max_steps=1, progress=False)
    before = (tmp_path / "run" / "checkpoints" / "step_00000001" / ck.MODEL_FILE).read_bytes()
    batch = {k: v for k, v in next(iter(t.loader)).items() if torch.is_tensor(v)}
    nan = dict(batch, warped_src=torch.full_like(batch["warped_src"], float("nan")))
    with pytest.raises(TorchSAEError, match=r"training diverged: 3 rollbacks in a row did not get past step 1"):
        for _ in range(10):
            t.apply_schedules()
            t.train_one(nan)
    assert t.rollbacks == 4
    assert (tmp_path / "run" / "checkpoints" / "step_00000001" / ck.MODEL_FILE).read_bytes() == before
    t.loader.close()


def test_resume_falls_back_when_the_newest_checkpoint_is_damaged_or_incomplete(facesets, tmp_path, caplog):
    r = _load(facesets, tmp_path / "run", "train.target_iter=0", "train.save_every_steps=1", "train.keep_last=5")
    train(r, max_steps=3, progress=False)
    ckdir = tmp_path / "run" / "checkpoints"
    (ckdir / "step_00000003" / ck.STATE_FILE).unlink()  # deleted train state: never a silent fresh start
    (ckdir / "step_00000002" / ck.MODEL_FILE).write_bytes(b"")  # and a truncated one before it
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchsae.train"):
        s = train(r, resume=True, max_steps=1, progress=False)
    assert s["step"] == 2  # resumed from step 1
    assert "step_00000003 is unusable" in caplog.text and "train_state.pt is missing" in caplog.text
    assert "step_00000002 is unusable" in caplog.text and "empty file" in caplog.text


def test_keep_previews_prunes_old_previews(facesets, tmp_path):
    r = _load(facesets, tmp_path / "run", "train.preview_every=1", "train.keep_previews=2", "train.target_iter=0")
    train(r, max_steps=4, progress=False)
    previews = sorted(p.name for p in (tmp_path / "run" / "logs" / "previews").iterdir())
    assert previews == ["step_000003.png", "step_000004.png"]


def test_cli_resume_from_a_zero_length_checkpoint_is_a_clear_error(facesets, tmp_path, capsys):
    from engine.__main__ import main

    a, b = facesets
    ov = [f"data.src='{a}'", f"data.dst='{b}'", "data.workers=0", f"train.run_dir='{tmp_path / 'run'}'"]
    train(recipe.load(TINY, ov + ["train.target_iter=1"]), progress=False)
    (tmp_path / "run" / "checkpoints" / "step_00000001" / ck.MODEL_FILE).write_bytes(b"")
    assert main(["train", str(TINY), *ov, "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no usable checkpoint" in err and "model.pt: empty file (0 bytes)" in err, err
