"""`torchsae sort`: rank an aligned faceset, optionally move the worst faces aside, or undo that.

    torchsae sort workspace/data_src/aligned --by blur                # writes sort_blur.json, moves nothing
    torchsae sort workspace/data_src/aligned --by blur --drop 10      # worst 10 % -> aligned/_dropped/
    torchsae sort workspace/data_src/aligned --by face --drop-others  # faces of other people -> _dropped/
    torchsae sort workspace/data_src/aligned --undo                   # put every dropped face back

Methods and their "worst" criteria: engine.extract.sort.
"""

from __future__ import annotations

import argparse

from engine.errors import DataError
from engine.extract import sort as S
from engine.extract.sort import SORT_METHODS

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="aligned faceset folder")
    p.add_argument("--by", choices=SORT_METHODS, default=None, help="ranking: blur, yaw, hist or face (identity)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drop", type=float, default=None, metavar="PCT", help="move the worst PCT %% into DIR/_dropped/")
    g.add_argument("--drop-others", action="store_true", help="with --by face: move faces of other people into DIR/_dropped/")
    g.add_argument("--undo", action="store_true", help="move every dropped face back")
    p.add_argument("--face-threshold", type=float, default=0.6, help="identity distance cut for --by face (default 0.6)")
    p.add_argument("--out", default=None, help="ranking JSON path (default DIR/sort_<by>.json)")
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)  # an unlisted alias of --out


def run(args: argparse.Namespace) -> int:
    if args.undo:
        if args.by is not None:
            raise DataError("--undo restores files and takes no --by")
        restored = S.undo_drops(args.dir)
        print(f"restored {len(restored)} faces into {args.dir}")
        return 0
    if args.by is None:
        raise DataError(f"sort {args.dir}: --by is required (valid: {', '.join(S.SORT_METHODS)}), or --undo")
    res = S.sort_faceset(args.dir, args.by, face_threshold=args.face_threshold, output=args.out)
    print(f"sorted {len(res.order)} faces by {args.by}")
    if args.drop is not None or args.drop_others:
        moved = S.drop_worst(args.dir, res, percent=args.drop, others=args.drop_others)
        print(f"moved {len(moved)} faces to {args.dir}/{S.DROPPED_DIR}/ (undo: torchsae sort {args.dir} --undo)")
    return 0
