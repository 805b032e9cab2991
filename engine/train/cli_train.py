"""`torchsae train RECIPE [table.key=value ...] [flags]` (also `make train RECIPE=... ARGS=...`).

The flags of the original TorchSAE CLI are kept as shorthands for recipe keys (`torchsae describe` shows
the resolved values): --src data.src, --dst data.dst, --resolution model.resolution, --batch-size
train.batch_size, --steps train.target_iter, --preview-every train.preview_every, --run-dir train.run_dir.
"""

from __future__ import annotations

import argparse

FLAG_KEYS = {
    "src": "data.src",
    "dst": "data.dst",
    "resolution": "model.resolution",
    "batch_size": "train.batch_size",
    "steps": "train.target_iter",
    "preview_every": "train.preview_every",
    "run_dir": "train.run_dir",
    "amp": "train.amp",
    "compile": "compile.mode",
    "device": "train.device",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML")
    p.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run (latest checkpoint by default, or the given one)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for flag, key in FLAG_KEYS.items():
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, help=f"= {key}")


def overrides_from(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    for flag, key in FLAG_KEYS.items():
        v = getattr(args, flag)
        if v is not None:
            out.append(f"{key}={v}" if not isinstance(v, str) or v.replace('.', '').replace('-', '').isdigit()
                       else f'{key}="{v}"')
    return out


def run(args: argparse.Namespace) -> int:
    from engine.recipe import load
    from engine.train.loop import train

    r = load(args.recipe, overrides_from(args))
    summary = train(r, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    print(f"trained {summary['steps_done']} steps (now at step {summary['step']}); "
          f"median {summary['median_s_per_step']:.3f} s/step; checkpoint {summary['checkpoint']}"
          if summary["median_s_per_step"] is not None else f"no steps run; checkpoint {summary['checkpoint']}")
    return 0
