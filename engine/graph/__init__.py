"""Architecture as data: DFL presets, shape inference, the built model, describe().

    from engine.graph import build, describe, render
    model = build(recipe)                     # SwapModel (nn.Module), DFL part names
    out = model.forward_train(warped_src, warped_dst)
    print(render(describe(recipe)))           # nodes, shapes, parameter counts, derived values

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
