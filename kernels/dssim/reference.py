"""DFL's `nn.dssim` in plain torch: the oracle, the CPU fallback and the export path (docs/dfl.md §4.1).

Faithful to DFL in every step that changes numbers:
  * the window is built the way DFL builds it: log-weights ``-0.5·(g_i² + g_j²)/σ²`` with
    ``g_i = i − (fs−1)/2`` and a softmax over all fs² entries (any fs ≥ 1, odd or even);
  * it is applied per channel as a depthwise VALID convolution (no padding), so the SSIM map is
    (H−fs+1)×(W−fs+1);
  * ``c1 = (k1·max_val)²``, ``c2 = (k2·max_val)²``, and the contrast-structure denominator filters
    ``x² + y²`` as one map, as DFL does;
  * the result is ``(1 − mean_{h,w}(lum·cs)) / 2`` per (N, C), not clipped.

Deviations: inputs are NCHW (DFL on CPU is NHWC); everything is computed in float32 whatever the input
dtype or autocast state (DFL casts to float32 too), or in float64 when the inputs are float64 (gradcheck).
Gradients flow to both inputs through plain autograd.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "gaussian_1d", "check_inputs", "ssim_map", "dssim", "saehd_dssim", "saehd_windows", "compute_dtype"]

FILTER_SIGMA = 1.5
K1 = 0.01
K2 = 0.03


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs accumulate in fp32, §4.1 step 1)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@functools.lru_cache(maxsize=64)
def _window_np(filter_size: int, sigma: float) -> tuple[tuple[float, ...], ...]:
    # Built in float64 and rounded once to the compute dtype by the caller; DFL's float32 softmax agrees
    # with this to ≤ 1 ulp (checked against the recorded window in the golden tests).
    fs = max(1, int(filter_size))
    g = [(i - (fs - 1) / 2.0) ** 2 * (-0.5 / sigma**2) for i in range(fs)]
    logits = [gi + gj for gi in g for gj in g]
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    s = sum(e)
    return tuple(tuple(e[i * fs + j] / s for j in range(fs)) for i in range(fs))


def gaussian_window(filter_size: int, *, sigma: float = FILTER_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """DFL's fs×fs window: softmax over the fs² log-weights ``-0.5·(g_i² + g_j²)/σ²`` (§4.1 step 2). Sums to 1."""
    return torch.tensor(_window_np(int(filter_size), float(sigma)), dtype=dtype, device=device)


def gaussian_1d(filter_size: int, *, sigma: float = FILTER_SIGMA, dtype=torch.float32, device=None) -> torch.Tensor:
    """The 1-D factor of DFL's window: softmax of ``-0.5·g_i²/σ²`` over fs entries.

    The softmax of a separable log-weight ``a_i + a_j`` is the outer product of the two 1-D softmaxes,
    so ``gaussian_window(fs) == outer(gaussian_1d(fs), gaussian_1d(fs))`` up to rounding (fast paths use this).
    """
    fs = max(1, int(filter_size))
    g = [(i - (fs - 1) / 2.0) ** 2 * (-0.5 / sigma**2) for i in range(fs)]
    m = max(g)
    e = [math.exp(v - m) for v in g]
    s = sum(e)
    return torch.tensor([v / s for v in e], dtype=dtype, device=device)


def check_inputs(img1: torch.Tensor, img2: torch.Tensor, filter_size: int) -> int:
    if img1.dim() != 4 or img1.shape != img2.shape:
        raise ValueError(f"dssim: expected two NCHW tensors of the same shape, got {tuple(img1.shape)} and {tuple(img2.shape)}")
    fs = max(1, int(filter_size))
    h, w = img1.shape[-2:]
    if fs > h or fs > w:
        raise ValueError(f"dssim: filter_size {filter_size} is larger than the image ({h}x{w}); "
                         f"the VALID window needs filter_size <= min(H, W) = {min(h, w)}")
    if not (img1.is_floating_point() and img2.is_floating_point()):
        raise TypeError(f"dssim: expected floating-point images, got {img1.dtype} and {img2.dtype}")
    return fs


def ssim_map(img1: torch.Tensor, img2: torch.Tensor, filter_size: int = 11, max_val: float = 1.0,
             filter_sigma: float = FILTER_SIGMA, k1: float = K1, k2: float = K2) -> torch.Tensor:
    """DFL's per-pixel ``lum·cs`` (§4.1 steps 2–7), NCHW → (N, C, H−fs+1, W−fs+1), float32 (float64 for float64 in)."""
    fs = check_inputs(img1, img2, filter_size)
    dt = compute_dtype(img1, img2)
    with torch.autocast(device_type=img1.device.type, enabled=False):
        x = img1.to(dt)
        y = img2.to(dt)
        c = x.shape[1]
        # depthwise: one copy of the window per channel, (C, 1, fs, fs), built as a constant (not an expand of
        # the window) so that ONNX export sees a kernel of known shape
        k = torch.tensor(((_window_np(fs, float(filter_sigma)),),) * c, dtype=dt, device=x.device)

        def reducer(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, k, groups=c)  # VALID, stride 1

        c1 = (k1 * max_val) ** 2
        c2 = (k2 * max_val) ** 2
        mean0 = reducer(x)
        mean1 = reducer(y)
        num0 = mean0 * mean1 * 2.0
        den0 = mean0.square() + mean1.square()
        luminance = (num0 + c1) / (den0 + c1)
        num1 = reducer(x * y) * 2.0
        den1 = reducer(x.square() + y.square())
        cs = (num1 - num0 + c2) / (den1 - den0 + c2)
        return luminance * cs


def dssim(img1: torch.Tensor, img2: torch.Tensor, filter_size: int = 11, max_val: float = 1.0,
          filter_sigma: float = FILTER_SIGMA, k1: float = K1, k2: float = K2) -> torch.Tensor:
    """DFL ``nn.dssim`` (§4.1): ``(1 − mean_{h,w} ssim_map) / 2``; NCHW in, (N, C) out, not clipped.

    float32 result for any float input (float64 for float64 inputs). Differentiable w.r.t. both inputs.
    """
    m = ssim_map(img1, img2, filter_size, max_val, filter_sigma, k1, k2)
    return (1.0 - m.mean(dim=(2, 3))) / 2.0


def saehd_windows(resolution: int) -> tuple[tuple[float, int], ...]:
    """(weight, filter_size) pairs of SAEHD's structural term (§3.4): R<256 → ((10, int(R/11.6)),),
    else ((5, int(R/11.6)), (5, int(R/23.2)))."""
    r = int(resolution)
    if r <= 0:
        raise ValueError(f"saehd_dssim: resolution must be a positive int, got {resolution!r}")
    if r < 256:
        return ((10.0, int(r / 11.6)),)
    return ((5.0, int(r / 11.6)), (5.0, int(r / 23.2)))


def saehd_dssim(pred: torch.Tensor, target: torch.Tensor, resolution: int) -> torch.Tensor:
    """SAEHD's per-sample structural term (§3.4), shape (N,).

    ``Σ_w weight_w · mean_C dssim(target, pred, fs_w)`` over `saehd_windows(resolution)`. DFL calls
    ``dssim(img1=target, img2=pred)``; the op is symmetric so the order only matters for rounding.
    """
    out = None
    for weight, fs in saehd_windows(resolution):
        term = weight * dssim(target, pred, fs).mean(dim=1)
        out = term if out is None else out + term
    return out
