"""XSeg test facesets: the synthetic DFLJPG faces the training tests use (tests/synthetic_faces.py), labelled
with DFL polygons derived from their landmark hulls — the drawn skin is the convex hull of landmarks 0-26,
so that hull is an exact include polygon."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
from engine.faces import dfljpg
from synthetic_faces import write_synthetic_faceset


def hull_polygon(landmarks: np.ndarray) -> np.ndarray:
    """float32 (n, 2): the convex hull of landmarks 0-26 (jaw and brows), as an editor user would trace it."""
    return cv2.convexHull(np.asarray(landmarks[:27], np.float32)).reshape(-1, 2).astype(np.float32)


def label_faces(paths, every: int = 1, exclude_mouth: bool = False) -> None:
    """Write DFL's seg_ie_polys (include = landmark hull; optional exclude = inner mouth) into every
    `every`-th face (0 = none)."""
    for i, p in enumerate(paths):
        if not every or i % every:
            continue
        lm = dfljpg.read(p)["landmarks"]
        polys = [{"type": 1, "pts": hull_polygon(lm)}]
        if exclude_mouth:
            polys.append({"type": 0, "pts": np.asarray(lm[60:68], np.float32)})
        dfljpg.update_meta(p, seg_ie_polys={"polys": polys})


def make_faceset(folder: Path, n: int, *, size: int = 128, seed: int = 0, every: int = 1, face_type: str = "wf",
                 source_landmarks: bool = False, exclude_mouth: bool = False) -> list[Path]:
    paths = write_synthetic_faceset(folder, n, size=size, face_type=face_type, seed=seed)
    if source_landmarks:  # the aligned image stands in for its frame: enough for apply's re-crop geometry
        for p in paths:
            dfljpg.update_meta(p, source_landmarks=dfljpg.read(p)["landmarks"])
    label_faces(paths, every, exclude_mouth)
    return paths


def xseg_recipe_text(facesets, run_dir, *, resolution=64, base_ch=4, batch_size=2, extra_xseg="", extra_train=""):
    sets = ", ".join(f'"{p}"' for p in facesets)
    return (f'kind = "xseg"\n[xseg]\nfacesets = [{sets}]\nresolution = {resolution}\nbase_ch = {base_ch}\nworkers = 0\n'
            f'{extra_xseg}\n[train]\nrun_dir = "{run_dir}"\nbatch_size = {batch_size}\n{extra_train}\n')
