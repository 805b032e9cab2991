"""The warp's C path ("cpu"): builds warp_cpu.c once and runs it on row ranges from a thread pool.

Why a small C kernel (through ctypes, as kernels/dssim does) rather than torch ops: the composition
in torch (batched.compose_grid) materialises several (N, w, w, 2) coordinate tensors per call, and
grid_sample recomputes weights per channel; the C kernel fuses cv2's fixed-point affine, the
continuous grid, the flip and the zero-border coverage with the sampling, one row block at a time
(`make bench SUITE=kernels`, group "warp res256 b8", compares it with both). Semantics are those of batched.compose_grid + batched.sample_torch (tested:
≤ 3e-5 without the grid, ≤ 1e-4 with it, float32 coordinate rounding).

The library is cached under $TORCHSAE_CACHE (default ~/.cache/torchsae)/kernels/, keyed by the source,
flags, compiler version and CPU. Without a working C compiler `available()` is False and auto takes the
batched path (op.py).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

from kernels import cbuild
from kernels.warp.batched import _AB_BITS, _INTER_BITS, WarpBatchParams

log = logging.getLogger("torchsae.kernels")

SOURCE = Path(__file__).with_name("warp_cpu.c")
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-math-errno", "-fno-trapping-math"]
F_CUBIC, F_ZEROS, F_COVER, F_WARP = 1, 2, 4, 8

_POOL = cbuild.RangePool("torchsae-warp")


def _build(cflags: list[str] = CFLAGS) -> ctypes.CDLL:
    return cbuild.build_function(SOURCE, cflags, "warp_rows",
                                 [ctypes.c_void_p] * 2 + [ctypes.c_int] * 6 + [ctypes.c_void_p] * 3 + [ctypes.c_int],
                                 op="warp", ldflags=("-lm",))


_LIB = cbuild.LazyLibrary(_build, "warp", "auto uses the batched path (torch.grid_sample)")


def _load() -> ctypes.CDLL | None:
    return _LIB.get()


def available() -> bool:
    """True when the C kernel is built (building it now if needed) and loadable."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return _LIB.reason


def _invert_affine_np(m: np.ndarray) -> np.ndarray:
    """cv2.invertAffineTransform for (N, 2, 3) float64, the same operation order as batched._invert_affine."""
    d = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = np.where(d != 0, 1.0 / np.where(d != 0, d, 1.0), 0.0)
    a11, a22, a12, a21 = m[:, 1, 1] * d, m[:, 0, 0] * d, -m[:, 0, 1] * d, -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return np.stack([np.stack([a11, a12, b1], -1), np.stack([a21, a22, b2], -1)], 1)


def _fixed_point_terms(bp: WarpBatchParams, can_transform: bool, can_flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.warpAffine's separable fixed-point terms: X0 (N, 2, w) = round((M1·y + M2)·1024) + 16 and
    AD (N, 2, w) = round(M0·x·1024) with the flipped x, for the x and y source coordinates (int32).

    numpy, not torch: these are small arrays, and a torch op here can leave torch's OpenMP workers
    spinning on the cores the kernel's threads are about to use, which slows the kernel's own threads several-fold
    when there are as many threads as cores."""
    w, n = bp.w, bp.n
    if can_transform:
        minv = _invert_affine_np(bp.rmat.detach().cpu().numpy().astype(np.float64))
    else:
        minv = np.broadcast_to(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (n, 2, 3))
    scale = float(1 << _AB_BITS)
    delta = float(1 << (_AB_BITS - _INTER_BITS - 1))
    idx = np.arange(w, dtype=np.float64)
    xo = np.broadcast_to(idx, (n, w))
    if can_flip:
        xo = np.where(bp.flip.cpu().numpy()[:, None], (w - 1) - idx[None, :], xo)
    x0 = np.rint((minv[:, :, 1, None] * idx + minv[:, :, 2, None]) * scale) + delta  # (N, 2, w), half to even
    ad = np.rint(minv[:, :, 0, None] * xo[:, None, :] * scale)  # (N, 2, w)
    return np.ascontiguousarray(x0, dtype=np.int32), np.ascontiguousarray(ad, dtype=np.int32)


def warp_cpu(images: torch.Tensor, bp: WarpBatchParams, can_warp: bool, can_transform: bool, can_flip: bool,
             border_replicate: bool, cubic: bool) -> torch.Tensor:
    """The composed warp of (N, C, w, w) float32 CPU images (params without rw): same contract as
    compose_grid + sample_torch. Returns (N, C, w, w) float32."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"warp: the C kernel is unavailable: {_LIB.reason}")
    if bp.rw is not None:
        raise ValueError("warp_cpu: params with rw set must be handled at w (resize first)")
    n, c, h, w = images.shape
    if h != bp.w or w != bp.w:
        raise ValueError(f"warp_cpu: images are {h}x{w}, params are for {bp.w}x{bp.w}")
    src = images.contiguous()
    out = torch.empty_like(src)
    x0, ad = _fixed_point_terms(bp, can_transform, can_flip)
    flags = F_CUBIC if cubic else 0
    nodes = None
    if can_warp:
        flags |= F_WARP | F_ZEROS  # the remap's zero border is the last stage before the source
        if can_transform and not border_replicate:
            flags |= F_COVER
        nodes_n = bp.nodes.detach().cpu().numpy().astype(np.float64)  # normalised
        nodes = np.ascontiguousarray(((nodes_n + 1) * w - 1) / 2, dtype=np.float32)  # (N, 2, 9, 9) pixels
    elif not border_replicate:
        flags |= F_ZEROS

    def run(y0: int, y1: int) -> int:
        return lib.warp_rows(src.data_ptr(), out.data_ptr(), c, w, 0, n, y0, y1, x0.ctypes.data, ad.ctypes.data,
                             nodes.ctypes.data if nodes is not None else None, flags)

    # 4 row ranges per thread, taken from a queue: on a shared machine a descheduled worker then delays a
    # quarter of its share, not the whole call
    rcs = _POOL.map(run, w, torch.get_num_threads(), chunks_per_thread=4)
    if any(rc != 0 for rc in rcs):
        raise RuntimeError(f"warp: the C kernel refused the call (codes {sorted(set(rcs))}: -1 grid warp needs "
                           f"w % 8 == 0, -2 w > 16384); w = {w}")
    return out
