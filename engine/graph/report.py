"""`describe()`: what a recipe's network is — nodes, shapes on every edge, parameters, derived values.

The model is built on the meta device (no memory, no compute) and each node is run on a meta tensor of
its input shape with hooks on the blocks, so the layer shapes shown are the modules' real ones and the
parameter counts are exact (they equal DFL's, docs/dfl.md §2.5–2.7, checked by tests/graph/test_params.py).

Derived values (computed, never written in a recipe):
  dssim_windows       int(R/11.6), and from R >= 256 also int(R/23.2) (docs/dfl.md §3.4)
  mask_blur_sigma     σm = max(1, R//32), kernel max(3, int(4σ)) made odd (docs/dfl.md §3.3, §4.2)
  style_blur_radius   R//8 (face-style loss blur, docs/dfl.md §3.4)
  blur_out_sigma      R/128 (blur_out_mask, docs/dfl.md §3.2)
  gan_patch_size_default  R//8 (docs/dfl.md §1)
  code_res            spatial size of the codes (the true-face discriminator's input, docs/dfl.md §3.5)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.graph.model import SwapModel
from engine.graph.plan import GraphPlan, fmt_shape, model_spec_of, plan
from engine.modules import Act, Downscale, ResidualBlock, Upscale
from engine.recipe.graph_spec import IMAGE

__all__ = ["derived_values", "describe", "render"]


def _blur_kernel(sigma: float) -> int:
    ks = max(3, int(4 * sigma))
    return ks + 1 if ks % 2 == 0 else ks


def derived_values(resolution: int) -> dict[str, Any]:
    """Resolution-derived loss settings (see module docstring)."""
    R = int(resolution)
    wins = [int(R / 11.6)] + ([int(R / 23.2)] if R >= 256 else [])
    sm = max(1, R // 32)
    return {
        "dssim_windows": wins,
        "mask_blur_sigma": sm,
        "mask_blur_kernel": _blur_kernel(sm),
        "style_blur_radius": R // 8,
        "style_blur_kernel": _blur_kernel(R // 8),
        "blur_out_sigma": R / 128,
        "gan_patch_size_default": R // 8,
    }


def _act_name(block: nn.Module) -> str:
    act = getattr(block, "act", None)
    if isinstance(act, Act):
        return "x·cos(x)" if act.use_cos else f"lrelu {act.slope:g}"
    return ""


def _conv_op(conv: nn.Conv2d) -> str:
    k, s = conv.kernel_size[0], conv.stride[0]
    return f"conv{k}×{k}" + (f" s{s}" if s != 1 else "") + f" {conv.in_channels}→{conv.out_channels}"


def _op(m: nn.Module) -> str:
    if isinstance(m, Downscale):
        return f"{_conv_op(m.conv1)}, {_act_name(m)}"
    if isinstance(m, Upscale):
        return f"{_conv_op(m.conv1)}, {_act_name(m)}, d2s"
    if isinstance(m, ResidualBlock):
        return f"res 2× {_conv_op(m.conv1)}, {_act_name(m)}"
    if isinstance(m, nn.Conv2d):
        return _conv_op(m)
    if isinstance(m, nn.Linear):
        return f"dense {m.in_features}→{m.out_features}"
    return type(m).__name__


def _layer_rows(module: nn.Module, in_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Run ``module`` on a meta tensor and record each block's output shape and parameters."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    hooks = []
    blocks = (Downscale, Upscale, ResidualBlock)

    def top_level(name: str) -> bool:
        # a leaf conv/dense inside a recorded block is covered by that block's row
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        while parent:
            if isinstance(module.get_submodule(parent), blocks):
                return False
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
        return True

    for name, m in module.named_modules():
        if not name or not (isinstance(m, blocks) or isinstance(m, (nn.Conv2d, nn.Linear))) or not top_level(name):
            continue

        def hook(mod, args, out, name=name):
            if name in seen:
                return
            seen.add(name)
            rows.append({"name": name, "op": _op(mod), "out_shape": list(out.shape[1:]),
                         "params": sum(p.numel() for p in mod.parameters())})

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            module(torch.empty((1, *in_shape), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    # creation order (= DFL's variable order), not call order
    order = {name: i for i, (name, _) in enumerate(module.named_modules())}
    rows.sort(key=lambda r: order[r["name"]])
    return rows


def describe(recipe_or_model_spec: Any) -> dict[str, Any]:
    """A JSON-able description of the recipe's network (see `render` for the text form)."""
    ms, _source = model_spec_of(recipe_or_model_spec)
    p: GraphPlan = plan(recipe_or_model_spec)
    model = SwapModel(p, ms, device="meta")
    R = p.resolution
    parts = model.parts()
    nodes, edges = [], []
    for n in p.nodes:
        module = parts.get(n.name)
        entry: dict[str, Any] = {
            "name": n.name, "type": n.type, "opts": n.opts,
            "inputs": list(n.sources), "in_shapes": [list(s) for s in n.in_shapes],
            "out_shape": list(n.out_shape),
            "params": sum(t.numel() for t in module.parameters()) if module is not None else 0,
        }
        if n.type == "decoder":
            entry["mask_shape"] = [1, R, R]
        if n.type == "adapter":
            entry["kind"], entry["hidden"] = n.args["kind"], n.args["hidden"]
        entry["layers"] = _layer_rows(module, n.in_shapes[0]) if module is not None else []
        nodes.append(entry)
        for s in n.sources:
            shape = (3, R, R) if s == IMAGE else p.node(s).out_shape
            edges.append({"from": s, "to": n.name, "shape": list(shape)})
    idents = []
    for ident in p.graph.identities:
        cs = p.code_shapes[ident.name]
        idents.append({"name": ident.name, "code": ident.code, "code_shape": list(cs), "decoder": ident.decoder,
                       "image_shape": [3, R, R], "mask_shape": [1, R, R]})
        edges.append({"from": ident.code, "to": ident.decoder, "shape": list(cs), "identity": ident.name})
    swap_node = p.graph.identity("dst" if p.graph.swap_code == "source" else "src").code
    per_part = {name: entry["params"] for name, entry in ((e["name"], e) for e in nodes) if name in parts}
    code_res = sorted({cs[1] for cs in p.code_shapes.values() if len(cs) == 3})
    derived = derived_values(R)
    derived["code_res"] = code_res[0] if len(code_res) == 1 else code_res
    return {
        "model": {k: getattr(ms, k) for k in ("archi", "resolution", "face_type", "ae_dims", "e_dims", "d_dims",
                                              "d_mask_dims")},
        "graph": "preset" if p.preset else "explicit",
        "dfl_archi": p.dfl_archi,
        "swap_code": p.graph.swap_code,
        "swap": {"code": swap_node, "decoder": p.graph.identity("src").decoder,
                 "code_shape": list(p.node(swap_node).out_shape)},
        "nodes": nodes,
        "edges": edges,
        "identities": idents,
        "params": {"parts": per_part, "total": sum(per_part.values())},
        "derived": derived,
    }


