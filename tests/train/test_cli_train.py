"""`torchsae train` argument handling: overrides anywhere on the line (after flags too), shorthand flags
as recipe keys, and --resume followed by an override. Parsing only; training is tested elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.__main__ import parse_command
from engine.errors import RecipeErrors
from engine.recipe import resume_value
from engine.train.cli_train import recipe_from

ROOT = Path(__file__).resolve().parents[2]
DF256 = str(ROOT / "recipes" / "df256.toml")


def _recipe(argv: list[str]):
    _, args = parse_command("train", argv)
    resume = resume_value(args.resume, args.overrides)
    return recipe_from(args), resume, args


def test_overrides_after_flags(tmp_path):
    r, resume, _ = _recipe([DF256, "--run-dir", str(tmp_path / "D"), "model.ae_dims=384"])
    assert r.model.ae_dims == 384 and r.train.run_dir == str(tmp_path / "D") and resume is None
    r, _, _ = _recipe(["optim.lr=1e-4", DF256, "--steps", "10", "~loss.gan_power", "--batch-size", "2"])
    assert (r.optim.lr, r.train.target_iter, r.train.batch_size) == (1e-4, 10, 2)
    with pytest.raises(RecipeErrors, match="more than one recipe"):
        _recipe([DF256, "--steps", "10", DF256])
    with pytest.raises(RecipeErrors, match="no recipe on the command line"):
        _recipe(["model.ae_dims=384"])


def test_resume_then_an_override_resumes_the_latest(tmp_path):
    r, resume, _ = _recipe([DF256, "--resume", "model.ae_dims=384"])
    assert resume is True and r.model.ae_dims == 384
    ckpt = tmp_path / "step_00000010"
    r, resume, _ = _recipe([DF256, "--resume", str(ckpt), "model.ae_dims=384"])
    assert resume == str(ckpt) and r.model.ae_dims == 384
    _, resume, _ = _recipe([DF256, "model.ae_dims=384", "--resume"])
    assert resume is True
