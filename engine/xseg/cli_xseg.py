"""`torchsae xseg ...`: DFL's XSeg workflow without DFL.

    torchsae xseg train recipes/xseg.toml [table.key=value ...] [--resume [CKPT]]
    torchsae xseg label DIR                       # browser labeller on http://127.0.0.1:PORT
    torchsae xseg labels export DIR --out labels.json [--format coco] [--all]
    torchsae xseg labels import DIR labels.json
    torchsae xseg apply MODEL DIR                 # MODEL: run folder / checkpoint / DFL XSeg folder / .onnx
    torchsae xseg remove DIR                      # drop applied masks          (DFL: XSeg) remove)
    torchsae xseg remove-labels DIR               # drop polygons               (DFL: XSeg) remove labels)
    torchsae xseg fetch DIR [OUT] [--move]        # copy labelled faces out     (DFL: XSeg) fetch)
    torchsae xseg restore DIR [--backup ZIP]      # undo: metadata from the newest backup
    torchsae xseg export MODEL --out xseg.onnx    # DFL's XSeg_model.onnx contract, verified
    torchsae xseg export-dfl MODEL --out DIR      # XSeg_256.npy, XSeg_256_opt.npy, XSeg_data.dat
    torchsae xseg import-dfl DIR --out model.pt   # DFL's XSeg folder -> TorchSAE checkpoint

Every verb that changes a faceset backs its metadata up first (`<DIR>/.torchsae_xseg_backups/`) and writes
each face atomically; see engine.xseg.apply. No prompts: DFL's questions are flags.
"""

from __future__ import annotations

import argparse
import json

from engine.fileio import write_atomic
from engine.recipe import dumps, load_command_line, resume_value
from engine.xseg.apply import apply_xseg, fetch_labelled, remove_labels, remove_masks, restore_backup
from engine.xseg.dfl_io import export_dfl_xseg, import_dfl_xseg
from engine.xseg.export import export_xseg_onnx
from engine.xseg.labeller import serve
from engine.xseg.labels import export_labels, import_labels
from engine.xseg.train import train_xseg

