"""`TrainerBase`: what every trainer the loop drives shares (SAEHD's `Trainer`, XSeg's `XSegTrainer`).

engine.train.loop.run drives any object that satisfies its `LoopTrainer` protocol. This base implements the
parts of that protocol that do not depend on the model being trained:

- `next_batch(batches)`: the loader's next batch on the device, the wait for it timed by `clock`
  (engine.train.loopstats: loader wait in the progress bar, TensorBoard and summary.json); the first batch
  also gives the fixed preview samples (`preview_samples`, per trainer);
- the non-finite guard: `finite_or_skip(losses)` counts a step whose loss or gradient is not finite (the
  update is skipped) and calls `diverged()` after `[train].max_bad_steps` in a row (SAEHD rolls back,
  XSeg stops); `count_step(losses, t0)` books a step that was applied (step counter, loss history, step time);
- checkpoints: `save()` writes one atomic unit (engine.train.checkpoint; under DDP every rank's loader
  position is gathered into it, only global rank 0 writes), `train_state()` / `load(path)` capture and
  restore step, loss history, preview samples, loader position and RNG states, with hooks for what each
  trainer adds (optimizers, phase);
- `preview_due()`, `target_reached()`.

A subclass provides the model-specific parts: `train_one`, `lr`, `preview_samples`, `preview_image`,
`preview_every`, `summary_fields`, `make_loader`, and the checkpoint hooks `_train_state`, `_check_checkpoint`,
`_load_state`, `_restore_phase`, `_load_weights_only`, `_checkpoint_extra`.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import torch

from engine.errors import CheckpointError
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp
from engine.train.loopstats import LoopClock
from engine.train.rng import rng_state, set_rng_state

__all__ = ["TrainerBase"]

log = logging.getLogger("torchsae.train")


@attrs.define(kw_only=True)
class TrainerBase(abc.ABC):
    """The state every trainer shares (module doc). `model` is the module whose weights a checkpoint holds."""

    # the loss terms of a step kept in `history` (DFL's loss_history, the preview's loss graph) and shown
    # in the progress bar
    history_keys: ClassVar[tuple[str, ...]] = ("loss",)
    progress_label: ClassVar[str | None] = None  # the progress bar's description

    recipe: Recipe
    recipe_toml: str
    run_dir: Path
    device: torch.device
    model: torch.nn.Module
    dist: ddp.DistInfo = attrs.field(factory=ddp.DistInfo)
    loader: Any = None
    step: int = 0
    pretrain: bool = False
    history: list = attrs.field(factory=list)  # one row of `history_keys` per step
    preview_batch: dict | None = None
    bad_steps: int = 0
    skipped: int = 0
    last_losses: dict = attrs.field(factory=dict)
    step_times: list = attrs.field(factory=list)  # seconds per completed step (summary, it/s)
    clock: LoopClock = attrs.field(factory=LoopClock)  # loop wall time vs loader wait
    last_saved_step: int = -1  # the same on every rank: saving is collective under DDP
    gathered_loader_state: dict | None = None  # every rank's loader position, for the checkpoint being written

    # ------------------------------------------------------------------ data
    def next_batch(self, batches: Iterator[dict]) -> dict[str, torch.Tensor]:
        """The loader's next batch, its tensors on the device; the first one also gives the preview samples."""
        self.clock.data_begin()
        batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items() if torch.is_tensor(v)}
        self.clock.data_end()
        if self.preview_batch is None:
            self.preview_batch = self.preview_samples(batch)
        return batch

    def apply_schedules(self) -> None:
        """Before each step: the schedules' values at this step (none by default)."""

    # ------------------------------------------------------------------ the non-finite guard
    def finite_or_skip(self, losses: dict[str, float], applied: bool = True) -> bool:
        """True when the step's update was applied and every loss (and grad_norm) is finite. Otherwise the
        step does not count: the bad-step streak grows and at [train].max_bad_steps `diverged()` is called."""
        if applied and all(math.isfinite(v) for v in losses.values()):
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        self.skipped += 1
        log.warning("step %d: non-finite loss or gradient (%s); update skipped (%d in a row)", self.step,
                    ", ".join(f"{k}={v:.4g}" for k, v in losses.items()), self.bad_steps)
        if self.bad_steps >= self.recipe.train.max_bad_steps:
            self.diverged()
        return False

    @abc.abstractmethod
    def diverged(self) -> None:
        """[train].max_bad_steps non-finite steps in a row (SAEHD: roll back; XSeg: stop)."""

    def count_step(self, losses: dict[str, float], t0: float) -> None:
        """Book an applied, finite step that started at perf_counter() `t0`."""
        self.history.append([losses.get(k, float("nan")) for k in self.history_keys])
        self.step += 1
        self.step_times.append(time.perf_counter() - t0)
        self.last_losses = losses

    # ------------------------------------------------------------------ what the loop asks
    def target_reached(self) -> bool:
        target = self.recipe.train.target_iter
        return bool(target) and self.step >= target

    def preview_due(self) -> bool:
        return self.step > 0 and self.step % self.preview_every() == 0

    @abc.abstractmethod
    def preview_every(self) -> int:
        """Steps between previews."""

    @abc.abstractmethod
    def preview_samples(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The fixed preview samples, taken from the first batch."""

    # ------------------------------------------------------------------ checkpoints
    def train_state(self) -> dict[str, Any]:
        """Everything that decides the next step (weights aside): the shared part, then `_train_state()`."""
        st: dict[str, Any] = {
            "step": self.step,
            "history": torch.tensor(self.history, dtype=torch.float64) if self.history
            else torch.zeros(0, len(self.history_keys), dtype=torch.float64),
            "rng": rng_state(),
            "pretrain": self.pretrain,
        }
        if self.loader is not None:
            st["loader"] = self.gathered_loader_state or self.loader.state_dict()
        if self.preview_batch is not None:
            st["preview"] = {k: v.cpu() for k, v in self.preview_batch.items()}
        st.update(self._train_state())
        return st

    def _train_state(self) -> dict[str, Any]:
        return {}

    def _checkpoint_extra(self) -> dict[str, Any] | None:
        """Extra entries of the checkpoint's model payload."""
        return None

    def save(self) -> Path | None:
        """A checkpoint of this step, written by global rank 0 (None elsewhere). Every rank calls it: the
        loader positions of all ranks (each reads its own faceset shard) are gathered into it."""
        self.last_saved_step = self.step
        if self.loader is not None and self.dist.enabled:
            ranks = ddp.gather_objects(self.loader.state_dict(), self.dist)
            self.gathered_loader_state = {"world": self.dist.world, "ranks": ranks}
        try:
            if not self.dist.is_main:
                return None
            p = ck.save(self.run_dir, step=self.step, model=self.model, recipe_toml=self.recipe_toml,
                        train_state=self.train_state(), keep_last=self.recipe.train.keep_last,
                        pretrain=self.pretrain, extra=self._checkpoint_extra())
        finally:
            self.gathered_loader_state = None
        log.info("saved %s", p)
        return p

    def load(self, path: str | Path, *, weights_only_model: bool = False) -> None:
        """Resume from a checkpoint (file, step folder, or run folder: its newest checkpoint that verifies,
        `ck.load`, model and train state from the same one). Without train_state.pt: `_load_weights_only`."""
        loaded = ck.load(path, train_state=not weights_only_model)
        payload, state, path = loaded.payload, loaded.state, loaded.path
        self._check_checkpoint(payload["recipe_toml"], path)
        self.model.load_state_dict(payload["model"])
        if state is None:
            self._load_weights_only(payload, path)
            return
        self._load_state(state, path)
        self.step = int(state["step"])
        self.history = state["history"].reshape(-1, len(self.history_keys)).tolist()
        if "preview" in state:
            self.preview_batch = {k: v.to(self.device) for k, v in state["preview"].items()}
        same_stream = self._restore_phase(state)
        if same_stream and self.loader is not None and "loader" in state:
            self.loader.load_state_dict(self._this_rank_loader_state(state["loader"], path))
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def _check_checkpoint(self, recipe_toml: str, path: Path) -> None:
        """Refuse a checkpoint of another network (CheckpointError naming the differing keys)."""

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        """The trainer's own entries of train_state (optimizers, ...), before step and history are set."""

    def _restore_phase(self, state: dict[str, Any]) -> bool:
        """The training phase (pretrain or not) after the shared state is restored and before the loader's
        position is; False when the saved sample stream does not apply to this phase's loader."""
        return True

    def _load_weights_only(self, payload: dict[str, Any], path: Path) -> None:
        raise CheckpointError(f"{path}: no train_state.pt beside the weights; cannot resume from it")

    def _this_rank_loader_state(self, saved: Any, path: str | Path) -> Any:
        """This rank's entry of a checkpoint's loader state ({"world": W, "ranks": [...]} under DDP)."""
        if not (isinstance(saved, dict) and "ranks" in saved):
            if self.dist.enabled:
                log.warning("%s: loader state of a single-process run; each of the %d ranks starts its own "
                            "sample stream", path, self.dist.world)
                return self.loader.state_dict()
            return saved
        if int(saved["world"]) != self.dist.world:
            if self.dist.is_main:
                log.warning("%s: saved by %s ranks, resumed by %d: the faceset shards differ, every rank starts "
                            "its own sample stream afresh", path, saved["world"], self.dist.world)
            return self.loader.state_dict()
        return saved["ranks"][self.dist.rank]
