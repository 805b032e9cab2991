"""Helpers shared by the extraction tests (a plain module: conftest.py names can collide across test
folders, so tests import from here)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "torchsae"  # gitignored download cache shared with `make data`


def mean_face_landmarks(size: int, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """(68, 2) float64 synthetic landmarks: DFL's mean 3D face rotated (yaw about y, pitch about x,
    roll about z), orthographically projected, scaled to ~45 % of `size` and centred."""
    from engine.faces.landmarks import landmarks_68_3D

    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    pts = landmarks_68_3D.astype(np.float64) @ (rz @ rx @ ry).T
    return pts[:, :2] * (0.45 * size / 150.0) + size / 2.0
