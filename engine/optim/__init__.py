"""Optimizers: DFL's RMSprop and AdaBelief (docs/dfl.md §3.6) with lr_dropout / lr_cos / clipnorm, torch's adam and
adamw by name, SAEHD's parameter sets, and the DFL optimizer-file mapping."""

from __future__ import annotations

from .config import (OPTIMIZERS, SAEHD_MODULES, DFLUpdateSettings, clip_grad_norm_dfl_, dfl_update_settings,
                     freeze_untrainable, make_optimizer, saehd_param_groups)
from .dfl import AdaBelief, DFLOptimizer, RMSprop, clip_scale, global_grad_norm
from .dfl_io import DFL_SLOTS, dfl_slot_key, optimizer_from_dfl, optimizer_to_dfl

__all__ = [
    "RMSprop", "AdaBelief", "DFLOptimizer", "global_grad_norm", "clip_scale",
    "OPTIMIZERS", "DFLUpdateSettings", "dfl_update_settings", "make_optimizer", "saehd_param_groups",
    "freeze_untrainable",
    "clip_grad_norm_dfl_", "SAEHD_MODULES",
    "DFL_SLOTS", "dfl_slot_key", "optimizer_to_dfl", "optimizer_from_dfl",
]
