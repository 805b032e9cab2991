"""DFL's image filters as batched torch ops with per-image parameters (docs/dfl.md §5.7; used by the XSeg device
pipeline, engine.xseg.device).

Every function takes float images (N, C, H, W) on any device and one set of parameters per image, so one
call serves a batch whatever each image drew. Nothing here draws random numbers. The numpy / OpenCV oracles
are engine.xseg.augment (the per-sample XSeg augmentation) and engine.faces.filters; the tests compare both on
the same parameters (tests/data/test_device_filters.py).

| op                | OpenCV call it reproduces                               | how it differs                        |
|-------------------|---------------------------------------------------------|---------------------------------------|
| `separable_filter`| cv2.GaussianBlur (sepFilter2D), BORDER_REFLECT_101      | float rounding (~1e-6)                |
| `fft_filter`      | the same for large kernels (DFL's flares: k up to R-1)  | FFT rounding (~1e-6)                  |
| `filter2d`        | cv2.filter2D (correlation), BORDER_REFLECT_101          | float rounding                        |
| `resize_down_up`  | cv2.resize to (rw, rh) and back, INTER_NEAREST / LINEAR | nearest: exact; linear: the two passes as one product of interpolation matrices, float rounding |
| `rgb_levels`      | DFL's apply_random_rgb_levels                           | float rounding                        |
| `circle_faded`    | DFL's random_circle_faded                               | float rounding                        |

Kernels are given zero-padded to one size for the batch, centred (an even kernel of size k sits at offset
K//2 - k//2, OpenCV's anchor k//2 on the centre), so the shapes never depend on the draws: on CUDA nothing
here synchronises with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["separable_filter", "fft_filter", "filter2d", "resize_down_up", "rgb_levels", "circle_faded", "blend",
           "FFT_ABOVE"]

FFT_ABOVE = 31  # kernels longer than this are applied through the FFT (the direct path costs O(K) per pixel)


def blend(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """DFL's `img·(1 - mask) + result·mask` (mask (N, 1, H, W)); `y` where mask is None."""
    return y if mask is None else x * (1 - mask) + y * mask


