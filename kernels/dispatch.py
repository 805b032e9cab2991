"""How every op in kernels/ picks its implementation: the request, the rules, the log line (one mechanism).

Each op's op.py lists its implementations with, for the inputs at hand, why each one cannot run (None when it
can) and the order `auto` tries them on the device, then calls `choose`. Nothing else picks an implementation.

A request (TORCHSAE_KERNELS, a recipe's [compile].kernels, or an op's ``impl=``; ``impl="auto"`` defers to
TORCHSAE_KERNELS) is one word of `REQUESTS`:

    auto       each op runs the best implementation that can run on its inputs and logs why
    reference  every op's reference.py (plain torch/numpy, DFL-faithful)
    cpu        the C kernels (CPU tensors)
    triton     the Triton kernels (CUDA tensors; CPU tensors only under TRITON_INTERPRET=1, for tests)
    batched    the batched-torch paths (warp: one composed sampling; dfl_update: torch._foreach)
    fast       the fused path for the tensors' device: cpu on the CPU, triton on CUDA

Rules:
- an implementation the op has, named explicitly, that cannot run on these inputs raises
  KernelUnavailableError saying why; it never silently becomes another;
- a request naming no implementation of the op at all (``triton`` for dfl_update, which has no Triton kernel;
  ``batched`` for dssim) is one setting for every op, so that op runs its auto choice and the log says so;
- ``auto`` takes the first runnable implementation of the op's order for the device, and logs each one it
  skipped with the reason ("dssim: reference (auto on cpu: cpu unavailable: no C compiler found ...)");
- inside ``force_reference()`` (export) every op runs its reference, whatever was requested.
Each distinct (op, device, choice, reason) is logged once per process, at INFO on logger "torchsae.kernels".
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from kernels.errors import KernelChoiceError, KernelUnavailableError

__all__ = ["REQUESTS", "FAST", "choose", "requested", "check_request", "force_reference", "forced",
           "triton_unavailable", "note", "KernelChoiceError", "KernelUnavailableError"]

log = logging.getLogger("torchsae.kernels")

REQUESTS = ("auto", "reference", "fast", "cpu", "triton", "batched")
FAST = {"cpu": "cpu", "cuda": "triton"}  # what "fast" names on each device type

_logged: set[tuple[str, str, str, str]] = set()
_forced: list[str] = []  # reasons of the active force_reference() contexts, innermost last

# Why an implementation cannot run: None when it can; a callable is evaluated only if the rules need it (so a
# CPU call never imports triton, and float64 inputs never build a C kernel).
Reason = str | None | Callable[[], str | None]


def check_request(value: str, where: str = "TORCHSAE_KERNELS / [compile].kernels") -> str:
    """`value` if it is one of REQUESTS, else KernelChoiceError naming `where` and the valid words."""
    if value not in REQUESTS:
        raise KernelChoiceError(f"{where} = {value!r}: expected one of {', '.join(REQUESTS)}")
    return value


def requested(impl: str | None = None) -> str:
    """The request in force for a call: `impl`, or $TORCHSAE_KERNELS when `impl` is None or "auto"."""
    if impl not in (None, "auto"):
        return check_request(impl, "impl")
    return check_request(os.environ.get("TORCHSAE_KERNELS") or "auto", "TORCHSAE_KERNELS")


@contextlib.contextmanager
def force_reference(why: str = "export") -> Iterator[None]:
    """Every op runs its reference inside this block (process-wide; export traces plain torch ops only)."""
    _forced.append(why)
    try:
        yield
    finally:
        _forced.pop()


def forced() -> str | None:
    """The reason of the innermost active force_reference(), or None."""
    return _forced[-1] if _forced else None


def _triton_importable() -> bool:
    try:
        import triton  # optional dependency (CUDA builds, the test extra): only probed here  # noqa: F401
    except ImportError:
        return False
    return True


def triton_unavailable(device: torch.device | str) -> str | None:
    """None when a Triton kernel can run on `device`, else why not."""
    dev = torch.device(device).type
    if dev != "cuda" and not (dev == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"):
        return f"the Triton kernels run on CUDA (on the CPU only under TRITON_INTERPRET=1, for tests); the tensors are on {dev}"
    if not _triton_importable():
        return "triton is not installed (pip install triton, or the 'cuda' extra)"
    return None


def _why(reason: Reason) -> str | None:
    return reason() if callable(reason) else reason


def note(op: str, device: str, chosen: str, why: str) -> None:
    """Log "op: chosen (why)" once per process (the one log-once set of every op)."""
    key = (op, device, chosen, why)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: %s (%s)", op, chosen, why)


def choose(op: str, device: torch.device | str, impl: str | None, candidates: Mapping[str, Reason],
           auto_order: Sequence[str]) -> str:
    """The implementation of `op` to run on `device` for the request `impl` (see the module docstring).

    candidates: every implementation of `op` -> why it cannot run on these inputs (None: it can), possibly
    as a callable evaluated on demand; "reference" must be among them. auto_order: the implementations auto
    tries on this device, best first; its last entry must always be runnable (the fallback).
    """
    dev = torch.device(device).type
    if _forced:
        chosen, why = "reference", f"forced: {_forced[-1]}"
    else:
        req = requested(impl)
        name = FAST.get(dev, "") if req == "fast" else req
        if req != "auto" and name in candidates:
            label = name if req == name else f"{name} (fast on {dev})"
            reason = _why(candidates[name])
            if reason is not None:
                raise KernelUnavailableError(f"{op}: {label} was requested but {reason}")
            chosen, why = name, "requested" if req == name else f"fast on {dev}: requested"
        else:
            chosen, why = _auto(dev, candidates, auto_order)
            if req != "auto":
                why = f"{req} requested, which names no {op} implementation{' on ' + dev if req == 'fast' else ''}; {why}"
    note(op, dev, chosen, why)
    return chosen


def _auto(dev: str, candidates: Mapping[str, Reason], order: Sequence[str]) -> tuple[str, str]:
    skipped = []
    for name in order:
        reason = _why(candidates[name])
        if reason is None:
            return name, f"auto on {dev}" + (": " + "; ".join(skipped) if skipped else "")
        skipped.append(f"{name} unavailable: {reason}")
    raise AssertionError(f"no implementation can run ({'; '.join(skipped)}); the last of auto_order must always run")
