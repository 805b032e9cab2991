"""Shape inference over a graph: ModelSpec -> `GraphPlan` (resolved node settings and shapes). No torch.

Shapes are per sample (no batch), NCHW order: a flat code is ``(L,)``, a latent ``(C, H, W)``, an image
``(3, R, R)``. Rules (docs/dfl.md §2.3, R = resolution):

| node | input | output |
|---|---|---|
| encoder (e) | image (3, R, R) | (8e * (R/16)**2,), R/32 with t; R must divide by 16 (32 with t) |
| inter (ae, out_ch) | any (flattened to L) | (out_ch, r, r): lowest = R/32 (d) or R/16, r = 2*lowest (t: lowest) |
| adapter | (C, H, W) for conv1x1, any for dense | same as input |
| concat | (C_i, H, W) with equal H, W | (sum C_i, H, W) |
| decoder (d, dm) | codes of the identities it renders, (C, r, r) | image (3, r*f, r*f), f = 8 (t: 16), x2 with d; = R |

Every problem becomes a RecipeError whose key path names the node (``graph.nodes[3]``) or identity; for
preset archis (no [graph]) the key path is ``model.archi``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from engine.errors import RecipeError, RecipeErrors
from engine.graph.templates import PRESETS, preset_graph
from engine.recipe.graph_spec import IMAGE, GraphSpec

__all__ = ["PlannedNode", "GraphPlan", "model_spec_of", "graph_of", "plan", "check", "fmt_shape"]


def fmt_shape(shape: tuple[int, ...]) -> str:
    """(256, 16, 16) -> '256×16×16'."""
    return "×".join(str(s) for s in shape)


@attrs.frozen(kw_only=True)
class PlannedNode:
    """A node with everything resolved: opts, constructor arguments, input and output shapes."""

    index: int
    name: str
    type: str
    sources: tuple[str, ...]
    opts: str
    args: dict  # constructor keyword arguments of the module (see engine.graph.model._make_module)
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]  # decoders: the image shape; the mask is (1, R, R)


@attrs.frozen(kw_only=True)
class GraphPlan:
    """A checked graph: planned nodes in evaluation order, each identity's code shape, DFL compatibility."""

    graph: GraphSpec
    resolution: int
    nodes: tuple[PlannedNode, ...]
    code_shapes: dict  # identity -> code shape
    preset: bool  # True when expanded from [model].archi (no explicit [graph])
    dfl_archi: str | None  # the DFL archi string when the graph is exactly DFL's wiring, else None

    def node(self, name: str) -> PlannedNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


def model_spec_of(recipe_or_model_spec: Any) -> tuple[Any, str | None]:
    """(ModelSpec, source file) from a Recipe (has ``.model``) or a ModelSpec."""
    if hasattr(recipe_or_model_spec, "model") and hasattr(recipe_or_model_spec.model, "archi"):
        return recipe_or_model_spec.model, getattr(recipe_or_model_spec, "source", None)
    return recipe_or_model_spec, None


def graph_of(ms: Any) -> tuple[GraphSpec, bool]:
    """(graph, is_preset): the explicit [graph] if any, else the archi preset expanded."""
    g = getattr(ms, "graph", None)
    return (g, False) if g is not None else (preset_graph(ms), True)


def _opts_of(ms: Any) -> str:
    parts = str(ms.archi).split("-", 1)
    return parts[1] if len(parts) > 1 else ""


def plan(recipe_or_model_spec: Any) -> GraphPlan:
    """Resolve and shape-check the graph; raise RecipeError (one problem) or RecipeErrors (several)."""
    result, errors = _plan(recipe_or_model_spec)
    if errors:
        raise errors[0] if len(errors) == 1 else RecipeErrors(errors)
    return result


def check(recipe_or_model_spec: Any) -> list[RecipeError]:
    """Every shape problem of the graph (empty list when it builds). Torch-free, for `torchsae validate`."""
    return _plan(recipe_or_model_spec)[1]


