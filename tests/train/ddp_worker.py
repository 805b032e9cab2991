"""Run by torchrun from tests/train/test_ddp.py: one SAEHD step on this rank's half of a fixed batch."""

import sys

import torch

from engine import recipe
from engine.graph import build
from engine.losses import LossRuntime
from engine.optim import make_optimizer
from engine.recipe.specs import OptimSpec
from engine.train import distributed as ddp
from engine.train.step import SAEHDStep


def fixed_batch(n: int, res: int) -> dict:
    g = torch.Generator().manual_seed(123)
    b = {}
    for side in ("src", "dst"):
        b[f"warped_{side}"] = torch.rand(n, 3, res, res, generator=g)
        b[f"target_{side}"] = torch.rand(n, 3, res, res, generator=g)
        b[f"target_{side}m"] = (torch.rand(n, 1, res, res, generator=g) > 0.3).float()
        b[f"target_{side}m_em"] = (torch.rand(n, 1, res, res, generator=g) > 0.8).float()
    return b


def one_step(r, batch, info) -> dict:
    torch.manual_seed(0)
    model = build(r)
    ddp.broadcast_module(model, info)
    opt = ddp.GuardedOptimizer(make_optimizer(list(model.parameters()), OptimSpec(name="rmsprop", lr=1e-3)), info)
    rt = LossRuntime(resolution=r.model.resolution, kernels=r.compile.kernels)
    SAEHDStep(model=model, g_opt=opt, loss=r.loss, runtime=rt)(batch)
    # the gradients the optimizer applied (after the all-reduce), and the updated weights
    out = {"grad." + n: p.grad.detach().clone() for n, p in model.named_parameters()}
    out.update({"weight." + n: p.detach().clone() for n, p in model.named_parameters()})
    return out


if __name__ == "__main__":
    out, recipe_path = sys.argv[1], sys.argv[2]
    r = recipe.load(recipe_path)
    info = ddp.setup("cpu")
    full = fixed_batch(4, r.model.resolution)
    per = 4 // info.world
    half = {k: v[info.rank * per:(info.rank + 1) * per] for k, v in full.items()}
    sd = one_step(r, half, info)
    if info.is_main:
        torch.save(sd, out)
    ddp.cleanup(info)
