"""`torchsae eval MODEL [MODEL ...] --out DIR [--faces SRC DST]` (also `make eval CKPT=...`).

MODEL: a checkpoint (.pt, step_* folder), a run folder (= every checkpoint in it, for metrics over the
training steps), a recipe .toml (= its run folder), an exported .onnx / .dfm, a --parts folder or a DFL
model folder; `table.key=value` overrides anywhere on the line apply to recipe inputs. Without --faces each checkpoint is scored on the held-out faces it recorded
([data].eval_fraction / eval_src / eval_dst). Writes DIR/eval.json, DIR/report.html and the images
(engine.eval.report), prints one line per model. Exit status 1 when a model could not be evaluated (its
entry in eval.json says why), 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.errors import TorchSAEError
from engine.eval.run import evaluate_paths
from engine.recipe import is_override
from engine.recipe.specs import FACE_TYPES

log = logging.getLogger("torchsae.eval")

_SHOWN = ("identity_retrieval", "identity_margin", "landmark_nme", "yaw_error_deg", "recon_dssim_src",
          "recon_dssim_dst", "psnr_src", "face_found_rate", "n_faces")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="checkpoint (.pt / step folder), run folder (all its checkpoints), recipe .toml (its run "
                        "folder), .onnx/.dfm, --parts folder or DFL model folder")
    p.add_argument("--out", required=True, help="report folder (eval.json, report.html, images)")
    p.add_argument("--faces", nargs=2, metavar=("SRC", "DST"),
                   help="aligned src and dst faces to evaluate on (default: the checkpoint's held-out faces)")
    p.add_argument("--max-faces", type=int, default=0, help="at most N faces per side, spread evenly (0 = all)")
    p.add_argument("--face-type", choices=FACE_TYPES,
                   help="face type of an exported model whose file does not record it")
    p.add_argument("--no-detect", action="store_true",
                   help="skip dlib's CNN face detector (face_found_rate; the slowest part on a CPU)")
    p.add_argument("--samples", type=int, default=6, help="rows of the sample grid per model (default 6)")
    p.add_argument("--device", default=None, help="torch device for checkpoints (default: cuda when available)")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    # recipe overrides (table.key=value) may stand anywhere on the line; they apply to recipe .toml inputs
    overrides = tuple(a for a in args.models if is_override(a) and not Path(a).exists())
    models = [a for a in args.models if a not in overrides]
    if not models:
        raise TorchSAEError(f"no model on the command line (only overrides: {' '.join(overrides)})")
    entries = evaluate_paths(models, args.out, faces=tuple(args.faces) if args.faces else None,
                             max_faces=args.max_faces, face_type=args.face_type, detect=not args.no_detect,
                             n_samples=args.samples, device=args.device, overrides=overrides)
    width = max(len(str(e.get("label"))) for e in entries)
    print(f"{'model':<{width}}  " + "  ".join(f"{k:>18}" for k in _SHOWN))
    for e in entries:
        if "error" in e:
            print(f"{e.get('label')!s:<{width}}  error: {e['error']}")
            continue
        print(f"{e.get('label')!s:<{width}}  " + "  ".join(f"{_fmt(e.get(k)):>18}" for k in _SHOWN))
    cal = next((e for e in entries if "error" not in e), None)
    if cal is not None:
        print(f"real faces: identity retrieval {_fmt(cal.get('real_identity_retrieval'))}, margin "
              f"{_fmt(cal.get('real_identity_margin'))} (a perfect swap); unchanged dst faces: margin "
              f"{_fmt(cal.get('no_swap_identity_margin'))}")
    print(f"wrote {args.out}/eval.json and {args.out}/report.html")
    return 1 if any("error" in e for e in entries) else 0
