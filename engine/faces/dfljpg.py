"""DFLJPG: DFL's aligned-face JPEG with metadata in an APP15 segment (docs/dfl.md §6.1-6.2, quirk §12.17).

Container. A JPEG is a sequence of segments `FF xx`; SOI/EOI/RST0-7 have no length, every other
segment has a 16-bit big-endian length that counts its own 2 bytes; after SOS the entropy-coded data
runs to the next `FF D9`. DFL keeps its metadata dict in one APP15 (`FF EF`) segment whose payload is
`pickle.dumps(dict)`; on writing it drops None values, removes any APP15 and inserts the new one right
after the last APPn segment (normally index 2, after SOI and APP0/JFIF).

Keys (§6.2): face_type (str, default 'full_face'), landmarks (68 [x, y] floats, aligned-image pixels),
source_filename, source_rect (int array l,t,r,b), source_landmarks (frame pixels), image_to_face_mat
(2×3 float64), seg_ie_polys, xseg_mask (encoded PNG, or JPEG when the PNG exceeds 50,000 bytes),
eyebrows_expand_mod (default 1.0). Legacy keys pass through untouched.

Compatibility choices:
- Reading never runs pickle unrestricted: `engine.safe_pickle.safe_loads` (numpy arrays + plain
  containers only); anything else raises UnsafeFileError naming the file, before anything is called.
- Writing produces the bytes DFL's own writer produces for the same content (verified against the
  goldens byte for byte): protocol 4 (readable by DFL's Python 3.6+), numpy globals spelled
  `numpy.core.multiarray.*` as numpy 1.x writes them, so DFL's numpy 1.19 can read our files (numpy >= 2
  would write `numpy._core`, which numpy 1.x cannot import).
- The stored values keep DFL's types (landmarks as lists of floats, arrays as numpy arrays), so DFL's
  getters work on our files. `read()` returns them normalised (numpy arrays, decoded mask, defaults).

Public API: `read(path)`, `load(path)` (metadata + shape + raw mask bytes, no pixel decode),
`read_shape(path)`, `write(path, image, meta, quality=90)`, `set_meta(path, meta)`,
`update_meta(path, **changes)`, `encode_xseg_mask`, `decode_xseg_mask`, `parse_segments`.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any, Mapping

import attrs
import cv2
import numpy as np

from engine.faces.facetypes import FaceType
from engine.errors import DataError
from engine.fileio import write_atomic
from engine.safe_pickle import numpy_core, safe_loads

__all__ = [
    "Segment",
    "DFLJPG",
    "parse_segments",
    "join_segments",
    "read",
    "load",
    "read_shape",
    "write",
    "encode_jpeg",
    "to_jpeg_bytes",
    "set_meta",
    "update_meta",
    "encode_xseg_mask",
    "decode_xseg_mask",
    "XSEG_MASK_MAX_BYTES",
    "APP15_MAX_PAYLOAD",
]

XSEG_MASK_MAX_BYTES = 50_000  # DFL's cap on the encoded xseg mask (set_xseg_mask)
APP15_MAX_PAYLOAD = 0xFFFF - 2  # a segment length is 16-bit and counts its own 2 bytes

_SOI, _EOI, _SOS, _APP0, _APP15 = 0xD8, 0xD9, 0xDA, 0xE0, 0xEF
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@attrs.frozen
class Segment:
    """One JPEG segment: marker byte (the xx of FF xx), payload (without the length field) or None for
    standalone markers, and for SOS the entropy-coded bytes that follow it up to EOI."""

    marker: int
    data: bytes | None = None
    ex_data: bytes = b""

    @property
    def name(self) -> str:
        m = self.marker
        if m == _SOI:
            return "SOI"
        if m == _EOI:
            return "EOI"
        if m == _SOS:
            return "SOS"
        if 0xE0 <= m <= 0xEF:
            return f"APP{m - 0xE0}"
        if 0xD0 <= m <= 0xD7:
            return f"RST{m - 0xD0}"
        return {0xDB: "DQT", 0xC4: "DHT", 0xDD: "DRI", 0xFE: "COM"}.get(m, f"SOF{m - 0xC0}" if m in _SOF_MARKERS else f"0x{m:02X}")

    def to_bytes(self) -> bytes:
        head = bytes((0xFF, self.marker))
        if self.data is None:
            return head + self.ex_data
        return head + struct.pack(">H", len(self.data) + 2) + self.data + self.ex_data


def parse_segments(data: bytes, source: str = "<bytes>") -> list[Segment]:
    """Split JPEG bytes into segments (DFL's parser, §6.1). Raises DataError naming `source`.

    Parsing stops at EOI; bytes after it are ignored (DFL drops them too when it rewrites a file).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != _SOI:
        raise DataError(f"{source}: not a JPEG file (no SOI marker at the start)")
    segs: list[Segment] = []
    pos = 0
    while pos < n:
        if pos + 2 > n or data[pos] != 0xFF:
            raise DataError(f"{source}: corrupt JPEG: expected a marker at byte {pos}, found {data[pos:pos + 2].hex() or 'end of file'}")
        m = data[pos + 1]
        pos += 2
        if m in (_SOI, _EOI) or 0xD0 <= m <= 0xD7:
            segs.append(Segment(m))
            if m == _EOI:
                return segs
            continue
        if pos + 2 > n:
            raise DataError(f"{source}: truncated JPEG: segment 0x{m:02X} has no length field")
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if length < 2 or pos + length > n:
            raise DataError(f"{source}: truncated JPEG: segment 0x{m:02X} claims {length} bytes, {n - pos} left")
        payload = bytes(data[pos + 2:pos + length])
        pos += length
        ex = b""
        if m == _SOS:
            end = data.find(b"\xff\xd9", pos)
            if end < 0:
                raise DataError(f"{source}: truncated JPEG: image data has no end marker (FF D9)")
            ex = bytes(data[pos:end])
            pos = end
        segs.append(Segment(m, payload, ex))
    raise DataError(f"{source}: truncated JPEG: no end marker (FF D9)")


def join_segments(segs: list[Segment]) -> bytes:
    """Bytes of a JPEG from its segments."""
    return b"".join(s.to_bytes() for s in segs)


def _shape_from(segs: list[Segment], source: str) -> tuple[int, int, int]:
    for s in segs:
        if s.marker in _SOF_MARKERS and s.data is not None and len(s.data) >= 6:
            h, w = struct.unpack(">HH", s.data[1:5])
            # DFL assumes 3 channels (aligned faces are decoded as BGR whatever the JPEG holds)
            return int(h), int(w), 3
    raise DataError(f"{source}: JPEG has no frame header (SOF), cannot tell its size")


# --------------------------------------------------------------------------------------------------
# pickling compatible with DFL


def _numpy1_globals() -> dict[int, tuple[str, str]]:
    ma = numpy_core().multiarray  # under numpy 1.x these already carry the names below
    return {
        id(ma._reconstruct): ("numpy.core.multiarray", "_reconstruct"),
        id(ma.scalar): ("numpy.core.multiarray", "scalar"),
    }


_NUMPY1_GLOBALS = _numpy1_globals()


class _DFLPickler(pickle._Pickler):
    """Protocol-4 pickler that spells numpy's reconstructors as numpy 1.x does.

    The pure-Python pickler is used because it lets save_global be overridden; its output is the same
    byte stream as the C pickler's (checked against DFL's own payloads in the tests).
    """

    def save_global(self, obj, name=None):
        mapped = _NUMPY1_GLOBALS.get(id(obj))
        if mapped is None:
            return super().save_global(obj, name)
        self.save(mapped[0])
        self.save(mapped[1])
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _dumps(obj: Any) -> bytes:
    f = io.BytesIO()
    _DFLPickler(f, protocol=4).dump(obj)
    return f.getvalue()


def _check_value(value: Any, where: str) -> None:
    """Only what safe_loads will read back: plain scalars/containers and non-object numpy data."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise DataError(f"DFLJPG metadata {where}: object arrays cannot be stored (got dtype {value.dtype})")
        return
    if isinstance(value, np.generic):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise DataError(f"DFLJPG metadata {where}: dict keys must be str or int, got {type(k).__name__}")
            _check_value(v, f"{where}[{k!r}]")
        return
    raise DataError(
        f"DFLJPG metadata {where}: cannot store a {type(value).__name__} "
        "(valid: str, int, float, bool, bytes, numpy arrays/scalars, and lists/tuples/dicts of them)"
    )


def _as_point_list(value: Any, key: str) -> list:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"DFLJPG metadata '{key}': expected a list of [x, y] points, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"DFLJPG metadata '{key}': contains NaN or infinity")
    return arr.tolist()  # DFL stores python lists of floats (set_landmarks(lm.tolist()))


def _normalise_for_write(meta: Mapping[str, Any]) -> dict[str, Any]:
    """DFL's stored representation of `meta` (None values dropped, §6.1 step 1)."""
    if not isinstance(meta, Mapping):
        raise DataError(f"DFLJPG metadata must be a dict, got {type(meta).__name__}")
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise DataError(f"DFLJPG metadata keys must be strings, got {key!r}")
        if value is None:
            continue
        if key == "face_type":
            value = FaceType.parse(value, "DFLJPG metadata 'face_type'").long_name
        elif key in ("landmarks", "source_landmarks"):
            value = _as_point_list(value, key)
        elif key == "source_rect":
            value = np.asarray(value)
            if value.shape != (4,) or not np.issubdtype(value.dtype, np.number):
                raise DataError(f"DFLJPG metadata 'source_rect': expected 4 numbers (l, t, r, b), got {value!r}")
        elif key == "image_to_face_mat":
            value = np.asarray(value, dtype=np.float64)
            if value.shape != (2, 3):
                raise DataError(f"DFLJPG metadata 'image_to_face_mat': expected a 2x3 affine, got shape {value.shape}")
        elif key == "xseg_mask":
            value = _xseg_value(value)
        elif key == "eyebrows_expand_mod":
            value = float(value)
        elif key == "source_filename":
            value = str(value)
        _check_value(value, repr(key))
        out[key] = value
    return out


def _xseg_value(value: Any) -> np.ndarray:
    """Encoded mask buffer (uint8 1-D) from an already-encoded buffer or a float/uint8 mask image."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(value), dtype=np.uint8).copy()
    arr = np.asarray(value)
    if arr.dtype == np.uint8 and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1] == 1)):
        head = arr.reshape(-1)[:4].tobytes()
        if head == b"\x89PNG" or head[:2] == b"\xff\xd8":
            # already an encoded buffer (older OpenCV returned it as (n, 1))
            return arr.reshape(-1)
    return encode_xseg_mask(arr)


def encode_xseg_mask(mask: np.ndarray) -> np.ndarray:
    """DFL's set_xseg_mask encoding: uint8 1-D PNG buffer, or JPEG (quality 100, 99, ...) if the PNG is
    over 50,000 bytes. mask: H×W or H×W×1 float in [0, 1] (uint8 masks are taken as 0..255)."""
    arr = np.asarray(mask)
    if arr.ndim == 3:
        if arr.shape[2] != 1:
            arr = arr[..., :1]  # normalize_channels(mask, 1) keeps the first channel
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"xseg_mask: expected an H×W or H×W×1 mask, got shape {np.asarray(mask).shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr.astype(np.float32) * 255, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", arr)
    if not ok or len(buf) > XSEG_MASK_MAX_BYTES:
        for quality in range(100, -1, -1):
            ok, buf = cv2.imencode(".jpg", arr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
            if ok and len(buf) <= XSEG_MASK_MAX_BYTES:
                break
    if not ok:
        raise DataError(f"xseg_mask: OpenCV could not encode a {arr.shape} mask")
    if len(buf) > XSEG_MASK_MAX_BYTES:
        # DFL would store it anyway and then fail to save the file (APP15 is limited to 64 KiB)
        raise DataError(
            f"xseg_mask: a {arr.shape[1]}x{arr.shape[0]} mask this detailed does not fit {XSEG_MASK_MAX_BYTES} bytes "
            f"even as JPEG quality 0 ({len(buf)} bytes); store a smoother or smaller mask (DFL writes 256x256)"
        )
    return buf.reshape(-1)


def decode_xseg_mask(buf, source: str = "xseg_mask") -> np.ndarray:
    """Float32 H×W×1 mask in [0, 1] from an encoded PNG/JPEG buffer (DFL's get_xseg_mask)."""
    arr = np.frombuffer(bytes(buf), dtype=np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else np.asarray(buf, dtype=np.uint8).reshape(-1)
    img = cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{source}: xseg_mask bytes are not a readable PNG/JPEG image")
    if img.ndim == 3:
        img = img[..., 0]
    return (img.astype(np.float32) / 255.0)[..., None]


# --------------------------------------------------------------------------------------------------
# reading


@attrs.frozen
class DFLJPG:
    """A DFLJPG's metadata without its pixels: `meta` is the dict exactly as stored (DFL types),
    `shape` (H, W, 3) comes from the frame header."""

    path: str
    shape: tuple[int, int, int]
    meta: dict

    @property
    def face_type(self) -> str:
        return self.meta.get("face_type", "full_face")

    @property
    def xseg_mask_bytes(self) -> bytes | None:
        """The encoded (PNG/JPEG) xseg mask as stored, or None."""
        buf = self.meta.get("xseg_mask")
        return None if buf is None else np.asarray(buf, dtype=np.uint8).tobytes()

    def decoded(self) -> dict:
        """The metadata normalised like `read()` returns it."""
        return _normalise_for_read(self.meta, self.path)

    def image(self) -> np.ndarray:
        """The pixels: BGR uint8 H×W×3 (cv2.IMREAD_COLOR)."""
        return read_image(self.path)


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None


def _meta_from_segments(segs: list[Segment], source: str) -> dict | None:
    payload = None
    for s in segs:
        if s.marker == _APP15:
            payload = s.data  # DFL keeps the last APP15
    if payload is None:
        return None
    meta = safe_loads(payload, source)
    if not isinstance(meta, dict):
        raise DataError(f"{source}: APP15 metadata is a {type(meta).__name__}, not DFL's dict")
    return meta


def load(path: str | Path) -> DFLJPG | None:
    """Parse a DFLJPG's metadata and shape without decoding pixels; None for a JPEG without DFL data.

    Raises DataError for unreadable/truncated JPEGs and UnsafeFileError for a metadata pickle that
    asks for anything beyond numpy data and plain containers.
    """
    src = str(path)
    segs = parse_segments(_read_bytes(path), src)
    meta = _meta_from_segments(segs, src)
    if meta is None:
        return None
    return DFLJPG(path=src, shape=_shape_from(segs, src), meta=meta)


def read_shape(path: str | Path) -> tuple[int, int, int]:
    """(H, W, 3) of any JPEG from its frame header, without decoding pixels."""
    src = str(path)
    return _shape_from(parse_segments(_read_bytes(path), src), src)


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 pixels of an image file (unicode paths fine); DataError if OpenCV cannot decode it."""
    buf = np.frombuffer(_read_bytes(path), dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"{path}: OpenCV cannot decode this image")
    return img


def _normalise_for_read(meta: dict, source: str) -> dict:
    out = dict(meta)
    out["face_type"] = str(meta.get("face_type", "full_face"))
    ebm = meta.get("eyebrows_expand_mod")
    out["eyebrows_expand_mod"] = 1.0 if ebm is None else float(ebm)
    for key in ("landmarks", "source_landmarks"):
        if meta.get(key) is not None:
            try:
                out[key] = np.array(meta[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{source}: metadata '{key}' is not a list of [x, y] numbers") from None
    if meta.get("source_rect") is not None:
        out["source_rect"] = np.array(meta["source_rect"])
    if meta.get("image_to_face_mat") is not None:
        out["image_to_face_mat"] = np.array(meta["image_to_face_mat"], dtype=np.float64)
    if meta.get("xseg_mask") is not None:
        out["xseg_mask"] = decode_xseg_mask(meta["xseg_mask"], f"{source}: xseg_mask")
    return out


def read(path: str | Path) -> dict | None:
    """DFL metadata of a DFLJPG as a dict, or None for a JPEG without DFL metadata.

    Values: face_type str (default 'full_face'), landmarks / source_landmarks float64 (N, 2),
    source_rect array, image_to_face_mat float64 (2, 3), xseg_mask float32 H×W×1 in [0, 1] (decoded;
    raw bytes via `load(path).xseg_mask_bytes`), eyebrows_expand_mod float (default 1.0); other keys
    as stored. The image shape without decoding: `load(path).shape` or `read_shape(path)`.
    """
    info = load(path)
    return None if info is None else info.decoded()


# --------------------------------------------------------------------------------------------------
# writing


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """cv2.imencode('.jpg') bytes of a BGR uint8 image (DFL's cv2_imwrite; quality 90 as extraction)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise DataError(f"DFLJPG image: expected BGR uint8 H×W×3, got {img.dtype} {img.shape}")
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise DataError(f"DFLJPG image: OpenCV could not JPEG-encode a {img.shape} image")
    return buf.tobytes()


def _with_meta(segs: list[Segment], meta: Mapping[str, Any], source: str) -> bytes:
    payload = _dumps(_normalise_for_write(meta))
    if len(payload) > APP15_MAX_PAYLOAD:
        raise DataError(
            f"{source}: DFL metadata is {len(payload)} bytes, over the {APP15_MAX_PAYLOAD}-byte APP15 limit "
            f"(a large xseg mask? it is capped at {XSEG_MASK_MAX_BYTES} bytes; drop legacy keys)"
        )
    segs = [s for s in segs if s.marker != _APP15]
    last_app = max((i for i, s in enumerate(segs) if 0xE0 <= s.marker <= 0xEF), default=0)
    segs.insert(last_app + 1, Segment(_APP15, payload))
    return join_segments(segs)


def to_jpeg_bytes(image: np.ndarray | bytes, meta: Mapping[str, Any], quality: int = 90, source: str = "<DFLJPG>") -> bytes:
    """Complete DFLJPG bytes: the image (BGR uint8 array, or already-encoded JPEG bytes) plus `meta`."""
    jpg = bytes(image) if isinstance(image, (bytes, bytearray, memoryview)) else encode_jpeg(image, quality)
    return _with_meta(parse_segments(jpg, source), meta, source)


def write(path: str | Path, image: np.ndarray | bytes, meta: Mapping[str, Any], quality: int = 90) -> None:
    """Write a DFLJPG atomically (temp file + os.replace).

    image: BGR uint8 H×W×3, or JPEG bytes (kept as they are). meta: DFL keys (see module docstring);
    landmarks may be arrays (stored as lists as DFL does), face_type a long/short name, xseg_mask a
    float H×W[×1] mask (encoded like DFL) or an encoded buffer. None values are dropped.
    """
    write_atomic(path, to_jpeg_bytes(image, meta, quality, str(path)))


def set_meta(path: str | Path, meta: Mapping[str, Any]) -> None:
    """Replace the DFL metadata of an existing JPEG without re-encoding its pixels (atomic)."""
    src = str(path)
    segs = parse_segments(_read_bytes(path), src)
    write_atomic(path, _with_meta(segs, meta, src))


def update_meta(path: str | Path, **changes: Any) -> None:
    """Change some metadata keys of a DFLJPG in place (a None value deletes the key); pixels untouched."""
    src = str(path)
    segs = parse_segments(_read_bytes(path), src)
    meta = _meta_from_segments(segs, src) or {}
    meta.update(changes)
    write_atomic(path, _with_meta(segs, meta, src))
