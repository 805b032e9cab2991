"""SAEHD training batches: facesets, the deterministic batch plan, and the worker-side batch maker (spec §5.1).

Data flow (engine.data.loader drives it):

    BatchPlanner (main process)  --BatchPlan-->  SAEHDBatches[plan] (worker)  -->  dict of NCHW tensors

- `Faceset`: the usable FaceSamples of one or more folders/packs (engine.faces.faceset.load_faceset), with
  MARK_ONLY samples dropped (DFL cannot train them) and decoding to `FaceData`.
- `BatchPlanner`: which samples batch k uses and their per-sample keys. Sample indices come from DFL's
  IndexHost (shuffled epochs) or, with uniform_yaw, Index2DHost (engine.data.yaw); each src sample gets
  a colour-transfer dst sample from its own shuffled dst order when ct is on (§5.1). Per-sample keys
  are `PCG64(SeedSequence(seed, spawn_key=(4, k)))` draws. Its whole state is a few integers
  (`state_dict()`), so a checkpoint restores the exact stream.
- `SAEHDBatches`: a torch map-style dataset whose "index" is a BatchPlan. It decodes and processes the
  plan's samples ("dfl": engine.data.sample.process_dfl per sample; "fast": a shared model-resolution
  cache + process_fast_batch) and returns the eight SAEHD tensors. A batch is a pure function of its
  plan and the files, so worker count and timing never change the stream and workers hold no RNG state.

Bad input at load time (a file that scanned fine but no longer decodes): the sample is replaced by the
next index (i+1, i+2, ... mod N) that decodes, deterministically; the names are returned with the batch
(`_bad`) so the loader reports them in a summary warning; DataError naming the faceset if nothing in it
decodes any more. The scan's own skips (non-DFL JPEG, missing landmarks, unknown face type) are reported
once by engine.faces.faceset.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import attrs
import cv2
import numpy as np
import torch

from engine.faces import dfljpg
from engine.faces.faceset import FaceSample, load_faceset
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, landmarks_68_3D, transform_points
from engine.faces.masks import get_image_hull_mask
from engine.data.sample import (
    OUTPUT_NAMES,
    FaceData,
    SampleOptions,
    prepare_ct_ref,
    prepare_face,
    process_dfl,
    process_fast_batch,
    sample_rngs,
)
from engine.data.yaw import ShuffleIndex, UniformYawIndex
from engine.errors import DataError

__all__ = [
    "BATCH_KEYS",
    "MODES",
    "Faceset",
    "BatchPlan",
    "BatchPlanner",
    "FaceCache",
    "SAEHDBatches",
    "write_synthetic_faceset",
]

log = logging.getLogger("torchsae.data")

MODES = ("fast", "dfl")
# SAEHD's eight inputs (§3.1), in DFL's order: per side warped, target, target mask, eyes-mouth mask.
BATCH_KEYS = ("warped_src", "target_src", "target_srcm", "target_srcm_em",
              "warped_dst", "target_dst", "target_dstm", "target_dstm_em")
_SIDE_KEYS = {"src": BATCH_KEYS[:4], "dst": BATCH_KEYS[4:]}

# spawn_key roots of the planner's independent streams under one seed
_KEY_SRC, _KEY_DST, _KEY_CT, _KEY_SAMPLE = 1, 2, 3, 4
# What makes one sample unusable at load time (undecodable bytes, a mask or landmarks OpenCV or the
# alignment cannot use): the sample is replaced and reported, the epoch goes on.
_SAMPLE_ERRORS = (DataError, cv2.error, ValueError, ArithmeticError, np.linalg.LinAlgError)


# ---------------------------------------------------------------------------------------------------------
# Facesets


class Faceset:
    """The usable faces of one or more facesets (folders, faceset.pak or faceset.tspak), in order.

    plain_face_type: face type of plain images with `<name>_landmarks.npy` (DFLJPGs carry their own).
    MARK_ONLY samples (no crop; DFL's SampleProcessor cannot use them) are dropped with one warning.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], plain_face_type: str | FaceType = "wf"):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise DataError("faceset: no folder given")
        self.label = ", ".join(str(p) for p in paths)
        samples: list[FaceSample] = []
        for p in paths:
            samples.extend(load_faceset(p, plain_face_type))
        marks = [s.name for s in samples if s.face_type_enum == FaceType.MARK_ONLY]
        if marks:
            log.warning("%s: skipped %d mark_only faces (no crop to train on; DFL cannot use them either): %s%s",
                        self.label, len(marks), ", ".join(marks[:5]), " ..." if len(marks) > 5 else "")
            samples = [s for s in samples if s.face_type_enum != FaceType.MARK_ONLY]
        if not samples:
            raise DataError(f"{self.label}: no usable aligned faces (all {len(marks)} are mark_only)")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def face(self, i: int) -> FaceData:
        """Decode sample i (pixels + xseg mask). DataError when the bytes no longer decode."""
        s = self.samples[i]
        return FaceData(image=s.load_image(), landmarks=np.asarray(s.landmarks), face_type=s.face_type_enum,
                        xseg_mask=s.get_xseg_mask(), eyebrows_expand_mod=s.eyebrows_expand_mod, name=s.name)

    def image(self, i: int) -> np.ndarray:
        """Decode only sample i's pixels (BGR uint8), for the colour-transfer reference."""
        return self.samples[i].load_image()

    def yaws(self) -> np.ndarray:
        """DFL's estimate_pitch_yaw_roll(landmarks, size=width)[1] per sample (§6.6); NaN where it fails."""
        out = np.empty(len(self.samples))
        for i, s in enumerate(self.samples):
            try:
                out[i] = s.pitch_yaw_roll()[1]
            except DataError:
                out[i] = np.nan
        return out

    def face_types(self) -> set[FaceType]:
        return {s.face_type_enum for s in self.samples}


# ---------------------------------------------------------------------------------------------------------
# Batch plans


@attrs.frozen
class BatchPlan:
    """Which samples batch `step` uses: src/dst indices, their 32-bit sample keys (engine.data.sample.
    sample_rngs), and the ct dst index of each src sample (None when ct is off)."""

    step: int
    src: tuple[int, ...]
    src_keys: tuple[int, ...]
    dst: tuple[int, ...]
    dst_keys: tuple[int, ...]
    ct: tuple[int, ...] | None = None

    def shard(self, rank: int, world_size: int) -> BatchPlan:
        """Rank `rank`'s contiguous slice of the global batch (DDP): the global stream is the same for any
        world size."""
        if world_size == 1:
            return self
        n = len(self.src)
        if n % world_size:
            raise DataError(f"batch size {n} is not divisible by the {world_size} DDP ranks")
        a, b = rank * n // world_size, (rank + 1) * n // world_size
        return BatchPlan(self.step, self.src[a:b], self.src_keys[a:b], self.dst[a:b], self.dst_keys[a:b],
                         None if self.ct is None else self.ct[a:b])


class BatchPlanner:
    """The deterministic sample stream: `next_plan()` gives batch 0, 1, 2, ... for `seed`.

    src_yaws / dst_yaws: per-sample yaws to sample uniformly over yaw (DFL uniform_yaw / pretrain), or None
    for plain shuffled epochs. ct: give each src sample a dst colour reference.
    """

    def __init__(self, n_src: int, n_dst: int, batch_size: int, seed: int, *, src_yaws: np.ndarray | None = None,
                 dst_yaws: np.ndarray | None = None, ct: bool = False):
        if batch_size < 1:
            raise DataError(f"batch_size = {batch_size}: expected at least 1")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.src_index = self._index(n_src, src_yaws, _KEY_SRC, "src")
        self.dst_index = self._index(n_dst, dst_yaws, _KEY_DST, "dst")
        self.ct_index = ShuffleIndex(n_dst, self.seed, (_KEY_CT,)) if ct else None
        self.step = 0

    def _index(self, n: int, yaws: np.ndarray | None, key: int, side: str) -> ShuffleIndex | UniformYawIndex:
        if yaws is None:
            return ShuffleIndex(n, self.seed, (key,))
        if len(yaws) != n:
            raise ValueError(f"{side} yaws: {len(yaws)} values for {n} samples")
        if not np.isfinite(yaws).any():
            raise DataError(f"uniform_yaw: no {side} face has a usable pose estimate")
        return UniformYawIndex(yaws, self.seed, (key,))

    def next_plan(self) -> BatchPlan:
        b = self.batch_size
        k = self.step
        ss = np.random.SeedSequence(self.seed, spawn_key=(_KEY_SAMPLE, k))
        keys = np.random.Generator(np.random.PCG64(ss)).integers(0, 2**32, size=2 * b, dtype=np.uint64)
        src = tuple(self.src_index.next() for _ in range(b))
        ct = tuple(self.ct_index.next() for _ in range(b)) if self.ct_index is not None else None
        dst = tuple(self.dst_index.next() for _ in range(b))
        self.step += 1
        return BatchPlan(k, src, tuple(int(x) for x in keys[:b]), dst, tuple(int(x) for x in keys[b:]), ct)

    def state_dict(self) -> dict:
        """Plain ints/lists: the next batch index and every index host's (epoch, pos)."""
        return {"step": self.step, "src": self.src_index.state_dict(), "dst": self.dst_index.state_dict(),
                "ct": None if self.ct_index is None else self.ct_index.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.src_index.load_state_dict(state["src"])
        self.dst_index.load_state_dict(state["dst"])
        if self.ct_index is not None and state.get("ct") is not None:
            self.ct_index.load_state_dict(state["ct"])


# ---------------------------------------------------------------------------------------------------------
# Fast-mode cache


def _remove_cache_dir(path: str, owner_pid: int) -> None:
    # Forked workers inherit this finalizer; only the process that created the folder removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


class FaceCache:
    """Model-resolution arrays shared by all loader processes (memory-mapped files in a private temp dir).

    Per sample: status (0 empty, 1 ready, 2 undecodable), image (R, R, 3) uint8, masks (R, R, 2) uint8
    (engine.data.sample.PreparedFace) and, for dst facesets used as ct references, ct_status / ct
    (R, R, 3) uint8. Filled lazily by whichever process first needs a sample: every sample is decoded and
    converted once per run. Data is written before its status byte, so a reader that sees status 1 reads
    complete data. The folder is removed when the creating process drops the cache.
    """

    def __init__(self, n: int, resolution: int, *, with_ct: bool = False, cache_dir: str | Path | None = None):
        self.n, self.resolution, self.with_ct = int(n), int(resolution), bool(with_ct)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="torchsae-facecache-", dir=None if cache_dir is None else str(cache_dir))
        self._finalizer = weakref.finalize(self, _remove_cache_dir, self.dir, os.getpid())
        self._open("w+")

    def _open(self, mode: str) -> None:
        r, n = self.resolution, self.n

        def mm(name: str, shape: tuple[int, ...]) -> np.memmap:
            return np.memmap(os.path.join(self.dir, name), dtype=np.uint8, mode=mode, shape=shape)

        self.status = mm("status.u8", (n,))
        self.image = mm("image.u8", (n, r, r, 3))
        self.masks = mm("masks.u8", (n, r, r, 2))
        if self.with_ct:
            self.ct_status = mm("ct_status.u8", (n,))
            self.ct = mm("ct.u8", (n, r, r, 3))

    def __getstate__(self) -> dict:  # spawn-started workers reopen the same files
        return {"n": self.n, "resolution": self.resolution, "with_ct": self.with_ct, "dir": self.dir}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._finalizer = None  # a worker's copy never removes the folder
        self._open("r+")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


# ---------------------------------------------------------------------------------------------------------
# The worker-side batch maker


def _stack_nchw(arrays: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))


