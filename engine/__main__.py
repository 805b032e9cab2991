"""`torchsae` / `python -m engine`: subcommand -> module table.

Every command lives in `engine/<package>/cli_<command>.py` and defines `add_arguments(parser)` and
`run(args) -> int`; it is imported only when its command runs, so `torchsae validate` never imports torch.
Conventions: the main input (a recipe, a checkpoint, a folder) is positional, output paths are `--out`,
and `table.key=value` / `~table.key` recipe overrides may come anywhere on the line (intermixed parsing:
`torchsae describe recipes/df256.toml --json model.resolution=288`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

from engine.errors import TorchSAEError
from kernels.errors import KernelError  # stdlib only: validate stays torch-free

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("engine.recipe.cli_validate", "check a recipe and report every problem"),
    "describe": ("engine.graph.cli_describe", "show a recipe's graph: nodes, shapes, parameter counts, derived values"),
    "ls": ("engine.recipe.cli_ls", "list the recipe vocabulary: archis, blocks, loss terms, schedules, optimizers"),
    "train": ("engine.train.cli_train", "train a recipe"),
    "import-dfl": ("engine.dfl.cli_import_dfl", "convert a DFL SAEHD model folder to a TorchSAE checkpoint"),
    "export-dfl": ("engine.dfl.cli_export_dfl", "write a checkpoint as a DFL SAEHD model folder (DFL continues it)"),
    "export": ("engine.export.cli_export", "export a checkpoint (or a recipe's newest) to ONNX or DFM"),
    "swap": ("engine.export.cli_swap", "run a model over a folder of aligned faces"),
    "faceset": ("engine.faces.cli_faceset", "faceset tools: info, pack"),
    "extract": ("engine.extract.cli_extract", "videos/photos -> aligned DFLJPG faceset"),
    "sort": ("engine.extract.cli_sort", "sort or clean an aligned faceset"),
    "demo-data": ("engine.extract.cli_demo_data", "fetch and extract the bundled demo faces"),
    "merge": ("engine.merge.cli_merge", "composite swapped faces back into frames and write the video"),
    "xseg": ("engine.xseg.cli_xseg", "XSeg masks: train, label, apply, remove, fetch, export (DFL's XSeg workflow)"),
    "eval": ("engine.eval.cli_eval", "measure swap quality: identity, pose/expression, reconstruction -> eval.json + report"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchsae", description="Train DFL-style SAEHD face-swap models from TOML recipes.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_mod, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def parse_command(name: str, argv: list[str]) -> tuple[ModuleType, argparse.Namespace]:
    """The command's module and its parsed arguments; flags and positionals (overrides) may interleave."""
    mod = importlib.import_module(COMMANDS[name][0])
    p = argparse.ArgumentParser(prog=f"torchsae {name}", description=COMMANDS[name][1])
    mod.add_arguments(p)
    if hasattr(mod, "parse"):  # a command with verbs (`torchsae xseg VERB ...`) parses each verb's line itself
        return mod, mod.parse(p, argv)
    return mod, p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _parser()
    # Parse only up to the command name, then hand the rest to the command's own parser.
    i = next((k for k, a in enumerate(argv) if a in COMMANDS), None)
    if i is None:
        ns = top.parse_args(argv)
        top.print_help()
        return 0 if not argv or ns.command is None else 2
    ns = top.parse_args(argv[:i])
    # under torchrun every process logs: prefix the global rank so interleaved lines say who wrote them
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO, format=rank + "%(message)s")
    name = argv[i]
    mod, args = parse_command(name, argv[i + 1:])
    try:
        return int(mod.run(args) or 0)
    except (TorchSAEError, KernelError) as e:  # kernels are leaves: their errors are not TorchSAEErrors
        print(f"torchsae {name}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
