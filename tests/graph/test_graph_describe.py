"""describe(): derived values (docs/dfl.md §3.4 table), shapes and counts (docs/dfl.md §2.5), golden graph dumps, the CLI.

Graph dumps: tests/golden/graph_dumps/<recipe path with '/' -> '__'>.txt holds `render(describe(recipe))` for
every shipped recipe (recipes/**/*.toml) plus the modular example in tests/graph/data/. Regenerate after an
intended architecture change with:

    UPDATE_GRAPH_DUMPS=1 .venv/bin/python -m pytest -q -p no:xdist tests/graph/test_graph_describe.py
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from engine.graph import describe, render
from engine.graph.report import derived_values
from engine.recipe import load
from engine.recipe.specs import ModelSpec

ROOT = Path(__file__).resolve().parents[2]
DUMPS = ROOT / "tests" / "golden" / "graph_dumps"
EXTRA = [Path(__file__).parent / "data" / "modular_adapters.toml"]
# SAEHD recipes: an XSeg recipe (kind = "xseg") runs DFL's fixed XSeg network (tests/modules/test_xseg.py)
RECIPES = [p for p in sorted((ROOT / "recipes").rglob("*.toml")) if load(p).kind == "saehd"]


# docs/dfl.md §3.4 "Common values by resolution": R -> (dssim windows, σm, σm kernel, style radius, style kernel,
# blur_out σ, default gan patch)
SPEC_34 = {
    64: ([5], 2, 9, 8, 33, 0.5, 8),
    128: ([11], 4, 17, 16, 65, 1.0, 16),
    192: ([16], 6, 25, 24, 97, 1.5, 24),
    224: ([19], 7, 29, 28, 113, 1.75, 28),
    256: ([22, 11], 8, 33, 32, 129, 2.0, 32),
    320: ([27, 13], 10, 41, 40, 161, 2.5, 40),
    384: ([33, 16], 12, 49, 48, 193, 3.0, 48),
    512: ([44, 22], 16, 65, 64, 257, 4.0, 64),
}


@pytest.mark.parametrize("R", sorted(SPEC_34))
def test_derived_values_match_spec_table(R):
    d = derived_values(R)
    wins, sm, smk, st, stk, bo, gp = SPEC_34[R]
    assert d["dssim_windows"] == wins
    assert (d["mask_blur_sigma"], d["mask_blur_kernel"]) == (sm, smk)
    assert (d["style_blur_radius"], d["style_blur_kernel"]) == (st, stk)
    assert d["blur_out_sigma"] == bo and d["gan_patch_size_default"] == gp


def test_describe_df_ud_256_matches_spec_trace():
    d = describe(ModelSpec(archi="df-ud", resolution=256, ae_dims=256, e_dims=64, d_dims=64, d_mask_dims=22))
    assert d["params"] == {"parts": {"encoder": 4_306_560, "inter": 40_125_696, "decoder_src": 19_181_291,
                                     "decoder_dst": 19_181_291}, "total": 82_794_838}
    nodes = {n["name"]: n for n in d["nodes"]}
    rows = {r["name"]: (r["out_shape"], r["params"]) for r in nodes["decoder_src"]["layers"]}
    # docs/dfl.md §2.5 rows
    assert rows["upscale0"] == ([512, 32, 32], 4_720_640)
    assert rows["res2"] == ([128, 128, 128], 295_168)
    assert rows["out_conv1"] == ([3, 128, 128], 3_459)
    assert rows["upscalem3"] == ([22, 256, 256], 34_936)
    assert rows["out_convm"] == ([1, 256, 256], 23)
    enc = {r["name"]: r for r in nodes["encoder"]["layers"]}
    assert enc["down1.downs_3"]["out_shape"] == [512, 16, 16] and enc["down1.downs_3"]["params"] == 3_277_312
    assert nodes["encoder"]["out_shape"] == [131072]
    assert nodes["inter"]["out_shape"] == [256, 16, 16]
    assert {"from": "inter", "to": "decoder_src", "shape": [256, 16, 16], "identity": "src"} in d["edges"]
    assert d["derived"]["code_res"] == 16 and d["derived"]["dssim_windows"] == [22, 11]
    assert d["swap"] == {"code": "inter", "decoder": "decoder_src", "code_shape": [256, 16, 16]}
    json.dumps(d)  # JSON-able


def _dump_name(path: Path) -> str:
    try:
        rel = path.relative_to(ROOT / "recipes")
        return str(rel.with_suffix("")).replace("/", "__") + ".txt"
    except ValueError:
        return "example__" + path.stem + ".txt"


def test_every_shipped_recipe_has_a_dump():
    assert len(RECIPES) >= 7  # df128, df256, liae256, liae-udt224, quickstart + recipes/tests/*
    expected = {_dump_name(p) for p in RECIPES + EXTRA}
    if os.environ.get("UPDATE_GRAPH_DUMPS"):
        DUMPS.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in DUMPS.glob("*.txt")) - expected:
            (DUMPS / stale).unlink()
        for recipe in RECIPES + EXTRA:
            (DUMPS / _dump_name(recipe)).write_text(render(describe(load(recipe))))
    assert {p.name for p in DUMPS.glob("*.txt")} == expected, \
        "graph dumps out of date: run UPDATE_GRAPH_DUMPS=1 pytest tests/graph/test_graph_describe.py"


@pytest.mark.parametrize("recipe", RECIPES + EXTRA, ids=lambda p: _dump_name(p)[:-4])
def test_graph_dump_is_unchanged(recipe):
    text = render(describe(load(recipe)))
    path = DUMPS / _dump_name(recipe)
    if os.environ.get("UPDATE_GRAPH_DUMPS"):
        path.write_text(text)
    assert path.is_file(), f"no dump for {recipe}: run UPDATE_GRAPH_DUMPS=1"
    expected = path.read_text()
    assert text == expected, f"{recipe}: graph changed (see the diff); if intended, run UPDATE_GRAPH_DUMPS=1"


def test_cli_describe_json_and_graph_toml(capsys, tmp_path):
    from engine.__main__ import main

    assert main(["describe", str(EXTRA[0]), "model.resolution=64", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"]["resolution"] == 64 and d["graph"] == "explicit"
    assert [i["name"] for i in d["identities"]] == ["src", "dst", "alice"]
    # --graph-toml expands a preset into an explicit [graph] that builds the same network
    assert main(["describe", str(ROOT / "recipes" / "tests" / "tiny_liae.toml"), "--graph-toml"]) == 0
    graph_text = capsys.readouterr().out
    assert tomllib.loads(graph_text)["graph"]["swap_code"] == "target"
    base = (ROOT / "recipes" / "tests" / "tiny_df.toml").read_text().replace('archi = "df-ud"', 'archi = "liae-ud"')
    (tmp_path / "explicit.toml").write_text(base + "\n" + graph_text)
    a = describe(load(ROOT / "recipes" / "tests" / "tiny_liae.toml"))
    b = describe(load(tmp_path / "explicit.toml"))
    assert a["params"] == b["params"] and a["nodes"] == b["nodes"] and b["dfl_archi"] == "liae-ud"
    assert main(["describe", str(tmp_path / "missing.toml")]) == 2


def test_cli_describe_takes_overrides_after_flags(capsys):
    from engine.__main__ import main

    assert main(["describe", str(ROOT / "recipes" / "df256.toml"), "--json", "model.resolution=288"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["model"]["resolution"] == 288 and d["derived"]["dssim_windows"] == [24, 12]
