"""Restricted unpickling for DFL's pickled files (docs/dfl.md §8, quirk §12.17).

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

Bounded allocation: pickle opcodes build objects in proportion to the input, except the allowed callables
that take a *size*: ``bytearray(n)``, ``ndarray(shape, dtype)``, ``_reconstruct(ndarray, shape, dtype)``,
``scalar(dtype, ...)`` and dtypes whose item size is set by the pickle. A 33-byte pickle calling
``bytearray(10**9)`` would allocate 1 GB. Each such object may take at most `MAX_OBJECT_BYTES` and all of
them together `MAX_TOTAL_BYTES` per load (UnsafeFileError naming the request before it is allocated). Real
DFL files never reach this: numpy pickles arrays as ``_reconstruct(ndarray, (0,), ...)`` plus their bytes
inline, so their size is the file's own. Object dtypes are refused too: object arrays hold arbitrary
objects, DFL's files have none, and numpy's ``__setstate__`` for them trusts the pickle's shape.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from engine.errors import DataError, TorchSAEError, UnsafeFileError

__all__ = ["safe_loads", "safe_load", "safe_load_file", "ALLOWED_GLOBALS", "MAX_OBJECT_BYTES", "MAX_TOTAL_BYTES",
           "describe_torch_load_error", "numpy_core"]

# Size limits for objects whose size the pickle states rather than spells out (see the module docstring).
MAX_OBJECT_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20


def numpy_core():
    """numpy's core module: numpy._core (numpy 2) or numpy.core (numpy 1.x)."""
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
    core = numpy_core()
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


class _TooBig(Exception):
    def __init__(self, what: str):
        self.what = what


class _NDArraySentinel:
    """What ``numpy.ndarray`` unpickles to: the class itself is only ever passed to ``_reconstruct`` (which
    maps it back); calling it, ``ndarray(shape, dtype)``, allocates and is size-checked."""

    def __init__(self, guard: "_Guard"):
        self.guard = guard

    def __call__(self, shape, dtype=float, *args, **kwargs):
        self.guard.array(shape, dtype, "numpy.ndarray")
        return np.ndarray(shape, dtype, *args, **kwargs)


