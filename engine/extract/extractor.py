"""Extraction driver: frames -> faces -> aligned DFLJPG files, resumable, with a JSON summary.

For every frame (DFL `mainscripts/Extractor.py`, docs/dfl.md §6.2):
1. detect faces and their 68 landmarks (engine.extract.backends), largest rect first; keep `max_faces`;
2. `image_to_face_mat = get_transform_mat(landmarks, size, face_type)`, bilinear warp (§12.13);
3. drop the face if DFL's 4x-area sanity check fails (face types <= full_face_no_align only);
4. write `<frame stem>_<face index>.jpg` (JPEG quality 90 by default) carrying DFLJPG metadata:
   face_type (long name), landmarks (crop pixels), source_filename, source_rect, source_landmarks,
   image_to_face_mat. The face index is the face's position among the frame's detections, so a dropped
   face leaves a gap in the numbering, as in DFL.

Frames are written as `<stem>.png` into the frames folder (the merger composites into them) unless
disabled. Default frames folder (DFL's workspace layout): the parent of `out` when `out` is named
`aligned` (`data_dst/aligned` -> frames in `data_dst/`), else `out/frames`. When the input is already a
folder of images and the frames folder is that same folder, nothing is rewritten and source_filename
is the image's own file name.

Resume: `out/extract_progress.jsonl` holds one settings line, then one line per finished frame
(written after that frame's faces are on disk, each face file replaced atomically). A rerun skips the
finished frames; different settings (input, face type, size, max faces, step) are refused rather than
mixed. `out/extract_summary.json` is rewritten at the end of every run and counts all frames so far.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import attrs
import cv2
import numpy as np
from tqdm import tqdm

from engine.faces import dfljpg
from engine.faces.facetypes import FaceType
from engine.errors import DataError
from engine.fileio import write_atomic
from engine.extract.align import align_face, fails_area_check
from engine.extract.backends import FaceBackend, resolve_backend
from engine.extract.media import MediaSource, open_media

__all__ = [
    "ExtractSummary",
    "extract",
    "default_size",
    "default_frames_dir",
    "PROGRESS_NAME",
    "SUMMARY_NAME",
    "face_metadata",
]

log = logging.getLogger("torchsae.extract")

PROGRESS_NAME = "extract_progress.jsonl"
SUMMARY_NAME = "extract_summary.json"
_SETTINGS_KEYS = ("input", "face_type", "size", "max_faces", "step")


def default_size(face_type: FaceType | str | int) -> int:
    """DFL's default aligned size: 768 for head types, 512 otherwise (§6.2)."""
    ft = FaceType.parse(face_type)
    return 768 if ft in (FaceType.HEAD, FaceType.HEAD_NO_ALIGN) else 512


def default_frames_dir(out_dir: Path) -> Path:
    """`out.parent` when out is named 'aligned' (DFL: data_dst/ + data_dst/aligned/), else `out/frames`."""
    return out_dir.parent if out_dir.name == "aligned" else out_dir / "frames"


@attrs.frozen(kw_only=True)
class ExtractSummary:
    """Counts over every frame extracted into `out` so far (this run and earlier ones)."""

    input: str
    out: str
    backend: str
    backend_reason: str
    face_type: str
    size: int
    frames: int
    faces: int
    frames_no_face: int
    faces_dropped_area: int
    frames_this_run: int
    seconds_this_run: float
    complete: bool
    no_face_frames: list[str] = attrs.field(factory=list)

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def face_metadata(aligned, rect: np.ndarray, source_filename: str) -> dict:
    """DFLJPG dict for one aligned face with DFL's value types (§6.2): lists of [x, y] Python floats for
    the landmark sets, an int64 (4,) array for source_rect, a float64 (2, 3) array for the matrix."""
    return {
        "face_type": aligned.face_type.long_name,
        "landmarks": np.asarray(aligned.landmarks, dtype=np.float32).tolist(),
        "source_filename": source_filename,
        "source_rect": np.asarray(rect, dtype=np.int64).copy(),
        "source_landmarks": np.asarray(aligned.source_landmarks, dtype=np.float32).tolist(),
        "image_to_face_mat": np.asarray(aligned.image_to_face_mat, dtype=np.float64).copy(),
    }


def _write_face(path: Path, image: np.ndarray, meta: dict, jpeg_quality: int) -> None:
    # dfljpg.write is atomic (temp file + rename): an interrupted run never leaves a half-written face.
    dfljpg.write(path, image, meta, quality=jpeg_quality)


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise DataError(f"{path}: OpenCV could not encode the frame as PNG")
    write_atomic(path, buf.tobytes())


def _read_progress(path: Path) -> tuple[dict | None, dict[str, dict]]:
    if not path.exists():
        return None, {}
    settings, done = None, {}
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                # A line cut short by a kill: that frame is simply redone.
                log.warning("extract: %s line %d is incomplete, ignoring it", path, n)
                continue
            if "settings" in rec:
                settings = rec["settings"]
            elif "frame" in rec:
                done[str(rec["frame"])] = rec
    return settings, done


