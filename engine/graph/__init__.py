"""Architecture as data: graph schema, DFL presets, shape inference, the built model, describe().

    from engine.graph import build, describe, render
    model = build(recipe)                     # SwapModel (nn.Module), DFL part names
    out = model.forward_train(warped_src, warped_dst)
    print(render(describe(recipe)))           # nodes, shapes, parameter counts, derived values

Torch-free entry points (safe for `torchsae validate`): `parse_graph_table`, `graph_to_dict`, `check`,
`plan`, `df`, `liae`. `build`, `describe`, `render`, `SwapModel` import torch on first use.
"""

from __future__ import annotations

from typing import Any

from engine.graph.plan import GraphPlan, check, plan
from engine.graph.spec import GraphSpec, IdentitySpec, NodeSpec, graph_to_dict, parse_graph_table
from engine.graph.templates import df, liae, preset_graph

__all__ = [
    "GraphSpec", "NodeSpec", "IdentitySpec", "parse_graph_table", "graph_to_dict",
    "GraphPlan", "plan", "check", "df", "liae", "preset_graph",
    "build", "describe", "render", "SwapModel",
]


def build(recipe_or_model_spec: Any, *, device=None):
    """Recipe or ModelSpec -> `SwapModel` with DFL's initialisation (glorot-uniform, zero bias).

    ``device="meta"`` builds without allocating (for parameter counts). Raises RecipeError /
    RecipeErrors naming the node (``graph.nodes[i]``) when the graph's shapes do not fit.
    """
    from engine.graph.model import SwapModel
    from engine.graph.plan import model_spec_of

    ms, _ = model_spec_of(recipe_or_model_spec)
    return SwapModel(plan(recipe_or_model_spec), ms, device=device)


def describe(recipe_or_model_spec: Any) -> dict:
    """Nodes, shapes at every edge, parameters per module and in total, derived values (see describe.py)."""
    from engine.graph.report import describe as _describe

    return _describe(recipe_or_model_spec)


def render(description: dict) -> str:
    """Stable text rendering of `describe()`'s dict."""
    from engine.graph.report import render as _render

    return _render(description)


def __getattr__(name: str):
    if name == "SwapModel":
        from engine.graph.model import SwapModel

        return SwapModel
    raise AttributeError(name)
