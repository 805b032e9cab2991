"""DFL's discriminators (docs/dfl.md §3.5): find_archi against DFL's table (every recorded patch size), the UNet
patch discriminator and the code discriminator against DFL forward/backward goldens with the recorded
weights loaded by the production reader (engine.dfl: DFL's names are the parameter names under the scope
``D_src`` / ``dis``), ConvTranspose alignment."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.dfl import dfl_part_arrays, load_dfl_part_file
from engine.dfl.keymap import torch_to_dfl_array, torch_to_dfl_name
from engine.errors import CheckpointError, TorchSAEError
from engine.losses import dloss
from engine.modules.discriminators import (CodeDiscriminator, UNetPatchDiscriminator, _ConvTransposeSame,
                                           check_unet_patch_d_resolution, find_archi, receptive_field)


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


def dfl_names(module: torch.nn.Module, scope: str) -> dict[str, str]:
    """{torch name: DFL variable name}: the parameter path under DFL's scope (``D_src/convs_0/weight:0``)."""
    return {n: torch_to_dfl_name(f"{scope}.{n}", strip_part=False) for n, _ in module.named_parameters()}


def load_weights(module: torch.nn.Module, scope: str, g, tmp_path) -> None:
    """The recorded ``weight/<scope>/...`` arrays through DFL's weight-file reader (scope stripped, docs/dfl.md §8.2)."""
    f = tmp_path / "weights.npy"
    f.write_bytes(pickle.dumps({k[len(f"weight/{scope}/"):]: g[k] for k in g.files if k.startswith("weight/")},
                               protocol=4))
    load_dfl_part_file(module, f, scope)


@pytest.mark.parity
def test_find_archi_every_recorded_patch_size(golden):
    table = json.loads((golden / "extra" / "unet_patch_d_find_archi_table.json").read_text())["table"]
    assert len(table) == 61
    for patch, entry in table.items():
        assert find_archi(int(patch)) == entry["layers"], patch
        assert receptive_field(entry["layers"]) == entry["receptive_field"], patch


def test_find_archi_spec_examples():
    assert find_archi(16) == [[3, 2]] * 3
    assert find_archi(28) == [[3, 2], [3, 1], [3, 2], [3, 1], [3, 2]]
    assert find_archi(32) == [[3, 2]] * 4
    assert find_archi(40) == [[3, 2], [3, 2], [3, 1], [3, 2], [3, 2]]
    assert find_archi(64) == [[3, 2]] * 5


def test_unet_patch_d_param_count_spec_example():
    d = UNetPatchDiscriminator(32, 3, 16)  # docs/dfl.md §3.5: patch 32 at R=256 with base 16
    assert sum(p.numel() for p in d.parameters()) == 946_994
    c, f = d(torch.zeros(1, 3, 256, 256))
    assert c.shape == (1, 1, 16, 16) and f.shape == (1, 1, 256, 256)


@pytest.mark.parity
def test_unet_patch_d_matches_dfl(golden, tmp_path):
    g = np.load(golden / "extra" / "unet_patch_d_res64_ps8_dims16.npz")
    meta = json.loads((golden / "extra" / "unet_patch_d_res64_ps8_dims16.json").read_text())
    d = UNetPatchDiscriminator(8, 3, 16)
    names = dfl_names(d, "D_src")
    assert sorted(names.values()) == sorted(r["name"] for r in meta["param_table"])
    assert sum(p.numel() for p in d.parameters()) == meta["param_count_total"]
    load_weights(d, "D_src", g, tmp_path)
    x = nchw(g["input"]).requires_grad_()
    center, full = d(x)
    np.testing.assert_allclose(nhwc(center), g["center_out"], atol=2e-6)
    np.testing.assert_allclose(nhwc(full), g["final_out"], atol=2e-6)
    for ours, lab, ref in ((center, 1, "dloss_center_ones"), (center, 0, "dloss_center_zeros"),
                           (full, 1, "dloss_final_ones"), (full, 0, "dloss_final_zeros")):
        np.testing.assert_allclose(dloss(lab, ours).detach().numpy(), g[ref], rtol=1e-5, err_msg=ref)
    (dloss(1, center) + dloss(1, full)).sum().backward()
    params = dict(d.named_parameters())
    for tname, dname in names.items():
        ref = g[f"grad/{dname}"]
        got = torch_to_dfl_array(params[tname].grad.numpy())
        # observed <= 2.4e-5 of the tensor's largest |grad| (a bias summed over 64x64 positions)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max(), err_msg=dname)
    np.testing.assert_allclose(nhwc(x.grad), g["grad_input"], rtol=0, atol=1e-4 * np.abs(g["grad_input"]).max())


