"""`torchsae ls [FAMILY] [--json]`: the names a recipe can use, read from where they are defined.

    archis      [model].archi: df|liae with any subset of DFL's options u, d, t, c (engine.recipe.specs)
    blocks      [graph] node types (engine.recipe.graph_spec.NODE_TYPES)
    losses      the [loss] weights and powers, the terms a [[schedule.ramp]] can name (LossSpec)
    schedules   [schedule].lr's schedules, plus the other [schedule] switches
    optimizers  [optim].name
    kernels     [compile].kernels
    face_types  [model].face_type / [data].plain_face_type
    ct_modes    [data].ct_mode
    merge_modes [merge].mode

Imports no torch.
"""

from __future__ import annotations

import argparse
import itertools
import json

import attrs

from engine.recipe.graph_spec import NODE_TYPES
from engine.recipe.specs import (ARCHI_OPTS, ARCHI_TYPES, CT_MODES, FACE_TYPES, CompileSpec, LossSpec, MergeSpec,
                                 OptimSpec, ScheduleSpec)

__all__ = ["archis", "vocabulary", "add_arguments", "run"]


def archis() -> list[str]:
    """Every DFL archi string: df|liae with any subset of u, d, t, c (in DFL's usual letter order)."""
    out = []
    for t in ARCHI_TYPES:
        out.append(t)
        for n in range(1, len(ARCHI_OPTS) + 1):
            out += [f"{t}-{''.join(c)}" for c in itertools.combinations(ARCHI_OPTS, n)]
    return out


def _choices(spec: type, field: str) -> list[str]:
    return list(getattr(attrs.fields(spec), field).metadata["choices"])


_LR_KEYS = ("lr", "warmup_steps", "decay_steps", "min_lr_ratio")  # [schedule] keys of the lr schedule itself


def vocabulary() -> dict[str, list[str]]:
    schedule_switches = [f.name for f in attrs.fields(ScheduleSpec) if f.name not in _LR_KEYS]
    return {
        "archis": archis(),
        "blocks": list(NODE_TYPES),
        "losses": [f.name for f in attrs.fields(LossSpec) if f.metadata["type"] is float],
        "schedules": _choices(ScheduleSpec, "lr") + schedule_switches,
        "optimizers": _choices(OptimSpec, "name"),
        "kernels": _choices(CompileSpec, "kernels"),
        "face_types": list(FACE_TYPES),
        "ct_modes": list(CT_MODES),
        "merge_modes": _choices(MergeSpec, "mode"),
    }


FAMILIES = tuple(vocabulary())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=FAMILIES, help="one family (default: all)")
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
