"""DFL's optimizers, RMSprop and AdaBelief (docs/dfl.md §3.6, §12.2), as `torch.optim.Optimizer` subclasses.

Formulas (per element; no bias correction, no weight decay, ε outside the square root):

    RMSprop    a ← ρ·a + (1−ρ)·g²                      Δ = lr_t·g / (√a + ε)
    AdaBelief  m ← β1·m + (1−β1)·g
               s ← β2·s + (1−β2)·(g − m)²  (updated m, no ε inside s)
                                                        Δ = lr_t·m / (√s + ε)
    w ← w − Δ·mask

* ``lr_cos`` (period P > 0): ``lr_t = lr·(cos(it·2π/P) + 1)/2`` with `it` the optimizer's own counter.
  DFL reads its counter in the same op group that increments it, so TF leaves old-or-new undefined;
  here `it` is the value **before** this step's increment (0 on the first step).
* ``lr_dropout`` (p < 1): a fresh Bernoulli(p) mask per element and step multiplies Δ (the moments are
  still updated everywhere). Masks come from a per-device `torch.Generator` seeded from `seed` and saved
  in `state_dict`, so a resumed run draws the same masks. DFL compares a float16 uniform with p, so its
  probability is p rounded to float16's 1/1024 grid (≈ 0.3008 for 0.3); here it is p exactly. The random
  streams differ from TF's anyway.
* ``clipnorm`` (> 0): the global L2 norm over all gradients of this optimizer; if ``norm ≥ clipnorm`` every
  gradient is scaled by ``clipnorm/norm`` (used for the update only; ``p.grad`` is left untouched).
  Computed on device without a host sync.

State per parameter: RMSprop ``acc``; AdaBelief ``ms``, ``vs`` (DFL's ``acc_…``, ``ms_…``, ``vs_…``);
the counter is `iterations` (DFL's ``iters``). The update itself is kernels.dfl_update's, once per (device,
dtype) bucket: a fused C pass on the CPU, torch._foreach ops elsewhere or with lr_dropout on, the per-tensor
reference on request (chosen there by `kernels` / $TORCHSAE_KERNELS like the other kernels; the same
formulas, float32 rounding apart).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch.optim import Optimizer

from kernels import dfl_update
from kernels.dispatch import check_request

__all__ = ["DFLOptimizer", "RMSprop", "AdaBelief", "global_grad_norm", "clip_scale"]


def global_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """``sqrt(Σ_tensors Σ g²)`` as a float32 0-dim tensor on the first gradient's device (no host sync)."""
    if not grads:
        return torch.zeros(())
    by_dev: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    for g in grads:
        by_dev[g.device].append(g)
    dev0 = grads[0].device
    sq = []
    for dev, gs in by_dev.items():
        norms = torch._foreach_norm([g.float() if g.dtype != torch.float32 else g for g in gs])
        sq.append(torch.stack(norms).square().sum().to(dev0))
    return torch.stack(sq).sum().sqrt()


def clip_scale(norm: torch.Tensor, clipnorm: float) -> torch.Tensor:
    """DFL's clip factor: ``clipnorm/norm`` where ``norm ≥ clipnorm``, else 1 (a 0-dim tensor)."""
    return torch.where(norm >= clipnorm, clipnorm / norm, torch.ones_like(norm))


