"""Atomic file writes: the one way TorchSAE writes a file the user keeps (checkpoints, DFL model files,
DFLJPG faces, merged frames, logs and summaries), so a crash or Ctrl-C mid-write leaves the previous file
intact and never a truncated one.

    write_atomic(path, data)                  # temp file in the same folder, then os.replace
    write_atomic(path, data, durable=True)    # + fsync the file and the folder (checkpoints, DFL files)
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["write_atomic", "fsync_dir"]


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so a rename inside it survives a power loss (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = False) -> Path:
    """Write `data` (str as UTF-8) to `path` through a temp file beside it and an atomic rename; the parent
    folder is created. The temp name is unique per process and thread (concurrent writers never share one)
    and is removed if the write fails. durable: fsync the file before the rename and the folder after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return path
