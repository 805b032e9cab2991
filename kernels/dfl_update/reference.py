"""DFL's optimizer updates (spec §3.6) written out per tensor in plain torch: the oracle for the fused
CPU kernel's tests (any dtype, float64 included). The training path keeps the torch._foreach_ version in
engine/optim/dfl.py (the same formulas, bucketed per device and dtype).

    RMSprop    a ← ρ·a + (1−ρ)·g²                              w ← w − lr·g / (√a + ε)
    AdaBelief  m ← β1·m + (1−β1)·g;  s ← β2·s + (1−β2)·(g − m)²   w ← w − lr·m / (√s + ε)
with g the gradient times DFL's clipnorm factor. No bias correction, ε outside the square root.
"""

from __future__ import annotations

import torch


def rmsprop_(p: torch.Tensor, g: torch.Tensor, acc: torch.Tensor, *, lr: float, rho: float, eps: float,
             grad_scale: float = 1.0) -> None:
    g = g * grad_scale
    acc.mul_(rho).add_((1 - rho) * g * g)
    p.sub_(lr * g / (acc.sqrt() + eps))


def adabelief_(p: torch.Tensor, g: torch.Tensor, ms: torch.Tensor, vs: torch.Tensor, *, lr: float, beta_1: float,
               beta_2: float, eps: float, grad_scale: float = 1.0) -> None:
    g = g * grad_scale
    ms.mul_(beta_1).add_((1 - beta_1) * g)
    d = g - ms
    vs.mul_(beta_2).add_((1 - beta_2) * d * d)
    p.sub_(lr * ms / (vs.sqrt() + eps))
