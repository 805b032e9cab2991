"""DFL's optimizer updates (docs/dfl.md §3.6) written out per tensor in plain torch: the oracle of the other paths'
tests (any dtype, float64 included, any device) and the implementation that runs for "reference".

    RMSprop    a ← ρ·a + (1−ρ)·g²                              w ← w − lr·g / (√a + ε) · mask
    AdaBelief  m ← β1·m + (1−β1)·g;  s ← β2·s + (1−β2)·(g − m)²   w ← w − lr·m / (√s + ε) · mask
with g the gradient times DFL's clipnorm factor (grad_scale), no bias correction, ε outside the square root,
and mask a fresh Bernoulli(keep_prob) draw per element and step when lr_dropout is on (keep_prob < 1; the
moments are updated everywhere), else 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rmsprop_", "adabelief_", "update_", "KINDS"]

KINDS = ("rmsprop", "adabelief")


def rmsprop_(p: Tensor, g: Tensor, acc: Tensor, *, lr: float, rho: float, eps: float,
             grad_scale: float | Tensor = 1.0, mask: Tensor | None = None) -> None:
    g = g * grad_scale
    acc.mul_(rho).add_((1 - rho) * g * g)
    step = lr * g / (acc.sqrt() + eps)
    p.sub_(step if mask is None else step * mask)


def adabelief_(p: Tensor, g: Tensor, ms: Tensor, vs: Tensor, *, lr: float, beta_1: float, beta_2: float,
               eps: float, grad_scale: float | Tensor = 1.0, mask: Tensor | None = None) -> None:
    g = g * grad_scale
    ms.mul_(beta_1).add_((1 - beta_1) * g)
    d = g - ms
    vs.mul_(beta_2).add_((1 - beta_2) * d * d)
    step = lr * ms / (vs.sqrt() + eps)
    p.sub_(step if mask is None else step * mask)


def update_(kind: str, params: list[Tensor], grads: list[Tensor], slots: list[list[Tensor]], *, lr: float,
            eps: float, c1: float, c2: float = 0.0, grad_scale: float | Tensor | None = None,
            keep_prob: float = 1.0, generator: torch.Generator | None = None) -> None:
    """In place, tensor by tensor: the moments in `slots` (RMSprop [acc], AdaBelief [ms, vs]) and `params`.
    c1 = ρ or β1, c2 = β2; the masks are drawn from `generator` in parameter order (as the batched path)."""
    if kind not in KINDS:
        raise ValueError(f"dfl_update: kind {kind!r}; expected one of {', '.join(KINDS)}")
    scale = 1.0 if grad_scale is None else grad_scale
    for i, (p, g) in enumerate(zip(params, grads)):
        s = scale.to(device=g.device, dtype=g.dtype) if torch.is_tensor(scale) else scale
        mask = None
        if keep_prob < 1.0:
            mask = torch.empty_like(p).bernoulli_(keep_prob, generator=generator)
        if kind == "rmsprop":
            rmsprop_(p, g, slots[0][i], lr=lr, rho=c1, eps=eps, grad_scale=s, mask=mask)
        else:
            adabelief_(p, g, slots[0][i], slots[1][i], lr=lr, beta_1=c1, beta_2=c2, eps=eps, grad_scale=s,
                       mask=mask)