class _Guard:
    """Per-load budget for the allowed callables that allocate by a stated size."""

    def __init__(self, max_object: int, max_total: int):
        self.max_object, self.max_total, self.total = max_object, max_total, 0
        core = numpy_core()
        self._reconstruct_real, self._scalar_real = core.multiarray._reconstruct, core.multiarray.scalar
        self.ndarray = _NDArraySentinel(self)

    def charge(self, nbytes: int, what: str) -> None:
        if nbytes > self.max_object:
            raise _TooBig(f"{what} of {nbytes:,} bytes (limit {self.max_object:,} per object)")
        if self.total + nbytes > self.max_total:
            raise _TooBig(f"{what} of {nbytes:,} bytes after {self.total:,} already built (limit "
                          f"{self.max_total:,} per file)")
        self.total += nbytes

    def dtype_of(self, spec, what: str) -> np.dtype:
        d = spec if isinstance(spec, np.dtype) else np.dtype(spec)
        if d.hasobject:
            raise _TooBig(f"{what} with an object dtype ({d}): object arrays hold arbitrary objects")
        return d

    def array(self, shape, dtype, what: str) -> None:
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(n, int) and n >= 0 for n in dims):
            raise _TooBig(f"{what} with shape {shape!r}")
        d = self.dtype_of(dtype, what)
        self.charge(math.prod(dims) * d.itemsize, f"{what} {dims} {d}")

    # the allowed callables, size-checked before the real one runs
    def bytearray(self, *args):
        if args and isinstance(args[0], int):
            self.charge(args[0], "bytearray")
        out = bytearray(*args)
        if not (args and isinstance(args[0], int)):
            self.charge(len(out), "bytearray")
        return out

    def reconstruct(self, subtype, shape, dtype):
        if subtype is self.ndarray:
            subtype = np.ndarray
        if subtype is not np.ndarray:
            raise _TooBig(f"_reconstruct of {subtype!r}")
        self.array(shape, dtype, "numpy array")
        return self._reconstruct_real(subtype, shape, dtype)

    def scalar(self, dtype, *args):
        d = self.dtype_of(dtype, "numpy scalar")
        self.charge(d.itemsize, f"numpy scalar {d}")
        return self._scalar_real(d, *args)

    def dtype(self, *args, **kwargs):
        d = np.dtype(*args, **kwargs)
        self.dtype_of(d, "numpy dtype")
        return d

    def wrap(self, obj: Any) -> Any:
        core = numpy_core()
        return {np.ndarray: self.ndarray, bytearray: self.bytearray, np.dtype: self.dtype,
                core.multiarray._reconstruct: self.reconstruct, core.multiarray.scalar: self.scalar}.get(obj, obj)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, guard: _Guard, extra_globals: Mapping[tuple[str, str], Any]):
        super().__init__(file)
        self.guard = guard
        self.extra_globals = extra_globals

    def find_class(self, module: str, name: str) -> Any:
        obj = ALLOWED_GLOBALS.get((module, name)) or self.extra_globals.get((module, name))
        if obj is None:
            raise _Refused(module, name)
        return self.guard.wrap(obj)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def safe_load(fileobj: BinaryIO, source: str, *, corrupt_error: type[TorchSAEError] = DataError,
              max_object_bytes: int = MAX_OBJECT_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES,
              extra_globals: Mapping[tuple[str, str], Any] = {}) -> Any:  # noqa: B006 - read only
    """Unpickle from a binary file object with the allow-list and the size limits (module docstring).
    ``source`` names the file in errors. ``extra_globals`` ({(module, name): object}) adds a format's own
    harmless globals to the allow-list (e.g. the IntEnums DFL's faceset.pak pickles: engine.faces.pak)."""
    try:
        return _RestrictedUnpickler(fileobj, _Guard(max_object_bytes, max_total_bytes), extra_globals).load()
    except _Refused as r:
        raise UnsafeFileError(
            f"{source}: refused to unpickle: it asks for '{r.module}.{r.name}', which is not numpy array data or "
            "a plain container (DFL files hold only these). Nothing was executed. If you did not create this "
            "file yourself, do not use it.") from None
    except _TooBig as t:
        raise UnsafeFileError(
            f"{source}: refused to unpickle: it asks for a {t.what}, which DFL's files never build (their "
            "arrays are stored inline). Nothing was allocated or executed. If you did not create this file "
            "yourself, do not use it.") from None
    except MemoryError:
        raise UnsafeFileError(f"{source}: refused to unpickle: it needs more memory than is available") from None
    except UnsafeFileError:
        raise
    except Exception as e:  # truncated/garbled data: pickle raises many types
        raise corrupt_error(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from None


def safe_loads(data: bytes, source: str, *, corrupt_error: type[TorchSAEError] = DataError, **limits) -> Any:
    """Unpickle ``data`` with the allow-list (see module docstring); ``source`` names it in errors."""
    return safe_load(io.BytesIO(data), source, corrupt_error=corrupt_error, **limits)


def safe_load_file(path: str | Path, *, corrupt_error: type[TorchSAEError] = DataError) -> Any:
    """Unpickle a file with the allow-list (streams from disk; no second copy of the bytes)."""
    with open(path, "rb") as f:
        return safe_load(f, str(path), corrupt_error=corrupt_error)


_TORCH_REFUSAL = (
    re.compile(r"Unsupported global: GLOBAL (\S+?) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+?) whose module"),
    re.compile(r"(?:Unsupported class|Unsupported global) (\S+)"),
)
_TORCH_DETAIL = re.compile(r"(Unsupported operand \d+|WeightsUnpickler error: [^\n]+)")


def describe_torch_load_error(e: BaseException) -> tuple[str, str] | None:
    """Classify an error of ``torch.load(weights_only=True)``: ``("refused", "'posix.system'")`` when it
    refused a global (the file asks for code or a class outside the allow-list), ``("unreadable",
    "Unsupported operand 110")`` when the bytes are no pickle torch can read (damaged, or not written by
    torch.save), None when `e` is not from the weights-only unpickler. Pure text: torch's message without its
    ANSI escapes and its advice to load with weights_only=False."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e))
    if "Weights only load failed" not in text:
        return None
    for rx in _TORCH_REFUSAL:
        m = rx.search(text)
        if m:
            return "refused", f"'{m.group(1).rstrip('.,')}'"
    m = _TORCH_DETAIL.search(text)
    return "unreadable", (m.group(1).strip() if m else "the weights-only unpickler cannot read it")
