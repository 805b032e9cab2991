"""Restricted unpickling: numpy data and plain containers load; anything that would run code is refused
before it runs (a real payload that would create a file), naming the file."""

from __future__ import annotations

import collections
import lzma
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.dfl import import_model, read_part_file
from engine.errors import CheckpointError, DataError, UnsafeFileError
from engine.safe_pickle import safe_load_file, safe_loads

GOLDEN = Path(__file__).resolve().parent / "golden" / "archi"


class _System:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Popen:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.path)],))


class _Eval:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (eval, (f"open({str(self.path)!r}, 'w')",))


@pytest.mark.parametrize("cls,refused", [(_System, "system"), (_Popen, "subprocess.Popen"), (_Eval, "builtins.eval")])
def test_malicious_payload_is_refused_and_never_runs(tmp_path, cls, refused):
    marker = tmp_path / "pwned"
    # the payload works: plain pickle.loads would create the marker (checked on a throwaway copy)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(cls(probe)))
    if cls is _Popen:
        import time

        for _ in range(100):
            if probe.exists():
                break
            time.sleep(0.02)
    assert probe.exists()
    data = pickle.dumps({"dense1/weight:0": np.zeros(2, np.float32), "x": cls(marker)}, protocol=4)
    with pytest.raises(UnsafeFileError, match=rf"evil\.npy: refused to unpickle: it asks for '.*{refused}'"):
        safe_loads(data, "evil.npy")
    assert not marker.exists()


def test_malicious_part_file_in_a_model_folder(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "encoder.npy").write_bytes(pickle.dumps({"a": _System(marker)}, protocol=4))
    with pytest.raises(UnsafeFileError, match=r"encoder\.npy: refused to unpickle"):
        import_model(tmp_path, options={"archi": "df", "resolution": 64})
    assert not marker.exists()
    (tmp_path / "m_SAEHD_data.dat").write_bytes(pickle.dumps({"options": {}, "iter": _System(marker)}))
    with pytest.raises(UnsafeFileError, match=r"m_SAEHD_data\.dat: refused"):
        import_model(tmp_path)
    assert not marker.exists()


def test_numpy_arrays_scalars_dtypes_and_containers_load():
    obj = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "i": np.int64(7), "f": np.float64(1.5), "b": np.bool_(True),
        "u8": np.zeros((2, 2), np.uint8), "dt": np.dtype("float16"),
        "nested": [1, 2.5, "s", b"bytes", None, True, (1, 2), {3, 4}, frozenset({5})],
        "od": collections.OrderedDict(a=1),
        "c": np.complex64(1 + 2j), "noncontig": np.arange(20.0)[::3],
    }
    for proto in (2, 4, 5):
        back = safe_loads(pickle.dumps(obj, protocol=proto), "ok.dat")
        assert back["w"].dtype == np.float32 and np.array_equal(back["w"], obj["w"])
        assert back["i"] == 7 and back["f"] == 1.5 and back["b"] and back["dt"] == np.float16
        assert back["nested"] == obj["nested"] and back["od"] == obj["od"]
        assert np.array_equal(back["noncontig"], obj["noncontig"])


def test_numpy_1x_and_2x_module_names_load():
    """DFL's files come from numpy 1.x and name numpy.core.multiarray; numpy 2 writes numpy._core."""
    data_1x = lzma.decompress((GOLDEN / "df-ud_res64_dflfmt" / "encoder.npy.xz").read_bytes())  # real DFL file
    assert b"numpy.core.multiarray" in data_1x and b"numpy._core" not in data_1x
    w = safe_loads(data_1x, "encoder.npy")["down1/downs_0/conv1/weight:0"]
    assert w.shape == (5, 5, 3, 16) and w.dtype == np.float32
    data_2x = pickle.dumps({"k:0": w}, protocol=4)
    if np.__version__.startswith("2"):
        assert b"numpy._core" in data_2x
    assert np.array_equal(safe_loads(data_2x, "v2.npy")["k:0"], w)


