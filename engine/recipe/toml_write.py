"""A small TOML writer for resolved recipes (tomllib reads; the standard library has no writer).

Handles what recipes contain: str, int, float, bool, arrays of scalars, nested tables and arrays of
tables. Output is stable (keys in the given order) so a dumped recipe diffs cleanly and
`tomllib.loads(dumps(d)) == d` for every value it accepts.
"""

from __future__ import annotations

import math
from typing import Any

_BARE_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _key(k: str) -> str:
    return k if k and set(k) <= _BARE_OK else _str(k)


def _str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        # repr gives '1e-05' or '5.0'; TOML wants a fraction or exponent, both of which repr provides.
        return r if ("." in r or "e" in r or "E" in r) else r + ".0"
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML: {v!r}")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def dumps(doc: dict[str, Any]) -> str:
    """Serialise a dict of scalars / tables / arrays of tables as TOML."""
    lines: list[str] = []
    _emit(doc, [], lines)
    return "\n".join(lines).strip() + "\n"


def _emit(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = [(k, v) for k, v in table.items() if not isinstance(v, dict) and not _is_table_array(v)]
    subtables = [(k, v) for k, v in table.items() if isinstance(v, dict)]
    arrays = [(k, v) for k, v in table.items() if _is_table_array(v)]
    for k, v in scalars:
        lines.append(f"{_key(k)} = {_scalar(v)}")
    for k, v in subtables:
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in path + [k]) + "]")
        _emit(v, path + [k], lines)
    for k, items in arrays:
        for item in items:
            lines.append("")
            lines.append("[[" + ".".join(_key(p) for p in path + [k]) + "]]")
            _emit(item, path + [k], lines)
