"""Latent distillation: pull a student's latent code towards a frozen teacher's (a TorchSAE addition for
graph recipes; DFL has no such term).

The teacher's code is detached here; running and freezing the teacher is the training step's job
(engine.train.extra_losses), so no gradient or optimizer state ever reaches it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.recipe.specs import DISTILL_MODES

__all__ = ["DISTILL_MODES", "latent_distill"]


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