class DFLOptimizer(Optimizer):
    """Common machinery of DFL's optimizers: lr_cos, lr_dropout masks (seeded, saved), clipnorm, counter.

    Subclasses name their kernels.dfl_update kind, their state slots, and which param-group keys are the
    update's hyper-parameters.
    """

    _kind: str = ""  # kernels.dfl_update kind: "rmsprop" | "adabelief"
    _state_keys: tuple[str, ...] = ()
    _hyper: dict[str, str] = {}  # dfl_update.update_ argument -> param-group key

    def __init__(self, params, defaults: dict, *, lr_cos: int = 0, clipnorm: float = 0.0, seed: int | None = None,
                 kernels: str = "auto"):
        if defaults["lr"] < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {defaults['lr']!r}")
        if not 0.0 < defaults["lr_dropout"] <= 1.0:
            raise ValueError(f"{type(self).__name__}: lr_dropout is the keep probability in (0, 1] "
                             f"(1.0 = off, DFL 0.3), got {defaults['lr_dropout']!r}")
        if lr_cos < 0 or int(lr_cos) != lr_cos:
            raise ValueError(f"{type(self).__name__}: lr_cos must be a period >= 0 in steps, got {lr_cos!r}")
        if clipnorm < 0:
            raise ValueError(f"{type(self).__name__}: clipnorm must be >= 0, got {clipnorm!r}")
        super().__init__(params, defaults)
        self.lr_cos = int(lr_cos)
        self.clipnorm = float(clipnorm)
        self.kernels = check_request(kernels, "optimizer kernels")
        self.iterations = 0
        if seed is None:
            # drawn from torch's global RNG, so torch.manual_seed makes a run reproducible
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_rng: dict[str, torch.Tensor] = {}
        self.last_grad_norm: torch.Tensor | None = None

    # ---- random masks ----
    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            # one stream per device, derived from the seed
            gen.manual_seed((self.seed + 1_000_003 * (device.index or 0) + (7 if device.type != "cpu" else 0))
                            % (2**63))
            if key in self._pending_rng:
                gen.set_state(self._pending_rng.pop(key))
            self._generators[key] = gen
        return gen

    def lr_at(self, group: dict, iteration: int | None = None) -> float:
        """lr_t of `group` at `iteration` (default: the coming step), with lr_cos applied."""
        it = self.iterations if iteration is None else iteration
        lr = group["lr"]
        if self.lr_cos:
            lr = lr * (math.cos(it * (2 * math.pi / self.lr_cos)) + 1.0) / 2.0
        return lr

    # ---- step ----
    def _init_state(self, p: torch.Tensor) -> dict:
        st = self.state[p]
        if not st:
            for k in self._state_keys:
                st[k] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        all_grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        for gr in all_grads:
            if gr.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
        scale_by_dev: dict[torch.device, torch.Tensor] = {}
        if self.clipnorm > 0 and all_grads:
            norm = global_grad_norm(all_grads)
            self.last_grad_norm = norm
            scale = clip_scale(norm, self.clipnorm)
        else:
            scale = None
        for group in self.param_groups:
            lr_t = self.lr_at(group)
            buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    buckets[(p.device, p.dtype)].append(p)
            for (dev, _dt), params in buckets.items():
                s = None
                if scale is not None:
                    s = scale_by_dev.get(dev)
                    if s is None:
                        s = scale_by_dev[dev] = scale.to(dev)
                states = [self._init_state(p) for p in params]
                keep = group["lr_dropout"]
                dfl_update.update_(self._kind, params, [p.grad for p in params],
                                   [[st[k] for st in states] for k in self._state_keys], lr=lr_t, grad_scale=s,
                                   keep_prob=keep, generator=self._generator(dev) if keep < 1.0 else None,
                                   impl=self.kernels, **{arg: group[key] for arg, key in self._hyper.items()})
        self.iterations += 1
        return loss

    # ---- state ----
    def state_dict(self) -> dict:
        sd = super().state_dict()
        rng = {k: g.get_state() for k, g in self._generators.items()}
        rng.update({k: v for k, v in self._pending_rng.items() if k not in rng})
        sd["dfl"] = {"iterations": int(self.iterations), "seed": int(self.seed), "rng": rng,
                     "lr_cos": self.lr_cos, "clipnorm": self.clipnorm}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        extra = sd.pop("dfl", None)
        super().load_state_dict(sd)
        if extra is not None:
            self.iterations = int(extra["iterations"])
            self.seed = int(extra["seed"])
            self.lr_cos = int(extra.get("lr_cos", self.lr_cos))
            self.clipnorm = float(extra.get("clipnorm", self.clipnorm))
            self._generators = {}
            self._pending_rng = {k: torch.as_tensor(v, dtype=torch.uint8).cpu() for k, v in extra["rng"].items()}


class RMSprop(DFLOptimizer):
    """DFL ``nn.RMSprop`` (§3.6): ``a ← ρa + (1−ρ)g²``, ``w ← w − lr_t·g/(√a + ε)``.

    Args: lr 5e-5, rho 0.9, eps 1e-6 (= np.finfo(float32).resolution), lr_dropout 1.0 (keep probability,
    DFL uses 0.3 when on), lr_cos 0 (DFL uses 500 with lr_dropout), clipnorm 0 (DFL 1.0 with clipgrad),
    seed for the dropout masks.
    """

    _kind = "rmsprop"
    _state_keys = ("acc",)
    _hyper = {"eps": "eps", "c1": "rho"}

    def __init__(self, params: Iterable, lr: float = 5e-5, rho: float = 0.9, eps: float = 1e-6,
                 lr_dropout: float = 1.0, lr_cos: int = 0, clipnorm: float = 0.0, seed: int | None = None,
                 kernels: str = "auto"):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, lr_dropout=lr_dropout),
                         lr_cos=lr_cos, clipnorm=clipnorm, seed=seed, kernels=kernels)


class AdaBelief(DFLOptimizer):
    """DFL ``nn.AdaBelief`` (§3.6): ``m ← β1m + (1−β1)g``, ``s ← β2s + (1−β2)(g − m)²``,
    ``w ← w − lr_t·m/(√s + ε)``; no bias correction.

    Args: lr 5e-5, beta_1 0.9, beta_2 0.999, eps 1e-6, lr_dropout 1.0, lr_cos 0, clipnorm 0, seed.
    """

    _kind = "adabelief"
    _state_keys = ("ms", "vs")
    _hyper = {"eps": "eps", "c1": "beta_1", "c2": "beta_2"}

    def __init__(self, params: Iterable, lr: float = 5e-5, beta_1: float = 0.9, beta_2: float = 0.999,
                 eps: float = 1e-6, lr_dropout: float = 1.0, lr_cos: int = 0, clipnorm: float = 0.0,
                 seed: int | None = None, kernels: str = "auto"):
        super().__init__(params, dict(lr=lr, beta_1=beta_1, beta_2=beta_2, eps=eps, lr_dropout=lr_dropout),
                         lr_cos=lr_cos, clipnorm=clipnorm, seed=seed, kernels=kernels)
