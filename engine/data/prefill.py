"""Decode every face into the model-resolution cache before the first step, with all usable cores.

Used when the loader runs in the training process (`[data].workers` = 0, what "auto" picks for CPU
training on a 2-core machine): there, a face decoded on first use would cost its JPEG decode and
face-type conversion inside the loop, serially, for the whole first epoch (tens of ms per 512² face, 8
faces per df-ud 128 batch-4 step; `make bench SUITE=pipeline` measures decode + prepare faces/s). Decoding them all up front, in parallel and before the step's threads start,
costs the same CPU time once and leaves every step in the steady state (gather cached rows, augment).
With loader workers the cache fills lazily in the workers instead, overlapped with training.

The pipelines' own fill routine (SAEHDBatches._cached / _cached_ct) does the work, so undecodable faces
are marked and replaced exactly as they would be on first use, and reported once.
"""

from __future__ import annotations

import logging
import multiprocessing
import time

import cv2

from engine.data.dataset import SAEHDBatches

__all__ = ["prefill_cache", "INLINE_BELOW"]

log = logging.getLogger("torchsae.data")

INLINE_BELOW = 64  # fewer faces than this: decode in this process (a pool costs more than it saves)
_BATCHES: SAEHDBatches | None = None  # the pool workers' batches (inherited by fork, or set by the initializer)


def _tasks(batches: SAEHDBatches) -> list[tuple[str, int]]:
    out = [("src", i) for i in range(len(batches.src))]
    if batches.dst is not batches.src:
        out += [("dst", i) for i in range(len(batches.dst))]
    if batches.opts["src"].ct_mode:
        out += [("ct", i) for i in range(len(batches.dst))]
    return out


def _fill(tasks: list[tuple[str, int]]) -> list:
    b = _BATCHES
    bad: list = []
    for kind, i in tasks:
        if kind == "ct":
            b._cached_ct(i, bad)
        else:
            fs = b.src if kind == "src" else b.dst
            b._cached(fs, i, b.opts[kind], bad)
    return bad


def _init(batches: SAEHDBatches) -> None:
    global _BATCHES
    _BATCHES = batches
    cv2.setNumThreads(1)  # spawned workers: the pool's processes are the parallelism


def prefill_cache(batches: SAEHDBatches, processes: int) -> list:
    """Fill `batches`' caches (every src, dst and ct-reference face); returns the undecodable faces as
    (faceset, name, reason) tuples, as a batch's "_bad" list."""
    global _BATCHES
    tasks = _tasks(batches)
    t0 = time.perf_counter()
    if processes <= 1 or len(tasks) < INLINE_BELOW:
        _BATCHES = batches
        try:
            bad = _fill(tasks)
        finally:
            _BATCHES = None
        return bad
    chunks = [tasks[k::processes * 4] for k in range(processes * 4)]
    method = multiprocessing.get_start_method()
    # OpenCV's thread pool is not fork-safe (engine.data.loader): fork while OpenCV is single-threaded
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    _BATCHES = batches
    try:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(processes, initializer=None if method == "fork" else _init,
                      initargs=() if method == "fork" else (batches,)) as pool:
            bad = [x for part in pool.map(_fill, chunks) for x in part]
    finally:
        _BATCHES = None
        cv2.setNumThreads(threads)
    log.info("data: decoded %d faces into the cache in %.1f s with %d processes (the loader runs in the "
             "training process: steps only gather cached faces)", len(tasks), time.perf_counter() - t0, processes)
    return bad