class SAEHDBatches(torch.utils.data.Dataset):
    """Map-style dataset keyed by BatchPlan: `batches[plan]` -> {BATCH_KEYS: NCHW float32 tensors,
    "_step": plan.step, "_bad": [(faceset, name, reason), ...] replaced this batch}.

    src_opts / dst_opts: the two generators' SampleOptions (same resolution and face type). mode: "fast"
    or "dfl" (see engine.data.sample). cache_dir: where "fast" keeps its model-resolution cache (default:
    the system temp folder; about N·R²·5 bytes per faceset, 1.6 MB per 256² face).
    """

    def __init__(self, src: Faceset, dst: Faceset, src_opts: SampleOptions, dst_opts: SampleOptions, *,
                 mode: str = "fast", cache_dir: str | Path | None = None, warp_impl: str = "auto"):
        if mode not in MODES:
            raise DataError(f"[data].pipeline = {mode!r}: expected one of {', '.join(MODES)}")
        if (src_opts.resolution, src_opts.face_type) != (dst_opts.resolution, dst_opts.face_type):
            raise ValueError("src and dst SampleOptions must share resolution and face type")
        self.src, self.dst = src, dst
        self.opts = {"src": src_opts, "dst": dst_opts}
        self.mode = mode
        self.warp_impl = warp_impl
        self._known_bad: set[tuple[str, int]] = set()  # (faceset key, index), "dfl" mode, per process
        self._caches: dict[str, FaceCache] = {}  # by faceset key (pretrain: src and dst share one)
        if mode == "fast":
            ct = src_opts.ct_mode is not None
            for fs in (src, dst):
                if self._key(fs) not in self._caches:
                    self._caches[self._key(fs)] = FaceCache(len(fs), src_opts.resolution, cache_dir=cache_dir,
                                                            with_ct=ct and fs is dst)
        for side, fs in (("src", src), ("dst", dst)):
            small = sorted(ft.long_name for ft in fs.face_types() if ft < src_opts.face_type)
            if small:
                log.warning("%s faceset %s has %s faces, narrower than the model's %s: their crops reach past the "
                            "aligned image (border replicated), as in DFL", side, fs.label, ", ".join(small),
                            src_opts.face_type.long_name)

    def _key(self, fs: Faceset) -> str:
        # Not id(): keys must survive pickling into spawn-started workers (pickle keeps src is dst).
        return "src" if fs is self.src else "dst"

    def close(self) -> None:
        for c in self._caches.values():
            c.close()

    # ------------------------------------------------------------------ substitution of undecodable samples
    def _first_usable(self, fs: Faceset, i: int, bad: list, try_load, is_bad, mark_bad):
        n = len(fs)
        for k in range(n):
            j = (i + k) % n
            if is_bad(j):
                continue
            try:
                return j, try_load(j)
            except _SAMPLE_ERRORS as e:
                mark_bad(j)
                bad.append((fs.label, fs.samples[j].name, f"{type(e).__name__}: {e}"))
        raise DataError(f"{fs.label}: none of its {n} faces can be decoded any more (files changed or removed "
                        "since the scan?)")

    def _first_known_good(self, fs: Faceset, i: int, bad: list, try_load):
        """_first_usable with this process's set of known-bad samples ("dfl" mode)."""
        key = self._key(fs)
        return self._first_usable(fs, i, bad, try_load, lambda j: (key, j) in self._known_bad,
                                  lambda j: self._known_bad.add((key, j)))[1]

    def _cached(self, fs: Faceset, i: int, opts: SampleOptions, bad: list) -> int:
        cache = self._caches[self._key(fs)]

        def fill(j: int) -> None:
            if cache.status[j] == 1:
                return
            p = prepare_face(fs.face(j), opts)
            cache.image[j] = p.image
            cache.masks[j] = p.masks
            cache.status[j] = 1  # after the data: readers that see 1 read complete arrays

        def mark(j: int) -> None:
            cache.status[j] = 2

        return self._first_usable(fs, i, bad, fill, lambda j: cache.status[j] == 2, mark)[0]

    def _cached_ct(self, i: int, bad: list) -> int:
        fs, cache = self.dst, self._caches[self._key(self.dst)]
        r = self.opts["src"].resolution

        def fill(j: int) -> None:
            if cache.ct_status[j] == 1:
                return
            cache.ct[j] = prepare_ct_ref(fs.image(j), r)
            cache.ct_status[j] = 1

        def mark(j: int) -> None:
            cache.ct_status[j] = 2

        return self._first_usable(fs, i, bad, fill, lambda j: cache.ct_status[j] == 2, mark)[0]

    # ------------------------------------------------------------------ processing
    def _side_dfl(self, side: str, idx: Sequence[int], keys: Sequence[int], ct: Sequence[int] | None,
                  bad: list) -> dict[str, torch.Tensor]:
        fs, opts = (self.src if side == "src" else self.dst), self.opts[side]
        outs = []
        for n, (i, key) in enumerate(zip(idx, keys)):
            ct_img = None
            if ct is not None and opts.ct_mode:
                ct_img = self._first_known_good(self.dst, ct[n], bad, self.dst.image)

            def make(j: int, key: int = key, ct_img: np.ndarray | None = ct_img):
                seed, ct_rng = sample_rngs(key)  # fresh per attempt: a replaced sample gets the same draws
                return process_dfl(fs.face(j), seed, opts, ct_img, ct_rng)

            outs.append(self._first_known_good(fs, i, bad, make))
        return {k: _stack_nchw([getattr(o, name) for o in outs]) for k, name in zip(_SIDE_KEYS[side], OUTPUT_NAMES)}

    def _side_fast(self, side: str, idx: Sequence[int], keys: Sequence[int], ct: Sequence[int] | None,
                   bad: list) -> dict[str, torch.Tensor]:
        fs, opts = (self.src if side == "src" else self.dst), self.opts[side]
        cache = self._caches[self._key(fs)]
        rows = [self._cached(fs, i, opts, bad) for i in idx]
        rngs = [sample_rngs(k) for k in keys]
        ct_refs = None
        if ct is not None and opts.ct_mode:
            ct_rows = [self._cached_ct(j, bad) for j in ct]
            ct_refs = self._caches[self._key(self.dst)].ct[ct_rows]
        out = process_fast_batch(cache.image[rows], cache.masks[rows], [s for s, _ in rngs], opts, ct_refs,
                                 [g for _, g in rngs], warp_impl=self.warp_impl)
        return {k: out[name] for k, name in zip(_SIDE_KEYS[side], OUTPUT_NAMES)}

    def __getitem__(self, plan: BatchPlan) -> dict:
        bad: list = []
        side = self._side_fast if self.mode == "fast" else self._side_dfl
        out = side("src", plan.src, plan.src_keys, plan.ct, bad)
        out.update(side("dst", plan.dst, plan.dst_keys, None, bad))
        out["_step"] = plan.step
        out["_bad"] = bad
        return out


