"""DFLJPG read/write against files written by DFL itself (tests/golden/dfljpg), round trips, safety."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.faces import dfljpg
from engine.faces import landmarks as L
from engine.errors import DataError, UnsafeFileError

GOLDEN = Path(__file__).parent.parent / "golden" / "dfljpg"
NAMES = ["face_full_frontal", "face_full_no_mask", "face_wf_yaw20"]


def _gold(name):
    return np.load(GOLDEN / f"{name}_read.npz"), json.loads((GOLDEN / f"{name}.json").read_text())


def _dfl_meta(g, sidecar):
    """The metadata DFL's writer was given for this golden file (sidecar write_sequence)."""
    meta = {
        "face_type": sidecar["face_type"],
        "landmarks": g["landmarks"],
        "source_filename": "source_frame.png",
        "source_rect": g["source_rect"],
        "source_landmarks": g["source_landmarks"],
        "image_to_face_mat": g["image_to_face_mat"],
    }
    if g["xseg_mask_input"].size:
        meta["xseg_mask"] = g["xseg_mask_input"]
    return meta


@pytest.mark.parity
@pytest.mark.parametrize("name", NAMES)
def test_read_dfl_written_file(name):
    g, sc = _gold(name)
    rr = sc["reader_results"]
    path = GOLDEN / f"{name}.jpg"
    info = dfljpg.load(path)
    assert sorted(info.meta) == rr["DFLJPG.load(path).get_dict() keys"]
    assert info.shape == tuple(g["shape"]) == tuple(rr["shape (from SOF0)"])
    assert dfljpg.read_shape(path) == info.shape
    r = dfljpg.read(path)
    assert r["face_type"] == rr["get_face_type()"]
    assert r["source_filename"] == rr["get_source_filename()"]
    assert r["eyebrows_expand_mod"] == rr["get_eyebrows_expand_mod()"]
    for key in ("landmarks", "source_landmarks", "image_to_face_mat"):
        assert r[key].dtype == np.float64
        np.testing.assert_array_equal(r[key], g[key], err_msg=key)
    np.testing.assert_array_equal(r["source_rect"], g["source_rect"])
    # DFL's stored python types are kept in .meta (landmarks as lists of floats)
    assert isinstance(info.meta["landmarks"], list) and isinstance(info.meta["image_to_face_mat"], np.ndarray)
    if rr["has_xseg_mask()"]:
        assert info.xseg_mask_bytes == g["xseg_mask_buf"].tobytes()
        assert info.xseg_mask_bytes[:4] == b"\x89PNG" and len(info.xseg_mask_bytes) == rr["xseg_mask_buf_len"]
        assert r["xseg_mask"].dtype == np.float32 and r["xseg_mask"].shape == (256, 256, 1)
        np.testing.assert_array_equal(r["xseg_mask"], g["xseg_mask"])
    else:
        assert "xseg_mask" not in r and info.xseg_mask_bytes is None
    # the stored alignment is what our get_transform_mat computes from the stored frame landmarks
    mat = L.get_transform_mat(r["source_landmarks"], 256, r["face_type"])
    assert np.abs(mat - r["image_to_face_mat"]).max() < 1e-4


@pytest.mark.parity
@pytest.mark.parametrize("name", NAMES)
def test_write_gives_dfl_bytes(name, tmp_path):
    g, sc = _gold(name)
    meta = _dfl_meta(g, sc)
    # pixels: same encoder call as DFL's extractor (quality 90)
    assert dfljpg.encode_jpeg(g["face_image_written"], 90) == g["plain_jpg_bytes"].tobytes()
    out = tmp_path / "face.jpg"
    dfljpg.write(out, g["face_image_written"], meta)
    ours = out.read_bytes()
    segs = dfljpg.parse_segments(ours)
    app15 = [s for s in segs if s.name == "APP15"]
    assert len(app15) == 1 and app15[0].data == g["app15_payload"].tobytes()  # same pickle bytes as DFL
    # segment structure identical to DFL's (sidecar 'chunks')
    layout = [(s.name, None if s.data is None else len(s.data), len(s.ex_data) or None) for s in segs]
    expect = [(c["name"], c["data_len"], c["ex_data_len"]) for c in sc["reader_results"]["chunks"]]
    assert layout == expect
    assert layout[2][0] == "APP15"  # right after the last APPn (APP0)
    # and in fact the whole file is byte-identical to DFL's
    assert ours == (GOLDEN / f"{name}.jpg").read_bytes()
    # already-encoded JPEG bytes are kept as they are
    assert dfljpg.to_jpeg_bytes(g["plain_jpg_bytes"].tobytes(), meta) == ours


