"""XSeg labels: DFL's include/exclude polygons (`seg_ie_polys`) — parse, check, rasterise, store.

DFL's XSeg editor stores a face's labels in its DFLJPG metadata (docs/dfl.md §6.2) as

    seg_ie_polys = {'polys': [{'type': 1, 'pts': float32 (n, 2)}, {'type': 0, 'pts': ...}, ...]}

with `type` 1 = include, 0 = exclude and `pts` in aligned-image pixels (x right, y down); a legacy list of
`(type, pts)` pairs is read too. DFL sorts the polygons on load (includes first, then excludes, each group
in stored order) and rasterises them with `cv2.fillPoly` on a zero mask, the points truncated to int32:
include draws 1, exclude draws 0 (docs/dfl.md §5.7 "Mask source"). A face counts as labelled when its polygons
have at least one point in total (DFL's `get_pts_count() != 0`). DFL drops the key when the last polygon
is deleted, so a stored empty list does not occur in DFL's files (it is read as "no labels").

Deviation from DFL: a polygon DFL would choke on (a type other than 0/1 — a KeyError in DFL's sort —,
points that are not (n, 2) numbers, NaN or infinite coordinates) raises DataError naming the file and the
polygon instead of a traceback; nothing is repaired silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import cv2
import numpy as np

from engine.errors import DataError

__all__ = ["EXCLUDE", "INCLUDE", "Poly", "parse_polys", "sort_polys", "point_count", "rasterize", "to_dfl",
           "type_name", "type_from_name"]

EXCLUDE, INCLUDE = 0, 1
_TYPE_NAMES = {INCLUDE: "include", EXCLUDE: "exclude"}


def type_name(t: int) -> str:
    return _TYPE_NAMES[t]


def type_from_name(name: Any, where: str) -> int:
    """'include' / 'exclude' (or DFL's 1 / 0) -> 1 / 0; DataError naming `where` otherwise."""
    if isinstance(name, str) and name.strip().lower() in ("include", "exclude"):
        return INCLUDE if name.strip().lower() == "include" else EXCLUDE
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool) and int(name) in (0, 1):
        return int(name)
    raise DataError(f"{where}: polygon type {name!r} is not valid (valid: 'include' or 'exclude', DFL's 1 or 0)")


def _frozen_pts(value: Any) -> np.ndarray:
    arr = np.array(value, dtype=np.float32).reshape(-1, 2)
    arr.setflags(write=False)
    return arr


@attrs.frozen(eq=False)
class Poly:
    """One polygon: type (1 include, 0 exclude) and points float32 (n, 2) in aligned-image pixels."""

    type: int
    pts: np.ndarray = attrs.field(converter=_frozen_pts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Poly) and self.type == other.type and np.array_equal(self.pts, other.pts)

    __hash__ = None  # mutable-array semantics: not hashable


def _check_pts(pts: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(pts, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: points are not numbers (got {type(pts).__name__})") from None
    if arr.size == 0:
        return np.zeros((0, 2), np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"{where}: points must be a list of [x, y] pairs, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{where}: points contain NaN or infinity")
    if np.abs(arr).max() > 1e6:
        raise DataError(f"{where}: points lie {np.abs(arr).max():.3g} px from the origin (aligned faces are "
                        "at most a few thousand px); the labels are corrupt")
    return arr.astype(np.float32)


def parse_polys(value: Any, where: str) -> list[Poly]:
    """DFL `seg_ie_polys` (dict form or legacy list of pairs, or None) -> polygons in stored order.

    DataError naming `where` (the file), the polygon index and what is wrong for anything malformed.
    """
    if value is None:
        return []
    if isinstance(value, dict):
        if "polys" not in value:
            raise DataError(f"{where}: seg_ie_polys has no 'polys' list (keys: {sorted(map(str, value))})")
        items = value["polys"]
        if not isinstance(items, (list, tuple)):
            raise DataError(f"{where}: seg_ie_polys['polys'] must be a list, got {type(items).__name__}")
        pairs = []
        for i, p in enumerate(items):
            if not isinstance(p, dict) or "type" not in p:
                raise DataError(f"{where}: seg_ie_polys polygon {i} must be a dict with 'type' and 'pts', got "
                                f"{type(p).__name__}")
            pairs.append((p.get("type"), p.get("pts")))
    elif isinstance(value, (list, tuple)):
        pairs = []
        for i, p in enumerate(value):
            if not isinstance(p, (list, tuple)) or len(p) != 2:
                raise DataError(f"{where}: legacy seg_ie_polys entry {i} must be a (type, points) pair")
            pairs.append((p[0], p[1]))
    else:
        raise DataError(f"{where}: seg_ie_polys must be a dict or a list, got {type(value).__name__}")
    out = []
    for i, (t, pts) in enumerate(pairs):
        w = f"{where}: seg_ie_polys polygon {i}"
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or int(t) not in (0, 1):
            raise DataError(f"{w}: type {t!r} is not valid (1 = include, 0 = exclude)")
        out.append(Poly(int(t), _check_pts([] if pts is None else pts, w)))
    return out


def sort_polys(polys: Iterable[Poly]) -> list[Poly]:
    """DFL's SegIEPolys.sort: includes first, then excludes, each in stored order."""
    polys = list(polys)
    return [p for p in polys if p.type == INCLUDE] + [p for p in polys if p.type == EXCLUDE]


def point_count(polys: Iterable[Poly]) -> int:
    return sum(len(p.pts) for p in polys)


def rasterize(polys: Sequence[Poly], shape: tuple[int, ...]) -> np.ndarray:
    """DFL's overlay_mask on a zero mask: float32 (H, W, 1) in {0, 1}.

    Polygons are drawn in DFL's sorted order (includes, then excludes) with cv2.fillPoly, points truncated
    to int32 (DFL's astype(np.int32)); include fills 1, exclude fills 0; empty polygons are skipped.
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w, 1), np.float32)
    for p in sort_polys(polys):
        if len(p.pts):
            cv2.fillPoly(mask, [p.pts.astype(np.int32)], (1.0 if p.type == INCLUDE else 0.0,))
    return mask


def to_dfl(polys: Sequence[Poly]) -> dict | None:
    """The DFLJPG value DFL's editor writes (`SegIEPolys.dump()`), or None (key removed) without polygons."""
    polys = list(polys)
    if not polys:
        return None
    return {"polys": [{"type": int(p.type), "pts": np.array(p.pts, dtype=np.float32)} for p in polys]}
