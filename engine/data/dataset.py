"""SAEHD training batches: the deterministic batch plan and the worker-side batch maker (docs/dfl.md §5.1).

Data flow (engine.data.loader drives it):

    BatchPlanner (main process)  --BatchPlan-->  SAEHDBatches[plan] (worker)  -->  dict of NCHW tensors

- `Faceset` (engine.faces.faceset): the usable faces of the src / dst folders or packs, decoded on demand.
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

from engine.data.sample import (
    OUTPUT_NAMES,
    SampleOptions,
    prepare_ct_ref,
    prepare_face,
    process_dfl,
    process_fast_batch,
    sample_rngs,
)
from engine.data.yaw import ShuffleIndex, UniformYawIndex
from engine.errors import DataError
from engine.faces.faceset import Faceset

__all__ = [
    "BATCH_KEYS",
    "MODES",
    "BatchPlan",
    "BatchPlanner",
    "FaceCache",
    "SAEHDBatches",
    "first_usable",
]

log = logging.getLogger("torchsae.data")

MODES = ("device", "fast", "dfl")  # [data].pipeline values ("auto" is resolved by engine.data.loader)
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


CACHE_PREFIX = "torchsae-facecache-"


def _remove_cache_dir(path: str, owner_pid: int) -> None:
    # Forked workers inherit this finalizer; only the process that created the folder removes it.
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_caches(root: str | Path) -> list[Path]:
    """Remove the cache folders of runs that died without cleaning up (kill -9, power loss): a folder is
    named `torchsae-facecache-<pid>-*` by the process that owns it and is stale once that process is gone.
    A killed run at res 256 leaves ~1.6 MB per face behind, so without this every crash leaks gigabytes."""
    removed = []
    for d in Path(root).glob(CACHE_PREFIX + "*"):
        pid = d.name[len(CACHE_PREFIX):].split("-", 1)[0]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    if removed:
        log.info("removed %d face cache folder(s) left by runs that no longer exist under %s", len(removed), root)
    return removed


class FaceCache:
    """Model-resolution arrays shared by all loader processes (memory-mapped files in a private temp dir).

    Per sample: status (0 empty, 1 ready, 2 undecodable), image (R, R, 3) uint8, masks (R, R, mask_channels)
    uint8 (SAEHD: FULL_FACE and EYES_MOUTH, engine.data.sample.PreparedFace; XSeg: its label) and, for dst
    facesets used as ct references, ct_status / ct
    (R, R, 3) uint8. Filled lazily by whichever process first needs a sample: every sample is decoded and
    converted once per run. Data is written before its status byte, so a reader that sees status 1 reads
    complete data. The folder is removed when the creating process drops the cache, and by the next cache
    created in the same place if that process died first (`remove_stale_caches`).
    """

    def __init__(self, n: int, resolution: int, *, with_ct: bool = False, cache_dir: str | Path | None = None,
                 mask_channels: int = 2):
        self.n, self.resolution, self.with_ct = int(n), int(resolution), bool(with_ct)
        self.mask_channels = int(mask_channels)
        root = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_caches(root)
        self.dir = tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-", dir=str(root))
        self._finalizer = weakref.finalize(self, _remove_cache_dir, self.dir, os.getpid())
        self._open("w+")

    def _open(self, mode: str) -> None:
        r, n = self.resolution, self.n

        def mm(name: str, shape: tuple[int, ...]) -> np.memmap:
            return np.memmap(os.path.join(self.dir, name), dtype=np.uint8, mode=mode, shape=shape)

        self.status = mm("status.u8", (n,))
        self.image = mm("image.u8", (n, r, r, 3))
        self.masks = mm("masks.u8", (n, r, r, self.mask_channels))
        if self.with_ct:
            self.ct_status = mm("ct_status.u8", (n,))
            self.ct = mm("ct.u8", (n, r, r, 3))

    def __getstate__(self) -> dict:  # spawn-started workers reopen the same files
        return {"n": self.n, "resolution": self.resolution, "with_ct": self.with_ct, "dir": self.dir,
                "mask_channels": self.mask_channels}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._finalizer = None  # a worker's copy never removes the folder
        self._open("r+")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


def first_usable(n: int, i: int, bad: list, try_load, is_bad, mark_bad, label: str, name_of):
    """The first of samples i, i+1, ... (mod n) that is not known bad and whose `try_load(j)` succeeds:
    (j, its result). Each failure is marked (`mark_bad(j)`) and reported into `bad` as (label, name, why);
    DataError naming `label` when none of the n loads."""
    for k in range(n):
        j = (i + k) % n
        if is_bad(j):
            continue
        try:
            return j, try_load(j)
        except _SAMPLE_ERRORS as e:
            mark_bad(j)
            bad.append((label, name_of(j), f"{type(e).__name__}: {e}"))
    raise DataError(f"{label}: none of its {n} faces can be decoded any more (files changed or removed "
                    "since the scan?)")


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
        if mode in ("fast", "device"):  # both keep the model-resolution cache (device: engine.data.device)
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
        return first_usable(len(fs), i, bad, try_load, is_bad, mark_bad, fs.label, lambda j: fs.samples[j].name)

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
        if self.mode == "device":
            raise DataError("SAEHDBatches: pipeline 'device' batches are made by engine.data.device.DeviceBatches")
        side = self._side_fast if self.mode == "fast" else self._side_dfl
        out = side("src", plan.src, plan.src_keys, plan.ct, bad)
        out.update(side("dst", plan.dst, plan.dst_keys, None, bad))
        out["_step"] = plan.step
        out["_bad"] = bad
        return out
