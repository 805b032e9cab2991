"""Where the training loop's wall time goes: waiting for data vs the step (progress bar, TensorBoard, summary).

    clock = LoopClock()
    while ...:
        clock.data_begin(); batch = next(loader); clock.data_end()
        train_one(batch)                          # the step times itself (Trainer.step_times)
        clock.iteration_end()

One loop iteration runs from one `data_begin` to the next (the step, logging, previews and periodic
saves included); the loader wait is the time inside `next(loader)` (plus the host-side part of moving the
batch to the device). On CUDA the step ends with a host sync (its losses), so host wall times are GPU
times too. `wait_pct()` is the share of the last `window` iterations' wall time spent waiting for data.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from typing import Any

__all__ = ["LoopClock"]


class LoopClock:
    def __init__(self, window: int = 50):
        self.waits: list[float] = []
        self.loops: list[float] = []
        self._recent: deque[tuple[float, float]] = deque(maxlen=window)
        self._t_iter: float | None = None
        self._t_data: float | None = None
        self._wait: float = 0.0

    def data_begin(self) -> None:
        now = time.perf_counter()
        if self._t_iter is not None:  # close the previous iteration
            self._close(now)
        self._t_iter = self._t_data = now

    def data_end(self) -> None:
        if self._t_data is not None:
            self._wait = time.perf_counter() - self._t_data
            self._t_data = None

    def iteration_end(self) -> None:
        """Close the current iteration now (call when the loop stops, or to exclude what follows)."""
        if self._t_iter is not None:
            self._close(time.perf_counter())
            self._t_iter = None

    def discard(self) -> None:
        """Forget the current iteration (a step that did not count, e.g. an fp16 overflow retry)."""
        self._t_iter = self._t_data = None

    def _close(self, now: float) -> None:
        loop = now - self._t_iter
        self.loops.append(loop)
        self.waits.append(self._wait)
        self._recent.append((self._wait, loop))

    def last_wait(self) -> float:
        return self.waits[-1] if self.waits else 0.0

    def wait_pct(self) -> float:
        """Loader wait as a percentage of wall time over the recent iterations (0 before the first one)."""
        tot = sum(loop for _, loop in self._recent)
        return 100.0 * sum(w for w, _ in self._recent) / tot if tot > 0 else 0.0

    def summary(self, warmup: int) -> dict[str, Any]:
        """Medians after `warmup` iterations (all of them if there are no more): loop_s_per_step (wall per
        step, data included), loader_wait_s_per_step, and loader_wait_pct (total wait / total wall)."""
        loops = self.loops[warmup:] or self.loops
        waits = self.waits[warmup:] or self.waits
        if not loops:
            return {"loop_s_per_step": None, "loader_wait_s_per_step": None, "loader_wait_pct": None}
        return {"loop_s_per_step": statistics.median(loops), "loader_wait_s_per_step": statistics.median(waits),
                "loader_wait_pct": 100.0 * sum(waits) / sum(loops) if sum(loops) > 0 else 0.0}
