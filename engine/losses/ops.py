"""DFL's small loss ops in torch, NCHW: `nn.gaussian_blur`, `nn.style_loss`, `nn.total_variation_mse`,
SAEHD's `DLoss`, and the per-sample reductions every SAEHD term uses (docs/dfl.md §3.4, §4.2, §4.3, §4.5).

Every function reduces to one value per sample (shape (N,)): DFL's losses are per-sample vectors and the
gradient is taken of their batch *sum* (docs/dfl.md §12.1).

Deviations from DFL, all below fp32 rounding:
  * `gaussian_blur` runs as two 1-D passes (H then W) with the normalised 1-D kernel instead of one 2-D
    depthwise conv with the normalised outer product. Mathematically identical (the outer product of a
    normalised vector is normalised); it differs by rounding only (≤ 2e-7 on the goldens) and is what makes
    the R//8 style blur (129 taps at R=256) affordable.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.recipe.specs import TV_MODES

__all__ = [
    "gaussian_kernel_size",
    "gaussian_kernel_1d",
    "gaussian_kernel_2d",
    "gaussian_blur",
    "style_loss",
    "total_variation_mse",
    "TV_MODES",
    "dloss",
    "mean_chw",
    "mse_per_sample",
    "l1_per_sample",
]


def gaussian_kernel_size(radius: float) -> int:
    """DFL's kernel size for `nn.gaussian_blur(radius)` (§4.2): ``max(3, int(4σ))``, made odd by +1."""
    ks = max(3, int(2 * 2 * radius))
    if ks % 2 == 0:
        ks += 1
    return ks


@functools.lru_cache(maxsize=64)
def _kernel_1d_np(radius: float) -> np.ndarray:
    ks = gaussian_kernel_size(radius)
    mean = math.floor(0.5 * ks)
    x = np.arange(ks, dtype=np.float64)
    g = np.exp(-((x - mean) ** 2) / (2.0 * radius**2))  # float64 as DFL builds it
    return g / g.sum()