def _grouped(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image correlation: x (N, C, H, W) already padded, weight (N, kh, kw) -> (N, C, H', W')."""
    n, c = x.shape[:2]
    w = weight.to(x.dtype)[:, None].expand(n, c, *weight.shape[1:]).reshape(n * c, 1, *weight.shape[1:])
    out = F.conv2d(x.reshape(1, n * c, *x.shape[2:]), w, groups=n * c)
    return out.reshape(n, c, *out.shape[2:])


def separable_filter(x: torch.Tensor, k1d: torch.Tensor) -> torch.Tensor:
    """cv2.sepFilter2D(x, k1d, k1d) per image, reflect-101 border: x (N, C, H, W), k1d (N, K) odd K (each
    image's kernel centred, zero-padded). Long kernels go through `fft_filter`."""
    k = k1d.shape[1]
    if k > FFT_ABOVE:
        return fft_filter(x, k1d)
    p = k // 2
    if p == 0:
        return x * k1d[:, :, None, None].to(x.dtype)
    xp = F.pad(x, (p, p, p, p), mode="reflect")  # torch's "reflect" is OpenCV's BORDER_REFLECT_101
    rows = _grouped(xp, k1d[:, None, :])  # along W: (N, C, H + 2p, W)
    return _grouped(rows, k1d[:, :, None])  # along H


def fft_filter(x: torch.Tensor, k1d: torch.Tensor) -> torch.Tensor:
    """`separable_filter` through the FFT: reflect-101 padding by K//2, then one circular convolution of the
    padded image (no wrap-around reaches the kept centre) with the outer product of the 1-D kernels.
    k1d must be symmetric (Gaussian), so convolution and OpenCV's correlation agree."""
    n, c, h, w = x.shape
    k = k1d.shape[1]
    p = k // 2
    xp = F.pad(x.float(), (p, p, p, p), mode="reflect")
    lh, lw = _fast_length(h + 2 * p), _fast_length(w + 2 * p)  # zero-padded further: no wrap-around either

    def circular(length: int) -> torch.Tensor:  # kernel tap j in [-p, p] at index j mod length
        out = torch.zeros(n, length, dtype=torch.float32, device=x.device)
        out[:, :p + 1] = k1d[:, p:].float()
        if p:
            out[:, length - p:] = k1d[:, :p].float()
        return out

    spec = torch.fft.rfft2(xp, s=(lh, lw))
    spec = spec * torch.fft.fft(circular(lh))[:, None, :, None] * torch.fft.rfft(circular(lw))[:, None, None, :]
    out = torch.fft.irfft2(spec, s=(lh, lw))[..., p:p + h, p:p + w]
    return out.to(x.dtype)


def _fast_length(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (FFT lengths that run fast)."""
    m = n
    while True:
        k = m
        for f in (2, 3, 5):
            while k % f == 0:
                k //= f
        if k == 1:
            return m
        m += 1


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """cv2.filter2D(x, -1, kernel) per image (a correlation), reflect-101 border: kernels (N, K, K), K odd."""
    p = kernels.shape[-1] // 2
    return _grouped(F.pad(x, (p, p, p, p), mode="reflect"), kernels)


def _nearest_src(out_len: torch.Tensor, in_len: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.resize INTER_NEAREST's source index of each of `size` destination positions (N, size) int64:
    min(floor(x · (1 / (out / in))), in - 1), in float64 as OpenCV computes it."""
    ifx = 1.0 / (out_len.double() / in_len.double())  # (N,)
    x = torch.arange(size, device=out_len.device, dtype=torch.float64)
    return torch.minimum(torch.floor(x[None] * ifx[:, None]).long(), (in_len - 1)[:, None].long())


def _linear_matrix(out_len: torch.Tensor, in_len: torch.Tensor, size: int) -> torch.Tensor:
    """cv2.resize INTER_LINEAR along one axis as a (N, size, size) matrix (rows: the first out_len outputs,
    columns: the first in_len inputs): fx = (x + 0.5)·(in/out) - 0.5 in float32, weights (1 - f, f) on
    floor(fx) and floor(fx) + 1, clamped to the image (OpenCV's border handling)."""
    dev = out_len.device
    scale = 1.0 / (out_len.double() / in_len.double())
    x = torch.arange(size, device=dev, dtype=torch.float64)
    fx = ((x[None] + 0.5) * scale[:, None] - 0.5).float()
    sx = torch.floor(fx)
    f = fx - sx
    sx = sx.long()
    last = (in_len - 1)[:, None].long()
    f = torch.where(sx < 0, torch.zeros_like(f), f)
    sx = sx.clamp(min=0)
    f = torch.where(sx >= last, torch.zeros_like(f), f)
    sx = torch.minimum(sx, last)
    s1 = torch.minimum(sx + 1, last)
    m = torch.zeros(out_len.shape[0], size, size, device=dev, dtype=torch.float32)
    m.scatter_add_(2, sx[..., None], (1 - f)[..., None])
    m.scatter_add_(2, s1[..., None], f[..., None])
    valid = x[None] < out_len[:, None].double()  # rows past the output size stay zero
    return m * valid[..., None]


def resize_down_up(x: torch.Tensor, size: torch.Tensor, linear: torch.Tensor) -> torch.Tensor:
    """`cv2.resize(cv2.resize(img, (rw, rh), interp), (W, H), interp)` per image: size (N, 2) int (rh, rw)
    with rh <= H and rw <= W, linear (N,) bool (else INTER_NEAREST). (N, C, H, W) -> same shape."""
    n, c, h, w = x.shape
    hh = torch.full_like(size[:, 0], h)
    ww = torch.full_like(size[:, 1], w)
    rh, rw = size[:, 0], size[:, 1]
    # nearest: the two index maps compose into one gather
    iy = torch.gather(_nearest_src(rh, hh, h), 1, _nearest_src(hh, rh, h))  # (N, H)
    ix = torch.gather(_nearest_src(rw, ww, w), 1, _nearest_src(ww, rw, w))  # (N, W)
    near = torch.gather(x, 2, iy[:, None, :, None].expand(n, c, h, w))
    near = torch.gather(near, 3, ix[:, None, None, :].expand(n, c, h, w))
    # linear: each pass is a matrix along each axis; down then up is their product
    my = _linear_matrix(hh, rh, h) @ _linear_matrix(rh, hh, h)  # (N, H, H)
    mx = _linear_matrix(ww, rw, w) @ _linear_matrix(rw, ww, w)  # (N, W, W)
    lin = my[:, None].to(x.dtype) @ x @ mx[:, None].transpose(-1, -2).to(x.dtype)
    return torch.where(linear[:, None, None, None], lin, near)


def rgb_levels(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """DFL's apply_random_rgb_levels with given levels (N, 5, C): in_black, in_white, gamma, out_black,
    out_white per channel; ``clip(clip((x - ib)/(iw - ib), 0, 1)^(1/g)·(ow - ob) + ob, 0, 1)``."""
    ib, iw, g, ob, ow = (levels[:, i, :, None, None].to(x.dtype) for i in range(5))
    out = ((x - ib) / (iw - ib)).clamp(0, 1)
    return (out ** (1 / g) * (ow - ob) + ob).clamp(0, 1)


def circle_faded(params: torch.Tensor, size: int) -> torch.Tensor:
    """DFL's random_circle_faded for given draws: params (N, 4) int (fade_start, fade_end, centre row,
    centre column) as drawn (fade_end already start + randint(size - start)) -> (N, 1, size, size) float32
    ``clip(1 - (dist - start) / end, 0, 1)`` with end 0 taken as 1."""
    p = params.to(torch.float32)
    start, end = p[:, 0, None, None], p[:, 1, None, None]
    end = torch.where(end == 0, torch.ones_like(end), end)
    ax = torch.arange(size, device=params.device, dtype=torch.float32)
    dr = ax[None, :, None] - p[:, 2, None, None]
    dc = ax[None, None, :] - p[:, 3, None, None]
    d = torch.sqrt(dr * dr + dc * dc)
    return (1.0 - (d - start) / end).clamp(0, 1)[:, None]
