"""`torchsae export SOURCE --format onnx|dfm`: export a trained model (docs/dfl.md §9).

SOURCE is a checkpoint (model.pt, step_* folder or run folder), a DFL SAEHD model folder, or a recipe
(`.toml`: the newest checkpoint of its run folder).

    torchsae export runs/df128/checkpoints/step_000500.pt --format dfm --out df128.dfm
    torchsae export recipes/quickstart.toml --format onnx --opset 17 --fp16
    torchsae export recipes/quickstart.toml --format onnx --int8   # int8 for CPU inference
    torchsae export workspace/model --format dfm            # a DFL SAEHD model folder
    torchsae export CKPT --parts --out parts/               # one ONNX per part + parts.json

Defaults come from the checkpoint's recipe ([export] format, opset, fp16, simplify); flags override
them. Without --out the file goes to ``<run dir>/export/<recipe name>.<format>`` (``<name>_parts/`` with
--parts). Verification faces: --verify-faces, else the recipe's [data].dst folder when it exists, else
smooth random images.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.errors import TorchSAEError
from engine.export.faces import list_images
from engine.export.inference import default_export_path, load_for_inference, model_source
from engine.export.onnx_export import export_model
from engine.export.parts import export_parts

log = logging.getLogger("torchsae.export")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="TorchSAE checkpoint (model.pt, step_* folder or run folder), a DFL SAEHD model "
                   "folder with its data.dat (bare part files: run `torchsae import-dfl` first), or a recipe .toml "
                   "(its run folder's newest checkpoint)")
    p.add_argument("--format", choices=("onnx", "dfm"), help="onnx (NCHW, opset --opset) or dfm (DeepFaceLive, "
                   "opset 12); default: the recipe's [export].format (onnx with --int8)")
    p.add_argument("--out", help="output file (folder with --parts)")
    p.add_argument("--opset", type=int, help="ONNX opset for --format onnx (default: [export].opset, 17)")
    p.add_argument("--fp16", action="store_true", default=None, help="float16 convs inside, float32 I/O "
                   "(DFL's quantized export)")
    p.add_argument("--int8", action="store_true", help="int8 quantized graph for CPU inference (format onnx; "
                   "activation ranges calibrated on the verification faces; checked against fp32 torch)")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxsim/onnxslim")
    p.add_argument("--keep-unsimplified", action="store_true",
                   help="also keep <out stem>.unsimplified.onnx (always kept when onnxslim was the fallback)")
    p.add_argument("--parts", action="store_true", help="one ONNX file per part (encoder, inters, decoders) "
                   "plus parts.json, instead of the whole model")
    p.add_argument("--verify-faces", metavar="DIR", help="aligned faces used to verify the export")


def _faces_for_verification(args, recipe) -> str | None:
    if args.verify_faces:
        return args.verify_faces
    dst = Path(recipe.data.dst)
    if dst.is_dir():
        if list_images(dst):
            return str(dst)
    return None


def run(args: argparse.Namespace) -> int:
    source = model_source(args.source)
    recipe, model = load_for_inference(source)
    spec = recipe.export
    fmt = args.format or ("onnx" if args.int8 else spec.format)  # int8 exists for format onnx only
    fp16 = spec.fp16 if args.fp16 is None else True
    simplify = spec.simplify and not args.no_simplify
    faces = _faces_for_verification(args, recipe)
    meta = {"recipe": recipe.name, "archi": model.dfl_archi or "graph", "face_type": recipe.model.face_type,
            "source": source.name}
    out = Path(args.out) if args.out else default_export_path(source, recipe, fmt, parts=args.parts)
    log.info("export: %s (%s, res %d, face type %s) -> %s", source, meta["archi"], model.resolution,
             recipe.model.face_type, out)
    if args.parts and args.int8:
        raise TorchSAEError("--int8 applies to whole models, not --parts")
    if args.parts:
        if fmt == "dfm":
            log.info("export --parts: parts are ONNX files (NCHW); the dfm format applies to whole models only")
        opset = args.opset if args.opset is not None else spec.opset
        rep = export_parts(model, out, opset=opset, fp16=fp16, simplify_graph=simplify, verify_faces=faces,
                           metadata=meta)
        worst = max(c[2] for c in rep.checks)
        print(f"wrote {len(rep.manifest['nodes'])} nodes ({sum(1 for n in rep.manifest['nodes'] if n['file'])} "
              f"ONNX parts) to {rep.folder}; max |ORT - torch| {worst:.2g}")
        return 0
    if fmt == "dfm":
        if args.opset not in (None, 12):
            raise TorchSAEError(f"--opset {args.opset} with --format dfm: DeepFaceLive's .dfm contract is opset 12 "
                                "(docs/dfl.md §9.1); use --format onnx for another opset")
        opset = 12
    else:
        opset = args.opset if args.opset is not None else spec.opset
    rep = export_model(model, out, fmt=fmt, opset=opset, fp16=fp16, int8=args.int8, simplify_graph=simplify,
                       keep_unsimplified=args.keep_unsimplified, verify_faces=faces, metadata=meta)
    worst = max(c[2] for c in rep.checks if not c[0].startswith(("simplified", "int8")))
    int8_worst = max((c[2] for c in rep.checks if c[0].startswith("int8")), default=None)
    print(f"wrote {rep.path} ({fmt}, opset {rep.opset}{', fp16' if fp16 else ''}{', int8' if rep.int8 else ''}, "
          f"{sum(rep.op_types.values())} nodes); verified with ONNX Runtime: max |ORT - torch| {worst:.2g}"
          + (f" (fp32 graph), {int8_worst:.2g} (int8 graph)" if int8_worst is not None else ""))
    if rep.unsimplified_path:
        print(f"kept the unsimplified graph: {rep.unsimplified_path}")
    return 0
