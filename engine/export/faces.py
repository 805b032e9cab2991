"""Aligned-face image I/O for export verification and `torchsae swap`.

Faces are read the way DeepFaceLive feeds a model (docs/dfl.md §9.2 ``convert``): resized to the model's R×R,
3 channels, float32 BGR in [0, 1] (uint8 / 255), NHWC. DFLJPG files are ordinary JPEGs to OpenCV (the
metadata sits in an APP15 segment), so aligned DFL facesets read directly.

Resizing: INTER_AREA when shrinking (no aliasing), INTER_CUBIC when enlarging (DFL's merger warps with
cubic). Files are decoded like extraction's inputs (engine.extract.media.read_image: any path, grey, alpha
and 16-bit images made 8-bit BGR).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from engine.errors import DataError
from engine.extract.media import IMAGE_EXTS, read_image

__all__ = ["list_images", "read_face", "resize", "write_image", "smooth_faces"]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name. Raises DataError when it is not a folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of aligned faces")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an HWC image to `size` (int = square, or (w, h)); area when shrinking, cubic when enlarging."""
    w, h = (size, size) if isinstance(size, int) else size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    shrink = w * h < img.shape[0] * img.shape[1]
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out[..., None] if img.ndim == 3 and out.ndim == 2 else out


def read_face(path: str | Path, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """One aligned face -> ((R, R, 3) float32 BGR in [0, 1], original (w, h)).

    DataError naming the file when it cannot be decoded or is not square (aligned faces are square).
    """
    img = read_image(Path(path))
    h, w = img.shape[:2]
    if h != w:
        raise DataError(f"{path}: {w}x{h} is not square; aligned faces are square (extract them first)")
    face = resize(img, resolution).astype(np.float32) / 255.0
    return np.ascontiguousarray(face), (w, h)


def write_image(path: str | Path, img: np.ndarray) -> None:
    """Write an HWC float image in [0, 1] (1 or 3 channels, BGR) as 8-bit, atomically (tmp + rename)."""
    path = Path(path)
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if u8.ndim == 3 and u8.shape[2] == 1:
        u8 = u8[..., 0]
    ok, enc = cv2.imencode(path.suffix or ".png", u8)
    if not ok:
        raise DataError(f"{path}: OpenCV could not encode the image")
    tmp = path.with_name(path.name + ".tmp")
    enc.tofile(str(tmp))
    tmp.replace(path)


def smooth_faces(n: int, resolution: int, seed: int = 0) -> np.ndarray:
    """(n, R, R, 3) float32 "real-looking" stand-ins when no faces folder is given: uniform noise blurred
    with a Gaussian (sigma R/32), stretched back to [0, 1] per image — smooth regions and edges like a
    photo, unlike white noise (the DFL goldens use the same kind of input)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, resolution, resolution, 3), np.float32)
    sigma = max(resolution / 32.0, 1.0)
    for i in range(n):
        img = cv2.GaussianBlur(rng.uniform(0, 1, (resolution, resolution, 3)).astype(np.float32), (0, 0), sigma)
        lo, hi = img.min(), img.max()
        out[i] = (img - lo) / max(hi - lo, 1e-6)
    return out
