"""`torchsae export-dfl CHECKPOINT --out DFL_MODEL_DIR [--name NAME]`: back to DeepFaceLab.

Writes a DFL SAEHD model folder (``<name>_SAEHD_data.dat`` with the recipe's options, iter and loss
history, the part files, and from a training checkpoint the optimizer and discriminator files) in DFL's
file formats (docs/dfl.md §8), for DFL's trainer and merger to open as an existing model
(``engine.dfl.export_dfl_checkpoint``).
"""

from __future__ import annotations

import argparse

from engine import recipe as recipe_mod
from engine.dfl.convert import export_dfl_checkpoint
from engine.dfl.files import data_path
from engine.errors import TorchSAEError
from engine.train import checkpoint as ck


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="TorchSAE checkpoint: a step_* folder or run folder (with optimizer state), or "
                   "a model.pt (weights only)")
    p.add_argument("--out", required=True, help="DFL models folder to write into (e.g. workspace/model)")
    p.add_argument("--name", help="DFL model name (files <name>_SAEHD_*; default: the recipe's name)")


def run(args: argparse.Namespace) -> int:
    name = args.name
    if name is None:
        name = recipe_mod.loads(ck.load_model_payload(args.checkpoint)["recipe_toml"]).name or "model"
    if "_SAEHD_" in name or "/" in name or not name.strip():
        raise TorchSAEError(f"--name {name!r}: DFL model names are plain file-name parts without '_SAEHD_' or '/'")
    if data_path(args.out, name).exists():
        raise TorchSAEError(f"{data_path(args.out, name)} exists: DFL model '{name}' is already in {args.out}; "
                            "choose another --name or folder (nothing was overwritten)")
    files = export_dfl_checkpoint(args.checkpoint, args.out, name)
    print(f"wrote DFL model '{name}' to {args.out}: " + ", ".join(f.name for f in files))
    return 0
