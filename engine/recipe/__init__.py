r"""Recipes: TOML at the edge, frozen typed specs inside (no torch imported here).

`recipe.load("recipes/df256.toml", overrides=["optim.lr=1e-4"])` reads a file; `loads` a string:

>>> from engine import recipe
>>> r = recipe.loads('[model]\narchi = "liae-ud"\nresolution = 128\n', source="x.toml", overrides=["optim.lr=1e-4"])
>>> r.model.archi, r.model.resolution, r.optim.lr, r.loss.masked_training   # unset keys: DFL's defaults
('liae-ud', 128, 0.0001, True)
>>> recipe.dumps(r).splitlines()[0]                  # the fully resolved recipe, as checkpoints store it
"# resolved recipe 'x' (from x.toml)"
>>> recipe.loads('[model]\narchi = "liae-uz"\n', source="x.toml")
Traceback (most recent call last):
  ...
engine.errors.RecipeErrors: 1 problem in recipe:
  x.toml:2: [model] archi = 'liae-uz': unknown option 'z' (form '<df|liae>[-<opts>]', opts from u, d, t, c)
"""

from engine.recipe.dfl_options import from_options, to_options
from engine.recipe.load import (diff, dumps, evolve, from_dict, is_override, load, load_command_line, loads,
                                parse_archi, resume_value, split_command_line, to_dict)
from engine.recipe.specs import (TABLES, CompileSpec, DataSpec, ExportSpec, LossSpec, MergeSpec, ModelSpec,
                                 OptimSpec, RampSpec, Recipe, ScheduleSpec, TrainSpec)

__all__ = [
    "load", "loads", "from_dict", "evolve", "from_options", "to_options", "dumps", "to_dict", "diff", "parse_archi",
    "is_override", "split_command_line", "load_command_line", "resume_value", "Recipe",
    "TABLES",
    "DataSpec", "ModelSpec", "LossSpec", "ScheduleSpec", "RampSpec", "OptimSpec", "TrainSpec", "ExportSpec",
    "CompileSpec", "MergeSpec",
]
