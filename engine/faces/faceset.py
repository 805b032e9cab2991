"""Facesets: find the usable aligned faces of a folder or packed file as `FaceSample` records (docs/dfl.md §5.1;
the record itself: engine.faces.face_sample).

Sources (`load_faceset(path)` picks by what `path` is):
- a DFL `aligned` folder of DFLJPG files (`scan_faceset`);
- a plain folder of aligned JPEG/PNG faces with `<name>_landmarks.npy` (68×2, aligned pixels) beside
  each image; the face type comes from an argument (default 'wf') — files that carry DFL metadata use
  their own;
- DFL's `faceset.pak` (engine.faces.pak.read_dfl_pak) or TorchSAE's packed cache `faceset.tspak`
  (engine.faces.pak.PackedFaceset), or a folder holding one of them (the TorchSAE cache first, then
  DFL's pak, as DFL prefers its pak over the loose files).

`Faceset` is the usable faces of one or more such sources, in order, with MARK_ONLY samples dropped (DFL
cannot train them); `Faceset.face(i)` decodes sample i into a `FaceData` (pixels, landmarks, face type,
XSeg mask), what the sample pipelines (engine.data.sample) consume.

Bad inputs (a JPEG without DFL metadata or landmarks file, a truncated/undecodable file, a landmarks
file of the wrong shape, landmarks outside the image (metadata of another size, absurd values), an unknown
face type) are skipped and reported in ONE warning (count and the first few names with reasons); if
nothing usable remains, DataError names the folder. A JPEG whose data was cut and closed with an end
marker is only visible once decoded: the loader skips it then, naming it. Faces smaller than the model
resolution are kept (DFL upsamples them) and counted in one warning (`warn_small_faces`). A metadata pickle
asking for anything beyond numpy data is never skipped silently: UnsafeFileError stops the scan.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Iterable

import attrs
import numpy as np

from engine.errors import DataError, UnsafeFileError
from engine.faces import dfljpg, pak
from engine.faces.face_sample import FaceSample, check_jpeg_end, image_files, sample_from_meta
from engine.faces.facetypes import FaceType

__all__ = ["FaceData", "Faceset", "scan_faceset", "load_faceset", "summarize", "warn_small_faces"]

log = logging.getLogger("torchsae.data")

_WARN_NAMES = 5


# --------------------------------------------------------------------------------------------------
# folder scan


def _png_shape(data: bytes, source: str) -> tuple[int, int, int]:
    if len(data) < 33 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise DataError(f"{source}: not a PNG file")
    w, h = struct.unpack(">II", data[16:24])
    if not data.endswith(b"IEND\xaeB`\x82"):
        raise DataError(f"{source}: truncated PNG (no IEND chunk)")
    return int(h), int(w), 3


def _plain_landmarks(img: Path) -> np.ndarray:
    lp = img.with_name(img.stem + "_landmarks.npy")
    if not lp.is_file():
        raise DataError(f"{img.name}: no DFL metadata and no {lp.name} beside it")
    try:
        lm = np.load(lp, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{lp.name}: not a readable .npy array ({e})") from None
    if lm.shape != (68, 2) or not np.issubdtype(lm.dtype, np.number) or not np.all(np.isfinite(lm)):
        raise DataError(f"{lp.name}: expected 68×2 finite landmarks, got {lm.shape} {lm.dtype}")
    return lm


def _scan_one(p: Path, face_type: str) -> FaceSample:
    data = p.read_bytes()
    if p.suffix.lower() == ".png":
        shape = _png_shape(data, p.name)
        return sample_from_meta({"landmarks": _plain_landmarks(p), "face_type": face_type}, name=p.name, path=str(p), shape=shape, encoding="png")
    segs = dfljpg.parse_segments(data, p.name)
    check_jpeg_end(data, p.name)
    shape = dfljpg._shape_from(segs, p.name)
    meta = dfljpg._meta_from_segments(segs, str(p))
    if meta is None:
        meta = {"landmarks": _plain_landmarks(p), "face_type": face_type}
    return sample_from_meta(meta, name=p.name, path=str(p), shape=shape, encoding="jpeg")


def _warn_skipped(folder: Path, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    head = "; ".join(f"{n}: {why}" for n, why in skipped[:_WARN_NAMES])
    more = f"; and {len(skipped) - _WARN_NAMES} more" if len(skipped) > _WARN_NAMES else ""
    log.warning(f"{folder}: skipped {len(skipped)} of {total} files that are not usable aligned faces ({head}{more})")


def scan_faceset(folder: str | Path, face_type: str | FaceType = "wf") -> list[FaceSample]:
    """FaceSamples of the aligned images directly inside `folder` (sorted by name).

    face_type applies to plain images with `<name>_landmarks.npy` (long or short name); DFLJPG files
    keep their own face type. Unusable files are skipped with one summary warning; DataError if the
    folder is missing or has no usable face; UnsafeFileError if a file's metadata is a malicious pickle.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: faceset folder does not exist")
    default_ft = FaceType.parse(face_type, "face_type").long_name
    files = image_files(folder)
    samples: list[FaceSample] = []
    skipped: list[tuple[str, str]] = []
    for p in files:
        try:
            samples.append(_scan_one(p, default_ft))
        except UnsafeFileError:
            raise
        except DataError as e:
            msg = str(e)
            skipped.append((p.name, msg[len(p.name) + 2:] if msg.startswith(p.name + ": ") else msg))
        except OSError as e:
            skipped.append((p.name, f"cannot read ({e.strerror or e})"))
    _warn_skipped(folder, skipped, len(files))
    if not samples:
        why = f" ({len(files)} image files, none usable)" if files else " (no .jpg/.png files)"
        raise DataError(f"{folder}: no usable aligned faces{why}; expected DFL aligned JPEGs or images with <name>_landmarks.npy")
    return samples


