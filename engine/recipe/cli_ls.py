"""The public vocabulary: archis, blocks, losses, schedules, optimizers — and `torchsae ls`.

Each family is a small closed registry owned by its package (engine.losses.LOSSES, engine.modules,
engine.schedules, engine.optim); this module only gathers their names for users.
"""

from __future__ import annotations

import argparse
import itertools
import json


def archis() -> list[str]:
    """Every DFL archi string: df|liae with any subset of u, d, t, c (in DFL's usual letter order)."""
    from engine.recipe.specs import ARCHI_OPTS, ARCHI_TYPES

    out = []
    for t in ARCHI_TYPES:
        out.append(t)
        for n in range(1, len(ARCHI_OPTS) + 1):
            out += [f"{t}-{''.join(c)}" for c in itertools.combinations(ARCHI_OPTS, n)]
    return out


def vocabulary() -> dict[str, list[str]]:
    from engine.graph.spec import NODE_TYPES
    from engine.losses import LOSSES
    from engine.recipe.specs import CT_MODES, FACE_TYPES, TABLES
    from engine.schedules import LR_SCHEDULES

    import attrs

    optim_names = list(attrs.fields(TABLES["optim"]).name.metadata["choices"])
    return {
        "archis": archis(),
        "blocks": list(NODE_TYPES),
        "losses": sorted(LOSSES),
        "schedules": list(LR_SCHEDULES) + ["ramp", "random_warp_off_at", "pretrain_until"],
        "optimizers": optim_names,
        "face_types": list(FACE_TYPES),
        "ct_modes": list(CT_MODES),
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=["archis", "blocks", "losses", "schedules", "optimizers",
                                               "face_types", "ct_modes"], help="one family (default: all)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    vocab = vocabulary()
    if args.what:
        vocab = {args.what: vocab[args.what]}
    if args.json:
        print(json.dumps(vocab, indent=2))
    else:
        for family, names in vocab.items():
            print(f"{family}: {', '.join(names)}")
    return 0
