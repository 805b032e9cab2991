"""An imported DFL model exported to DFM gives DFL's recorded forward outputs (docs/dfl.md §2.4 "Inference",
§9.1): out_celeb_face = pred_src_dst, out_celeb_face_mask = pred_src_dstm, out_face_mask = pred_dst_dstm,
NHWC, within 1e-5, through ONNX Runtime — what DFL's own export would give (its recorded .dfm matched TF
within 5.7e-7, tests/golden/dfm/dfl_export_contract.json).

Weights and io come from DFL's golden archi data (tests/golden/archi/: df-ud res 64, ae 64, e 16, d 16,
dm 8, part files xz-compressed; liae-ud's part files are too big to commit and are read from the shared
golden folder when present).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.export import export_model
from engine.export.dfm import check_dfm
from engine.export.verify import ort_session

GOLDEN_ARCHI = Path(__file__).resolve().parents[1] / "golden" / "archi"
OPTIONS = {"resolution": 64, "ae_dims": 64, "e_dims": 16, "d_dims": 16, "d_mask_dims": 8}
ATOL = 1e-5


def _check(parts_dir: Path, io: dict, archi: str, out: Path):
    from engine.dfl import import_model

    _, model = import_model(parts_dir, options={"archi": archi, **OPTIONS})
    rep = export_model(model, out, fmt="dfm")
    check_dfm(onnx.load(str(rep.path)), 64)
    face_mask, celeb, celeb_mask = ort_session(rep.path).run(None, {"in_face:0": io["warped_dst"]})  # by position
    errs = {}
    for name, got, want in [("pred_src_dst", celeb, io["pred_src_dst"]), ("pred_src_dstm", celeb_mask, io["pred_src_dstm"]),
                            ("pred_dst_dstm", face_mask, io["pred_dst_dstm"])]:
        assert got.shape == want.shape, name
        errs[name] = float(np.abs(got - want).max())
    assert max(errs.values()) <= ATOL, errs
    # the golden outputs are not trivially close to each other (a swapped output would be caught)
    assert np.abs(io["pred_src_dstm"] - io["pred_dst_dstm"]).max() > 10 * ATOL


@pytest.mark.parity
def test_df_ud_dfl_model_to_dfm_matches_dfl(tmp_path, dfl_parts_folder):
    meta = json.loads((GOLDEN_ARCHI / "df-ud_res64.json").read_text())
    assert "df-ud" in meta["what"] and "resolution=64" in meta["what"]
    io = dict(np.load(GOLDEN_ARCHI / "df-ud_res64_io.npz"))
    parts = dfl_parts_folder(GOLDEN_ARCHI / "df-ud_res64_dflfmt", tmp_path / "dfl")
    _check(parts, io, "df-ud", tmp_path / "df-ud.dfm")


@pytest.mark.parity
def test_liae_ud_dfl_model_to_dfm_matches_dfl(tmp_path, shared_golden, dfl_parts_folder):
    archi = shared_golden / "archi"
    io = dict(np.load(archi / "liae-ud_res64_io.npz"))
    parts = dfl_parts_folder(archi / "liae-ud_res64_dflfmt", tmp_path / "dfl")
    _check(parts, io, "liae-ud", tmp_path / "liae-ud.dfm")
