"""Media input for extraction: a video file, a folder of images, or one image -> BGR frames.

Frame names follow DFL's workspace conventions:
- video frames are named by their 1-based index, zero-padded to 5 digits (`00001`, `00002`, ...), which
  is what DFL's `extract video` (ffmpeg `%5d.png`) produces and what its merger expects;
- images keep their own file stem (`IMG_0042.jpg` -> `IMG_0042`), as DFL's extractor does when it is
  pointed at a folder of frames or photos.

Videos are decoded with OpenCV (`cv2.VideoCapture`); when OpenCV cannot open a file (a codec its
bundled FFmpeg lacks), the ffmpeg binary shipped by `imageio-ffmpeg` decodes it instead. Either way the
frames come out as (H, W, 3) uint8 BGR, DFL's image convention.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import cv2
import numpy as np

from engine.errors import DataError

__all__ = ["Frame", "MediaSource", "open_media", "VIDEO_EXTS", "IMAGE_EXTS", "video_frame_stem", "read_image"]

log = logging.getLogger("torchsae.extract")

VIDEO_EXTS = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"})
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm"})


def video_frame_stem(index: int) -> str:
    """Name of video frame `index` (0-based): 1-based, zero-padded to 5 digits, like DFL's `%5d.png`."""
    return f"{index + 1:05d}"


def _natural_key(name: str) -> list:
    # "img2" before "img10": the order a person expects for numbered frames.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 BGR image from any file OpenCV decodes (grey and alpha are converted).

    Reads through np.fromfile + cv2.imdecode so non-ASCII paths work. DataError when undecodable.
    """
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read image file ({e})") from e
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        raise DataError(f"{path}: not a decodable image (valid: {', '.join(sorted(IMAGE_EXTS))})")
    if img.dtype == np.uint16:  # 16-bit PNG/TIFF: the rest of the pipeline is 8-bit (65535 / 255 = 257)
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:  # float TIFF/EXR-like data in [0, 1]
        img = np.clip(np.round(img.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img)


@attrs.frozen
class Frame:
    """One input frame: 0-based position, its name (stem) and the (H, W, 3) uint8 BGR pixels."""

    index: int
    stem: str
    image: np.ndarray = attrs.field(eq=False, repr=False)


@attrs.frozen
class MediaSource:
    """An opened input. `kind` is 'video', 'images' or 'image'; `count` is the number of frames
    (for videos the container's frame count, which can be approximate)."""

    path: Path
    kind: str
    count: int
    files: tuple[Path, ...] = ()
    reader: str = "cv2"

    def frames(self, want: Callable[[int, str], bool] | None = None) -> Iterator[Frame]:
        """Yield frames in order; `want(index, stem)` returning False skips a frame without converting
        it (videos) or reading it at all (images)."""
        if self.kind == "video":
            yield from self._video_frames(want)
            return
        for i, f in enumerate(self.files):
            stem = f.stem
            if want is not None and not want(i, stem):
                continue
            yield Frame(i, stem, read_image(f))

    def _video_frames(self, want) -> Iterator[Frame]:
        if self.reader == "cv2":
            cap = cv2.VideoCapture(str(self.path))
            try:
                i = 0
                while True:
                    stem = video_frame_stem(i)
                    if want is not None and not want(i, stem):
                        # grab() advances past the frame without converting it to BGR.
                        if not cap.grab():
                            break
                    else:
                        ok, img = cap.read()
                        if not ok:
                            break
                        yield Frame(i, stem, img)
                    i += 1
            finally:
                cap.release()
            return
        import imageio_ffmpeg  # the ffmpeg fallback, loaded only when OpenCV cannot read the video

        gen = imageio_ffmpeg.read_frames(str(self.path), pix_fmt="bgr24")
        try:
            meta = next(gen)
            w, h = meta["size"]
            for i, raw in enumerate(gen):
                stem = video_frame_stem(i)
                if want is not None and not want(i, stem):
                    continue
                yield Frame(i, stem, np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy())
        finally:
            gen.close()


def _ffmpeg_count(path: Path) -> int:
    import imageio_ffmpeg  # the ffmpeg fallback, loaded only when OpenCV cannot read the video

    try:
        n, _secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path}: neither OpenCV nor ffmpeg (imageio-ffmpeg) can decode this video ({e})") from e
    return int(n)


def open_media(path: str | Path, reader: str = "auto") -> MediaSource:
    """Open a video file, a folder of images or a single image.

    reader: 'auto' (OpenCV, ffmpeg when OpenCV cannot open the file), 'cv2' or 'ffmpeg' (videos only).
    Image folders are read in natural order ("2" before "10"); two files with the same stem would give
    two frames the same name and are rejected.
    """
    p = Path(path)
    if reader not in ("auto", "cv2", "ffmpeg"):
        raise DataError(f"video reader {reader!r} is not known (valid: auto, cv2, ffmpeg)")
    if not p.exists():
        raise DataError(f"{p}: input does not exist (expected a video file, an image or a folder of images)")
    if p.is_dir():
        files = sorted(
            (f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS),
            key=lambda f: _natural_key(f.name),
        )
        if not files:
            raise DataError(f"{p}: folder holds no images (looked for {', '.join(sorted(IMAGE_EXTS))})")
        seen: dict[str, Path] = {}
        for f in files:
            if f.stem in seen:
                raise DataError(
                    f"{p}: '{seen[f.stem].name}' and '{f.name}' share the stem '{f.stem}', so their frames and "
                    "aligned faces would get the same name; rename one of them"
                )
            seen[f.stem] = f
        return MediaSource(p, "images", len(files), tuple(files))
    ext = p.suffix.lower()
    if ext in IMAGE_EXTS:
        return MediaSource(p, "image", 1, (p,))
    if ext not in VIDEO_EXTS:
        raise DataError(
            f"{p}: unsupported input type '{ext}' (valid: a folder of images, images "
            f"{', '.join(sorted(IMAGE_EXTS))}, videos {', '.join(sorted(VIDEO_EXTS))})"
        )
    if reader in ("auto", "cv2"):
        cap = cv2.VideoCapture(str(p))
        try:
            ok = cap.isOpened() and cap.grab()
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
        finally:
            cap.release()
        if ok:
            return MediaSource(p, "video", max(count, 0), reader="cv2")
        if reader == "cv2":
            raise DataError(f"{p}: OpenCV cannot decode this video (try reader 'ffmpeg')")
        log.info("extract: OpenCV cannot open %s, decoding with imageio-ffmpeg's ffmpeg", p)
    return MediaSource(p, "video", _ffmpeg_count(p), reader="ffmpeg")
