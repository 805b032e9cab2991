"""Architecture as data: DFL presets, shape inference, the built model, describe().

A recipe (or its [model] table) becomes a `SwapModel` (nn.Module) with DFL's part names:

>>> import torch
>>> from engine.graph import build, describe, render
>>> from engine.recipe.specs import ModelSpec
>>> spec = ModelSpec(archi="df-ud", resolution=64, ae_dims=32, e_dims=8, d_dims=8, d_mask_dims=8)
>>> model = build(spec)
>>> list(model.parts())
['encoder', 'inter', 'decoder_src', 'decoder_dst']
>>> faces = torch.rand(2, 3, 64, 64)                       # NCHW BGR in [0, 1]
>>> out = model.forward_train(faces, faces)                 # warped src, warped dst
>>> tuple(out["pred_src_dst"].shape), tuple(out["pred_src_dstm"].shape)   # the swap and its mask
((2, 3, 64, 64), (2, 1, 64, 64))
>>> print(render(describe(spec)).splitlines()[0])         # nodes, shapes, parameter counts, derived values
model: archi df-ud, resolution 64, face_type f, ae_dims 32, e_dims 8, d_dims 8, d_mask_dims 8

The [graph] table's schema (`GraphSpec`, parsing, dumping) is part of the recipe: engine.recipe.graph_spec.
"""

from __future__ import annotations

from typing import Any

from engine.graph.model import SwapModel
from engine.graph.plan import GraphPlan, check, model_spec_of, plan
from engine.graph.report import describe, render
from engine.graph.templates import df, liae, preset_graph

__all__ = ["GraphPlan", "plan", "check", "df", "liae", "preset_graph", "build", "describe", "render", "SwapModel"]


def build(recipe_or_model_spec: Any, *, device=None) -> SwapModel:
    """Recipe or ModelSpec -> `SwapModel` with DFL's initialisation (glorot-uniform, zero bias).

    ``device="meta"`` builds without allocating (for parameter counts). Raises RecipeError /
    RecipeErrors naming the node (``graph.nodes[i]``) when the graph's shapes do not fit.
    """
    ms, _ = model_spec_of(recipe_or_model_spec)
    return SwapModel(plan(recipe_or_model_spec), ms, device=device)