__all__ = ["add_arguments", "parse", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    p.set_defaults(_verbs=sub.choices)

    t = sub.add_parser("train", help="train an XSeg recipe (kind = \"xseg\")")
    t.add_argument("recipe", help="XSeg recipe TOML (e.g. recipes/xseg.toml)")
    t.add_argument("overrides", nargs="*", help="table.key=value or ~table.key")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run (latest checkpoint by default, or the given one)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many steps of this run")
    t.add_argument("--run-dir", help="= train.run_dir")
    t.add_argument("--device", help="= train.device (auto, cpu, cuda)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    a = sub.add_parser("apply", help="write the model's masks (xseg_mask) into every face of DIR")
    a.add_argument("model", help="TorchSAE XSeg run/checkpoint, DFL XSeg folder (XSeg_256.npy) or .onnx")
    a.add_argument("dir", help="aligned faceset folder")
    a.add_argument("--face-type", help="the model's face type (default: recorded in the model; 'same' = none)")
    a.add_argument("--batch-size", type=int, default=8, help="faces per network call (default 8)")
    a.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    a.add_argument("--no-progress", action="store_true")

    for name, help_ in (("remove", "drop the applied xseg_mask from every face"),
                        ("remove-labels", "drop the XSeg polygons (seg_ie_polys) from every face")):
        r = sub.add_parser(name, help=help_)
        r.add_argument("dir", help="aligned faceset folder")
        r.add_argument("--no-progress", action="store_true")

    f = sub.add_parser("fetch", help="copy the faces that have polygons to OUT (default <DIR>_xseg)")
    f.add_argument("dir")
    f.add_argument("out", nargs="?", help="output folder (default: <DIR>_xseg beside DIR, as DFL)")
    f.add_argument("--move", action="store_true", help="delete the originals after copying (DFL's default answer)")

    rs = sub.add_parser("restore", help="put back the face metadata from a backup (default: the newest)")
    rs.add_argument("dir")
    rs.add_argument("--backup", help="a zip in <DIR>/.torchsae_xseg_backups")

    lb = sub.add_parser("labels", help="labels to/from JSON or COCO files")
    lsub = lb.add_subparsers(dest="labels_verb", metavar="export|import", required=True)
    lb.set_defaults(_verbs=lsub.choices)
    le = lsub.add_parser("export", help="write the polygons of DIR to a file")
    le.add_argument("dir")
    le.add_argument("--out", required=True, help="JSON file to write")
    le.add_argument("--format", choices=("json", "coco"), default="json")
    le.add_argument("--all", action="store_true", help="also list faces without polygons (to label elsewhere)")
    li = lsub.add_parser("import", help="write the polygons of a JSON/COCO file into the faces of DIR")
    li.add_argument("dir")
    li.add_argument("file", help="TorchSAE labels JSON or COCO JSON")
    li.add_argument("--no-progress", action="store_true")

    lab = sub.add_parser("label", help="label faces in the browser (local page on 127.0.0.1)")
    lab.add_argument("dir", help="aligned faceset folder")
    lab.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    lab.add_argument("--model", help="XSeg model whose prediction can be shown and used as a starting polygon")
    lab.add_argument("--no-browser", action="store_true", help="only print the address")

    e = sub.add_parser("export", help="export an XSeg model to ONNX (DFL's XSeg_model.onnx contract)")
    e.add_argument("model")
    e.add_argument("--out", required=True, help=".onnx file")
    e.add_argument("--opset", type=int, default=13, help="ONNX opset (DFL 13)")
    e.add_argument("--no-simplify", action="store_true")

    ed = sub.add_parser("export-dfl", help="write an XSeg checkpoint as DFL's XSeg model folder")
    ed.add_argument("model", help="TorchSAE XSeg run folder / checkpoint")
    ed.add_argument("--out", required=True, help="folder for XSeg_256.npy, XSeg_256_opt.npy, XSeg_data.dat")

    im = sub.add_parser("import-dfl", help="read DFL's XSeg model folder into a TorchSAE checkpoint")
    im.add_argument("dir", help="DFL model folder holding XSeg_256.npy")
    im.add_argument("--out", required=True, help="checkpoint file to write (model.pt)")
    im.add_argument("--face-type", help="when the folder has no XSeg_data.dat")


def parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The verb's own line, parsed intermixed like every command's (`xseg train R --max-steps 9 xseg.lr=2e-4`);
    argparse cannot intermix a parser that has sub-commands, so the verb (and `labels`' own verb) is taken
    first. Help and unknown verbs go through the plain parser, which prints and exits as usual."""
    verbs = p.get_default("_verbs")
    if not argv or argv[0] not in verbs:
        return p.parse_args(argv)
    verb, rest = argv[0], argv[1:]
    vp = verbs[verb]
    sub = vp.get_default("_verbs")
    extra = {}
    if sub is not None:  # `labels export|import`
        if not rest or rest[0] not in sub:
            return p.parse_args(argv)
        extra["labels_verb"], vp, rest = rest[0], sub[rest[0]], rest[1:]
    ns = vp.parse_intermixed_args(rest)
    ns.verb = verb
    for k, v in extra.items():
        setattr(ns, k, v)
    return ns


def _print(d: dict) -> None:
    print(json.dumps(d, indent=2, default=str))


def run(args: argparse.Namespace) -> int:
    v = args.verb
    if v == "train":
        resume = resume_value(args.resume, args.overrides)  # `--resume xseg.lr=2e-4`: not a checkpoint path
        flags = []
        if args.run_dir:
            flags.append(f"train.run_dir={json.dumps(args.run_dir)}")
        if args.device:
            flags.append(f"train.device={json.dumps(args.device)}")
        r = load_command_line([args.recipe, *args.overrides], flags)
        s = train_xseg(r, resume=resume, max_steps=args.max_steps, progress=not args.no_progress)
        print(f"trained {s['steps_done']} XSeg steps (now at step {s['step']}); loss {s['final_losses']['loss']:.4f}; "
              f"checkpoint {s['checkpoint']}")
        return 0
    if v == "apply":
        _print(apply_xseg(args.model, args.dir, face_type=args.face_type, batch_size=args.batch_size,
                          device=args.device, progress=not args.no_progress))
        return 0
    if v in ("remove", "remove-labels"):
        _print((remove_masks if v == "remove" else remove_labels)(args.dir, progress=not args.no_progress))
        return 0
    if v == "fetch":
        _print(fetch_labelled(args.dir, args.out, move=args.move))
        return 0
    if v == "restore":
        _print(restore_backup(args.dir, args.backup))
        return 0
    if v == "labels":
        if args.labels_verb == "export":
            _print(export_labels(args.dir, args.out, fmt=args.format, all_faces=args.all))
        else:
            _print(import_labels(args.dir, args.file, progress=not args.no_progress))
        return 0
    if v == "label":
        serve(args.dir, port=args.port, model=args.model, open_browser=not args.no_browser)
        return 0
    if v == "export":
        rep = export_xseg_onnx(args.model, args.out, opset=args.opset, simplify_graph=not args.no_simplify)
        _print({"out": str(rep.path), "opset": rep.opset, "resolution": rep.resolution, "face_type": rep.face_type,
                "simplified_with": rep.simplified_with, "max_abs_error_vs_torch": max(c[1] for c in rep.checks),
                "seconds": round(rep.seconds, 1)})
        return 0
    if v == "export-dfl":
        _print(export_dfl_xseg(args.model, args.out))
        return 0
    if v == "import-dfl":
        path, r = import_dfl_xseg(args.dir, args.out, face_type=args.face_type)
        rpath = path.with_suffix(".toml")
        if not rpath.exists():
            write_atomic(rpath, dumps(r))
        _print({"checkpoint": str(path), "recipe": str(rpath), "face_type": r.xseg.face_type,
                "base_ch": r.xseg.base_ch})
        return 0
    raise AssertionError(v)
