"""`torchsae describe RECIPE [table.key=value ...] [--json] [--graph-toml]`.

Prints the recipe's network: nodes with their layers, tensor shapes on every edge, parameters per part
and in total, and the values derived from the resolution (DSSIM windows, blur sigmas, GAN patch), then the
`torchsae train` shorthand flags with the recipe values they set. ``--graph-toml`` prints the graph as an
explicit ``[graph]`` table (a preset expanded), a starting point for custom wirings.
"""

from __future__ import annotations

import argparse
import json

from engine.errors import TorchSAEError
from engine.graph import describe, render
from engine.graph.plan import graph_of
from engine.recipe import load_command_line
from engine.recipe.graph_spec import graph_to_dict
from engine.recipe.specs import TRAIN_FLAGS
from engine.recipe.toml_write import dumps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--graph-toml", action="store_true", help="print the graph as an explicit [graph] TOML table")


def run(args: argparse.Namespace) -> int:
    recipe = load_command_line([args.recipe, *args.overrides])
    if recipe.kind != "saehd":
        raise TorchSAEError(f"{args.recipe}: an XSeg recipe; describe shows SAEHD graphs (DFL's XSeg network is fixed: "
                            "docs/dfl.md §7.1, engine/modules/xseg.py)")
    if args.graph_toml:
        graph, _ = graph_of(recipe.model)
        print(dumps({"graph": graph_to_dict(graph)}), end="")
        return 0
    d = describe(recipe)
    d["train_flags"] = {f"--{flag.replace('_', '-')}": {"key": key, "value": _value(recipe, key)}
                        for flag, key in TRAIN_FLAGS.items()}
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        flags = d.pop("train_flags")
        print(render(d), end="")
        print("\ntrain flags (torchsae train ... --flag VALUE sets the recipe key):")
        for flag, kv in flags.items():
            print(f"  {flag:<16} {kv['key']:<22} = {kv['value']!r}")
    return 0


def _value(recipe, key: str):
    table, field = key.split(".")
    return getattr(getattr(recipe, table), field)
