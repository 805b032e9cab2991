"""Facesets: find the usable aligned faces of a folder or packed file as `FaceSample` records (spec §5.1).

A `FaceSample` is what DFL's `samplelib.Sample` carries for training: face_type, shape, landmarks
(68 points in the aligned image's pixels), seg_ie_polys, the encoded xseg mask, eyebrows_expand_mod and
source_filename, plus where its image bytes live (a file, or an offset/length inside a packed file).
Records are small, picklable and hold no open files, so they can be sent to loader workers.

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
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterable

import attrs
import numpy as np

from engine.errors import DataError, UnsafeFileError
from engine.faces import dfljpg
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import estimate_pitch_yaw_roll

__all__ = [
    "FaceSample",
    "FaceData",
    "Faceset",
    "scan_faceset",
    "load_faceset",
    "image_files",
    "normalise_seg_ie_polys",
    "IMAGE_SUFFIXES",
    "sample_from_meta",
    "summarize",
    "check_landmarks_in_image",
    "check_jpeg_end",
    "check_decoded",
    "warn_small_faces",
]

log = logging.getLogger("torchsae.data")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_WARN_NAMES = 5


def _frozen_landmarks(value: Any) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@attrs.frozen(eq=False)
class FaceSample:
    """One aligned face: metadata plus where its image bytes are.

    path: the image file, or the packed file holding it; offset/nbytes: byte range inside `path`
    (nbytes -1 = the whole file); encoding: 'jpeg' or 'png' (encoded bytes) or 'raw' (uint8 BGR
    H×W×3 in a TorchSAE pack); name: file name (relative name inside a pack); shape: (H, W, 3);
    landmarks: read-only float64 (68, 2) in aligned pixels; xseg_mask: encoded PNG/JPEG bytes or None;
    seg_ie_polys: {'polys': [{'type': 0|1, 'pts': float32 (n, 2)}, ...]} or None.
    """

    name: str
    path: str
    face_type: str
    shape: tuple[int, int, int]
    landmarks: np.ndarray = attrs.field(converter=_frozen_landmarks)
    eyebrows_expand_mod: float = 1.0
    xseg_mask: bytes | None = None
    seg_ie_polys: dict | None = None
    source_filename: str | None = None
    offset: int = 0
    nbytes: int = -1
    encoding: str = "jpeg"

    @property
    def face_type_enum(self) -> FaceType:
        return FaceType.parse(self.face_type, f"{self.name}: face_type")

    @property
    def has_xseg_mask(self) -> bool:
        return self.xseg_mask is not None

    def read_bytes(self) -> bytes | memoryview:
        """The stored image bytes (a memoryview into a memory map for packed samples: no file open)."""
        if self.nbytes < 0 and self.offset == 0:
            try:
                return Path(self.path).read_bytes()
            except OSError as e:
                raise DataError(f"{self.path}: cannot read image ({e.strerror or e})") from None
        return _mapped_range(self.path, self.offset, self.nbytes)

    def load_image(self) -> np.ndarray:
        """BGR uint8 H×W×3. For 'raw' packed samples this is a read-only view of the memory map (copy
        before writing into it)."""
        if self.encoding == "raw":
            mm = _mapped(self.path)
            h, w, c = self.shape
            return np.frombuffer(mm, dtype=np.uint8, count=h * w * c, offset=self.offset).reshape(h, w, c)
        buf = np.frombuffer(self.read_bytes(), dtype=np.uint8)
        import cv2

        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if img is None:
            raise DataError(f"{self.name} ({self.path}): image bytes cannot be decoded")
        if self.encoding == "jpeg":
            check_decoded(img, f"{self.name} ({self.path})")
        return img

    def load_bgr(self) -> np.ndarray:
        """float32 BGR in [0, 1], as DFL's Sample.load_bgr."""
        return self.load_image().astype(np.float32) / 255.0

    def get_xseg_mask(self) -> np.ndarray | None:
        """float32 H×W×1 in [0, 1] decoded from the stored bytes, or None."""
        if self.xseg_mask is None:
            return None
        return dfljpg.decode_xseg_mask(self.xseg_mask, f"{self.name}: xseg_mask")

    def pitch_yaw_roll(self) -> tuple[float, float, float]:
        """DFL's estimate_pitch_yaw_roll(landmarks, size=width) (§6.6)."""
        return estimate_pitch_yaw_roll(self.landmarks, size=self.shape[1])


# --------------------------------------------------------------------------------------------------
# memory maps of packed files, one per path per process (FaceSample objects stay picklable)

_MAPS: dict[str, tuple[tuple[int, int], np.memmap]] = {}


def _mapped(path: str) -> np.memmap:
    st = os.stat(path)
    key = (st.st_size, st.st_mtime_ns)
    hit = _MAPS.get(path)
    if hit is None or hit[0] != key:
        _MAPS[path] = (key, np.memmap(path, dtype=np.uint8, mode="r"))
    return _MAPS[path][1]


def _mapped_range(path: str, offset: int, nbytes: int) -> memoryview:
    mm = _mapped(path)
    end = len(mm) if nbytes < 0 else offset + nbytes
    if offset < 0 or end > len(mm):
        raise DataError(f"{path}: sample bytes {offset}..{end} lie outside the file ({len(mm)} bytes); the pack is truncated")
    return memoryview(mm[offset:end])


# --------------------------------------------------------------------------------------------------
# metadata helpers


