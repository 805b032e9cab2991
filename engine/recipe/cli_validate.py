"""`torchsae validate RECIPE [key.path=value ...]`: report every problem, or print the resolved recipe."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    p.add_argument("--print", action="store_true", help="print the fully resolved recipe as TOML")


def run(args: argparse.Namespace) -> int:
    from engine.recipe import dumps, load

    r = load(args.recipe, args.overrides)
    if args.print:
        print(dumps(r), end="")
    else:
        print(f"{args.recipe}: ok ({r.model.archi if r.model.graph is None else 'explicit graph'}, "
              f"resolution {r.model.resolution}, face type {r.model.face_type})")
    return 0
