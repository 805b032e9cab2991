"""Where and how a training run computes: the device ([train].device, with the DDP rank's GPU under
torchrun) and the process settings it needs while it runs ([train].threads, flush-to-zero,
[train].deterministic), applied by `process_settings` for the run and undone afterwards.

    with process_settings(recipe.train):
        device, dist = place(recipe.train)
        ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from engine.errors import TorchSAEError
from engine.recipe.specs import TrainSpec
from engine.train import distributed as ddp

__all__ = ["pick_device", "place", "process_settings"]

log = logging.getLogger("torchsae.train")

_flush_depth = 0  # nested process_settings (a run inside a benchmark's) keep flushing until the outermost ends


def pick_device(spec: str) -> torch.device:
    """[train].device: 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda' (an error without CUDA)."""
    if spec == "cuda" and not torch.cuda.is_available():
        raise TorchSAEError("[train].device = 'cuda' but no CUDA device is available (valid here: cpu, auto)")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def place(train: TrainSpec, device: str | None = None) -> tuple[torch.device, ddp.DistInfo]:
    """The run's device (`device` overrides [train].device) and DDP rank (engine.train.distributed.setup
    under torchrun; each rank takes its LOCAL_RANK GPU). The global batch must split evenly over ranks."""
    dev = pick_device(device or train.device)
    info = ddp.setup(dev.type)
    if info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", info.local_rank)
    if train.batch_size % info.world:
        raise TorchSAEError(f"[train].batch_size = {train.batch_size} is not divisible by the {info.world} DDP "
                            "ranks (the global batch is split evenly)")
    return dev, info


@contextlib.contextmanager
def process_settings(train: TrainSpec) -> Iterator[None]:
    """The process-wide settings a training run uses, restored when it ends (so a library caller, or the
    next test in the same process, finds torch as it was):

    - flush denormals to zero, as TensorFlow does on its CPU threads (so DFL did too): AdaBelief's and
      RMSprop's second moments of small gradients fall into the denormal range, where x86 arithmetic is
      about ten times slower;
    - [train].threads intra-op threads when set: OpenMP's spin-waiting makes every parallel region wait for
      a descheduled thread when another process holds a core;
    - [train].deterministic: deterministic algorithms (warn-only) and no cuDNN autotuning.
    """
    global _flush_depth
    saved_threads = torch.get_num_threads()
    saved_det = torch.are_deterministic_algorithms_enabled()
    saved_det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    saved_benchmark = torch.backends.cudnn.benchmark
    # torch has no getter for flush-to-zero: it goes back to torch's default (off) when the outermost
    # run ends. set_flush_denormal returns False where the CPU cannot flush at all.
    torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        if train.threads:
            torch.set_num_threads(train.threads)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        yield
    finally:
        _flush_depth -= 1
        if _flush_depth == 0:
            torch.set_flush_denormal(False)
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_det, warn_only=saved_det_warn)
        torch.backends.cudnn.benchmark = saved_benchmark
