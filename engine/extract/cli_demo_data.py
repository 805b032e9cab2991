"""`torchsae demo-data [--out workspace/demo]`: fetch the bundled demo videos and extract them into a DFL
workspace (engine.extract.demo; what `make data` runs)."""

from __future__ import annotations

import argparse
import json

from engine.extract.demo import demo_data

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="workspace/demo", help="DFL-style workspace to fill (default: workspace/demo)")
    p.add_argument("--workspace", dest="out", help=argparse.SUPPRESS)  # an unlisted alias of --out
    p.add_argument("--cache", default=None, help="download cache (default: $TORCHSAE_CACHE or .cache/torchsae)")
    p.add_argument("--backend", default="auto", choices=["auto", "dlib", "fan"], help="face backend (default: auto)")
    p.add_argument("--fan-weights", default=None, help="local 2DFAN-4 weights file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    info = demo_data(args.out, cache=args.cache, backend=args.backend, fan_weights=args.fan_weights,
                     progress=not args.no_progress)
    print(json.dumps(info, indent=2))
    return 0
