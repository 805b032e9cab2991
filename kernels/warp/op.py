"""torch.library registration of the warp sampler: `torch.ops.torchsae.warp_sample`.

The composed coordinates (fast.compose_grid) are ordinary torch ops and trace as they are; the one
custom piece is the sampler. It is a `triton_op` so torch.compile / torch.export see the Triton
launch (wrap_triton) instead of an opaque call; the CPU kernel is torch.grid_sample (or, under
TRITON_INTERPRET=1, the same Triton kernel run by Triton's interpreter, so tests exercise it on CPU).
No autograd is registered: the warp is data augmentation, applied to inputs that need no gradient.

    warp_sample(image (N, C, H, W), grid (N, Ho, Wo, 2) normalised, weight (N, Ho, Wo) | None,
                cubic: bool, zeros: bool) -> (N, C, Ho, Wo)
"""

from __future__ import annotations

import torch
from torch.library import triton_op, wrap_triton

from kernels.warp import triton_sample
from kernels.warp.fast import sample_torch

__all__ = ["warp_sample"]


def _interpreting() -> bool:
    try:
        import triton
    except ImportError:
        return False
    return bool(triton.knobs.runtime.interpret)


@triton_op("torchsae::warp_sample", mutates_args=())
def warp_sample(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor | None, cubic: bool, zeros: bool) -> torch.Tensor:
    # wrap_triton only understands compiled kernels; the interpreter's function is launched directly.
    wrap = None if _interpreting() else wrap_triton
    return triton_sample.launch(image, grid, weight, cubic, zeros, wrap=wrap)


@warp_sample.register_kernel("cpu")
def _warp_sample_cpu(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor | None, cubic: bool, zeros: bool) -> torch.Tensor:
    if _interpreting():
        return triton_sample.launch(image, grid, weight, cubic, zeros)
    return sample_torch(image, grid, weight, cubic, zeros)
