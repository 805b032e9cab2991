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

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="faceset_command", metavar="SUBCOMMAND", required=True)
    info = sub.add_parser("info", help="counts, face types, resolutions, masks and pose range of a faceset")
    info.add_argument("path", help="aligned faces folder, faceset.pak or faceset.tspak")
    info.add_argument("--face-type", default="wf", help="face type of plain images with <name>_landmarks.npy (default wf)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    pack = sub.add_parser("pack", help="write a memory-mappable packed faceset (faceset.tspak)")
    pack.add_argument("path", help="aligned faces folder")
    pack.add_argument("--out", default=None, help="output file (default DIR/faceset.tspak)")
    pack.add_argument("--face-type", default="wf", help="face type of plain images with <name>_landmarks.npy (default wf)")
    pack.add_argument("--decoded", action="store_true", help="store decoded pixels (bigger file, no JPEG decode in training)")


def _info(args) -> int:
    from engine.faces.faceset import load_faceset, summarize

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
    from engine.faces.faceset import scan_faceset
    from engine.faces.pak import TSPAK_FILENAME, pack_faceset
    from engine.errors import DataError

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
    if args.faceset_command == "info":
        return _info(args)
    if args.faceset_command == "pack":
        return _pack(args)
    raise SystemExit(f"torchsae faceset: unknown subcommand {args.faceset_command!r} (valid: info, pack)")
