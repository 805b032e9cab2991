"""The dependency direction of engine/ and kernels/, as README.md's layering list states it.

Every module under engine/ and kernels/ is parsed (ast; imports inside functions too, `if TYPE_CHECKING:`
blocks too) and mapped to its node: its package (``engine.<package>``, or ``engine.errors`` etc. for the
top-level modules), ``kernels``, or ``cli`` for a command module (`engine/__main__.py`,
`engine/<package>/cli_*.py`). Checked:

- kernels import nothing from engine (kernels are leaves);
- every import between nodes points down README's list, never within one line, and no command module
  imports another; every package under engine/ is on the list;
- no cycles: between nodes, and between modules through module-level imports;
- engine/kernels modules are imported at module level (a function-local import is allowed only of a module
  that itself imports an optional dependency at module level, i.e. the dependency stays lazy), and every
  function-local third-party import carries a comment saying why it is there.
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[1]
CLI = "cli"
OPTIONAL_DEPS = ("triton",)  # importing a module that imports these at module level keeps them lazy

# Known violations, each exactly one (file, target); empty now that kernels/ has its final layout. An entry
# added here needs its reason, and test_the_allow_lists_are_still_needed keeps the lists exact.
ALLOWED_EDGES: set[tuple[str, str]] = set()
ALLOWED_LOCAL_INTERNAL: set[tuple[str, str]] = set()
ALLOWED_UNCOMMENTED_LOCAL: set[tuple[str, str]] = set()


@attrs.frozen
class Import:
    file: str  # path relative to the repository
    line: int
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (the deepest module the statement names)
    local: bool  # inside a function
    commented: bool  # a comment on it, on the line above, or on an import just before it


def read_layers() -> list[set[str]]:
    """README's layering list, bottom first: one set of node names per numbered line."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- layering\b.*?-->\n(.*?)<!-- /layering -->", text, re.S)
    assert m, "README.md: no <!-- layering --> list"
    layers = []
    for line in m.group(1).splitlines():
        if not re.match(r"\d+\. ", line):
            continue
        names = set(re.findall(r"`([^`]+)`", line.split(" — ")[0]))
        layers.append({CLI if n in ("engine.__main__", "engine.*.cli_*") else n for n in names})
    return layers


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted module: (file, is a package __init__)} for engine/ and kernels/."""
    out = {}
    for p in sorted([*ROOT.glob("engine/**/*.py"), *ROOT.glob("kernels/**/*.py")]):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return out


MODULES = _modules()


def node_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "kernels":
        return "kernels"
    if parts[-1] == "__main__" or parts[-1].startswith("cli_"):
        return CLI
    return ".".join(parts[:2])


def imports() -> list[Import]:
    out = []
    for module, (path, is_pkg) in MODULES.items():
        src = path.read_text()
        lines = src.splitlines()
        rel = str(path.relative_to(ROOT))

        def says_why(line: str) -> bool:  # a comment that is more than a linter pragma
            comment = line.partition("#")[2].strip()
            return bool(comment) and not re.fullmatch(r"(noqa|type:|pragma)\b.*", comment)

        def commented(stmt: ast.stmt) -> bool:
            """A comment on the statement or on a comment line just above it."""
            return any(says_why(ln) for ln in lines[stmt.lineno - 1:stmt.end_lineno]) or \
                lines[stmt.lineno - 2].strip().startswith("#") and says_why(lines[stmt.lineno - 2])

        def visit(node: ast.AST, local: bool) -> None:
            group = False  # in a run of imports one of which says why (the run imports one dependency)
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    group = group or commented(child)
                else:
                    group = False
                if isinstance(child, ast.Import):
                    for a in child.names:
                        out.append(Import(rel, child.lineno, module, a.name, local, group))
                elif isinstance(child, ast.ImportFrom):
                    if child.level:
                        base = module.split(".") if is_pkg else module.split(".")[:-1]
                        base = base[: len(base) - (child.level - 1)]
                        target = ".".join(base + ([child.module] if child.module else []))
                    else:
                        target = child.module
                    for a in child.names:  # `from pkg import submodule` imports the submodule
                        sub = f"{target}.{a.name}"
                        out.append(Import(rel, child.lineno, module, sub if sub in MODULES else target, local, group))
                visit(child, inner)

        visit(ast.parse(src), False)
    return out


IMPORTS = imports()
INTERNAL = [i for i in IMPORTS if i.target.split(".")[0] in ("engine", "kernels")]


def _where(found: list[Import]) -> str:
    return "\n  ".join(sorted({f"{i.file}:{i.line}: {i.module} -> {i.target}" for i in found}))


def test_the_readme_list_names_every_package():
    layers = read_layers()
    listed = set().union(*layers)
    assert len(listed) == sum(len(x) for x in layers), "a node is on two lines of README's layering list"
    nodes = {node_of(m) for m in MODULES} - {"engine"}  # engine/__init__.py: the (empty) namespace
    assert nodes - listed == set(), "packages missing from README's layering list (add each where it belongs)"
    assert listed - nodes == set(), "README's layering list names packages that do not exist"


def test_kernels_import_nothing_from_engine():
    bad = [i for i in INTERNAL if i.file.startswith("kernels/") and i.target.startswith("engine")
           and (i.file, node_of(i.target)) not in ALLOWED_EDGES]
    assert not bad, "kernels are leaves (torch, numpy, stdlib only):\n  " + _where(bad)


def test_every_import_points_down_the_layering():
    level = {n: k for k, names in enumerate(read_layers()) for n in names}
    bad = []
    for i in INTERNAL:
        src, dst = node_of(i.module), node_of(i.target)
        if dst == "engine" or (i.file, dst) in ALLOWED_EDGES:
            continue
        if src == dst and src != CLI:
            continue  # inside one package
        if src == CLI and dst != CLI:
            continue  # a command may use any package
        if level[src] <= level[dst]:
            bad.append(i)
    assert not bad, ("imports that do not point down README's layering list (move the code to the lower "
                     "package, or the import's user up):\n  " + _where(bad))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(MODULES)))
    try:
        for v in sorted(edges):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycles_between_packages():
    edges: dict[str, set[str]] = defaultdict(set)
    for i in INTERNAL:
        src, dst = node_of(i.module), node_of(i.target)
        if src != dst and dst != "engine" and (i.file, dst) not in ALLOWED_EDGES:
            edges[src].add(dst)
    assert _cycles(edges) == []


def test_no_import_cycles_between_modules():
    """Through module-level imports (a package's __init__ counts as the module it is)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for i in INTERNAL:
        if not i.local and i.target in MODULES and i.target != i.module:
            edges[i.module].add(i.target)
    assert _cycles(edges) == []


def _imports_optional_dep(module: str) -> bool:
    return any(not i.local and i.module == module and i.target.split(".")[0] in OPTIONAL_DEPS for i in IMPORTS)


def test_engine_modules_are_imported_at_module_level():
    bad = [i for i in INTERNAL if i.local and (i.file, i.target) not in ALLOWED_LOCAL_INTERNAL
           and not _imports_optional_dep(i.target)]
    assert not bad, ("function-local imports of engine/kernels modules hide the dependency direction; import "
                     "at module level (and untangle the cycle, if one appears):\n  " + _where(bad))


def test_function_local_third_party_imports_say_why():
    bad = [i for i in IMPORTS if i.local and i.target.split(".")[0] not in ("engine", "kernels") and not i.commented
           and (i.file, i.target.split(".")[0]) not in ALLOWED_UNCOMMENTED_LOCAL]
    assert not bad, ("a function-local import is for a heavy or optional dependency and says so in a comment "
                     "(else import it at module level):\n  " + _where(bad))


def test_the_allow_lists_are_still_needed():
    """Each entry of the allow-lists above still matches an import (delete the ones that no longer do)."""
    edges = {(i.file, node_of(i.target)) for i in INTERNAL}
    local = {(i.file, i.target) for i in INTERNAL if i.local}
    uncommented = {(i.file, i.target.split(".")[0]) for i in IMPORTS if i.local and not i.commented}
    assert ALLOWED_EDGES <= edges and ALLOWED_LOCAL_INTERNAL <= local and ALLOWED_UNCOMMENTED_LOCAL <= uncommented
