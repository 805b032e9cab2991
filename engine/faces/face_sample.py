"""`FaceSample`: one aligned face's record — what DFL's `samplelib.Sample` carries for training (face_type,
shape, landmarks (68 points in the aligned image's pixels), seg_ie_polys, the encoded xseg mask,
eyebrows_expand_mod, source_filename) plus where its image bytes live: a file, or an offset/length inside a
packed file (engine.faces.pak). Records are small, picklable and hold no open files, so they can be sent to
loader workers; packed files are memory-mapped once per process.

Also the checks every source applies to a face (`sample_from_meta`: landmarks inside the image, known face
type; `check_jpeg_end` / `check_decoded`: truncated JPEGs) and `image_files`, the image files of a folder.
Facesets (folders, packs, `Faceset`) are engine.faces.faceset.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import cv2
import numpy as np

from engine.errors import DataError
from engine.faces import dfljpg
from engine.faces.facetypes import FaceType
from engine.faces.landmarks import estimate_pitch_yaw_roll

__all__ = [
    "FaceSample",
    "IMAGE_SUFFIXES",
    "image_files",
    "normalise_seg_ie_polys",
    "sample_from_meta",
    "check_landmarks_in_image",
    "check_jpeg_end",
    "check_decoded",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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


def image_files(folder: Path) -> list[Path]:
    """Sorted image files (jpg/jpeg/png, not hidden) directly inside `folder`."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
