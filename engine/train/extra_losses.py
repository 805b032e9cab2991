"""The step's TorchSAE terms beyond SAEHD (spec-free additions for explicit graphs), wired from the recipe:

- per-identity reconstruction for identities beyond src/dst ([data].identities): each identity's faces go
  through its own code path and decoder here, and get SAEHD's src/dst terms
  (engine.losses.identity_recon_loss);
- latent distillation ([loss].latent_distill_*): the student's codes pulled towards those of a frozen
  teacher, loaded here from its checkpoint and run here without gradients (engine.losses.latent_distill).

`extra_losses(recipe, model, device)` returns the `ExtraLosses` callable the step adds to G_loss, or None.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from engine import recipe as recipe_mod
from engine.graph import build
from engine.losses import DISTILL_MODES, LossRuntime, identity_recon_loss, latent_distill
from engine.recipe.specs import LossSpec, Recipe
from engine.train import checkpoint as ck
from engine.train.step import ExtraLosses

__all__ = ["extra_losses", "load_teacher", "freeze_teacher", "latent_distill_hook", "identity_recon_hook"]


def load_teacher(path: str, device: torch.device) -> nn.Module:
    """The SwapModel stored in checkpoint `path`, built from its own stored recipe, on `device`."""
    payload = ck.load_model_payload(path)
    teacher = build(recipe_mod.loads(payload["recipe_toml"], source=f"{path} (stored recipe)")).to(device)
    teacher.load_state_dict(payload["model"])
    return teacher


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put `teacher` in eval mode with every parameter's requires_grad off; returns it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def latent_distill_hook(teacher: nn.Module, weight: float = 1.0, mode: str = "mse") -> ExtraLosses:
    """An `extra_losses` hook for `engine.train.step.saehd_train_step`: freezes `teacher` (a SwapModel
    with the student's code shapes) and returns ``hook(outputs, batch) -> {"latent_distill": (N,)}``, the sum
    of the src and dst code distances ``latent_distill(src_code, teacher.code(warped_src, "src"))`` +
    ``latent_distill(dst_code, teacher.code(warped_dst, "dst"))``."""
    if mode not in DISTILL_MODES:
        raise ValueError(f"latent_distill: unknown mode {mode!r} (valid: {', '.join(DISTILL_MODES)})")
    freeze_teacher(teacher)

    def hook(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            t_src = teacher.code(batch["warped_src"], "src")
            t_dst = teacher.code(batch["warped_dst"], "dst")
        return {"latent_distill": latent_distill(outputs["src_code"], t_src, mode, weight)
                + latent_distill(outputs["dst_code"], t_dst, mode, weight)}

    return hook


def identity_recon_hook(model: nn.Module, identities: tuple[str, ...], spec: LossSpec, rt: LossRuntime
                        ) -> ExtraLosses:
    """An `extra_losses` hook: for each identity X, X's warped faces through X's own code path and decoder
    (``model.reconstruct``), scored by `identity_recon_loss`; returns ``{"X_loss": (N,)}`` per identity."""

    def hook(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for x in identities:
            pred, pred_mask = model.reconstruct(batch[f"warped_{x}"], x)
            terms = identity_recon_loss(x, batch[f"target_{x}"], batch[f"target_{x}m"], batch.get(f"target_{x}m_em"),
                                        pred, pred_mask, spec, rt)
            out[f"{x}_loss"] = terms[f"{x}_loss"]
        return out

    return hook


def extra_losses(r: Recipe, model: nn.Module, device: torch.device) -> ExtraLosses | None:
    """The recipe's extra terms as one `ExtraLosses` hook, or None when it uses none."""
    hooks: list[ExtraLosses] = []
    idents = tuple(r.data.identities)
    if idents:
        # [loss] as written (no ramps) and never in pretrain: extra identities train on their own facesets
        hooks.append(identity_recon_hook(model, idents, r.loss,
                                         LossRuntime(resolution=r.model.resolution, kernels=r.compile.kernels)))
    if r.loss.latent_distill_weight > 0:
        teacher = load_teacher(r.loss.latent_distill_teacher, device)
        hooks.append(latent_distill_hook(teacher, r.loss.latent_distill_weight, r.loss.latent_distill_mode))
    if not hooks:
        return None
    if len(hooks) == 1:
        return hooks[0]

    def combined(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for h in hooks:
            out.update(h(outputs, batch))
        return out

    return combined
