"""Checkpoints: atomic, multi-file, switched as one unit; keep-last-N; DFL-style rotating backups.

Layout of a run folder:

    <run>/checkpoints/step_00000500/model.pt        {"format", "step", "recipe_toml", "model"}   (inference)
                                   /train_state.pt  optimizers, scaler, RNG states, loader position, history
                                   /recipe.toml     the resolved recipe (human-readable copy)
    <run>/checkpoints/latest                        text: the name of the newest complete checkpoint
    <run>/backups/01..24/                           DFL's autobackup rotation (01 newest)

A save writes everything into `checkpoints/.tmp-<name>-<pid>/`, fsyncs each file and the folder, renames
the folder to its final name (atomic on POSIX), then atomically replaces `latest`. A crash at any point
leaves the previous checkpoint and `latest` intact; stale `.tmp-*` folders are ignored and cleaned.
`model.pt` alone is a complete inference checkpoint (what `import-dfl` writes and `export` reads).

Loading uses `torch.load(weights_only=True)`: checkpoints are data, never code.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from engine.errors import CheckpointError
from engine.fileio import fsync_dir, write_atomic

log = logging.getLogger("torchsae.train")

FORMAT = "torchsae-ckpt-1"
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.toml"
LATEST = "latest"


def run_dir_of(recipe) -> Path:
    """A recipe's run folder: ``[train].run_dir`` when set, else ``runs/<recipe name>`` (relative to the cwd)."""
    return Path(recipe.train.run_dir) if recipe.train.run_dir else Path("runs") / recipe.name


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_payload(model: torch.nn.Module, recipe_toml: str, step: int, extra: dict | None = None) -> dict:
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {"format": FORMAT, "step": int(step), "recipe_toml": recipe_toml, "model": sd}
    if extra:
        out.update(extra)
    return out


def save_model_file(path: str | Path, model: torch.nn.Module, recipe_toml: str, step: int = 0,
                    extra: dict | None = None) -> Path:
    """A single-file inference checkpoint (model + resolved recipe), written atomically. ``extra`` adds
    entries, e.g. ``dfl_optimizer`` (imported DFL optimizer state, read by `Trainer.load`)."""
    path = Path(path)
    write_atomic(path, _torch_bytes(model_payload(model, recipe_toml, step, extra)), durable=True)
    return path


def save(run_dir: str | Path, *, step: int, model: torch.nn.Module, recipe_toml: str,
         train_state: dict[str, Any], keep_last: int = 3, extra: dict | None = None,
         _crash_after: str | None = None) -> Path:
    """Write checkpoint `step_<step>` as one unit and point `latest` at it; prune to `keep_last`.

    `extra` adds entries to model.pt (e.g. "held_out": the faces kept out of training, engine.data.holdout).

    `_crash_after` is for tests: raise after the named phase ('files', 'rename') to simulate a crash.
    """
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _write_bytes(tmp / MODEL_FILE, _torch_bytes(model_payload(model, recipe_toml, step, extra)))
    _write_bytes(tmp / STATE_FILE, _torch_bytes({"format": FORMAT, "step": int(step), **train_state}))
    _write_bytes(tmp / RECIPE_FILE, recipe_toml.encode("utf-8"))
    fsync_dir(tmp)
    if _crash_after == "files":
        raise RuntimeError("simulated crash after writing files")
    final = ckdir / name
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after an autosave): replace as a unit
        old = ckdir / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(ckdir)
    if _crash_after == "rename":
        raise RuntimeError("simulated crash after the rename, before `latest` moved")
    write_atomic(ckdir / LATEST, name + "\n", durable=True)
    prune(ckdir, keep_last)
    return final


