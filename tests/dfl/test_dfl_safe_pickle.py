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

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "archi"


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
        "obj": np.array([{"k": 1}, [2]], dtype=object),
        "c": np.complex64(1 + 2j), "noncontig": np.arange(20.0)[::3],
    }
    for proto in (2, 4, 5):
        back = safe_loads(pickle.dumps(obj, protocol=proto), "ok.dat")
        assert back["w"].dtype == np.float32 and np.array_equal(back["w"], obj["w"])
        assert back["i"] == 7 and back["f"] == 1.5 and back["b"] and back["dt"] == np.float16
        assert back["nested"] == obj["nested"] and back["od"] == obj["od"]
        assert back["obj"][0] == {"k": 1} and np.array_equal(back["noncontig"], obj["noncontig"])


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
