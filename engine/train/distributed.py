"""DDP through torchrun: process group setup, parameter broadcast, gradient all-reduce.

How the batch is split: `[train].batch_size` is the *global* batch. Each of the W ranks draws its own
batch_size/W samples (the loader is sharded by rank), computes its per-sample losses, and backpropagates
their sum. Gradients are then all-reduced with SUM, so every rank applies exactly the gradient a single
process would compute for the combined batch (SAEHD differentiates the batch *sum*, docs/dfl.md §12.1; DFL's
multi-GPU path averages per-GPU gradients instead, which scales the gradient by 1/W — we don't copy that,
so changing the GPU count does not change the optimisation). The models are batch-norm free, so nothing
else needs synchronising. Only global rank 0 writes checkpoints, previews and logs (`is_main` is the
global rank; the local rank only picks the GPU), so on several nodes exactly one process writes.

We all-reduce in the optimizer step (`GuardedOptimizer`) rather than wrapping the model in
DistributedDataParallel because SAEHD's step calls `forward_train`, `code` and `decode` — not
`forward` — which DDP's hooks would not see.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("torchsae.train")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device_type: str) -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    info = DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    log.info("DDP: rank %d of %d (%s)", info.rank, info.world, dist.get_backend())
    return info


def broadcast_module(module: torch.nn.Module, info: DistInfo) -> None:
    """Rank 0's weights everywhere (identical starts even if initialisation differed)."""
    if info.enabled:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def allreduce_grads_(params: list[torch.Tensor], info: DistInfo) -> None:
    """Sum every gradient across ranks, in one flat bucket per dtype (few collectives)."""
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n


def allreduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of `t` over every rank (a collective; a copy, `t` is left as it is)."""
    if not info.enabled:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank (a collective: all ranks call it)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def agree(flag: bool, info: DistInfo) -> bool:
    """Global rank 0's `flag` on every rank (a collective), for decisions that lead into collectives
    (saving gathers every rank's loader state): a wall-clock timer may fire on one rank a step before
    another."""
    if not info.enabled:
        return bool(flag)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


class GuardedOptimizer:
    """Wraps an optimizer: all-reduce gradients (DDP), then skip the update when any gradient is
    non-finite (the NaN/inf guard). `skipped` tells the loop what happened on the last step.

    Looks like the wrapped optimizer to GradScaler (param_groups, state, step, zero_grad)."""

    def __init__(self, opt: torch.optim.Optimizer, info: DistInfo):
        self.opt = opt
        self.info = info
        self.skipped = False
        self.guard_norm: torch.Tensor | None = None  # global gradient norm of the last step (after all-reduce)

    def __getattr__(self, name):
        return getattr(self.opt, name)

    @property
    def param_groups(self):
        return self.opt.param_groups

    @property
    def state(self):
        return self.opt.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.opt.state_dict()

    def load_state_dict(self, sd):
        self.opt.load_state_dict(sd)

    def step(self, closure=None):
        params = [p for g in self.opt.param_groups for p in g["params"]]
        allreduce_grads_(params, self.info)
        grads = [p.grad for p in params if p.grad is not None]
        self.guard_norm = None
        if grads:
            # one fused pass: the global norm is non-finite iff some gradient element is inf/nan; the
            # training step reports this norm instead of computing it again (`guard_norm`)
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            self.guard_norm = norm
            if not bool(torch.isfinite(norm)):
                self.skipped = True
                return None
        self.skipped = False
        return self.opt.step()