def load_faceset(path: str | Path, face_type: str | FaceType = "wf") -> list[FaceSample]:
    """FaceSamples from a folder, a DFL faceset.pak or a TorchSAE faceset.tspak (see module docstring)."""
    path = Path(path)
    if path.is_file():
        return pak.read_any_pack(path)
    if path.is_dir():
        ours = path / pak.TSPAK_FILENAME
        if ours.is_file():
            pf = pak.PackedFaceset.open(ours)
            pf.warn_if_stale(path)
            log.info(f"{path}: using packed faceset {ours.name} ({len(pf)} faces)")
            return pf.samples()
        dfl = path / pak.DFL_PAK_FILENAME
        if dfl.is_file():
            log.info(f"{path}: using DFL's {dfl.name}")
            return pak.read_dfl_pak(dfl)
        return scan_faceset(path, face_type)
    raise DataError(f"{path}: faceset not found (expected a folder of aligned faces, a faceset.pak or a faceset.tspak)")


def summarize(samples: Iterable[FaceSample]) -> dict:
    """Counts for `faceset info`: total, per face type, per resolution, with xseg mask / polys."""
    samples = list(samples)
    by_type: dict[str, int] = {}
    by_res: dict[str, int] = {}
    for s in samples:
        by_type[s.face_type] = by_type.get(s.face_type, 0) + 1
        key = f"{s.shape[1]}x{s.shape[0]}"
        by_res[key] = by_res.get(key, 0) + 1
    return {
        "count": len(samples),
        "face_types": dict(sorted(by_type.items())),
        "resolutions": dict(sorted(by_res.items())),
        "xseg_masks": sum(s.xseg_mask is not None for s in samples),
        "seg_ie_polys": sum(s.seg_ie_polys is not None for s in samples),
    }


