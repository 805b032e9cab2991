"""engine.train.extra_losses: the frozen teacher of latent distillation gets no gradient and no update.
(The hook inside a full training step: tests/train/test_step_parity.py; recipes with extra identities and
a teacher: tests/train/test_train_loop.py.)"""

from __future__ import annotations

import torch
from torch import nn

from engine.losses import latent_distill
from engine.train.extra_losses import freeze_teacher


def test_teacher_is_frozen_and_gets_no_gradient():
    teacher = freeze_teacher(nn.Linear(4, 3))
    student = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    latent_distill(student(x), teacher(x), "mse").sum().backward()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