def test_codecs_encode_only_for_latin1():
    good = pickle.dumps(b"\x00\xffab", protocol=2)  # protocol 2 spells bytes as _codecs.encode(str, 'latin1')
    assert b"_codecs" in good and safe_loads(good, "p2.dat") == b"\x00\xffab"
    bad = good.replace(b"latin1", b"rot_13")
    with pytest.raises(DataError, match="p2.dat: not a readable pickle"):
        safe_loads(bad, "p2.dat")


def test_corrupt_data_raises_the_callers_error(tmp_path):
    data = pickle.dumps({"a": np.zeros(100, np.float32)}, protocol=4)
    with pytest.raises(DataError, match="cut.dat: not a readable pickle"):
        safe_loads(data[: len(data) // 2], "cut.dat")
    f = tmp_path / "cut.npy"
    f.write_bytes(data[:40])
    with pytest.raises(CheckpointError, match=r"cut\.npy: not a readable pickle"):
        read_part_file(f)
    with pytest.raises(CheckpointError, match="not a DFL weight file"):
        (tmp_path / "list.npy").write_bytes(pickle.dumps([1, 2]))
        read_part_file(tmp_path / "list.npy")
    (tmp_path / "ok.pkl").write_bytes(data)
    assert safe_load_file(tmp_path / "ok.pkl")["a"].shape == (100,)


# ---------------------------------------------------------------------------------------------------------
# bounded allocation (module docstring of engine.safe_pickle): crafted payloads that only use allowed globals

def _reduce(module: bytes, name: bytes, arg: bytes) -> bytes:
    """protocol-2 pickle of ``module.name(arg)``; `arg` is already pickle opcodes for one value."""
    return b"\x80\x02c" + module + b"\n" + name + b"\n" + arg + b"\x85R"


BOMB = _reduce(b"builtins", b"bytearray", b"J\x00\xca\x9a\x3b") + b"."  # bytearray(10**9): 1 GB from 33 bytes


def test_bytearray_bomb_is_refused_before_allocation(tmp_path):
    assert len(BOMB) <= 33
    with pytest.raises(UnsafeFileError, match=r"bomb\.dat: refused to unpickle: it asks for a bytearray of "
                                              r"1,000,000,000 bytes.*Nothing was allocated"):
        safe_loads(BOMB, "bomb.dat")
    # the same payload through the DFL file readers and a DFLJPG's APP15 segment
    from engine.faces import dfljpg
    from engine.dfl.files import read_data_file, read_part_file

    f = tmp_path
    (f / "encoder.npy").write_bytes(BOMB)
    (f / "m_SAEHD_data.dat").write_bytes(BOMB)
    for reader, name in ((read_part_file, "encoder.npy"), (read_data_file, "m_SAEHD_data.dat")):
        with pytest.raises(UnsafeFileError, match="bytearray of 1,000,000,000 bytes"):
            reader(f / name)
    jpg = dfljpg.encode_jpeg(np.zeros((8, 8, 3), np.uint8))
    segs = dfljpg.parse_segments(jpg)
    segs.insert(1, dfljpg.Segment(0xEF, BOMB))  # APP15
    (f / "face.jpg").write_bytes(dfljpg.join_segments(segs))
    with pytest.raises(UnsafeFileError, match="face.jpg: refused to unpickle"):
        dfljpg.read(f / "face.jpg")
    # a legitimate bytearray in the file is fine
    assert safe_loads(pickle.dumps(bytearray(b"abc"), protocol=2), "ok.dat") == bytearray(b"abc")


def test_repeated_small_allocations_hit_the_per_file_budget():
    """Many bytearray(60 MB) calls, each under the per-object limit, inside one 64 KB payload (a DFLJPG APP15
    segment's size): the per-file total stops them."""
    one = _reduce(b"builtins", b"bytearray", b"J" + (60 << 20).to_bytes(4, "little"))
    body = b"\x80\x02(" + b"".join(one[2:] + b"0" for _ in range(1500)) + b")."  # MARK, REDUCE+POP each, EMPTY_TUPLE
    assert len(body) < 64 * 1024
    with pytest.raises(UnsafeFileError, match=r"after .* already built \(limit"):
        safe_loads(body, "app15")


def test_array_shape_dtype_and_scalar_bombs_are_refused():
    core = b"numpy._core.multiarray" if np.__version__.startswith("2") else b"numpy.core.multiarray"
    # _reconstruct(ndarray, (10**9,), 'u1'): numpy's own pickles always pass shape (0,)
    recon = (b"\x80\x02c" + core + b"\n_reconstruct\ncnumpy\nndarray\nJ\x00\xca\x9a\x3b\x85X\x02\x00\x00\x00u1"
             b"\x87R.")
    with pytest.raises(UnsafeFileError, match=r"numpy array \(1000000000,\) uint8 of 1,000,000,000 bytes"):
        safe_loads(recon, "recon.npy")
    # ndarray((10**9,), 'f4') called directly
    nd = b"\x80\x02cnumpy\nndarray\nJ\x00\xca\x9a\x3b\x85X\x02\x00\x00\x00f4\x86R."
    with pytest.raises(UnsafeFileError, match=r"numpy\.ndarray .* of 4,000,000,000 bytes"):
        safe_loads(nd, "nd.npy")
    # a sub-array dtype of 10**9 bytes per item, then one array of it
    sub = pickle.dumps(np.dtype(("u1", (8,))), protocol=2).replace(b"K\x08", b"J\x00\xca\x9a\x3b")
    try:
        d = safe_loads(sub, "sub.dat")  # the dtype alone allocates nothing
    except UnsafeFileError:
        d = None
    assert d is None or d.itemsize == 10**9


def test_object_arrays_are_refused_numpy_would_read_past_the_list():
    """numpy's ndarray.__setstate__ for object dtype trusts the pickle's shape: shape (3,) with a 2-item list
    crashes the interpreter (reads past the list). DFL's files hold no object arrays."""
    data = pickle.dumps(np.array([{"k": 1}, [2]], dtype=object), protocol=2)
    with pytest.raises(UnsafeFileError, match="object dtype"):
        safe_loads(data, "obj.dat")
    crafted = data.replace(b"K\x02\x85", b"K\x03\x85", 1)  # shape (2,) -> (3,)
    assert crafted != data
    with pytest.raises(UnsafeFileError, match="object dtype"):
        safe_loads(crafted, "obj.dat")


def test_real_dfl_files_fit_the_limits(tmp_path):
    """A DFL weight part (real file), a DFLJPG with 68 landmarks and a 256x256 XSeg mask PNG, and a DFL
    options dict with a loss history load under the default limits."""
    from engine.faces import dfljpg
    from engine.dfl.files import read_data_file, write_data_file

    data_1x = lzma.decompress((GOLDEN / "df-ud_res64_dflfmt" / "encoder.npy.xz").read_bytes())
    assert len(safe_loads(data_1x, "encoder.npy")) > 0
    img = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    mask = np.random.default_rng(2).random((256, 256)) > 0.5  # a noisy mask: the largest PNG DFL stores
    lms = np.random.default_rng(1).random((68, 2)) * 256
    dfljpg.write(tmp_path / "f.jpg", img, {"face_type": "whole_face", "landmarks": lms, "source_landmarks": lms,
                                          "xseg_mask": mask.astype(np.float32)})
    meta = dfljpg.read(tmp_path / "f.jpg")
    assert meta["landmarks"].shape == (68, 2) and meta["xseg_mask"].shape == (256, 256, 1)
    opts = {"resolution": 256, "archi": "liae-ud", "ae_dims": 256}
    write_data_file(tmp_path / "m_SAEHD_data.dat", opts, iter=100000,
                    loss_history=[[0.5, 0.4]] * 100000)
    back = read_data_file(tmp_path / "m_SAEHD_data.dat")
    assert back["iter"] == 100000 and len(back["loss_history"]) == 100000
