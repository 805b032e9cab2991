"""What a training run reports, rank 0 only: the progress bar, TensorBoard (every loss term, lr, grad
norm, it/s, loader wait, previews), preview PNGs under logs/previews/, and summary.json at the end.

    with TrainLog(run_dir, enabled=dist.is_main, progress=True, total=target, initial=step) as tlog:
        tlog.step(step, losses, lr=..., step_s=...)
        tlog.preview(step, image)
        tlog.summary({...})
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from engine.fileio import write_atomic

__all__ = ["TrainLog", "WARMUP_STEPS", "median_step_time", "prune_previews"]

WARMUP_STEPS = 3  # steps excluded from the median step time (compilation, allocator warm-up)


def median_step_time(step_times: list[float]) -> float | None:
    """Median seconds per step after the warm-up steps (all steps when there are no more)."""
    times = step_times[WARMUP_STEPS:] or step_times
    return statistics.median(times) if times else None


class TrainLog:
    """The run's outputs; a no-op on ranks other than 0 (`enabled` False)."""

    def __init__(self, run_dir: Path, *, enabled: bool, progress: bool, total: int, initial: int, log_every: int,
                 keep_previews: int = 0, bar_losses: tuple[str, ...] = ("src_loss", "dst_loss"),
                 desc: str | None = None):
        self.run_dir, self.enabled, self.log_every = Path(run_dir), enabled, log_every
        self.keep_previews, self.bar_losses = keep_previews, tuple(bar_losses)
        self.writer: SummaryWriter | None = None
        self.bar: tqdm | None = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.run_dir / "logs"))
            if progress:
                self.bar = tqdm(total=total or None, initial=initial, unit="it", dynamic_ncols=True, desc=desc)

    def __enter__(self) -> TrainLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close_bar()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def step(self, step: int, losses: dict[str, float], *, lr: float, step_s: float | None,
             wait_pct: float | None = None, wait_s: float | None = None) -> None:
        """After a training step: the bar shows the step, the `bar_losses` (SAEHD: src/dst loss) and `data=N%`
        (the share of recent wall time the loop waited for batches, engine.train.loopstats); every `log_every`
        steps the scalars go to TensorBoard (loss/<term>, grad_norm, lr, it_per_s, loader/wait_pct,
        loader/wait_s)."""
        if self.bar is not None:
            self.bar.n = step
            post = {k: f"{v:.4f}" for k, v in losses.items() if k in self.bar_losses}
            if wait_pct is not None:
                post["data"] = f"{wait_pct:.0f}%"
            self.bar.set_postfix(post)
            self.bar.refresh()
        if self.writer is None or step % self.log_every or step_s is None:
            return
        for k, v in losses.items():
            self.writer.add_scalar(f"loss/{k}" if k != "grad_norm" else "grad_norm", v, step)
        self.writer.add_scalar("lr", lr, step)
        self.writer.add_scalar("it_per_s", 1.0 / max(1e-9, step_s), step)
        if wait_pct is not None:
            self.writer.add_scalar("loader/wait_pct", wait_pct, step)
        if wait_s is not None:
            self.writer.add_scalar("loader/wait_s", wait_s, step)

    def preview(self, step: int, image: np.ndarray) -> Path | None:
        """Write a preview (uint8 BGR) as logs/previews/step_XXXXXX.png (atomically; only the newest
        `keep_previews` are kept when it is > 0, all of them otherwise, as DFL keeps its preview history) and
        to TensorBoard."""
        if not self.enabled:
            return None
        path = self.run_dir / "logs" / "previews" / f"step_{step:06d}.png"
        ok, png = cv2.imencode(".png", image)
        if ok:
            write_atomic(path, png.tobytes())
        prune_previews(path.parent, self.keep_previews)
        if self.writer is not None:
            self.writer.add_image("preview", image[..., ::-1].copy(), step, dataformats="HWC")
        return path

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json (atomically) and return the summary."""
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2), durable=True)
        return summary


def prune_previews(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` preview images (step_*.png) in `folder`; keep = 0 keeps every one
    (DFL keeps its whole preview history). Returns the deleted paths."""
    if keep <= 0:
        return []
    old = sorted(Path(folder).glob("step_*.png"))[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old
