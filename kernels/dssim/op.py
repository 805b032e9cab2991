"""torch.library registration of the DSSIM fast paths, so torch.compile(fullgraph=True) traces through them.

Two ops with one schema:

    torchsae::dssim_fast(img1, img2, filter_sizes, weights, max_val, grad1, grad2) -> (out, J1, J2)  # CPU, C kernel
    torchsae::dssim_triton(...)                                                     -> (out, J1, J2)  # Triton

  out[n, c] = Σ_w weights[w] · dssim(img1, img2, filter_sizes[w])[n, c]      (DFL nn.dssim, spec §4.1)
  J1 = ∂out[n, c] / ∂img1[n, c]  (N, C, H, W) when grad1, else an empty tensor; J2 likewise for img2.

Each output plane depends only on its own input planes, so the forward computes the per-plane Jacobian
(it already holds every partial derivative it needs) and the backward is ``grad_out[n, c] · J``. Inputs
must be float32, contiguous NCHW on one device (`kernels.dssim.dssim` casts; bf16/fp16 never reach the
kernels, so everything accumulates in fp32). `grad1`/`grad2` say which Jacobians to build; the public
wrappers set them from `requires_grad`. Double backward is not supported (DFL does not need it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu


def _check(img1: Tensor, img2: Tensor, filter_sizes: list[int], weights: list[float]) -> None:
    if img1.dtype != torch.float32 or img2.dtype != torch.float32:
        raise TypeError(f"torchsae dssim kernels take float32 images, got {img1.dtype} and {img2.dtype}")
    if img1.dim() != 4 or img1.shape != img2.shape or img1.device != img2.device:
        raise ValueError(f"torchsae dssim kernels take two NCHW tensors of one shape and device, got "
                         f"{tuple(img1.shape)} on {img1.device} and {tuple(img2.shape)} on {img2.device}")
    if len(filter_sizes) == 0 or len(filter_sizes) != len(weights):
        raise ValueError(f"torchsae dssim kernels: filter_sizes {filter_sizes} and weights {weights} must be "
                         "non-empty and of equal length")
    h, w = img1.shape[-2:]
    for f in filter_sizes:
        if max(1, f) > min(h, w):
            raise ValueError(f"dssim: filter_size {f} is larger than the image ({h}x{w}); "
                             f"the VALID window needs filter_size <= min(H, W) = {min(h, w)}")


@torch.library.custom_op("torchsae::dssim_fast", mutates_args=(), device_types="cpu")
def dssim_fast(img1: Tensor, img2: Tensor, filter_sizes: list[int], weights: list[float], max_val: float,
               grad1: bool, grad2: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(img1, img2, filter_sizes, weights)
    return cpu.dssim_fused(img1, img2, filter_sizes, weights, max_val, grad1, grad2)


@torch.library.triton_op("torchsae::dssim_triton", mutates_args=())
def dssim_triton(img1: Tensor, img2: Tensor, filter_sizes: list[int], weights: list[float], max_val: float,
                 grad1: bool, grad2: bool) -> tuple[Tensor, Tensor, Tensor]:
    # triton_op also uses this body as the fake (meta) kernel: shapes only, launches are no-ops there.
    from . import triton_kernels  # lazy: triton may be absent on CPU-only installs

    _check(img1, img2, filter_sizes, weights)
    return triton_kernels.dssim_fused(img1, img2, filter_sizes, weights, max_val, grad1, grad2,
                                      launch=torch.library.wrap_triton)


@dssim_fast.register_fake
def _(img1, img2, filter_sizes, weights, max_val, grad1, grad2):
    _check(img1, img2, filter_sizes, weights)
    n, c = img1.shape[:2]
    out = img1.new_empty((n, c))
    j1 = torch.empty_like(img1, memory_format=torch.contiguous_format) if grad1 else img1.new_empty(0)
    j2 = torch.empty_like(img2, memory_format=torch.contiguous_format) if grad2 else img2.new_empty(0)
    return out, j1, j2


def _setup_context(ctx, inputs, output):
    _, _, _, _, _, grad1, grad2 = inputs
    _, j1, j2 = output
    ctx.grad1, ctx.grad2 = grad1, grad2
    ctx.save_for_backward(j1, j2)


def _backward(ctx, g_out, g_j1, g_j2):
    # J1/J2 are auxiliary outputs; gradients flowing into them (always None/zero in our wrappers) are ignored.
    j1, j2 = ctx.saved_tensors
    go = g_out[:, :, None, None]  # (N, C, 1, 1): each plane's scalar upstream gradient
    d1 = go * j1 if ctx.grad1 else None
    d2 = go * j2 if ctx.grad2 else None
    return d1, d2, None, None, None, None, None


for _op in (dssim_fast, dssim_triton):
    _op.register_autograd(_backward, setup_context=_setup_context)
