"""DSSIM: the one place its implementation is chosen, the public entry points, and the torch.library ops.

    choose(device, impl="auto", *, dtype=float32)           -> "reference" | "cpu" | "triton"
    dssim(img1, img2, filter_size, max_val=1.0, impl="auto") -> (N, C)
    saehd_dssim(pred, target, resolution, impl="auto")      -> (N,)

Implementations (kernels/dispatch.py has the request words and the rules):
  reference  reference.py: DFL's 2-D window as a depthwise conv2d, plain autograd; any dtype (float64 stays
             float64), any device. The oracle and the export path.
  cpu        cpu.py + dssim_cpu.c (separable window, forward and per-plane Jacobian fused): CPU tensors, a
             working C compiler, float32 compute
  triton     triton.py: the same decomposition on CUDA (CPU tensors only under TRITON_INTERPRET=1)
auto: cpu on the CPU, triton on CUDA, the reference when that cannot run (no C compiler, no triton, float64
inputs, other devices), logged once: "dssim: cpu (auto on cpu)". Under torch.compile the choice is made once
at trace time (`choose` is assume_constant_result; changing TORCHSAE_KERNELS later does not retrace).

The fused paths are two custom ops with one schema, registered so torch.compile(fullgraph=True) traces
through them:

    torchsae::dssim_cpu(img1, img2, filter_sizes, weights, max_val, grad1, grad2) -> (out, J1, J2)
    torchsae::dssim_triton(...)                                                    -> (out, J1, J2)

  out[n, c] = Σ_w weights[w] · dssim(img1, img2, filter_sizes[w])[n, c]      (DFL nn.dssim, docs/dfl.md §4.1)
  J1 = ∂out[n, c] / ∂img1[n, c]  (N, C, H, W) when grad1, else an empty tensor; J2 likewise for img2.

Each output plane depends only on its own input planes, so the forward computes the per-plane Jacobian
(it already holds every partial derivative it needs) and the backward is ``grad_out[n, c] · J``. The ops
take float32, contiguous NCHW on one device: `dssim`/`saehd_dssim` cast (the casts are differentiable, so
bf16/fp16 leaves get bf16/fp16 gradients back, and everything accumulates in fp32 — bf16's E[x²]−E[x]²
cancels catastrophically). `grad1`/`grad2` say which Jacobians to build; the public functions set them from
`requires_grad`, so the fused paths differentiate w.r.t. whichever inputs require grad (DSSIM is symmetric;
the target's gradient costs one extra transposed filter). Gradients are first-order only (DFL needs no more).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import dispatch

from . import cpu, reference

__all__ = ["choose", "dssim", "saehd_dssim", "dssim_cpu", "dssim_triton"]

_F64 = "computes in float32 and was given float64 images; use impl='reference' or cast to float32"


@torch.compiler.assume_constant_result  # torch.compile runs it at trace time instead of tracing the build/logging
def choose(device: torch.device | str, impl: str = "auto", *, dtype: torch.dtype = torch.float32) -> str:
    """'reference' | 'cpu' | 'triton' for DSSIM of `dtype` images on `device` (module docstring for the rules)."""
    dev = torch.device(device).type

    def cpu_reason() -> str | None:
        if dtype == torch.float64:
            return _F64
        if dev != "cpu":
            return f"the C kernel takes CPU tensors; the tensors are on {dev}"
        if not cpu.available():  # builds the C kernel on first use (about a second)
            return f"the C kernel cannot be built: {cpu.unavailable_reason()}"
        return None

    candidates = {"reference": None, "cpu": cpu_reason,
                  "triton": lambda: _F64 if dtype == torch.float64 else dispatch.triton_unavailable(dev)}
    order = {"cpu": ("cpu", "reference"), "cuda": ("triton", "reference")}.get(dev, ("reference",))
    return dispatch.choose("dssim", dev, impl, candidates, order)


def _dtype(a: Tensor, b: Tensor) -> torch.dtype:
    return torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32


def _fused(img1: Tensor, img2: Tensor, windows: list[int], weights: list[float], max_val: float,
           chosen: str) -> Tensor:
    fn = dssim_cpu if chosen == "cpu" else dssim_triton
    x = img1.to(torch.float32)
    y = img2.to(torch.float32)
    grad = torch.is_grad_enabled()
    out, _, _ = fn(x, y, windows, weights, float(max_val), grad and x.requires_grad, grad and y.requires_grad)
    return out


def dssim(img1: Tensor, img2: Tensor, filter_size: int = 11, max_val: float = 1.0, impl: str = "auto") -> Tensor:
    """DFL ``nn.dssim(img1, img2, max_val, filter_size)`` (§4.1), NCHW → (N, C), float32.

    ``(1 − mean_{h,w}(lum·cs)) / 2`` per (n, c) with DFL's softmax-built Gaussian window (σ = 1.5), VALID
    filtering, c1 = (0.01·max_val)², c2 = (0.03·max_val)²; any filter_size ≥ 1 (values < 1 act as 1, as in
    DFL), at most min(H, W). float64 inputs give a float64 result on the reference path.
    """
    chosen = choose(img1.device, impl, dtype=_dtype(img1, img2))
    if chosen == "reference":
        return reference.dssim(img1, img2, filter_size, max_val)
    reference.check_inputs(img1, img2, filter_size)
    return _fused(img1, img2, [max(1, int(filter_size))], [1.0], max_val, chosen)


def saehd_dssim(pred: Tensor, target: Tensor, resolution: int, impl: str = "auto") -> Tensor:
    """SAEHD's per-sample structural term (§3.4), (N, C, H, W) → (N,).

    R < 256: ``10·mean_C dssim(target, pred, int(R/11.6))``; else
    ``5·mean_C dssim(target, pred, int(R/11.6)) + 5·mean_C dssim(target, pred, int(R/23.2))``.
    DFL calls dssim(img1=target, img2=pred); the fused paths evaluate both windows in one pass over the
    moments. Gradients reach `pred` (and `target` too, if it requires grad).
    """
    windows = reference.saehd_windows(resolution)
    chosen = choose(pred.device, impl, dtype=_dtype(pred, target))
    if chosen == "reference":
        return reference.saehd_dssim(pred, target, resolution)
    for _, fs in windows:
        reference.check_inputs(target, pred, fs)
    out = _fused(target, pred, [fs for _, fs in windows], [w for w, _ in windows], 1.0, chosen)
    return out.mean(dim=1)


# ------------------------------------------------------------------------------- torch.library registration
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


@torch.library.custom_op("torchsae::dssim_cpu", mutates_args=(), device_types="cpu")
def dssim_cpu(img1: Tensor, img2: Tensor, filter_sizes: list[int], weights: list[float], max_val: float,
              grad1: bool, grad2: bool) -> tuple[Tensor, Tensor, Tensor]:
    _check(img1, img2, filter_sizes, weights)
    return cpu.dssim_fused(img1, img2, filter_sizes, weights, max_val, grad1, grad2)


@torch.library.triton_op("torchsae::dssim_triton", mutates_args=())
def dssim_triton(img1: Tensor, img2: Tensor, filter_sizes: list[int], weights: list[float], max_val: float,
                 grad1: bool, grad2: bool) -> tuple[Tensor, Tensor, Tensor]:
    # triton_op also uses this body as the fake (meta) kernel: shapes only, launches are no-ops there.
    from kernels.dssim import triton as triton_path  # triton is optional (CUDA builds, the test extra)

    _check(img1, img2, filter_sizes, weights)
    return triton_path.dssim_fused(img1, img2, filter_sizes, weights, max_val, grad1, grad2,
                                   launch=torch.library.wrap_triton)


@dssim_cpu.register_fake
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


for _op in (dssim_cpu, dssim_triton):
    _op.register_autograd(_backward, setup_context=_setup_context)
