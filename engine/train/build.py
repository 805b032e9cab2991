"""Recipe -> `Trainer`: the model on its device, which parts train, the optimizers, the discriminators,
AMP and torch.compile, the SAEHD step with its loss and extra terms.

    trainer = build_trainer(recipe)              # seeds the global RNGs first ([train].seed)

What each recipe table reaches: [model]/[graph] -> engine.graph.build; [loss] -> the step's `LossSpec`
(with a `LossRuntime`: resolution, pretrain, [compile].kernels); [optim] -> engine.optim.make_optimizer for
the generator and each discriminator (seeds train.seed*1000 + 17, +1, +2 for their lr-dropout masks, the
same on every DDP rank); [train] freeze / init_parts -> engine.train.parts; [train].amp, [compile] ->
autocast, grad scaler, channels_last, torch.compile (engine.train.compiled: CUDA graphs for
"reduce-overhead"). Process-wide settings (threads, flush-to-zero) are not touched here: a run
enters engine.train.device.process_settings (engine.train.loop.train does).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from engine import recipe as recipe_mod
from engine import schedules
from engine.graph import build
from engine.losses import LossRuntime
from engine.modules.discriminators import code_discriminator_for, gan_discriminator_for
from engine.optim import make_optimizer
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp
from engine.train import parts
from engine.train.compiled import compile_model, resolve_mode
from engine.train.device import place
from engine.train.extra_losses import extra_losses
from engine.train.rng import seed_everything
from engine.train.step import SAEHDStep
from engine.train.trainer import Trainer

__all__ = ["build_trainer", "optimizer_seed"]

log = logging.getLogger("torchsae.train")


def optimizer_seed(r: Recipe) -> int:
    """Seed of the generator optimizer's lr-dropout masks (the discriminators' are +1, +2). The same on every
    DDP rank: each rank applies the (all-reduced, identical) update through its own mask, so different
    masks would make the replicas drift apart."""
    return r.train.seed * 1000 + 17


def _max_over_ramps(r: Recipe, term: str) -> float:
    """The largest value a [loss] term takes during the run (its value or any ramp's end points)."""
    return max([getattr(r.loss, term)] + [max(x.start_value, x.end_value) for x in r.schedule.ramp if x.term == term])


def _autocast(amp: str, device: torch.device) -> tuple[Callable[[], contextlib.AbstractContextManager],
                                                       torch.amp.GradScaler | None]:
    """[train].amp -> (autocast context factory, grad scaler for fp16 or None)."""
    if amp == "off":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _guarded(module: nn.Module, r: Recipe, pretrain: bool, seed: int, dist: ddp.DistInfo) -> ddp.GuardedOptimizer:
    opt = make_optimizer(list(module.parameters()), r.optim, pretrain=pretrain, seed=seed, kernels=r.compile.kernels)
    return ddp.GuardedOptimizer(opt, dist)


def build_trainer(r: Recipe, *, run_dir: str | Path | None = None, device: str | None = None) -> Trainer:
    """Everything a run of `r` needs, at step 0 (`Trainer.load` resumes). `run_dir` defaults to
    [train].run_dir or runs/<recipe name>; `device` overrides [train].device."""
    dev, dist = place(r.train, device)
    seed_everything(r.train.seed)
    pretrain = schedules.pretrain_at(r.train.pretrain, r.schedule, 0)
    random_warp = schedules.random_warp_at(r.data.random_warp, r.schedule, 0) and not pretrain

    model = build(r).to(dev)
    if r.compile.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ddp.broadcast_module(model, dist)
    _, saveable = parts.parameter_sets(model, r, random_warp)
    if r.train.init_parts:
        parts.init_parts(model, r.train.init_parts)
        ddp.broadcast_module(model, dist)
    seed = optimizer_seed(r)
    g_opt = ddp.GuardedOptimizer(make_optimizer(list(saveable.values()), r.optim, pretrain=pretrain, seed=seed,
                                                kernels=r.compile.kernels), dist)

    code_d = code_d_opt = gan_d = gan_d_opt = None
    if parts.archi_type(r) == "df" and _max_over_ramps(r, "true_face_power") > 0:
        code_d = code_discriminator_for(model, r.model.ae_dims).to(dev)
        ddp.broadcast_module(code_d, dist)
        code_d_opt = _guarded(code_d, r, pretrain, seed + 1, dist)
    if _max_over_ramps(r, "gan_power") > 0:
        gan_d = gan_discriminator_for(r.model.resolution, r.loss.gan_patch_size, r.loss.gan_dims).to(dev)
        ddp.broadcast_module(gan_d, dist)
        gan_d_opt = _guarded(gan_d, r, pretrain, seed + 2, dist)

    autocast, scaler = _autocast(r.train.amp, dev)
    compile_mode, why = resolve_mode(r.compile.mode, dev)
    if dist.is_main and r.compile.mode != "off":
        log.info("compile: %s", why)
    step_inputs = compile_model(model, compile_mode)
    runtime = LossRuntime(resolution=r.model.resolution, pretrain=pretrain, kernels=r.compile.kernels)
    step_fn = SAEHDStep(model=model, g_opt=g_opt, loss=r.loss, runtime=runtime, code_d=code_d, code_d_opt=code_d_opt,
                        gan_d=gan_d, gan_d_opt=gan_d_opt, autocast=autocast, scaler=scaler,
                        extra_losses=extra_losses(r, model, dev))
    return Trainer(recipe=r, recipe_toml=recipe_mod.dumps(r), run_dir=Path(run_dir) if run_dir else ck.run_dir_of(r),
                   device=dev, dist=dist, model=model, step_fn=step_fn, g_opt=g_opt, code_d=code_d,
                   code_d_opt=code_d_opt, gan_d=gan_d, gan_d_opt=gan_d_opt, scaler=scaler, random_warp=random_warp,
                   pretrain=pretrain, step_inputs=step_inputs, compile_mode=compile_mode)
