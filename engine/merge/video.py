"""Merged frames -> a video file.

With the ffmpeg binary shipped by imageio-ffmpeg (`imageio_ffmpeg.get_ffmpeg_exe()`): H.264 (libx264,
yuv420p, CRF `crf`, odd sizes padded by one pixel to even, as yuv420p needs), at the given frame rate, and
when `audio_from` names a media file, its first audio stream (AAC) is muxed in (`-map 1:a:0?`: a source
without audio is fine), cut to the video's length. Frames are piped as raw BGR, so
their file names need not be a contiguous number sequence.
Without ffmpeg: OpenCV's VideoWriter ('mp4v', no audio), logged.

DFL's VideoEd.video_from_sequence does the same job (libx264, source audio); its bitrate option is
replaced by a CRF here.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from engine.errors import DataError, TorchSAEError
from engine.extract.media import read_image

__all__ = ["ffmpeg_exe", "write_video"]

log = logging.getLogger("torchsae.merge")


def ffmpeg_exe() -> str | None:
    """Path of imageio-ffmpeg's ffmpeg binary, or None when it is not installed/usable."""
    try:
        import imageio_ffmpeg  # loaded only when a video is written

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return None


def _read(path: Path) -> np.ndarray:
    return read_image(path)


def write_video(frames: Sequence[str | Path], out: str | Path, fps: float, *, audio_from: str | Path | None = None,
                crf: int = 18, use_ffmpeg: bool = True) -> Path:
    """Encode the image files `frames` (in order, all the same size) into `out` at `fps`.

    Writes to a temporary name beside `out` and renames on success. Returns `out`. Raises DataError for
    no frames / mixed sizes, TorchSAEError when the encoder fails (with ffmpeg's last lines).
    """
    out = Path(out)
    frames = [Path(f) for f in frames]
    if not frames:
        raise DataError(f"{out}: no merged frames to encode")
    if not (fps > 0):
        raise DataError(f"{out}: frame rate must be positive, got {fps}")
    first = _read(frames[0])
    h, w = first.shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial{out.suffix or '.mp4'}")
    exe = ffmpeg_exe() if use_ffmpeg else None

    def images():
        yield frames[0], first
        for f in frames[1:]:
            img = _read(f)
            if img.shape[:2] != (h, w):
                raise DataError(f"{f}: frame is {img.shape[1]}x{img.shape[0]}, the first frame {frames[0].name} is "
                                f"{w}x{h}; a video needs one size")
            yield f, img

    if exe is None:
        log.info("merge: ffmpeg (imageio-ffmpeg) not available; writing %s with OpenCV (mp4v, no audio)", out)
        vw = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not vw.isOpened():
            raise TorchSAEError(f"{out}: OpenCV cannot open a video writer (mp4v)")
        try:
            for _f, img in images():
                vw.write(img)
        finally:
            vw.release()
        os.replace(tmp, out)
        return out

    cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
           "-framerate", f"{fps:.6g}", "-i", "-"]
    if audio_from is not None:
        # -t (not -shortest, which can drop the last video frames) ends the audio with the last frame
        cmd += ["-i", str(audio_from), "-map", "0:v:0", "-map", "1:a:0?", "-c:a", "aac", "-t", f"{len(frames) / fps:.6f}"]
    cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "medium", "-crf", str(int(crf)),
            "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", str(tmp)]
    log.debug("merge: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        try:
            for _f, img in images():
                proc.stdin.write(np.ascontiguousarray(img).tobytes())
        except BrokenPipeError:
            pass  # ffmpeg quit early; its exit status and stderr say why
        finally:
            proc.stdin.close()
        err = proc.stderr.read().decode("utf-8", "replace")
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    if rc != 0:
        tmp.unlink(missing_ok=True)
        tail = " | ".join(err.strip().splitlines()[-3:])
        raise TorchSAEError(f"{out}: ffmpeg failed (exit {rc}): {tail}")
    os.replace(tmp, out)
    log.info("merge: wrote %s (%d frames, %dx%d, %.3g fps%s)", out, len(frames), w, h, fps,
             f", audio from {Path(audio_from).name}" if audio_from else "")
    return out
