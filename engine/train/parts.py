"""Model-part surgery for training: which parameters train, which parts stay frozen ([train].freeze),
which start from another checkpoint ([train].init_parts), and DFL's re-initialisation of the inter(s) at
the pretrain -> normal switch (docs/dfl.md §11.6).

A part is a top-level child of the SwapModel (`model.parts()`: encoder, inter, decoder_src, ... or an
explicit graph's node names).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from engine.errors import CheckpointError, RecipeError, did_you_mean, first_line
from engine.modules.layers import glorot_init_
from engine.optim import freeze_untrainable, saehd_param_groups
from engine.recipe.specs import Recipe
from engine.train import checkpoint as ck
from engine.train import distributed as ddp

__all__ = ["archi_type", "parameter_sets", "freeze_parts", "init_parts", "reinit_inters"]

log = logging.getLogger("torchsae.train")

# the parts DFL re-initialises when pretraining ends (docs/dfl.md §11.6)
_PRETRAIN_REINIT = {"df": ("inter",), "liae": ("inter_AB", "inter_B")}


def archi_type(r: Recipe) -> str:
    """'df' | 'liae' for DFL presets, 'graph' for an explicit [graph]."""
    return r.model.archi_type if r.model.graph is None else "graph"


def parameter_sets(model: nn.Module, r: Recipe, random_warp: bool
                   ) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """(trainable, saveable) {name: parameter} and requires_grad set to match.

    saveable: what the generator optimizer holds and checkpoints save (a preset: SAEHD's modules, §3.6;
    a graph: every parameter). trainable: the same minus DFL's frozen set (LIAE without random warp
    freezes inter_AB, §12.11) minus the parts named in [train].freeze.
    """
    at = archi_type(r)
    if at == "graph":
        saveable = dict(model.named_parameters())
        trainable = saveable
    else:
        trainable, saveable = saehd_param_groups(model, at, random_warp)
    if r.train.freeze:
        trainable = freeze_parts(model, r.train.freeze, trainable)
    freeze_untrainable(saveable, trainable)
    return trainable, saveable


def freeze_parts(model: nn.Module, parts: Iterable[str], trainable: Mapping[str, nn.Parameter]
                 ) -> dict[str, nn.Parameter]:
    """`trainable` without the named parts ([train].freeze); unknown names are a RecipeError."""
    parts = tuple(parts)
    known = dict(model.parts())
    bad = [p for p in parts if p not in known]
    if bad:
        raise RecipeError(None, "train.freeze", f"no model part named '{bad[0]}'{did_you_mean(bad[0], known)}",
                          "valid: " + ", ".join(known))
    return {n: p for n, p in trainable.items() if n.split(".", 1)[0] not in parts}


def init_parts(model: nn.Module, spec: Mapping[str, str]) -> None:
    """Start parts from other checkpoints ([train].init_parts = {part = "ckpt"} or {part = "ckpt::other"}):
    how a trained identity's decoder is reused in a new model."""
    parts = dict(model.parts())
    for part, ref in spec.items():
        path, _, src_part = ref.partition("::")
        src_part = src_part or part
        if part not in parts:
            raise CheckpointError(f"[train].init_parts: the model has no part '{part}' (parts: {', '.join(parts)})")
        sd = ck.load_model_payload(path)["model"]
        prefix = src_part + "."
        sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sub:
            raise CheckpointError(f"[train].init_parts.{part}: {path} has no part '{src_part}'")
        try:
            parts[part].load_state_dict(sub)
        except RuntimeError as e:
            raise CheckpointError(f"[train].init_parts.{part}: {path}::{src_part} does not fit: "
                                  f"{first_line(e)}") from None
        log.info("part %s initialised from %s::%s", part, path, src_part)


def reinit_inters(model: nn.Module, r: Recipe, dist: ddp.DistInfo) -> tuple[str, ...]:
    """DFL's pretrain -> normal switch: the inter(s) start again from fresh Glorot weights (DF: inter; LIAE:
    inter_AB and inter_B), the same on every DDP rank. Returns the re-initialised part names."""
    names = _PRETRAIN_REINIT.get(archi_type(r), ())
    for n in names:
        mod = getattr(model, n, None)
        if mod is None:
            continue
        for layer in mod.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                glorot_init_(layer)
        ddp.broadcast_module(mod, dist)
    return names
