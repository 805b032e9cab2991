"""What the merger reads: frames (a folder of images or a video), the aligned faces that point back into
them, and the per-frame motion DFL derives from the landmarks (docs/dfl.md §10.1).

- Frames: engine.extract.media (video frames are named 00001, 00002, ... like DFL's ``%5d.png``; images
  keep their stem; folders are read in natural order).
- Aligned faces: every DFLJPG in the aligned folder whose ``source_filename`` stem equals a frame's stem
  contributes its ``source_landmarks`` (frame pixels) to that frame, in natural file-name order (DFL's
  `<frame>_<i>.jpg` order). Files without DFL metadata are skipped with a warning.
- Motion (only used by motion blur): for frame i with faces in i-1, i and i+1, the centre (127, 127) of a
  256 px FULL-face crop of the first face is mapped back to the frame in each; the vector next - prev gives
  motion_power = its length (px) and motion_deg = -atan2(dy, dx) in degrees. As DFL, motion is only
  computed when no frame has more than one face; frames without neighbours get (0, 0).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import cv2
import numpy as np

from engine.extract.extractor import SUMMARY_NAME
from engine.extract.media import VIDEO_EXTS, open_media, read_image, video_frame_stem
from engine.faces import dfljpg
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, transform_points
from engine.errors import DataError

__all__ = ["FaceRecord", "AlignedIndex", "index_aligned", "FrameSource", "open_frames", "motion_vectors",
           "video_fps", "source_video_of", "natural_key"]

log = logging.getLogger("torchsae.merge")

_ALIGNED_EXTS = (".jpg", ".jpeg")


def natural_key(name: str) -> list:
    """Sort key putting 'x2' before 'x10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@attrs.frozen
class FaceRecord:
    """One aligned face: its file, (68, 2) landmarks in frame pixels, and its face type."""

    path: Path
    landmarks: np.ndarray = attrs.field(eq=False, repr=False)
    face_type: str | None = None


@attrs.frozen
class AlignedIndex:
    """frame stem -> faces (in file-name order), plus the folder's face types (for messages/defaults)."""

    folder: Path
    faces: dict[str, list[FaceRecord]]
    skipped: int = 0

    def for_frame(self, stem: str) -> list[FaceRecord]:
        return self.faces.get(stem, [])

    @property
    def face_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for recs in self.faces.values():
            for r in recs:
                if r.face_type:
                    counts[r.face_type] = counts.get(r.face_type, 0) + 1
        return counts


def index_aligned(folder: str | Path) -> AlignedIndex:
    """Read every DFLJPG in `folder` and group its source_landmarks by source frame stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--aligned {folder}: no such folder (expected DFL's aligned faces, e.g. data_dst/aligned)")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _ALIGNED_EXTS),
                   key=lambda p: natural_key(p.name))
    faces: dict[str, list[FaceRecord]] = {}
    skipped = 0
    for p in files:
        meta = dfljpg.read(p)
        if not meta or meta.get("source_filename") is None or meta.get("source_landmarks") is None:
            skipped += 1
            log.warning("merge: %s has no DFL source metadata (source_filename/source_landmarks); skipped", p)
            continue
        lm = np.asarray(meta["source_landmarks"], dtype=np.float32)
        if lm.shape != (68, 2):
            raise DataError(f"{p}: source_landmarks has shape {lm.shape}; expected 68 [x, y] points")
        stem = Path(str(meta["source_filename"])).stem
        faces.setdefault(stem, []).append(FaceRecord(p, lm, meta.get("face_type")))
    log.info("merge: %d aligned faces for %d frames in %s%s", sum(len(v) for v in faces.values()), len(faces),
             folder, f" ({skipped} files without metadata skipped)" if skipped else "")
    return AlignedIndex(folder=folder, faces=faces, skipped=skipped)


@attrs.frozen
class FrameSource:
    """Frames to merge: names in order and a way to read them (folder images or a decoded video)."""

    path: Path
    kind: str  # 'images' or 'video'
    stems: tuple[str, ...]
    files: tuple[Path, ...] = ()
    reader: str = "cv2"

    def read(self, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[tuple[int, str, np.ndarray]]:
        """Yield (index, stem, uint8 BGR frame) in order, leaving out the stems in `skip` (a video's skipped
        frames are grabbed but not converted; a folder's are not read)."""
        if self.kind == "images":
            for i, (stem, f) in enumerate(zip(self.stems, self.files)):
                if stem not in skip:
                    yield i, stem, read_image(f)
            return
        src = open_media(self.path, self.reader)
        for fr in src.frames(lambda _i, s: s not in skip):
            yield fr.index, fr.stem, fr.image


def open_frames(path: str | Path) -> FrameSource:
    """A folder of frames or a video file (DataError when neither). A video's `stems` come from its
    container frame count, which can be approximate; `read` yields whatever the decoder delivers."""
    src = open_media(path)
    if src.kind == "video":
        return FrameSource(path=src.path, kind="video", stems=tuple(video_frame_stem(i) for i in range(max(src.count, 0))),
                           reader=src.reader)
    return FrameSource(path=src.path, kind="images", stems=tuple(f.stem for f in src.files), files=tuple(src.files))


def motion_vectors(landmarks: list[list[np.ndarray]]) -> list[tuple[float, float]]:
    """Per frame (motion_power px, motion_deg) from the first face of the previous, current and next frame
    (module doc). `landmarks[i]` is frame i's list of (68, 2) arrays."""
    n = len(landmarks)
    out = [(0.0, 0.0)] * n
    if any(len(f) > 1 for f in landmarks):
        log.warning("merge: some frames have several faces; motion blur is off (as in DFL)")
        return out
    s = 256
    centre = np.float32([[s // 2 - 1, s // 2 - 1]])

    def point(i: int) -> np.ndarray:
        mat = get_transform_mat(landmarks[i][0], s, FaceType.FULL)
        return transform_points(centre, mat, True)[0]

    for i in range(n):
        ip, inx = max(0, i - 1), min(i + 1, n - 1)
        if not (landmarks[ip] and landmarks[i] and landmarks[inx]):
            continue
        v = point(inx) - point(ip)
        power = float(np.linalg.norm(v))
        v = v / power if power != 0 else np.zeros(2, np.float32)
        out[i] = (power, -math.atan2(float(v[1]), float(v[0])) * 180.0 / math.pi)
    return out


def video_fps(path: str | Path) -> float | None:
    """A video's frame rate (OpenCV, else ffmpeg's probe); None when neither knows."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) if cap.isOpened() else 0.0
    finally:
        cap.release()
    if fps and fps > 0 and math.isfinite(fps):
        return float(fps)
    try:
        import imageio_ffmpeg  # the ffmpeg fallback, loaded only when OpenCV cannot read the video

        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
        fps = float(meta.get("fps") or 0)
        return fps if fps > 0 else None
    except Exception:  # noqa: BLE001 - a probe failure just means "unknown"
        return None


def source_video_of(aligned: Path) -> Path | None:
    """The video the faces were extracted from, as engine.extract records it in
    ``<aligned>/extract_summary.json`` ("input"), when that file and video still exist."""
    f = Path(aligned) / SUMMARY_NAME
    if not f.is_file():
        return None
    try:
        inp = json.loads(f.read_text(encoding="utf-8")).get("input")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not inp:
        return None
    p = Path(inp)
    return p if p.is_file() and p.suffix.lower() in VIDEO_EXTS else None
