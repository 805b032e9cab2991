"""Latent distillation term: hand values, shapes, and that the teacher's code never receives a gradient."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine.losses import latent_distill


def test_mse_and_cosine_hand_values():
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    t = torch.tensor([[1.0, 0.0, 3.0, 0.0], [0.0, 0.0, 2.0, 0.0]]).view(2, 1, 2, 2)
    torch.testing.assert_close(latent_distill(s, t, "mse", 2.0), torch.tensor([2.0 * (4 + 16) / 4, 2.0 * (1 + 4) / 4]))
    cos0 = (1 + 9) / (math.sqrt(30) * math.sqrt(10))
    torch.testing.assert_close(latent_distill(s, t, "cosine"), torch.tensor([1 - cos0, 1.0]))


def test_teacher_code_is_detached():
    student = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    t = torch.randn(5, 3, requires_grad=True)
    latent_distill(student(x), t).sum().backward()
    assert t.grad is None
    assert all(p.grad is not None for p in student.parameters())


def test_errors():
    with pytest.raises(ValueError, match="same shape"):
        latent_distill(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="valid: mse, cosine"):
        latent_distill(torch.zeros(2, 3), torch.zeros(2, 3), "l1")
