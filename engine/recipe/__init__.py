"""Recipes: TOML at the edge, frozen typed specs inside (no torch imported here).

    from engine import recipe
    r = recipe.load("recipes/df256.toml", overrides=["optim.lr=1e-4"])
    r.model.archi, r.loss.masked_training, recipe.dumps(r)
"""

from engine.recipe.dfl_options import from_options, to_options
from engine.recipe.load import (diff, dumps, from_dict, is_override, load, load_command_line, loads, parse_archi,
                                resume_value, split_command_line, to_dict)
from engine.recipe.specs import (TABLES, CompileSpec, DataSpec, ExportSpec, LossSpec, MergeSpec, ModelSpec,
                                 OptimSpec, RampSpec, Recipe, ScheduleSpec, TrainSpec)

__all__ = [
    "load", "loads", "from_dict", "from_options", "to_options", "dumps", "to_dict", "diff", "parse_archi",
    "is_override", "split_command_line", "load_command_line", "resume_value", "Recipe",
    "TABLES",
    "DataSpec", "ModelSpec", "LossSpec", "ScheduleSpec", "RampSpec", "OptimSpec", "TrainSpec", "ExportSpec",
    "CompileSpec", "MergeSpec",
]
