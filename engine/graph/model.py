"""`SwapModel`: a planned graph as one nn.Module with DFL's part names and SAEHD's forward (docs/dfl.md §2.4).

Images are NCHW float32 BGR in [0, 1]; masks (N, 1, R, R) in [0, 1].

Parts are attributes named after the graph's nodes, so a DFL preset exposes ``model.encoder``,
``model.inter`` / ``model.inter_AB`` + ``model.inter_B``, ``model.decoder_src`` + ``model.decoder_dst`` /
``model.decoder`` and the state-dict keys read ``encoder.down1.downs_0.conv1.weight`` (DFL:
``encoder/down1/downs_0/conv1/weight:0``).

Execution. Nodes run in graph order. When the src and dst batches go through the same node (DF's
encoder and inter, LIAE's encoder and inter_AB) they are concatenated and run once; a decoder that
renders several codes (DF's decoder_src: src_code and the swap code; LIAE's decoder: all three codes)
also runs once on the concatenation. This is the same math as DFL's separate calls (every op is
per-sample: convs, dense, pixel_norm) with fewer, larger kernels. All control flow is static Python over
the fixed graph, so ``torch.compile(fullgraph=True)`` captures forward_train and swap whole.

forward_train(warped_src, warped_dst) returns (DFL's tensor names, docs/dfl.md §2.4):
  src_code, dst_code           each identity's code on its own warped batch (DF: inter outputs,
                               (ae, r, r); LIAE: [AB|AB] and [B|AB], (4ae, r, r))
  src_dst_code                 the swap code: DF = dst_code; LIAE = [AB(dst)|AB(dst)]
  pred_src_src, pred_src_srcm  src decoder on src_code: image (N,3,R,R), mask (N,1,R,R)
  pred_dst_dst, pred_dst_dstm  dst decoder on dst_code
  pred_src_dst, pred_src_dstm  src decoder on src_dst_code (the swap)
  pred_src_dst_no_code_grad    only with ``no_code_grad=True``: src decoder's image on
                               src_dst_code.detach() (face-style loss; gradients reach the decoder only)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from engine.errors import RecipeError
from engine.graph.plan import GraphPlan
from engine.modules import Adapter, Decoder, Encoder, Inter
from engine.recipe.graph_spec import IMAGE

__all__ = ["SwapModel"]

log = logging.getLogger("torchsae.graph")


def _make_module(node, device) -> nn.Module | None:
    a = node.args
    if node.type == "encoder":
        return Encoder(a["in_ch"], a["e_ch"], a["opts"], device=device)
    if node.type == "inter":
        return Inter(a["in_features"], a["ae_ch"], a["ae_out_ch"], a["resolution"], a["opts"], device=device)
    if node.type == "adapter":
        return Adapter(a["in_shape"], a["kind"], a["hidden"], a["opts"], device=device)
    if node.type == "decoder":
        return Decoder(a["in_ch"], a["d_ch"], a["d_mask_ch"], a["opts"], device=device)
    return None  # concat: no parameters


class SwapModel(nn.Module):
    """The face-swap network of a recipe (build it with ``engine.graph.build``)."""

    def __init__(self, plan: GraphPlan, model_spec: Any = None, *, device=None):
        super().__init__()
        self.plan = plan
        self.model_spec = model_spec
        self.resolution = plan.resolution
        self.swap_code = plan.graph.swap_code
        self.dfl_archi = plan.dfl_archi
        self.identities = tuple(i.name for i in plan.graph.identities)
        self.code_shapes = dict(plan.code_shapes)
        self._ident = {i.name: (i.code, i.decoder) for i in plan.graph.identities}
        self._nodes = [n for n in plan.nodes if n.type != "decoder"]  # latent nodes, evaluation order
        self._deps: dict[str, tuple[str, ...]] = {}
        for n in plan.nodes:
            if n.type == "decoder":
                continue
            deps = [n.name]
            for s in n.sources:
                if s != IMAGE:
                    deps.extend(d for d in self._deps[s] if d not in deps)
            self._deps[n.name] = tuple(deps)
        for n in plan.nodes:
            if hasattr(self, n.name):
                raise RecipeError(getattr(model_spec, "source", None), f"graph.nodes[{n.index}].name",
                                  f"node name '{n.name}' clashes with a SwapModel attribute", "pick another name")
            m = _make_module(n, device)
            if m is not None:
                self.add_module(n.name, m)

    # -----------------------------------------------------------------------------------------------------
    # structure

    def parts(self) -> dict[str, nn.Module]:
        """Parameter-holding nodes in graph order = DFL's save order for presets
        (DF: encoder, inter, decoder_src, decoder_dst; LIAE: encoder, inter_AB, inter_B, decoder)."""
        return {n.name: getattr(self, n.name) for n in self.plan.nodes if n.name in self._modules}

    def decoder_of(self, identity: str) -> Decoder:
        """The decoder module that renders ``identity``."""
        return getattr(self, self._ident[identity][1])

    # -----------------------------------------------------------------------------------------------------
    # execution

    def _latents(self, images: dict[str, torch.Tensor], wants: dict[str, tuple[str, ...]]
                 ) -> dict[tuple[str, str], torch.Tensor]:
        """Evaluate latent nodes. ``images``: key -> (N, 3, R, R); ``wants``: key -> code nodes needed on it.

        Returns {(image key, node): tensor}. A node needed on several images runs once on their
        concatenation (same per-sample math, bigger kernels)."""
        need = {k: {d for w in ws for d in self._deps[w]} for k, ws in wants.items()}
        out: dict[tuple[str, str], torch.Tensor] = {}
        for n in self._nodes:
            keys = [k for k in images if n.name in need[k]]
            if not keys:
                continue
            # one input tensor list per source, each the concatenation over `keys`
            args = []
            for s in n.sources:
                parts = [images[k] if s == IMAGE else out[(k, s)] for k in keys]
                args.append(parts[0] if len(parts) == 1 else torch.cat(parts, 0))
            if n.type == "concat":
                y = torch.cat(args, 1)
            else:
                y = getattr(self, n.name)(args[0])
            if len(keys) == 1:
                out[(keys[0], n.name)] = y
            else:
                sizes = [images[k].shape[0] for k in keys]
                for k, part in zip(keys, torch.split(y, sizes, 0)):
                    out[(k, n.name)] = part
        return out

    def _decode_many(self, decoder: str, codes: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Run one decoder over several codes at once; returns [(image, mask)] in order."""
        dec = getattr(self, decoder)
        if len(codes) == 1:
            return [dec(codes[0])]
        img, mask = dec(torch.cat(codes, 0))
        sizes = [c.shape[0] for c in codes]
        return list(zip(torch.split(img, sizes, 0), torch.split(mask, sizes, 0)))

    def code(self, x: torch.Tensor, identity: str) -> torch.Tensor:
        """``identity``'s code node evaluated on images ``x`` (N, 3, R, R)."""
        node = self._ident[identity][0]
        return self._latents({"x": x}, {"x": (node,)})[("x", node)]

    def decode(self, z: torch.Tensor, identity: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Render latent ``z`` with ``identity``'s decoder: (image (N,3,R,R), mask (N,1,R,R))."""
        return self.decoder_of(identity)(z)

    def reconstruct(self, x: torch.Tensor, identity: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-identity reconstruction: faces of ``identity`` through its code path and decoder."""
        return self.decode(self.code(x, identity), identity)

    def _swap_code_node(self, src_id: str, dst_id: str) -> str:
        # "source": the face's own identity encodes it (DF, adapters); "target": the rendered identity's
        # code path runs on the face (LIAE's [AB|AB]).
        return self._ident[src_id if self.swap_code == "source" else dst_id][0]

    def translate(self, x: torch.Tensor, src_id: str, dst_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Faces ``x`` of identity ``src_id`` rendered as identity ``dst_id``: (image, mask).

        ``swap(x)`` is ``translate(x, "dst", "src")`` (DFL renders dst faces as src);
        ``translate(x, i, i)`` is ``reconstruct(x, i)``.
        """
        node = self._swap_code_node(src_id, dst_id)
        z = self._latents({"x": x}, {"x": (node,)})[("x", node)]
        return self.decode(z, dst_id)

    def forward_train(self, warped_src: torch.Tensor, warped_dst: torch.Tensor, *, no_code_grad: bool = False
                      ) -> dict[str, torch.Tensor]:
        """SAEHD's training forward (docs/dfl.md §2.4); see the module docstring for the returned names."""
        src_node, src_dec = self._ident["src"]
        dst_node, dst_dec = self._ident["dst"]
        swap_node = self._swap_code_node("dst", "src")
        lat = self._latents({"src": warped_src, "dst": warped_dst},
                            {"src": (src_node,), "dst": tuple(dict.fromkeys((dst_node, swap_node)))})
        src_code, dst_code, swap = lat[("src", src_node)], lat[("dst", dst_node)], lat[("dst", swap_node)]
        out = {"src_code": src_code, "dst_code": dst_code, "src_dst_code": swap}
        if src_dec == dst_dec:  # LIAE: one decoder renders all three codes in one call
            (ps, psm), (pd, pdm), (psd, psdm) = self._decode_many(src_dec, [src_code, dst_code, swap])
        else:
            (ps, psm), (psd, psdm) = self._decode_many(src_dec, [src_code, swap])
            ((pd, pdm),) = self._decode_many(dst_dec, [dst_code])
        out.update(pred_src_src=ps, pred_src_srcm=psm, pred_dst_dst=pd, pred_dst_dstm=pdm,
                   pred_src_dst=psd, pred_src_dstm=psdm)
        if no_code_grad:
            out["pred_src_dst_no_code_grad"] = getattr(self, src_dec).image(swap.detach())
        return out

    def swap(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference (docs/dfl.md §2.4 "Inference"): dst faces (N,3,R,R) ->
        (celeb_face (N,3,R,R), celeb_mask (N,1,R,R), face_mask (N,1,R,R)).

        celeb_* = src decoder on the swap code; face_mask = dst decoder's mask on dst's own code
        (DF: decoder_dst(dst_code)[1]; LIAE: decoder([B|AB])[1]). Only the mask branch runs for face_mask.
        """
        dst_node, dst_dec = self._ident["dst"]
        swap_node = self._swap_code_node("dst", "src")
        lat = self._latents({"x": face}, {"x": tuple(dict.fromkeys((swap_node, dst_node)))})
        celeb, celeb_mask = self.decode(lat[("x", swap_node)], "src")
        face_mask = getattr(self, dst_dec).mask(lat[("x", dst_node)])
        return celeb, celeb_mask, face_mask

    def forward(self, face: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """= ``swap(face)`` (the export/inference entry point)."""
        return self.swap(face)
