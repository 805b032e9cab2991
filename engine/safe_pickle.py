"""Restricted unpickling for DFL's pickled files (spec §8, quirk §12.17).

DFL stores model options (``<name>_SAEHD_data.dat``), weights (``<name>_SAEHD_<part>.npy``, protocol-4
pickles of ``{name:0 -> ndarray}``) and DFLJPG metadata as pickles. Unpickling an untrusted pickle can
run arbitrary code, so these are read with an allow-list: only

- numpy array / scalar / dtype reconstruction: ``_reconstruct``, ``scalar`` and ``_frombuffer`` from both
  numpy 1.x (``numpy.core.*``) and numpy 2.x (``numpy._core.*``) module paths, ``numpy.ndarray``,
  ``numpy.dtype`` and numpy scalar types;
- plain containers and scalars (handled by pickle opcodes without any lookup), plus the globals older
  protocols use for them: ``set``, ``frozenset``, ``bytearray``, ``complex``, ``collections.OrderedDict``
  and ``_codecs.encode`` restricted to latin-1 (how protocol-2 pickles spell ``bytes``).

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) raises UnsafeFileError naming the
file and the refused global *before* anything is called. A malformed pickle raises ``corrupt_error``.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engine.errors import DataError, TorchSAEError, UnsafeFileError

__all__ = ["safe_loads", "safe_load", "safe_load_file", "ALLOWED_GLOBALS"]


def _numpy_core():
    # numpy 2 renamed numpy.core -> numpy._core (numpy.core still exists as a warning shim)
    core = getattr(np, "_core", None)
    if core is None or not hasattr(core, "multiarray"):
        import numpy.core as core  # numpy 1.x
    return core


def _latin1_encode(obj: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes; any other codec is refused."""
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    core = _numpy_core()
    ma, num = core.multiarray, core.numeric
    table: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = ma._reconstruct
        table[(mod, "scalar")] = ma.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = num._frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    # numpy 2 pickles dtypes as numpy.dtypes.Float32DType etc. in some paths
    for name in ("bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                 "float32", "float64", "complex64", "complex128", "str_", "bytes_"):
        table[("numpy", name)] = getattr(np, name)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType") and name != "ObjectDType":
                table[("numpy.dtypes", name)] = getattr(dtypes, name)
    # protocols < 4 build these containers through a global lookup (py2 spelling: __builtin__)
    for mod in ("builtins", "__builtin__"):
        for obj in (set, frozenset, bytearray, complex):
            table[(mod, obj.__name__)] = obj
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("_codecs", "encode")] = _latin1_encode
    return table


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _allowed()


class _Refused(Exception):
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise _Refused(module, name)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_load(fileobj: BinaryIO, source: str, *, corrupt_error: type[TorchSAEError] = DataError) -> Any:
    """Unpickle from a binary file object with the allow-list. ``source`` names the file in errors."""
    try:
        return _RestrictedUnpickler(fileobj).load()
    except _Refused as r:
        raise UnsafeFileError(
            f"{source}: refused to unpickle: it asks for '{r.module}.{r.name}', which is not numpy array data or "
            "a plain container (DFL files hold only these). Nothing was executed. If you did not create this "
            "file yourself, do not use it.") from None
    except UnsafeFileError:
        raise
    except Exception as e:  # truncated/garbled data: pickle raises many types
        raise corrupt_error(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def safe_loads(data: bytes, source: str, *, corrupt_error: type[TorchSAEError] = DataError) -> Any:
    """Unpickle ``data`` with the allow-list (see module docstring); ``source`` names it in errors."""
    return safe_load(io.BytesIO(data), source, corrupt_error=corrupt_error)


def safe_load_file(path: str | Path, *, corrupt_error: type[TorchSAEError] = DataError) -> Any:
    """Unpickle a file with the allow-list (streams from disk; no second copy of the bytes)."""
    with open(path, "rb") as f:
        return safe_load(f, str(path), corrupt_error=corrupt_error)
