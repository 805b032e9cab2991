"""DFL optimizer update (spec §3.6) over the parameters of recipes/df128.toml (df-ud res 128,
256/64/64/22: 54.5M float32 parameters in the model's own shapes, channels_last as trained), one step.

Figures (benchmark.group) and providers (extra_info["provider"]):
  "dfl update adabelief df128"  reference  engine.optim.AdaBelief(kernels="reference"): the torch._foreach path
                                fast       AdaBelief(kernels="fast"): kernels/dfl_update's fused C pass
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


@pytest.mark.parametrize("provider", ["reference", "fast"])
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
    assert opt.iterations > 1
