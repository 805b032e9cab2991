"""SAEHD's losses (docs/dfl.md §3.2–§3.4, §4.2–§4.5) and TorchSAE's extra terms.

`saehd_losses(outputs, batch, spec, rt)` is the whole SAEHD generator loss: `spec` is the recipe's
[loss] table (engine.recipe.specs.LossSpec) and `rt` the `LossRuntime` (resolution, pretrain, kernels).
The per-sample ops DFL's terms are made of live in `ops`; latent distillation in `distill`. Every term is a
function of tensors (and, for GAN / true face, of the discriminator it scores with); the terms that need
another forward pass of a model (extra identities, a teacher's codes) are run by engine.train.extra_losses.
"""

from __future__ import annotations

from .distill import DISTILL_MODES, latent_distill
from .ops import (TV_MODES, dloss, gaussian_blur, gaussian_kernel_1d, gaussian_kernel_2d, gaussian_kernel_size,
                  l1_per_sample, mean_chw, mse_per_sample, style_loss, total_variation_mse)
from .saehd import (DST_TERMS, G_TERMS, SRC_TERMS, LossRuntime, SAEHDTargets, apply_blur_out_mask, blur_out_mask,
                    code_d_loss, dssim_windows, gan_active, gan_d_loss, identity_recon_loss, masked_dssim,
                    prepare_targets, saehd_losses, true_face_d_active, true_face_g_active)

__all__ = [
    "LossRuntime", "SAEHDTargets", "saehd_losses", "prepare_targets", "apply_blur_out_mask", "blur_out_mask",
    "masked_dssim", "dssim_windows", "gan_active", "true_face_g_active", "true_face_d_active",
    "identity_recon_loss", "gan_d_loss", "code_d_loss", "SRC_TERMS", "DST_TERMS", "G_TERMS",
    "gaussian_blur", "gaussian_kernel_size", "gaussian_kernel_1d", "gaussian_kernel_2d", "style_loss",
    "total_variation_mse", "TV_MODES", "dloss", "mean_chw", "mse_per_sample", "l1_per_sample",
    "latent_distill", "DISTILL_MODES",
]
