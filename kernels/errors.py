"""The errors a kernel choice raises (stdlib only: the CLI imports this to report them without loading torch).

Kernels are leaves (they import nothing from engine/), so these do not derive from engine.errors.TorchSAEError;
the CLI (engine/__main__.py) reports both kinds the same way.
"""

from __future__ import annotations

__all__ = ["KernelError", "KernelChoiceError", "KernelUnavailableError"]


class KernelError(Exception):
    """Base class of the errors raised when choosing a kernel implementation."""


class KernelChoiceError(KernelError, ValueError):
    """TORCHSAE_KERNELS / [compile].kernels / impl= names no implementation (the message lists the valid ones)."""


class KernelUnavailableError(KernelError, RuntimeError):
    """An implementation was requested explicitly but cannot run on these inputs (no silent fallback); the
    message says why (no C compiler, no CUDA, float64 inputs, lr_dropout, a missing C source, ...)."""
