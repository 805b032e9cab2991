"""Packed facesets: reading DFL's `faceset.pak` (docs/dfl.md §5.8, quirk §12.16) and TorchSAE's `faceset.tspak`.

DFL's faceset.pak (samplelib/PackedFaceset.py), native byte order (little-endian on x86):

    uint64 version (= 1)
    uint64 n_cfg, then n_cfg bytes: pickle (protocol 4) of [Sample.get_config() dict, ...]
    (N + 1) × uint64 offsets
    the N files' bytes, concatenated (data start = right after the offset table)

Offsets 0..N-1 are relative to the data start, but DFL writes the LAST one as an absolute file
position, so DFL computes the last file's size too large and its read just stops at EOF. We take the
last size as "to the end of the file". The configs are pickles holding DFL's FaceType/SampleType enums;
they are read with the allow-list of engine.safe_pickle plus exactly those two enums (mapped to ints /
our FaceType), so a pak cannot run code.

TorchSAE's packed cache `faceset.tspak` is one file built for random access from loader workers:

    [0:16)   magic b"TORCHSAE-FACESET"
    [16:40)  little-endian uint32 version (= 1), uint32 flags (0), uint64 index_offset, uint64 index_nbytes
    [64: )   blobs, each starting on a 64-byte boundary: per sample its image bytes (encoded JPEG/PNG as
             found, or decoded uint8 BGR H×W×3 when packed with decoded=True), its encoded xseg mask,
             and one float64 (N, 68, 2) landmarks block
    index    UTF-8 JSON at index_offset: {"format", "version", "count", "landmarks": {offset, shape,
             dtype}, "samples": [{name, face_type, shape, encoding, offset, nbytes, eyebrows_expand_mod,
             source_filename, xseg_mask: [offset, nbytes] | null, seg_ie_polys: {polys: [{type, pts}]} |
             null}], "source": {dir, files, newest_mtime_ns}}

Readers map the file once per process (np.memmap, opened lazily by engine.faces.face_sample) and slice it:
no per-sample open/seek/read, and FaceSample records stay small and picklable for worker processes.
Decoded packs need no JPEG decode at all (a sample is a read-only view of the map). The file is
written to a temporary name beside the target and renamed into place (atomic). Landmarks are stored as
binary float64 and JSON writes floats with repr, so everything round-trips exactly.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from engine.faces.face_sample import FaceSample, image_files, normalise_seg_ie_polys, sample_from_meta
from engine.faces.facetypes import FaceType
from engine.errors import DataError
from engine.safe_pickle import safe_loads

__all__ = [
    "DFL_PAK_FILENAME",
    "TSPAK_FILENAME",
    "TSPAK_MAGIC",
    "read_dfl_pak",
    "PackedFaceset",
    "pack_faceset",
    "read_any_pack",
]

log = logging.getLogger("torchsae.data")

DFL_PAK_FILENAME = "faceset.pak"
TSPAK_FILENAME = "faceset.tspak"
TSPAK_MAGIC = b"TORCHSAE-FACESET"
TSPAK_VERSION = 1
_HEADER = struct.Struct("<IIQQ")
_DATA_START = 64
_ALIGN = 64

# DFL's enums as they appear in pickled Sample configs (IntEnum -> REDUCE(class, (value,))).
_DFL_ENUM_GLOBALS: dict[tuple[str, str], Any] = {
    ("facelib.FaceType", "FaceType"): FaceType,
    ("facelib", "FaceType"): FaceType,
    ("samplelib.Sample", "SampleType"): int,
    ("samplelib", "SampleType"): int,
}


def _load_configs(data: bytes, source: str) -> Any:
    """The pak's pickled sample list: engine.safe_pickle's allow-list (and size limits) plus DFL's two enums."""
    return safe_loads(data, f"{source} (sample list)", extra_globals=_DFL_ENUM_GLOBALS)


