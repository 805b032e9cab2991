"""Latent distillation: pull a student's latent code towards a frozen teacher's (a TorchSAE addition for
graph recipes; DFL has no such term).

The teacher is frozen: its code is detached here and `freeze_teacher` puts the module in eval mode with
requires_grad off, so no gradient or optimizer state ever reaches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.recipe.specs import DISTILL_MODES

__all__ = ["DISTILL_MODES", "latent_distill", "freeze_teacher", "latent_distill_hook"]


def latent_distill(student_code: torch.Tensor, teacher_code: torch.Tensor, mode: str = "mse",
                   weight: float = 1.0) -> torch.Tensor:
    """Per-sample distance between two latent codes of the same shape (N, ...), → (N,).

    ``mse``: ``weight · mean_{features} (s − t)²``. ``cosine``: ``weight · (1 − cos(flat(s), flat(t)))``
    with torch's eps 1e-8 guard. The teacher code is detached (frozen teacher).
    """
    if student_code.shape != teacher_code.shape:
        raise ValueError(f"latent_distill: student code {tuple(student_code.shape)} and teacher code "
                         f"{tuple(teacher_code.shape)} must have the same shape")
    t = teacher_code.detach().to(student_code.dtype)
    if mode == "mse":
        d = (student_code - t).square().flatten(1).mean(dim=1)
    elif mode == "cosine":
        d = 1.0 - F.cosine_similarity(student_code.flatten(1), t.flatten(1), dim=1)
    else:
        raise ValueError(f"latent_distill: unknown mode {mode!r} (valid: {', '.join(DISTILL_MODES)})")
    return weight * d


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put `teacher` in eval mode with every parameter's requires_grad off; returns it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def latent_distill_hook(teacher: nn.Module, weight: float = 1.0, mode: str = "mse"):
    """An `extra_losses` hook for `engine.train.step.saehd_train_step`: freezes `teacher` (a SwapModel
    with the student's code shapes) and returns ``hook(outputs, batch) -> {"latent_distill": (N,)}``, the sum
    of the src and dst code distances ``latent_distill(src_code, teacher.code(warped_src, "src"))`` +
    ``latent_distill(dst_code, teacher.code(warped_dst, "dst"))``."""
    if mode not in DISTILL_MODES:
        raise ValueError(f"latent_distill: unknown mode {mode!r} (valid: {', '.join(DISTILL_MODES)})")
    freeze_teacher(teacher)

    def hook(outputs, batch):
        with torch.no_grad():
            t_src = teacher.code(batch["warped_src"], "src")
            t_dst = teacher.code(batch["warped_dst"], "dst")
        return {"latent_distill": latent_distill(outputs["src_code"], t_src, mode, weight)
                + latent_distill(outputs["dst_code"], t_dst, mode, weight)}

    return hook
