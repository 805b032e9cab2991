"""DFL DeepFakeArchi building blocks (docs/dfl.md §2.2), NCHW, with DFL's attribute names.

Submodule names mirror DFL's variable scopes so the weight import is a key map: a `DownscaleBlock`
registers its layers as ``downs_0``, ``downs_1``, ... (DFL list attributes get the suffix ``_<i>``,
docs/dfl.md §2.8), not as an ``nn.ModuleList`` (which would name them ``downs.0``).

| block | layers | forward |
|---|---|---|
| Downscale(in, out, k=5) | conv1 k×k stride 2 | act(conv1(x), 0.1) |
| DownscaleBlock(in, ch, n, k) | downs_i: Downscale(., ch*min(2**i, 8)) | chained |
| Upscale(in, out, k=3) | conv1 3×3 in -> 4*out | depth_to_space_DCR(act(conv1(x), 0.1)) |
| ResidualBlock(ch, k=3) | conv1, conv2 3×3 ch -> ch | act(x + conv2(act(conv1(x), 0.2)), 0.2) |
"""

from __future__ import annotations

import torch
from torch import nn

from engine.modules.layers import Act, conv2d, depth_to_space

__all__ = ["Downscale", "DownscaleBlock", "Upscale", "ResidualBlock"]


class Downscale(nn.Module):
    """(N, in, H, W) -> (N, out, H/2, W/2): conv k×k stride 2 (symmetric pad), act slope 0.1."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5, *, use_cos: bool = False, device=None):
        super().__init__()
        self.conv1 = conv2d(in_ch, out_ch, kernel_size, stride=2, device=device)
        self.act = Act(0.1, use_cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(x))


class DownscaleBlock(nn.Module):
    """``n`` Downscales; layer i outputs ``ch * min(2**i, 8)`` channels (docs/dfl.md §2.2)."""

    def __init__(self, in_ch: int, ch: int, n_downscales: int, kernel_size: int, *, use_cos: bool = False,
                 device=None):
        super().__init__()
        self.n = int(n_downscales)
        last = in_ch
        for i in range(self.n):
            out = ch * min(2 ** i, 8)
            self.add_module(f"downs_{i}", Downscale(last, out, kernel_size, use_cos=use_cos, device=device))
            last = out
        self.out_ch = last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):  # static length: unrolled by torch.compile
            x = getattr(self, f"downs_{i}")(x)
        return x


class Upscale(nn.Module):
    """(N, in, H, W) -> (N, out, 2H, 2W): conv 3×3 to 4*out, act slope 0.1, DCR depth_to_space."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, *, use_cos: bool = False, device=None):
        super().__init__()
        self.conv1 = conv2d(in_ch, out_ch * 4, kernel_size, stride=1, device=device)
        self.act = Act(0.1, use_cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.act(self.conv1(x)), 2)


class ResidualBlock(nn.Module):
    """(N, ch, H, W) -> same: ``act(x + conv2(act(conv1(x), 0.2)), 0.2)``."""

    def __init__(self, ch: int, kernel_size: int = 3, *, use_cos: bool = False, device=None):
        super().__init__()
        self.conv1 = conv2d(ch, ch, kernel_size, device=device)
        self.conv2 = conv2d(ch, ch, kernel_size, device=device)
        self.act = Act(0.2, use_cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.act(self.conv1(x)))
        return self.act(x + y)
