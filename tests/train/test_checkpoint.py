"""Checkpoints are atomic units: a crash mid-save leaves the last good one; loading is weights-only."""

from __future__ import annotations

import os
import pickle

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


@pytest.mark.parametrize("phase", ["files", "rename"])
def test_crash_mid_save_keeps_last_good(tmp_path, phase):
    _save(tmp_path, 1, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _save(tmp_path, 2, seed=7, _crash_after=phase)
    latest = ck.resolve_latest(tmp_path)
    if phase == "files":  # the half-written folder never got a final name
        assert latest.name == "step_00000001"
        assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    else:  # renamed but `latest` not moved: still a complete, consistent unit; the pointer names step 1
        assert latest.name == "step_00000001"
    m = _model(3)
    m.load_state_dict(ck.load_model_payload(tmp_path)["model"])
    assert torch.equal(m[0].weight, _model(0)[0].weight)


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
