"""What `[data].pipeline = "auto"` and `[data].workers = "auto"` mean on this machine (logged with the reason).

pipeline "auto":
- training on CUDA -> "device": loader processes only decode and gather uint8 faces; every pixel of the
  augmentation runs batched on the GPU (engine.data.device).
- training on CPU -> "device" as well: the same batched torch augmentation runs in the training process
  between steps, where it uses the cores the step has just released; "fast" would run the same work in
  loader processes that compete with the step's threads for the cores (bench suite "pipeline" compares
  both on the df-ud 128 batch-4 loop).

workers "auto" = the cores this process may use (os.sched_getaffinity, i.e. taskset/cgroup cpusets),
shared among the torchrun processes of this node (LOCAL_WORLD_SIZE), minus one for the training process,
at most WORKERS_CAP (past that, decode throughput exceeds any single GPU's appetite and each worker only
adds memory). With the device pipeline a worker's steady-state job is small (gather cached rows, draw
~100 numbers per sample), so workers matter mostly for the first epoch's decoding.
On CPU training with 2 or fewer cores per process: 0 (in process). The step's OpenMP threads occupy
every core; a worker process then runs only by preempting one of them, and each preemption stalls the
whole parallel region (issue #12: the df-ud 128 loop ran 1.09x the fixed-batch step with 2 workers); in
process, the data work costs exactly its own time: ~10 ms per df-ud 128 batch-4 step once every face is
in the cache, which an in-process loader fills before the first step with all cores (engine.data.prefill).
"""

from __future__ import annotations

import os

import torch

from engine.errors import DataError

__all__ = ["resolve_pipeline", "resolve_workers", "usable_cores", "WORKERS_CAP"]

WORKERS_CAP = 12


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask; os.cpu_count() where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_pipeline(value: str, device: torch.device) -> tuple[str, str]:
    """[data].pipeline -> (pipeline, why)."""
    if value != "auto":
        return value, "requested"
    if device.type == "cuda":
        return "device", "auto: training on CUDA, augmentation on the GPU"
    return "device", f"auto: training on {device.type}, batched augmentation in the training process"


def resolve_workers(value: int | str, device: torch.device, pipeline: str = "device") -> tuple[int, str]:
    """[data].workers -> (worker processes, why)."""
    if value != "auto":
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise DataError(f"[data].workers = {value!r}: expected 'auto' or an integer >= 0") from None
        if n < 0:
            raise DataError(f"[data].workers = {n}: expected 'auto' or an integer >= 0")
        return n, "requested"
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    per_rank = max(1, cores // local)
    where = f"{cores} usable cores" + (f" / {local} processes on this node" if local > 1 else "")
    if device.type != "cuda" and per_rank <= 2:
        return 0, f"auto: {where}, training on {device.type}: a worker would preempt the step's threads"
    n = max(0, min(WORKERS_CAP, per_rank - 1))
    return n, f"auto: {where}, minus one for the training process" + (f", capped at {WORKERS_CAP}" if n == WORKERS_CAP else "")
