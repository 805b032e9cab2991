"""DFL's XSeg faceset verbs (`mainscripts/XSegUtil.py`): apply, remove, remove-labels, fetch — plus backups.

    apply_xseg("runs/xseg", "workspace/data_dst/aligned")   # writes xseg_mask into every DFLJPG
    remove_masks(DIR) / remove_labels(DIR)                  # drop xseg_mask / seg_ie_polys
    fetch_labelled(DIR, OUT)                                # copy the faces that have polygons
    restore_backup(DIR)                                     # put the metadata of the newest backup back

Safety, whatever happens (each verb):
1. The whole folder is read first (engine.xseg.faces.read_dfljpg): a file that is not a DFLJPG stops the
   command with an error naming it before anything is written.
2. Before the first change, the metadata of every file it will touch (the raw APP15 payload bytes) goes into
   one backup file `<DIR>/.torchsae_xseg_backups/<time>-<verb>.zip`, written atomically.
3. Each face is rewritten atomically (engine.fileio.write_atomic: temp file + rename) and only its APP15
   segment changes — the JPEG pixel data is copied byte for byte, never re-encoded. An interruption leaves
   every file either as it was or as it should be.
4. `apply` is resumable: a journal `<DIR>/.torchsae_xseg_apply.json` lists the faces done with this model;
   running the same command again skips them (and reuses the first run's backup). It is removed when done.

apply (docs/dfl.md §7.3, DFL's apply_xseg): the face is read as float BGR; if the XSeg model's face type is unknown
or equals the face's, it is resized to the network resolution (LANCZOS4); otherwise DFL re-crops it from the
frame landmarks: ``mat`` maps the face's crop onto the model face type's crop (both from
get_transform_mat(source_landmarks, w, ·)); the face is warped by ``mat`` (bilinear: DFL passes LANCZOS4
into cv2.warpAffine's dst slot) and resized, and the mask is resized back, warped by the inverse of
``mat`` (LANCZOS4) and resized to the network resolution. The mask (DFL's extract: sigmoid, < 0.1 -> 0) is
binarised at 0.5 and stored as DFL's set_xseg_mask does (PNG, 0/255, at the network resolution).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from engine.faces import dfljpg
from engine.faces.face_sample import image_files
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, transform_points
from engine.errors import CheckpointError, DataError
from engine.fileio import write_atomic
from engine.train import checkpoint as ck
from engine.xseg.faces import read_dfljpg
from engine.xseg.model import open_masker
from engine.xseg.polys import parse_polys, point_count

__all__ = ["BACKUP_DIR", "JOURNAL", "list_faces", "backup_metadata", "restore_backup", "apply_xseg", "xseg_input",
           "mask_to_face", "remove_masks", "remove_labels", "fetch_labelled", "set_meta_key"]

log = logging.getLogger("torchsae.xseg")

BACKUP_DIR = ".torchsae_xseg_backups"
JOURNAL = ".torchsae_xseg_apply.json"
_APP15 = 0xEF
BACKUP_FORMAT = "torchsae-xseg-metadata-backup-1"


def list_faces(folder: str | Path) -> tuple[list[Path], list[dfljpg.DFLJPG]]:
    """The image files of a faceset folder and their DFLJPG metadata; DataError naming the first file that is
    not a DFLJPG (nothing is written before every file has been read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: faceset folder not found")
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no .jpg faces in this folder")
    return files, [read_dfljpg(p) for p in files]


def _clean_partials(folder: Path) -> None:
    """Temp files a killed writer left beside the faces (write_atomic's `.<name>.<pid>-<tid>.partial`)."""
    for p in folder.glob(".*.partial"):
        if re.fullmatch(r"\..+\.\d+-\d+\.partial", p.name) and (folder / p.name[1:].rsplit(".", 2)[0]).exists():
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# backups


def _app15_payload(path: Path) -> bytes:
    segs = dfljpg.parse_segments(path.read_bytes(), str(path))
    payload = None
    for s in segs:
        if s.marker == _APP15:
            payload = s.data
    if payload is None:
        raise DataError(f"{path}: not a DFLJPG (no APP15 metadata)")
    return payload


def backup_metadata(folder: str | Path, files: Sequence[Path], verb: str) -> Path:
    """One zip with the raw metadata payload of each file (entry = file name) and a manifest; atomic."""
    folder = Path(folder)
    buf = io.BytesIO()
    ns = time.time_ns()  # names sort chronologically: restore takes the newest
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ns / 1e9)) + f"-{(ns // 1000) % 1_000_000:06d}"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", json.dumps({"format": BACKUP_FORMAT, "verb": verb, "created_utc": stamp,
                                                "files": [p.name for p in files]}, indent=1))
        for p in files:
            z.writestr("meta/" + p.name, _app15_payload(p))
    path = folder / BACKUP_DIR / f"{stamp}-{verb}.zip"
    write_atomic(path, buf.getvalue(), durable=True)
    log.info("metadata of %d faces backed up to %s", len(files), path)
    return path


