"""SAEHD's losses (spec §3.2–§3.4, §4.2–§4.5) and TorchSAE's extra terms, each registered by name.

Registered names (`LOSSES`): dssim (masked multi-window DSSIM), mse, l1, style, total_variation, dloss,
latent_distill, saehd (the whole SAEHD generator loss).
"""

from __future__ import annotations

from .distill import DISTILL_MODES, freeze_teacher, latent_distill, latent_distill_hook
from .ops import (TV_MODES, dloss, gaussian_blur, gaussian_kernel_1d, gaussian_kernel_2d, gaussian_kernel_size,
                  l1_per_sample, mean_chw, mse_per_sample, style_loss, total_variation_mse)
from .registry import LOSSES, get_loss, register_loss
from .saehd import (DST_TERMS, G_TERMS, SRC_TERMS, LossConfig, SAEHDTargets, apply_blur_out_mask, blur_out_mask,
                    code_d_loss, gan_d_loss, masked_dssim, prepare_targets, saehd_losses)

for _name, _fn in (("dssim", masked_dssim), ("mse", mse_per_sample), ("l1", l1_per_sample), ("style", style_loss),
                   ("total_variation", total_variation_mse), ("dloss", dloss), ("latent_distill", latent_distill),
                   ("saehd", saehd_losses)):
    register_loss(_name)(_fn)
del _name, _fn

__all__ = [
    "LOSSES", "get_loss", "register_loss",
    "LossConfig", "SAEHDTargets", "saehd_losses", "prepare_targets", "apply_blur_out_mask", "blur_out_mask",
    "masked_dssim", "gan_d_loss", "code_d_loss", "SRC_TERMS", "DST_TERMS", "G_TERMS",
    "gaussian_blur", "gaussian_kernel_size", "gaussian_kernel_1d", "gaussian_kernel_2d", "style_loss",
    "total_variation_mse", "TV_MODES", "dloss", "mean_chw", "mse_per_sample", "l1_per_sample",
    "latent_distill", "latent_distill_hook", "freeze_teacher", "DISTILL_MODES",
]
