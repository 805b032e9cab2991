"""Synthetic DFL facesets for tests, benchmarks and smoke runs anywhere (a plain module: tests import it as
`synthetic_faces`; bench/ and scripts/, which run from the repository root, as `tests.synthetic_faces`).

`synthetic_face` draws one aligned face from DFL's mean 3D face; `write_synthetic_faceset` writes a folder
of them as DFLJPGs with DFL's metadata (optionally with XSeg masks), which the training loader reads like
an extracted faceset.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.faces import dfljpg
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, landmarks_68_3D, transform_points
from engine.faces.masks import get_image_hull_mask

__all__ = ["synthetic_face", "write_synthetic_faceset"]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def synthetic_face(rng: np.random.Generator, size: int = 512, face_type: str | FaceType = "wf",
                   max_yaw_deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """A drawn face: (BGR uint8 (size, size, 3), aligned landmarks float64 (68, 2)).

    DFL's mean 3D face (landmarks_68_3D) is posed (yaw ±max_yaw_deg, pitch/roll ±10°), projected, and
    aligned for `face_type` with get_transform_mat like DFL's extractor; skin, brows, eyes, nose and mouth
    are drawn from those landmarks over a random gradient background, with mild noise and blur.
    """
    pose = _rotation(np.deg2rad(rng.uniform(-max_yaw_deg, max_yaw_deg)), np.deg2rad(rng.uniform(-10, 10)),
                     np.deg2rad(rng.uniform(-10, 10)))
    pts3 = landmarks_68_3D.astype(np.float64) * rng.uniform(0.9, 1.1, size=(1, 3))
    frame = (pts3 @ pose.T)[:, :2] * 2.0 + 400.0 + rng.normal(0, 0.8, size=(68, 2))
    lm = transform_points(frame, get_transform_mat(frame, size, face_type)).astype(np.float64)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx * rng.uniform(0.2, 1) + yy * rng.uniform(0.2, 1))[..., None] / 2
    img = (c0 * (1 - t) + c1 * t).astype(np.float32)
    p = lambda idx: np.round(lm[idx]).astype(np.int32)  # noqa: E731
    skin = rng.uniform([60, 90, 140], [150, 170, 230])
    hull = cv2.convexHull(np.round(lm[np.r_[0:27]]).astype(np.int32))
    cv2.fillConvexPoly(img, hull, skin.tolist(), lineType=cv2.LINE_AA)
    brow = (skin * 0.35).tolist()
    cv2.polylines(img, [p(np.r_[17:22]), p(np.r_[22:27])], False, brow, max(1, size // 64), cv2.LINE_AA)
    for eye in (np.r_[36:42], np.r_[42:48]):
        cv2.fillConvexPoly(img, cv2.convexHull(p(eye)), (235, 235, 235), cv2.LINE_AA)
        c = lm[eye].mean(0)
        cv2.circle(img, tuple(np.round(c).astype(int)), max(1, size // 80), rng.uniform(20, 120, 3).tolist(), -1, cv2.LINE_AA)
    cv2.polylines(img, [p(np.r_[27:31]), p(np.r_[31:36])], False, (skin * 0.7).tolist(), max(1, size // 128), cv2.LINE_AA)
    cv2.fillPoly(img, [p(np.r_[48:60])], rng.uniform([60, 60, 150], [110, 110, 220]).tolist(), cv2.LINE_AA)
    cv2.fillPoly(img, [p(np.r_[60:68])], (40, 30, 60), cv2.LINE_AA)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8), lm


def write_synthetic_faceset(folder: str | Path, n: int, *, size: int = 512, face_type: str | FaceType = "wf",
                            seed: int = 0, xseg_every: int = 0, max_yaw_deg: float = 30.0) -> list[Path]:
    """Write `n` synthetic DFLJPG faces (face_type, landmarks, source_filename; every `xseg_every`-th with
    a 256×256 binary XSeg mask as DFL's apply_xseg writes) into `folder`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img, lm = synthetic_face(rng, size, face_type, max_yaw_deg)
        meta = {"face_type": face_type, "landmarks": lm, "source_filename": f"frame{i:05d}.png"}
        if xseg_every and i % xseg_every == 0:
            hull = get_image_hull_mask((256, 256), lm * (256 / size))
            meta["xseg_mask"] = (hull > 0.5).astype(np.float32)
        path = folder / f"{i:05d}_0.jpg"
        dfljpg.write(path, img, meta)
        paths.append(path)
    return paths