def normalise_seg_ie_polys(value: Any, where: str) -> dict | None:
    """DFL's seg_ie_polys as {'polys': [{'type': int, 'pts': float32 (n, 2)}]}; None when absent/empty.

    Accepts the current dict form and the legacy list of (type, pts) pairs (§6.2).
    """
    if value is None:
        return None
    if isinstance(value, dict):
        items = value.get("polys", [])
        polys = [(p.get("type"), p.get("pts")) for p in items if isinstance(p, dict)]
        if len(polys) != len(items):
            raise DataError(f"{where}: seg_ie_polys entries must be dicts with 'type' and 'pts'")
    elif isinstance(value, (list, tuple)):
        polys = []
        for p in value:
            if not isinstance(p, (list, tuple)) or len(p) != 2:
                raise DataError(f"{where}: legacy seg_ie_polys must be (type, points) pairs")
            polys.append((p[0], p[1]))
    else:
        raise DataError(f"{where}: seg_ie_polys must be a dict or a list, got {type(value).__name__}")
    out = []
    for t, pts in polys:
        arr = np.asarray(pts if pts is not None else np.zeros((0, 2)), dtype=np.float32).reshape(-1, 2)
        out.append({"type": int(t), "pts": arr})
    return {"polys": out} if out else None


def _xseg_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    arr = np.asarray(value)
    if arr.dtype == np.uint8 and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        return arr.tobytes()
    # an uncompressed float/uint8 mask image (DFL Sample with xseg_mask set): encode like DFL
    return dfljpg.encode_xseg_mask(arr).tobytes()


def sample_from_meta(meta: dict, *, name: str, path: str, shape, default_face_type: str = "full_face", **where) -> FaceSample:
    """FaceSample from a DFL metadata/config dict; DataError for missing/invalid landmarks or face type."""
    lm = meta.get("landmarks")
    if lm is None:
        raise DataError(f"{name}: no landmarks in its DFL metadata")
    try:
        lm_arr = np.asarray(lm, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: landmarks are not numbers") from None
    if lm_arr.shape != (68, 2) or not np.all(np.isfinite(lm_arr)):
        raise DataError(f"{name}: landmarks must be 68 finite [x, y] points, got shape {lm_arr.shape}")
    ft_raw = meta.get("face_type", default_face_type)
    ft = FaceType.parse(ft_raw if ft_raw is not None else default_face_type, f"{name}: face_type").long_name
    ebm = meta.get("eyebrows_expand_mod")
    src = meta.get("source_filename")
    h, w = int(shape[0]), int(shape[1])
    if ft != FaceType.MARK_ONLY.long_name:
        check_landmarks_in_image(lm_arr, w, h, name)
    return FaceSample(
        name=name,
        path=path,
        face_type=ft,
        shape=(h, w, 3),
        landmarks=lm_arr,
        eyebrows_expand_mod=float(ebm) if ebm is not None else 1.0,
        xseg_mask=_xseg_bytes(meta.get("xseg_mask_compressed", meta.get("xseg_mask"))),
        seg_ie_polys=normalise_seg_ie_polys(meta.get("seg_ie_polys"), name),
        source_filename=None if src is None else str(src),
        **where,
    )


# Landmarks of an aligned face lie in its own pixels. The inner face (brows, eyes, nose, mouth: points
# 17..67) is inside the crop for every face type DFL aligns (half face crops the jaw, so points 0..16 may
# leave it); a small margin absorbs rounding. Anything else is metadata of another image size (e.g. 512-px
# landmarks in a 256-px face) or garbage, and would train the masks and eyes/mouth weights on the wrong area.
_INNER = slice(17, 68)
_INNER_MARGIN = 0.05
_ALL_MARGIN = 0.5


def check_landmarks_in_image(lm: np.ndarray, w: int, h: int, name: str) -> None:
    """DataError unless `lm` (68×2, aligned pixels) fits a w×h aligned face (see the comment above)."""
    size = np.array([w, h], np.float64)

    def outside(points: np.ndarray, margin: float) -> bool:
        return bool(np.any(points < -margin * size) or np.any(points > (1 + margin) * size))

    if outside(lm[_INNER], _INNER_MARGIN) or outside(lm, _ALL_MARGIN):
        lo, hi = lm.min(axis=0), lm.max(axis=0)
        raise DataError(f"{name}: landmarks lie outside the {w}x{h} image (x {lo[0]:.4g}..{hi[0]:.4g}, y "
                        f"{lo[1]:.4g}..{hi[1]:.4g}): metadata of another image size, or damaged")


def check_jpeg_end(data: bytes | memoryview, name: str) -> None:
    """DataError unless JPEG bytes end with the EOI marker (FF D9; trailing zero padding allowed): a file or
    pack entry cut short decodes "successfully" with a grey bottom and only libjpeg's anonymous warning."""
    tail = bytes(data[-64:]).rstrip(b"\x00")
    if not tail.endswith(b"\xff\xd9"):
        raise DataError(f"{name}: truncated JPEG: the image data has no end marker (FF D9)")


def check_decoded(img: np.ndarray, name: str) -> None:
    """DataError for a JPEG whose entropy-coded data was cut and closed with an end marker: libjpeg fills the
    missing blocks with one flat grey and only prints "premature end of data segment" (no file name). Real
    faces end in texture or in exact black (the frame border), never in 16+ full rows of one mid colour."""
    tail = img[-16:]
    if img.shape[0] >= 32 and (tail == tail[0, 0]).all() and 0 < int(tail[0, 0].max()) < 255 \
            and int(tail[0, 0].max()) == int(tail[0, 0].min()):
        raise DataError(f"{name}: truncated JPEG: its last rows are one flat grey fill (the image data was cut)")


# --------------------------------------------------------------------------------------------------
# folder scan


def image_files(folder: Path) -> list[Path]:
    """Sorted image files (jpg/jpeg/png, not hidden) directly inside `folder`."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


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
    from engine.faces import pak

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
