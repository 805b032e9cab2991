"""Kernel implementation choice, shared by every op in kernels/.

`TORCHSAE_KERNELS` (or a recipe's [compile].kernels, passed in as `requested`) is one of
auto | reference | fast | triton. `auto` picks the fastest implementation available for the device and
logs why once per (op, device); an explicitly requested implementation that cannot run raises.
Export always asks for `reference` (no custom ops in an ONNX graph).
"""

from __future__ import annotations

import logging
import os

import torch

from engine.errors import TorchSAEError

log = logging.getLogger("torchsae.kernels")


class KernelChoiceError(TorchSAEError, ValueError):
    """TORCHSAE_KERNELS / [compile].kernels / impl= names no implementation."""


class KernelUnavailableError(TorchSAEError, RuntimeError):
    """An implementation was requested explicitly but cannot run here (no silent fallback)."""

CHOICES = ("auto", "reference", "fast", "triton")
_logged: set[tuple[str, str, str]] = set()


def triton_available() -> bool:
    """True when Triton can run: a CUDA device, or TRITON_INTERPRET=1 (numpy interpreter, tests only)."""
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def requested_impl(requested: str | None = None) -> str:
    impl = requested or os.environ.get("TORCHSAE_KERNELS", "auto")
    if impl not in CHOICES:
        raise KernelChoiceError(f"TORCHSAE_KERNELS / [compile].kernels = {impl!r}: expected one of {', '.join(CHOICES)}")
    return impl


def choose(op: str, device: torch.device, requested: str | None = None, *, has_fast_cpu: bool = True,
           why_no_fast: str | None = None) -> str:
    """Return 'reference', 'fast' or 'triton' for `op` on `device`, logging the reason once.

    auto: CUDA + Triton -> 'triton'; CPU -> 'fast' when the op has a CPU fast path; else 'reference'
    (`why_no_fast`, if given, is logged as the reason, e.g. "the C kernel is unavailable: no C compiler").
    """
    impl = requested_impl(requested)
    dev = torch.device(device).type
    if impl == "auto":
        if dev == "cuda" and triton_available():
            chosen, why = "triton", "auto: CUDA + Triton"
        elif dev == "cuda":
            chosen, why = "reference", "auto: CUDA without Triton"
        elif has_fast_cpu:
            chosen, why = "fast", "auto: no CUDA"
        else:
            chosen, why = "reference", f"auto: {why_no_fast or 'no fast path for this device'}"
    else:
        chosen, why = impl, "requested"
        if impl == "triton" and not (triton_available() and (dev == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")):
            raise KernelUnavailableError(f"{op}: the Triton path was requested but cannot run on {dev} "
                               "(needs CUDA and triton, or TRITON_INTERPRET=1 for tests)")
        if impl == "fast" and dev != "cpu" and not (dev == "cuda" and triton_available()):
            raise KernelUnavailableError(f"{op}: the fast path was requested but has no implementation for {dev}")
    key = (op, dev, chosen)
    if key not in _logged:
        _logged.add(key)
        log.info("%s: %s (%s)", op, chosen, why)
    return chosen
