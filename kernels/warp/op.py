"""torch.library registration of the warp sampler: `torch.ops.torchsae.warp_sample`.

The composed coordinates (fast.compose_grid) are ordinary torch ops and trace as they are; the one
custom piece is the sampler. It is a `triton_op`, so torch.compile / torch.export trace *into* it:
on CUDA they see the Triton launch (wrap_triton) rather than an opaque call; on CPU the body is
torch.grid_sample (same contract, see fast.sample_torch), or, for eager calls under
TRITON_INTERPRET=1, the same Triton kernel run by Triton's numpy interpreter so the CPU tests
exercise the kernel's logic. No autograd is registered: the warp is data augmentation, applied to
inputs that need no gradient.

    warp_sample(image (N, C, H, W), grid (N, Ho, Wo, 2) normalised, weight (N, Ho, Wo) | None,
                cubic: bool, zeros: bool) -> (N, C, Ho, Wo)
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake
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
    if image.device.type == "cuda":
        return triton_sample.launch(image, grid, weight, cubic, zeros, wrap=wrap_triton)
    if _interpreting() and not is_fake(image):
        # The interpreter needs real memory; traced/fake calls take the equivalent torch body below.
        return triton_sample.launch(image, grid, weight, cubic, zeros)
    return sample_torch(image, grid, weight, cubic, zeros)
