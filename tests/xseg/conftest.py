"""Fixtures of the XSeg tests: labelled synthetic facesets (helpers in xseg_helpers.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from xseg_helpers import make_faceset


@pytest.fixture(scope="session")
def xseg_faces_master(tmp_path_factory) -> Path:
    """6 labelled 128² whole-face DFLJPGs (read-only master: copy before changing)."""
    root = tmp_path_factory.mktemp("xseg_faces")
    make_faceset(root / "A", 6, seed=11, source_landmarks=True)
    return root / "A"


@pytest.fixture
def xseg_faces(xseg_faces_master, tmp_path) -> Path:
    """A private copy of the labelled master faceset."""
    dst = tmp_path / "faces"
    shutil.copytree(xseg_faces_master, dst)
    return dst
