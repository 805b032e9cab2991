"""Sort and clean an aligned faceset (DFL's `sort` tool, `mainscripts/Sorter.py`), without renaming.

DFL sorts by renaming files to their rank. TorchSAE writes the ranking to `DIR/sort_<by>.json` instead
and moves files only when asked (`--drop`), into `DIR/_dropped/`, logging every move in
`DIR/_dropped/drop_log.json` so `undo_drops` puts them back.

Methods (each gives an order, a per-file score and a "worst first" list used by --drop):

- blur: sharpness = variance of the Laplacian (3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]]) of the grey image,
  taken over the pixels inside the face-hull mask of the stored landmarks (DFL masks the image with the
  hull before its sharpness estimate; taking the variance only over hull pixels avoids counting the
  mask's own edge as detail). Order: sharpest first; worst = least sharp.
- yaw: yaw of `estimate_pitch_yaw_roll(landmarks, size=width)` (docs/dfl.md §6.6), radians. Order: ascending
  yaw (one profile -> frontal -> other profile), as DFL's face-yaw sort up to direction; worst = largest
  |yaw| (most turned).
- hist: DFL's histogram similarity ordering: per-channel 256-bin histograms, distance between two faces
  = sum over B, G, R of OpenCV's Bhattacharyya distance
  d(H1, H2) = sqrt(max(0, 1 - Σ sqrt(H1·H2) / sqrt(ΣH1·ΣH2))); the order is DFL's greedy chain (start
  at the first file, always step to the nearest unvisited face). Score = mean distance to all others;
  worst = most dissimilar (DFL's hist-dissim criterion).
- face: identity grouping. dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`)
  gives a 128-d descriptor per face (from the stored 68 landmarks); average-linkage clustering with a
  Euclidean cut at `threshold` (0.6, dlib's same-person distance); the largest cluster seeds the
  target, whose members are the faces within `threshold` of its centroid (`cluster_identities`).
  Order: target cluster first, then the other clusters by size, each by distance to its centroid.
  Score = distance to the target centroid; worst = other people first, then farthest from the target.
  DFL has no identity sort with this model; it is TorchSAE's addition.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
from pathlib import Path

import attrs
import cv2
import numpy as np

from engine.errors import DataError, did_you_mean
from engine.extract.backends import dlib_model_path
from engine.faces import dfljpg
from engine.faces.landmarks import estimate_pitch_yaw_roll
from engine.faces.masks import get_image_hull_mask
from engine.fileio import write_atomic

__all__ = [
    "SORT_METHODS",
    "DROPPED_DIR",
    "DROP_LOG",
    "SortResult",
    "list_faces",
    "sharpness",
    "blur_scores",
    "yaw_scores",
    "channel_histograms",
    "bhattacharyya_matrix",
    "hist_chain_order",
    "face_descriptors",
    "cluster_identities",
    "sort_faceset",
    "drop_files",
    "drop_worst",
    "undo_drops",
]

log = logging.getLogger("torchsae.extract")

SORT_METHODS = ("blur", "yaw", "hist", "face")
DROPPED_DIR = "_dropped"
DROP_LOG = "drop_log.json"
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


@attrs.frozen
class SortResult:
    """by: method; order: file names in ranked/grouped order; scores: name -> score (NaN when it could
    not be computed); worst: names from worst to best (what --drop takes from); groups: name -> cluster
    label (face only; 0 = target identity)."""

    by: str
    order: list[str]
    scores: dict[str, float]
    worst: list[str]
    groups: dict[str, int] | None = None

    def to_dict(self) -> dict:
        return {
            "by": self.by,
            "order": self.order,
            "scores": {k: (None if not math.isfinite(v) else v) for k, v in self.scores.items()},
            "worst_first": self.worst,
            "groups": self.groups,
        }


def list_faces(folder: str | Path) -> list[Path]:
    """The aligned faces of a faceset: `*.jpg` directly in `folder`, by name (no subfolders, no hidden
    or partial files)."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"{d}: faceset folder does not exist")
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() == ".jpg" and not p.name.startswith("."))


def _meta(path: Path) -> dict:
    """DFL metadata of an aligned face (engine.faces.dfljpg.read); DataError if it has no landmarks."""
    meta = dfljpg.read(path)
    if not meta or meta.get("landmarks") is None:
        raise DataError(f"{path}: not an aligned DFL face (no DFLJPG landmarks); sort needs extracted faces")
    return meta


def _read(path: Path) -> tuple[np.ndarray, dict]:
    """(BGR uint8 image, DFL metadata dict) of an aligned face."""
    meta = _meta(path)
    return dfljpg.read_image(path), meta