@pytest.mark.parity
def test_code_discriminator_matches_dfl(golden, shared_golden, tmp_path):
    g = np.load(golden / "extra" / "code_d_df_res64_ae64.npz")
    meta = json.loads((golden / "extra" / "code_d_df_res64_ae64.json").read_text())
    full = np.load(shared_golden / "extra" / "code_d_df_res64_ae64.npz")  # weights: 5.8 MB, not copied
    d = CodeDiscriminator(64, 8)
    assert d.n_convs == 2
    assert sorted(dfl_names(d, "dis").values()) == sorted(r["name"] for r in meta["param_table"])
    assert sum(p.numel() for p in d.parameters()) == meta["param_count_total"]
    load_weights(d, "dis", full, tmp_path)
    x = nchw(g["input_code"]).requires_grad_()
    out = d(x)
    np.testing.assert_allclose(nhwc(out), g["out"], atol=1e-6)
    np.testing.assert_allclose(dloss(1, out).detach().numpy(), g["dloss_ones"], rtol=1e-5)
    np.testing.assert_allclose(dloss(0, out).detach().numpy(), g["dloss_zeros"], rtol=1e-5)
    dloss(1, out).sum().backward()
    params = dict(d.named_parameters())
    for tname, dname in dfl_names(d, "dis").items():
        got = torch_to_dfl_array(params[tname].grad.numpy())
        key = f"grad/{dname}"
        if key + "__first4096" in g.files:
            ref, got = g[key + "__first4096"], got.ravel()[:4096]
        else:
            ref = g[key]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max(), err_msg=dname)
    np.testing.assert_allclose(nhwc(x.grad), g["grad_input"], rtol=0, atol=1e-5 * np.abs(g["grad_input"]).max())


def test_code_discriminator_shapes_spec():
    d = CodeDiscriminator(256, 16)  # df-ud @256: inter out 256x16x16 -> 16 -> 9 -> 5 -> 3
    assert d.n_convs == 3
    assert d(torch.zeros(1, 256, 16, 16)).shape == (1, 1, 3, 3)
    assert [getattr(d, f"convs_{i}").weight.shape[0] for i in range(3)] == [256, 512, 1024]


