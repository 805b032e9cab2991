"""DFL optimizer update (docs/dfl.md §3.6) over the parameters of recipes/df128.toml (df-ud res 128,
256/64/64/22: 54.5M float32 parameters in the model's own shapes, channels_last as trained), one step.

Figures (benchmark.group) and providers (extra_info["provider"]), all through engine.optim's optimizer:
  "dfl update adabelief df128"  reference  AdaBelief(kernels="reference"): the formulas tensor by tensor
                                           (kernels/dfl_update/reference.py; test id "per-tensor": until the
                                           kernels layout of #14 this provider was the foreach path)
                                batched    AdaBelief(kernels="batched"): the torch._foreach path (batched.py)
                                fast       AdaBelief(kernels="fast"): on the CPU the fused C pass (cpu.py)
  "dfl update rmsprop df128"    the same for RMSprop
Gradients are fixed random tensors; lr_dropout off (DFL's default), clipnorm off. Memory-bound: on a box
shared with other jobs the ratio moves less than the absolute times.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.optim import AdaBelief, RMSprop

ROOT = Path(__file__).resolve().parents[2]
_PARAMS: list[torch.Tensor] = []


def _params() -> list[torch.Tensor]:
    if not _PARAMS:
        from engine import recipe
        from engine.graph import build

        torch.manual_seed(0)
        model = build(recipe.load(ROOT / "recipes" / "df128.toml")).to(memory_format=torch.channels_last)
        _PARAMS.extend(p.detach() for p in model.parameters())
    return _PARAMS


@pytest.mark.parametrize("provider", [pytest.param("reference", id="per-tensor"), "batched", "fast"])
@pytest.mark.parametrize("name", ["adabelief", "rmsprop"])
def test_dfl_update(benchmark, tag, name, provider):
    params = [torch.nn.Parameter(p.clone()) for p in _params()]
    g = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(memory_format=torch.preserve_format)
        if p.grad.stride() != p.stride():
            p.grad = p.grad.contiguous(memory_format=torch.channels_last)
    n = sum(p.numel() for p in params)
    tag(f"dfl update {name} df128", provider, params=n, threads=torch.get_num_threads())
    opt = (AdaBelief if name == "adabelief" else RMSprop)(params, kernels=provider)
    benchmark(opt.step)
    assert opt.iterations >= 1  # one call under --benchmark-disable (smoke), many when timed
