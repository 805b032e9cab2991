"""DFL variable names and layouts <-> torch state-dict keys and layouts (docs/dfl.md §2.8, §8.2, §8.3).

Names: torch ``<part>.<path>.<weight|bias>`` <-> DFL ``<part>/<path>/<weight|bias>:0``; inside a part file
the leading ``<part>/`` is dropped (``down1/downs_0/conv1/weight:0`` in ``encoder.npy``). Our modules use
DFL's attribute names, so the map is purely syntactic.

Layouts, chosen by rank (every 4-D parameter is a conv kernel, every 2-D one a dense kernel):

| tensor | DFL | torch | DFL -> torch | torch -> DFL |
|---|---|---|---|---|
| Conv2D kernel | (kh, kw, in, out) | (out, in, kh, kw) | transpose(3, 2, 0, 1) | transpose(2, 3, 1, 0) |
| Conv2DTranspose kernel | (kh, kw, out, in) | (in, out, kh, kw) | transpose(3, 2, 0, 1) | transpose(2, 3, 1, 0) |
| Dense kernel | (in, out) | (out, in) | .T | .T |
| bias | (out,) | (out,) | as is | as is |

No channel permutation is needed: our Upscale keeps DFL's DCR depth_to_space (engine.modules.layers).
"""

from __future__ import annotations

import numpy as np

__all__ = ["torch_to_dfl_name", "dfl_to_torch_name", "dfl_to_torch_array", "torch_to_dfl_array",
           "dfl_shape_of"]


def torch_to_dfl_name(key: str, *, strip_part: bool = True) -> str:
    """'encoder.down1.downs_0.conv1.weight' -> 'down1/downs_0/conv1/weight:0' (part file key), or
    'encoder/down1/downs_0/conv1/weight:0' with ``strip_part=False``."""
    parts = key.split(".")
    if strip_part:
        parts = parts[1:]
    return "/".join(parts) + ":0"


def dfl_to_torch_name(part: str, dfl_key: str) -> str:
    """('encoder', 'down1/downs_0/conv1/weight:0') -> 'encoder.down1.downs_0.conv1.weight'."""
    name = dfl_key[:-2] if dfl_key.endswith(":0") else dfl_key
    return part + "." + name.replace("/", ".")


def dfl_to_torch_array(a: np.ndarray) -> np.ndarray:
    """DFL layout -> torch layout (by rank, see table); returns a C-contiguous float32 array."""
    if a.ndim == 4:
        a = a.transpose(3, 2, 0, 1)
    elif a.ndim == 2:
        a = a.T
    return np.ascontiguousarray(a, dtype=np.float32)


def torch_to_dfl_array(a: np.ndarray) -> np.ndarray:
    """torch layout -> DFL layout (inverse of `dfl_to_torch_array`)."""
    if a.ndim == 4:
        a = a.transpose(2, 3, 1, 0)
    elif a.ndim == 2:
        a = a.T
    return np.ascontiguousarray(a, dtype=np.float32)


def dfl_shape_of(torch_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The DFL shape a torch parameter of ``torch_shape`` is stored with."""
    s = tuple(torch_shape)
    if len(s) == 4:
        return (s[2], s[3], s[1], s[0])
    if len(s) == 2:
        return (s[1], s[0])
    return s
