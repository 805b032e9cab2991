"""DSSIM: DFL's `nn.dssim` (spec §4.1) and SAEHD's structural loss term (§3.4), with fast paths.

    dssim(img1, img2, filter_size, max_val=1.0, impl="auto")   -> (N, C)   NCHW in, like DFL's op
    saehd_dssim(pred, target, resolution, impl="auto")         -> (N,)     DFL calls dssim(target, pred)

Implementations (chosen by `impl`, else $TORCHSAE_KERNELS, via kernels.dispatch.choose):
  reference  reference.py: DFL's 2-D window as a depthwise conv2d, plain autograd (oracle, export path)
  fast       CPU: the C kernel (dssim_cpu.c, separable window, fused forward + Jacobian);
             CUDA: the Triton kernel
  triton     triton_kernels.py (CUDA; CPU tensors only under TRITON_INTERPRET=1, for tests)
auto picks triton on CUDA, fast on CPU (reference when no C compiler is available or for float64 inputs)
and logs the choice once: "dssim: fast (auto: no CUDA)". An implementation requested explicitly that
cannot run raises KernelUnavailableError. Export code calls with impl="reference". Under torch.compile the
choice is made once at trace time (changing TORCHSAE_KERNELS later does not retrace a compiled graph).

Everything is computed in float32 whatever the input dtype or autocast state (bf16's E[x²]−E[x]²
cancels catastrophically); the result is float32 (float64 on the reference path for float64 inputs).
The fast paths differentiate w.r.t. whichever inputs require grad (DSSIM is symmetric, so the target's
gradient costs one extra transposed filter); their gradients are first-order only.
"""

from __future__ import annotations

import logging

import torch

from kernels.dispatch import KernelUnavailableError, choose, requested_impl

from . import cpu, op, reference
from .reference import gaussian_1d, gaussian_window, saehd_windows, ssim_map  # noqa: F401

__all__ = ["dssim", "saehd_dssim", "saehd_windows", "ssim_map", "gaussian_window", "gaussian_1d", "resolve_impl"]

log = logging.getLogger("torchsae.kernels")
_logged: set[tuple[str, str]] = set()


@torch.compiler.assume_constant_result  # torch.compile runs it at trace time instead of tracing the build/logging
def resolve_impl(device: torch.device | str, dtype: torch.dtype = torch.float32, impl: str = "auto") -> str:
    """'reference' | 'fast' | 'triton' for DSSIM on `device` (see module docstring for the rules)."""
    requested = None if impl == "auto" else impl
    dev = torch.device(device).type
    if dtype == torch.float64:
        # The fast paths compute in float32; float64 callers (gradcheck, analysis) want float64.
        if requested_impl(requested) in ("fast", "triton"):
            raise KernelUnavailableError(f"dssim: impl {requested_impl(requested)!r} computes in float32 and was "
                                         "given float64 images; use impl='reference' or cast to float32")
        if ("float64", dev) not in _logged:
            _logged.add(("float64", dev))
            log.info("dssim: reference (auto: float64 inputs)")
        return "reference"
    fast_cpu = dev != "cpu" or cpu.available()  # builds the C kernel on first use (about a second)
    why = None if fast_cpu else f"the C kernel is unavailable: {cpu.unavailable_reason()}"
    chosen = choose("dssim", torch.device(dev), requested, has_fast_cpu=fast_cpu, why_no_fast=why)
    if chosen == "fast" and not fast_cpu:
        raise KernelUnavailableError(f"dssim: the fast CPU path was requested but cannot be built: "
                                     f"{cpu.unavailable_reason()}")
    return chosen


def _fused(img1: torch.Tensor, img2: torch.Tensor, windows: list[int], weights: list[float], max_val: float,
           chosen: str) -> torch.Tensor:
    fn = op.dssim_fast if (chosen == "fast" and img1.device.type == "cpu") else op.dssim_triton
    # the kernels take float32; the casts are differentiable, so bf16/fp16 leaves get bf16/fp16 grads back
    x = img1.to(torch.float32)
    y = img2.to(torch.float32)
    grad = torch.is_grad_enabled()
    out, _, _ = fn(x, y, windows, weights, float(max_val), grad and x.requires_grad, grad and y.requires_grad)
    return out


def dssim(img1: torch.Tensor, img2: torch.Tensor, filter_size: int = 11, max_val: float = 1.0,
          impl: str = "auto") -> torch.Tensor:
    """DFL ``nn.dssim(img1, img2, max_val, filter_size)`` (§4.1), NCHW → (N, C), float32.

    ``(1 − mean_{h,w}(lum·cs)) / 2`` per (n, c) with DFL's softmax-built Gaussian window (σ = 1.5), VALID
    filtering, c1 = (0.01·max_val)², c2 = (0.03·max_val)²; any filter_size ≥ 1 (values < 1 act as 1, as in
    DFL), at most min(H, W).
    """
    dt = torch.float64 if torch.float64 in (img1.dtype, img2.dtype) else torch.float32
    chosen = resolve_impl(img1.device, dt, impl)
    if chosen == "reference":
        return reference.dssim(img1, img2, filter_size, max_val)
    reference.check_inputs(img1, img2, filter_size)
    return _fused(img1, img2, [max(1, int(filter_size))], [1.0], max_val, chosen)


def saehd_dssim(pred: torch.Tensor, target: torch.Tensor, resolution: int, impl: str = "auto") -> torch.Tensor:
    """SAEHD's per-sample structural term (§3.4), (N, C, H, W) → (N,).

    R < 256: ``10·mean_C dssim(target, pred, int(R/11.6))``; else
    ``5·mean_C dssim(target, pred, int(R/11.6)) + 5·mean_C dssim(target, pred, int(R/23.2))``.
    DFL calls dssim(img1=target, img2=pred); the fast paths evaluate both windows in one pass over the
    moments. Gradients reach `pred` (and `target` too, if it requires grad).
    """
    windows = saehd_windows(resolution)
    dt = torch.float64 if torch.float64 in (pred.dtype, target.dtype) else torch.float32
    chosen = resolve_impl(pred.device, dt, impl)
    if chosen == "reference":
        return reference.saehd_dssim(pred, target, resolution)
    for _, fs in windows:
        reference.check_inputs(target, pred, fs)
    out = _fused(target, pred, [fs for _, fs in windows], [w for w, _ in windows], 1.0, chosen)
    return out.mean(dim=1)