def sharpness(image: np.ndarray, landmarks) -> float:
    """Variance of the Laplacian of the grey image over the hull-mask pixels (NaN if the mask is empty)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float64) if image.ndim == 3 else image.astype(np.float64)
    lap = cv2.filter2D(grey, cv2.CV_64F, _LAPLACIAN, borderType=cv2.BORDER_REFLECT_101)
    mask = get_image_hull_mask(grey.shape, np.asarray(landmarks, dtype=np.float64))[..., 0] > 0
    if mask.sum() < 16:
        return float("nan")
    return float(lap[mask].var())


def blur_scores(paths: list[Path]) -> np.ndarray:
    """(N,) sharpness per face (see `sharpness`)."""
    out = np.empty(len(paths), dtype=np.float64)
    for i, p in enumerate(paths):
        img, meta = _read(p)
        out[i] = sharpness(img, meta["landmarks"])
        if not math.isfinite(out[i]):
            log.warning("sort: %s: landmarks give an empty face hull; ranked as the blurriest", p)
    return out


def yaw_scores(paths: list[Path]) -> np.ndarray:
    """(N,) yaw in radians per face (docs/dfl.md §6.6, size = image width as DFL passes)."""
    out = np.empty(len(paths), dtype=np.float64)
    for i, p in enumerate(paths):
        meta = _meta(p)
        width = dfljpg.read_shape(p)[1]
        out[i] = estimate_pitch_yaw_roll(meta["landmarks"], size=width)[1]
    return out


def channel_histograms(image: np.ndarray) -> np.ndarray:
    """(C, 256) float64 histograms of each channel (cv2.calcHist, 256 bins over [0, 256))."""
    chans = image.shape[2] if image.ndim == 3 else 1
    # reshape: OpenCV 4 returns (256, 1), OpenCV 5 (256,)
    return np.stack([cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(-1) for c in range(chans)]).astype(np.float64)


def bhattacharyya_matrix(hists: np.ndarray, rows: slice | None = None) -> np.ndarray:
    """Pairwise summed Bhattacharyya distances for hists (N, C, B) -> (R, N), rows `rows` (default all).

    Per channel: d = sqrt(max(0, 1 - Σ sqrt(h1·h2) / sqrt(Σh1·Σh2))), OpenCV's HISTCMP_BHATTACHARYYA;
    summed over channels. Computed as matrix products of sqrt(h / Σh).
    """
    sums = hists.sum(axis=2, keepdims=True)
    s = np.sqrt(hists / np.where(sums > 0, sums, 1.0))  # (N, C, B)
    sr = s if rows is None else s[rows]
    d = np.zeros((sr.shape[0], s.shape[0]), dtype=np.float64)
    for c in range(s.shape[1]):
        bc = sr[:, c, :] @ s[:, c, :].T
        d += np.sqrt(np.maximum(0.0, 1.0 - bc))
    return d


def hist_chain_order(hists: np.ndarray) -> tuple[list[int], np.ndarray]:
    """DFL's greedy histogram chain over hists (N, C, B): start at 0, repeatedly append the nearest
    unvisited face (ties: lowest index). Returns (order, mean distance of each face to all others)."""
    n = hists.shape[0]
    if n == 0:
        return [], np.zeros(0)
    sums = hists.sum(axis=2, keepdims=True)
    s = np.sqrt(hists / np.where(sums > 0, sums, 1.0))
    visited = np.zeros(n, dtype=bool)
    order = [0]
    visited[0] = True
    cur = 0
    for _ in range(n - 1):
        d = np.zeros(n)
        for c in range(s.shape[1]):
            d += np.sqrt(np.maximum(0.0, 1.0 - s[:, c, :] @ s[cur, c, :]))
        d[visited] = np.inf
        cur = int(np.argmin(d))
        visited[cur] = True
        order.append(cur)
    mean_d = np.zeros(n)
    for a in range(0, n, 1024):  # (1024, N) blocks keep memory bounded for big facesets
        blk = bhattacharyya_matrix(hists, slice(a, a + 1024))
        mean_d[a : a + blk.shape[0]] = blk.sum(axis=1) / max(n - 1, 1)
    return order, mean_d


def face_descriptors(paths: list[Path], model_path: str | Path | None = None) -> np.ndarray:
    """(N, 128) float64 dlib face-recognition descriptors, one per aligned face, from its stored 68
    landmarks (dlib aligns its own 150x150 chip from them)."""
    import dlib  # heavy (C extension): only sorting by face identity needs it


    model = dlib.face_recognition_model_v1(str(model_path or dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))
    out = np.zeros((len(paths), 128), dtype=np.float64)
    for i, p in enumerate(paths):
        img, meta = _read(p)
        lm = np.asarray(meta["landmarks"], dtype=np.float64)
        l, t = np.floor(lm.min(axis=0)).astype(int)
        r, b = np.ceil(lm.max(axis=0)).astype(int)
        shape = dlib.full_object_detection(dlib.rectangle(int(l), int(t), int(r), int(b)), [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
        rgb = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        out[i] = np.asarray(model.compute_face_descriptor(rgb, shape))
    return out


def cluster_identities(desc: np.ndarray, threshold: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Target identity and groups of descriptors desc (N, D).

    1. Average-linkage clustering, cut at Euclidean distance `threshold`; the largest cluster (ties: the
       one holding the lowest index) seeds the target.
    2. Target = faces within `threshold` of the seed cluster's centroid; the centroid is then recomputed
       from those members and membership decided once more. A centroid averages expression and pose
       out, so it separates people more cleanly than pairwise distances (demo videos: same person
       <= 0.46 from her centroid, the other person >= 0.75, while same-person pairs reach 0.65).
    Returns (labels (N,) int: 0 = target, 1, 2, ... = the other clusters by decreasing size;
    distance of each descriptor to the target centroid (N,)).
    """
    n = desc.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if n == 1:
        raw = np.zeros(1, dtype=np.int64)
    else:
        from scipy.cluster.hierarchy import fcluster, linkage  # heavy: only the face-identity clustering needs scipy

        raw = fcluster(linkage(desc, method="average", metric="euclidean"), t=threshold, criterion="distance")
    seed = max(np.unique(raw), key=lambda c: ((raw == c).sum(), -int(np.argmax(raw == c))))
    member = raw == seed
    for _ in range(2):
        dist = np.linalg.norm(desc - desc[member].mean(axis=0), axis=1)
        member = dist <= threshold
        if not member.any():  # a degenerate seed: keep its closest face so the target is never empty
            member = dist == dist.min()
    dist = np.linalg.norm(desc - desc[member].mean(axis=0), axis=1)
    labels = np.zeros(n, dtype=np.int64)
    rest = [c for c in np.unique(raw[~member])]
    rest.sort(key=lambda c: (-((raw == c) & ~member).sum(), int(np.argmax((raw == c) & ~member))))
    for k, c in enumerate(rest, start=1):
        labels[(raw == c) & ~member] = k
    return labels, dist


