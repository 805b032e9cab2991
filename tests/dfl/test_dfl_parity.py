"""Forward parity with DFL through the production importer (golden archi/, recorded from DFL's own code).

Goldens are NHWC; we run NCHW. Tolerance 1e-5 absolute on every recorded tensor (`*_enc`, `*_code`, `pred_*`).
The committed copy (tests/golden/archi/, see the sidecars' torchsae_copy_note): df-ud's four DFL part files
(xz-compressed) with its io; df's src path as df-ud weights + the 3 tensors that differ; liae-ud's encoder
outputs and codes. Checks needing the full liae-ud / df weights use the shared golden folder when present.
"""

from __future__ import annotations

import lzma
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.dfl import import_model, load_dfl_parts, load_dfl_weights, read_part_file
from engine.dfl.files import write_data_file
from engine.graph import build
from engine.recipe.specs import ModelSpec

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "archi"
DIMS = dict(resolution=64, ae_dims=64, e_dims=16, d_dims=16, d_mask_dims=8)
ATOL = 1e-5

pytestmark = pytest.mark.parity


def nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy() if t.ndim == 4 else t.detach().numpy()


def assert_close(name: str, got: torch.Tensor, expected: np.ndarray) -> None:
    g = nhwc(got)
    assert g.shape == expected.shape, f"{name}: shape {g.shape} != golden {expected.shape}"
    diff = np.abs(g - expected)
    bad = np.argwhere(diff > ATOL)
    assert len(bad) == 0, \
        f"{name}: {len(bad)} values off by > {ATOL} (max {diff.max():.3g}), first at {bad[0].tolist()}"


@pytest.fixture(scope="module")
def dfud_folder(tmp_path_factory) -> Path:
    """df-ud_res64_dflfmt/ as DFL wrote it (the committed .xz files decompressed, byte-identical)."""
    out = tmp_path_factory.mktemp("df-ud_res64_dflfmt")
    for xz in sorted((GOLDEN / "df-ud_res64_dflfmt").glob("*.npy.xz")):
        (out / xz.name[:-3]).write_bytes(lzma.decompress(xz.read_bytes()))
    return out


def _check_forward(model, io, names):
    with torch.no_grad():
        out = model.forward_train(nchw(io["warped_src"]), nchw(io["warped_dst"]))
        out["src_enc"] = model.encoder(nchw(io["warped_src"]))
        out["dst_enc"] = model.encoder(nchw(io["warped_dst"]))
    checked = 0
    for k in names:
        assert_close(k, out[k], io[k])
        checked += 1
    return checked


def test_df_ud_through_import_model(dfud_folder):
    recipe, model = import_model(dfud_folder, options=dict(archi="df-ud", **DIMS))
    assert recipe.model.archi == "df-ud" and recipe.model.d_mask_dims == 8
    io = np.load(GOLDEN / "df-ud_res64_io.npz")
    recorded = [k for k in io.files if not k.startswith("warped")]
    assert len(recorded) == 10
    assert _check_forward(model, io, recorded) == 10


def test_df_ud_named_model_with_data_dat(dfud_folder, tmp_path):
    """The DFL layout `<name>_SAEHD_<part>.npy` + `<name>_SAEHD_data.dat`: options come from data.dat."""
    for f in dfud_folder.glob("*.npy"):
        shutil.copy(f, tmp_path / f"mymodel_SAEHD_{f.name}")
    opts = dict(archi="df-ud", face_type="wf", batch_size=4, models_opt_on_gpu=True, **DIMS)
    write_data_file(tmp_path / "mymodel_SAEHD_data.dat", opts, iter=1234)
    recipe, model = import_model(tmp_path)
    assert recipe.model.face_type == "wf" and recipe.train.batch_size == 4
    io = np.load(GOLDEN / "df-ud_res64_io.npz")
    _check_forward(model, io, ["pred_src_dst", "pred_dst_dstm"])


def test_df_src_path(dfud_folder):
    """df (no u, no d): single out_conv head, 2·dm mask head, no pixel norm, inter at R/16."""
    model = build(ModelSpec(archi="df", **DIMS))
    arrays = {}
    for part in ("encoder", "inter", "decoder_src"):
        arrays.update({f"{part}/{k}": v for k, v in read_part_file(dfud_folder / f"{part}.npy").items()})
    delta = np.load(GOLDEN / "df_res64_src_path_delta.npz")
    arrays.update({k: delta[k] for k in delta.files})
    # df-ud has extra -d heads that df lacks; keep exactly df's variables
    df_keys = {f"{p}/{k}" for p, m in model.parts().items() if p != "decoder_dst"
               for k in [n.replace(".", "/") + ":0" for n, _ in m.named_parameters()]}
    load_dfl_weights(model, {k: v for k, v in arrays.items() if k in df_keys}, "df src path",
                     parts=["encoder", "inter", "decoder_src"])
    io = np.load(GOLDEN / "df_res64_io_subset.npz")
    with torch.no_grad():
        out = model.forward_train(nchw(io["warped_src"]), nchw(io["warped_dst"]))
        out["src_enc"], out["dst_enc"] = model.encoder(nchw(io["warped_src"])), model.encoder(nchw(io["warped_dst"]))
    for k in ("src_enc", "dst_enc", "src_code", "dst_code", "pred_src_src", "pred_src_srcm", "pred_src_dst",
              "pred_src_dstm"):
        assert_close(k, out[k], io[k])