def _plan(recipe_or_model_spec: Any) -> tuple[GraphPlan | None, list[RecipeError]]:
    ms, file = model_spec_of(recipe_or_model_spec)
    graph, preset = graph_of(ms)
    R = int(ms.resolution)
    default_opts = _opts_of(ms)
    errs: list[RecipeError] = []
    bad_letters = sorted(set(default_opts) - set("udtc"))
    if bad_letters:  # the recipe loader checks archi for presets; with an explicit graph only its letters matter
        return None, [RecipeError(file, "model.archi", f"archi = '{ms.archi}': unknown option(s) "
                                  f"{', '.join(repr(c) for c in bad_letters)}", "opts from u, d, t, c")]

    def where(i: int) -> str:
        return "model.archi" if preset else f"graph.nodes[{i}]"

    shapes: dict[str, tuple[int, ...]] = {IMAGE: (3, R, R)}
    planned: dict[str, PlannedNode] = {}
    bad: set[str] = set()
    for i, n in enumerate(graph.nodes):
        opts = default_opts if n.opts is None else n.opts
        if any(s in bad for s in n.sources):
            bad.add(n.name)  # an input already failed: don't pile up follow-on errors
            continue
        ins = tuple(shapes[s] for s in n.sources)
        args: dict[str, Any]
        out: tuple[int, ...] | None = None
        if n.type == "encoder":
            e = n.e_dims or int(ms.e_dims)
            div = 32 if "t" in opts else 16
            if R % div:
                errs.append(RecipeError(file, where(i), f"encoder '{n.name}' (opts {opts!r}) downsamples by {div}: "
                                        f"resolution {R} is not a multiple of {div}",
                                        f"use a resolution divisible by {div}"))
            else:
                out = (8 * e * (R // div) ** 2,)
            args = {"in_ch": 3, "e_ch": e, "opts": opts}
        elif n.type == "inter":
            ae = n.ae_dims or int(ms.ae_dims)
            out_ch = n.out_ch or int(ms.ae_dims)
            lowest = R // (32 if "d" in opts else 16)
            if lowest < 1:
                errs.append(RecipeError(file, where(i), f"inter '{n.name}' (opts {opts!r}) has no spatial size at "
                                        f"resolution {R}"))
            r = lowest if "t" in opts else 2 * lowest
            out = (out_ch, r, r)
            args = {"in_features": math.prod(ins[0]), "ae_ch": ae, "ae_out_ch": out_ch, "resolution": R,
                    "opts": opts}
        elif n.type == "adapter":
            kind = n.kind or "conv1x1"
            (shape,) = ins
            if kind == "conv1x1" and len(shape) != 3:
                errs.append(RecipeError(file, where(i), f"conv1x1 adapter '{n.name}' needs a C×H×W latent; input "
                                        f"'{n.sources[0]}' has shape {fmt_shape(shape)}",
                                        "use kind = \"dense\" on flat codes"))
            else:
                out = shape
            hidden = n.hidden or (shape[0] if kind == "conv1x1" else min(math.prod(shape), int(ms.ae_dims)))
            args = {"in_shape": shape, "kind": kind, "hidden": hidden, "opts": opts}
        elif n.type == "concat":
            flat = [s for s, sh in zip(n.sources, ins) if len(sh) != 3]
            if flat:
                errs.append(RecipeError(file, where(i), f"concat '{n.name}' joins C×H×W latents; "
                                        + ", ".join(f"'{s}' has shape {fmt_shape(shapes[s])}" for s in flat)))
            elif len({sh[1:] for sh in ins}) != 1:
                errs.append(RecipeError(file, where(i), f"concat '{n.name}' inputs differ in spatial size: "
                                        + ", ".join(f"'{s}' {fmt_shape(sh)}" for s, sh in zip(n.sources, ins))))
            else:
                out = (sum(sh[0] for sh in ins), *ins[0][1:])
            args = {}
        else:  # decoder: shapes come from the identities below
            args = {"d_ch": n.d_dims or int(ms.d_dims), "d_mask_ch": n.d_mask_dims or int(ms.d_mask_dims),
                    "opts": opts}
            out = (3, R, R)
        if out is None:
            bad.add(n.name)
            continue
        shapes[n.name] = out
        planned[n.name] = PlannedNode(index=i, name=n.name, type=n.type, sources=n.sources, opts=opts, args=args,
                                      in_shapes=ins, out_shape=out)

    # decoders: every code a decoder renders must have one shape, and render at R
    code_shapes = {ident.name: shapes.get(ident.code) for ident in graph.identities}
    feeds: dict[str, list[tuple[str, str]]] = {}  # decoder -> [(identity whose code, code node)]
    for ident in graph.identities:
        if graph.swap_code == "source":
            # translate(x, X -> Y) renders X's code with Y's decoder: every identity's code reaches every decoder
            for other in graph.identities:
                feeds.setdefault(ident.decoder, []).append((other.name, other.code))
        else:
            feeds.setdefault(ident.decoder, []).append((ident.name, ident.code))
    for dec, fed in feeds.items():
        if dec not in planned:
            continue
        i = planned[dec].index
        fed = [(who, c) for who, c in dict.fromkeys(fed) if c in shapes]
        if not fed:
            continue
        distinct = {shapes[c] for _, c in fed}
        if len(distinct) > 1:
            errs.append(RecipeError(file, where(i), f"decoder '{dec}' is fed codes of different shapes: "
                                    + ", ".join(f"{who} '{c}' {fmt_shape(shapes[c])}" for who, c in fed),
                                    "with swap_code = \"source\" every identity's code is rendered by every decoder"
                                    if graph.swap_code == "source" else ""))
            bad.add(dec)
            continue
        code_node = fed[0][1]
        cs = shapes[code_node]
        p = planned[dec]
        if len(cs) != 3:
            errs.append(RecipeError(file, where(i), f"decoder '{dec}' needs a C×H×W latent; {fed[0][0]}'s code "
                                    f"'{code_node}' has shape {fmt_shape(cs)}", "put an inter node in front"))
            bad.add(dec)
            continue
        f = (16 if "t" in p.opts else 8) * (2 if "d" in p.opts else 1)
        if (cs[1] * f, cs[2] * f) != (R, R):
            errs.append(RecipeError(file, where(i), f"decoder '{dec}' (opts {p.opts!r}) upsamples ×{f}: code "
                                    f"'{code_node}' of shape {fmt_shape(cs)} gives a {cs[1] * f}×{cs[2] * f} image, "
                                    f"expected {R}×{R}",
                                    f"feed it a {R // f}×{R // f} latent (inter/decoder opts must agree on d and t)"))
            bad.add(dec)
            continue
        planned[dec] = attrs.evolve(p, args={**p.args, "in_ch": cs[0]}, in_shapes=(cs,))
    if errs:
        return None, errs

    dfl_archi = None
    kind = str(ms.archi).split("-")[0]
    if preset or (kind in PRESETS and graph == PRESETS[kind](ms) and all(n.opts is None for n in graph.nodes)):
        dfl_archi = str(ms.archi)
    nodes = tuple(planned[n.name] for n in graph.nodes)
    return GraphPlan(graph=graph, resolution=R, nodes=nodes, code_shapes=code_shapes, preset=preset,
                     dfl_archi=dfl_archi), []
