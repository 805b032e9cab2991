"""`torchsae train RECIPE [table.key=value ...] [flags]` (also `make train RECIPE=... ARGS=...`).

Overrides and flags may come in any order. The flags are shorthands for recipe keys
(engine.recipe.specs.TRAIN_FLAGS; `torchsae describe` shows the resolved values): --src data.src, --dst
data.dst, --resolution model.resolution, --batch-size train.batch_size, --steps train.target_iter,
--preview-every train.preview_every, --run-dir train.run_dir, --amp train.amp, --compile compile.mode,
--device train.device.
"""

from __future__ import annotations

import argparse

from engine.errors import TorchSAEError
from engine.eval.training import TrainingEvaluator
from engine.recipe import load_command_line, resume_value
from engine.recipe.specs import TRAIN_FLAGS, Recipe
from engine.train.loop import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML")
    p.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run (latest checkpoint by default, or the given one)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, key in TRAIN_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, help=f"= {key}")


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """One override per shorthand flag given."""
    out = []
    for flag, key in TRAIN_FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            out.append(f"{key}={v}" if not isinstance(v, str) or v.replace('.', '').replace('-', '').isdigit()
                       else f'{key}="{v}"')
    return out


def recipe_from(args: argparse.Namespace) -> Recipe:
    """The recipe with the command line's overrides (in any order around it), then the flags' keys."""
    return load_command_line([args.recipe, *args.overrides], flag_overrides(args))


def run(args: argparse.Namespace) -> int:
    resume = resume_value(args.resume, args.overrides)  # before recipe_from: may hand an override back
    r = recipe_from(args)
    if r.kind != "saehd":
        raise TorchSAEError(f"{args.recipe}: an XSeg recipe (kind = \"xseg\"); train it with `torchsae xseg train "
                            f"{args.recipe}`")
    evaluator = TrainingEvaluator(r) if r.train.eval_every else None  # the loop (below engine.eval) only calls it
    summary = train(r, resume=resume, max_steps=args.max_steps, progress=not args.no_progress, evaluator=evaluator)
    print(f"trained {summary['steps_done']} steps (now at step {summary['step']}); "
          f"median {summary['median_s_per_step']:.3f} s/step ({summary['loop_s_per_step']:.3f} s per loop iteration, "
          f"{summary['loader_wait_pct']:.1f}% waiting for data); checkpoint {summary['checkpoint']}"
          if summary["median_s_per_step"] is not None else f"no steps run; checkpoint {summary['checkpoint']}")
    return 0
