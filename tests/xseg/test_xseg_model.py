"""DFL's XSeg weight files (engine.xseg.model): DFL's names and TF shapes against the recorded table, the
round trip through DFL's layout, parity with DFL's recorded forward pass (golden extra/xseg_base4_res256)
through the production weight-file reader, and the errors a user can reach."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.dfl.files import read_part_file
from engine.errors import CheckpointError, UnsafeFileError
from engine.modules.xseg import XSeg, XSegExtractor
from engine.xseg.model import dfl_xseg_arrays, load_dfl_xseg_arrays, read_dfl_xseg, xseg_weights_path

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xseg"


def test_base4_names_and_dfl_shapes_match_the_recorded_table():
    table = json.loads((GOLDEN / "xseg_base4_res256.json").read_text())["param_table"]
    arrays = dfl_xseg_arrays(XSeg(base_ch=4), scope=True)
    assert {r["name"]: tuple(r["shape"]) for r in table} == {k: v.shape for k, v in arrays.items()}


def test_weight_round_trip_through_dfl_layout():
    torch.manual_seed(0)
    a, b = XSeg(base_ch=2), XSeg(base_ch=2)
    load_dfl_xseg_arrays(b, dfl_xseg_arrays(a))
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb)


@pytest.mark.parity
def test_forward_matches_dfl_golden_through_the_weight_file_reader(shared_golden, tmp_path):
    d = np.load(shared_golden / "extra" / "xseg_base4_res256.npz")
    # DFL's XSeg_256.npy: a protocol-4 pickle of {name without the 'XSeg/' scope: array} (docs/dfl.md §8.2)
    weights = {k[len("weight/XSeg/"):]: d[k] for k in d.files if k.startswith("weight/")}
    (tmp_path / "XSeg_256.npy").write_bytes(pickle.dumps(weights, protocol=4))
    net, f = read_dfl_xseg(tmp_path)
    assert f == tmp_path / "XSeg_256.npy" and net.base_ch == 4
    x = torch.from_numpy(np.ascontiguousarray(d["input"].transpose(0, 3, 1, 2)))
    with torch.no_grad():
        logits, sig = net(x)
        pre_logits, _ = net(x, pretrain=True)
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()  # noqa: E731
    # DFL's TF float32 reductions agree with an independent port to ~1.2e-3 (sidecar): 2e-3 / 5e-4 / 2e-3
    np.testing.assert_allclose(nhwc(logits), d["logits"], rtol=0, atol=2e-3)
    np.testing.assert_allclose(nhwc(sig), d["sigmoid"], rtol=0, atol=5e-4)
    np.testing.assert_allclose(nhwc(pre_logits), d["pretrain_logits"], rtol=0, atol=2e-3)
    # the skips matter: pretrain output is a different function
    assert np.abs(nhwc(pre_logits) - nhwc(logits)).max() > 0.05
    ext = XSegExtractor(net)(d["input"][0])
    want = np.clip(d["sigmoid"][0], 0, 1)
    want[want < 0.1] = 0
    assert ext.shape == (256, 256, 1)
    np.testing.assert_allclose(ext, want, rtol=0, atol=5e-4 + 1e-7)


def test_missing_weight_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="XSeg_256.npy"):
        xseg_weights_path(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_dfl_xseg(tmp_path / "nope.npy")


def test_wrong_weights_are_rejected_with_the_key(tmp_path):
    arrays = dfl_xseg_arrays(XSeg(base_ch=2))
    f = tmp_path / "XSeg_256.npy"
    f.write_bytes(pickle.dumps(arrays, protocol=4))
    with pytest.raises(CheckpointError, match=r"conv01/conv/weight:0' has shape \(3, 3, 3, 2\)"):
        load_dfl_xseg_arrays(XSeg(base_ch=4), read_part_file(f), source=str(f))
    arrays.pop("out_conv/bias:0")
    arrays["extra/weight:0"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=r"missing 1 weight.*XSeg/out_conv/bias:0.*unknown key.*extra/weight:0"):
        load_dfl_xseg_arrays(XSeg(base_ch=2), arrays, source="x")


class _Evil:
    def __reduce__(self):
        return (eval, ("1+1",))


def test_weight_file_is_read_with_the_restricted_unpickler(tmp_path):
    f = tmp_path / "XSeg_256.npy"
    f.write_bytes(pickle.dumps({"conv01/conv/weight:0": _Evil()}, protocol=4))
    with pytest.raises(UnsafeFileError, match="eval"):
        read_dfl_xseg(tmp_path)
