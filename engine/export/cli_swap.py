"""`torchsae swap MODEL --faces DIR --out DIR`: run a model over a folder of aligned faces.

MODEL is a .dfm / .onnx file (ONNX Runtime, CUDA provider when present), a ``--parts`` export folder,
a TorchSAE checkpoint or a DFL model folder (torch). Each readable, square image of --faces is resized to
the model's R×R (engine.export.faces), swapped in batches, and written as

    <out>/<stem>.png        the swapped face (celeb_face), BGR
    <out>/<stem>_mask.png   the mask chosen by --mask (default DFL's merge default learned-prd*learned-dst,
                            i.e. celeb_mask * face_mask; docs/dfl.md §10.3)

at the input image's size (``--size input``, like DeepFaceLive's ``convert`` resizes the outputs back,
docs/dfl.md §9.2) or at the model's (``--size model``). Unreadable or non-square files are skipped and listed at
the end; the command fails only when no face at all could be swapped.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine.errors import DataError
from engine.export.faces import list_images, read_face, resize, write_image
from engine.export.runtime import open_model

log = logging.getLogger("torchsae.export")

MASKS = ("prd*dst", "prd", "dst")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=".dfm/.onnx file, --parts folder, checkpoint .pt or DFL model folder")
    p.add_argument("--faces", required=True, help="folder of aligned faces (jpg/png)")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--batch-size", type=int, default=8, help="faces per model call (default 8)")
    p.add_argument("--mask", choices=MASKS, default="prd*dst",
                   help="mask written as <stem>_mask.png: prd = celeb mask, dst = face mask, prd*dst = both "
                        "(default, DFL's learned-prd*learned-dst)")
    p.add_argument("--size", choices=("input", "model"), default="input",
                   help="write outputs at each input image's size (default) or at the model resolution")


def _select_mask(kind: str, celeb_mask: np.ndarray, face_mask: np.ndarray) -> np.ndarray:
    if kind == "prd":
        return celeb_mask
    if kind == "dst":
        return face_mask
    return celeb_mask * face_mask


def swap_folder(model, faces_dir: str | Path, out_dir: str | Path, *, batch_size: int = 8, mask: str = "prd*dst",
                size: str = "input", progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Swap every face of `faces_dir` with `model` (a swapper from engine.export.runtime); returns
    (written face files, [(skipped file, reason)])."""
    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size}: must be at least 1")
    files = list_images(faces_dir)
    if not files:
        raise DataError(f"{faces_dir}: no images (looked for jpg, jpeg, png, bmp, webp, tif)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    R = int(model.resolution)
    written: list[Path] = []
    bad: list[tuple[Path, str]] = []
    stems: dict[str, Path] = {}
    bar = tqdm(total=len(files), unit="face", desc="swap", disable=not progress)
    for start in range(0, len(files), batch_size):
        batch, sizes, names = [], [], []
        for f in files[start:start + batch_size]:
            if f.stem in stems:
                bad.append((f, f"same name stem as {stems[f.stem].name}: outputs would collide"))
                continue
            try:
                face, wh = read_face(f, R)
            except DataError as e:
                bad.append((f, str(e).split(": ", 1)[-1]))
                continue
            stems[f.stem] = f
            batch.append(face)
            sizes.append(wh)
            names.append(f.stem)
        if batch:
            celeb, celeb_mask, face_mask = model(np.stack(batch))
            m = _select_mask(mask, celeb_mask, face_mask)
            for i, stem in enumerate(names):
                img, msk = celeb[i], m[i]
                if size == "input":
                    img, msk = resize(img, sizes[i]), resize(msk, sizes[i])
                write_image(out_dir / f"{stem}.png", img)
                write_image(out_dir / f"{stem}_mask.png", msk)
                written.append(out_dir / f"{stem}.png")
        bar.update(min(batch_size, len(files) - start))
    bar.close()
    return written, bad


def run(args: argparse.Namespace) -> int:
    model = open_model(args.model)
    log.info("swap: %s at %dx%d, faces from %s", model.description, model.resolution, model.resolution, args.faces)
    written, bad = swap_folder(model, args.faces, args.out, batch_size=args.batch_size, mask=args.mask,
                               size=args.size)
    log.info("swap: wrote %d faces and masks to %s", len(written), args.out)
    if bad:
        log.warning("swap: skipped %d file(s):\n%s", len(bad), "\n".join(f"  {p}: {why}" for p, why in bad))
    if not written:
        raise DataError(f"{args.faces}: no face could be swapped ({len(bad)} file(s) skipped, listed above)")
    return 0
