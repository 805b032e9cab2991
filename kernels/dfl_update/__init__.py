"""DFL's optimizer update (RMSprop / AdaBelief, docs/dfl.md §3.6): the per-tensor reference, a torch._foreach path
and a fused C pass on the CPU. engine/optim's optimizers keep the state (moments, lr_cos, clipnorm, the
lr_dropout generator) and call `update_`.

    update_(kind, params, grads, slots, *, lr, eps, c1, c2=0.0, grad_scale=None, keep_prob=1.0,
            generator=None, impl="auto") -> the implementation that ran ("reference" | "batched" | "cpu")
    choose(device, impl="auto", *, dtype=float32, keep_prob=1.0) -> the implementation update_ would run

>>> import torch
>>> from kernels import dfl_update
>>> p, g = torch.ones(4), torch.full((4,), 0.5)
>>> acc = torch.zeros(4)
>>> dfl_update.update_("rmsprop", [p], [g], [[acc]], lr=0.01, eps=1e-6, c1=0.9, impl="reference")
'reference'
>>> acc                                     # a = 0.1·g²
tensor([0.0250, 0.0250, 0.0250, 0.0250])
>>> round(1 - p[0].item(), 5)               # lr·g / (√a + ε) ≈ lr·√10 on the first step
0.03162

Files (the same roles in every kernels/<op>/, see kernels/README.md): reference.py, batched.py, cpu.py +
dfl_update_cpu.c, op.py (the choice and update_).
"""

from .op import choose, update_
from .reference import KINDS

__all__ = ["update_", "choose", "KINDS"]
