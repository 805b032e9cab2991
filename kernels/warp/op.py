"""The random warp: the one place its implementation is chosen, the batched entry point, and the torch.library op.

    choose(device, impl="auto") -> "reference" | "batched" | "cpu" | "triton"
    warp_batch(images (N, C, S, S), params, can_warp, can_transform, can_flip, border_replicate,
               interp="cubic" | "linear", impl="auto") -> (N, C, S, S)

Implementations (kernels/dispatch.py has the request words and the rules):
  reference  reference.py: DFL's warp_by_params per sample (numpy + OpenCV, two resamplings; the oracle,
             bit-exact against the goldens; WarpBatchParams are converted with to_dfl)
  batched    batched.py: compose_grid + sample_torch, one sampling per pixel, any device
  cpu        cpu.py + warp_cpu.c: the composition and the sampling fused in C (CPU tensors, a C compiler)
  triton     triton.py: the sampler of compose_grid's coordinates on CUDA (CPU only under TRITON_INTERPRET=1)
auto: cpu on the CPU, triton on CUDA, batched when that cannot run (no C compiler, no triton, other
devices), logged once: "warp: cpu (auto on cpu)". How the one-pass paths differ from DFL's two-pass
result is documented (and bounded by tests) in batched.py.

The Triton sampler is registered as `torch.ops.torchsae.warp_sample`, a `triton_op`, so torch.compile /
torch.export trace *into* it: on CUDA they see the Triton launch (wrap_triton) rather than an opaque call;
on CPU the body is torch.grid_sample (batched.sample_torch, the same contract), or, for eager calls under
TRITON_INTERPRET=1, the same Triton kernel run by Triton's numpy interpreter, so the CPU tests exercise the
kernel's logic. No autograd is registered: the warp is data augmentation, applied to inputs that need no
gradient.

    warp_sample(image (N, C, H, W), grid (N, Ho, Wo, 2) normalised, weight (N, Ho, Wo) | None,
                cubic: bool, zeros: bool) -> (N, C, Ho, Wo)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton

from kernels import dispatch
from kernels.warp import cpu
from kernels.warp.batched import WarpBatchParams, compose_grid, sample_torch
from kernels.warp.reference import warp_by_params

__all__ = ["choose", "warp_batch", "warp_sample"]

_INTERPS = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR}


def choose(device: torch.device | str, impl: str = "auto") -> str:
    """'reference' | 'batched' | 'cpu' | 'triton' for a warp of tensors on `device` (module docstring)."""
    dev = torch.device(device).type

    def cpu_reason() -> str | None:
        if dev != "cpu":
            return f"the C kernel takes CPU tensors; the tensors are on {dev}"
        if not cpu.available():  # builds the C kernel on first use
            return f"the C kernel cannot be built: {cpu.unavailable_reason()}"
        return None

    candidates = {"reference": None, "batched": None, "cpu": cpu_reason,
                  "triton": lambda: dispatch.triton_unavailable(dev)}
    order = {"cpu": ("cpu", "batched"), "cuda": ("triton", "batched")}.get(dev, ("batched",))
    return dispatch.choose("warp", dev, impl, candidates, order)


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
    composed into one coordinate and sampled once (batched, cpu, triton), or computed per sample by the
    numpy reference. params: a list of N DFL dicts (gen_warp_params) or a WarpBatchParams; S = params'
    rw when set, else w.
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
    chosen = choose(images.device, impl)

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
    if chosen == "cpu":
        out = cpu.warp_cpu(x.float(), bp, can_warp, can_transform, fold_flip, border_replicate, cubic)
    else:
        grid, weight, zeros = compose_grid(bp, can_warp, can_transform, fold_flip, border_replicate, cubic)
        if chosen == "triton":
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


# ------------------------------------------------------------------------------- torch.library registration
def _interpreting() -> bool:
    """Triton's numpy interpreter is on (TRITON_INTERPRET=1 when triton was imported or since)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # optional dependency (CUDA builds, the test extra)
    except ImportError:
        return False
    return bool(triton.knobs.runtime.interpret)


@triton_op("torchsae::warp_sample", mutates_args=())
def warp_sample(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor | None, cubic: bool,
                zeros: bool) -> torch.Tensor:
    if image.device.type == "cuda":
        from kernels.warp import triton as triton_path  # triton is optional (CUDA builds, the test extra)

        return triton_path.launch(image, grid, weight, cubic, zeros, wrap=wrap_triton)
    if _interpreting() and not is_fake(image):
        from kernels.warp import triton as triton_path  # triton is optional (CUDA builds, the test extra)

        # The interpreter needs real memory; traced/fake calls take the equivalent torch body below.
        return triton_path.launch(image, grid, weight, cubic, zeros)
    return sample_torch(image, grid, weight, cubic, zeros)
