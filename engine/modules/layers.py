"""Layer primitives with DFL's numerics (docs/dfl.md §2.1), NCHW.

- `conv2d(in, out, k, stride)`: DFL's "SAME" is an explicit *symmetric* zero pad of
  ``((k-1)*dilation+1)//2`` per side followed by a VALID conv (not TF's asymmetric SAME). For the odd
  kernels used by the generator this is ``(k-1)//2``; for k=4 (code discriminator) it is 2.
- `dense(in, out)`: ``y = x @ W + b``; torch stores ``W.T`` (DFL ``(in, out)`` -> torch ``(out, in)``).
- Initialisation: glorot-uniform weights (``limit = sqrt(6/(fan_in+fan_out))`` with conv fans
  ``k*k*in`` / ``k*k*out``, identical to ``nn.init.xavier_uniform_``) and zero biases (docs/dfl.md §2.1).
- `depth_to_space`: TF's **DCR** order ``out[c, 2h+i, 2w+j] = in[(i*2+j)*C + c, h, w]``; PyTorch's
  ``pixel_shuffle`` is CRD and is *not* the same (docs/dfl.md §2.1, quirk §12.3).
- `pixel_norm`: one scalar per sample, ``x * rsqrt(mean(x**2 over all features) + 1e-6)`` (docs/dfl.md §4.4).
- `Act`: LeakyReLU(slope), or ``x*cos(x)`` for archi letter ``c`` (the slope is then ignored, docs/dfl.md §2.1).

Parameter names are torch's (``weight``, ``bias``); the DFL key map (engine.dfl.keymap) turns
``encoder.down1.downs_0.conv1.weight`` into DFL's ``encoder/down1/downs_0/conv1/weight:0``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["dfl_same_padding", "conv2d", "dense", "glorot_init_", "depth_to_space", "pixel_norm", "Act", "XCos"]


def dfl_same_padding(kernel_size: int, dilation: int = 1) -> int:
    """DFL Conv2D 'SAME' padding per side: ``((k-1)*dilation+1)//2`` (symmetric; docs/dfl.md §2.1)."""
    return ((kernel_size - 1) * dilation + 1) // 2


def glorot_init_(module: nn.Module) -> nn.Module:
    """Glorot-uniform weight, zero bias, in place (DFL's TF1 default initializer, docs/dfl.md §2.1)."""
    nn.init.xavier_uniform_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def conv2d(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *, device=None) -> nn.Conv2d:
    """DFL Conv2D(padding='SAME') with bias: ``nn.Conv2d(in, out, k, s, padding=dfl_same_padding(k))``.

    Shapes: (N, in, H, W) -> (N, out, H', W') with H' = (H + 2p - k)//s + 1; for stride 2, k=5 and even H,
    H' = H/2.
    """
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=dfl_same_padding(kernel_size),
                     bias=True, device=device)
    return glorot_init_(conv)


def dense(in_features: int, out_features: int, *, device=None) -> nn.Linear:
    """DFL Dense with bias and no activation: ``y = x @ W + b`` (torch weight = DFL weight.T)."""
    lin = nn.Linear(in_features, out_features, bias=True, device=device)
    return glorot_init_(lin)


def depth_to_space(x: torch.Tensor, block: int = 2) -> torch.Tensor:
    """TF/DFL depth_to_space in **DCR** order, NCHW.

    (N, b*b*C, H, W) -> (N, C, b*H, b*W) with ``out[n, c, b*h+i, b*w+j] = x[n, (i*b+j)*C + c, h, w]``.
    """
    n, c4, h, w = x.shape
    c = c4 // (block * block)
    if x.dim() == 4 and c4 > 1 and x.is_contiguous(memory_format=torch.channels_last):
        # Same values, kept channels_last: returning NCHW here would flip every Upscale's output format and
        # make the following activation and the conv backward copy the whole tensor back.
        y = x.permute(0, 2, 3, 1).reshape(n, h, w, block, block, c)  # (N, H, W, i, j, C)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(n, h * block, w * block, c)  # (N, H, i, W, j, C) -> NHWC
        return y.permute(0, 3, 1, 2)
    x = x.reshape(n, block, block, c, h, w)  # (N, i, j, C, H, W): channel index = (i*b + j)*C + c
    x = x.permute(0, 3, 4, 1, 5, 2)  # (N, C, H, i, W, j)
    return x.reshape(n, c, h * block, w * block)


def pixel_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """DFL ``nn.pixel_norm`` on a flat (N, L) vector: ``x * rsqrt(mean_L(x**2) + 1e-6)`` (docs/dfl.md §4.4)."""
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps)


class XCos(nn.Module):
    """``x * cos(x)``: DFL's activation for archi letter ``c`` (docs/dfl.md §2.1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.cos(x)


class Act(nn.Module):
    """DFL's ``act(x, slope)``: LeakyReLU(slope), or x·cos(x) when ``use_cos`` (archi letter c)."""

    def __init__(self, slope: float, use_cos: bool = False):
        super().__init__()
        self.slope = float(slope)
        self.use_cos = bool(use_cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_cos:  # static Python bool fixed at build time: no data-dependent control flow
            return x * torch.cos(x)
        return nn.functional.leaky_relu(x, self.slope)

    def extra_repr(self) -> str:
        return "x*cos(x)" if self.use_cos else f"leaky_relu({self.slope})"
