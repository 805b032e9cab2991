"""Checkpoints are atomic units: a crash mid-save leaves the last good one; loading is weights-only."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle

import numpy as np

import pytest
import torch

from engine import recipe
from engine.errors import CheckpointError
from engine.train import checkpoint as ck


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))


TOML = recipe.dumps(recipe.loads("[model]\narchi = 'df-ud'\nresolution = 64\n"))


def _save(run, step, seed=0, **kw):
    return ck.save(run, step=step, model=_model(seed), recipe_toml=TOML, train_state={"rng": torch.arange(3)}, **kw)


def test_save_load_and_latest(tmp_path):
    p = _save(tmp_path, 5)
    assert p.name == "step_00000005" and (tmp_path / "checkpoints" / "latest").read_text().strip() == p.name
    payload = ck.load_model_payload(tmp_path)
    assert payload["step"] == 5 and payload["recipe_toml"] == TOML
    m = _model(1)
    m.load_state_dict(payload["model"])
    assert torch.equal(m[0].weight, _model(0)[0].weight)
    assert torch.equal(ck.load_train_state(p)["rng"], torch.arange(3))


def test_keep_last_prunes_oldest(tmp_path):
    for s in range(1, 6):
        _save(tmp_path, s, keep_last=2)
    names = [p.name for p in ck.complete_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000004", "step_00000005"]


# Crash points are real crashes: a child process saves with os.replace patched to os._exit at its n-th call
# (no test-only hook in production code), so what it leaves behind belongs to a dead process, as after kill -9.
_CRASHER = r"""
import os, sys, torch
from engine.train import checkpoint as ck
run, step, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
real, calls = os.replace, [0]
def replace(a, b):
    calls[0] += 1
    if calls[0] == n:
        os._exit(17)
    real(a, b)
