"""Blocks and layers against docs/dfl.md's formulas (§2.1–2.3), hand-computed values and DFL's variable names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from engine.dfl.keymap import torch_to_dfl_name
from engine.modules import (ADAPTER_KINDS, Act, Adapter, Decoder, Encoder, Inter, ResidualBlock, Upscale, conv2d,
                            dense, depth_to_space, dfl_same_padding, pixel_norm)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "archi"


def test_depth_to_space_is_dcr_not_pixel_shuffle():
    n, c, h, w = 2, 3, 2, 3
    x = torch.arange(n * 4 * c * h * w, dtype=torch.float32).reshape(n, 4 * c, h, w)
    y = depth_to_space(x, 2)
    assert y.shape == (n, c, 2 * h, 2 * w)
    for b in range(n):
        for ch in range(c):
            for hh in range(h):
                for ww in range(w):
                    for i in range(2):
                        for j in range(2):
                            # docs/dfl.md §2.1: out[c, 2h+i, 2w+j] = in[(i*2+j)*C + c, h, w]
                            assert y[b, ch, 2 * hh + i, 2 * ww + j] == x[b, (i * 2 + j) * c + ch, hh, ww]
    assert not torch.equal(y, torch.nn.functional.pixel_shuffle(x, 2))


def test_pixel_norm_is_one_scalar_per_sample():
    x = torch.randn(3, 50, dtype=torch.float64)
    y = pixel_norm(x)
    ms = (x * x).mean(1, keepdim=True)
    torch.testing.assert_close(y, x / torch.sqrt(ms + 1e-6))
    # mean(y^2) = m / (m + eps) for each sample
    torch.testing.assert_close((y * y).mean(1), (ms / (ms + 1e-6)).squeeze(1))


@pytest.mark.parametrize("k,p", [(1, 0), (3, 1), (5, 2), (4, 2)])
def test_dfl_same_padding(k, p):
    assert dfl_same_padding(k) == p  # docs/dfl.md §2.1: ((k-1)*dilation+1)//2, symmetric


def test_conv_stride2_halves_and_pads_symmetrically():
    conv = conv2d(1, 1, 5, stride=2)
    assert conv.padding == (2, 2)
    assert conv(torch.zeros(1, 1, 16, 16)).shape == (1, 1, 8, 8)
    # symmetric pad: a delta kernel at the centre reproduces x[::2, ::2]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 2, 2] = 1
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(conv(x), x[:, :, ::2, ::2])


def test_glorot_uniform_init_and_zero_bias():
    torch.manual_seed(0)
    conv = conv2d(64, 128, 3)
    limit = math.sqrt(6 / (9 * 64 + 9 * 128))
    assert conv.weight.abs().max() <= limit
    assert abs(conv.weight.std().item() - limit / math.sqrt(3)) < 0.02 * limit
    assert torch.count_nonzero(conv.bias) == 0
    lin = dense(300, 200)
    limit = math.sqrt(6 / 500)
    assert lin.weight.abs().max() <= limit and abs(lin.weight.std().item() - limit / math.sqrt(3)) < 0.03 * limit
    assert torch.count_nonzero(lin.bias) == 0


def test_act_lrelu_and_xcos():
    x = torch.linspace(-3, 3, 13)
    torch.testing.assert_close(Act(0.1)(x), torch.where(x > 0, x, 0.1 * x))
    torch.testing.assert_close(Act(0.1, use_cos=True)(x), x * torch.cos(x))


def test_residual_block_formula():
    torch.manual_seed(1)
    blk = ResidualBlock(4)
    x = torch.randn(2, 4, 5, 5)
    lr = lambda t: torch.where(t > 0, t, 0.2 * t)  # noqa: E731
    expected = lr(x + blk.conv2(lr(blk.conv1(x))))
    torch.testing.assert_close(blk(x), expected)


def test_upscale_is_conv_act_dcr():
    torch.manual_seed(2)
    up = Upscale(3, 5)
    x = torch.randn(1, 3, 4, 4)
    y = up(x)
    assert y.shape == (1, 5, 8, 8)
    z = up.conv1(x)
    torch.testing.assert_close(y, depth_to_space(torch.where(z > 0, z, 0.1 * z), 2))


def test_d_heads_fill_the_2x2_cell_in_dfl_order():
    # docs/dfl.md §2.3: head number i*2+j (out_conv, out_conv1, out_conv2, out_conv3) fills pixel (2h+i, 2w+j)
    dec = Decoder(8, 2, 2, "d")
    logits = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    with torch.no_grad():
        for k, name in enumerate(["out_conv", "out_conv1", "out_conv2", "out_conv3"]):
            head = getattr(dec, name)
            head.weight.zero_()
            head.bias.fill_(logits[k])
    img = dec.image(torch.randn(1, 8, 2, 2))  # r=2: 3 upscales -> 16, d2s -> 32
    assert img.shape == (1, 3, 32, 32)
    for i in range(2):
        for j in range(2):
            expected = torch.full((1, 3, 16, 16), torch.sigmoid(logits[i * 2 + j]).item())
            torch.testing.assert_close(img[:, :, i::2, j::2], expected)


def test_encoder_inter_decoder_shapes_all_opts():
    R = 64
    for opts in ["", "u", "d", "t", "c", "ud", "udt", "udtc", "dt"]:
        enc = Encoder(3, 4, opts)
        div = 32 if "t" in opts else 16
        e = enc(torch.rand(2, 3, R, R))
        assert e.shape == (2, 8 * 4 * (R // div) ** 2), opts
        inter = Inter(e.shape[1], 8, 6, R, opts)
        z = inter(e)
        lowest = R // (32 if "d" in opts else 16)
        r = lowest if "t" in opts else 2 * lowest
        assert z.shape == (2, 6, r, r) and inter.out_res() == r and enc.out_res(R) == R // div, opts
        img, mask = Decoder(6, 4, 4, opts)(z)
        assert img.shape == (2, 3, R, R) and mask.shape == (2, 1, R, R), opts
        assert 0 <= img.min() and img.max() <= 1


def test_decoder_state_dict_follows_dfl_variable_order():
    meta = json.loads((GOLDEN / "df-ud_res64.json").read_text())
    dfl_order = [k for k in meta["weight_names_in_order"] if k.startswith("decoder_src/")]
    dec = Decoder(64, 16, 8, "ud")
    ours = [torch_to_dfl_name("decoder_src." + k, strip_part=False) for k in dec.state_dict()]
    assert ours == dfl_order
    enc = Encoder(3, 16, "ud")
    assert [torch_to_dfl_name("encoder." + k, strip_part=False) for k in enc.state_dict()] == \
        [k for k in meta["weight_names_in_order"] if k.startswith("encoder/")]


def test_t_variant_names_match_spec():
    # docs/dfl.md §2.8: encoder/down1/conv1, encoder/res1/conv{1,2}, encoder/down{2..5}/conv1, encoder/res5/conv{1,2}
    names = [k.rsplit(".", 1)[0] for k in Encoder(3, 4, "t").state_dict() if k.endswith("weight")]
    assert names == ["down1.conv1", "res1.conv1", "res1.conv2", "down2.conv1", "down3.conv1", "down4.conv1",
                     "down5.conv1", "res5.conv1", "res5.conv2"]
    dec = {k.rsplit(".", 2)[0] for k in Decoder(8, 4, 4, "td").state_dict()}
    assert {"upscale3", "res3", "upscalem4", "out_conv3"} <= dec and "upscalem5" not in dec
    assert "upscale1" not in {k.split(".")[0] for k in Inter(10, 4, 4, 64, "t").state_dict()}


def test_adapter_starts_as_identity_and_keeps_shape():
    assert ADAPTER_KINDS == ("conv1x1", "dense")
    x = torch.randn(2, 6, 4, 4)
    a = Adapter((6, 4, 4), "conv1x1", hidden=3)
    torch.testing.assert_close(a(x), x)
    d = Adapter((6, 4, 4), "dense", hidden=5)
    torch.testing.assert_close(d(x), x)
    with torch.no_grad():
        a.conv2.weight.fill_(0.1)
    y = a(x)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # y = x + conv2(lrelu(conv1(x), 0.2))
    h = a.conv1(x)
    torch.testing.assert_close(y, x + a.conv2(torch.where(h > 0, h, 0.2 * h)))
    flat = torch.randn(3, 40)
    torch.testing.assert_close(Adapter((40,), "dense")(flat), flat)
    with pytest.raises(ValueError, match="needs a \\(C, H, W\\)"):
        Adapter((40,), "conv1x1")


def test_depth_to_space_keeps_channels_last_with_identical_values():
    import torch

    from engine.modules.layers import depth_to_space

    x = torch.randn(2, 4 * 3, 5, 7)
    xc = x.contiguous(memory_format=torch.channels_last)
    out, out_c = depth_to_space(x), depth_to_space(xc)
    assert torch.equal(out, out_c) and out_c.is_contiguous(memory_format=torch.channels_last)
    # DCR: out[n, c, 2h+i, 2w+j] = x[n, (2i+j)*C + c, h, w]
    assert out[1, 2, 2 * 3 + 1, 2 * 4 + 0] == x[1, (2 * 1 + 0) * 3 + 2, 3, 4]
