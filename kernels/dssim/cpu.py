"""DSSIM's C path ("cpu"): builds dssim_cpu.c once and runs it on plane ranges from a thread pool.

Why C through ctypes rather than torch ops or a torch C++ extension (the figures: `make bench
SUITE=kernels`, groups "dssim fwd+bwd ..."; bench/README.md):
  * the reference is a depthwise conv2d with fs² taps; a separable torch form (1×fs and fs×1 convolutions
    under autograd) is slower still, because oneDNN handles 1-channel 1-D kernels poorly;
  * the separable form needs 2·fs taps instead of fs², and fusing the moments, SSIM, its partial
    derivatives and the transposed filter per (n, c) plane keeps each plane's working set in L2 instead of
    streaming ~30 full-size temporaries through memory;
  * plain C with no torch headers builds in well under a second with gcc, while even a trivial
    torch.utils.cpp_extension module takes minutes on a small machine, because it compiles torch/extension.h;
  * no OpenMP runtime next to torch's: ctypes drops the GIL, so a small pool of Python threads runs one
    plane range per torch thread.

The library is cached under $TORCHSAE_CACHE (default ~/.cache/torchsae)/kernels/, keyed by the source,
the flags, the compiler version and the CPU (it is built with -march=native). Without a working C
compiler `available()` is False and dispatch falls back to the reference (auto) or raises (explicit).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import torch

from kernels import cbuild

from .reference import gaussian_1d

log = logging.getLogger("torchsae.kernels")

SOURCE = Path(__file__).with_name("dssim_cpu.c")
CFLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-std=c11", "-fno-math-errno"]

_POOL = cbuild.RangePool("torchsae-dssim")


def _build() -> ctypes.CDLL:
    return cbuild.build_function(SOURCE, CFLAGS, "dssim_planes",
                                 [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                  ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], op="dssim")


_LIB = cbuild.LazyLibrary(_build, "dssim", "auto uses the reference")


def _load() -> ctypes.CDLL | None:
    return _LIB.get()


def available() -> bool:
    """True when the C kernel is built (building it now if needed) and loadable."""
    return _load() is not None


def unavailable_reason() -> str:
    _load()
    return _LIB.reason


def _threads(nplanes: int) -> int:
    return max(1, min(torch.get_num_threads(), nplanes))


def dssim_fused(img1: torch.Tensor, img2: torch.Tensor, filter_sizes: list[int], weights: list[float],
                max_val: float, grad1: bool, grad2: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out[n, c] = Σ_w weights[w]·dssim(img1, img2, filter_sizes[w])[n, c], plus the per-plane Jacobians.

    img1, img2: (N, C, H, W) float32 CPU. Returns (out (N, C) float32, J1, J2) where J1 = d out[n,c] / d img1
    (N, C, H, W) if grad1 else an empty tensor, likewise J2; backward is grad_out[..., None, None]·J.
    """
    lib = _load()
    if lib is None:
        raise RuntimeError(f"dssim: the C kernel is unavailable: {_LIB.reason}")
    x = img1.contiguous()
    y = img2.contiguous()
    n, c, h, w = x.shape
    planes = n * c
    out = torch.empty((n, c), dtype=torch.float32)
    j1 = torch.zeros_like(x) if grad1 else torch.empty(0, dtype=torch.float32)
    j2 = torch.zeros_like(y) if grad2 else torch.empty(0, dtype=torch.float32)
    fs = [max(1, int(f)) for f in filter_sizes]
    fs_arr = (ctypes.c_int * len(fs))(*fs)
    g = torch.cat([gaussian_1d(f) for f in fs]).contiguous()
    w_arr = (ctypes.c_double * len(fs))(*[float(v) for v in weights])
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    if planes == 0:
        return out, j1, j2
    plane_bytes = h * w * 4

    def run(p0: int, p1: int) -> int:
        off = p0 * plane_bytes
        return lib.dssim_planes(x.data_ptr() + off, y.data_ptr() + off, p1 - p0, h, w, len(fs), fs_arr,
                                g.data_ptr(), w_arr, c1, c2, out.data_ptr() + p0 * 4,
                                j1.data_ptr() + off if grad1 else None, j2.data_ptr() + off if grad2 else None)

    rcs = _POOL.map(run, planes, _threads(planes))
    if any(rc != 0 for rc in rcs):
        raise MemoryError(f"dssim: the CPU kernel could not allocate its scratch for {h}x{w} planes")
    return out, j1, j2
