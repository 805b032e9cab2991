"""Loss registry: the names recipes may use for loss terms, each mapped to its per-sample function.

Every registered function returns one value per sample (shape (N,)); a training step sums over the batch
(DFL §12.1). `get_loss` raises a RecipeError with a did-you-mean for unknown names.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.errors import RecipeError, did_you_mean

__all__ = ["LOSSES", "register_loss", "get_loss"]

LOSSES: dict[str, Callable] = {}


def register_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: register `fn` under `name` (names are unique)."""

    def deco(fn: Callable) -> Callable:
        if name in LOSSES and LOSSES[name] is not fn:
            raise ValueError(f"loss {name!r} is already registered ({LOSSES[name].__module__}.{LOSSES[name].__name__})")
        LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str, *, file: str | None = None, key_path: str | None = "loss") -> Callable:
    """The loss function registered as `name`; RecipeError naming the valid ones otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise RecipeError(file, key_path, f"unknown loss {name!r}{did_you_mean(name, LOSSES)}",
                          hint="valid: " + ", ".join(sorted(LOSSES))) from None