def warn_small_faces(samples: Iterable[FaceSample], resolution: int, label: str) -> int:
    """One warning counting the faces whose aligned image is smaller than the model `resolution`, naming a
    few; returns the count. They are kept: DFL trains on them too (its warpAffine upsamples every face to
    the model resolution), and facesets a little below the resolution are common (256-px faces for a
    320-px model). But a model learns their blur, so the user should know."""
    small = [s for s in samples if min(s.shape[0], s.shape[1]) < resolution]
    if small:
        names = ", ".join(f"{s.name} ({s.shape[1]}x{s.shape[0]})" for s in small[:_WARN_NAMES])
        more = f", and {len(small) - _WARN_NAMES} more" if len(small) > _WARN_NAMES else ""
        log.warning(f"{label}: {len(small)} face(s) are smaller than the model resolution {resolution} and are "
                    f"upsampled as DFL does (the model learns their blur): {names}{more}")
    return len(small)


# ---------------------------------------------------------------------------------------------------------
# Decoded faces and whole facesets


@attrs.frozen(kw_only=True)
class FaceData:
    """What SampleProcessor needs of one decoded sample.

    image: BGR uint8 (h, w, 3) as decoded; landmarks: (68, 2) in that image's pixels; face_type: the
    sample's own face type; xseg_mask: float32 (h', w', 1) in [0, 1] (decoded DFLJPG `xseg_mask`) or None;
    eyebrows_expand_mod: DFL's hull eyebrow expansion (default 1.0); name: for error messages.
    """

    image: np.ndarray
    landmarks: np.ndarray
    face_type: FaceType = attrs.field(converter=lambda v: FaceType.parse(v, "sample face_type"))
    xseg_mask: np.ndarray | None = None
    eyebrows_expand_mod: float = 1.0
    name: str = "<sample>"



class Faceset:
    """The usable faces of one or more facesets (folders, faceset.pak or faceset.tspak), in order.

    plain_face_type: face type of plain images with `<name>_landmarks.npy` (DFLJPGs carry their own).
    MARK_ONLY samples (no crop; DFL's SampleProcessor cannot use them) are dropped with one warning.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], plain_face_type: str | FaceType = "wf"):
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise DataError("faceset: no folder given")
        self.label = ", ".join(str(p) for p in paths)
        samples: list[FaceSample] = []
        for p in paths:
            samples.extend(load_faceset(p, plain_face_type))
        marks = [s.name for s in samples if s.face_type_enum == FaceType.MARK_ONLY]
        if marks:
            log.warning("%s: skipped %d mark_only faces (no crop to train on; DFL cannot use them either): %s%s",
                        self.label, len(marks), ", ".join(marks[:5]), " ..." if len(marks) > 5 else "")
            samples = [s for s in samples if s.face_type_enum != FaceType.MARK_ONLY]
        if not samples:
            raise DataError(f"{self.label}: no usable aligned faces (all {len(marks)} are mark_only)")
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def face(self, i: int) -> FaceData:
        """Decode sample i (pixels + xseg mask). DataError when the bytes no longer decode."""
        s = self.samples[i]
        return FaceData(image=s.load_image(), landmarks=np.asarray(s.landmarks), face_type=s.face_type_enum,
                        xseg_mask=s.get_xseg_mask(), eyebrows_expand_mod=s.eyebrows_expand_mod, name=s.name)

    def image(self, i: int) -> np.ndarray:
        """Decode only sample i's pixels (BGR uint8), for the colour-transfer reference."""
        return self.samples[i].load_image()

    def yaws(self) -> np.ndarray:
        """DFL's estimate_pitch_yaw_roll(landmarks, size=width)[1] per sample (§6.6); NaN where it fails."""
        out = np.empty(len(self.samples))
        for i, s in enumerate(self.samples):
            try:
                out[i] = s.pitch_yaw_roll()[1]
            except DataError:
                out[i] = np.nan
        return out

    def face_types(self) -> set[FaceType]:
        return {s.face_type_enum for s in self.samples}