def test_conv_transpose_same_is_full_transposed_conv_cropped_at_the_end():
    gen = torch.Generator().manual_seed(0)
    m = _ConvTransposeSame(2, 3, 3, 2)
    x = torch.randn(1, 2, 5, 4, generator=gen)
    full = F.conv_transpose2d(x, m.weight, m.bias, stride=2)  # (2n+1)
    y = m(x)
    assert y.shape == (1, 3, 10, 8)
    torch.testing.assert_close(y, full[..., :10, :8], rtol=1e-6, atol=1e-7)
    # the tempting padding=1, output_padding=1 version is shifted by one pixel
    shifted = F.conv_transpose2d(x, m.weight, m.bias, stride=2, padding=1, output_padding=1)
    assert not torch.allclose(shifted, y)
    m1 = _ConvTransposeSame(2, 3, 3, 1)
    torch.testing.assert_close(m1(x), F.conv_transpose2d(x, m1.weight, m1.bias, padding=1))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_conv_transpose_same_gradients_match_float64(channels_last):
    """The stride-2 upconv's gradients against the same layer in float64. A bias passed to
    conv_transpose2d gets oneDNN's fused bias gradient on CPU: a float32 sum of N·(2H+1)·(2W+1) values per
    channel, ~5e-6 relative error here for 8,192 values (1e-4 on other CPUs, the step-parity tolerance).
    Added after the crop (as DFL's bias_add), it is autograd's reduction: exact to float rounding."""
    gen = torch.Generator().manual_seed(3)
    m = _ConvTransposeSame(64, 32, 3, 2)
    with torch.no_grad():
        m.bias.uniform_(-0.1, 0.1, generator=gen)
    x = torch.randn(2, 64, 32, 32, generator=gen)  # 2·64·64 = 8,192 output values per channel
    # an upstream gradient of one sign per channel, like DLoss's through a 1x1 out_conv
    g = (torch.randn(2, 32, 64, 64, generator=gen) * 0.1 + 1.0) * 1e-4
    m64 = _ConvTransposeSame(64, 32, 3, 2).double()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    x.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    m(x).backward(g)
    m64(x64).backward(g.double())
    for name, got, ref in (("bias", m.bias.grad, m64.bias.grad), ("weight", m.weight.grad, m64.weight.grad),
                           ("input", x.grad, x64.grad)):
        err = (got.double() - ref).abs().max().item()
        # step-parity tolerance (tests/train/test_step_parity.py): max|Δ| <= 1e-4 · max|g_ref|
        assert err <= 1e-4 * ref.abs().max().item(), name
    # the bias gradient is a plain sum: float rounding only (observed ~2e-7; the fused one 5e-6)
    rel = ((m.bias.grad.double() - m64.bias.grad).abs() / m64.bias.grad.abs()).max().item()
    assert rel <= 1e-6, f"bias gradient relative error {rel:.2e}"


def test_weight_file_round_trip_and_errors_name_the_key(tmp_path):
    d = UNetPatchDiscriminator(8)
    state = dfl_part_arrays(d, "D_src")  # weight-file keys (scope stripped)
    assert state["upconvs_0/weight:0"].shape == (3, 3, 32, 64)  # TF conv-transpose (kh, kw, out, in)
    assert state["in_conv/weight:0"].shape == (1, 1, 3, 16)  # TF conv (kh, kw, in, out)
    f = tmp_path / "GAN.npy"
    f.write_bytes(pickle.dumps(state, protocol=4))
    d2 = UNetPatchDiscriminator(8)
    load_dfl_part_file(d2, f, "D_src")
    for (n, p), (_, q) in zip(d.named_parameters(), d2.named_parameters()):
        assert torch.equal(p, q), n
    del state["out_conv/bias:0"]
    state["in_conv/weight:0"] = np.zeros((1, 1, 4, 16), np.float32)
    f.write_bytes(pickle.dumps(state, protocol=4))
    with pytest.raises(CheckpointError) as e:
        load_dfl_part_file(d2, f, "D_src", options="gan_dims")
    msg = str(e.value)
    assert "GAN.npy: does not fit part 'D_src'" in msg and "check the gan_dims options" in msg
    assert "key 'out_conv/bias:0' missing" in msg and "key 'in_conv/weight:0': expected shape (1, 1, 3, 16)" in msg


def test_resolution_check():
    check_unet_patch_d_resolution(64, 64, 8)
    with pytest.raises(TorchSAEError, match="multiple of 4"):
        check_unet_patch_d_resolution(66, 66, 8)
    with pytest.raises(TorchSAEError, match="gan_patch_size"):
        UNetPatchDiscriminator(8)(torch.zeros(1, 3, 30, 30))


def test_glorot_init_and_zero_bias():
    d = CodeDiscriminator(64, 8)
    w = d.convs_1.weight  # (512, 256, 3, 3)
    limit = np.sqrt(6 / (9 * 256 + 9 * 512))
    assert w.abs().max() <= limit and w.abs().max() > 0.9 * limit
    assert torch.count_nonzero(d.convs_1.bias) == 0