os.replace = replace
torch.manual_seed(seed)
m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
ck.save(run, step=step, model=m, recipe_toml=sys.stdin.read(), train_state={"rng": torch.arange(3)})
"""


def _crash_save(run, step, seed, at_replace):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-c", _CRASHER, str(run), str(step), str(seed), str(at_replace)], input=TOML,
                       text=True, cwd=root, capture_output=True, timeout=120)
    assert r.returncode == 17, r.stderr


def _leftovers(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("at_replace,left", [(1, ".tmp-step_00000002-"), (2, ".latest.")],
                         ids=["before-folder-rename", "before-latest-moved"])
def test_crash_mid_save_keeps_last_good_and_leftovers_are_cleaned(tmp_path, at_replace, left):
    _save(tmp_path, 1, seed=0)
    _crash_save(tmp_path, 2, seed=7, at_replace=at_replace)
    assert any(n.startswith(left) for n in _leftovers(tmp_path))
    assert ck.resolve_latest(tmp_path).name == "step_00000001"  # `latest` still names the last complete save
    m = _model(3)
    m.load_state_dict(ck.load_model_payload(tmp_path)["model"])
    assert torch.equal(m[0].weight, _model(0)[0].weight)
    ck.recover(tmp_path)
    assert _leftovers(tmp_path) == []


def test_crash_between_the_renames_of_a_same_step_resave_is_put_back(tmp_path):
    _save(tmp_path, 1, seed=0)
    _save(tmp_path, 2, seed=1)
    _crash_save(tmp_path, 2, seed=7, at_replace=2)  # step_2 -> .old-step_2-<pid> done, new folder not in place
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    assert any(n.startswith(".old-step_00000002-") for n in _leftovers(tmp_path))
    done = ck.recover(tmp_path)
    assert any("restored step_00000002" in d for d in done) and _leftovers(tmp_path) == []
    m = _model(3)
    m.load_state_dict(ck.load_model_payload(tmp_path)["model"])
    assert torch.equal(m[0].weight, _model(1)[0].weight)  # the complete step-2 save from before the crash


def test_crash_after_a_resave_leaves_no_full_size_old_folder(tmp_path):
    _save(tmp_path, 2, seed=1)
    _crash_save(tmp_path, 2, seed=7, at_replace=3)  # both renames done, `latest` write interrupted
    _save(tmp_path, 3, seed=2)  # the next save cleans up what the dead writer left
    assert _leftovers(tmp_path) == []
    assert [p.name for p in ck.complete_checkpoints(tmp_path / "checkpoints")] == ["step_00000002", "step_00000003"]


def test_dangling_pointer_falls_back_to_newest_complete(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / "checkpoints" / "latest").write_text("step_99999999\n")
    assert ck.resolve_latest(tmp_path).name == "step_00000002"


def test_missing_and_foreign_files_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        ck.resolve_latest(tmp_path)
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        ck.load_model_payload(bad)
    torch.save({"format": "other"}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a TorchSAE checkpoint"):
        ck.load_model_payload(tmp_path / "y.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARK', '/tmp/torchsae-evil')}",))


def test_malicious_pickle_is_not_executed(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": ck.FORMAT, "model": _Evil()}, f)
    with pytest.raises(CheckpointError):
        ck.load_model_payload(evil)
    assert not mark.exists()


def test_incompatible_recipe_names_keys():
    other = recipe.loads("[model]\narchi = 'liae-ud'\nresolution = 64\nae_dims = 128\n")
    with pytest.raises(CheckpointError) as ei:
        ck.check_compatible(TOML, other, "run/ck")
    msg = str(ei.value)
    assert "model.archi: checkpoint 'df-ud' != recipe 'liae-ud'" in msg and "model.ae_dims" in msg
    ck.check_compatible(TOML, recipe.loads(TOML), "run/ck")  # same recipe: fine


def test_backup_rotation(tmp_path):
    p = _save(tmp_path, 1)
    for _ in range(3):
        ck.backup(tmp_path, p, slots=2)
    names = sorted(d.name for d in (tmp_path / "backups").iterdir())
    assert names == ["01", "02"] and (tmp_path / "backups" / "01" / ck.MODEL_FILE).is_file()


# ---------------------------------------------------------------------------------------------------------
# verification and fallback


def test_manifest_detects_a_bit_flip_and_a_run_folder_falls_back(tmp_path, caplog):
    _save(tmp_path, 1, seed=0)
    p2 = _save(tmp_path, 2, seed=1)
    manifest = json.loads((p2 / ck.MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {ck.MODEL_FILE, ck.STATE_FILE, ck.RECIPE_FILE}
    (p2 / ck.MODEL_FILE).write_bytes(_corrupted((p2 / ck.MODEL_FILE).read_bytes()))
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        ck.load(p2)  # named explicitly: an error
    with caplog.at_level(logging.WARNING, logger="torchsae.train"):
        loaded = ck.load(tmp_path)  # the run folder: the newest checkpoint that verifies, with a warning
    assert loaded.path.name == "step_00000001" and loaded.payload["step"] == 1
    assert "step_00000002 is unusable" in caplog.text


def _corrupted(data: bytes) -> bytes:
    """One bit flipped inside a tensor's bytes (the zip archive stays readable: only the hash can tell)."""
    buf = bytearray(data)
    obj = torch.load(io.BytesIO(data), weights_only=True)
    raw = obj["model"]["0.weight"].numpy().tobytes()
    i = bytes(buf).find(raw)
    assert i > 0
    buf[i + 5] ^= 0x10
    assert torch.load(io.BytesIO(bytes(buf)), weights_only=True)["step"] == obj["step"]  # loads silently
    return bytes(buf)


