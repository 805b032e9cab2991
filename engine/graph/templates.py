"""DFL's archi presets as graphs (docs/dfl.md §2.4): ``df(model_spec)`` and ``liae(model_spec)``. No torch.

A preset is an ordinary `GraphSpec`; opts letters (u, d, t, c) come from [model].archi through the
nodes' default ``opts``, dims from [model]. Node order is DFL's part save order (docs/dfl.md §8.1), so
``SwapModel.parts()`` lists encoder, inter, decoder_src, decoder_dst (DF) or encoder, inter_AB, inter_B,
decoder (LIAE).

DF:   src_code = inter(encoder(x_src)),  dst_code = inter(encoder(x_dst))
      decoder_src renders src, decoder_dst renders dst; swap = decoder_src(dst_code)  (swap_code "source")
LIAE: code_src = [inter_AB | inter_AB],  code_dst = [inter_B | inter_AB]  (channel concat, first half first)
      one decoder (in 4*ae); swap = decoder([AB(x_dst) | AB(x_dst)]), i.e. src's code path on the dst face
      (swap_code "target"). Inters have ae_out_ch = 2*ae_dims.
"""

from __future__ import annotations

from typing import Any

from engine.recipe.graph_spec import GraphSpec, IdentitySpec, NodeSpec

__all__ = ["df", "liae", "PRESETS", "preset_graph"]


def df(model_spec: Any) -> GraphSpec:
    """DFL's DF wiring: shared encoder + inter, one decoder per identity."""
    return GraphSpec(
        nodes=(
            NodeSpec(name="encoder", type="encoder"),
            NodeSpec(name="inter", type="inter", input="encoder"),
            NodeSpec(name="decoder_src", type="decoder"),
            NodeSpec(name="decoder_dst", type="decoder"),
        ),
        identities=(
            IdentitySpec(name="src", code="inter", decoder="decoder_src"),
            IdentitySpec(name="dst", code="inter", decoder="decoder_dst"),
        ),
        swap_code="source",
    )


def liae(model_spec: Any) -> GraphSpec:
    """DFL's LIAE wiring: shared encoder, inter_AB (both) + inter_B (dst only), one shared decoder."""
    out_ch = 2 * int(model_spec.ae_dims)
    return GraphSpec(
        nodes=(
            NodeSpec(name="encoder", type="encoder"),
            NodeSpec(name="inter_AB", type="inter", input="encoder", out_ch=out_ch),
            NodeSpec(name="inter_B", type="inter", input="encoder", out_ch=out_ch),
            NodeSpec(name="code_src", type="concat", inputs=("inter_AB", "inter_AB")),
            NodeSpec(name="code_dst", type="concat", inputs=("inter_B", "inter_AB")),
            NodeSpec(name="decoder", type="decoder"),
        ),
        identities=(
            IdentitySpec(name="src", code="code_src", decoder="decoder"),
            IdentitySpec(name="dst", code="code_dst", decoder="decoder"),
        ),
        swap_code="target",
    )


PRESETS = {"df": df, "liae": liae}


def preset_graph(model_spec: Any) -> GraphSpec:
    """Expand ``model_spec.archi`` (``df|liae[-opts]``) into its graph."""
    kind = str(model_spec.archi).split("-")[0]
    return PRESETS[kind](model_spec)
