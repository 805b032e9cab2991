"""`torchsae extract`: a video, an image folder or an image -> aligned DFLJPG faceset.

    torchsae extract data_dst.mp4 --out workspace/data_dst/aligned
    torchsae extract photos/ --out faces/ --face-type f --size 256 --backend dlib --max-faces 1

See engine.extract.extractor for the steps, file names, frames folder and resume behaviour.
"""

from __future__ import annotations

import argparse
import json

from engine.errors import TorchSAEError
from engine.extract.extractor import extract

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", help="video file, folder of images, or one image")
    p.add_argument("--input", dest="input_flag", help=argparse.SUPPRESS)  # the old form, kept as an alias
    p.add_argument("--out", required=True, help="folder for the aligned faces (created)")
    p.add_argument("--face-type", default="wf", help="h, mf, f, wf (default), head, or a DFL long name")
    p.add_argument("--size", type=int, default=None, help="aligned face size in px (default 512; 768 for head)")
    p.add_argument("--backend", default="auto", choices=["auto", "dlib", "fan"], help="landmark backend (default auto: FAN if its weights are on disk, else dlib)")
    p.add_argument("--fan-weights", default=None, help="local 2DFAN-4 weights (.pth.tar) for the fan backend")
    p.add_argument("--max-faces", type=int, default=None, help="keep at most N faces per frame, largest first")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--frames-dir", default=None, help="where to write the frames read (default: parent of --out if it is named 'aligned', else OUT/frames)")
    g.add_argument("--no-frames", action="store_true", help="do not write the frames")
    p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of the aligned faces (default 90, as DFL)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="use every N-th frame (default 1: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    source = args.input or args.input_flag
    if source is None or (args.input and args.input_flag):
        raise TorchSAEError("extract: give one input (a video file, a folder of images or an image)")
    s = extract(
        source,
        args.out,
        face_type=args.face_type,
        size=args.size,
        backend=args.backend,
        fan_weights=args.fan_weights,
        max_faces=args.max_faces,
        frames_dir=args.frames_dir,
        write_frames=not args.no_frames,
        jpeg_quality=args.jpeg_quality,
        step=args.every,
        progress=not args.no_progress,
    )
    d = s.to_dict()
    nf = d.pop("no_face_frames")
    d["no_face_frames"] = nf[:20] + ([f"... {len(nf) - 20} more"] if len(nf) > 20 else [])
    print(json.dumps(d, indent=2))
    return 0
