"""Build a kernel's plain-C source into a cached shared library, and run it on ranges from a thread pool
(shared by kernels/*/cpu.py).

Plain C with no torch headers builds in a fraction of a second with gcc (a torch C++ extension took 80 s
here). The library is cached under $TORCHSAE_CACHE (default ~/.cache/torchsae)/kernels/, keyed by the
source, the flags, the compiler version and the CPU (kernels are built with -march=native). Builds go to a
private temp file and are renamed into place, so concurrent processes (pytest-xdist, DDP ranks, loader
workers) never load a half-written library.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("torchsae.kernels")


def cache_dir() -> Path:
    root = os.environ.get("TORCHSAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "torchsae")
    return Path(root) / "kernels"


def cpu_id() -> str:
    """Model name + feature flags: a -march=native library is only valid for this CPU."""
    found: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags") and key not in found:
                    found[key] = line.strip()
                if len(found) == 2:
                    break
    except OSError:
        pass
    return "|".join(found.values()) or platform.processor() or platform.machine()


def compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def build(source: Path, cflags: list[str], *, ldflags: tuple[str, ...] = (), op: str) -> ctypes.CDLL:
    """Compile `source` (once per key) and load it; RuntimeError with the compiler's output on failure."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]
    key = hashlib.sha256(b"\0".join([source.read_bytes(), " ".join(cflags).encode(), "".join(version).encode(),
                                     cpu_id().encode(), platform.machine().encode()])).hexdigest()[:16]
    out = cache_dir() / f"{source.stem}_{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cc, *cflags, str(source), "-o", tmp, *ldflags], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            os.unlink(tmp)
            raise RuntimeError(f"building {source.name} with {cc} failed:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
        log.info("%s: built the CPU kernel %s", op, out)
    return ctypes.CDLL(str(out))


def build_function(source: Path, cflags: list[str], fn: str, argtypes: list, *, op: str,
                   ldflags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """`build` + declare the kernel's entry point `fn` (returns int, takes `argtypes`); returns the library."""
    lib = build(source, cflags, ldflags=ldflags, op=op)
    f = getattr(lib, fn)
    f.restype = ctypes.c_int
    f.argtypes = argtypes
    return lib


class LazyLibrary:
    """A kernel library built and loaded on first use, once per process (thread-safe). A build or load
    failure is remembered: `get()` then returns None and `reason` says why (callers fall back or raise)."""

    def __init__(self, build_fn, op: str, fallback: str):
        self._build_fn, self._op, self._fallback = build_fn, op, fallback
        self._lib: ctypes.CDLL | None = None
        self.reason: str = ""
        self._lock = threading.Lock()
        self._tried = False

    def get(self) -> ctypes.CDLL | None:
        if self._tried:
            return self._lib
        with self._lock:
            if not self._tried:
                try:
                    self._lib = self._build_fn()
                except Exception as e:  # noqa: BLE001 - any build/load failure means "no C kernel"
                    self.reason = str(e)
                    log.info("%s: C kernel unavailable (%s); %s", self._op, self.reason, self._fallback)
                self._tried = True
        return self._lib


class RangePool:
    """Runs ``run(lo, hi)`` over ``[0, total)`` split into ranges on a per-kernel thread pool: the C kernels
    release the GIL (ctypes), so Python threads give them parallelism without an OpenMP runtime next to
    torch's. The pool is created on first use and again after fork() (an inherited pool has no threads)."""

    def __init__(self, prefix: str):
        self._prefix = prefix
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1
        self._lock = threading.Lock()

    def map(self, run: Callable[[int, int], int], total: int, threads: int, *, chunks_per_thread: int = 1) -> list[int]:
        """Return codes of ``run`` over ``min(total, threads·chunks_per_thread)`` consecutive ranges (taken from
        a queue: with several chunks per thread, a descheduled worker on a shared machine delays only its
        chunk). One thread, or one element, runs inline."""
        threads = max(1, min(threads, total))
        if threads == 1:
            return [run(0, total)]
        with self._lock:
            if self._pool is None or self._pid != os.getpid() or self._pool._max_workers < threads:  # noqa: SLF001
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=self._prefix)
                self._pid = os.getpid()
        chunks = min(total, threads * chunks_per_thread)
        bounds = [total * i // chunks for i in range(chunks + 1)]
        return list(self._pool.map(run, bounds[:-1], bounds[1:]))
