"""`torchsae validate` and `torchsae ls`: what they print, their errors, and that ls lists names the recipe
really accepts (every family checked against the loader)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from engine import recipe
from engine.__main__ import main
from engine.errors import RecipeErrors
from engine.recipe.graph_spec import NODE_TYPES
from engine.recipe.cli_ls import vocabulary

ROOT = Path(__file__).resolve().parents[2]
DF256 = ROOT / "recipes" / "df256.toml"


def test_validate_reports_ok_and_prints_the_resolved_recipe(capsys):
    assert main(["validate", str(DF256)]) == 0
    assert capsys.readouterr().out.strip() == f"{DF256}: ok (df-ud, resolution 256, face type f)"
    # overrides may follow the flags; --print gives TOML that loads back to the same recipe
    assert main(["validate", str(DF256), "--print", "model.resolution=288", "~loss.gan_power"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text.split("\n", 1)[1])["model"]["resolution"] == 288
    assert recipe.loads(text) == recipe.loads(recipe.dumps(recipe.load(DF256, ["model.resolution=288"])))


def test_validate_reports_every_problem_at_once(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\narchi = "liae-uz"\n\n[loss]\nmasked_trainng = true\n')
    assert main(["validate", str(bad), "optim.lr=abc"]) == 2
    err = capsys.readouterr().err
    assert "unknown option 'z'" in err and "did you mean 'masked_training'" in err
    assert "override 'optim.lr=abc'" in err


def test_validate_does_not_import_torch():
    code = ("import sys; from engine.__main__ import main; rc = main(['validate', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'validate imported torch'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(DF256)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_ls_lists_what_the_recipe_accepts(capsys):
    vocab = vocabulary()
    assert set(vocab) == {"archis", "blocks", "losses", "schedules", "optimizers", "kernels", "face_types",
                          "ct_modes", "merge_modes"}
    assert len(vocab["archis"]) == 2 * 16 and {"df", "liae-udt", "df-udtc"} <= set(vocab["archis"])
    for archi in vocab["archis"]:
        recipe.from_dict({"model": {"archi": archi, "resolution": 128}})
    assert vocab["blocks"] == list(NODE_TYPES)
    assert {"dssim_weight", "gan_power", "face_style_power"} <= set(vocab["losses"])
    for term in vocab["losses"]:  # every loss a recipe weights can be ramped by name
        recipe.from_dict({"schedule": {"ramp": [{"term": term, "start": 0, "end": 10}]}})
    with pytest.raises(RecipeErrors, match="not a"):
        recipe.from_dict({"schedule": {"ramp": [{"term": "gan_patch_size"}]}})
    for lr in vocab["schedules"][:3]:
        recipe.from_dict({"schedule": {"lr": lr}})
    for table, key, family in (("optim", "name", "optimizers"), ("compile", "kernels", "kernels"),
                               ("model", "face_type", "face_types"), ("data", "ct_mode", "ct_modes"),
                               ("merge", "mode", "merge_modes")):
        for name in vocab[family]:
            recipe.from_dict({table: {key: name}})
    assert main(["ls", "optimizers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"optimizers": ["adabelief", "rmsprop", "adam", "adamw"]}
    assert main(["ls"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(vocab)