def sort_faceset(folder: str | Path, by: str, *, face_threshold: float = 0.6, output: str | Path | None = None) -> SortResult:
    """Rank the faces in `folder` by `by` (blur | yaw | hist | face) and write the JSON result to
    `output` (default `folder/sort_<by>.json`). Moves nothing."""
    if by not in SORT_METHODS:
        raise DataError(f"sort --by {by!r} is not known{did_you_mean(by, SORT_METHODS)} (valid: {', '.join(SORT_METHODS)})")
    folder = Path(folder)
    paths = list_faces(folder)
    if not paths:
        raise DataError(f"{folder}: no aligned faces (*.jpg) to sort")
    names = [p.name for p in paths]
    groups = None
    if by == "blur":
        s = blur_scores(paths)
        key = np.where(np.isfinite(s), s, -np.inf)
        order_idx = sorted(range(len(paths)), key=lambda i: (-key[i], names[i]))
        worst_idx = order_idx[::-1]
    elif by == "yaw":
        s = yaw_scores(paths)
        order_idx = sorted(range(len(paths)), key=lambda i: (s[i], names[i]))
        worst_idx = sorted(range(len(paths)), key=lambda i: (-abs(s[i]), names[i]))
    elif by == "hist":
        hists = []
        for p in paths:
            img, _unused = _read(p)
            hists.append(channel_histograms(img))
        order_idx, s = hist_chain_order(np.stack(hists))
        worst_idx = sorted(range(len(paths)), key=lambda i: (-s[i], names[i]))
    else:
        desc = face_descriptors(paths)
        labels, s = cluster_identities(desc, face_threshold)
        # cluster centroid distance for the within-cluster order
        within = np.zeros(len(paths))
        for c in np.unique(labels):
            m = labels == c
            within[m] = np.linalg.norm(desc[m] - desc[m].mean(axis=0), axis=1)
        order_idx = sorted(range(len(paths)), key=lambda i: (labels[i], within[i], names[i]))
        worst_idx = sorted(range(len(paths)), key=lambda i: (labels[i] == 0, -s[i], names[i]))
        groups = {names[i]: int(labels[i]) for i in range(len(paths))}
    res = SortResult(
        by=by,
        order=[names[i] for i in order_idx],
        scores={names[i]: float(s[i]) for i in range(len(paths))},
        worst=[names[i] for i in worst_idx],
        groups=groups,
    )
    out = Path(output) if output is not None else folder / f"sort_{by}.json"
    out.write_text(json.dumps(res.to_dict(), indent=1) + "\n", encoding="utf-8")
    log.info("sort: %d faces by %s -> %s", len(paths), by, out)
    return res