def _set_payload(path: Path, payload: bytes) -> None:
    segs = dfljpg.parse_segments(path.read_bytes(), str(path))
    segs = [s for s in segs if s.marker != _APP15]
    last_app = max((i for i, s in enumerate(segs) if 0xE0 <= s.marker <= 0xEF), default=0)
    segs.insert(last_app + 1, dfljpg.Segment(_APP15, payload))
    write_atomic(path, dfljpg.join_segments(segs))


def restore_backup(folder: str | Path, backup: str | Path | None = None) -> dict:
    """Put the metadata stored in `backup` (default: the newest in the folder) back into the faces."""
    folder = Path(folder)
    if backup is None:
        cands = sorted((folder / BACKUP_DIR).glob("*.zip"))
        if not cands:
            raise DataError(f"{folder}: no XSeg metadata backups in {folder / BACKUP_DIR}")
        backup = cands[-1]
    backup = Path(backup)
    try:
        z = zipfile.ZipFile(backup)
        manifest = json.loads(z.read("manifest.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise DataError(f"{backup}: not a TorchSAE XSeg metadata backup ({e})") from None
    if manifest.get("format") != BACKUP_FORMAT:
        raise DataError(f"{backup}: unknown backup format {manifest.get('format')!r}")
    restored, missing = 0, []
    with z:
        for name in manifest["files"]:
            p = folder / name
            if not p.is_file():
                missing.append(name)
                continue
            _set_payload(p, z.read("meta/" + name))
            restored += 1
    if missing:
        log.warning("%d faces of the backup are not in %s any more: %s", len(missing), folder, ", ".join(missing[:5]))
    return {"backup": str(backup), "restored": restored, "missing": len(missing)}


# ---------------------------------------------------------------------------------------------------------
# apply


def set_meta_key(path: Path, **changes) -> None:
    """Change metadata keys of one face atomically (pixels untouched); None deletes a key."""
    dfljpg.update_meta(path, **changes)


def _model_id(model: str | Path) -> str:
    p = Path(model).resolve()
    target = p
    if p.is_dir():
        for cand in (p / "XSeg_256.npy", p / "model.pt"):
            if cand.is_file():
                target = cand
                break
        else:
            try:
                r = ck.resolve(p)
                target = r if r.is_file() else r / ck.MODEL_FILE
            except CheckpointError:
                pass
    st = target.stat() if target.exists() else None
    return f"{target}|{st.st_size if st else 0}|{st.st_mtime_ns if st else 0}"


def xseg_input(img: np.ndarray, info: dfljpg.DFLJPG, res: int, model_ft: FaceType | None
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """DFL's apply geometry: (network input float32 (res, res, 3), the re-crop matrix or None)."""
    h, w = img.shape[:2]
    face_ft = FaceType.parse(info.face_type, f"{info.path}: face_type")
    if model_ft is None or model_ft == face_ft:
        if w != res or h != res:
            img = cv2.resize(img, (res, res), interpolation=cv2.INTER_LANCZOS4)
        return img, None
    lm = info.meta.get("source_landmarks")
    if lm is None:
        raise DataError(f"{info.path}: the XSeg model is {model_ft.long_name} and this face is {face_ft.long_name}; "
                        "re-cropping needs the frame landmarks (source_landmarks), which this file lacks")
    lm = np.asarray(lm, dtype=np.float64)
    fmat = get_transform_mat(lm, w, model_ft)
    imat = get_transform_mat(lm, w, face_ft)
    corners = np.float32([(0, 0), (w, 0), (0, w)])
    g_p = transform_points(corners, fmat, invert=True)
    g_p2 = transform_points(g_p, imat)
    mat = cv2.getAffineTransform(np.float32(g_p2), corners)
    img = cv2.warpAffine(img, mat, (w, w), flags=cv2.INTER_LINEAR)  # DFL's LANCZOS4 lands in `dst`: bilinear
    return cv2.resize(img, (res, res), interpolation=cv2.INTER_LANCZOS4), mat


def mask_to_face(mask: np.ndarray, mat: np.ndarray | None, w: int, res: int) -> np.ndarray:
    """The network's mask back on the face (DFL's apply), binarised at 0.5: float32 (res, res)."""
    m = mask.reshape(mask.shape[0], mask.shape[1])
    if mat is not None:
        m = cv2.resize(m, (w, w), interpolation=cv2.INTER_LANCZOS4)
        m = cv2.warpAffine(m, mat, (w, w), np.zeros((w, w), np.float32), cv2.WARP_INVERSE_MAP | cv2.INTER_LANCZOS4)
        m = cv2.resize(m, (res, res), interpolation=cv2.INTER_LANCZOS4)
    return (m >= 0.5).astype(np.float32)


def _read_journal(folder: Path, model_id: str) -> tuple[set[str], str | None]:
    j = folder / JOURNAL
    if not j.is_file():
        return set(), None
    try:
        d = json.loads(j.read_text())
    except (OSError, json.JSONDecodeError):
        log.warning("%s: unreadable apply journal, starting over", j)
        return set(), None
    if d.get("model") != model_id:
        log.info("%s: an interrupted apply of another model; starting over", j)
        return set(), None
    return set(d.get("done", [])), d.get("backup")


def _write_journal(folder: Path, model_id: str, backup: str, done: set[str]) -> None:
    write_atomic(folder / JOURNAL, json.dumps({"model": model_id, "backup": backup, "done": sorted(done)}))


def apply_xseg(model: str | Path, folder: str | Path, *, face_type: str | None = None, batch_size: int = 8,
               device: str | None = None, progress: bool = True,
               _after_write: Callable[[int], None] | None = None) -> dict:
    """Write the XSeg model's mask into every DFLJPG of `folder` (module doc). face_type overrides the
    model's ('same' = never re-crop). Returns counts and the backup used. `_after_write(n)` is called after
    the n-th face is written (tests inject crashes there)."""
    folder = Path(folder)
    files, infos = list_faces(folder)
    masker = open_masker(model, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if face_type == "same":
        model_ft = None
    elif face_type:
        model_ft = FaceType.parse(face_type, "--face-type")
    else:
        model_ft = masker.face_type
        if model_ft is None:
            log.info("XSeg: %s does not record its face type; faces are used as they are (DFL's 'same')", model)
    res = masker.resolution
    mid = _model_id(model)
    _clean_partials(folder)
    done, backup = _read_journal(folder, mid)
    if done:
        log.info("XSeg apply: resuming, %d of %d faces already done with this model", len(done), len(files))
    if backup is None:
        backup = str(backup_metadata(folder, files, "apply"))
        _write_journal(folder, mid, backup, done)
    todo = [(p, info) for p, info in zip(files, infos) if p.name not in done]
    pbar = None
    if progress:
        pbar = tqdm(total=len(files), initial=len(files) - len(todo), unit="face", desc="XSeg apply")
    written = 0
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            xs, mats, widths = [], [], []
            for p, info in chunk:
                img = dfljpg.read_image(p).astype(np.float32) / 255.0
                x, mat = xseg_input(img, info, res, model_ft)
                xs.append(x)
                mats.append(mat)
                widths.append(img.shape[1])
            masks = masker(np.stack(xs))
            for (p, _info), m, mat, w in zip(chunk, masks, mats, widths):
                set_meta_key(p, xseg_mask=mask_to_face(m, mat, w, res))
                done.add(p.name)
                _write_journal(folder, mid, backup, done)  # a few hundred bytes per face: resume is exact
                written += 1
                if _after_write is not None:
                    _after_write(written)
            if pbar is not None:
                pbar.update(len(chunk))
    finally:
        if pbar is not None:
            pbar.close()
    (folder / JOURNAL).unlink(missing_ok=True)
    return {"folder": str(folder), "faces": len(files), "written": written, "resumed_done": len(files) - len(todo),
            "backup": backup, "resolution": res,
            "face_type": model_ft.long_name if model_ft is not None else "same as each face"}


# ---------------------------------------------------------------------------------------------------------
# remove, remove-labels, fetch


def _remove_key(folder: str | Path, key: str, verb: str, progress: bool) -> dict:
    folder = Path(folder)
    files, infos = list_faces(folder)
    hit = [p for p, info in zip(files, infos) if info.meta.get(key) is not None]
    backup = str(backup_metadata(folder, hit, verb)) if hit else None
    it = hit
    if progress and hit:
        it = tqdm(hit, unit="face", desc=verb)
    for p in it:
        set_meta_key(p, **{key: None})
    return {"folder": str(folder), "faces": len(files), "changed": len(hit), "backup": backup}


def remove_masks(folder: str | Path, progress: bool = True) -> dict:
    """DFL's remove_xseg: drop the applied xseg_mask from every face that has one."""
    return _remove_key(folder, "xseg_mask", "remove", progress)


def remove_labels(folder: str | Path, progress: bool = True) -> dict:
    """DFL's remove_xseg_labels: drop the seg_ie_polys polygons from every face that has them."""
    return _remove_key(folder, "seg_ie_polys", "remove-labels", progress)


def fetch_labelled(folder: str | Path, out: str | Path | None = None, *, move: bool = False) -> dict:
    """DFL's fetch_xseg: copy the faces that have polygons to `out` (default `<DIR>_xseg` beside it, as DFL);
    `move` also deletes the originals after every copy is written (DFL asks, default yes)."""
    folder = Path(folder)
    files, infos = list_faces(folder)
    out = Path(out) if out is not None else folder.parent / (folder.name + "_xseg")
    if out.resolve() == folder.resolve():
        raise DataError(f"fetch: the output folder {out} is the faceset itself")
    chosen = [p for p, info in zip(files, infos) if point_count(parse_polys(info.meta.get("seg_ie_polys"), str(p)))]
    out.mkdir(parents=True, exist_ok=True)
    for p in chosen:
        write_atomic(out / p.name, p.read_bytes())
        shutil.copystat(p, out / p.name)
    if move:
        for p in chosen:
            os.unlink(p)
    return {"folder": str(folder), "out": str(out), "copied": len(chosen), "moved": move, "faces": len(files)}
