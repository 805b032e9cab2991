"""DFL's optimizer updates (docs/dfl.md §3.6) as multi-tensor torch._foreach ops: the batched-torch path ("batched").

The formulas of reference.py over a list of tensors of one device and dtype at once (CUDA: a few
multi-tensor-apply launches instead of ~10 per parameter). Any device and dtype; the path auto takes on
CUDA, and on the CPU wherever the C kernel cannot (lr_dropout on, not float32, no C compiler). The update is
applied as ``w − lr·(num/denom)`` in one addcdiv (within 1 ulp of DFL's ``(lr·num)/denom``); with lr_dropout,
``lr·num/denom`` is formed, multiplied by a fresh Bernoulli(keep_prob) mask per tensor (drawn from
`generator` in parameter order) and subtracted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import KINDS

__all__ = ["update_"]


def update_(kind: str, params: list[Tensor], grads: list[Tensor], slots: list[list[Tensor]], *, lr: float,
            eps: float, c1: float, c2: float = 0.0, grad_scale: float | Tensor | None = None,
            keep_prob: float = 1.0, generator: torch.Generator | None = None) -> None:
    """In place: the moments in `slots` (RMSprop [acc], AdaBelief [ms, vs]) and `params` (one device and
    dtype). c1 = ρ or β1, c2 = β2; grad_scale: DFL's clipnorm factor (a 0-dim tensor stays on the device)."""
    if kind not in KINDS:
        raise ValueError(f"dfl_update: kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not params:
        return
    if grad_scale is not None:
        s = grad_scale.to(device=grads[0].device, dtype=grads[0].dtype) if torch.is_tensor(grad_scale) else grad_scale
        grads = torch._foreach_mul(grads, s)
    if kind == "rmsprop":
        (accs,) = slots
        torch._foreach_mul_(accs, c1)
        torch._foreach_addcmul_(accs, grads, grads, value=1.0 - c1)
        denom = torch._foreach_sqrt(accs)
        num = grads  # Δ = lr·g / (√a + ε)
    else:
        ms, vs = slots
        torch._foreach_mul_(ms, c1)
        torch._foreach_add_(ms, grads, alpha=1.0 - c1)
        diff = torch._foreach_sub(grads, ms)  # g − m_new
        torch._foreach_mul_(vs, c2)
        torch._foreach_addcmul_(vs, diff, diff, value=1.0 - c2)
        denom = torch._foreach_sqrt(vs)
        num = ms  # Δ = lr·m / (√s + ε)
    torch._foreach_add_(denom, eps)
    if keep_prob < 1.0:
        upd = torch._foreach_mul(num, lr)  # DFL: lr·num / denom
        torch._foreach_div_(upd, denom)
        for u in upd:
            # each element updated with probability keep_prob, a fresh draw every step
            u.mul_(torch.empty_like(u).bernoulli_(keep_prob, generator=generator))
        torch._foreach_sub_(params, upd)
    else:
        # one pass instead of three (mul, div, sub): w − lr·(num/denom), within 1 ulp of DFL's (lr·num)/denom
        torch._foreach_addcdiv_(params, num, denom, value=-lr)