# ---------------------------------------------------------------------------------------------------------
# Synthetic facesets (tests, benchmarks, smoke runs anywhere)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def synthetic_face(rng: np.random.Generator, size: int = 512, face_type: str | FaceType = "wf",
                   max_yaw_deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A drawn face: (BGR uint8 (size, size, 3), aligned landmarks float64 (68, 2)).

    DFL's mean 3D face (landmarks_68_3D) is posed (yaw ±max_yaw_deg, pitch/roll ±10°), projected, and
    aligned for `face_type` with get_transform_mat like DFL's extractor; skin, brows, eyes, nose and mouth
    are drawn from those landmarks over a random gradient background, with mild noise and blur.
    """
    pose = _rotation(np.deg2rad(rng.uniform(-max_yaw_deg, max_yaw_deg)), np.deg2rad(rng.uniform(-10, 10)),
                     np.deg2rad(rng.uniform(-10, 10)))
    pts3 = landmarks_68_3D.astype(np.float64) * rng.uniform(0.9, 1.1, size=(1, 3))
    frame = (pts3 @ pose.T)[:, :2] * 2.0 + 400.0 + rng.normal(0, 0.8, size=(68, 2))
    lm = transform_points(frame, get_transform_mat(frame, size, face_type)).astype(np.float64)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx * rng.uniform(0.2, 1) + yy * rng.uniform(0.2, 1))[..., None] / 2
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    p = lambda idx: np.round(lm[idx]).astype(np.int32)  # noqa: E731
    skin = rng.uniform([60, 90, 140], [150, 170, 230])
    hull = cv2.convexHull(np.round(lm[np.r_[0:27]]).astype(np.int32))
    cv2.fillConvexPoly(img, hull, skin.tolist(), lineType=cv2.LINE_AA)
    brow = (skin * 0.35).tolist()
    cv2.polylines(img, [p(np.r_[17:22]), p(np.r_[22:27])], False, brow, max(1, size // 64), cv2.LINE_AA)
    for eye in (np.r_[36:42], np.r_[42:48]):
        cv2.fillConvexPoly(img, cv2.convexHull(p(eye)), (235, 235, 235), cv2.LINE_AA)
        c = lm[eye].mean(0)
        cv2.circle(img, tuple(np.round(c).astype(int)), max(1, size // 80), rng.uniform(20, 120, 3).tolist(), -1, cv2.LINE_AA)
    cv2.polylines(img, [p(np.r_[27:31]), p(np.r_[31:36])], False, (skin * 0.7).tolist(), max(1, size // 128), cv2.LINE_AA)
    cv2.fillPoly(img, [p(np.r_[48:60])], rng.uniform([60, 60, 150], [110, 110, 220]).tolist(), cv2.LINE_AA)
    cv2.fillPoly(img, [p(np.r_[60:68])], (40, 30, 60), cv2.LINE_AA)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8), lm


def write_synthetic_faceset(folder: str | Path, n: int, *, size: int = 512, face_type: str | FaceType = "wf",
                            seed: int = 0, xseg_every: int = 0, max_yaw_deg: float = 30.0) -> list[Path]:
    """Write `n` synthetic DFLJPG faces (face_type, landmarks, source_filename; every `xseg_every`-th with
    a 256×256 binary XSeg mask as DFL's apply_xseg writes) into `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img, lm = synthetic_face(rng, size, face_type, max_yaw_deg)
        meta = {"face_type": face_type, "landmarks": lm, "source_filename": f"frame{i:05d}.png"}
        if xseg_every and i % xseg_every == 0:
            hull = get_image_hull_mask((256, 256), lm * (256 / size))
            meta["xseg_mask"] = (hull > 0.5).astype(np.float32)
        path = folder / f"{i:05d}_0.jpg"
        dfljpg.write(path, img, meta)
        paths.append(path)
    return paths