def extract(
    input: str | Path,
    out: str | Path,
    *,
    face_type: FaceType | str | int = "wf",
    size: int | None = None,
    backend: FaceBackend | str = "auto",
    fan_weights: str | Path | None = None,
    max_faces: int | None = None,
    frames_dir: str | Path | None = None,
    write_frames: bool = True,
    jpeg_quality: int = 90,
    step: int = 1,
    reader: str = "auto",
    progress: bool = True,
) -> ExtractSummary:
    """Extract aligned faces from a video, an image folder or an image into `out` (see module doc).

    backend: 'auto' | 'dlib' | 'fan' or a ready FaceBackend (tests pass fakes). step: use every
    `step`-th frame (frame names keep their true index). Returns the summary also written as JSON.
    """
    ft = FaceType.parse(face_type, "--face-type")
    if ft == FaceType.MARK_ONLY:
        raise DataError("--face-type mark_only has no aligned crop; extraction needs one of h, mf, f, wf, head")
    size = default_size(ft) if size is None else int(size)
    if not 64 <= size <= 4096:
        raise DataError(f"--size {size}: aligned face size must be between 64 and 4096 px")
    if max_faces is not None and max_faces < 1:
        raise DataError(f"--max-faces {max_faces}: must be at least 1 (or omitted for all faces)")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"--jpeg-quality {jpeg_quality}: must be in 1..100")
    if step < 1:
        raise DataError(f"step {step}: must be at least 1")

    source: MediaSource = open_media(input, reader)
    out = Path(out)
    if source.kind == "images" and out.resolve() == source.path.resolve():
        raise DataError(f"--out {out}: must differ from the input folder (aligned faces would be read as frames next time)")
    out.mkdir(parents=True, exist_ok=True)
    fdir: Path | None = None
    if write_frames:
        fdir = Path(frames_dir) if frames_dir is not None else default_frames_dir(out)
        if source.kind != "video" and fdir.resolve() == (source.path if source.kind == "images" else source.path.parent).resolve():
            fdir = None  # the frames already are these files
        elif fdir.resolve() == out.resolve():
            raise DataError(f"--frames-dir {fdir}: must differ from --out (frames and aligned faces would mix)")
        if fdir is not None:
            fdir.mkdir(parents=True, exist_ok=True)

    settings = {
        "input": str(source.path.resolve()),
        "face_type": ft.long_name,
        "size": size,
        "max_faces": max_faces,
        "step": step,
    }
    prog_path = out / PROGRESS_NAME
    old_settings, done = _read_progress(prog_path)
    if old_settings is not None:
        diff = [k for k in _SETTINGS_KEYS if old_settings.get(k) != settings[k]]
        if diff:
            was = ", ".join(f"{k}={old_settings.get(k)!r}" for k in diff)
            now = ", ".join(f"{k}={settings[k]!r}" for k in diff)
            raise DataError(
                f"{prog_path}: this folder holds an extraction with {was}; now asked for {now}. "
                f"Use another --out, or delete {prog_path.name} and the aligned files to start over"
            )

    if isinstance(backend, str):
        be, reason = resolve_backend(backend, fan_weights)
    else:
        be, reason = backend, "given"
    log.info("extract: backend %s (%s)", be.name, reason)
    if old_settings is not None and old_settings.get("backend") not in (None, be.name):
        log.warning("extract: resuming a %s extraction with backend %s", old_settings.get("backend"), be.name)
    if old_settings is None:
        settings["backend"] = be.name
        with prog_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"settings": settings}) + "\n")

    total = len(range(0, max(source.count, 0), step)) if source.count else None
    t0 = time.perf_counter()
    n_run = 0

    def want(index: int, stem: str) -> bool:
        return index % step == 0 and stem not in done

    bar = tqdm(total=total, initial=min(len(done), total or len(done)), disable=not progress, unit="frame", desc=f"extract {source.path.name}")
    try:
        with prog_path.open("a", encoding="utf-8") as plog:
            for frame in source.frames(want):
                if fdir is not None:
                    frame_name = f"{frame.stem}.png"
                    _write_png(fdir / frame_name, frame.image)
                elif source.kind == "video":
                    frame_name = f"{frame.stem}.png"  # --no-frames: name the frame as it would have been written
                else:
                    frame_name = source.files[frame.index].name
                faces = be(frame.image)
                if max_faces is not None:
                    faces = faces[:max_faces]
                written, dropped = [], 0
                for idx, face in enumerate(faces):
                    aligned = align_face(frame.image, face.landmarks, ft, size)
                    if fails_area_check(ft, aligned.image_to_face_mat, size, face.rect):
                        dropped += 1
                        log.debug("extract: %s face %d dropped: crop area > 4x detector rect", frame.stem, idx)
                        continue
                    name = f"{frame.stem}_{idx}.jpg"
                    _write_face(out / name, aligned.image, face_metadata(aligned, face.rect, frame_name), jpeg_quality)
                    written.append(name)
                rec = {"frame": frame.stem, "faces": len(written), "dropped": dropped, "files": written}
                plog.write(json.dumps(rec) + "\n")
                plog.flush()
                done[frame.stem] = rec
                n_run += 1
                bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    no_face = sorted(s for s, r in done.items() if r.get("faces", 0) == 0)
    summary = ExtractSummary(
        input=settings["input"],
        out=str(out.resolve()),
        backend=be.name,
        backend_reason=reason,
        face_type=ft.long_name,
        size=size,
        frames=len(done),
        faces=sum(int(r.get("faces", 0)) for r in done.values()),
        frames_no_face=len(no_face),
        faces_dropped_area=sum(int(r.get("dropped", 0)) for r in done.values()),
        frames_this_run=n_run,
        seconds_this_run=round(seconds, 3),
        complete=True,
        no_face_frames=no_face,
    )
    write_atomic(out / SUMMARY_NAME, json.dumps(summary.to_dict(), indent=2) + "\n")
    log.info(
        "extract: %d frames (%d this run, %.1f s), %d faces, %d frames without a face, %d faces dropped by the area check -> %s",
        summary.frames, n_run, seconds, summary.faces, summary.frames_no_face, summary.faces_dropped_area, out,
    )
    return summary
