"""Optimizer selection: `OptimConfig` (DFL defaults), `make_optimizer`, and SAEHD's parameter sets (§3.6)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import torch
from torch import nn

from engine.errors import RecipeError

from .dfl import AdaBelief, RMSprop, clip_scale, global_grad_norm

__all__ = ["OPTIMIZERS", "OptimConfig", "make_optimizer", "saehd_param_groups", "freeze_untrainable",
           "clip_grad_norm_dfl_", "SAEHD_MODULES"]

OPTIMIZERS = ("adabelief", "rmsprop", "adam", "adamw")

# module names per archi type, in DFL's saveable order (§3.6)
SAEHD_MODULES: dict[str, tuple[str, ...]] = {
    "df": ("encoder", "inter", "decoder_src", "decoder_dst"),
    "liae": ("encoder", "inter_AB", "inter_B", "decoder"),
}


@attrs.frozen(kw_only=True)
class OptimConfig:
    """One optimizer's settings. Defaults are DFL's (§3.6) for AdaBelief.

    Fields
    ------
    name: "adabelief" | "rmsprop" (DFL's, `engine.optim.dfl`) | "adam" | "adamw" (torch's).
    lr: 5e-5 (DFL).
    lr_dropout: keep probability of each update element, 1.0 = off; DFL uses 0.3 when lr_dropout is on.
        DFL optimizers only.
    lr_cos: cosine lr period in steps, 0 = off; DFL uses 500, and only together with lr_dropout.
        DFL optimizers only.
    clipnorm: global-norm clip threshold, 0 = off; DFL uses 1.0 with clipgrad. All optimizers.
    rho: RMSprop decay, 0.9.
    betas: (β1, β2) for adabelief/adam/adamw, (0.9, 0.999).
    eps: 1e-6 (DFL's, outside the square root) for every optimizer, adam/adamw included (torch's default
        would be 1e-8).
    weight_decay: adam/adamw only (adamw: decoupled), 0.0.
    seed: seed of the lr_dropout mask generator; None = drawn from torch's global RNG.
    kernels: DFL optimizers' update implementation (kernels.dfl_update; the recipe's [compile].kernels).
    """

    name: str = attrs.field(default="adabelief", validator=attrs.validators.in_(OPTIMIZERS))
    lr: float = 5e-5
    lr_dropout: float = 1.0
    lr_cos: int = 0
    clipnorm: float = 0.0
    rho: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    seed: int | None = None
    kernels: str = "auto"

    @classmethod
    def from_dfl_options(cls, *, adabelief: bool = True, lr_dropout: str | bool = "n", clipgrad: bool = False,
                         pretrain: bool = False, lr: float = 5e-5, seed: int | None = None) -> OptimConfig:
        """SAEHD's mapping (§3.6): AdaBelief or RMSprop; lr_dropout 'y'/'cpu' (not in pretrain) → 0.3 with a
        500-step cosine; clipgrad → clipnorm 1.0. Every SAEHD optimizer (G, D_code, GAN) uses these."""
        if isinstance(lr_dropout, bool):  # legacy bool option
            lr_dropout = "y" if lr_dropout else "n"
        if lr_dropout not in ("n", "y", "cpu"):
            raise RecipeError(None, "optim.lr_dropout", f"invalid value {lr_dropout!r}", hint="valid: n, y, cpu")
        on = lr_dropout in ("y", "cpu") and not pretrain
        return cls(name="adabelief" if adabelief else "rmsprop", lr=lr, lr_dropout=0.3 if on else 1.0,
                   lr_cos=500 if on else 0, clipnorm=1.0 if clipgrad else 0.0, seed=seed)


def clip_grad_norm_dfl_(params: Iterable[torch.Tensor], clipnorm: float) -> torch.Tensor:
    """Scale the gradients of `params` in place by DFL's rule (×clipnorm/norm when norm ≥ clipnorm);
    returns the pre-clip global norm (0-dim tensor, no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = global_grad_norm(grads)
    if grads and clipnorm > 0:
        s = clip_scale(norm, clipnorm)
        torch._foreach_mul_(grads, s.to(grads[0].device, grads[0].dtype))
    return norm


def make_optimizer(params: Iterable, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by `cfg` over `params` (tensors or param-group dicts).

    adam/adamw are torch's (foreach), with cfg.clipnorm applied by a step pre-hook using DFL's clip rule.
    lr_dropout/lr_cos exist only in DFL's optimizers: asking for them with adam/adamw is a RecipeError.
    """
    if cfg.name == "rmsprop":
        return RMSprop(params, lr=cfg.lr, rho=cfg.rho, eps=cfg.eps, lr_dropout=cfg.lr_dropout, lr_cos=cfg.lr_cos,
                       clipnorm=cfg.clipnorm, seed=cfg.seed, kernels=cfg.kernels)
    if cfg.name == "adabelief":
        return AdaBelief(params, lr=cfg.lr, beta_1=cfg.betas[0], beta_2=cfg.betas[1], eps=cfg.eps,
                         lr_dropout=cfg.lr_dropout, lr_cos=cfg.lr_cos, clipnorm=cfg.clipnorm, seed=cfg.seed,
                         kernels=cfg.kernels)
    if cfg.lr_dropout != 1.0 or cfg.lr_cos != 0:
        raise RecipeError(None, "optim", f"lr_dropout/lr_cos are DFL optimizer features; optimizer {cfg.name!r} "
                          f"got lr_dropout={cfg.lr_dropout}, lr_cos={cfg.lr_cos}",
                          hint="use name = 'adabelief' or 'rmsprop', or set lr_dropout = 'n'")
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    opt = cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.clipnorm > 0:
        clipnorm = cfg.clipnorm

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