@pytest.mark.parametrize("which", [ck.MODEL_FILE, ck.STATE_FILE])
def test_zero_length_or_missing_files_are_clear_errors_and_fall_back(tmp_path, which, caplog):
    _save(tmp_path, 1, seed=0)
    p2 = _save(tmp_path, 2, seed=1)
    (p2 / which).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty file \(0 bytes\)"):
        ck.load(p2)
    assert ck.load(tmp_path).path.name == "step_00000001"
    (p2 / which).unlink()
    if which == ck.STATE_FILE:
        with pytest.raises(CheckpointError, match="train_state.pt is missing.*fresh optimizer state"):
            ck.load(p2)
        assert ck.load(p2, train_state=False).payload["step"] == 2  # inference needs model.pt only
    assert ck.load(tmp_path).path.name == "step_00000001"


def test_legacy_checkpoint_without_manifest_still_loads(tmp_path):
    p = _save(tmp_path, 1)
    (p / ck.MANIFEST_FILE).unlink()
    assert ck.load(tmp_path).payload["step"] == 1


def test_refused_pickle_says_what_was_refused_and_that_nothing_ran(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": ck.FORMAT, "model": _Evil()}, f, protocol=2)
    with pytest.raises(CheckpointError) as ei:
        ck.load_model_payload(evil)
    msg = str(ei.value)
    assert "refused to load: it asks for 'posix.system'" in msg and "Nothing was executed" in msg
    assert "\x1b" not in msg and "weights_only" not in msg
    np_ckpt = tmp_path / "np.pt"
    torch.save({"format": ck.FORMAT, "model": {"w": np.zeros(3)}}, np_ckpt)  # numpy inside: also refused
    with pytest.raises(CheckpointError, match=r"asks for 'numpy\..*_reconstruct'.*Nothing was executed") as ei:
        ck.load_model_payload(np_ckpt)
    assert "\x1b" not in str(ei.value)


def test_non_finite_weights_are_never_saved_and_are_skipped_on_load(tmp_path):
    _save(tmp_path, 1, seed=0)
    bad = _model(1)
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to save step 2: non-finite weights in 0.weight"):
        ck.save(tmp_path, step=2, model=bad, recipe_toml=TOML, train_state={})
    assert [p.name for p in ck.complete_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    # a NaN that reached disk anyway (written by something else) is skipped by a run-folder load
    p2 = _save(tmp_path, 2, seed=1)
    payload = torch.load(p2 / ck.MODEL_FILE, weights_only=True)
    payload["model"]["0.weight"][0, 0] = float("nan")
    torch.save(payload, p2 / ck.MODEL_FILE)
    (p2 / ck.MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match="non-finite weights"):
        ck.load(p2)
    assert ck.load(tmp_path).path.name == "step_00000001"


def test_the_latest_pointer_and_the_checkpoints_folder_resolve(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    assert ck.load_model_payload(tmp_path / "checkpoints" / "latest")["step"] == 2
    assert ck.load_model_payload(tmp_path / "checkpoints")["step"] == 2
    assert ck.resolve(tmp_path / "checkpoints" / "latest").name == "step_00000002"


def test_pretrain_checkpoints_have_their_own_names_and_pruning(tmp_path):
    for s in (1, 2, 3):
        _save(tmp_path, s, pretrain=True, keep_last=2)
    for s in (1, 2, 3):  # the normal phase restarts its counter: no collision with the pretrain saves
        _save(tmp_path, s, seed=5, keep_last=2)
    names = [p.name for p in ck.complete_checkpoints(tmp_path / "checkpoints")]
    assert names == ["pretrain_step_00000002", "pretrain_step_00000003", "step_00000002", "step_00000003"]
    assert ck.resolve_latest(tmp_path).name == "step_00000003"
    assert ck.load_model_payload(tmp_path / "checkpoints" / "pretrain_step_00000003")["step"] == 3


def test_stale_partial_files_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    _save(tmp_path, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / "checkpoints" / f".latest.{dead}-1234.partial"
    stale.write_text("step_")
    mine = tmp_path / "checkpoints" / f".latest.{os.getpid()}-1234.partial"  # a live writer's: kept
    mine.write_text("step_")
    ck.recover(tmp_path)
    assert not stale.exists() and mine.exists()