def _load_log(path: Path) -> dict:
    if not path.exists():
        return {"version": 1, "moves": []}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: drop log is unreadable ({e}); files in {path.parent} were not touched") from e
    if not isinstance(d, dict) or not isinstance(d.get("moves"), list):
        raise DataError(f"{path}: not a TorchSAE drop log (expected {{'version': 1, 'moves': [...]}})")
    return d


def _save_log(path: Path, d: dict) -> None:
    write_atomic(path, json.dumps(d, indent=1) + "\n")


def drop_files(folder: str | Path, names: list[str], *, reason: str) -> list[str]:
    """Move `names` from `folder` into `folder/_dropped/`, logging each move (before it happens) in
    `_dropped/drop_log.json`. Returns the names moved."""
    folder = Path(folder)
    ddir = folder / DROPPED_DIR
    ddir.mkdir(exist_ok=True)
    log_path = ddir / DROP_LOG
    d = _load_log(log_path)
    for n in names:
        if Path(n).name != n or n.startswith("."):
            raise DataError(f"{folder}: '{n}' is not a face file name in this folder")
        if not (folder / n).is_file():
            raise DataError(f"{folder / n}: no such face to drop")
        if (ddir / n).exists():
            raise DataError(f"{ddir / n}: already exists; run `torchsae sort {folder} --undo` first")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    moved = []
    for n in names:
        d["moves"].append({"file": n, "reason": reason, "time": now})
        _save_log(log_path, d)  # logged first: a crash mid-move still leaves the file findable
        shutil.move(str(folder / n), str(ddir / n))
        moved.append(n)
    log.info("sort: moved %d faces to %s (%s); undo with `torchsae sort %s --undo`", len(moved), ddir, reason, folder)
    return moved


def drop_worst(folder: str | Path, result: SortResult, *, percent: float | None = None, others: bool = False) -> list[str]:
    """Drop the worst `percent` % (floor(N·percent/100) faces) of `result`, or with `others` every face
    outside the target identity (face sort only)."""
    if others:
        if result.groups is None:
            raise DataError(f"--drop-others needs --by face (got --by {result.by})")
        names = [n for n in result.worst if result.groups[n] != 0]
        return drop_files(folder, names, reason="face: not the main identity")
    if percent is None or not 0 < percent < 100:
        raise DataError(f"--drop {percent}: expected a percentage with 0 < PCT < 100")
    k = int(math.floor(len(result.worst) * percent / 100.0))
    return drop_files(folder, result.worst[:k], reason=f"{result.by}: worst {percent:g}%")


def undo_drops(folder: str | Path) -> list[str]:
    """Move every logged file from `folder/_dropped/` back into `folder` (latest first), then clear the
    log. Nothing moves if any target name is already taken."""
    folder = Path(folder)
    ddir = folder / DROPPED_DIR
    log_path = ddir / DROP_LOG
    if not log_path.exists():
        raise DataError(f"{folder}: nothing to undo ({log_path} does not exist)")
    d = _load_log(log_path)
    moves = d["moves"]
    pending, seen = [], set()
    for m in reversed(moves):
        if m["file"] not in seen and (ddir / m["file"]).exists():
            pending.append(m)
        seen.add(m["file"])
    for m in pending:
        if (folder / m["file"]).exists():
            raise DataError(f"{folder / m['file']}: exists in the faceset and in {DROPPED_DIR}/; move one away, then retry --undo")
    restored = []
    for m in pending:
        shutil.move(str(ddir / m["file"]), str(folder / m["file"]))
        restored.append(m["file"])
    missing = len(seen) - len(pending)
    if missing:
        log.warning("sort: %d logged files were no longer in %s", missing, ddir)
    log_path.unlink()
    try:
        ddir.rmdir()  # only when empty
    except OSError:
        pass
    log.info("sort: restored %d faces into %s", len(restored), folder)
    return restored
