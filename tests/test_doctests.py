"""Docstring examples run: every `>>>` example in engine/ and kernels/ is a doctest, and the package entry
points whose docstrings show how to use them have examples that run."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# entry points whose usage example must be a runnable one (at least one `>>>` example that passes)
REQUIRED = ("engine.graph", "engine.recipe", "kernels.dssim", "kernels.warp", "kernels.dfl_update")
NOT_YET: dict[str, str] = {}  # module -> why its required example is still missing (xfail, strict)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _with_examples() -> list[str]:
    files = [*ROOT.glob("engine/**/*.py"), *ROOT.glob("kernels/**/*.py")]
    return sorted(_module_name(p) for p in files if ">>>" in p.read_text())


MODULES = sorted(set(_with_examples()) | set(REQUIRED))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=NOT_YET[n], strict=True))
                                  if n in NOT_YET else n for n in MODULES])
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples fail (see above)"
    if name in REQUIRED:
        assert result.attempted > 0, f"{name}: its docstring has no >>> example"