class _Recorded(torch.nn.Module):
    """Stands in for an inter: returns DFL's recorded code for each input row (matched by encoder output)."""

    def __init__(self, enc_rows: np.ndarray, codes: np.ndarray):
        super().__init__()
        self.enc = torch.from_numpy(enc_rows)
        self.codes = nchw(codes)

    def forward(self, x):
        idx = [int(torch.argmin((self.enc - row).abs().amax(1))) for row in x]
        assert all(float((self.enc[i] - row).abs().max()) < ATOL for i, row in zip(idx, x))
        return self.codes[idx]


def test_liae_ud_encoder_and_code_wiring(dfud_folder):
    """liae-ud: encoder outputs from DFL's (shared) encoder weights, then LIAE's concat order on DFL's
    recorded inter outputs: src_code = [AB|AB], dst_code = [B|AB], src_dst_code = [AB(dst)|AB(dst)]."""
    model = build(ModelSpec(archi="liae-ud", **DIMS))
    load_dfl_parts(model, dfud_folder, parts=["encoder"])  # liae-ud's encoder.npy is byte-identical
    io = np.load(GOLDEN / "liae-ud_res64_codes.npz")
    with torch.no_grad():
        assert_close("src_enc", model.encoder(nchw(io["warped_src"])), io["src_enc"])
        assert_close("dst_enc", model.encoder(nchw(io["warped_dst"])), io["dst_enc"])
        enc = np.concatenate([io["src_enc"], io["dst_enc"]])
        model.inter_AB = _Recorded(enc, np.concatenate([io["src_inter_AB_code"], io["dst_inter_AB_code"]]))
        model.inter_B = _Recorded(io["dst_enc"], io["dst_inter_B_code"])
        out = model.forward_train(nchw(io["warped_src"]), nchw(io["warped_dst"]))
    for k in ("src_code", "dst_code", "src_dst_code"):
        assert_close(k, out[k], io[k])


# ---------------------------------------------------------------------------------------------------------
# full weights from the shared golden folder (too big to commit)


def test_liae_ud_full_through_import_model(shared_golden):
    folder = shared_golden / "archi" / "liae-ud_res64_dflfmt"
    _, model = import_model(folder, options=dict(archi="liae-ud", **DIMS))
    io = np.load(shared_golden / "archi" / "liae-ud_res64_io.npz")
    names = ["src_enc", "dst_enc", "src_code", "dst_code", "src_dst_code", "pred_src_src", "pred_src_srcm",
             "pred_dst_dst", "pred_dst_dstm", "pred_src_dst", "pred_src_dstm"]
    _check_forward(model, io, names)
    with torch.no_grad():  # per-inter codes too
        e = model.encoder(nchw(io["warped_dst"]))
        assert_close("dst_inter_B_code", model.inter_B(e), io["dst_inter_B_code"])
        assert_close("dst_inter_AB_code", model.inter_AB(e), io["dst_inter_AB_code"])


def test_df_full_weights_and_committed_subset(shared_golden):
    weights = dict(np.load(shared_golden / "archi" / "df_res64_weights.npz"))
    model = build(ModelSpec(archi="df", **DIMS))
    load_dfl_weights(model, weights, "df_res64_weights.npz")
    io = np.load(shared_golden / "archi" / "df_res64_io.npz")
    _check_forward(model, io, [k for k in io.files if not k.startswith("warped")])
    # the committed subset's claim: df's src path = df-ud's tensors except the delta
    delta = np.load(GOLDEN / "df_res64_src_path_delta.npz")
    for part in ("encoder", "inter", "decoder_src"):
        dfud = pickle.loads((shared_golden / "archi" / "df-ud_res64_dflfmt" / f"{part}.npy").read_bytes())
        for k, v in weights.items():
            if k.startswith(part + "/"):
                ref = delta[k] if k in delta.files else dfud[k.split("/", 1)[1]]
                assert np.array_equal(v, ref), k
