"""`torchsae merge [RECIPE] [table.key=value ...]`: put the swapped faces back into the frames and write the
video (DFL's merger, §10).

    torchsae merge recipes/quickstart.toml                                # everything from the recipe
    torchsae merge recipes/quickstart.toml merge.mode=seamless --no-video  # overrides like `train`
    torchsae merge --model runs/x/checkpoints/latest --aligned ws/data_dst/aligned --frames ws/data_dst \\
                   --out ws/merged --video ws/result.mp4 --mode seamless --erode 20 --blur 40
    torchsae merge --model model.dfm --aligned A --frames clip.mp4 --out M --video out.mp4 --face-type wf
    torchsae merge R --mask-mode XSeg-dst --xseg-model models/xseg   # folder with XSeg_256.npy

Defaults (each overridable by its flag):
- recipe: RECIPE (with its overrides), else the recipe stored in the model checkpoint (none for .onnx/.dfm);
- --model: the newest checkpoint of the recipe's run folder ([train].run_dir, else runs/<recipe name>);
- --aligned: the recipe's [data].dst (e.g. workspace/demo/data_dst/aligned);
- --frames: the aligned folder's parent (data_dst/, where `torchsae extract` writes the frames);
- --out: <workspace>/merged, with <workspace> = the frames folder's parent;
- --video: <workspace>/result.mp4 when the folders came from the recipe; otherwise no video unless given
  (--no-video skips it);
- merge settings: the recipe's [merge] table (DFL's MergerConfig defaults, §10.3), then the flags;
- face type: --face-type, else the model's (checkpoint recipe or export metadata), else the aligned faces';
- frame rate: --fps, else the source video's (--frames VIDEO, or the video recorded in
  <aligned>/extract_summary.json), else 25; audio from that same source video unless --no-audio.
Frames already in --out are skipped (resume). No prompts: everything DFL asks interactively is a flag.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import attrs
import torch

from engine import recipe as recipe_mod
from engine.errors import TorchSAEError
from engine.export.inference import latest_checkpoint
from engine.merge.config import merge_face_type, needs_xseg, with_flags
from engine.merge.model import open_merge_model
from engine.merge.runner import merge_frames, output_path
from engine.merge.sources import index_aligned, open_frames, source_video_of, video_fps
from engine.merge.video import write_video
from engine.recipe import split_command_line
from engine.recipe.specs import MergeSpec, Recipe
from engine.xseg.model import open_masker

__all__ = ["add_arguments", "run", "resolve_paths"]

log = logging.getLogger("torchsae.merge")

DEFAULT_FPS = 25.0
# the [merge] keys with a flag of the same name (the others: `merge.key=value` overrides)
MERGE_FLAGS = tuple(f.name for f in attrs.fields(MergeSpec) if f.name != "workers")


def add_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("recipe", nargs="?", help="recipe whose run folder, faceset and [merge] table give the defaults")
    io.add_argument("overrides", nargs="*", help="table.key=value or ~table.key (with RECIPE)")
    io.add_argument("--model", help="checkpoint (model.pt, step_* folder, run folder), DFL model folder, .onnx/.dfm "
                    "or parts folder; default: the recipe's newest checkpoint")
    io.add_argument("--aligned", help="aligned dst faces (DFLJPG with source_filename/source_landmarks); default: "
                    "the recipe's [data].dst")
    io.add_argument("--frames", help="folder of frames or a video; default: the aligned folder's parent")
    io.add_argument("--out", help="folder for the merged frames; default: <workspace>/merged")
    v = io.add_mutually_exclusive_group()
    v.add_argument("--video", help="also encode the merged frames into this video (mp4, H.264)")
    v.add_argument("--no-video", action="store_true", help="write frames only")
    io.add_argument("--xseg-model", metavar="DIR", help="XSeg model for mask modes 6-9: DFL XSeg folder (XSeg_256.npy), "
                    "TorchSAE XSeg run/checkpoint, or an exported XSeg .onnx")
    io.add_argument("--face-type", help="crop face type (default: the model's)")
    io.add_argument("--format", choices=("png", "jpg"), default="png", help="merged frame format (default png; jpg "
                    "at quality 100 as DFL)")
    io.add_argument("--mask-dir", help="also write each frame's merge mask as PNG here (DFL's merged_mask)")
    io.add_argument("--fps", type=float, help="video frame rate (default: the source video's, else 25)")
    io.add_argument("--audio-from", help="media file whose audio goes into the video (default: the source video)")
    io.add_argument("--no-audio", action="store_true", help="no audio in the video")
    io.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    io.add_argument("--workers", type=int, help="merge worker processes (default [merge].workers; 0 = this process)")
    io.add_argument("--seed", type=int, default=0, help="seed of the randomised colour transfers (idt, sot, mix)")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = p.add_argument_group("merge settings (override the recipe's [merge] table; DFL MergerConfig)")
    for name in MERGE_FLAGS:  # one flag per [merge] key, its help and valid values from the schema
        meta = attrs.fields_dict(MergeSpec)[name].metadata
        flag = "--" + name.replace("_", "-")
        if meta["type"] is bool:
            s.add_argument(flag, dest=name, action="store_true", default=None, help=meta["help"])
            s.add_argument("--no-" + flag[2:], dest=name, action="store_false", default=None)
        elif meta["choices"]:
            ids = ", ".join(f"{i} {n}" for i, n in enumerate(meta["choices"]))
            s.add_argument(flag, help=f"{meta['help']}: name or DFL id, {ids}".replace("%", "%%"))
        else:
            s.add_argument(flag, type=int, help=f"{meta['help']}, {meta['min']}..{meta['max']}".replace("%", "%%"))


def _recipe_of(args) -> Recipe | None:
    """The recipe with its overrides (in any order around it), or None when the line names none."""
    path, overrides = split_command_line([args.recipe, *args.overrides])
    if path is None and overrides:
        raise TorchSAEError(f"merge: overrides ({' '.join(overrides)}) need a recipe to apply to")
    return recipe_mod.load(path, overrides) if path is not None else None


def resolve_paths(args, recipe: Recipe | None) -> dict[str, Any]:
    """The model/aligned/frames/out/video paths after applying the defaults in the module doc."""
    paths: dict[str, Any] = {}
    if args.model:
        paths["model"] = Path(args.model)
    elif recipe is not None:
        paths["model"] = latest_checkpoint(recipe)
    else:
        raise TorchSAEError("merge: give a RECIPE or --model (a checkpoint, DFL model folder, .onnx or .dfm)")
    from_recipe = False
    if args.aligned:
        aligned = Path(args.aligned)
    elif recipe is not None:
        aligned, from_recipe = Path(recipe.data.dst), True
    else:
        raise TorchSAEError("merge: give --aligned DIR (the dst faces, e.g. data_dst/aligned) or a RECIPE")
    frames = Path(args.frames) if args.frames else aligned.parent
    workspace = frames.parent  # data_dst/ -> workspace/; a video file -> its folder
    out = Path(args.out) if args.out else workspace / "merged"
    if args.no_video:
        video = None
    elif args.video:
        video = Path(args.video)
    else:
        video = workspace / "result.mp4" if from_recipe else None
    paths.update(aligned=aligned, frames=frames, out=out, video=video, workspace=workspace)
    return paths


def run(args: argparse.Namespace) -> int:
    recipe = _recipe_of(args)
    paths = resolve_paths(args, recipe)
    aligned = index_aligned(paths["aligned"])
    frames = open_frames(paths["frames"])
    model = open_merge_model(paths["model"])
    spec = (recipe or model.recipe).merge if (recipe or model.recipe) is not None else MergeSpec()

    if args.face_type:
        face_type = merge_face_type(args.face_type, "--face-type")
    elif model.face_type is not None:
        face_type = merge_face_type(model.face_type, f"{paths['model']}: face type")
    else:
        types = aligned.face_types
        if not types:
            raise TorchSAEError(f"{paths['model']}: the model does not say which face type it was trained on and the "
                                "aligned faces carry none; give --face-type (h, mf, f, wf, head)")
        face_type = merge_face_type(max(types, key=types.get), f"{paths['aligned']}: face_type")
        log.info("merge: face type %s taken from the aligned faces (the model does not record one)", face_type.long_name)

    # one flag per [merge] key, same name (add_arguments); None = not given
    spec = with_flags(spec, {key: getattr(args, key) for key in MERGE_FLAGS})

    xseg = None
    if args.xseg_model:
        # DFL runs XSeg on the CPU; a GPU is simply faster and gives the same mask within float tolerance
        xseg = open_masker(args.xseg_model, device="cuda" if torch.cuda.is_available() else "cpu")
    elif needs_xseg(spec):
        raise TorchSAEError(f"mask mode {spec.mask_mode} runs DFL's XSeg network: give --xseg-model DIR (DFL's "
                            "XSeg folder holding XSeg_256.npy, or a `torchsae xseg train` run folder; an exported XSeg "
                            ".onnx file works too)")

    workers = spec.workers if args.workers is None else args.workers
    summary = merge_frames(model, frames, aligned, paths["out"], spec, face_type, xseg=xseg, workers=workers, fmt=args.format,
                           mask_dir=args.mask_dir, seed=args.seed, progress=not args.no_progress)
    result = summary.to_dict()

    if paths["video"] is not None:
        source = frames.path if frames.kind == "video" else source_video_of(paths["aligned"])
        fps = args.fps or (video_fps(source) if source is not None else None) or DEFAULT_FPS
        audio = None if args.no_audio else (Path(args.audio_from) if args.audio_from else source)
        files = [output_path(Path(paths["out"]), s, args.format) for s in summary.frames]
        write_video(files, paths["video"], fps, audio_from=audio, crf=args.crf)
        result.update(video=str(paths["video"]), fps=fps, audio_from=str(audio) if audio else None)
    print(json.dumps(result, indent=2))
    return 0
