"""One SAEHD training step in DFL's order (docs/dfl.md §3.7), free of I/O.

    1. generator: forward_train → saehd_losses → G_loss.sum().backward() → optimizer step
       (the gradient of the batch SUM, §12.1; the discriminators are frozen during this backward);
    2. true face (DF, true_face_power ≠ 0, not pretrain): a fresh forward of the *updated* encoder/inter,
       D_code_loss.sum().backward() → D_code optimizer step;
    3. GAN (gan_power ≠ 0, not pretrain): a fresh forward of the updated generator's src reconstruction,
       D_loss.sum().backward() → GAN optimizer step.

Steps 2 and 3 run without generator gradients (DFL's D steps update only discriminator weights). DFL runs
them as two session calls with separate forward passes; nothing the code-discriminator step changes feeds
the generator, so one shared no-grad forward gives the same numbers.

DFL's own step races with itself (the update may read weights before all gradients have read them; see
the golden README); this step is the race-free version: every gradient is taken at the pre-step weights.

AMP / compile: pass ``autocast`` (a zero-argument context-manager factory, e.g.
``lambda: torch.autocast("cuda", torch.bfloat16)``) and, for fp16, a ``torch.amp.GradScaler``; the losses'
DSSIM runs in fp32 whatever the autocast. `SAEHDStep` bundles the arguments for a training loop; the
loop may wrap `model.forward_train` with torch.compile before building it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import attrs
import torch
from torch import nn

from engine.errors import TorchSAEError
from engine.losses.saehd import (LossRuntime, code_d_loss, gan_active, gan_d_loss, prepare_targets, saehd_losses,
                                 true_face_d_active, true_face_g_active)
from engine.optim.dfl import global_grad_norm
from engine.recipe.specs import LossSpec

__all__ = ["StepResult", "saehd_train_step", "SAEHDStep", "BATCH_KEYS", "ExtraLosses"]

ExtraLosses = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]

BATCH_KEYS = ("warped_src", "target_src", "target_srcm", "target_srcm_em",
              "warped_dst", "target_dst", "target_dstm", "target_dstm_em")


@attrs.frozen
class StepResult:
    """losses: batch means (floats) of every active term plus src_loss, dst_loss, G_loss and, when their
    steps ran, D_code_loss and D_gan_loss. grad_norm: global L2 norm of the generator gradient before
    clipping (after unscaling with AMP)."""

    losses: dict[str, float]
    grad_norm: float


@contextlib.contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    """requires_grad off for the modules' parameters (restored afterwards): the G backward must not
    compute discriminator weight gradients (DFL differentiates the G loss w.r.t. generator weights only)."""
    saved = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def _backward_and_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler, params: list[torch.Tensor] | None
                       ) -> torch.Tensor | None:
    """loss.backward() (scaled with AMP), optional grad norm of `params` (after unscale), optimizer step.

    A guarded optimizer (engine.train.distributed.GuardedOptimizer) computes the global norm of its
    gradients for the NaN guard anyway; that norm is reported instead of a second pass (`params` must
    then be the parameters it steps, as in SAEHD). Otherwise, or when GradScaler skipped the step, the
    norm is computed here."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    guarded = hasattr(opt, "guard_norm")
    norm = None
    if params is not None and not guarded:
        norm = global_grad_norm([p.grad for p in params if p.grad is not None])
    if guarded:
        opt.guard_norm = None
    if scaler is not None:
        scaler.step(opt)
    else:
        opt.step()
    if params is not None and guarded:
        norm = opt.guard_norm
        if norm is None:  # the scaler found inf/nan and did not call step
            norm = global_grad_norm([p.grad for p in params if p.grad is not None])
    return norm