def read_dfl_pak(path: str | Path) -> list[FaceSample]:
    """FaceSamples of DFL's faceset.pak (layout in the module docstring), image bytes left in place."""
    path = Path(path)
    src = str(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        if len(head) < 16:
            raise DataError(f"{src}: too short for a DFL faceset.pak ({size} bytes)")
        version, n_cfg = struct.unpack("<QQ", head)
        if version != 1:
            raise DataError(f"{src}: DFL faceset.pak version {version} is not supported (valid: 1)")
        if 16 + n_cfg > size:
            raise DataError(f"{src}: truncated faceset.pak: sample list of {n_cfg} bytes, file has {size}")
        configs = _load_configs(f.read(n_cfg), src)
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
            raise DataError(f"{src}: sample list is not a list of dicts")
        n = len(configs)
        table = f.read(8 * (n + 1))
        if len(table) != 8 * (n + 1):
            raise DataError(f"{src}: truncated faceset.pak: offset table of {n + 1} entries is cut off")
        offsets = struct.unpack(f"<{n + 1}Q", table)
        data_start = f.tell()
    samples = []
    for i, cfg in enumerate(configs):
        start = data_start + offsets[i]
        # quirk §12.16: offsets[n] is absolute, so the last file simply runs to EOF
        end = data_start + offsets[i + 1] if i + 1 < n else size
        if not (data_start <= start <= end <= size):
            raise DataError(f"{src}: sample {i} ({cfg.get('filename')}) has byte range {start}..{end} outside the file ({size} bytes)")
        name = str(cfg.get("filename") or f"#{i}")
        shape = cfg.get("shape")
        if shape is None or len(shape) < 2:
            raise DataError(f"{src}: sample {name} has no image shape")
        enc = "png" if name.lower().endswith(".png") else "jpeg"
        samples.append(sample_from_meta(cfg, name=name, path=src, shape=shape, offset=start, nbytes=end - start, encoding=enc))
    if not samples:
        raise DataError(f"{src}: the faceset.pak holds no samples")
    return samples


# --------------------------------------------------------------------------------------------------
# TorchSAE packed cache


def _json_polys(polys: dict | None) -> dict | None:
    if polys is None:
        return None
    return {"polys": [{"type": int(p["type"]), "pts": np.asarray(p["pts"], dtype=np.float64).tolist()} for p in polys["polys"]]}


def _source_stamp(folder: Path) -> dict:
    files = image_files(folder)
    newest = max((p.stat().st_mtime_ns for p in files), default=0)
    return {"dir": str(folder), "files": len(files), "newest_mtime_ns": int(newest)}


class PackedFaceset:
    """A TorchSAE faceset.tspak opened for reading (index only; image bytes are memory-mapped on use)."""

    def __init__(self, path: Path, index: dict, landmarks: np.ndarray):
        self.path = path
        self.index = index
        self._landmarks = landmarks

    @classmethod
    def open(cls, path: str | Path) -> "PackedFaceset":
        path = Path(path)
        src = str(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16 + _HEADER.size)
            if len(head) < 16 + _HEADER.size or head[:16] != TSPAK_MAGIC:
                raise DataError(f"{src}: not a TorchSAE packed faceset (bad magic)")
            version, _flags, ioff, ilen = _HEADER.unpack(head[16:])
            if version != TSPAK_VERSION:
                raise DataError(f"{src}: packed faceset version {version} is not supported (valid: {TSPAK_VERSION}); re-run `torchsae faceset pack`")
            if ioff + ilen > size:
                raise DataError(f"{src}: truncated packed faceset (index at {ioff}+{ilen}, file has {size} bytes)")
            f.seek(ioff)
            try:
                index = json.loads(f.read(ilen).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise DataError(f"{src}: packed faceset index is corrupt ({e})") from None
            lmi = index["landmarks"]
            n = int(index["count"])
            if lmi["shape"] != [n, 68, 2] or len(index["samples"]) != n:
                raise DataError(f"{src}: packed faceset index is inconsistent ({n} samples)")
            f.seek(int(lmi["offset"]))
            raw = f.read(n * 68 * 2 * 8)
            if len(raw) != n * 68 * 2 * 8:
                raise DataError(f"{src}: truncated packed faceset (landmarks block)")
        lms = np.frombuffer(raw, dtype="<f8").reshape(n, 68, 2)
        return cls(path, index, lms)

    def __len__(self) -> int:
        return int(self.index["count"])

    def samples(self) -> list[FaceSample]:
        src = str(self.path)
        out = []
        for i, s in enumerate(self.index["samples"]):
            polys = s.get("seg_ie_polys")
            xm = s.get("xseg_mask")
            out.append(
                FaceSample(
                    name=s["name"],
                    path=src,
                    face_type=s["face_type"],
                    shape=tuple(int(v) for v in s["shape"]),
                    landmarks=self._landmarks[i],
                    eyebrows_expand_mod=float(s["eyebrows_expand_mod"]),
                    xseg_mask=None if xm is None else _read_range(self.path, xm[0], xm[1]),
                    seg_ie_polys=normalise_seg_ie_polys(polys, s["name"]),
                    source_filename=s.get("source_filename"),
                    offset=int(s["offset"]),
                    nbytes=int(s["nbytes"]),
                    encoding=s["encoding"],
                )
            )
        return out

    def warn_if_stale(self, folder: str | Path) -> bool:
        """Warn (and return True) when `folder`'s image files changed since the pack was written."""
        stamp = self.index.get("source") or {}
        if not stamp:
            return False
        now = _source_stamp(Path(folder))
        if now["files"] != stamp.get("files") or now["newest_mtime_ns"] > stamp.get("newest_mtime_ns", 0):
            log.warning(
                f"{folder}: {self.path.name} is older than the folder's images ({stamp.get('files')} packed, "
                f"{now['files']} now); re-run `torchsae faceset pack {folder}` to refresh it"
            )
            return True
        return False


def _read_range(path: Path, offset: int, nbytes: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise DataError(f"{path}: truncated packed faceset (blob at {offset}+{nbytes})")
    return data


def _pad_to(f, align: int) -> int:
    pos = f.tell()
    pad = (-pos) % align
    if pad:
        f.write(b"\x00" * pad)
    return pos + pad


def pack_faceset(samples: Iterable[FaceSample], out: str | Path, *, decoded: bool = False, source_dir: str | Path | None = None) -> Path:
    """Write samples to a TorchSAE faceset.tspak at `out` atomically; returns the path.

    decoded=True stores uint8 BGR pixels (no JPEG decode when training, ~10× the size of JPEGs);
    otherwise the encoded image bytes are copied as they are. source_dir records the folder's file count
    and newest mtime so a later load can warn when the pack is stale.
    """
    samples = list(samples)
    if not samples:
        raise DataError(f"{out}: nothing to pack (no samples)")
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    try:
        entries = []
        with os.fdopen(fd, "wb") as f:
            f.write(b"\x00" * _DATA_START)
            for s in samples:
                off = _pad_to(f, _ALIGN)
                if decoded:
                    img = np.ascontiguousarray(s.load_image(), dtype=np.uint8)
                    f.write(img.tobytes())
                    enc, shape = "raw", [int(v) for v in img.shape]
                else:
                    f.write(bytes(s.read_bytes()))
                    enc, shape = s.encoding, [int(v) for v in s.shape]
                nbytes = f.tell() - off
                xm = None
                if s.xseg_mask is not None:
                    xoff = _pad_to(f, _ALIGN)
                    f.write(s.xseg_mask)
                    xm = [xoff, len(s.xseg_mask)]
                entries.append({
                    "name": s.name,
                    "face_type": s.face_type,
                    "shape": shape,
                    "encoding": enc,
                    "offset": off,
                    "nbytes": nbytes,
                    "eyebrows_expand_mod": float(s.eyebrows_expand_mod),
                    "source_filename": s.source_filename,
                    "xseg_mask": xm,
                    "seg_ie_polys": _json_polys(s.seg_ie_polys),
                })
            lm_off = _pad_to(f, _ALIGN)
            f.write(np.stack([np.asarray(s.landmarks, dtype="<f8") for s in samples]).tobytes())
            index = {
                "format": "torchsae-faceset",
                "version": TSPAK_VERSION,
                "count": len(samples),
                "landmarks": {"offset": lm_off, "shape": [len(samples), 68, 2], "dtype": "<f8"},
                "samples": entries,
                "source": _source_stamp(Path(source_dir)) if source_dir is not None else None,
            }
            ioff = _pad_to(f, _ALIGN)
            blob = json.dumps(index, separators=(",", ":")).encode("utf-8")
            f.write(blob)
            f.seek(0)
            f.write(TSPAK_MAGIC + _HEADER.pack(TSPAK_VERSION, 0, ioff, len(blob)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return out


def read_any_pack(path: str | Path) -> list[FaceSample]:
    """FaceSamples of a packed file, TorchSAE's or DFL's, told apart by the first bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head == TSPAK_MAGIC:
        return PackedFaceset.open(path).samples()
    if len(head) == 16 and struct.unpack("<Q", head[:8])[0] == 1:
        return read_dfl_pak(path)
    raise DataError(f"{path}: not a packed faceset (neither TorchSAE's {TSPAK_FILENAME} nor DFL's {DFL_PAK_FILENAME})")