def gaussian_kernel_1d(radius: float, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D factor of DFL's blur kernel (§4.2), shape (ks,). Built in float64, rounded once."""
    if not radius > 0:
        raise ValueError(f"gaussian_blur: radius must be > 0, got {radius!r}")
    return torch.as_tensor(_kernel_1d_np(float(radius)), dtype=dtype, device=device)


def gaussian_kernel_2d(radius: float) -> np.ndarray:
    """DFL's 2-D kernel exactly as DFL builds it (float64 outer product → float32 → /= float32 sum), (ks, ks).

    Only used by tests and documentation; `gaussian_blur` uses the separable form.
    """
    ks = gaussian_kernel_size(radius)
    mean = math.floor(0.5 * ks)
    x = np.arange(ks, dtype=np.float64)
    g = np.exp(-((x - mean) ** 2) / (2.0 * float(radius) ** 2))
    k = np.outer(g, g).astype(np.float32)
    return k / np.sum(k)


def gaussian_blur(x: torch.Tensor, radius: float) -> torch.Tensor:
    """DFL ``nn.gaussian_blur(x, radius)`` (§4.2) on NCHW, any float σ > 0; output has the input's shape.

    ``ks = max(3, int(4σ))`` (+1 if even); weights ``exp(-(i - ks//2)²/(2σ²))``, normalised; **zero**
    padding of ks//2 (values within ks//2 of the border are darkened, as in DFL), depthwise.
    Computed as an H pass then a W pass (see module docstring). Differentiable.
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur: expected an NCHW tensor, got shape {tuple(x.shape)}")
    c = x.shape[1]
    k = gaussian_kernel_1d(radius, dtype=x.dtype, device=x.device)
    ks = k.numel()
    p = ks // 2
    kh = k.view(1, 1, ks, 1).expand(c, 1, ks, 1)
    kw = k.view(1, 1, 1, ks).expand(c, 1, 1, ks)
    y = F.conv2d(x, kh, padding=(p, 0), groups=c)
    return F.conv2d(y, kw, padding=(0, p), groups=c)


def style_loss(target: torch.Tensor, style: torch.Tensor, gaussian_blur_radius: float = 0.0,
               loss_weight: float = 1.0) -> torch.Tensor:
    """DFL ``nn.style_loss`` (§4.3), NCHW → (N,).

    If radius > 0 both inputs are blurred with `gaussian_blur`. Per channel, μ = spatial mean and
    v = population variance; ``std = sqrt(v + 1e-5)``;
    ``loss[n] = (Σ_c (μ_t − μ_s)² + Σ_c (std_t − std_s)²) · loss_weight / C``.
    """
    if target.shape != style.shape or target.dim() != 4:
        raise ValueError(f"style_loss: expected two NCHW tensors of the same shape, got {tuple(target.shape)} "
                         f"and {tuple(style.shape)}")
    if gaussian_blur_radius > 0:
        target = gaussian_blur(target, gaussian_blur_radius)
        style = gaussian_blur(style, gaussian_blur_radius)
    c_var, c_mean = torch.var_mean(target, dim=(2, 3), correction=0)  # (N, C)
    s_var, s_mean = torch.var_mean(style, dim=(2, 3), correction=0)
    c_std = torch.sqrt(c_var + 1e-5)
    s_std = torch.sqrt(s_var + 1e-5)
    mean_loss = (c_mean - s_mean).square().sum(dim=1)
    std_loss = (c_std - s_std).square().sum(dim=1)
    return (mean_loss + std_loss) * (loss_weight / target.shape[1])


def total_variation_mse(images: torch.Tensor, mode: str = "dfl_gpu") -> torch.Tensor:
    """DFL ``nn.total_variation_mse`` (§4.5, quirk §12.12), NCHW → (N,).

    DFL writes ``Σ (x[:,1:,:,:] − x[:,:-1,:,:])² + Σ (x[:,:,1:,:] − x[:,:,:-1,:])²`` assuming NHWC, i.e. the
    two *spatial* differences. SAEHD trains in NCHW on a GPU, where the same indices difference along the
    **channel** axis and along H. Modes:

    * ``"dfl_gpu"`` (default): what DFL computes when it trains on a GPU: channel and H differences. This
      is the behaviour DFL users actually got (SAEHD weights it by 1e-6, so it hardly matters).
    * ``"spatial"``: what the NHWC (CPU) path computes and what the code intends: H and W differences.
    """
    if images.dim() != 4:
        raise ValueError(f"total_variation_mse: expected an NCHW tensor, got shape {tuple(images.shape)}")
    if mode == "dfl_gpu":
        d1 = images[:, 1:, :, :] - images[:, :-1, :, :]  # channel axis (NHWC index 1 on NCHW data)
        d2 = images[:, :, 1:, :] - images[:, :, :-1, :]  # H
    elif mode == "spatial":
        d1 = images[:, :, 1:, :] - images[:, :, :-1, :]  # H
        d2 = images[:, :, :, 1:] - images[:, :, :, :-1]  # W
    else:
        raise ValueError(f"total_variation_mse: unknown mode {mode!r} (valid: {', '.join(TV_MODES)})")
    return d1.square().sum(dim=(1, 2, 3)) + d2.square().sum(dim=(1, 2, 3))


def dloss(label: float, logits: torch.Tensor) -> torch.Tensor:
    """SAEHD's ``DLoss(labels, logits)`` (§3.4): mean over C,H,W of sigmoid BCE with logits, (N,).

    `label` is the constant target (1.0 real, 0.0 fake) DFL builds with ones_like / zeros_like.
    """
    target = torch.full_like(logits, float(label))
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(1, 2, 3))


def mean_chw(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch one ("mean_{1,2,3}" in §3.4), (N,)."""
    return x.mean(dim=tuple(range(1, x.dim())))


def mse_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_{1,2,3} (a − b)²``, (N,)."""
    return mean_chw((a - b).square())


def l1_per_sample(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``mean_{1,2,3} |a − b|``, (N,)."""
    return mean_chw((a - b).abs())
