"""DFL's optimizer update: the one place its implementation is chosen, and the entry point engine/optim calls.

    choose(device, impl="auto", *, dtype=float32, keep_prob=1.0) -> "reference" | "batched" | "cpu"
    update_(kind, params, grads, slots, *, lr, eps, c1, c2=0.0, grad_scale=None, keep_prob=1.0,
            generator=None, impl="auto") -> the implementation that ran

Implementations (kernels/dispatch.py has the request words and the rules):
  reference  reference.py: the formulas tensor by tensor (the oracle; any device and dtype)
  batched    batched.py: the same formulas as torch._foreach ops over the whole list (any device and dtype)
  cpu        cpu.py + dfl_update_cpu.c: one fused pass per tensor, CPU float32, lr_dropout off. Tensors the C
             kernel cannot take (a gradient or moment laid out differently from its parameter) go through the
             batched path in the same call, logged once.
auto: cpu on the CPU when it can run, else batched (CUDA and other devices, lr_dropout on, other dtypes, no C
compiler), logged once: "dfl_update: cpu (auto on cpu)". There is no Triton path (the foreach update is a
handful of multi-tensor launches on CUDA), so a "triton" request runs auto and says so.

No torch.library registration and no autograd: an optimizer step is neither traced nor exported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import dispatch

from . import batched, cpu, reference

__all__ = ["choose", "update_"]


def choose(device: torch.device | str, impl: str = "auto", *, dtype: torch.dtype = torch.float32,
           keep_prob: float = 1.0) -> str:
    """'reference' | 'batched' | 'cpu' for an update of `dtype` tensors on `device` (module docstring)."""
    dev = torch.device(device).type

    def cpu_reason() -> str | None:
        if dev != "cpu":
            return f"the C kernel takes CPU tensors; the tensors are on {dev}"
        if dtype != torch.float32:
            return f"the C kernel takes float32 tensors, not {dtype}"
        if keep_prob < 1.0:
            return "the C kernel has no lr_dropout masks (lr_dropout is on)"
        if not cpu.available():  # builds the C kernel on first use
            return f"the C kernel cannot be built: {cpu.unavailable_reason()}"
        return None

    candidates = {"reference": None, "batched": None, "cpu": cpu_reason}
    order = ("cpu", "batched") if dev == "cpu" else ("batched",)
    return dispatch.choose("dfl_update", dev, impl, candidates, order)


def update_(kind: str, params: list[Tensor], grads: list[Tensor], slots: list[list[Tensor]], *, lr: float,
            eps: float, c1: float, c2: float = 0.0, grad_scale: float | Tensor | None = None,
            keep_prob: float = 1.0, generator: torch.Generator | None = None, impl: str = "auto") -> str:
    """DFL's update (docs/dfl.md §3.6) in place: the moments in `slots` (RMSprop [acc], AdaBelief [ms, vs], one tensor
    per parameter) and `params`, all of one device and dtype.

    kind: "rmsprop" | "adabelief"; c1 = ρ (RMSprop) or β1, c2 = β2 (AdaBelief); grad_scale: DFL's clipnorm
    factor (float or 0-dim tensor; None = 1); keep_prob: lr_dropout's keep probability (1 = off), masks drawn
    from `generator`. Returns the implementation that ran ("cpu" also when some tensors took the batched path).
    """
    if not params:
        return "none"
    chosen = choose(params[0].device, impl, dtype=params[0].dtype, keep_prob=keep_prob)
    hyper = dict(lr=lr, eps=eps, c1=c1, c2=c2)
    if chosen == "reference":
        reference.update_(kind, params, grads, slots, grad_scale=grad_scale, keep_prob=keep_prob,
                          generator=generator, **hyper)
    elif chosen == "batched":
        batched.update_(kind, params, grads, slots, grad_scale=grad_scale, keep_prob=keep_prob,
                        generator=generator, **hyper)
    else:
        fused, rest = [], []
        for i, p in enumerate(params):
            why = cpu.fusable_one(p, grads[i], [s[i] for s in slots])
            (fused if why is None else rest).append(i)
            if why is not None:
                dispatch.note("dfl_update", "cpu", "batched", f"for tensors the C kernel cannot take: {why}")
        if fused:
            cpu.update_(kind, [params[i] for i in fused], [grads[i] for i in fused],
                        [[s[i] for i in fused] for s in slots],
                        grad_scale=1.0 if grad_scale is None else float(grad_scale), **hyper)
        if rest:
            batched.update_(kind, [params[i] for i in rest], [grads[i] for i in rest],
                            [[s[i] for i in rest] for s in slots], grad_scale=grad_scale, **hyper)
    return chosen
