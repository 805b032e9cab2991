"""The training loop: `train(recipe)` builds a `Trainer`, resumes it when asked, and `run`s it.

    summary = train(recipe, resume=True)      # resume=True: latest checkpoint of the run folder

One iteration is: schedules -> next batch -> guarded step -> report (progress bar, TensorBoard) ->
preview when due -> save when due. `run` drives any trainer that satisfies `LoopTrainer` (below): SAEHD's
Trainer and XSeg's (engine.xseg.train, through `run_trainer`). The pieces live beside this file:

    build.py         recipe -> Trainer (model, optimizers, discriminators, AMP/compile, the step)
    base.py          TrainerBase: what every trainer shares (batches and loader wait, the non-finite guard's
                     bookkeeping, counters, the shared checkpoint state)
    trainer.py       the SAEHD Trainer: schedules, the guarded step, rollback, its checkpoint state
    step.py          one SAEHD step in DFL's order (losses, optimizers, D steps)
    parts.py         which parameters train; freeze / init_parts; the pretrain switch's re-init
    extra_losses.py  per-identity reconstruction and latent distillation (teacher loading)
    device.py        device / DDP placement; the process settings a run scopes (threads, flush-to-zero)
    rng.py           seeding and RNG state in checkpoints
    logs.py          progress bar, TensorBoard, preview files, summary.json
    preview.py       the preview image
    checkpoint.py    atomic checkpoints, latest, keep-last-N, DFL-style backups
    distributed.py   DDP: process group, broadcast, gradient all-reduce in the optimizer step

This is the outer loop of DFL's Trainer/ModelBase (docs/dfl.md §11) done the TorchSAE way: saves are atomic units
after the first step, every N steps and/or every N minutes (DFL: 25), at the target step, on Ctrl-C and at
the end; keep-last-N; DFL-style backups; `summary.json` in the run folder at the end (steps, median s/step
after warm-up, final losses, checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from engine.errors import CheckpointError
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp
from engine.train.build import build_trainer
from engine.train.device import process_settings
from engine.train.logs import WARMUP_STEPS, TrainLog, median_step_time
from engine.train.loopstats import LoopClock

__all__ = ["LoopTrainer", "train", "run_trainer", "run", "Saves", "ctrl_c_stops"]

log = logging.getLogger("torchsae.train")


class LoopTrainer(Protocol):
    """What the loop needs from a trainer. SAEHD's `engine.train.trainer.Trainer` and XSeg's
    `engine.xseg.train.XSegTrainer` satisfy it (both on engine.train.base.TrainerBase, which implements
    the model-independent part: batches, counters, the non-finite guard's bookkeeping, checkpoints).

    Attributes: `recipe` (its [train] table drives the loop: target_iter, save_every_*, backup_every_hours,
    keep_last, keep_previews, log_every), `run_dir`, `device`, `dist` (DDP rank; only global rank 0 writes),
    `loader` (iterable, closable, `state_dict()`; `describe()` optional), `step` (completed steps),
    `step_times` (seconds per completed step), `clock` (LoopClock: loader wait), `last_losses`, `skipped`,
    `last_saved_step`, `history_keys` (the losses the progress bar shows), `progress_label`.
    """

    recipe: Recipe
    run_dir: Path
    device: torch.device
    dist: ddp.DistInfo
    loader: Any
    step: int
    step_times: list
    clock: LoopClock
    last_losses: dict
    skipped: int
    last_saved_step: int
    history_keys: tuple[str, ...]
    progress_label: str | None

    def make_loader(self) -> None: ...
    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint file, step folder or run folder (its newest verified checkpoint)."""
    def apply_schedules(self) -> None:
        """Before each step: lr, loss weights, mode switches at this step."""
    def next_batch(self, batches: Iterator[dict]) -> dict[str, torch.Tensor]:
        """The next batch on the device, the wait for it timed by `clock`."""
    def train_one(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One guarded step: its losses (and grad_norm); `step` grows only when the update was applied."""
    def lr(self) -> float: ...
    def preview_due(self) -> bool: ...
    def preview_image(self) -> np.ndarray | None:
        """The preview of the current model on the fixed samples, uint8 BGR (None: nothing to show)."""
    def target_reached(self) -> bool: ...
    def save(self) -> Path | None:
        """A checkpoint of this step (every rank calls it; global rank 0 writes and returns its path)."""
    def summary_fields(self) -> dict[str, Any]:
        """What summary.json adds for this kind of training."""


def train(r: Recipe, *, resume: bool | str | None = None, run_dir: str | Path | None = None,
          device: str | None = None, max_steps: int | None = None, progress: bool = True,
          evaluator: Any = None) -> dict[str, Any]:
    """Train `r`. resume: None/False = new run (refuses a run folder that already has checkpoints);
    True = latest checkpoint of the run folder; a path = that checkpoint (file, step folder or run folder).
    evaluator: runs [train].eval_every (engine.eval.training.TrainingEvaluator, which `torchsae train`
    attaches — engine.eval sits above engine.train, so the loop only calls `evaluator.after_step`)."""
    if r.train.eval_every and evaluator is None:
        log.warning("[train].eval_every = %d but no evaluator is attached: no evaluation in this run "
                    "(torchsae train attaches engine.eval's)", r.train.eval_every)
    with process_settings(r.train):
        t = build_trainer(r, run_dir=run_dir, device=device)
        return run_trainer(t, resume=resume, max_steps=max_steps, progress=progress, evaluator=evaluator)


def run_trainer(t: LoopTrainer, *, resume: bool | str | None = None, max_steps: int | None = None,
                progress: bool = True, evaluator: Any = None, on_new_run: Any = None) -> dict[str, Any]:
    """Start `t`'s loader, resume it (see `train`) or start a new run (`on_new_run()` then, e.g. XSeg's
    init_from), `run` it, and close the loader (and the DDP process group) whatever happens."""
    try:
        t.make_loader()
        if t.dist.is_main:
            ck.recover(t.run_dir)  # what a crash mid-save left behind
        existing = ck.resolve_latest(t.run_dir, required=False)
        if resume:
            if resume is True and existing is None:
                raise CheckpointError(f"--resume: no checkpoint in {t.run_dir / 'checkpoints'} "
                                      "(start without --resume, or pass a checkpoint path)")
            t.load(t.run_dir if resume is True else Path(resume))  # a run folder: its newest verified one
        elif existing is not None:
            raise CheckpointError(f"{t.run_dir} already holds checkpoints (latest {existing.name}); pass --resume "
                                  "to continue it, or set [train].run_dir / --run-dir to start a new run")
        elif on_new_run is not None:
            on_new_run()
        summary = run(t, max_steps=max_steps, progress=progress, evaluator=evaluator)
    finally:
        if t.loader is not None:
            t.loader.close()
        ddp.cleanup(t.dist)
    if t.dist.is_main:
        log.info("summary: %s", json.dumps(summary))
    return summary


def run(t: LoopTrainer, *, max_steps: int | None = None, progress: bool = True, evaluator: Any = None
        ) -> dict[str, Any]:
    """Train until [train].target_iter, `max_steps` steps of this run, or Ctrl-C; save; write summary.json.
    evaluator: `evaluator.after_step(t, tlog)` after every step's save (see `train`)."""
    spec = t.recipe.train
    saves = Saves(t)
    steps_this_run = 0
    with TrainLog(t.run_dir, enabled=t.dist.is_main, progress=progress, total=spec.target_iter, initial=t.step,
                  log_every=spec.log_every, keep_previews=spec.keep_previews, bar_losses=t.history_keys,
                  desc=t.progress_label) as tlog:
        with ctrl_c_stops() as stop:
            batches = iter(t.loader)
            while not (stop.requested or t.target_reached()
                       or (max_steps is not None and steps_this_run >= max_steps)):
                t.apply_schedules()
                batch = t.next_batch(batches)
                losses = t.train_one(batch)
                steps_this_run += 1
                tlog.step(t.step, losses, lr=t.lr(), step_s=t.step_times[-1] if t.step_times else None,
                          wait_pct=t.clock.wait_pct(), wait_s=t.clock.last_wait())
                if t.preview_due():
                    write_preview(t, tlog)
                saves.after_step()
                if evaluator is not None:
                    evaluator.after_step(t, tlog)
        t.clock.iteration_end()
        tlog.close_bar()
        saves.at_end()
        if t.step:
            write_preview(t, tlog)
        return tlog.summary(summary(t, steps_this_run, saves.last))


def write_preview(t: LoopTrainer, tlog: TrainLog) -> Path | None:
    """The preview of the current model on the fixed samples (rank 0)."""
    if not t.dist.is_main:
        return None
    image = t.preview_image()
    return None if image is None else tlog.preview(t.step, image)


def summary(t: LoopTrainer, steps_this_run: int, ckpt: Path | None) -> dict[str, Any]:
    return {
        "recipe": t.recipe.name,
        "kind": t.recipe.kind,
        "steps_done": steps_this_run,
        "step": t.step,
        "median_s_per_step": median_step_time(t.step_times),
        **t.clock.summary(WARMUP_STEPS),  # loop_s_per_step (wall, data included), loader wait
        "final_losses": t.last_losses,
        "checkpoint": str(ckpt) if ckpt else None,
        "skipped_steps": t.skipped,
        "device": str(t.device),
        "world_size": t.dist.world,
        **t.summary_fields(),
        **({"data": t.loader.describe()} if hasattr(t.loader, "describe") else {}),
    }


class Saves:
    """When a run saves: after its first step (DFL), every [train].save_every_steps, every
    save_every_minutes, at target_iter and at the end; DFL-style backups every backup_every_hours."""

    def __init__(self, t: LoopTrainer):
        self.t = t
        self.timer = ck.Timer(t.recipe.train.save_every_minutes * 60)
        self.backup_timer = ck.Timer(t.recipe.train.backup_every_hours * 3600)
        self.seen_step = t.step
        self.last: Path | None = None

    def after_step(self) -> None:
        t, spec = self.t, self.t.recipe.train
        reached_one = t.step == 1 and self.seen_step != 1  # DFL saves once the first step is done
        self.seen_step = t.step
        due = bool(reached_one or (spec.save_every_steps and t.step % spec.save_every_steps == 0)
                   or self.timer.due() or t.target_reached())
        if self.timer.every_s > 0:  # a wall-clock trigger may fire on one rank only: global rank 0 decides
            due = ddp.agree(due, t.dist)
        if due:
            self.last = t.save() or self.last
            ddp.barrier(t.dist)
        if t.dist.is_main and self.backup_timer.due() and self.last is not None:
            ck.backup(t.run_dir, self.last)

    def at_end(self) -> None:
        """Save the final step unless the last save was of it."""
        t = self.t
        if t.step and t.last_saved_step != t.step:  # the same decision on every rank (saving is collective)
            self.last = t.save() or self.last


class _Stop:
    requested = False


@contextlib.contextmanager
def ctrl_c_stops() -> Iterator[_Stop]:
    """While inside: the first Ctrl-C asks the loop to stop after this step (it then saves), a second one
    aborts. Outside the main thread (no signal handlers there) it only yields the flag."""
    stop = _Stop()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(_sig, _frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        log.warning("Ctrl-C: finishing this step, saving, then stopping (press again to abort)")

    with contextlib.suppress(ValueError):  # not the main thread: no handler
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, previous)
