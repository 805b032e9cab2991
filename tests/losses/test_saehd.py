"""SAEHD's mask preparation and every generator term against DFL's own training graph (golden
extra/saehd_mask_prep_and_terms_res64: df-ud res 64, eyes_mouth_prio on, face_style 10, bg_style 10),
plus the configuration rules (§3.4 table), pretrain forcing, quirks and GAN/true-face terms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import RecipeErrors, TorchSAEError
from engine.losses import (DST_TERMS, SRC_TERMS, LossRuntime, blur_out_mask, code_d_loss, dloss, dssim_windows,
                           gan_d_loss, gaussian_blur, prepare_targets, saehd_losses, total_variation_mse,
                           true_face_d_active, true_face_g_active)
from engine.recipe import from_dict
from engine.recipe.specs import LossSpec


def nchw(a) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def case(golden):
    g = np.load(golden / "extra" / "saehd_mask_prep_and_terms_res64.npz")
    inp = np.load(golden / "train_step" / "saehd_df-ud_res64_inputs.npz")
    batch = {k: nchw(inp[k]) for k in inp.files}
    outs = {k.split("/", 1)[1]: nchw(g[k]) for k in g.files if k.startswith("pred/")}
    # the no-code-grad swap has the same values as the swap (it only differs in gradient flow)
    outs["pred_src_dst_no_code_grad"] = outs["pred_src_dst"]
    return g, batch, outs


GOLDEN_CFG = dict(resolution=64, eyes_mouth_prio=True, face_style_power=10.0, bg_style_power=10.0)


def loss(resolution: int, *, pretrain: bool = False, **spec) -> tuple[LossSpec, LossRuntime]:
    """(the [loss] spec, its runtime): what saehd_losses / prepare_targets take after the batch."""
    return LossSpec(**spec), LossRuntime(resolution=resolution, pretrain=pretrain)


@pytest.mark.parity
def test_inputs_are_the_train_step_batch(case):
    g, batch, _ = case
    for k in ("target_srcm", "target_srcm_em", "target_dstm", "target_dstm_em"):
        np.testing.assert_array_equal(nchw(g[f"input/{k}"]).numpy(), batch[k].numpy(), err_msg=k)


@pytest.mark.parity
def test_mask_preparation_matches_dfl(case):
    g, batch, _ = case
    tg = prepare_targets(batch, *loss(**GOLDEN_CFG))
    for ours, ref in (("srcm_blur", "mask/target_srcm_blur"), ("dstm_blur", "mask/target_dstm_blur"),
                      ("style_mask_blur", "mask/style_mask_blur")):
        np.testing.assert_allclose(getattr(tg, ours).numpy(), nchw(g[ref]).numpy(), rtol=0, atol=1e-6, err_msg=ours)
    # the raw blur before the clip, too
    raw = gaussian_blur(batch["target_srcm"], 2)
    np.testing.assert_allclose(raw.numpy(), nchw(g["mask/srcm_gblur"]).numpy(), atol=1e-6)
    assert torch.equal(tg.srcm_anti_blur, 1 - tg.srcm_blur)
    assert torch.equal(tg.tS, batch["target_src"] * tg.srcm_blur)


# Observed relative differences (max over the batch / max |ref|): DSSIM terms <= 1.2e-5 (TF's float32
# sums), MSE/L1/mask terms <= 1e-7, face style 1.5e-4 (TF's sequential float32 moments, see test_ops).
TERM_RTOL = {"src_face_style": 5e-4, "src_dssim": 5e-5, "dst_dssim": 5e-5, "src_bg_style_dssim": 5e-5}


@pytest.mark.parity
def test_every_term_matches_dfl(case):
    g, batch, outs = case
    got = saehd_losses(outs, batch, *loss(**GOLDEN_CFG))
    expected_terms = {k.split("/", 1)[1] for k in g.files if k.startswith("term/")}
    assert expected_terms == {k for k in got if k in SRC_TERMS + DST_TERMS}
    for name in sorted(expected_terms):
        ref = g[f"term/{name}"]
        rtol = TERM_RTOL.get(name, 1e-6)
        err = np.abs(got[name].numpy() - ref).max() / np.abs(ref).max()
        assert got[name].shape == (2,)
        assert err <= rtol, f"{name}: rel err {err:.3g} > {rtol} ({got[name].numpy()} vs {ref})"
    np.testing.assert_allclose(got["src_loss"].numpy(), g["src_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["dst_loss"].numpy(), g["dst_loss"], rtol=1e-5)
    assert torch.equal(got["G_loss"], got["src_loss"] + got["dst_loss"])


@pytest.mark.parity
def test_default_options_give_the_train_step_losses(case, golden):
    # DFL's set-1 options (no emp, no styles): src/dst = dssim + mse + mask (the golden cross-check)
    g, batch, outs = case
    got = saehd_losses(outs, batch, *loss(resolution=64))
    assert set(got) == {"src_dssim", "src_mse", "src_mask_mse", "dst_dssim", "dst_mse", "dst_mask_mse",
                        "src_loss", "dst_loss", "G_loss"}
    res = np.load(golden / "train_step" / "saehd_df-ud_res64_results.npz")
    np.testing.assert_allclose(got["src_loss"].numpy(), res["src_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["dst_loss"].numpy(), res["dst_loss"], rtol=1e-5)


@pytest.mark.parametrize("res,windows,sm,style,blur_out", [
    (64, ((10.0, 5),), 2, 8, 0.5),
    (128, ((10.0, 11),), 4, 16, 1.0),
    (192, ((10.0, 16),), 6, 24, 1.5),
    (224, ((10.0, 19),), 7, 28, 1.75),
    (256, ((5.0, 22), (5.0, 11)), 8, 32, 2.0),
    (320, ((5.0, 27), (5.0, 13)), 10, 40, 2.5),
    (384, ((5.0, 33), (5.0, 16)), 12, 48, 3.0),
    (512, ((5.0, 44), (5.0, 22)), 16, 64, 4.0),
])
def test_derived_values_table(res, windows, sm, style, blur_out):
    """docs/dfl.md §3.4 'Common values by resolution'."""
    rt = LossRuntime(resolution=res)
    assert dssim_windows(LossSpec(), res) == windows
    assert rt.sigma_mask == sm and rt.sigma_style == style and rt.sigma_blur_out == blur_out
    assert rt.bg_style_window == windows[0][1]


def test_dssim_weight_scales_windows():
    assert dssim_windows(LossSpec(dssim_weight=4.0), 256) == ((2.0, 22), (2.0, 11))


def test_loss_options_are_validated_by_the_recipe():
    # [loss] is the one schema: its ranges and choices are checked when the recipe is read
    with pytest.raises(RecipeErrors, match="mse_weight"):
        from_dict({"loss": {"mse_weight": -1.0}})
    with pytest.raises(RecipeErrors, match="tv_mode"):
        from_dict({"loss": {"tv_mode": "nhwc"}})


def test_pretrain_forces_styles_and_gan_off_but_keeps_true_face(case):
    g, batch, outs = case
    outs = dict(outs, src_code=torch.randn(2, 64, 8, 8))
    code_d = lambda z: z[:, :1, :3, :3]  # noqa: E731 - a fixed "discriminator" for the term's presence
    gan_d = lambda x: (x[:, :1, ::4, ::4], x[:, :1])  # noqa: E731
    cfg = loss(64, face_style_power=10, bg_style_power=10, true_face_power=0.5, gan_power=1.0, pretrain=True)
    got = saehd_losses(outs, batch, *cfg, code_d=code_d, gan_d=gan_d)
    assert "src_face_style" not in got and "src_bg_style_dssim" not in got and "gan" not in got
    assert "true_face" in got  # DFL quirk §12.10
    np.testing.assert_allclose(got["true_face"].numpy(), 0.5 * dloss(1.0, code_d(outs["src_code"])).numpy())
    assert not true_face_d_active(*cfg) and true_face_g_active(*cfg)
    got = saehd_losses(outs, batch, *loss(resolution=64, true_face_power=0.5, pretrain=True,
                                               true_face_in_pretrain=False), code_d=code_d)
    assert "true_face" not in got


def test_gan_terms_hand_check(case):
    g, batch, outs = case
    cfg = loss(resolution=64, gan_power=0.7)
    tg = prepare_targets(batch, *cfg)
    seen = []

    def gan_d(x):
        seen.append(x)
        return x[:, :1, ::8, ::8] * 3 - 1, x[:, 1:2] * 2 - 0.5

    got = saehd_losses(outs, batch, *cfg, gan_d=gan_d)
    pS = outs["pred_src_src"] * tg.srcm_blur
    assert len(seen) == 1 and torch.equal(seen[0], pS)
    d, d2 = gan_d(pS)
    torch.testing.assert_close(got["gan"], 0.7 * (dloss(1, d) + dloss(1, d2)))
    torch.testing.assert_close(got["gan_tv"], 1e-6 * total_variation_mse(outs["pred_src_src"], "dfl_gpu"))
    a = tg.srcm_anti_blur
    bg = ((outs["pred_src_src"] * a - batch["target_src"] * a) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got["gan_bg_mse"], 0.02 * bg)
    total = got["src_loss"] + got["dst_loss"] + got["gan"] + got["gan_tv"] + got["gan_bg_mse"]
    torch.testing.assert_close(got["G_loss"], total)
    # without masked training: unmasked inputs to D, and no TV / background terms
    got = saehd_losses(outs, batch, *loss(resolution=64, gan_power=0.7, masked_training=False), gan_d=gan_d)
    assert torch.equal(seen[-1], outs["pred_src_src"])
    assert "gan_tv" not in got and "gan_bg_mse" not in got


def test_d_losses_hand_check():
    gen = torch.Generator().manual_seed(1)
    fake = torch.randn(2, 1, 4, 4, generator=gen)
    real = torch.randn(2, 1, 4, 4, generator=gen)

    def D(x):
        return x * 2.0, x[..., :2, :2] - 1.0

    got = gan_d_loss(D, fake, real)
    exp = 0.5 * (dloss(1, real * 2) + dloss(0, fake * 2)) + 0.5 * (dloss(1, real[..., :2, :2] - 1)
                                                                 + dloss(0, fake[..., :2, :2] - 1))
    torch.testing.assert_close(got, exp)
    torch.testing.assert_close(code_d_loss(lambda z: z * 3, fake, real),
                               0.5 * (dloss(1, real * 3) + dloss(0, fake * 3)))


def test_bg_style_uses_the_src_target_mask(case):
    """Quirk §12.9: the predicted masks do not matter; the src target mask does."""
    g, batch, outs = case
    cfg = loss(resolution=64, bg_style_power=20.0)
    base = saehd_losses(outs, batch, *cfg)["src_bg_style_mse"]
    outs2 = dict(outs, pred_src_dstm=torch.zeros_like(outs["pred_src_dstm"]),
                 pred_dst_dstm=torch.ones_like(outs["pred_dst_dstm"]))
    assert torch.equal(saehd_losses(outs2, batch, *cfg)["src_bg_style_mse"], base)
    batch2 = dict(batch, target_srcm=torch.zeros_like(batch["target_srcm"]))
    changed = saehd_losses(outs, batch2, *cfg)["src_bg_style_mse"]
    assert not torch.allclose(changed, base)
    # hand value: 10 * 0.2 * mean((psd*A - td*A)^2) with A = 1 - srcm_blur
    a = 1 - prepare_targets(batch, *cfg).srcm_blur
    exp = 2.0 * ((outs["pred_src_dst"] * a - batch["target_dst"] * a) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(base, exp)


def test_face_style_gradient_reaches_only_the_no_code_grad_prediction(case):
    g, batch, outs = case
    leaves = {k: v.clone().requires_grad_() for k, v in outs.items()}
    got = saehd_losses(leaves, batch, *loss(resolution=64, face_style_power=10.0))
    got["src_face_style"].sum().backward()
    assert leaves["pred_src_dst_no_code_grad"].grad.abs().sum() > 0
    for k in ("pred_src_dstm", "pred_dst_dst", "pred_dst_dstm", "pred_src_dst", "pred_src_src"):
        assert leaves[k].grad is None, k


def test_blur_out_mask_rules():
    gen = torch.Generator().manual_seed(3)
    t = torch.rand(1, 3, 32, 32, generator=gen)
    ones = torch.ones(1, 1, 32, 32)
    assert torch.equal(blur_out_mask(t, ones, 0.5), t)  # all face: unchanged
    zeros = torch.zeros(1, 1, 32, 32)
    torch.testing.assert_close(blur_out_mask(t, zeros, 0.5), gaussian_blur(t, 0.5))  # no face: plain blur
    m = torch.zeros(1, 1, 32, 32)
    m[..., 8:24, 8:24] = 1
    out = blur_out_mask(t, m, 1.0)
    assert torch.equal(out[..., 8:24, 8:24], t[..., 8:24, 8:24])  # the face is kept exactly
    # background: normalised blur of the background only
    x = gaussian_blur(t * (1 - m), 1.0)
    y = 1 - gaussian_blur(m, 1.0)
    torch.testing.assert_close(out[..., 0:4, 0:4], (x / y)[..., 0:4, 0:4])


def test_blur_out_mask_is_applied_to_targets(case):
    g, batch, outs = case
    on = prepare_targets(batch, *loss(resolution=64, blur_out_mask=True))
    torch.testing.assert_close(on.target_src, blur_out_mask(batch["target_src"], batch["target_srcm"], 0.5))
    torch.testing.assert_close(on.tD, blur_out_mask(batch["target_dst"], batch["target_dstm"], 0.5) * on.dstm_blur)


def test_unmasked_training_uses_raw_images(case):
    g, batch, outs = case
    got = saehd_losses(outs, batch, *loss(resolution=64, masked_training=False))
    exp = 10 * ((batch["target_src"] - outs["pred_src_src"]) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got["src_mse"], exp)


def test_missing_inputs_are_named(case):
    g, batch, outs = case
    with pytest.raises(TorchSAEError, match="pred_src_dst_no_code_grad"):
        saehd_losses({k: v for k, v in outs.items() if k != "pred_src_dst_no_code_grad"}, batch,
                     *loss(resolution=64, face_style_power=5))
    with pytest.raises(TorchSAEError, match="code discriminator"):
        saehd_losses(outs, batch, *loss(resolution=64, true_face_power=0.1))
    with pytest.raises(TorchSAEError, match="GAN discriminator"):
        saehd_losses(outs, batch, *loss(resolution=64, gan_power=0.1))
    with pytest.raises(TorchSAEError, match="target_dstm_em"):
        saehd_losses(outs, {k: v for k, v in batch.items() if k != "target_dstm_em"},
                     *loss(resolution=64, eyes_mouth_prio=True))