def saehd_train_step(model: nn.Module, g_opt: torch.optim.Optimizer, batch: Mapping[str, torch.Tensor],
                     loss: LossSpec, rt: LossRuntime, *,
                     code_d: nn.Module | None = None, code_d_opt: torch.optim.Optimizer | None = None,
                     gan_d: nn.Module | None = None, gan_d_opt: torch.optim.Optimizer | None = None,
                     autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                     scaler: torch.amp.GradScaler | None = None,
                     extra_losses: ExtraLosses | None = None) -> StepResult:
    """One SAEHD step (§3.7) on `batch` (the `BATCH_KEYS`, NCHW on the model's device).

    model: a SwapModel (``forward_train(warped_src, warped_dst, no_code_grad=...)``, ``code(x, identity)``,
    ``decode(z, identity)``). g_opt steps the generator: build it over the saveable set and freeze what
    DFL does not train (`engine.optim.saehd_param_groups` / `freeze_untrainable`); parameters without a
    gradient are skipped by every optimizer here. The discriminators and their optimizers are required
    exactly when the loss activates them (`loss` is the [loss] spec in force, `rt` its LossRuntime).
    `extra_losses(outputs, batch) -> {name: (N,)}` adds TorchSAE terms
    (e.g. `engine.train.extra_losses.latent_distill_hook`) to G_loss; they are reported under their names.
    """
    run_code, run_gan = true_face_d_active(loss, rt), gan_active(loss, rt)
    if true_face_g_active(loss, rt) and code_d is None:
        raise TorchSAEError(f"train step: true_face_power is {loss.true_face_power} but no code discriminator "
                            "was built")
    if run_code and code_d_opt is None:
        raise TorchSAEError("train step: true_face_power is set but the code discriminator has no optimizer")
    if run_gan and (gan_d is None or gan_d_opt is None):
        raise TorchSAEError(f"train step: gan_power is {loss.gan_power} but the GAN discriminator or its "
                            "optimizer is missing")
    missing = [k for k in ("warped_src", "warped_dst") if k not in batch]
    if missing:
        raise TorchSAEError(f"train step: the batch has no {', '.join(missing)} (keys: {', '.join(sorted(batch))})")

    means: dict[str, torch.Tensor] = {}
    targets = prepare_targets(batch, loss, rt)
    no_code_grad = loss.face_style_power != 0 and rt.style_active

    # 1. generator
    model.zero_grad(set_to_none=True)
    with _frozen(code_d, gan_d):
        with autocast():
            outs = model.forward_train(batch["warped_src"], batch["warped_dst"], no_code_grad=no_code_grad)
            terms = saehd_losses(outs, batch, loss, rt, targets=targets, code_d=code_d, gan_d=gan_d)
            if extra_losses is not None:
                for name, v in extra_losses(outs, batch).items():
                    if name in terms:
                        raise TorchSAEError(f"train step: extra loss {name!r} clashes with a SAEHD term name")
                    terms[name] = v
                    terms["G_loss"] = terms["G_loss"] + v
        g_params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = _backward_and_step(terms["G_loss"].sum(), g_opt, scaler, g_params)
    for k, v in terms.items():
        means[k] = v.detach().float().mean()
    del outs, terms

    # 2./3. discriminators, on a fresh forward of the updated generator
    if run_code or run_gan:
        with torch.no_grad(), autocast():
            src_code = model.code(batch["warped_src"], "src")
            dst_code = model.code(batch["warped_dst"], "dst") if run_code else None
            pred_src_src = model.decode(src_code, "src")[0] if run_gan else None
        if run_code:
            code_d.zero_grad(set_to_none=True)
            with autocast():
                d_loss = code_d_loss(code_d, src_code.detach(), dst_code.detach())
            _backward_and_step(d_loss.sum(), code_d_opt, scaler, None)
            means["D_code_loss"] = d_loss.detach().float().mean()
        if run_gan:
            p_s = pred_src_src * targets.srcm_blur if loss.masked_training else pred_src_src
            gan_d.zero_grad(set_to_none=True)
            with autocast():
                d_loss = gan_d_loss(gan_d, p_s.detach(), targets.tS)
            _backward_and_step(d_loss.sum(), gan_d_opt, scaler, None)
            means["D_gan_loss"] = d_loss.detach().float().mean()
    if scaler is not None:
        scaler.update()

    names = list(means)
    values = torch.stack([means[k].to(grad_norm.device) for k in names] + [grad_norm.float()]).tolist()  # one sync
    return StepResult(losses=dict(zip(names, values[:-1])), grad_norm=values[-1])


@attrs.define
class SAEHDStep:
    """`saehd_train_step` with its arguments bound, for a training loop: ``result = step(batch)``.

    Mutable so a loop can swap `loss` (weight ramps), `runtime` (pretrain switch) or optimizers between steps.
    """

    model: nn.Module
    g_opt: torch.optim.Optimizer
    loss: LossSpec
    runtime: LossRuntime
    code_d: nn.Module | None = None
    code_d_opt: torch.optim.Optimizer | None = None
    gan_d: nn.Module | None = None
    gan_d_opt: torch.optim.Optimizer | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    scaler: torch.amp.GradScaler | None = None
    extra_losses: ExtraLosses | None = None

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> StepResult:
        return saehd_train_step(self.model, self.g_opt, batch, self.loss, self.runtime, code_d=self.code_d,
                                code_d_opt=self.code_d_opt, gan_d=self.gan_d, gan_d_opt=self.gan_d_opt,
                                autocast=self.autocast, scaler=self.scaler, extra_losses=self.extra_losses)
