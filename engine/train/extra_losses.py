"""The step's TorchSAE terms beyond SAEHD (spec-free additions for explicit graphs), wired from the recipe:

- per-identity reconstruction for identities beyond src/dst ([data].identities): each identity's faces
  through its own code path and decoder, with SAEHD's src/dst terms (engine.losses.identity_recon_losses);
- latent distillation ([loss].latent_distill_*): the student's codes pulled towards those of a frozen
  teacher, loaded here from its checkpoint (engine.losses.latent_distill_hook).

`extra_losses(recipe, model, device)` returns the `ExtraLosses` callable the step adds to G_loss, or None.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from engine import recipe as recipe_mod
from engine.graph import build
from engine.losses import LossRuntime, identity_recon_losses, latent_distill_hook
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train.step import ExtraLosses

__all__ = ["extra_losses", "load_teacher"]


def load_teacher(path: str, device: torch.device) -> nn.Module:
    """The SwapModel stored in checkpoint `path`, built from its own stored recipe, on `device`."""
    payload = ck.load_model_payload(path)
    teacher = build(recipe_mod.loads(payload["recipe_toml"], source=f"{path} (stored recipe)")).to(device)
    teacher.load_state_dict(payload["model"])
    return teacher


def extra_losses(r: Recipe, model: nn.Module, device: torch.device) -> ExtraLosses | None:
    """The recipe's extra terms as one `ExtraLosses` hook, or None when it uses none."""
    hooks: list[ExtraLosses] = []
    idents = tuple(r.data.identities)
    if idents:
        # [loss] as written (no ramps) and never in pretrain: extra identities train on their own facesets
        rt = LossRuntime(resolution=r.model.resolution, kernels=r.compile.kernels)

        def recon(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            terms = identity_recon_losses(model, batch, idents, r.loss, rt)
            return {f"{x}_loss": terms[f"{x}_loss"] for x in idents}

        hooks.append(recon)
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
