"""`torchsae validate RECIPE [table.key=value ...] [--print]`: report every problem, or print the resolved
recipe. Imports no torch (instant)."""

from __future__ import annotations

import argparse

from engine.recipe import dumps, load_command_line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    p.add_argument("--print", action="store_true", help="print the fully resolved recipe as TOML")


def run(args: argparse.Namespace) -> int:
    r = load_command_line([args.recipe, *args.overrides])
    if args.print:
        print(dumps(r), end="")
    elif r.kind == "xseg":
        print(f"{args.recipe}: ok (XSeg, face type {r.xseg.face_type}, resolution {r.xseg.resolution}, base_ch "
              f"{r.xseg.base_ch}, {'pretrain' if r.xseg.pretrain else str(len(r.xseg.facesets)) + ' facesets'})")
    else:
        print(f"{args.recipe}: ok ({r.model.archi if r.model.graph is None else 'explicit graph'}, "
              f"resolution {r.model.resolution}, face type {r.model.face_type})")
    return 0
