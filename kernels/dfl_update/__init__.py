"""DFL's optimizer update (RMSprop / AdaBelief, spec §3.6) as one fused pass per parameter on the CPU.

    from kernels import dfl_update
    if dfl_update.choose(device, impl) == "fast":           # logs "dfl_update: fast (auto: no CUDA)" once
        dfl_update.cpu.update_("adabelief", params, grads, [ms, vs], lr=..., grad_scale=..., eps=..., c1=b1, c2=b2)

  reference  reference.py: the formulas per tensor (test oracle); engine/optim/dfl.py's torch._foreach
             path is what runs when the fast path does not (CUDA, lr_dropout on, other dtypes)
  fast       cpu.py + dfl_update_cpu.c: the C kernel, CPU float32 only
No autograd and no torch.library registration: an optimizer step is not traced or exported.
"""

from __future__ import annotations

import torch

from kernels import dispatch

from . import cpu, reference

__all__ = ["choose", "cpu", "reference"]


def choose(device: torch.device | str, impl: str = "auto") -> str:
    """'fast' or 'reference' for an update on `device` (`impl`: auto | reference | fast, else
    $TORCHSAE_KERNELS). Only the CPU has a fast path; elsewhere the foreach path runs ('reference')."""
    dev = torch.device(device)
    if dev.type != "cpu":
        return "reference"
    requested = None if impl == "auto" else ("fast" if impl == "triton" else impl)
    ok = cpu.available()
    chosen = dispatch.choose("dfl_update", dev, requested, has_fast_cpu=ok,
                             why_no_fast=None if ok else f"the C kernel is unavailable: {cpu.unavailable_reason()}")
    if chosen == "fast" and not ok:
        raise dispatch.KernelUnavailableError(f"dfl_update: the fast path was requested but {cpu.unavailable_reason()}")
    return chosen
