"""Learning-rate and loss-weight schedules ([schedule] table), as pure functions of the step.

Pure functions of `step` (no state to checkpoint, except whether pretraining is over: `pretrain_at`'s
`finished`): resume at step N gives exactly the values a run that never stopped would have used.

- lr: constant (DFL), warmup (linear 0 -> lr over warmup_steps), cosine (warm-up, then cosine from lr to
  min_lr_ratio*lr over decay_steps, default the rest of train.target_iter).
- ramps: a [loss] weight goes linearly from start_value (up to `start`) to end_value (from `end`);
  start == end is a switch (e.g. GAN on after N steps).
- random warp off from `random_warp_off_at` (DFL users flip random_warp off late in training).
- pretrain until `pretrain_until`, then DFL's switch (docs/dfl.md §11.6).
DFL's own lr_cos (the 500-step cosine that comes with lr_dropout) lives in the optimizer, not here.
"""

from __future__ import annotations

import math

import attrs

from engine.recipe.specs import LossSpec, RampSpec, ScheduleSpec

LR_SCHEDULES: tuple[str, ...] = attrs.fields(ScheduleSpec).lr.metadata["choices"]


def lr_factor(spec: ScheduleSpec, step: int, target_iter: int = 0) -> float:
    """Multiplier on optim.lr at `step` (0-based)."""
    if spec.lr == "constant":
        return 1.0
    w = spec.warmup_steps
    if w and step < w:
        return (step + 1) / w
    if spec.lr == "warmup":
        return 1.0
    decay = spec.decay_steps or max(1, (target_iter or 0) - w)
    t = min(1.0, max(0, step - w) / decay)
    return spec.min_lr_ratio + (1.0 - spec.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def ramp_value(ramp: RampSpec, step: int) -> float:
    if step < ramp.start:
        return ramp.start_value
    if step >= ramp.end:
        return ramp.end_value
    t = (step - ramp.start) / (ramp.end - ramp.start)
    return ramp.start_value + t * (ramp.end_value - ramp.start_value)


def loss_at(loss: LossSpec, spec: ScheduleSpec, step: int) -> LossSpec:
    """The [loss] spec in force at `step`: every ramp applied (a later ramp of the same term wins)."""
    if not spec.ramp:
        return loss
    changes = {r.term: ramp_value(r, step) for r in spec.ramp}
    return attrs.evolve(loss, **changes)


def random_warp_at(random_warp: bool, spec: ScheduleSpec, step: int) -> bool:
    return random_warp and not (spec.random_warp_off_at and step >= spec.random_warp_off_at)


def pretrain_at(pretrain: bool, spec: ScheduleSpec, step: int, *, finished: bool = False) -> bool:
    """Pretrain mode at `step`: the [train] flag, or the schedule's pretrain phase.

    `finished`: the pretrain -> normal switch has happened. DFL restarts the step counter at 0 there
    (§11.6), so `step < pretrain_until` alone would turn pretraining on again; whether it is over is state
    (the trainer's, checkpointed), not a function of the step."""
    if spec.pretrain_until:
        return not finished and step < spec.pretrain_until
    return pretrain


__all__ = ["LR_SCHEDULES", "lr_factor", "ramp_value", "loss_at", "random_warp_at", "pretrain_at"]
