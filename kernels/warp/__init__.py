"""DFL's random warp (spec §5.2–5.4, quirks §12.6–12.8): numpy reference and batched torch fast path.

Reference (numpy + OpenCV, DFL's signatures, bit-exact against the goldens):

    gen_warp_params(w, flip, rotation_range=(-10, 10), scale_range=(-0.5, 0.5), tx_range=(-0.05, 0.05),
                    ty_range=(-0.05, 0.05), rnd_state=None, warp_rnd_state=None) -> dict
        SAEHD passes scale_range=(-0.15, 0.15) (SAEHD_SCALE_RANGE); everything else at DFL's defaults.
    warp_by_params(params, img (H, W[, C]) float32, can_warp, can_transform, can_flip, border_replicate,
                   cv2_inter=cv2.INTER_CUBIC) -> (H, W, C)

Fast path (torch, batched, CPU or CUDA; one sampling per pixel instead of DFL's two):

    warp_batch(images (N, C, S, S), params, can_warp, can_transform, can_flip, border_replicate,
               interp="cubic" | "linear", impl="auto") -> (N, C, S, S)
        params: a list of N DFL dicts (from gen_warp_params) or a WarpBatchParams (from
        WarpBatchParams.from_dfl or random_warp_params); S = params' rw when set, else w.
        SAEHD: network input  warp_batch(img, p, True,  True, True, True,  "cubic")
               target image   warp_batch(img, p, False, True, True, True,  "cubic")
               masks          warp_batch(msk, p, False, True, True, False, "linear")
        impl: "auto" | "reference" | "fast" | "triton" (kernels.dispatch.choose; TORCHSAE_KERNELS
        overrides "auto"). "fast": on CPU the fused C kernel (kernels/warp/cpu.py, built with the
        system C compiler on first use; torch.grid_sample when no compiler works), on CUDA
        torch.grid_sample; "triton": the Triton sampler (CUDA, or TRITON_INTERPRET=1 in tests);
        "reference" runs warp_by_params per sample (the oracle; WarpBatchParams are converted with
        to_dfl). auto = triton on CUDA, fast on CPU.
    random_warp_params(n, w, flip, *, rotation_range, scale_range, tx_range, ty_range, generator,
                       device) -> WarpBatchParams
        DFL's distribution drawn on the device from a torch.Generator (not DFL's numpy stream).
    warp_params_from_uniforms(u (N, WARP_UNIFORMS), w, flip, *, ranges) -> WarpBatchParams
        the same distribution from given uniforms (per-sample streams: engine.data.device).

How the fast path differs from DFL's two-pass result is documented in kernels/warp/fast.py: exact
(float rounding) for transform-only/flip-only calls (targets, masks, §12.8); interpolation error for
the composed grid warp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from kernels import dispatch
from kernels.warp import cpu
from kernels.warp.fast import (
    WARP_UNIFORMS,
    WarpBatchParams,
    compose_grid,
    random_warp_params,
    sample_torch,
    warp_params_from_uniforms,
)
from kernels.warp.reference import (
    DEFAULT_RANGES,
    SAEHD_SCALE_RANGE,
    gen_warp_params,
    random_normal,
    warp_by_params,
)

__all__ = [
    "gen_warp_params",
    "warp_by_params",
    "random_normal",
    "warp_batch",
    "random_warp_params",
    "warp_params_from_uniforms",
    "WARP_UNIFORMS",
    "WarpBatchParams",
    "DEFAULT_RANGES",
    "SAEHD_SCALE_RANGE",
]

_INTERPS = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def _as_batch_params(params: WarpBatchParams | Sequence[dict[str, Any]], device: torch.device) -> WarpBatchParams:
    if isinstance(params, WarpBatchParams):
        return params if params.nodes.device == device else params.to(device)
    return WarpBatchParams.from_dfl(list(params), device=device)


def warp_batch(
    images: torch.Tensor,
    params: WarpBatchParams | Sequence[dict[str, Any]],
    can_warp: bool,
    can_transform: bool,
    can_flip: bool,
    border_replicate: bool,
    interp: str = "cubic",
    impl: str = "auto",
) -> torch.Tensor:
    """Batched `warp_by_params` (§5.3) for N samples: (N, C, S, S) float -> (N, C, S, S), same dtype.

    Output pixel (y, x) of sample i is DFL's remap-by-grid (if can_warp; zero border) → warpAffine by
    rmat_i (if can_transform; replicate or zero border) → horizontal mirror (if can_flip and flip_i),
    composed into one coordinate and sampled once (fast/triton), or computed per sample by the
    numpy reference (impl="reference").
    """
    if interp not in _INTERPS:
        raise ValueError(f"warp_batch: interp = {interp!r}; expected 'cubic' or 'linear'")
    if images.ndim != 4:
        raise ValueError(f"warp_batch: images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n_params = params.n if isinstance(params, WarpBatchParams) else len(params)
    if n_params != images.shape[0]:
        raise ValueError(f"warp_batch: {images.shape[0]} images but {n_params} parameter sets")
    if images.shape[0] == 0:
        return images.clone()
    chosen = dispatch.choose("warp", images.device, None if impl == "auto" else impl, has_fast_cpu=True)

    if chosen == "reference":
        return _warp_reference(images, params, can_warp, can_transform, can_flip, border_replicate, interp)

    bp = _as_batch_params(params, images.device)
    s = bp.size
    if images.shape[-2:] != (s, s):
        raise ValueError(f"warp_batch: images are {tuple(images.shape[-2:])} but the params are for "
                         f"{s}x{s} (w={bp.w}, rw={bp.rw})")
    if not (can_warp or can_transform):  # DFL: no resampling at all, only the mirror
        return _flip(images, bp, can_flip)
    cubic = interp == "cubic"
    mode = "bicubic" if cubic else "bilinear"
    x = images
    if bp.rw is not None:  # DFL's w < 64 path: resize to 64 with cv2_inter, warp there, resize back
        x = F.interpolate(x.float(), size=(bp.w, bp.w), mode=mode, align_corners=False)
        bp = WarpBatchParams(bp.w, None, bp.nodes, bp.rmat, bp.flip, bp._coords)
    fold_flip = can_flip and images.shape[-1] == bp.w  # with rw the mirror comes after the resize back
    if chosen == "fast" and x.device.type == "cpu" and cpu.available():
        out = cpu.warp_cpu(x.float(), bp, can_warp, can_transform, fold_flip, border_replicate, cubic)
    else:
        grid, weight, zeros = compose_grid(bp, can_warp, can_transform, fold_flip, border_replicate, cubic)
        if chosen == "triton":
            from kernels.warp.op import warp_sample

            out = warp_sample(x, grid, weight, cubic, zeros)
        else:
            out = sample_torch(x, grid, weight, cubic, zeros)
    if out.shape[-1] != s:
        out = F.interpolate(out, size=(s, s), mode=mode, align_corners=False)
        out = _flip(out, bp, can_flip)  # DFL mirrors after resizing back
    return out.to(images.dtype)


def _flip(images: torch.Tensor, bp: WarpBatchParams, can_flip: bool) -> torch.Tensor:
    """img[:, ::-1] for the samples whose flip was drawn (§5.3 step 6)."""
    if not can_flip:
        return images.clone()
    return torch.where(bp.flip[:, None, None, None], images.flip(-1), images)


def _warp_reference(images: torch.Tensor, params: WarpBatchParams | Sequence[dict[str, Any]], can_warp: bool,
                    can_transform: bool, can_flip: bool, border_replicate: bool, interp: str) -> torch.Tensor:
    plist = params.to_dfl() if isinstance(params, WarpBatchParams) else list(params)
    x = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # (N, H, W, C)
    outs = [warp_by_params(p, np.ascontiguousarray(x[i]), can_warp, can_transform, can_flip, border_replicate,
                           _INTERPS[interp]) for i, p in enumerate(plist)]
    out = torch.from_numpy(np.stack(outs).transpose(0, 3, 1, 2).copy())
    return out.to(device=images.device, dtype=images.dtype)
