"""DFL's XSeg network (engine.modules.xseg): parameter counts from DFL's TF graph, the layer alignment rules
(BlurPool pads, TF-SAME transposed conv, FRN, TLU) against hand computations, XSegNet.extract's
post-processing. DFL's weight files and the golden forward pass: tests/xseg/test_xseg_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.modules.xseg import TLU, BlurPool, FRNorm2D, UpConvBlock, XSeg, XSegExtractor

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
