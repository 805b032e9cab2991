"""DFL's faceset.pak (written here by docs/dfl.md §5.8 layout, with DFL's pickled enums) and TorchSAE's
memory-mapped faceset.tspak."""

from __future__ import annotations

import enum
import multiprocessing as mp
import pickle
import shutil
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest

from engine.faces import dfljpg, pak
from engine.faces.face_sample import FaceSample
from engine.faces.faceset import load_faceset, scan_faceset
from engine.errors import DataError, UnsafeFileError

GOLDEN = Path(__file__).parent.parent / "golden" / "dfljpg"
FILES = ["face_full_frontal.jpg", "face_full_no_mask.jpg", "face_wf_yaw20.jpg"]


@pytest.fixture
def dfl_enums(monkeypatch):
    """Stand-ins for DFL's facelib.FaceType.FaceType and samplelib.Sample.SampleType, so pickle writes
    the same globals DFL's packer writes."""
    ft_mod = types.ModuleType("facelib.FaceType")
    st_mod = types.ModuleType("samplelib.Sample")

    class FaceType(enum.IntEnum):
        HALF = 0
        FULL = 2
        WHOLE_FACE = 4

    class SampleType(enum.IntEnum):
        IMAGE = 0
        FACE = 1

    FaceType.__module__, SampleType.__module__ = "facelib.FaceType", "samplelib.Sample"
    FaceType.__qualname__, SampleType.__qualname__ = "FaceType", "SampleType"
    ft_mod.FaceType, st_mod.SampleType = FaceType, SampleType
    for name, mod in [("facelib", types.ModuleType("facelib")), ("samplelib", types.ModuleType("samplelib")),
                      ("facelib.FaceType", ft_mod), ("samplelib.Sample", st_mod)]:
        monkeypatch.setitem(sys.modules, name, mod)
    return FaceType, SampleType


def _dfl_config(path: Path, FaceType, SampleType, polys=None) -> dict:
    info = dfljpg.load(path)
    return {
        "sample_type": SampleType.FACE,
        "filename": path.name,
        "face_type": FaceType.FULL if info.face_type == "full_face" else FaceType.WHOLE_FACE,
        "shape": info.shape,
        "landmarks": np.array(info.meta["landmarks"]).tolist(),
        "seg_ie_polys": polys if polys is not None else {"polys": []},
        "xseg_mask": info.meta.get("xseg_mask"),
        "eyebrows_expand_mod": 1.0,
        "source_filename": info.meta["source_filename"],
        "person_name": None,
    }


def _write_dfl_pak(out: Path, configs: list, blobs: list[bytes]) -> None:
    """§5.8: u64 version, u64 len + pickle(configs, 4), (N+1) u64 offsets, data; last offset ABSOLUTE."""
    cfg = pickle.dumps(configs, 4)
    head = struct.pack("<Q", 1) + struct.pack("<Q", len(cfg)) + cfg
    data_start = len(head) + 8 * (len(blobs) + 1)
    offsets, pos = [], 0
    for b in blobs:
        offsets.append(pos)
        pos += len(b)
    offsets.append(data_start + pos)  # the quirk: absolute position of the end
    out.write_bytes(head + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(blobs))


@pytest.fixture
def dfl_pak(tmp_path, dfl_enums):
    FaceType, SampleType = dfl_enums
    polys = {"polys": [{"type": 1, "pts": np.array([[1, 2], [30, 4], [15, 40]], np.float32)},
                       {"type": 0, "pts": np.array([[5, 5], [8, 5], [6, 9]], np.float32)}]}
    configs = [_dfl_config(GOLDEN / f, FaceType, SampleType, polys if i == 1 else None) for i, f in enumerate(FILES)]
    blobs = [(GOLDEN / f).read_bytes() for f in FILES]
    out = tmp_path / "faceset.pak"
    _write_dfl_pak(out, configs, blobs)
    return out, configs, blobs


def test_read_dfl_pak(dfl_pak):
    path, configs, blobs = dfl_pak
    raw = path.read_bytes()
    assert b"facelib.FaceType" in raw and b"samplelib.Sample" in raw  # DFL's enum globals are in the pickle
    samples = pak.read_dfl_pak(path)
    assert [s.name for s in samples] == FILES
    for s, cfg, blob in zip(samples, configs, blobs):
        # every file's bytes come back whole, including the last one (absolute-offset quirk)
        assert bytes(s.read_bytes()) == blob
        assert s.face_type == dfljpg.load(GOLDEN / s.name).face_type
        assert s.shape == (256, 256, 3) and s.source_filename == "source_frame.png"
        np.testing.assert_array_equal(s.landmarks, np.array(cfg["landmarks"]))
        assert s.xseg_mask == (None if cfg["xseg_mask"] is None else cfg["xseg_mask"].tobytes())
        np.testing.assert_array_equal(s.load_image(), dfljpg.read_image(GOLDEN / s.name))
    assert samples[0].seg_ie_polys is None
    polys = samples[1].seg_ie_polys["polys"]
    assert [p["type"] for p in polys] == [1, 0] and polys[0]["pts"].dtype == np.float32
    np.testing.assert_array_equal(polys[1]["pts"], [[5, 5], [8, 5], [6, 9]])
    # the last size DFL computes is too large by the data start; ours runs exactly to EOF
    assert samples[-1].offset + samples[-1].nbytes == path.stat().st_size
    # a folder holding faceset.pak is read from the pak, as DFL does
    assert [s.name for s in load_faceset(path.parent)] == FILES