def test_payload_is_protocol4_with_numpy1_names(tmp_path):
    g, sc = _gold("face_full_frontal")
    payload = dfljpg.parse_segments(dfljpg.to_jpeg_bytes(g["face_image_written"], _dfl_meta(g, sc)))[2].data
    assert payload[:2] == b"\x80\x04"
    assert b"numpy.core.multiarray" in payload and b"numpy._core" not in payload
    assert pickle.loads(payload)["face_type"] == "full_face"  # stock pickle (numpy's 1.x shim) reads it too


def test_set_meta_replaces_metadata_without_touching_pixels(tmp_path):
    g, sc = _gold("face_full_frontal")
    p = tmp_path / "a.jpg"
    shutil.copy(GOLDEN / "face_full_no_mask.jpg", p)
    before = [s for s in dfljpg.parse_segments(p.read_bytes()) if s.name != "APP15"]
    dfljpg.set_meta(p, _dfl_meta(g, sc))
    after = dfljpg.parse_segments(p.read_bytes())
    assert [s for s in after if s.name != "APP15"] == before
    # the no-mask golden has the same pixels as the frontal one, so now the files are identical
    assert p.read_bytes() == (GOLDEN / "face_full_frontal.jpg").read_bytes()
    assert [x.name for x in tmp_path.iterdir()] == ["a.jpg"]  # no temp file left behind


def test_update_meta_changes_and_deletes_keys(tmp_path):
    p = tmp_path / "a.jpg"
    shutil.copy(GOLDEN / "face_full_frontal.jpg", p)
    dfljpg.update_meta(p, source_filename="frame_0001.png", xseg_mask=None, eyebrows_expand_mod=1.5)
    r = dfljpg.read(p)
    assert r["source_filename"] == "frame_0001.png" and "xseg_mask" not in r and r["eyebrows_expand_mod"] == 1.5
    g, _ = _gold("face_full_frontal")
    np.testing.assert_array_equal(r["landmarks"], g["landmarks"])


def test_plain_and_broken_files(tmp_path):
    g, _ = _gold("face_full_frontal")
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(g["plain_jpg_bytes"].tobytes())
    assert dfljpg.read(plain) is None and dfljpg.load(plain) is None
    assert dfljpg.read_shape(plain) == (256, 256, 3)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes((GOLDEN / "face_full_frontal.jpg").read_bytes()[:9000])
    with pytest.raises(DataError, match=r"trunc\.jpg: truncated JPEG"):
        dfljpg.read(trunc)
    notjpg = tmp_path / "x.jpg"
    notjpg.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match=r"x\.jpg: not a JPEG"):
        dfljpg.read(notjpg)
    with pytest.raises(DataError, match="missing.jpg: cannot read"):
        dfljpg.read(tmp_path / "missing.jpg")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_payload_is_refused_and_runs_nothing(tmp_path):
    g, _ = _gold("face_full_frontal")
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"face_type": "full_face", "landmarks": _Evil(marker)}, protocol=4)
    segs = dfljpg.parse_segments(g["plain_jpg_bytes"].tobytes())
    segs.insert(2, dfljpg.Segment(0xEF, evil))
    p = tmp_path / "evil.jpg"
    p.write_bytes(dfljpg.join_segments(segs))
    with pytest.raises(UnsafeFileError, match=r"evil\.jpg.*refused to unpickle.*(posix|os)\.system"):
        dfljpg.read(p)
    assert not marker.exists()


