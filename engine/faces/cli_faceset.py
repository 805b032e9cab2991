"""`torchsae faceset info DIR` and `torchsae faceset pack DIR [--out FILE]`.

info: number of usable faces, face types, resolutions, how many carry an XSeg mask / XSeg polygons,
and the pose range (DFL's estimate_pitch_yaw_roll, §6.6) in degrees. `--json` prints it as JSON.
pack: scans DIR (DFL aligned JPEGs, or plain images with <name>_landmarks.npy) and writes TorchSAE's
memory-mappable packed faceset (engine.faces.pak) to DIR/faceset.tspak or --out; `--decoded` stores raw
pixels so training skips JPEG decoding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from engine.errors import DataError, TorchSAEError
from engine.faces.faceset import load_faceset, scan_faceset, summarize
from engine.faces.pak import TSPAK_FILENAME, pack_faceset

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("info", "pack"), help="info: counts, face types, resolutions, masks "
                        "and pose range; pack: write a memory-mappable packed faceset (faceset.tspak)")
    parser.add_argument("path", help="aligned faces folder (info also reads faceset.pak / faceset.tspak)")
    parser.add_argument("--face-type", default="wf",
                        help="face type of plain images with <name>_landmarks.npy (default wf)")
    parser.add_argument("--json", action="store_true", help="info: print the summary as JSON")
    parser.add_argument("--out", default=None, help="pack: output file (default DIR/faceset.tspak)")
    parser.add_argument("--decoded", action="store_true",
                        help="pack: store decoded pixels (bigger file, no JPEG decode in training)")


def _info(args) -> int:
    samples = load_faceset(args.path, face_type=args.face_type)
    summary = summarize(samples)
    poses = np.array([s.pitch_yaw_roll() for s in samples], dtype=np.float64)
    deg = np.degrees(poses)
    summary["pose_deg"] = {
        name: {"min": round(float(deg[:, i].min()), 2), "max": round(float(deg[:, i].max()), 2)}
        for i, name in enumerate(("pitch", "yaw", "roll"))
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.path}: {summary['count']} faces")
    print("  face types:  " + ", ".join(f"{k} {v}" for k, v in summary["face_types"].items()))
    print("  resolutions: " + ", ".join(f"{k} {v}" for k, v in summary["resolutions"].items()))
    print(f"  xseg masks:  {summary['xseg_masks']}   xseg polygons: {summary['seg_ie_polys']}")
    for name, r in summary["pose_deg"].items():
        print(f"  {name:5s}: {r['min']:+7.2f} .. {r['max']:+7.2f} deg")
    return 0


def _pack(args) -> int:
    folder = Path(args.path)
    if not folder.is_dir():
        raise DataError(f"{folder}: faceset folder does not exist (pack takes a folder of aligned faces)")
    samples = scan_faceset(folder, face_type=args.face_type)
    out = Path(args.out) if args.out else folder / TSPAK_FILENAME
    pack_faceset(samples, out, decoded=args.decoded, source_dir=folder)
    size = out.stat().st_size
    print(f"{out}: packed {len(samples)} faces ({'decoded' if args.decoded else 'encoded'}, {size / 2**20:.1f} MiB)")
    return 0


def run(args) -> int:
    misplaced = {"info": [f for f in ("out", "decoded") if getattr(args, f)],
                 "pack": ["json"] if args.json else []}[args.action]
    if misplaced:
        raise TorchSAEError(f"faceset {args.action}: --{misplaced[0]} belongs to "
                            f"{'pack' if args.action == 'info' else 'info'}")
    return _info(args) if args.action == "info" else _pack(args)