def test_dfl_pak_malicious_config_runs_nothing(tmp_path, dfl_enums):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pak"
    _write_dfl_pak(p, [{"filename": "a.jpg", "landmarks": Evil()}], [b"x"])
    with pytest.raises(UnsafeFileError, match=r"evil\.pak.*refused.*system"):
        pak.read_dfl_pak(p)
    assert not marker.exists()


def test_dfl_pak_sample_list_has_the_allocation_limits(tmp_path):
    """The sample list is read by engine.safe_pickle (its allow-list plus DFL's enums), size limits included."""
    bomb = b"\x80\x02cbuiltins\nbytearray\nJ\x00\xca\x9a\x3b\x85R."  # bytearray(10**9) from 33 bytes
    p = tmp_path / "bomb.pak"
    p.write_bytes(struct.pack("<QQ", 1, len(bomb)) + bomb + struct.pack("<Q", 16 + len(bomb) + 8))
    with pytest.raises(UnsafeFileError, match=r"bomb\.pak \(sample list\): refused to unpickle: it asks for a bytearray"):
        pak.read_dfl_pak(p)


def test_dfl_pak_corrupt_inputs(tmp_path, dfl_pak):
    path, _, _ = dfl_pak
    data = path.read_bytes()
    v2 = tmp_path / "v2.pak"
    v2.write_bytes(struct.pack("<Q", 2) + data[8:])
    with pytest.raises(DataError, match="version 2 is not supported"):
        pak.read_dfl_pak(v2)
    cut = tmp_path / "cut.pak"
    (n_cfg,) = struct.unpack("<Q", data[8:16])
    cut.write_bytes(data[:16 + n_cfg + 8])  # offset table cut off
    with pytest.raises(DataError, match="offset table"):
        pak.read_dfl_pak(cut)
    garbled = tmp_path / "garbled.pak"
    garbled.write_bytes(data[:16] + b"\x80\x04junk" + data[21:])
    with pytest.raises(DataError, match="not a readable pickle"):
        pak.read_dfl_pak(garbled)


@pytest.fixture
def aligned(tmp_path):
    d = tmp_path / "aligned"
    d.mkdir()
    for f in FILES:
        shutil.copy(GOLDEN / f, d / f)
    return d


@pytest.mark.parametrize("decoded", [False, True])
def test_tspak_round_trip(aligned, tmp_path, decoded):
    samples = scan_faceset(aligned)
    out = pak.pack_faceset(samples, tmp_path / "x.tspak", decoded=decoded, source_dir=aligned)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temp left
    head = out.read_bytes()[:40]
    assert head[:16] == pak.TSPAK_MAGIC and struct.unpack("<I", head[16:20])[0] == 1
    back = load_faceset(out)
    assert len(back) == len(samples)
    for a, b in zip(samples, back):
        assert (a.name, a.face_type, a.shape, a.source_filename, a.eyebrows_expand_mod, a.xseg_mask) == \
               (b.name, b.face_type, b.shape, b.source_filename, b.eyebrows_expand_mod, b.xseg_mask)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.load_image(), b.load_image())
        assert b.offset % 64 == 0 and b.path == str(out)
        if decoded:
            assert b.encoding == "raw" and b.nbytes == 256 * 256 * 3
            assert not b.load_image().flags.writeable  # a view into the shared memory map
        else:
            assert bytes(b.read_bytes()) == Path(a.path).read_bytes()


def _child_checksums(samples):
    return [zlib.crc32(s.load_image().tobytes()) for s in samples]


def test_tspak_samples_load_in_worker_processes(aligned, tmp_path):
    out = pak.pack_faceset(scan_faceset(aligned), tmp_path / "x.tspak")
    samples = pak.PackedFaceset.open(out).samples()
    assert max(len(pickle.dumps(s)) for s in samples) < 8192  # small records, no image data inside
    expect = [zlib.crc32(s.load_image().tobytes()) for s in samples]
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(_child_checksums, [samples[:2], samples[2:]])
    assert got[0] + got[1] == expect


def test_tspak_folder_preference_and_staleness(aligned, caplog):
    pak.pack_faceset(scan_faceset(aligned), aligned / pak.TSPAK_FILENAME, source_dir=aligned)
    with caplog.at_level("INFO", logger="torchsae.data"):
        samples = load_faceset(aligned)
    assert all(s.path.endswith(pak.TSPAK_FILENAME) for s in samples)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    shutil.copy(GOLDEN / FILES[0], aligned / "new_face.jpg")
    caplog.clear()
    with caplog.at_level("WARNING", logger="torchsae.data"):
        load_faceset(aligned)
    assert any("re-run `torchsae faceset pack" in r.getMessage() for r in caplog.records)


def test_tspak_corrupt(tmp_path, aligned):
    out = pak.pack_faceset(scan_faceset(aligned), tmp_path / "x.tspak")
    data = out.read_bytes()
    bad = tmp_path / "bad.tspak"
    bad.write_bytes(data[: len(data) - 50])
    with pytest.raises(DataError, match="truncated packed faceset"):
        pak.PackedFaceset.open(bad)
    other = tmp_path / "other.bin"
    other.write_bytes(b"\x07" * 64)
    with pytest.raises(DataError, match="not a packed faceset"):
        load_faceset(other)
    with pytest.raises(DataError, match="nothing to pack"):
        pak.pack_faceset([], tmp_path / "empty.tspak")


def test_face_sample_is_frozen(aligned):
    s = scan_faceset(aligned)[0]
    assert isinstance(s, FaceSample)
    with pytest.raises(ValueError):
        s.landmarks[0, 0] = 1.0
