"""XSeg recipes (kind = "xseg"): the [xseg] table's DFL defaults, strict tables and keys, round trip, and
the CLI's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import recipe
from engine.errors import RecipeErrors

ROOT = Path(__file__).resolve().parents[2]


def _errors(text):
    with pytest.raises(RecipeErrors) as ei:
        recipe.loads(text, source="x.toml")
    return "\n".join(e.format() for e in ei.value.errors)


def test_shipped_xseg_recipe_has_dfl_defaults_and_round_trips():
    r = recipe.load(ROOT / "recipes" / "xseg.toml")
    assert r.kind == "xseg"
    x = r.xseg
    # docs/dfl.md §7.2: face type wf, batch 4, resolution 256, RMSprop lr 1e-4 with lr_dropout 0.3, base width 32
    assert (x.face_type, x.resolution, x.base_ch, x.lr, x.lr_dropout, r.train.batch_size) == ("wf", 256, 32, 1e-4, 0.3, 4)
    text = recipe.dumps(r)
    assert text.splitlines()[1] == 'kind = "xseg"' and "[model]" not in text and "amp" not in text
    assert recipe.loads(text, source="x.toml") == recipe.loads(text, source="x.toml")
    r2 = recipe.loads(text, source=str(r.source))
    assert (r2.kind, r2.xseg, r2.train) == (r.kind, r.xseg, r.train)
    assert "kind: 'xseg' != 'saehd'" in recipe.diff(r, recipe.loads("", source="s.toml"))


def test_kind_rules_are_strict_with_file_key_and_hint():
    text = _errors('kind = "xseg"\n[model]\narchi = "df"\n[train]\namp = "bf16"\n[xseg]\nface_typ = "f"\n')
    assert "[model] does not apply to an XSeg recipe (kind = 'xseg') (valid tables: xseg, train)" in text
    assert "x.toml:5: [train] 'amp' does not apply to XSeg training (valid in an XSeg recipe: run_dir," in text
    assert "[xseg] unknown key 'face_typ' — did you mean 'face_type'?" in text
    assert "[xseg] belongs to an XSeg recipe" in _errors("[xseg]\nbase_ch = 4\n")
    assert "kind = 'xsg' is not a recipe kind — did you mean 'xseg'?" in _errors('kind = "xsg"\n')
    text = _errors('kind = "xseg"\n[xseg]\nresolution = 200\npretrain = true\nface_type = "full_face"\n')
    assert "resolution = 200 is not a multiple of 64" in text and "pretrain needs a pretrain faceset" in text
    assert "'face_type' = 'full_face' is not allowed" in text
    r = recipe.load(ROOT / "recipes" / "xseg.toml", ["xseg.base_ch=8", "train.batch_size=2"])
    assert r.xseg.base_ch == 8 and r.train.batch_size == 2
    with pytest.raises(RecipeErrors, match="does not apply to an XSeg recipe"):
        recipe.load(ROOT / "recipes" / "xseg.toml", ["loss.gan_power=0.1"])


def test_cli_validate_and_describe(capsys):
    from engine.__main__ import main

    assert main(["validate", str(ROOT / "recipes" / "xseg.toml")]) == 0
    assert "ok (XSeg, face type wf, resolution 256, base_ch 32, 2 facesets)" in capsys.readouterr().out
    assert main(["describe", str(ROOT / "recipes" / "xseg.toml")]) == 2
    assert "an XSeg recipe; describe shows SAEHD graphs" in capsys.readouterr().err