def _n(x: int) -> str:
    return f"{x:,}"


def render(d: dict[str, Any]) -> str:
    """Stable, diff-friendly text of `describe()` (the golden graph dumps are this text)."""
    m = d["model"]
    lines = [
        f"model: archi {m['archi']}, resolution {m['resolution']}, face_type {m['face_type']}, "
        f"ae_dims {m['ae_dims']}, e_dims {m['e_dims']}, d_dims {m['d_dims']}, d_mask_dims {m['d_mask_dims']}",
        f"graph: {d['graph']}" + (f" (DFL archi {d['dfl_archi']})" if d["dfl_archi"] else " (not a DFL archi)")
        + f", swap_code {d['swap_code']}",
        "",
        "nodes:",
    ]
    width = max(12, max((len(r["name"]) for e in d["nodes"] for r in e["layers"]), default=0) + 4)
    for e in d["nodes"]:
        ins = ", ".join(f"{s} {fmt_shape(sh)}" for s, sh in zip(e["inputs"], e["in_shapes"]))
        extra = f" kind {e['kind']} hidden {e['hidden']}" if e["type"] == "adapter" else ""
        opts = f" opts '{e['opts']}'" if e["type"] != "concat" else ""
        out = fmt_shape(e["out_shape"]) + (f" + mask {fmt_shape(e['mask_shape'])}" if "mask_shape" in e else "")
        src = f"{ins} -> " if ins else "identity codes -> "
        lines.append(f"  {e['name']} [{e['type']}{opts}{extra}]  {src}{out}  params {_n(e['params'])}")
        for r in e["layers"]:
            lines.append(f"    {r['name']:<{width}} {r['op']:<34} -> {fmt_shape(r['out_shape']):<14} "
                         f"{_n(r['params']):>12}")
    lines += ["", "identities:"]
    for i in d["identities"]:
        lines.append(f"  {i['name']}: code {i['code']} {fmt_shape(i['code_shape'])} -> {i['decoder']} -> image "
                     f"{fmt_shape(i['image_shape'])}, mask {fmt_shape(i['mask_shape'])}")
    s = d["swap"]
    lines.append(f"  swap (dst face rendered as src): code {s['code']} {fmt_shape(s['code_shape'])} on the dst face "
                 f"-> {s['decoder']}")
    lines += ["", "edges:"]
    for e in d["edges"]:
        via = f"  (identity {e['identity']})" if "identity" in e else ""
        lines.append(f"  {e['from']} -> {e['to']}: {fmt_shape(e['shape'])}{via}")
    lines += ["", "parameters:"]
    for name, n in d["params"]["parts"].items():
        lines.append(f"  {name:<24} {_n(n):>14}")
    lines.append(f"  {'total':<24} {_n(d['params']['total']):>14}")
    lines += ["", "derived:"]
    for k, v in d["derived"].items():
        lines.append(f"  {k}: {v}")
    return "\n".join(lines) + "\n"
