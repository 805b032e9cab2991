"""DFL SAEHD model files on disk (docs/dfl.md §8): names, part files, data.dat. Reads are restricted unpickles.

    <models_dir>/<name>_SAEHD_data.dat       pickle: {'iter', 'options', 'loss_history', 'sample_for_preview', ...}
    <models_dir>/<name>_SAEHD_<part>.npy     pickle protocol 4 (NOT numpy .npy): {'<path>/weight:0': ndarray, ...}

A folder of bare ``<part>.npy`` files (no name prefix, as DFL's ``part.save_weights(filename)`` writes
when given a plain path) is also accepted: ``name=None``. Writes go to ``<file>.tmp`` first and are
renamed, like DFL's own saves.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import CheckpointError
from engine.fileio import write_atomic
from engine.safe_pickle import safe_load_file

__all__ = ["MODEL_CLASS", "part_path", "data_path", "find_model_names", "read_part_file", "write_part_file",
           "read_optimizer_file", "read_data_file", "write_data_file"]

MODEL_CLASS = "SAEHD"


def part_path(folder: str | Path, part: str, name: str | None) -> Path:
    """``<folder>/<name>_SAEHD_<part>.npy`` (or ``<folder>/<part>.npy`` when name is None)."""
    return Path(folder) / (f"{name}_{MODEL_CLASS}_{part}.npy" if name else f"{part}.npy")


def data_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{name}_{MODEL_CLASS}_data.dat"


def find_model_names(folder: str | Path) -> list[str]:
    """Names of the SAEHD models in a folder (from ``*_SAEHD_data.dat``, else from ``*_SAEHD_<part>.npy``)."""
    folder = Path(folder)
    suffix = f"_{MODEL_CLASS}_data.dat"
    names = sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))
    if names:
        return names
    tag = f"_{MODEL_CLASS}_"
    return sorted({p.name.split(tag)[0] for p in folder.glob(f"*{tag}*.npy")})


def read_part_file(path: str | Path) -> dict[str, np.ndarray]:
    """A DFL weight file -> {key: array} (restricted unpickle; CheckpointError if not that shape of data)."""
    path = Path(path)
    d = safe_load_file(path, corrupt_error=CheckpointError)
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in d.items()):
        raise CheckpointError(f"{path}: not a DFL weight file (expected a pickled dict of name -> array, got "
                              f"{type(d).__name__})")
    return d


def read_optimizer_file(path: str | Path) -> dict[str, np.ndarray]:
    """A DFL optimizer file (``src_dst_opt.npy`` ...; docs/dfl.md §8.2) -> {key: array}, restricted unpickle.

    Like a weight file, except that ``'iters:0'`` is the value TF returned for a scalar variable: a numpy
    int64 scalar rather than an array (made a 0-d array here)."""
    path = Path(path)
    d = safe_load_file(path, corrupt_error=CheckpointError)
    if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, (np.ndarray, np.generic))
                                          for k, v in d.items()):
        raise CheckpointError(f"{path}: not a DFL optimizer file (expected a pickled dict of name -> array, got "
                              f"{type(d).__name__})")
    return {k: np.asarray(v) for k, v in d.items()}


def write_part_file(path: str | Path, weights: dict[str, np.ndarray]) -> Path:
    """Write {key: float32 array} as DFL does: ``pickle.dumps(dict, protocol=4)``, atomically."""
    path = Path(path)
    write_atomic(path, pickle.dumps({k: np.asarray(v) for k, v in weights.items()}, protocol=4), durable=True)
    return path


def read_data_file(path: str | Path) -> dict[str, Any]:
    """``<name>_SAEHD_data.dat`` -> dict (restricted unpickle; the preview batch is numpy data)."""
    path = Path(path)
    d = safe_load_file(path, corrupt_error=CheckpointError)
    if not isinstance(d, dict) or not isinstance(d.get("options"), dict):
        raise CheckpointError(f"{path}: not a DFL model data file (expected a dict with an 'options' dict)")
    return d


def write_data_file(path: str | Path, options: dict[str, Any], iter: int = 0,
                    loss_history: list | None = None) -> Path:
    """A ``data.dat`` DFL can open: options, iter, the loss history (``[src_loss, dst_loss]`` per
    iteration; empty by default), no preview sample (DFL then draws a new one)."""
    path = Path(path)
    data = {"iter": int(iter), "options": dict(options),
            "loss_history": [[float(a), float(b)] for a, b in (loss_history or [])], "sample_for_preview": None,
            "choosed_gpu_indexes": None}
    write_atomic(path, pickle.dumps(data), durable=True)
    return path
