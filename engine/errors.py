"""User-facing errors.

Every error a user can reach names *where* (file, key path or sample), *what* was found, and *what would
be valid* — and, when a near miss is likely, a did-you-mean. Recipe validation collects all problems and
raises one `RecipeErrors`; everything else raises a single `TorchSAEError` subclass.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

__all__ = [
    "TorchSAEError",
    "RecipeError",
    "RecipeErrors",
    "UnsafeFileError",
    "CheckpointError",
    "DataError",
    "did_you_mean",
    "first_line",
]


class TorchSAEError(Exception):
    """Base class of every error TorchSAE raises on purpose."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' — did you mean 'x'?' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" — did you mean '{close[0]}'?" if close else ""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, without ANSI escapes, at most `limit` characters;
    the exception's type name when the message is empty (EOFError('') from a zero-length file)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e))
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:limit] if line else type(e).__name__


class RecipeError(TorchSAEError):
    """One problem in a recipe: file, key path (and line when known), message, hint.

    str() gives e.g. ``recipes/x.toml: [loss.dssim] unknown key 'windw' — did you mean 'windows'? (valid: weight, windows)``.
    """

    def __init__(self, file: str | None, key_path: str | None, message: str, hint: str = "", line: int | None = None):
        self.file = file
        self.key_path = key_path
        self.message = message
        self.hint = hint
        self.line = line
        super().__init__(self.format())

    def format(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}" + (f":{self.line}" if self.line else "") + ": "
        key = f"[{self.key_path}] " if self.key_path else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{key}{self.message}{hint}"


class RecipeErrors(TorchSAEError):
    """All problems found in one recipe, raised once after validation finished."""

    def __init__(self, errors: Sequence[RecipeError]):
        self.errors = list(errors)
        n = len(self.errors)
        head = f"{n} problem{'s' if n != 1 else ''} in recipe:"
        super().__init__(head + "\n" + "\n".join("  " + e.format() for e in self.errors))

    def __iter__(self):
        return iter(self.errors)


class UnsafeFileError(TorchSAEError):
    """A pickle payload (DFL model file, DFLJPG metadata) asked for something outside the allow-list."""


class CheckpointError(TorchSAEError):
    """A checkpoint is missing, corrupt, or incompatible with the recipe."""


class DataError(TorchSAEError):
    """A faceset or media file cannot be used (names the folder or file)."""
