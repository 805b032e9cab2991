"""Optimizer selection from the recipe's [optim] table (`make_optimizer(params, OptimSpec, ...)`), DFL's option
mapping (`dfl_update_settings`), and SAEHD's parameter sets (§3.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import torch
from torch import nn

from engine.errors import RecipeError
from engine.recipe.specs import OptimSpec

from .dfl import AdaBelief, RMSprop, clip_scale, global_grad_norm

__all__ = ["OPTIMIZERS", "DFLUpdateSettings", "dfl_update_settings", "make_optimizer", "saehd_param_groups",
           "freeze_untrainable", "clip_grad_norm_dfl_", "SAEHD_MODULES"]

OPTIMIZERS = attrs.fields(OptimSpec).name.metadata["choices"]

# module names per archi type, in DFL's saveable order (§3.6)
SAEHD_MODULES: dict[str, tuple[str, ...]] = {
    "df": ("encoder", "inter", "decoder_src", "decoder_dst"),
    "liae": ("encoder", "inter_AB", "inter_B", "decoder"),
}


# DFL's constants (§3.6), the same for every optimizer here (adam/adamw too: torch's eps would be 1e-8)
EPS = 1e-6
RMSPROP_RHO = 0.9
ADABELIEF_BETAS = (0.9, 0.999)  # DFL's; [optim].betas is for adam/adamw
LR_DROPOUT_KEEP = 0.3  # DFL's lr_dropout keep probability when the option is on
LR_COS_PERIOD = 500  # DFL's lr_cos period, on together with lr_dropout


@attrs.frozen
class DFLUpdateSettings:
    """What SAEHD's options make of DFL's optimizer update (§3.6): lr_dropout keep probability (1.0 = off),
    lr_cos period (0 = off) and the global-norm clip threshold (0 = off)."""

    lr_dropout: float
    lr_cos: int
    clipnorm: float


def dfl_update_settings(spec: OptimSpec, *, pretrain: bool = False) -> DFLUpdateSettings:
    """SAEHD's mapping (§3.6): lr_dropout 'y'/'cpu' (not in pretrain) → keep 0.3 with a 500-step cosine;
    clipgrad → clipnorm 1.0. Every SAEHD optimizer (G, D_code, GAN) uses these; adam/adamw take clipnorm
    only (lr_dropout is refused for them when the recipe is validated)."""
    on = spec.lr_dropout in ("y", "cpu") and not pretrain and spec.name in ("adabelief", "rmsprop")
    return DFLUpdateSettings(lr_dropout=LR_DROPOUT_KEEP if on else 1.0, lr_cos=LR_COS_PERIOD if on else 0,
                             clipnorm=1.0 if spec.clipgrad else 0.0)


def clip_grad_norm_dfl_(params: Iterable[torch.Tensor], clipnorm: float) -> torch.Tensor:
    """Scale the gradients of `params` in place by DFL's rule (×clipnorm/norm when norm ≥ clipnorm);
    returns the pre-clip global norm (0-dim tensor, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = global_grad_norm(grads)
    if grads and clipnorm > 0:
        s = clip_scale(norm, clipnorm)
        torch._foreach_mul_(grads, s.to(grads[0].device, grads[0].dtype))
    return norm


def make_optimizer(params: Iterable, spec: OptimSpec, *, pretrain: bool = False, seed: int | None = None,
                   kernels: str = "auto") -> torch.optim.Optimizer:
    """Build the [optim] optimizer over `params` (tensors or param-group dicts).

    spec: the recipe's [optim] table. pretrain: DFL's pretrain mode turns lr_dropout off (§3.6). seed: seed
    of the lr_dropout mask generator (None = drawn from torch's global RNG). kernels: the DFL optimizers'
    update implementation (kernels.dfl_update; the recipe's [compile].kernels).
    adabelief/rmsprop are DFL's (engine.optim.dfl, eps 1e-6, rho 0.9); adam/adamw are torch's (foreach,
    eps 1e-6 as DFL), with clipgrad applied by a step pre-hook using DFL's clip rule.
    """
    dfl = dfl_update_settings(spec, pretrain=pretrain)
    if spec.name == "rmsprop":
        return RMSprop(params, lr=spec.lr, rho=RMSPROP_RHO, eps=EPS, lr_dropout=dfl.lr_dropout, lr_cos=dfl.lr_cos,
                       clipnorm=dfl.clipnorm, seed=seed, kernels=kernels)
    if spec.name == "adabelief":
        beta_1, beta_2 = ADABELIEF_BETAS
        return AdaBelief(params, lr=spec.lr, beta_1=beta_1, beta_2=beta_2, eps=EPS, lr_dropout=dfl.lr_dropout,
                         lr_cos=dfl.lr_cos, clipnorm=dfl.clipnorm, seed=seed, kernels=kernels)
    if spec.name not in ("adam", "adamw"):
        raise RecipeError(None, "optim.name", f"unknown optimizer {spec.name!r}",
                          hint="valid: " + ", ".join(OPTIMIZERS))
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    opt = cls(params, lr=spec.lr, betas=tuple(spec.betas), eps=EPS, weight_decay=spec.weight_decay, foreach=True)
    if dfl.clipnorm > 0:
        clipnorm = dfl.clipnorm

        def _clip(optimizer, _args, _kwargs):
            optimizer.last_grad_norm = clip_grad_norm_dfl_(
                [p for g in optimizer.param_groups for p in g["params"]], clipnorm)

        opt.register_step_pre_hook(_clip)
    return opt


def saehd_param_groups(model: nn.Module, archi_type: str, random_warp: bool
                       ) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """SAEHD's (trainable, saveable) parameter sets (§3.6), each {name: parameter} in model order.

    saveable: every parameter of the archi's modules (df: encoder, inter, decoder_src, decoder_dst;
    liae: encoder, inter_AB, inter_B, decoder). trainable: the same, except that LIAE with random_warp
    off (which includes pretrain) leaves inter_AB out (DFL quirk §12.11). Parameters of other submodules
    (e.g. discriminators) are in neither set. Nothing is modified; see `freeze_untrainable`.
    """
    if archi_type not in SAEHD_MODULES:
        raise RecipeError(None, "model.archi", f"unknown archi type {archi_type!r}", hint="valid: df, liae")
    mods = SAEHD_MODULES[archi_type]
    saveable: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if name.split(".", 1)[0] in mods:
            saveable[name] = p
    missing = [m for m in mods if not any(n.split(".", 1)[0] == m for n in saveable)]
    if missing:
        raise RecipeError(None, "model.archi", f"archi type {archi_type!r} expects modules "
                          f"{', '.join(mods)}, but the model has no parameters under {', '.join(missing)}")
    frozen = ("inter_AB",) if (archi_type == "liae" and not random_warp) else ()
    trainable = {n: p for n, p in saveable.items() if n.split(".", 1)[0] not in frozen}
    return trainable, saveable


def freeze_untrainable(saveable: Mapping[str, nn.Parameter], trainable: Mapping[str, nn.Parameter]) -> list[str]:
    """Set requires_grad to (name in trainable) on every saveable parameter (no wasted gradients for
    LIAE's frozen inter_AB); returns the frozen names."""
    frozen = []
    for n, p in saveable.items():
        p.requires_grad_(n in trainable)
        if n not in trainable:
            frozen.append(n)
    return frozen
