"""DFL optimizer files (``src_dst_opt.npy``, ``D_code_opt.npy``, ``GAN_opt.npy``) ↔ our optimizers (§8.2).

A DFL optimizer file is a pickled dict (read it with the project's restricted unpickler, never plain
pickle) holding ``'iters:0'`` (int64) and one array per *saveable* weight and state slot, keyed
``'<slot>_<var name with ':' → '_'>:0'``, e.g. ``'acc_encoder/down1/downs_0/conv1/weight_0:0'``
(RMSprop ``acc``; AdaBelief ``ms`` and ``vs``), in the weight's TF layout. This module only maps
between such a dict and an optimizer; the caller supplies the DFL name of each parameter and the layout
conversion (the model's DFL key map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from engine.errors import CheckpointError

from .dfl import AdaBelief, DFLOptimizer, RMSprop

__all__ = ["DFL_SLOTS", "dfl_slot_key", "optimizer_to_dfl", "optimizer_from_dfl"]

# our state key -> DFL slot prefix
DFL_SLOTS: dict[type, dict[str, str]] = {RMSprop: {"acc": "acc"}, AdaBelief: {"ms": "ms", "vs": "vs"}}


def dfl_slot_key(slot: str, var_name: str) -> str:
    """``('acc', 'encoder/down1/downs_0/conv1/weight:0') → 'acc_encoder/down1/downs_0/conv1/weight_0:0'``."""
    return f"{slot}_{var_name.replace(':', '_')}:0"


def _slots(opt: DFLOptimizer) -> dict[str, str]:
    for cls, slots in DFL_SLOTS.items():
        if isinstance(opt, cls):
            return slots
    raise TypeError(f"optimizer {type(opt).__name__} has no DFL file format (only RMSprop, AdaBelief)")


def optimizer_to_dfl(opt: DFLOptimizer, params: Mapping[str, torch.nn.Parameter],
                     to_tf: Callable[[str, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """DFL optimizer-file dict for `opt`.

    params: {DFL variable name (``'encoder/…/weight:0'``): parameter} for the whole saveable set;
    parameters without state yet (never stepped, or frozen like LIAE's inter_AB) get zeros, as DFL.
    to_tf(var_name, torch_array) → the array in TF layout.
    """
    slots = _slots(opt)
    out: dict[str, np.ndarray] = {"iters:0": np.array(opt.iterations, dtype=np.int64)}
    for vname, p in params.items():
        st = opt.state.get(p, {})
        for ours, theirs in slots.items():
            t = st.get(ours)
            arr = np.zeros(tuple(p.shape), np.float32) if t is None else t.detach().cpu().float().numpy()
            out[dfl_slot_key(theirs, vname)] = np.ascontiguousarray(to_tf(vname, arr), dtype=np.float32)
    return out


def optimizer_from_dfl(opt: DFLOptimizer, data: Mapping[str, np.ndarray], params: Mapping[str, torch.nn.Parameter],
                       to_torch: Callable[[str, np.ndarray], np.ndarray], *, source: str = "optimizer file") -> None:
    """Load a DFL optimizer-file dict into `opt` (state and iteration counter), in place.

    params: {DFL variable name: parameter} (each must be in `opt`); to_torch(var_name, tf_array) → torch
    layout. Missing keys or shape mismatches raise CheckpointError naming `source`.
    """
    slots = _slots(opt)
    owned = {p for g in opt.param_groups for p in g["params"]}
    if "iters:0" not in data:
        raise CheckpointError(f"{source}: no 'iters:0' key (is this a DFL optimizer file? keys: "
                              f"{', '.join(sorted(data)[:5])}…)")
    for vname, p in params.items():
        if p not in owned:
            raise CheckpointError(f"{source}: parameter for {vname!r} is not managed by this optimizer")
        st = opt.state[p]
        for ours, theirs in slots.items():
            key = dfl_slot_key(theirs, vname)
            if key not in data:
                raise CheckpointError(f"{source}: missing key {key!r}")
            arr = to_torch(vname, np.asarray(data[key]))
            if tuple(arr.shape) != tuple(p.shape):
                raise CheckpointError(f"{source}: {key!r} converts to shape {tuple(arr.shape)}, expected "
                                      f"{tuple(p.shape)}")
            st[ours] = torch.from_numpy(np.ascontiguousarray(arr)).to(device=p.device, dtype=p.dtype)
    opt.iterations = int(np.asarray(data["iters:0"]))
