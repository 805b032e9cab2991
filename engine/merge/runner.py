"""The merge driver: every frame -> its swapped faces -> a merged image file, then optionally a video.

    summary = merge_frames(model, open_frames("data_dst"), index_aligned("data_dst/aligned"), "merged",
                           recipe.merge, FaceType.WHOLE_FACE, workers=2)

Work split (DFL's Merger runs the predictor in the main process and the compositing in workers too):
- the main process reads each frame, crops its faces (`face_geometry`, `predictor_input`), runs the model on
  all faces of the frame as one batch (and XSeg when the mask mode needs it);
- `workers` processes (spawned; 0 = in the main process) do the rest of DFL's MergeMaskedFace/MergeMasked
  (masks, colour transfer, blending, post-processing) and write `<out>/<stem>.<png|jpg>`;
- frames without faces are written unchanged (PNG: bit-identical pixels).

Resume: a frame whose output file exists is skipped (outputs are written under a temporary name and
renamed, so an interrupted run never leaves a truncated frame behind). Randomised colour transfers
(idt, sot, mix) use a generator seeded by (seed, crc32(stem)), so a frame merges the same way whichever
worker takes it and whether or not the run was resumed.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import cv2
import numpy as np
from tqdm import tqdm

from engine.errors import DataError, TorchSAEError
from engine.fileio import write_atomic
from engine.faces.facetypes import FaceType
from engine.merge.config import needs_xseg, settings_line
from engine.merge.face import FaceGeometry, Prediction, composite_faces, merge_face, predict_faces
from engine.merge.sources import AlignedIndex, FrameSource, motion_vectors
from engine.recipe.specs import MergeSpec

__all__ = ["MergeSummary", "merge_frames", "output_path", "FORMATS"]

log = logging.getLogger("torchsae.merge")

FORMATS = ("png", "jpg")


@attrs.frozen(kw_only=True)
class MergeSummary:
    """What a merge run did. `frames` lists every output frame in order (for the video)."""

    out: str
    frames_total: int
    frames_merged: int
    frames_skipped: int
    frames_without_faces: int
    faces: int
    seconds: float
    frames: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = attrs.asdict(self)
        d.pop("frames")
        return d


def output_path(out_dir: Path, stem: str, fmt: str) -> Path:
    return out_dir / f"{stem}.{fmt}"


def _encode(img: np.ndarray, fmt: str, where: Path) -> bytes:
    # DFL writes merged JPEGs at quality 100
    params = [int(cv2.IMWRITE_JPEG_QUALITY), 100] if fmt == "jpg" else []
    ok, buf = cv2.imencode(f".{fmt}", img, params)
    if not ok:
        raise DataError(f"{where}: OpenCV could not encode the merged frame as {fmt}")
    return buf.tobytes()


@attrs.frozen
class _Task:
    """One frame for a worker: pixels, its faces with predictions, and where to write."""

    stem: str
    frame: np.ndarray = attrs.field(eq=False)
    faces: tuple[tuple[np.ndarray, Prediction, FaceGeometry], ...] = attrs.field(eq=False)
    motion: tuple[float, float]
    spec: MergeSpec
    face_type: FaceType
    out_path: Path
    mask_path: Path | None
    fmt: str
    seed: int


def _run_task(task: _Task) -> tuple[str, int]:
    """Merge one frame (DFL's MergeMasked) and write it (and its mask). Returns (stem, faces merged)."""
    frame = task.frame
    if task.faces:
        img = frame.astype(np.float32) / 255.0
        rng = np.random.default_rng([task.seed, zlib.crc32(task.stem.encode("utf-8"))])
        results = [merge_face(img, lm, task.spec, task.face_type, pred, img_bgr_uint8=frame, geometry=geom, motion=task.motion, rng=rng)
                   for lm, pred, geom in task.faces]
        merged = composite_faces(img, results)  # (H, W, 4) uint8: BGR + mask
        bgr, mask = merged[..., :3], merged[..., 3]
    else:
        bgr, mask = frame, np.zeros(frame.shape[:2], np.uint8)
    write_atomic(task.out_path, _encode(np.ascontiguousarray(bgr), task.fmt, task.out_path))
    if task.mask_path is not None:
        write_atomic(task.mask_path, _encode(np.ascontiguousarray(mask), "png", task.mask_path))
    return task.stem, len(task.faces)


def _init_worker() -> None:
    # one OpenCV thread per worker process: the pool itself is the parallelism
    cv2.setNumThreads(1)


def merge_frames(
    model: Any,
    frames: FrameSource,
    aligned: AlignedIndex,
    out_dir: str | Path,
    spec: MergeSpec,
    face_type: FaceType,
    *,
    xseg: Any = None,
    workers: int = 0,
    fmt: str = "png",
    mask_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> MergeSummary:
    """Merge every frame of `frames` into `out_dir` (module doc) with the [merge] settings `spec`, cropping
    faces of `face_type`. `model`: a MergeModel (or anything with `resolution` and `predict(faces (N,R,R,3))
    -> (face, prd_mask, dst_mask)`); `xseg`: an XSegExtractor, required by mask modes 6..9. Returns the run's
    MergeSummary."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: valid {', '.join(FORMATS)}")
    if needs_xseg(spec) and xseg is None:
        raise TorchSAEError(f"mask mode {spec.mask_mode} runs XSeg: give --xseg-model DIR (a folder holding DFL's "
                            "XSeg_256.npy)")
    if workers < 0:
        raise DataError(f"--workers {workers}: must be 0 (merge in this process) or more")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.partial.*"):  # left by an interrupted run
        stale.unlink(missing_ok=True)
    mdir = Path(mask_dir) if mask_dir is not None else None
    if mdir is not None:
        mdir.mkdir(parents=True, exist_ok=True)

    stems = list(frames.stems)
    if frames.kind == "video":  # a container's frame count can be short: frames merged beyond it count too
        have = {p.stem for p in out_dir.glob(f"*.{fmt}") if p.stem.isdigit() and not p.name.startswith(".")}
        stems = sorted(set(stems) | have, key=int)
    known = set(stems)
    orphans = [s for s in aligned.faces if s not in known]
    if orphans and frames.kind == "images":
        log.warning("merge: %d aligned face group(s) name frames that are not in %s (e.g. %s)", len(orphans),
                    frames.path, orphans[0])
    done = {s for s in stems if output_path(out_dir, s, fmt).is_file() and
            (mdir is None or (mdir / f"{s}.png").is_file())}
    lms = [[rec.landmarks for rec in aligned.for_frame(s)] for s in stems]
    motions = dict(zip(stems, motion_vectors(lms))) if spec.motion_blur_power else {}
    log.info("merge: %s", settings_line(spec, face_type))
    log.info("merge: %d frames, %d already merged in %s", len(stems), len(done), out_dir)

    t0 = time.perf_counter()
    n_merged = n_faces = n_noface = 0
    pool = (ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_init_worker) if workers > 0 else None)
    pending: deque[Future] = deque()
    bar = tqdm(total=len(stems) or None, initial=len(done), disable=not progress, unit="frame", desc="merge")

    def finish(fut_or_result) -> None:
        nonlocal n_merged, n_faces, n_noface
        _stem, nf = fut_or_result.result() if isinstance(fut_or_result, Future) else fut_or_result
        n_merged += 1
        n_faces += nf
        n_noface += nf == 0
        bar.update(1)

    extra: list[str] = []  # video frames beyond the container's announced count
    try:
        for _i, stem, frame in frames.read(skip=done):
            if stem not in known:
                extra.append(stem)
            recs = aligned.for_frame(stem)
            faces = []
            if recs:  # every face of the frame through the model as one batch
                lms = [r.landmarks for r in recs]
                img = frame.astype(np.float32) / 255.0
                faces = [(lm, pred, g) for lm, (pred, g) in
                         zip(lms, predict_faces(img, lms, spec, face_type, model.resolution, model.predict, xseg))]
            task = _Task(stem=stem, frame=frame, faces=tuple(faces), motion=motions.get(stem, (0.0, 0.0)), spec=spec,
                         face_type=face_type,
                         out_path=output_path(out_dir, stem, fmt),
                         mask_path=(mdir / f"{stem}.png") if mdir is not None else None, fmt=fmt, seed=seed)
            if pool is None:
                finish(_run_task(task))
                continue
            pending.append(pool.submit(_run_task, task))
            while len(pending) >= 2 * workers:  # bound the frames held in memory
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    finally:
        bar.close()
        if pool is not None:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    secs = time.perf_counter() - t0
    written = tuple(s for s in stems + extra if output_path(out_dir, s, fmt).is_file())
    missing = len(stems) + len(extra) - len(written)
    if missing and frames.kind == "video":
        log.warning("merge: the video delivered fewer frames than its container announced; %d missing", missing)
    summary = MergeSummary(out=str(out_dir), frames_total=len(stems) + len(extra), frames_merged=n_merged,
                           frames_skipped=len(done),
                           frames_without_faces=n_noface, faces=n_faces, seconds=round(secs, 3), frames=written)
    log.info("merge: %d frames merged (%d faces, %d frames without a face) in %.1f s, %d skipped (already done) -> %s",
             n_merged, n_faces, n_noface, secs, len(done), out_dir)
    return summary