def test_large_mask_falls_back_to_jpeg_under_the_cap():
    rng = np.random.default_rng(0)
    blobs = (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255
    mask = cv2.resize(blobs, (512, 512), interpolation=cv2.INTER_LINEAR).astype(np.float32)[..., None] / 255
    m8 = np.clip(mask[..., 0] * 255, 0, 255).astype(np.uint8)
    assert len(cv2.imencode(".png", m8)[1]) > 50000  # so DFL's PNG attempt is too big
    buf = dfljpg.encode_xseg_mask(mask)
    assert buf.dtype == np.uint8 and buf.ndim == 1
    assert buf[:2].tobytes() == b"\xff\xd8" and len(buf) <= dfljpg.XSEG_MASK_MAX_BYTES
    # the highest JPEG quality that fits, as DFL's loop 100, 99, ... finds it
    sizes = {q: cv2.imencode(".jpg", m8, [cv2.IMWRITE_JPEG_QUALITY, q])[1] for q in range(100, -1, -1)}
    q = next(q for q in range(100, -1, -1) if len(sizes[q]) <= 50000)
    assert q < 100 and len(sizes[q + 1]) > 50000
    np.testing.assert_array_equal(buf, sizes[q].reshape(-1))
    noise = (rng.random((512, 512)) > 0.5).astype(np.float32)
    with pytest.raises(DataError, match="does not fit 50000 bytes even as JPEG quality 0"):
        dfljpg.encode_xseg_mask(noise)
    small = dfljpg.encode_xseg_mask(np.zeros((256, 256), np.float32))
    assert small[:4].tobytes() == b"\x89PNG"
    np.testing.assert_array_equal(dfljpg.decode_xseg_mask(small), np.zeros((256, 256, 1), np.float32))


def test_oversized_metadata_and_bad_values_raise(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    p = tmp_path / "a.jpg"
    dfljpg.write(p, img, {"face_type": "f"})
    before = p.read_bytes()
    with pytest.raises(DataError, match="over the 65533-byte APP15 limit"):
        dfljpg.set_meta(p, {"face_type": "f", "blob": b"x" * 70000})
    assert p.read_bytes() == before and len(list(tmp_path.iterdir())) == 1  # untouched, no temp left
    with pytest.raises(DataError, match=r"'landmarks'.*list of \[x, y\] points"):
        dfljpg.write(p, img, {"landmarks": np.zeros((68, 3))})
    with pytest.raises(DataError, match="unknown face type 'ful'"):
        dfljpg.write(p, img, {"face_type": "ful"})
    with pytest.raises(DataError, match=r"'extra'.*cannot store a _Evil"):
        dfljpg.write(p, img, {"extra": _Evil("x")})
    with pytest.raises(DataError, match="expected BGR uint8"):
        dfljpg.write(p, img.astype(np.float32), {})


_finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    face_type=st.sampled_from(["half_face", "midfull_face", "full_face", "full_face_no_align", "whole_face", "head", "head_no_align", "mark_only"]),
    lm=st.lists(st.tuples(_finite, _finite), min_size=68, max_size=68),
    src=st.text(min_size=1, max_size=40),
    rect=st.tuples(*[st.integers(-10_000, 10_000)] * 4),
    mat=st.lists(_finite, min_size=6, max_size=6),
    ebm=st.floats(0.0, 4.0),
    mask=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    extra=st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-5, 5), st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3)), max_size=3),
)
def test_round_trip_arbitrary_metadata(tmp_path_factory, face_type, lm, src, rect, mat, ebm, mask, extra):
    meta = {
        "face_type": face_type,
        "landmarks": np.array(lm),
        "source_filename": src,
        "source_rect": np.array(rect, dtype=np.int64),
        "source_landmarks": np.array(lm) * 2,
        "image_to_face_mat": np.array(mat).reshape(2, 3),
        "eyebrows_expand_mod": ebm,
        "legacy_extra": extra,
    }
    m = None
    if mask is not None:
        m = (np.random.default_rng(mask).random((32, 32, 1)) > 0.5).astype(np.float32)
        meta["xseg_mask"] = m
    p = tmp_path_factory.mktemp("rt") / "f.jpg"
    dfljpg.write(p, np.full((8, 8, 3), 7, np.uint8), meta)
    r = dfljpg.read(p)
    assert r["face_type"] == face_type and r["source_filename"] == src and r["eyebrows_expand_mod"] == ebm
    np.testing.assert_array_equal(r["landmarks"], np.array(lm))
    np.testing.assert_array_equal(r["source_landmarks"], np.array(lm) * 2)
    np.testing.assert_array_equal(r["source_rect"], np.array(rect))
    np.testing.assert_array_equal(r["image_to_face_mat"], np.array(mat).reshape(2, 3))
    assert r["legacy_extra"] == extra
    if m is None:
        assert "xseg_mask" not in r
    else:
        np.testing.assert_array_equal(r["xseg_mask"], m)  # binary masks survive PNG exactly
    assert dfljpg.load(p).shape == (8, 8, 3)
