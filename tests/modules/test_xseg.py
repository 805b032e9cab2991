"""DFL's XSeg network (engine.modules.xseg): parameter table and counts from DFL's TF graph, the layer
alignment rules (BlurPool pads, TF-SAME transposed conv, FRN, TLU) against hand computations, parity with
DFL's recorded forward pass (golden extra/xseg_base4_res256, through the production weight-file reader),
XSegNet.extract's post-processing, and the errors a user can reach."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import CheckpointError, UnsafeFileError
from engine.modules.xseg import (BlurPool, FRNorm2D, TLU, UpConvBlock, XSeg, XSegExtractor, dfl_xseg_arrays,
                                 load_dfl_xseg, load_dfl_xseg_arrays, open_xseg, xseg_weights_path)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "xseg"


def _module_params(net: torch.nn.Module, dfl_layer: str) -> int:
    """Parameters of the torch module named like DFL's layer 'XSeg/conv01/frn'."""
    path = dfl_layer.split("/", 1)[1].replace("/", ".")
    return sum(p.numel() for p in net.get_submodule(path).parameters())


def test_full_size_parameter_counts_match_dfl():
    d = json.loads((GOLDEN / "xseg_base32_param_counts.json").read_text())
    net = XSeg()
    params = list(net.parameters())
    assert sum(p.numel() for p in params) == d["param_count_total"] == 17_569_317
    assert len(params) == d["n_tensors"] == 222
    for row in d["layer_param_counts"]:
        if row["type"] == "BlurPool":
            continue  # constant kernels, no weights (checked below)
        assert _module_params(net, row["layer"]) == row["params"], row["layer"]
    assert not any("bp" in k for k in net.state_dict())  # BlurPool kernels are not saved weights


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


@pytest.mark.parametrize("filt, pad", [(2, (0, 1)), (3, (1, 1)), (4, (1, 2))])
def test_blurpool_binomial_kernel_and_asymmetric_zero_pad(filt, pad):
    taps = {2: [1, 1], 3: [1, 2, 1], 4: [1, 3, 3, 1]}[filt]
    bp = BlurPool(filt)
    assert bp.pad == pad
    x = torch.rand(1, 2, 8, 6, dtype=torch.float64)
    k = np.outer(taps, taps) / np.sum(taps) ** 2
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), pad, pad))
    want = np.zeros((1, 2, 4, 3))
    for i in range(4):
        for j in range(3):
            want[0, :, i, j] = (xp[0, :, 2 * i:2 * i + filt, 2 * j:2 * j + filt] * k).sum((1, 2))
    np.testing.assert_allclose(bp(x).numpy(), want, rtol=0, atol=1e-12)


def test_upconv_is_tf_same_transposed_conv():
    """out[2i+di, 2j+dj] += x[i, j] * w[di, dj] for di, dj in 0..2, keeping the first 2H x 2W."""
    torch.manual_seed(1)
    blk = UpConvBlock(3, 2).double()
    x = torch.rand(1, 3, 4, 5, dtype=torch.float64)
    w = blk.conv.weight.detach().numpy()  # (in, out, 3, 3)
    full = np.zeros((2, 9, 11))
    for i in range(4):
        for j in range(5):
            full[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum("c,cokl->okl", x[0, :, i, j].numpy(), w)
    conv = full[:, :8, :10] + blk.conv.bias.detach().numpy()[:, None, None]
    got = blk.conv(x)[:, :, :8, :10]
    np.testing.assert_allclose(got[0].detach().numpy(), conv, rtol=0, atol=1e-12)
    assert blk(x).shape == (1, 2, 8, 10)


def test_frn_and_tlu_formulas():
    torch.manual_seed(2)
    frn, tlu = FRNorm2D(3).double(), TLU(3).double()
    with torch.no_grad():
        frn.weight.copy_(torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64))
        frn.bias.copy_(torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64))
        frn.eps.fill_(-0.25)  # DFL uses |eps|
        tlu.tau.copy_(torch.tensor([0.0, 0.3, -1.0], dtype=torch.float64))
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    xn = x.numpy()
    nu2 = (xn ** 2).mean(axis=(2, 3), keepdims=True)
    want = xn / np.sqrt(nu2 + 0.25) * np.array([1.5, -2.0, 0.5])[:, None, None] + np.array([0.1, 0.2, -0.3])[:, None, None]
    y = frn(x)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tlu(y).detach().numpy(), np.maximum(want, np.array([0.0, 0.3, -1.0])[:, None, None]))


@pytest.mark.parity
def test_forward_matches_dfl_golden_through_the_weight_file_reader(shared_golden, tmp_path):
    d = np.load(shared_golden / "extra" / "xseg_base4_res256.npz")
    # DFL's XSeg_256.npy: a protocol-4 pickle of {name without the 'XSeg/' scope: array} (spec §8.2)
    weights = {k[len("weight/XSeg/"):]: d[k] for k in d.files if k.startswith("weight/")}
    (tmp_path / "XSeg_256.npy").write_bytes(pickle.dumps(weights, protocol=4))
    net = XSeg(base_ch=4)
    assert load_dfl_xseg(net, tmp_path) == tmp_path / "XSeg_256.npy"
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


def _const_net(value: float) -> XSeg:
    """A small XSeg whose output is the constant `value` after the sigmoid (out_conv weights 0)."""
    net = XSeg(base_ch=2, resolution=64)
    with torch.no_grad():
        net.out_conv.weight.zero_()
        net.out_conv.bias.fill_(float(np.log(value / (1 - value))))
    return net


@pytest.mark.parametrize("value, want", [(0.05, 0.0), (0.0999, 0.0), (0.1001, 0.1001), (0.7, 0.7)])
def test_extract_zeroes_values_below_0_1(value, want):
    ext = XSegExtractor(_const_net(value))
    out = ext(np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32))
    assert out.shape == (3, 64, 64, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N,64,64,3\)"):
        ext(np.zeros((32, 32, 3), np.float32))


def test_missing_weight_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="XSeg_256.npy"):
        xseg_weights_path(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        open_xseg(tmp_path / "nope.npy")


def test_wrong_weights_are_rejected_with_the_key(tmp_path):
    arrays = dfl_xseg_arrays(XSeg(base_ch=2))
    f = tmp_path / "XSeg_256.npy"
    f.write_bytes(pickle.dumps(arrays, protocol=4))
    with pytest.raises(CheckpointError, match=r"conv01/conv/weight:0' has shape \(3, 3, 3, 2\)"):
        load_dfl_xseg(XSeg(base_ch=4), f)
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
        load_dfl_xseg(XSeg(base_ch=2), tmp_path)
