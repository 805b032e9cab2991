"""DSSIM: DFL's `nn.dssim` (docs/dfl.md §4.1) and SAEHD's structural loss term (§3.4), with fused CPU and Triton paths.

    dssim(img1, img2, filter_size, max_val=1.0, impl="auto")   -> (N, C)   NCHW in, like DFL's op
    saehd_dssim(pred, target, resolution, impl="auto")         -> (N,)     DFL calls dssim(target, pred)
    choose(device, impl="auto", *, dtype=torch.float32)       -> the implementation that would run

>>> import torch
>>> from kernels.dssim import dssim, saehd_dssim, saehd_windows
>>> x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
>>> dssim(x, x, 11).abs().max().item() < 1e-6          # DSSIM(x, x) = 0
True
>>> dssim(x, 1 - x, 11).shape                           # one value per (sample, channel)
torch.Size([2, 3])
>>> saehd_windows(128), saehd_windows(256)              # (weight, window) of SAEHD's term by resolution
(((10.0, 11),), ((5.0, 22), (5.0, 11)))
>>> ref = saehd_dssim(x, 1 - x, 128, impl="reference")  # the DFL-faithful depthwise-conv path
>>> torch.allclose(saehd_dssim(x, 1 - x, 128), ref, atol=1e-5)  # auto: the fused C kernel on the CPU
True

Files (the same roles in every kernels/<op>/, see kernels/README.md): reference.py (the oracle, the fallback,
the export path), cpu.py + dssim_cpu.c, triton.py, op.py (the choice, these entry points, torch.library).
Everything is computed in float32 whatever the input dtype or autocast state; the result is float32
(float64 on the reference path for float64 inputs).
"""

from .op import choose, dssim, saehd_dssim
from .reference import gaussian_1d, gaussian_window, saehd_windows, ssim_map

__all__ = ["dssim", "saehd_dssim", "choose", "saehd_windows", "ssim_map", "gaussian_window", "gaussian_1d"]
