"""SAEHD's generator and discriminator losses (docs/dfl.md §3.2–§3.4), per sample, NCHW.

`saehd_losses(outputs, batch, spec, rt)` returns a dict of named per-sample terms (each shape (N,)) plus
``src_loss``, ``dst_loss`` and ``G_loss``. The gradient DFL applies is that of ``G_loss.sum()`` (§12.1).

Inputs
------
``batch`` (DFL's names, NCHW float in [0, 1], BGR):
  ``target_src``, ``target_dst`` (N,3,R,R); ``target_srcm``, ``target_dstm`` (N,1,R,R) FULL_FACE masks;
  ``target_srcm_em``, ``target_dstm_em`` (N,1,R,R) EYES_MOUTH masks (only read with eyes_mouth_prio).
  ``warped_src`` / ``warped_dst`` are the network inputs; the losses do not read them.
``outputs`` (the SwapModel's ``forward_train``): ``pred_src_src``, ``pred_src_srcm``, ``pred_dst_dst``,
  ``pred_dst_dstm``; with face style also ``pred_src_dst_no_code_grad``, ``pred_src_dstm``,
  with bg style ``pred_src_dst``; with true face ``src_code``.

Term names (also the golden's ``term/*`` names): ``src_dssim``, ``src_mse``, ``src_em_l1``,
``src_mask_mse``, ``src_face_style``, ``src_bg_style_dssim``, ``src_bg_style_mse``, ``dst_dssim``,
``dst_mse``, ``dst_em_l1``, ``dst_mask_mse``, and the G-only terms ``true_face``, ``gan``, ``gan_tv``,
``gan_bg_mse``. A term is present only when it is active.

Decisions where DFL is ambiguous or quirky (documented in docs/dfl.md):
  * bg style uses the **src** target mask on dst images (§3.3 quirk, §12.9), as DFL does.
  * In pretrain the face/bg style terms and the GAN terms are off, but the true-face G term stays when
    true_face_power ≠ 0 (§12.10); `[loss].true_face_in_pretrain = false` drops it.
  * The TV term differences along channels and H, as DFL on a GPU (§12.12); `tv_mode="spatial"` gives H, W.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs
import torch

from engine.errors import TorchSAEError
from engine.recipe.specs import LossSpec
from kernels.dssim import dssim as _dssim
from kernels.dssim import saehd_dssim as _saehd_dssim

from .ops import dloss, gaussian_blur, l1_per_sample, mean_chw, mse_per_sample, style_loss, total_variation_mse

__all__ = [
    "LossRuntime",
    "dssim_windows",
    "gan_active",
    "true_face_g_active",
    "true_face_d_active",
    "identity_recon_loss",
    "SAEHDTargets",
    "apply_blur_out_mask",
    "blur_out_mask",
    "prepare_targets",
    "masked_dssim",
    "saehd_losses",
    "gan_d_loss",
    "code_d_loss",
    "SRC_TERMS",
    "DST_TERMS",
    "G_TERMS",
]

SRC_TERMS = ("src_dssim", "src_mse", "src_em_l1", "src_mask_mse", "src_face_style", "src_bg_style_dssim",
             "src_bg_style_mse")
DST_TERMS = ("dst_dssim", "dst_mse", "dst_em_l1", "dst_mask_mse")
G_TERMS = ("true_face", "gan", "gan_tv", "gan_bg_mse")


@attrs.frozen(kw_only=True)
class LossRuntime:
    """What the SAEHD loss needs besides its [loss] spec: values other tables or the training state decide.

    resolution: R, the face resolution ([model].resolution); derives the DSSIM windows, σm = max(1, R//32),
        the style radius R//8 and the blur-out σ = R/128 (docs/dfl.md §3.3, §3.4, §3.2).
    pretrain: DFL pretrain mode at this step ([train].pretrain or the schedule): the style and GAN terms are
        forced off (§1, §11.6); the true-face G term stays unless `LossSpec.true_face_in_pretrain` is off.
    kernels: DSSIM implementation request ([compile].kernels; kernels/dssim/op.py chooses).
    """

    resolution: int
    pretrain: bool = False
    kernels: str = "auto"

    @property
    def sigma_mask(self) -> int:
        """σm = max(1, R//32) (§3.3), an integer in DFL."""
        return max(1, self.resolution // 32)

    @property
    def sigma_style(self) -> int:
        """Face-style blur radius R//8 (§3.4 term 5)."""
        return self.resolution // 8

    @property
    def sigma_blur_out(self) -> float:
        """blur_out_mask σ = R/128, a float (§3.2)."""
        return self.resolution / 128.0

    @property
    def bg_style_window(self) -> int:
        """bg-style DSSIM window int(R/11.6) (one window at every resolution, §3.4 term 6)."""
        return int(self.resolution / 11.6)

    @property
    def style_active(self) -> bool:
        return not self.pretrain


def dssim_windows(spec: LossSpec, resolution: int) -> tuple[tuple[float, int], ...]:
    """(weight, filter_size) pairs of the structural term (§3.4 term 1): R < 256 → one window int(R/11.6)
    with the whole dssim_weight; from 256 → int(R/11.6) and int(R/23.2), half each."""
    r = resolution
    if r < 256:
        return ((spec.dssim_weight, int(r / 11.6)),)
    return ((spec.dssim_weight / 2.0, int(r / 11.6)), (spec.dssim_weight / 2.0, int(r / 23.2)))


def gan_active(spec: LossSpec, rt: LossRuntime) -> bool:
    """GAN terms run when gan_power ≠ 0 and not pretrain (pretrain forces gan_power to 0)."""
    return spec.gan_power != 0 and not rt.pretrain


def true_face_g_active(spec: LossSpec, rt: LossRuntime) -> bool:
    """The true-face generator term: true_face_power ≠ 0, in pretrain too unless true_face_in_pretrain is off."""
    return spec.true_face_power != 0 and (spec.true_face_in_pretrain or not rt.pretrain)


def true_face_d_active(spec: LossSpec, rt: LossRuntime) -> bool:
    """The code-discriminator step: true_face_power ≠ 0 and not pretrain (§3.7 step 3)."""
    return spec.true_face_power != 0 and not rt.pretrain


@attrs.frozen
class SAEHDTargets:
    """Per-batch targets and masks (§3.2, §3.3); depend only on the batch, never need gradients.

    target_src/target_dst: after blur_out_mask (if on). srcm_blur, dstm_blur: ``clip(blur(m, σm), 0, .5)·2``.
    srcm_anti_blur = 1 − srcm_blur. style_mask_blur = srcm_blur (the src mask, quirk §12.9);
    style_mask_anti_blur = 1 − style_mask_blur. tS/tD: masked targets (unmasked without masked_training).
    """

    target_src: torch.Tensor
    target_dst: torch.Tensor
    srcm_blur: torch.Tensor
    srcm_anti_blur: torch.Tensor
    dstm_blur: torch.Tensor
    style_mask_blur: torch.Tensor
    style_mask_anti_blur: torch.Tensor
    tS: torch.Tensor
    tD: torch.Tensor


def blur_out_mask(target: torch.Tensor, mask: torch.Tensor, radius: float) -> torch.Tensor:
    """§3.2 for one image set: replace the background by a normalised blur that ignores face pixels.

    ``x = blur(T·(1−M), σ)``; ``y = 1 − blur(M, σ)``, with y = 1 where y == 0; ``T·M + (x/y)·(1−M)``.
    target (N,C,H,W), mask (N,1,H,W).
    """
    anti = 1.0 - mask
    x = gaussian_blur(target * anti, radius)
    y = 1.0 - gaussian_blur(mask, radius)
    y = torch.where(y == 0, torch.ones_like(y), y)
    return target * mask + (x / y) * anti


def apply_blur_out_mask(batch: Mapping[str, torch.Tensor], spec: LossSpec, rt: LossRuntime
                        ) -> dict[str, torch.Tensor]:
    """A copy of `batch` with target_src/target_dst blurred out (§3.2) when spec.blur_out_mask, else a copy."""
    out = dict(batch)
    if spec.blur_out_mask:
        out["target_src"] = blur_out_mask(batch["target_src"], batch["target_srcm"], rt.sigma_blur_out)
        out["target_dst"] = blur_out_mask(batch["target_dst"], batch["target_dstm"], rt.sigma_blur_out)
    return out


def _require(d: Mapping[str, torch.Tensor], keys: tuple[str, ...], what: str, why: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise TorchSAEError(f"saehd_losses: {what} is missing {', '.join(repr(k) for k in missing)} "
                            f"(needed for {why}; has: {', '.join(sorted(d))})")


def prepare_targets(batch: Mapping[str, torch.Tensor], spec: LossSpec, rt: LossRuntime) -> SAEHDTargets:
    """Blur-out (§3.2) and mask preparation (§3.3), computed without gradients."""
    _require(batch, ("target_src", "target_dst", "target_srcm", "target_dstm"), "the batch", "the SAEHD losses")
    with torch.no_grad():
        b = apply_blur_out_mask(batch, spec, rt)
        sm = rt.sigma_mask
        srcm_blur = gaussian_blur(b["target_srcm"], sm).clamp(0.0, 0.5) * 2.0
        dstm_blur = gaussian_blur(b["target_dstm"], sm).clamp(0.0, 0.5) * 2.0
        # DFL computes a blur of pred_src_dstm·pred_dst_dstm here and overwrites it with the src target
        # mask (§3.3 quirk): the bg-style term uses the SRC mask on dst images.
        style_mask_blur = srcm_blur.clamp(0.0, 1.0)
        if spec.masked_training:
            tS = b["target_src"] * srcm_blur
            tD = b["target_dst"] * dstm_blur
        else:
            tS, tD = b["target_src"], b["target_dst"]
        return SAEHDTargets(
            target_src=b["target_src"], target_dst=b["target_dst"],
            srcm_blur=srcm_blur, srcm_anti_blur=1.0 - srcm_blur, dstm_blur=dstm_blur,
            style_mask_blur=style_mask_blur, style_mask_anti_blur=1.0 - style_mask_blur, tS=tS, tD=tD)


def masked_dssim(target: torch.Tensor, pred: torch.Tensor, windows: tuple[tuple[float, int], ...]) -> torch.Tensor:
    """``Σ_w weight_w · mean_C dssim(target, pred, fs_w)``, (N,) (§3.4 term 1; DFL's img1=target, img2=pred)."""
    out = None
    for weight, fs in windows:
        t = weight * _dssim(target, pred, fs).mean(dim=1)
        out = t if out is None else out + t
    return out


def _recon_terms(prefix: str, t_masked, p_masked, target, pred, em, target_mask, pred_mask,
                 spec: LossSpec, rt: LossRuntime) -> dict[str, torch.Tensor]:
    """§3.4 terms 1–4 for one side (src or dst)."""
    # DFL's windows in one fused pass (kernels.dssim.saehd_dssim: 10·w1, or 5·w1 + 5·w2 from R = 256),
    # rescaled when the recipe changes the weight
    structural = _saehd_dssim(p_masked, t_masked, rt.resolution, impl=rt.kernels)
    if spec.dssim_weight != 10.0:
        structural = structural * (spec.dssim_weight / 10.0)
    terms = {
        f"{prefix}_dssim": structural,
        f"{prefix}_mse": spec.mse_weight * mse_per_sample(t_masked, p_masked),
    }
    if spec.eyes_mouth_prio:
        # L1 with the raw EYES_MOUTH mask (already blurred by the data pipeline), broadcast over channels.
        terms[f"{prefix}_em_l1"] = spec.eyes_mouth_weight * l1_per_sample(target * em, pred * em)
    terms[f"{prefix}_mask_mse"] = spec.mask_weight * mse_per_sample(target_mask, pred_mask)
    return terms


def saehd_losses(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], spec: LossSpec,
                 rt: LossRuntime, *,
                 targets: SAEHDTargets | None = None,
                 code_d: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 gan_d: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 ) -> dict[str, torch.Tensor]:
    """SAEHD's per-sample generator loss (§3.4), every tensor (N,).

    Returns the active terms (see module docstring) plus ``src_loss`` (sum of src_* terms), ``dst_loss``
    (sum of dst_* terms) and ``G_loss = src_loss + dst_loss + true_face + gan + gan_tv + gan_bg_mse``.
    `targets` may be passed when already computed for this batch (`prepare_targets`). `code_d` (true face)
    and `gan_d` (GAN) are required only when their power is active; their parameters receive gradients
    from G_loss too, so a training step should freeze them (requires_grad) during the G backward.
    """
    _require(outputs, ("pred_src_src", "pred_src_srcm", "pred_dst_dst", "pred_dst_dstm"), "the model outputs",
             "the reconstruction terms")
    tg = prepare_targets(batch, spec, rt) if targets is None else targets
    p_src, p_dst = outputs["pred_src_src"], outputs["pred_dst_dst"]
    if spec.masked_training:
        pS = p_src * tg.srcm_blur
        pD = p_dst * tg.dstm_blur
    else:
        pS, pD = p_src, p_dst
    if spec.eyes_mouth_prio:
        _require(batch, ("target_srcm_em", "target_dstm_em"), "the batch", "eyes_mouth_prio")

    src = _recon_terms("src", tg.tS, pS, tg.target_src, p_src, batch.get("target_srcm_em"),
                       batch["target_srcm"], outputs["pred_src_srcm"], spec, rt)
    if spec.face_style_power != 0 and rt.style_active:
        _require(outputs, ("pred_src_dst_no_code_grad", "pred_src_dstm", "pred_dst_dst", "pred_dst_dstm"),
                 "the model outputs", "face_style_power")
        fsp = spec.face_style_power / 100.0
        # Gradients reach the (src) decoder only, through the no-code-grad swap (§3.4 term 5).
        src["src_face_style"] = style_loss(
            outputs["pred_src_dst_no_code_grad"] * outputs["pred_src_dstm"].detach(),
            (outputs["pred_dst_dst"] * outputs["pred_dst_dstm"]).detach(),
            gaussian_blur_radius=rt.sigma_style, loss_weight=spec.face_style_weight * fsp)
    if spec.bg_style_power != 0 and rt.style_active:
        _require(outputs, ("pred_src_dst",), "the model outputs", "bg_style_power")
        w = spec.bg_style_weight * spec.bg_style_power / 100.0
        a = tg.style_mask_anti_blur
        psd_a = outputs["pred_src_dst"] * a
        td_a = tg.target_dst * a
        src["src_bg_style_dssim"] = w * _dssim(psd_a, td_a, rt.bg_style_window, impl=rt.kernels).mean(dim=1)
        src["src_bg_style_mse"] = w * mse_per_sample(psd_a, td_a)

    dst = _recon_terms("dst", tg.tD, pD, tg.target_dst, p_dst, batch.get("target_dstm_em"),
                       batch["target_dstm"], outputs["pred_dst_dstm"], spec, rt)

    g: dict[str, torch.Tensor] = {}
    if true_face_g_active(spec, rt):
        if code_d is None:
            raise TorchSAEError("saehd_losses: true_face_power is "
                                f"{spec.true_face_power} but no code discriminator was given (pass code_d=...)")
        _require(outputs, ("src_code",), "the model outputs", "true_face_power")
        g["true_face"] = spec.true_face_power * dloss(1.0, code_d(outputs["src_code"]))
    if gan_active(spec, rt):
        if gan_d is None:
            raise TorchSAEError(f"saehd_losses: gan_power is {spec.gan_power} but no GAN discriminator was given "
                                "(pass gan_d=...)")
        d, d2 = gan_d(pS)
        g["gan"] = spec.gan_power * (dloss(1.0, d) + dloss(1.0, d2))
        if spec.masked_training:
            g["gan_tv"] = spec.gan_tv_weight * total_variation_mse(p_src, spec.tv_mode)
            # weak background reconstruction "to suppress random bright dots from GAN"
            g["gan_bg_mse"] = spec.gan_bg_weight * mean_chw(
                (p_src * tg.srcm_anti_blur - tg.target_src * tg.srcm_anti_blur).square())

    out: dict[str, torch.Tensor] = {**src, **dst, **g}
    # Accumulated in DFL's order (+= one term at a time), so the sums round as DFL's do.
    out["src_loss"] = _sum_in_order(src.values())
    out["dst_loss"] = _sum_in_order(dst.values())
    out["G_loss"] = _sum_in_order([out["src_loss"], out["dst_loss"], *g.values()])
    return out


def _sum_in_order(values) -> torch.Tensor:
    it = iter(values)
    acc = next(it)
    for v in it:
        acc = acc + v
    return acc


def gan_d_loss(gan_d: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], pred_masked: torch.Tensor,
               target_masked: torch.Tensor) -> torch.Tensor:
    """GAN discriminator loss (§3.4), (N,): with ``d, d2 = D(pS)`` and ``t, t2 = D(tS)``,
    ``0.5·(DLoss(1,t) + DLoss(0,d)) + 0.5·(DLoss(1,t2) + DLoss(0,d2))``. pS is detached by the caller
    (only D's weights are updated in DFL's GAN step)."""
    d, d2 = gan_d(pred_masked)
    t, t2 = gan_d(target_masked)
    return 0.5 * (dloss(1.0, t) + dloss(0.0, d)) + 0.5 * (dloss(1.0, t2) + dloss(0.0, d2))


def code_d_loss(code_d: Callable[[torch.Tensor], torch.Tensor], src_code: torch.Tensor,
                dst_code: torch.Tensor) -> torch.Tensor:
    """True-face discriminator loss (§3.4), (N,): ``0.5·(DLoss(1, D(dst_code)) + DLoss(0, D(src_code)))``."""
    return 0.5 * (dloss(1.0, code_d(dst_code)) + dloss(0.0, code_d(src_code)))


def identity_recon_loss(x: str, target: torch.Tensor, target_mask: torch.Tensor, target_mask_em: torch.Tensor | None,
                        pred: torch.Tensor, pred_mask: torch.Tensor, spec: LossSpec, rt: LossRuntime
                        ) -> dict[str, torch.Tensor]:
    """Reconstruction of identity `x` for explicit graphs with identities beyond src/dst (a TorchSAE addition).

    `target` (N, 3, R, R), `target_mask` (N, 1, R, R) and `target_mask_em` (the eyes/mouth mask or None) are
    the batch's ``target_X, target_Xm, target_Xm_em``; `pred`, `pred_mask` are X's face rendered through X's
    own code path and decoder (the caller runs the model: engine.train.extra_losses). SAEHD's src/dst terms
    1–4 (§3.4) with the same mask preparation (§3.3). Returns ``{"X_dssim": (N,), "X_mse": …,
    "X_mask_mse": …, ["X_em_l1"], "X_loss": sum}``; the training step adds ``X_loss`` to G_loss.
    """
    if spec.masked_training:
        blur = torch.clamp(gaussian_blur(target_mask, rt.sigma_mask), 0.0, 0.5) * 2.0
        t_m, p_m = target * blur, pred * blur
    else:
        t_m, p_m = target, pred
    terms = _recon_terms(x, t_m, p_m, target, pred, target_mask_em, target_mask, pred_mask, spec, rt)
    return {**terms, f"{x}_loss": _sum_in_order(terms.values())}
