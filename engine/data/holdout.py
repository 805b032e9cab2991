"""Held-out faces: the deterministic split of the src and dst facesets into training and evaluation faces.

DFL trains on every face of both facesets, and so does TorchSAE by default ([data].eval_fraction = 0).
A recipe that sets

    [data]
    eval_fraction = 0.1     # hold out 10 % of each faceset ...
    eval_block = 8          # ... in contiguous runs of up to 8 faces
    eval_src = ""           # or: a folder of src faces kept apart (then src's training faceset is whole)
    eval_dst = ""           #     the same for dst

keeps those faces out of every training batch (`apply`, called by the loader before the batch planner
sees the facesets) so that engine.eval measures the swap on faces the model never saw.

The split of one faceset of n faces, a pure function of the face names:
  * faces in name order (DFL names aligned faces after their source frame, so name order is time order);
  * k = clamp(round(n·eval_fraction), 1, n − 1) faces are held out, so at least one face trains;
  * they form m = ceil(k / b) contiguous runs, b = min(eval_block, k), run lengths differing by at most
    one; run j is centred in the j-th of m equal segments of the sequence, so the runs spread over the
    whole video (poses, lighting) instead of sitting at one end.
Why runs and not single faces: neighbouring video frames are near duplicates. A held-out frame whose
neighbours were trained on measures memorisation, not generalisation; a run leaks only at its two ends.

`HeldOut` — the per-side folder and face names plus the parameters — is what the training loop stores in
every checkpoint (model.pt "held_out"), so `torchsae eval CKPT` scores exactly the faces that checkpoint
never trained on even if the folders change later (a recomputed split would move faces when files are
added). The pretrain faceset and the extra identities of explicit graphs are never split.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import attrs

from engine.errors import DataError
from engine.faces.faceset import load_faceset

__all__ = ["HeldOut", "HeldOutSide", "held_out_indices", "apply", "from_record", "describe", "names_overlap",
           "RECORD_VERSION"]

log = logging.getLogger("torchsae.data")

RECORD_VERSION = 1


def held_out_indices(n: int, fraction: float, block: int) -> list[int]:
    """Indices (ascending) of the faces held out of a sequence of `n` name-ordered faces (module docstring).

    [] when fraction is 0; DataError when fewer than two faces make a split impossible.
    """
    if fraction <= 0:
        return []
    if not 0 < fraction < 1:
        raise DataError(f"[data].eval_fraction = {fraction}: expected 0 <= fraction < 1")
    if n < 2:
        raise DataError(f"[data].eval_fraction = {fraction}: the faceset has {n} face(s); holding faces out needs "
                        "at least 2 (one to train on, one to evaluate)")
    k = min(max(1, round(n * fraction)), n - 1)
    b = max(1, min(int(block), k))
    m = math.ceil(k / b)
    out: list[int] = []
    for j in range(m):
        size = ((j + 1) * k) // m - (j * k) // m  # run lengths differ by at most one and sum to k
        lo, hi = (j * n) // m, ((j + 1) * n) // m  # segment j: [lo, hi)
        start = lo + (hi - lo - size) // 2
        # never overlap the previous run, never run past the end (only in corner cases with k close to n)
        start = min(max(start, out[-1] + 1 if out else 0), n - (k - len(out)))
        out.extend(range(start, start + size))
    return out


@attrs.frozen(kw_only=True)
class HeldOutSide:
    """One side's held-out faces: `folder` (the recipe's path) and the face `names` in it; `explicit`: the
    folder is a separate eval folder ([data].eval_src / eval_dst), not a part of the training faceset;
    `n_total`: faces in the training faceset before the split (0 for explicit folders)."""

    folder: str
    names: tuple[str, ...]
    explicit: bool = False
    n_total: int = 0


@attrs.frozen(kw_only=True)
class HeldOut:
    """The held-out faces of both sides and how they were chosen (what checkpoints record)."""

    src: HeldOutSide
    dst: HeldOutSide
    fraction: float = 0.0
    block: int = 8

    def record(self) -> dict[str, Any]:
        """Plain data (str, int, float, lists) for a weights-only checkpoint."""
        side = lambda s: {"folder": s.folder, "names": list(s.names), "explicit": s.explicit,  # noqa: E731
                          "n_total": s.n_total}
        return {"version": RECORD_VERSION, "fraction": self.fraction, "block": self.block,
                "src": side(self.src), "dst": side(self.dst)}


def from_record(rec: Any, where: str = "checkpoint") -> HeldOut:
    """The HeldOut a checkpoint recorded (`HeldOut.record()`); DataError naming `where` when malformed."""
    try:
        if int(rec["version"]) != RECORD_VERSION:
            raise DataError(f"{where}: held-out record version {rec['version']}; this TorchSAE reads "
                            f"version {RECORD_VERSION}")
        sides = {k: HeldOutSide(folder=str(rec[k]["folder"]), names=tuple(str(n) for n in rec[k]["names"]),
                                explicit=bool(rec[k]["explicit"]), n_total=int(rec[k]["n_total"]))
                 for k in ("src", "dst")}
        return HeldOut(src=sides["src"], dst=sides["dst"], fraction=float(rec["fraction"]), block=int(rec["block"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: malformed held-out record ({type(e).__name__}: {e})") from None


def _names_of(faceset: Any) -> list[str]:
    return [s.name for s in faceset.samples]


def _explicit_side(folder: str, plain_face_type: str) -> HeldOutSide:
    names = sorted(s.name for s in load_faceset(folder, plain_face_type))
    return HeldOutSide(folder=folder, names=tuple(names), explicit=True)


def _split_side(faceset: Any, folder: str, fraction: float, block: int, side: str) -> tuple[Any, HeldOutSide]:
    names = _names_of(faceset)
    order = sorted(range(len(names)), key=lambda i: names[i])
    try:
        held_pos = held_out_indices(len(names), fraction, block)
    except DataError as e:
        raise DataError(f"{side} faceset {folder}: {e}") from None
    held = {order[p] for p in held_pos}
    kept = copy.copy(faceset)
    kept.samples = [s for i, s in enumerate(faceset.samples) if i not in held]
    return kept, HeldOutSide(folder=folder, names=tuple(sorted(names[i] for i in held)), n_total=len(names))


def apply(data: Any, src: Any, dst: Any) -> tuple[Any, Any, HeldOut | None]:
    """(src, dst, held_out): the training facesets without their held-out faces, per the [data] spec.

    `src` / `dst` are engine.data.dataset.Faceset objects of data.src / data.dst (not modified: the
    returned ones are shallow copies with fewer samples). held_out is None when nothing is held out.
    """
    fraction, block = float(data.eval_fraction), int(data.eval_block)
    if fraction <= 0 and not data.eval_src and not data.eval_dst:
        return src, dst, None
    sides = {}
    out = {}
    for side, fs, folder, explicit in (("src", src, data.src, data.eval_src), ("dst", dst, data.dst, data.eval_dst)):
        if explicit:
            out[side], sides[side] = fs, _explicit_side(explicit, data.plain_face_type)
        elif fraction > 0:
            out[side], sides[side] = _split_side(fs, folder, fraction, block, side)
        else:
            out[side], sides[side] = fs, HeldOutSide(folder=folder, names=(), n_total=len(fs.samples))
    held = HeldOut(src=sides["src"], dst=sides["dst"], fraction=fraction, block=block)
    log.info("held out for evaluation: %s", describe(held))
    return out["src"], out["dst"], held


def describe(held: HeldOut) -> str:
    """'src 47 of 472 faces (6 runs), dst 7 of 72 (1 run)' style summary."""
    def one(name: str, s: HeldOutSide) -> str:
        if s.explicit:
            return f"{name} {len(s.names)} faces of {s.folder}"
        return f"{name} {len(s.names)} of {s.n_total} faces"

    return ", ".join(one(k, getattr(held, k)) for k in ("src", "dst"))


def names_overlap(held: Sequence[str], training: Sequence[str]) -> list[str]:
    """Held-out names that also appear among training names (for sanity checks in tests and eval)."""
    t = set(training)
    return [n for n in held if n in t]
