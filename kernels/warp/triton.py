"""The warp's Triton path ("triton"): a sampler for the composed warp, one gather-and-interpolate pass per output pixel.

Same contract as `batched.sample_torch` (torch.grid_sample, align_corners=False): for each output pixel
read the normalised source coordinate g = (gx, gy), unnormalise s = ((g + 1)·S − 1)/2, and
interpolate the (N, C, H, W) image with OpenCV's/PyTorch's bicubic kernel (Keys, a = −0.75: taps
floor(s) − 1 … floor(s) + 2) or bilinearly; out-of-range taps are zeroed (ZEROS, cv2
BORDER_CONSTANT 0) or clamped to the edge (cv2 BORDER_REPLICATE / cv2.resize); the result is
multiplied by an optional per-pixel weight (the coverage of composed zero borders, see batched.py).
Accumulation is fp32 whatever the image dtype.

The kernel is decorated lazily (`kernel()`), because Triton chooses between compiling and its numpy
interpreter (TRITON_INTERPRET=1, used by the CPU tests) when a function is decorated. triton is imported at
module level: op.py imports this module only when the Triton path runs (triton is optional).
"""

from __future__ import annotations  # keeps `tl.constexpr` annotations as text: Triton parses them

import functools

import torch
import triton
import triton.language as tl

__all__ = ["kernel", "launch", "BLOCK"]

BLOCK = 256


def _warp_sample_src(img_ptr, grid_ptr, weight_ptr, out_ptr,
                     C, Hi, Wi, HWo, total,
                     CUBIC: tl.constexpr, ZEROS: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)  # flat (n, y, x) output pixel index
    live = offs < total
    n = (offs // HWo).to(tl.int64)
    pix = (offs % HWo).to(tl.int64)

    gx = tl.load(grid_ptr + offs.to(tl.int64) * 2, mask=live, other=0.0).to(tl.float32)
    gy = tl.load(grid_ptr + offs.to(tl.int64) * 2 + 1, mask=live, other=0.0).to(tl.float32)
    sx = ((gx + 1.0) * Wi - 1.0) * 0.5  # grid_sample's unnormalise (align_corners=False)
    sy = ((gy + 1.0) * Hi - 1.0) * 0.5
    fx0 = tl.floor(sx)
    fy0 = tl.floor(sy)
    tx = sx - fx0
    ty = sy - fy0
    ix0 = fx0.to(tl.int32)
    iy0 = fy0.to(tl.int32)

    if HAS_WEIGHT:
        wgt = tl.load(weight_ptr + offs.to(tl.int64), mask=live, other=0.0).to(tl.float32)

    A = -0.75
    if CUBIC:
        # Keys kernel: |d| <= 1: ((A+2)d - (A+3))d² + 1 ; 1 < |d| < 2: ((A d - 5A) d + 8A) d - 4A
        ux = tx + 1.0
        wx0 = ((A * ux - 5.0 * A) * ux + 8.0 * A) * ux - 4.0 * A
        wx1 = ((A + 2.0) * tx - (A + 3.0)) * tx * tx + 1.0
        vx = 1.0 - tx
        wx2 = ((A + 2.0) * vx - (A + 3.0)) * vx * vx + 1.0
        ux = 2.0 - tx
        wx3 = ((A * ux - 5.0 * A) * ux + 8.0 * A) * ux - 4.0 * A
        uy = ty + 1.0
        wy0 = ((A * uy - 5.0 * A) * uy + 8.0 * A) * uy - 4.0 * A
        wy1 = ((A + 2.0) * ty - (A + 3.0)) * ty * ty + 1.0
        vy = 1.0 - ty
        wy2 = ((A + 2.0) * vy - (A + 3.0)) * vy * vy + 1.0
        uy = 2.0 - ty
        wy3 = ((A * uy - 5.0 * A) * uy + 8.0 * A) * uy - 4.0 * A
        bx = ix0 - 1  # first tap
        by = iy0 - 1
    else:
        wx0 = 1.0 - tx
        wx1 = tx
        wx2 = tx * 0.0
        wx3 = tx * 0.0
        wy0 = 1.0 - ty
        wy1 = ty
        wy2 = ty * 0.0
        wy3 = ty * 0.0
        bx = ix0
        by = iy0

    plane_in = Hi * Wi
    for c in range(0, C):
        base = (n * C + c) * plane_in
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(4):
            if j == 0:
                wy = wy0
            elif j == 1:
                wy = wy1
            elif j == 2:
                wy = wy2
            else:
                wy = wy3
            if CUBIC or j < 2:  # constexpr: bilinear uses the first two taps only
                iy = by + j
                if ZEROS:
                    oky = (iy >= 0) & (iy < Hi)
                else:
                    iy = tl.minimum(tl.maximum(iy, 0), Hi - 1)
                    oky = live
                row = iy.to(tl.int64) * Wi
                racc = tl.zeros([BLOCK], dtype=tl.float32)
                for i in tl.static_range(4):
                    if CUBIC or i < 2:
                        if i == 0:
                            wx = wx0
                        elif i == 1:
                            wx = wx1
                        elif i == 2:
                            wx = wx2
                        else:
                            wx = wx3
                        ix = bx + i
                        if ZEROS:
                            ok = live & oky & (ix >= 0) & (ix < Wi)
                        else:
                            ix = tl.minimum(tl.maximum(ix, 0), Wi - 1)
                            ok = live
                        v = tl.load(img_ptr + base + row + ix.to(tl.int64), mask=ok, other=0.0).to(tl.float32)
                        racc += wx * v
                acc += wy * racc
        if HAS_WEIGHT:
            acc = acc * wgt
        tl.store(out_ptr + (n * C + c) * HWo + pix, acc.to(out_ptr.dtype.element_ty), mask=live)


@functools.cache
def _kernel_for(interpret: bool):
    # `interpret` only keys the cache: triton.jit reads TRITON_INTERPRET when it decorates.
    return triton.jit(_warp_sample_src)


def kernel():
    """The jitted (or, under TRITON_INTERPRET=1, interpreted) sampler."""
    return _kernel_for(bool(triton.knobs.runtime.interpret))


def launch(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor | None, cubic: bool, zeros: bool,
           wrap=None) -> torch.Tensor:
    """Run the sampler: image (N, C, H, W), grid (N, Ho, Wo, 2) normalised, weight (N, Ho, Wo) or None.

    `wrap` is torch.library.wrap_triton when called from the registered op (so torch.compile can
    trace the launch), None for a direct launch.
    """
    image = image.contiguous()
    grid = grid.float().contiguous()
    n, c, hi, wi = image.shape
    ho, wo = grid.shape[1], grid.shape[2]
    out = torch.empty((n, c, ho, wo), device=image.device, dtype=image.dtype)
    total = n * ho * wo
    if total == 0 or c == 0:
        return out
    wgt = weight.float().contiguous() if weight is not None else grid  # dummy pointer when unused
    k = kernel()
    if wrap is not None:
        k = wrap(k)
    k[(triton.cdiv(total, BLOCK),)](image, grid, wgt, out, c, hi, wi, ho * wo, total,
                                    CUBIC=bool(cubic), ZEROS=bool(zeros), HAS_WEIGHT=weight is not None,
                                    BLOCK=BLOCK)
    return out
