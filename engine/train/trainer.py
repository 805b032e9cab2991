"""`Trainer`: the live objects of a training run and what happens to them between steps.

Built by `engine.train.build.build_trainer(recipe)`, driven by `engine.train.loop.run` (it satisfies the
loop's `LoopTrainer` protocol; the counters, batch fetching, the non-finite guard's bookkeeping and the
shared checkpoint state are engine.train.base.TrainerBase's). It holds the model, the SAEHD step
(engine.train.step) with its optimizers and discriminators, the loader, and:

- `apply_schedules()`: before each step, lr (schedule x rollback back-off), loss-weight ramps, random warp
  off, DFL's pretrain -> normal switch (docs/dfl.md §11.6), once: `pretrain_done` is checkpointed, because the
  switch restarts the step counter that `pretrain_until` is measured in;
- `next_batch(batches)` (TrainerBase): the loader's next batch on the device (the fixed preview samples are
  taken from the first one), the wait for it timed by `clock` (engine.train.loopstats);
- `train_one(batch)`: one guarded step: a non-finite loss or gradient skips the update, `max_bad_steps`
  in a row `rollback()` to the newest checkpoint with finite weights, lr scaled by `lr_backoff`;
  `max_rollbacks` that make no progress stop the run with an error;
- `train_state()` / `load(path)` / `save()`: everything that decides the next step is checkpointed (model,
  optimizers incl. their lr-dropout RNG, scaler, step, RNG states, loader position, preview samples,
  loss history, lr back-off, pretrain phase), so on CPU N steps + resume + N steps equals 2N steps bit for
  bit.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import torch

from engine import schedules
from engine.data.train_loader import make_loader
from engine.errors import CheckpointError, TorchSAEError
from engine.optim import dfl_update_settings
from engine.train import checkpoint as ck
from engine.train import distributed as ddp
from engine.train import parts, preview
from engine.train.base import TrainerBase
from engine.train.compiled import StaticInputs
from engine.train.step import SAEHDStep

__all__ = ["Trainer"]

log = logging.getLogger("torchsae.train")

_DISCRIMINATORS = ("code_d", "gan_d")  # Trainer attributes, each with its "<name>_opt"


@attrs.define(kw_only=True)
class Trainer(TrainerBase):
    """All live training objects (see the module docstring). `step_fn` owns the loss spec in force
    (`step_fn.loss`, ramps applied) and its runtime (`step_fn.runtime`: resolution, pretrain, kernels)."""

    history_keys: ClassVar[tuple[str, ...]] = ("src_loss", "dst_loss")  # DFL's loss_history: [src, dst] per step

    step_fn: SAEHDStep
    g_opt: ddp.GuardedOptimizer
    code_d: torch.nn.Module | None = None
    code_d_opt: ddp.GuardedOptimizer | None = None
    gan_d: torch.nn.Module | None = None
    gan_d_opt: ddp.GuardedOptimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    lr_scale: float = 1.0
    random_warp: bool = True
    pretrain_done: bool = False  # the pretrain -> normal switch happened (survives the step reset and resumes)
    rollbacks: int = 0
    rollback_streak: int = 0  # rollbacks since training last got past the step where it diverged
    diverged_at: int = -1
    step_inputs: StaticInputs | None = None  # CUDA graphs' static input buffers (compile "reduce-overhead")
    compile_mode: str = "off"  # [compile].mode as resolved for the device (engine.train.compiled)

    # ------------------------------------------------------------------ data
    def make_loader(self) -> None:
        self.loader = make_loader(self.recipe, rank=self.dist.rank, world=self.dist.world, device=self.device,
                                  random_warp=self.random_warp, pretrain=self.pretrain)

    def preview_samples(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return preview.preview_samples(batch, self.recipe.model.resolution)

    # ------------------------------------------------------------------ schedules
    def apply_schedules(self) -> None:
        """The schedules' values at this step: lr, pretrain mode, random warp, loss weights."""
        r, s = self.recipe, self.step
        factor = schedules.lr_factor(r.schedule, s, r.train.target_iter) * self.lr_scale
        for opt in self._optimizers():
            for g in opt.param_groups:
                g.setdefault("base_lr", r.optim.lr)
                g["lr"] = g["base_lr"] * factor
        pretrain = schedules.pretrain_at(r.train.pretrain, r.schedule, s, finished=self.pretrain_done)
        if pretrain != self.pretrain:
            self._switch_pretrain(pretrain)
        random_warp = schedules.random_warp_at(r.data.random_warp, r.schedule, s) and not self.pretrain
        if random_warp != self.random_warp:
            self._switch_random_warp(random_warp)
        self.step_fn.loss = schedules.loss_at(r.loss, r.schedule, s)

    def _optimizers(self) -> list[ddp.GuardedOptimizer]:
        return [o for o in (self.g_opt, self.code_d_opt, self.gan_d_opt) if o is not None]

    def _switch_random_warp(self, on: bool) -> None:
        """Random warp on/off: the loader changes how it makes samples; LIAE (un)freezes inter_AB (§12.11)."""
        self.random_warp = on
        if self.loader is not None:
            self.loader.set_random_warp(on)
        if parts.archi_type(self.recipe) == "liae":
            parts.parameter_sets(self.model, self.recipe, on)
        log.info("step %d: random warp %s", self.step, "on" if on else "off")

    def _switch_pretrain(self, pretrain: bool) -> None:
        """DFL's pretrain -> normal switch (docs/dfl.md §11.6): step and history restart at 0, the inter(s) are
        re-initialised, the preview sample is redrawn; data, loss forcing and lr_dropout follow the new mode.
        The pretrained model is saved first (as `pretrain_step_<N>`), and `pretrain_done` keeps the switch
        from happening again once the counter has restarted (or after a resume)."""
        if not pretrain and self.step and self.dist.is_main and not (
                self.run_dir / "checkpoints" / ck.checkpoint_name(self.step, pretrain=True)).is_dir():
            self.save()
        self.pretrain = pretrain
        self.step_fn.runtime = attrs.evolve(self.step_fn.runtime, pretrain=pretrain)
        self._set_optimizer_mode(pretrain)
        if not pretrain:
            self.pretrain_done = True
            names = parts.reinit_inters(self.model, self.recipe, self.dist)
            self.history.clear()
            self.preview_batch = None
            log.info("pretrain finished at step %d: inter re-initialised (%s), step counter restarts at 0",
                     self.step, ", ".join(names))
            self.step = 0
        if self.loader is not None:
            self.loader.set_pretrain(pretrain)

    # ------------------------------------------------------------------ one step with the guard
    def train_one(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One SAEHD step on `batch`; returns its losses (and grad_norm). Counts the step only when the
        update was applied and finite."""
        t0 = time.perf_counter()
        scale = self.scaler.get_scale() if self.scaler is not None else None
        if self.step_inputs is not None:
            batch = self.step_inputs(batch)
        res = self.step_fn(batch)
        losses = dict(res.losses)
        losses["grad_norm"] = res.grad_norm
        if scale is not None and self.scaler.get_scale() < scale:
            # fp16: the grad scaler found inf/nan in the scaled gradients, skipped the update and lowered its
            # scale (calibration, not divergence): retry with the next batch without counting a bad step
            log.debug("step %d: fp16 gradient overflow, loss scale %g -> %g", self.step, scale, self.scaler.get_scale())
            return losses
        if self.finite_or_skip(losses, applied=not self.g_opt.skipped):  # else skipped; rollback() when due
            self.count_step(losses, t0)
        return losses

    def diverged(self) -> None:
        self.rollback()

    def rollback(self) -> None:
        """`max_bad_steps` non-finite steps in a row: go back to the newest checkpoint that verifies and has
        finite weights (`ck.load` skips the others), scale the lr by `lr_backoff`. Rollbacks that make no
        progress (training never gets past the step where it last diverged) stop the run after
        `[train].max_rollbacks`, with the checkpoints left as they are."""
        self.lr_scale *= self.recipe.train.lr_backoff
        self.rollbacks += 1
        self.bad_steps = 0
        if self.step > self.diverged_at:
            self.rollback_streak = 0
        self.rollback_streak += 1
        self.diverged_at = max(self.diverged_at, self.step)
        limit = self.recipe.train.max_rollbacks
        if self.rollback_streak > limit:
            raise TorchSAEError(
                f"training diverged: {self.rollback_streak - 1} rollbacks in a row did not get past step "
                f"{self.diverged_at} (lr scaled to {self.lr_scale / self.recipe.train.lr_backoff:.3g} of optim.lr); "
                f"stopped, the checkpoints in {self.run_dir / 'checkpoints'} are left as they were. Lower optim.lr, "
                "or raise [train].max_rollbacks")
        if not ck.candidates(self.run_dir):
            log.error("repeated non-finite steps and no checkpoint to roll back to; lr scaled to %.3g", self.lr_scale)
            return
        keep = (self.lr_scale, self.rollbacks, self.rollback_streak, self.diverged_at)
        try:
            self.load(self.run_dir)
        except CheckpointError as e:
            log.error("repeated non-finite steps and no usable checkpoint to roll back to (%s); lr scaled to %.3g",
                      e, self.lr_scale)
            self.lr_scale, self.rollbacks, self.rollback_streak, self.diverged_at = keep
            return
        self.lr_scale, self.rollbacks, self.rollback_streak, self.diverged_at = keep
        log.error("repeated non-finite steps: rolled back to step %d, lr scaled to %.3g (rollback %d of at most %d "
                  "without progress)", self.step, self.lr_scale, self.rollback_streak, limit)

    # ------------------------------------------------------------------ pretrain phase (DFL §11.6)
    def _restore_phase(self, state: dict[str, Any]) -> bool:
        """The pretrain phase a checkpoint was saved in. When the recipe no longer pretrains (DFL: the user
        turned pretrain off), the next `apply_schedules` makes DFL's switch from there. The loader follows
        the saved phase, so its saved position applies."""
        self.pretrain_done = bool(state.get("pretrain_done", False))
        was = state.get("pretrain")
        if was is None:  # saved before the phase was recorded: what the schedule says at the stored step
            was = schedules.pretrain_at(self.recipe.train.pretrain, self.recipe.schedule, self.step)
        if bool(was) != self.pretrain:
            self.pretrain = bool(was)
            self.step_fn.runtime = attrs.evolve(self.step_fn.runtime, pretrain=self.pretrain)
            if self.loader is not None:
                self.loader.set_pretrain(self.pretrain)  # before its position is restored
        return True

    def _set_optimizer_mode(self, pretrain: bool) -> None:
        """lr_dropout (and its lr_cos) is off in pretrain (docs/dfl.md §3.6): follow the mode on every optimizer."""
        dfl = dfl_update_settings(self.recipe.optim, pretrain=pretrain)
        for guarded in self._optimizers():
            opt = guarded.opt
            if not hasattr(opt, "lr_cos"):  # adam/adamw: no lr_dropout
                continue
            for g in opt.param_groups:
                if "lr_dropout" in g:
                    g["lr_dropout"] = dfl.lr_dropout
            opt.lr_cos = dfl.lr_cos

    # ------------------------------------------------------------------ what the loop asks
    def target_reached(self) -> bool:
        """`[train].target_iter` counts the steps of the normal phase while a `pretrain_until` schedule is still
        pretraining (its counter restarts at the switch, as DFL's iter does); otherwise the current counter."""
        target = self.recipe.train.target_iter
        if not target or (self.pretrain and self.recipe.schedule.pretrain_until and not self.pretrain_done):
            return False
        return self.step >= target

    def preview_every(self) -> int:
        """[train].preview_every, or DFL's 10 * max(1, R // 64)."""
        return self.recipe.train.preview_every or 10 * max(1, self.recipe.model.resolution // 64)

    def preview_image(self) -> np.ndarray:
        return preview.render(self.model, self.preview_batch, step=self.step, history=self.history)

    def lr(self) -> float:
        return self.g_opt.param_groups[0]["lr"]

    def summary_fields(self) -> dict[str, Any]:
        return {"rollbacks": self.rollbacks, "amp": self.recipe.train.amp, "compile": self.compile_mode}

    # ------------------------------------------------------------------ checkpoints (TrainerBase's hooks)
    def _train_state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"g_opt": self.g_opt.state_dict(), "lr_scale": self.lr_scale,
                              "rollbacks": self.rollbacks, "pretrain_done": self.pretrain_done}
        for name in _DISCRIMINATORS:
            mod = getattr(self, name)
            if mod is not None:
                st[name] = mod.state_dict()
                st[name + "_opt"] = getattr(self, name + "_opt").state_dict()
        if self.scaler is not None:
            st["scaler"] = self.scaler.state_dict()
        return st

    def _checkpoint_extra(self) -> dict[str, Any] | None:
        held = getattr(self.loader, "held_out", None)
        return {"held_out": held.record()} if held is not None else None

    def _check_checkpoint(self, recipe_toml: str, path: Path) -> None:
        ck.check_compatible(recipe_toml, self.recipe, str(path))

    def _load_state(self, state: dict[str, Any], path: Path) -> None:
        self.g_opt.load_state_dict(state["g_opt"])
        self.lr_scale = float(state.get("lr_scale", 1.0))
        self.rollbacks = int(state.get("rollbacks", 0))
        for name in _DISCRIMINATORS:
            mod = getattr(self, name)
            if mod is not None and name in state:
                mod.load_state_dict(state[name])
                getattr(self, name + "_opt").load_state_dict(state[name + "_opt"])
            elif mod is not None:
                log.info("%s: not in the checkpoint, starts fresh (DFL re-initialises a changed discriminator)", name)
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def _load_weights_only(self, payload: dict[str, Any], path: str | Path) -> None:
        self.step = int(payload.get("step", 0))
        dfl_opt = payload.get("dfl_optimizer")
        if dfl_opt is not None and self._load_dfl_optimizer(self.g_opt, self.model, dfl_opt, path):
            log.info("loaded weights and DFL's optimizer state from %s (step %d)", path, self.step)
        else:
            log.info("loaded weights from %s (step %d); optimizer state starts fresh", path, self.step)
        for name in _DISCRIMINATORS:  # discriminators imported from DFL (engine.dfl.import_dfl_discriminators)
            mod, entry = getattr(self, name), payload.get("dfl_" + name)
            if mod is None or entry is None:
                continue
            mod.load_state_dict(entry["model"])
            if entry.get("optimizer") is not None:
                self._load_dfl_optimizer(getattr(self, name + "_opt"), mod, entry["optimizer"], path)
            log.info("%s: DFL's weights%s from %s", name, " and optimizer state" if entry.get("optimizer") else "",
                     path)

    def _load_dfl_optimizer(self, guarded: ddp.GuardedOptimizer, module: torch.nn.Module, dfl_opt: dict,
                            path: str | Path) -> bool:
        """Put optimizer state imported from DFL (`engine.dfl.import_dfl_optimizer`: slots per parameter
        name of `module`, torch layout) into `guarded`'s optimizer. False (state stays fresh, with a
        warning) when the recipe now names another optimizer; CheckpointError when a parameter is unknown."""
        opt = guarded.opt
        if dfl_opt.get("name") != self.recipe.optim.name:
            log.warning("%s: holds DFL %s optimizer state but the recipe uses optim.name = %r; starting with "
                        "fresh optimizer state", path, dfl_opt.get("name"), self.recipe.optim.name)
            return False
        params = dict(module.named_parameters())
        owned = {p for g in opt.param_groups for p in g["params"]}
        unknown = [n for n in dfl_opt["state"] if n not in params or params[n] not in owned]
        if unknown:
            raise CheckpointError(f"{path}: DFL optimizer state for parameters this training does not optimize: "
                                  + ", ".join(unknown[:8]))
        for n, slots in dfl_opt["state"].items():
            p = params[n]
            # empty_like keeps the parameter's memory format (channels_last), as fresh state would have
            opt.state[p] = {k: torch.empty_like(p).copy_(v) for k, v in slots.items()}
        opt.iterations = int(dfl_opt["iterations"])
        return True
