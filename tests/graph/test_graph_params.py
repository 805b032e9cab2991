"""Parameter counts equal DFL's (golden param_counts.json, docs/dfl.md §2.5–2.7). Models are built on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.dfl.keymap import torch_to_dfl_name
from engine.graph import build
from engine.recipe.specs import ModelSpec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "archi"
COUNTS = json.loads((GOLDEN / "param_counts.json").read_text())["counts"]


def _ms(archi, resolution, ae=256, e=64, d=64, dm=22):
    return ModelSpec(archi=archi, resolution=resolution, ae_dims=ae, e_dims=e, d_dims=d, d_mask_dims=dm)


def test_golden_has_the_expected_entries():
    assert len(COUNTS) == 12  # every entry is tested below; a new one must not slip through untested


@pytest.mark.parity
@pytest.mark.parametrize("key", sorted(COUNTS))
def test_param_counts_match_dfl(key):
    g = COUNTS[key]
    model = build(_ms(g["archi"], g["resolution"], g["ae_dims"], g["e_dims"], g["d_dims"], g["d_mask_dims"]),
                  device="meta")
    parts = model.parts()
    golden_parts = [k for k in g if isinstance(g[k], dict)]
    assert list(parts) == golden_parts  # DFL's part names, in DFL's order
    total = 0
    for name, module in parts.items():
        n = sum(p.numel() for p in module.parameters())
        assert n == g[name]["params"], name
        assert len(list(module.parameters())) == g[name]["n_tensors"], name
        # per leaf layer, under DFL's layer names
        ours = {}
        for pname, p in module.named_parameters():
            layer = torch_to_dfl_name(f"{name}.{pname}", strip_part=False).rsplit("/", 1)[0]
            ours[layer] = ours.get(layer, 0) + p.numel()
        assert ours == {row["layer"]: row["params"] for row in g[name]["layers"]}, name
        total += n
    assert total == g["TOTAL"]


# docs/dfl.md §2.7 (TF-graph totals, ae/e/d/dm = 256/64/64/22): archi, R, encoder, inter (each), decoder (each), total
SPEC_TABLE = [
    ("df", 128, 4_306_560, 14_959_872, 19_136_000, 57_538_432),
    ("df-u", 128, 4_306_560, 14_959_872, 19_136_000, 57_538_432),
    ("df-ud", 128, 4_306_560, 11_801_856, 19_181_291, 54_470_998),
    ("liae-ud", 128, 4_306_560, 19_933_440, 38_203_115, 82_376_555),
    ("df", 256, 4_306_560, 52_757_760, 19_136_000, 95_336_320),
    ("liae", 256, 4_306_560, 76_679_424, 38_157_824, 195_823_232),
    ("df-ud", 224, 4_306_560, 31_274_496, 19_181_291, 73_943_638),
    ("liae-ud", 320, 4_306_560, 75_026_688, 38_203_115, 192_563_051),
    ("df-t", 256, 15_654_144, 25_231_616, 34_410_688, 109_707_136),
    ("df-udt", 256, 15_654_144, 12_599_552, 34_455_979, 97_165_654),
    ("liae-udt", 256, 15_654_144, 16_810_240, 53_477_803, 102_752_427),
    ("df-ud", 256, 4_306_560, 40_125_696, 19_181_291, 82_794_838),  # §2.5
    ("liae-ud", 256, 4_306_560, 51_415_296, 38_203_115, 145_340_267),  # §2.6
]


@pytest.mark.parametrize("archi,res,enc,inter,dec,total", SPEC_TABLE)
def test_param_counts_match_spec_table(archi, res, enc, inter, dec, total):
    model = build(_ms(archi, res), device="meta")
    parts = {k: sum(p.numel() for p in m.parameters()) for k, m in model.parts().items()}
    assert parts["encoder"] == enc
    assert [v for k, v in parts.items() if k.startswith("inter")] == [inter] * (2 if archi.startswith("liae") else 1)
    assert [v for k, v in parts.items() if k.startswith("decoder")] == [dec] * (1 if archi.startswith("liae") else 2)
    assert sum(parts.values()) == total


def test_c_letter_changes_no_parameters():
    a = sum(p.numel() for p in build(_ms("liae-udt", 128), device="meta").parameters())
    b = sum(p.numel() for p in build(_ms("liae-udtc", 128), device="meta").parameters())
    assert a == b == sum(p.numel() for p in build(_ms("liae-dt", 128), device="meta").parameters())