def complete_checkpoints(ckdir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (a folder only gets its final name once complete)."""
    if not ckdir.is_dir():
        return []
    out = [p for p in ckdir.iterdir() if p.is_dir() and p.name.startswith("step_") and (p / MODEL_FILE).is_file()]
    return sorted(out, key=lambda p: p.name)


def prune(ckdir: Path, keep_last: int) -> None:
    for stale in ckdir.glob(".tmp-*"):  # left by a crash mid-save
        if stale.is_dir() and not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)
    done = complete_checkpoints(ckdir)
    latest = resolve_latest(ckdir.parent, required=False)
    for p in done[:-keep_last] if keep_last > 0 else []:
        if latest is None or p.resolve() != latest.resolve():
            shutil.rmtree(p, ignore_errors=True)


def resolve_latest(run_dir: str | Path, required: bool = True) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one; None (or CheckpointError) if none."""
    ckdir = Path(run_dir) / "checkpoints"
    pointer = ckdir / LATEST
    if pointer.is_file():
        cand = ckdir / pointer.read_text().strip()
        if (cand / MODEL_FILE).is_file():
            return cand
        log.warning("checkpoint pointer %s names %s, which is missing; using the newest complete checkpoint",
                    pointer, cand.name)
    done = complete_checkpoints(ckdir)
    if done:
        return done[-1]
    if required:
        raise CheckpointError(f"no checkpoint found in {ckdir} (expected step_*/{MODEL_FILE}); "
                              "train first, or pass a checkpoint path")
    return None


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, a model.pt file, or a run folder (-> its latest checkpoint)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / MODEL_FILE).is_file():
        return p
    if (p / "checkpoints").is_dir():
        return resolve_latest(p)
    raise CheckpointError(f"{p}: not a checkpoint (expected a file, a step_* folder with {MODEL_FILE}, or a run "
                          "folder with checkpoints/)")


def _load(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except Exception as e:  # truncated, not a torch file, or holds objects outside the weights-only allow-list
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a TorchSAE checkpoint (format {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r}, "
                              f"expected {FORMAT!r})")
    return obj


def load_model_payload(path: str | Path) -> dict[str, Any]:
    """{"format", "step", "recipe_toml", "model"} from a checkpoint file/folder/run folder."""
    p = resolve(path)
    return _load(p if p.is_file() else p / MODEL_FILE)


def load_train_state(path: str | Path) -> dict[str, Any] | None:
    """The training state saved beside model.pt (None for an inference-only checkpoint file)."""
    p = resolve(path)
    if p.is_file():
        return None
    state = p / STATE_FILE
    return _load(state) if state.is_file() else None


def check_compatible(stored_toml: str, recipe, source: str) -> None:
    """Refuse a checkpoint whose architecture differs from the recipe's, naming every differing key."""
    from engine.recipe import loads, to_dict

    stored = loads(stored_toml, source=f"{source} (stored recipe)")
    a, b = to_dict(stored), to_dict(recipe)
    diffs = [f"model.{k}: checkpoint {a['model'].get(k)!r} != recipe {b['model'].get(k)!r}"
             for k in sorted(set(a["model"]) | set(b["model"])) if a["model"].get(k) != b["model"].get(k)]
    if a.get("graph") != b.get("graph"):
        diffs.append("graph: the explicit [graph] tables differ")
    if diffs:
        raise CheckpointError(f"{source} was written by an incompatible recipe:\n  " + "\n  ".join(diffs)
                              + "\n(start a new run folder, or use the recipe the checkpoint was trained with)")


def backup(run_dir: str | Path, ckpt: Path, slots: int = 24) -> Path:
    """DFL's autobackup: rotate backups/01..24 (24 dropped, n -> n+1) and copy `ckpt` into 01."""
    bdir = Path(run_dir) / "backups"
    bdir.mkdir(parents=True, exist_ok=True)
    last = bdir / f"{slots:02d}"
    if last.exists():
        shutil.rmtree(last)
    for i in range(slots - 1, 0, -1):
        src = bdir / f"{i:02d}"
        if src.exists():
            os.replace(src, bdir / f"{i + 1:02d}")
    tmp = bdir / f".tmp-01-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(ckpt, tmp)
    previews = Path(run_dir) / "logs" / "previews"
    if previews.is_dir():
        newest = sorted(previews.glob("step_*.png"))[-1:]
        for f in newest:
            shutil.copy2(f, tmp / f.name)
    os.replace(tmp, bdir / "01")
    return bdir / "01"


class Timer:
    """Wall-clock triggers for autosave (minutes) and backups (hours)."""

    def __init__(self, every_s: float):
        self.every_s = every_s
        self.last = time.monotonic()

    def due(self) -> bool:
        if self.every_s <= 0:
            return False
        if time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            return True
        return False
