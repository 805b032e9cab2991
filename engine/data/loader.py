"""The SAEHD batch loader: worker processes, pinned memory, deterministic and resumable (docs/dfl.md §5.1).

    loader = build_loader(data_spec, resolution=128, face_type="f", batch_size=8, seed=0)
    batch = next(loader)            # {"warped_src": (B, 3, R, R), ..., "target_dstm_em": (B, 1, R, R)}
    ckpt["loader"] = loader.state_dict()
    ...
    loader.load_state_dict(ckpt["loader"])   # the next batch is the one that followed the checkpoint

How it differs from DFL's generators (same distribution, different machinery):
- DFL runs `cpu_count // 2` generator processes per side that draw indices and seeds from unseeded
  global RNGs, so its stream cannot be replayed. Here the main process plans every batch
  (engine.data.dataset.BatchPlanner: indices, per-sample keys, ct partners) from `seed`, and worker
  processes (torch DataLoader) only execute plans. Workers hold no RNG state, so the checkpointed state is
  the planner's: the next batch index and each index host's (epoch, position) — plain ints and lists.
- DFL's src and dst generators are separate pools; here one worker makes both halves of a batch.
- `state_dict()` describes the last batch *returned*, not the prefetched ones, so a resume continues
  exactly where training consumed, whatever the worker count.
- DDP (build_loader's `rank`, `world_size`): each rank reads its own strided shard of every faceset and
  plans its batch_size/W samples with its own stream (engine.data.shard). FaceLoader itself can also
  slice one global plan per rank (its `rank`, `world_size`), for callers that want a stream independent
  of the world size.

Undecodable samples found while loading (see engine.data.dataset) are reported as one warning listing
the count and the first names, repeated only when the count doubles.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import cv2
import torch

from engine.data import holdout
from engine.data.auto import resolve_pipeline, resolve_workers, usable_cores
from engine.data.dataset import MODES, BatchPlanner, SAEHDBatches
from engine.data.device import DeviceAugment, DeviceBatches, DeviceLoader
from engine.data.prefill import prefill_cache
from engine.data.shard import shard_faceset, shard_seed
from engine.data.sample import SampleOptions
from engine.errors import CheckpointError, DataError
from engine.faces.faceset import Faceset, warn_small_faces

__all__ = ["FaceLoader", "build_loader", "STATE_VERSION"]

log = logging.getLogger("torchsae.data")

STATE_VERSION = 1
_WARN_NAMES = 5


class _PlanStream(torch.utils.data.Sampler):
    """DataLoader sampler yielding this rank's BatchPlans forever; remembers the planner state after each
    plan (by step) so the loader can report the state of the batch it actually returned."""

    def __init__(self, planner: BatchPlanner, rank: int, world_size: int):
        self.planner = planner
        self.rank, self.world_size = rank, world_size
        self.states: dict[int, dict] = {}

    def __iter__(self):
        while True:
            plan = self.planner.next_plan()
            self.states[plan.step] = self.planner.state_dict()
            yield plan.shard(self.rank, self.world_size)


def _identity(x: Any) -> Any:
    return x


def _worker_init(_worker_id: int) -> None:
    # Spawned workers (fresh processes): one OpenCV thread each, the workers already use the cores (torch
    # is set to 1 thread by DataLoader). Never called in forked workers, see FaceLoader._start.
    cv2.setNumThreads(1)


class FaceLoader:
    """Endless iterator of SAEHD batches (dicts of NCHW float32 tensors keyed by BATCH_KEYS).

    batches: the worker-side SAEHDBatches; planner: the sample stream (its current state is the start).
    workers: DataLoader worker processes (0 = in this process); pin_memory: default True when CUDA is
    available; prefetch_factor: batches in flight per worker.
    """

    def __init__(self, batches: SAEHDBatches, planner: BatchPlanner, *, workers: int = 2,
                 pin_memory: bool | None = None, prefetch_factor: int = 2, rank: int = 0, world_size: int = 1,
                 multiprocessing_context: str | None = None):
        if workers < 0:
            raise DataError(f"[data].workers = {workers}: expected 0 or more")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if planner.batch_size % world_size:
            raise DataError(f"batch size {planner.batch_size} is not divisible by the {world_size} DDP ranks")
        self.batches = batches
        self.workers = int(workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.prefetch_factor = int(prefetch_factor)
        self.rank, self.world_size = int(rank), int(world_size)
        self.multiprocessing_context = multiprocessing_context
        self._planner = planner
        self._state = planner.state_dict()  # state after the last batch returned
        self._it = None
        self._stream: _PlanStream | None = None
        self._bad: dict[str, str] = {}
        self._bad_warned_at = 0
        self.held_out = None  # engine.data.holdout.HeldOut: the faces kept out of training (build_loader)

    # ------------------------------------------------------------------ iteration
    def _start(self) -> None:
        planner = copy.deepcopy(self._planner)
        planner.load_state_dict(self._state)
        self._stream = _PlanStream(planner, self.rank, self.world_size)
        method = self.multiprocessing_context or torch.multiprocessing.get_start_method()
        forked = self.workers > 0 and method == "fork"
        dl = torch.utils.data.DataLoader(
            self.batches, batch_size=None, sampler=self._stream, num_workers=self.workers,
            collate_fn=_identity, pin_memory=self.pin_memory,
            worker_init_fn=_worker_init if self.workers and not forked else None,
            prefetch_factor=self.prefetch_factor if self.workers else None,
            multiprocessing_context=self.multiprocessing_context if self.workers else None,
        )
        if not forked:
            self._it = iter(dl)
            return
        # OpenCV's thread pool is not fork-safe: a forked child that touches it (cv2.setNumThreads, or any
        # parallel cv2 call) can wait forever on a condition variable whose waiters were the parent's
        # pool threads. Workers forked while OpenCV is single-threaded inherit numThreads = 1 and run
        # every cv2 call inline, never touching the pool; the parent gets its setting back right after.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self._it = iter(dl)  # forks the workers
        finally:
            cv2.setNumThreads(threads)

    def __iter__(self) -> FaceLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self._it is None:
            self._start()
        batch = next(self._it)
        step = batch.pop("_step")
        bad = batch.pop("_bad")
        self._state = self._stream.states.pop(step)
        for old in [s for s in self._stream.states if s < step]:
            del self._stream.states[old]
        if bad:
            self._report_bad(bad)
        return batch

    def _report_bad(self, bad: list) -> None:
        for label, name, why in bad:
            self._bad.setdefault(f"{label}/{name}", why)
        n = len(self._bad)
        if n >= max(1, 2 * self._bad_warned_at):
            self._bad_warned_at = n
            items = list(self._bad.items())
            head = "; ".join(f"{k}: {v}" for k, v in items[:_WARN_NAMES])
            more = f"; and {n - _WARN_NAMES} more" if n > _WARN_NAMES else ""
            log.warning("%d face(s) could not be decoded while training and were replaced by the next usable face "
                        "(%s%s)", n, head, more)

    def describe(self) -> dict:
        """{"pipeline", "workers"}: how this loader makes batches (summary.json, benchmarks)."""
        return {"pipeline": self.batches.mode, "workers": self.workers}

    # ------------------------------------------------------------------ resumable state
    def state_dict(self) -> dict:
        """{"version", "seed", "batch_size", "planner": {...}}: ints and lists only (JSON-able)."""
        return {"version": STATE_VERSION, "seed": self._planner.seed, "batch_size": self._planner.batch_size,
                "planner": copy.deepcopy(self._state)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the stream after the batch `state` was taken at. Prefetched batches are dropped."""
        try:
            version, planner_state = int(state["version"]), state["planner"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"loader state: expected a dict with 'version' and 'planner', got {state!r:.200}") from None
        if version != STATE_VERSION:
            raise CheckpointError(f"loader state version {version}: this TorchSAE reads version {STATE_VERSION}")
        if int(state.get("seed", self._planner.seed)) != self._planner.seed or \
                int(state.get("batch_size", self._planner.batch_size)) != self._planner.batch_size:
            log.warning("loader state was saved with seed %s / batch size %s, now %s / %s: the sample stream "
                        "continues from the saved position but is not the one the checkpoint saw",
                        state.get("seed"), state.get("batch_size"), self._planner.seed, self._planner.batch_size)
        probe = copy.deepcopy(self._planner)
        try:
            probe.load_state_dict(planner_state)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"loader state: malformed sampler state ({type(e).__name__}: {e})") from None
        self._state = probe.state_dict()
        self._close_iter()

    # ------------------------------------------------------------------ lifetime
    def _close_iter(self) -> None:
        self._it = None  # DataLoader's iterator shuts its workers down when dropped
        self._stream = None

    def close(self) -> None:
        self._close_iter()
        self.batches.close()

    def __enter__(self) -> FaceLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def build_loader(data: Any, *, resolution: int, face_type: str, batch_size: int, seed: int, pretrain: bool = False,
                 workers: int | str | None = None, mode: str | None = None, pin_memory: bool | None = None,
                 cache_dir: str | Path | None = None, rank: int = 0, world_size: int = 1,
                 warp_impl: str = "auto", device: torch.device | str | None = None):
    """A loader for SAEHD from a [data] spec (engine.recipe.specs.DataSpec) and the model's R / face type.

    Normal: src = data.src, dst = data.dst; src options random_src_flip, random_hsv_power, ct_mode (ct
    partners from dst); dst options random_dst_flip; uniform yaw on both generators when data.uniform_yaw
    (DFL passes `uniform_yaw or pretrain` to both). Pretrain (§5.5, §11.6): both sides read
    data.pretrain_faceset with no warp, flips on, no HSV, no ct, uniform yaw. workers / mode default to
    data.workers / data.pipeline ("auto" values are resolved for `device` by engine.data.auto and
    logged). warp_impl: the random warp's implementation (kernels.warp; the recipe's [compile].kernels).
    device: the training device (default CPU). Pipeline "device" returns a DeviceLoader whose batches
    are on `device`; "fast" and "dfl" return a FaceLoader of CPU batches.
    """
    dev = torch.device(device if device is not None else "cpu")
    mode, why_mode = resolve_pipeline(data.pipeline if mode is None else mode, dev)
    if mode not in MODES:
        raise DataError(f"[data].pipeline = {mode!r}: expected one of auto, {', '.join(MODES)}")
    n_workers, why_workers = resolve_workers(data.workers if workers is None else workers, dev, mode)
    if rank == 0:
        log.info("data: pipeline %s (%s), %d loader worker%s (%s)", mode, why_mode, n_workers,
                 "" if n_workers == 1 else "s", why_workers)
    src_opts = SampleOptions(resolution=resolution, face_type=face_type, random_warp=data.random_warp,
                             random_flip=data.random_src_flip, random_hsv_power=data.random_hsv_power,
                             ct_mode=data.ct_mode)
    dst_opts = SampleOptions(resolution=resolution, face_type=face_type, random_warp=data.random_warp,
                             random_flip=data.random_dst_flip)
    if batch_size % world_size:
        raise DataError(f"batch size {batch_size} is not divisible by the {world_size} DDP ranks")
    if pretrain:
        if not data.pretrain_faceset:
            raise DataError("[data].pretrain_faceset is empty: pretrain mode needs a faceset to read both sides from")
        src = dst = Faceset(data.pretrain_faceset, data.plain_face_type)
        src_opts, dst_opts = src_opts.for_pretrain(), dst_opts.for_pretrain()
        uniform_yaw = True
        held_out = None  # the pretrain faceset is never split
    else:
        src = Faceset(data.src, data.plain_face_type)
        dst = Faceset(data.dst, data.plain_face_type)
        src, dst, held_out = holdout.apply(data, src, dst)  # held-out faces never reach the planner
        uniform_yaw = bool(data.uniform_yaw)
    if rank == 0:
        for fs in ((src,) if dst is src else (src, dst)):
            warn_small_faces(fs.samples, resolution, fs.label)
    # DDP: each rank trains on its own strided shard of what is left (engine.data.shard)
    if dst is src:
        src = dst = shard_faceset(src, rank, world_size)
    else:
        src, dst = shard_faceset(src, rank, world_size), shard_faceset(dst, rank, world_size)
    src_yaws = src.yaws() if uniform_yaw else None
    dst_yaws = (src_yaws if dst is src else dst.yaws()) if uniform_yaw else None
    # DDP: this rank's shards (engine.data.shard), its share of the global batch, its own stream
    planner = BatchPlanner(len(src), len(dst), batch_size // world_size, shard_seed(seed, rank, world_size),
                           src_yaws=src_yaws, dst_yaws=dst_yaws, ct=src_opts.ct_mode is not None)
    if mode == "device":
        batches = DeviceBatches(src, dst, src_opts, dst_opts, cache_dir=cache_dir, warp_impl=warp_impl)
    else:
        batches = SAEHDBatches(src, dst, src_opts, dst_opts, mode=mode, cache_dir=cache_dir, warp_impl=warp_impl)
    pin = dev.type == "cuda" if pin_memory is None else pin_memory
    loader = FaceLoader(batches, planner, workers=n_workers, pin_memory=pin)
    loader.held_out = held_out  # engine.data.holdout.HeldOut or None; the trainer records it in checkpoints
    if n_workers == 0 and mode != "dfl":  # in process: decode everything now, in parallel (engine.data.prefill)
        bad = prefill_cache(batches, usable_cores())
        if bad:
            loader._report_bad(bad)
    if mode == "device":
        return DeviceLoader(loader, DeviceAugment(src_opts, dst_opts, warp_impl=warp_impl), dev)
    return loader
