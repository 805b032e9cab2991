"""Checkpoints: atomic, multi-file, verified, switched as one unit; keep-last-N; DFL-style rotating backups.

Layout of a run folder:

    <run>/checkpoints/step_00000500/model.pt        {"format", "step", "recipe_toml", "model"}   (inference)
                                   /train_state.pt  optimizers, scaler, RNG states, loader position, history,
                                                    pretrain phase
                                   /recipe.toml     the resolved recipe (human-readable copy)
                                   /manifest.json   size and sha256 of each file above
    <run>/checkpoints/pretrain_step_00000300/       the same, saved in pretrain mode (see below)
    <run>/checkpoints/latest                        text: the name of the newest complete checkpoint
    <run>/backups/01..24/                           DFL's autobackup rotation (01 newest)

A save writes everything into `checkpoints/.tmp-<name>-<pid>/`, fsyncs each file and the folder, renames
the folder to its final name (atomic on POSIX), then atomically replaces `latest`. A crash at any point
leaves the previous checkpoint and `latest` intact; what a crash leaves behind (`.tmp-*` folders, the
`.old-*` folder of a same-step re-save, `.latest.*.partial` files) is cleaned, or put back, by `recover`.
`model.pt` alone is a complete inference checkpoint (what `import-dfl` writes and `export` reads).

Verification: `manifest.json` records every file's size and sha256, so a truncated file or a bit flip in
tensor data is detected when the checkpoint is read; weights must be finite. Reading a run folder
(`load(run_dir)`) takes the newest checkpoint that passes, with a warning naming each one skipped; an
explicitly named checkpoint that fails is an error. A `step_*` folder without its train_state.pt is
incomplete: resuming from it would silently restart the optimizers, RNG and loader.

Pretrain phase: DFL restarts its iteration counter at 0 when pretraining ends (docs/dfl.md §11.6) and keeps one
model folder, so its normal-mode saves overwrite the pretrained weights. Here the pretrain phase's
checkpoints are named `pretrain_step_*`, so the restarted counter never collides with them; they sort
before every normal-mode checkpoint and are pruned separately (the pretrained model stays available).

Loading uses `torch.load(weights_only=True)`: checkpoints are data, never code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from engine.errors import CheckpointError, UnsafeFileError, first_line
from engine.fileio import fsync_dir, write_atomic
from engine.recipe import loads, to_dict
from engine.safe_pickle import describe_torch_load_error

log = logging.getLogger("torchsae.train")

FORMAT = "torchsae-ckpt-1"
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.toml"
MANIFEST_FILE = "manifest.json"
LATEST = "latest"
PREFIXES = ("pretrain_step_", "step_")  # pretrain phase first: it always precedes the normal phase

_NAME_RE = re.compile(r"^(pretrain_)?step_(\d+)$")
_LEFTOVER_DIR_RE = re.compile(r"^\.(tmp|old)-(.+)-(\d+)$")
_PARTIAL_RE = re.compile(r"^\..+\.(\d+)-\d+\.partial$")


class UnsafeCheckpointError(CheckpointError, UnsafeFileError):
    """A checkpoint asked the unpickler for something outside torch's weights-only allow-list."""


def run_dir_of(recipe) -> Path:
    """A recipe's run folder: ``[train].run_dir`` when set, else ``runs/<recipe name>`` (relative to the cwd)."""
    return Path(recipe.train.run_dir) if recipe.train.run_dir else Path("runs") / recipe.name


def checkpoint_name(step: int, *, pretrain: bool = False) -> str:
    return f"{'pretrain_' if pretrain else ''}step_{int(step):08d}"


def _order(p: Path) -> tuple[int, int]:
    m = _NAME_RE.match(p.name)
    return (0 if m.group(1) else 1, int(m.group(2))) if m else (-1, -1)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def non_finite(tensors: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) dict that hold a NaN or an infinity."""
    bad = []
    for k, v in tensors.items():
        if isinstance(v, dict):
            bad += non_finite(v, f"{prefix}{k}.")
        elif torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad.append(f"{prefix}{k}")
    return bad


def save(run_dir: str | Path, *, step: int, model: torch.nn.Module, recipe_toml: str,
         train_state: dict[str, Any], keep_last: int = 3, pretrain: bool = False,
         extra: dict | None = None) -> Path:
    """Write checkpoint `step_<step>` (`pretrain_step_<step>` in pretrain mode) as one unit and point
    `latest` at it; prune to `keep_last` per phase. Refuses non-finite weights (CheckpointError): a
    checkpoint is what a rollback or a resume returns to, so it must never hold a diverged model.

    `extra` adds entries to model.pt (e.g. "held_out": the faces kept out of training, engine.data.holdout)."""
    payload = model_payload(model, recipe_toml, step, extra)
    bad = non_finite(payload["model"])
    if bad:
        raise CheckpointError(f"refusing to save step {step}: non-finite weights in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}; the previous checkpoints are left as they are")
    ckdir = Path(run_dir) / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    recover(run_dir)
    name = checkpoint_name(step, pretrain=pretrain)
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = {MODEL_FILE: _torch_bytes(payload),
             STATE_FILE: _torch_bytes({"format": FORMAT, "step": int(step), **train_state}),
             RECIPE_FILE: recipe_toml.encode("utf-8")}
    manifest = {"format": FORMAT, "step": int(step), "pretrain": bool(pretrain),
                "files": {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()}}
    for n, b in files.items():
        _write_bytes(tmp / n, b)
    _write_bytes(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode("utf-8"))
    fsync_dir(tmp)
    final = ckdir / name
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after an autosave): replace as a unit
        # a crash between these renames leaves `.old-<name>-<pid>` and no `<name>`: `recover` renames it back
        old = ckdir / f".old-{name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(ckdir)
    write_atomic(ckdir / LATEST, name + "\n", durable=True)
    prune(ckdir, keep_last)
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def recover(run_dir: str | Path) -> list[str]:
    """Clean up after a crash mid-save (writers that are no longer running): remove `.tmp-*` folders and
    `.*.partial` files; put a same-step re-save's `.old-<name>-<pid>` folder back when `<name>` is missing
    (the crash came between its two renames, and the old folder is the complete checkpoint), else remove it.
    Returns what was done, one line each."""
    ckdir = Path(run_dir) / "checkpoints"
    done: list[str] = []
    if not ckdir.is_dir():
        return done
    for p in sorted(ckdir.iterdir()):
        m = _LEFTOVER_DIR_RE.match(p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(3))):
            kind, name = m.group(1), m.group(2)
            if kind == "old" and _NAME_RE.match(name) and not (ckdir / name).exists() and (p / MODEL_FILE).is_file():
                os.replace(p, ckdir / name)
                done.append(f"restored {name} from {p.name} (a crash interrupted its re-save)")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}")
            continue
        m = _PARTIAL_RE.match(p.name)
        if m and p.is_file() and not _pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            done.append(f"removed {p.name}")
    for line in done:
        log.info("checkpoints: %s", line)
    if done:
        fsync_dir(ckdir)
    return done


def complete_checkpoints(ckdir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first: the pretrain phase's, then the normal ones, each by step (a
    folder only gets its final name once complete)."""
    if not ckdir.is_dir():
        return []
    out = [p for p in ckdir.iterdir() if p.is_dir() and _NAME_RE.match(p.name) and (p / MODEL_FILE).is_file()]
    return sorted(out, key=_order)


def prune(ckdir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints of each phase (and always the one `latest` names)."""
    recover(ckdir.parent)
    done = complete_checkpoints(ckdir)
    latest = resolve_latest(ckdir.parent, required=False)
    for prefix in PREFIXES:
        phase = [p for p in done if p.name.startswith(prefix)]
        for p in phase[:-keep_last] if keep_last > 0 else []:
            if latest is None or p.resolve() != latest.resolve():
                shutil.rmtree(p, ignore_errors=True)


def resolve_latest(run_dir: str | Path, required: bool = True) -> Path | None:
    """The checkpoint `latest` names, else the newest complete one; None (or CheckpointError) if none.
    Existence only: `load` verifies and falls back."""
    cands = candidates(run_dir)
    if cands:
        return cands[0]
    if required:
        raise CheckpointError(f"no checkpoint found in {Path(run_dir) / 'checkpoints'} (expected step_*/{MODEL_FILE}); "
                              "train first, or pass a checkpoint path")
    return None


def candidates(run_dir: str | Path) -> list[Path]:
    """A run folder's checkpoints, newest first: the one `latest` names, then the others newest first."""
    ckdir = Path(run_dir) / "checkpoints"
    done = complete_checkpoints(ckdir)[::-1]
    pointer = ckdir / LATEST
    if pointer.is_file():
        try:
            cand = ckdir / pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            cand = None
        if cand is not None and cand in done:
            done.remove(cand)
            return [cand] + done
        log.warning("checkpoint pointer %s names %s, which is missing; using the newest complete checkpoint",
                    pointer, cand.name if cand is not None else "nothing readable")
    return done


def _is_pointer(p: Path) -> bool:
    return p.name == LATEST and p.parent.name == "checkpoints" and p.is_file()


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, a model.pt file, a run folder or its checkpoints/ folder or `checkpoints/latest`
    (-> the newest complete checkpoint; existence only, see `load`)."""
    p = Path(path)
    if _is_pointer(p):
        return resolve_latest(p.parent.parent)
    if p.is_file():
        return p
    if (p / MODEL_FILE).is_file():
        return p
    if (p / "checkpoints").is_dir():
        return resolve_latest(p)
    if p.name == "checkpoints" and p.is_dir():
        return resolve_latest(p.parent)
    raise CheckpointError(f"{p}: not a checkpoint (expected a file, a step_* folder with {MODEL_FILE}, or a run "
                          "folder with checkpoints/)")


def _run_folder_of(p: Path) -> Path | None:
    """The run folder when `p` names one (or its checkpoints/ folder or `latest` pointer): these fall back."""
    if _is_pointer(p):
        return p.parent.parent
    if p.is_dir() and not (p / MODEL_FILE).is_file():
        if (p / "checkpoints").is_dir():
            return p
        if p.name == "checkpoints":
            return p.parent
    return None


def _manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None  # written before manifests existed (or a hand-made folder): cannot be verified
    try:
        m = json.loads(path.read_text())
        files = m["files"]
        assert isinstance(files, dict)
    except Exception:
        raise CheckpointError(f"{path}: unreadable manifest; the checkpoint cannot be verified") from None
    return files


def _load(path: Path, expect: dict | None = None) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): its write never completed, or the copy was cut short")
    if expect is not None:
        if size != expect.get("size"):
            raise CheckpointError(f"{path}: {size} bytes, but {expect.get('size')} were saved ({MANIFEST_FILE}): "
                                  "the file was truncated or replaced")
        if _sha256_file(path) != expect.get("sha256"):
            raise CheckpointError(f"{path}: contents differ from what was saved (sha256 mismatch with "
                                  f"{MANIFEST_FILE}): the file was damaged on disk or modified")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        kind = describe_torch_load_error(e)
        if kind is not None and kind[0] == "refused":
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it asks for {kind[1]}, which is not tensor data or a plain container "
                "(TorchSAE checkpoints hold only these). Nothing was executed. If you did not create this file "
                "yourself, do not use it.") from None
        detail = kind[1] if kind is not None else first_line(e)
        raise CheckpointError(f"{path}: cannot read checkpoint: damaged, or not written by torch.save ({detail})") from None
    except Exception as e:  # truncated, not a torch file
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a TorchSAE checkpoint (format {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r}, "
                              f"expected {FORMAT!r})")
    return obj


@attrs.frozen
class Loaded:
    """What `load` read: the checkpoint (file or step folder), model.pt's payload, train_state.pt (None
    for a bare model file, or when not asked for)."""

    path: Path
    payload: dict
    state: dict | None


def _load_one(p: Path, train_state: bool) -> Loaded:
    if p.is_file():
        folder, model_path = p.parent, p
    else:
        folder, model_path = p, p / MODEL_FILE
    files = _manifest(folder) if model_path.name == MODEL_FILE else None
    payload = _load(model_path, files.get(MODEL_FILE) if files else None)
    if not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"{model_path}: holds no 'model' state dict")
    bad = non_finite(payload["model"])
    if bad:
        raise CheckpointError(f"{model_path}: non-finite weights (NaN or inf) in {', '.join(bad[:5])}"
                              f"{' ...' if len(bad) > 5 else ''}")
    state = None
    if train_state and not p.is_file():
        if not (folder / STATE_FILE).is_file():
            raise CheckpointError(f"{folder}: {STATE_FILE} is missing, so the optimizers, RNG and loader position "
                                  f"cannot be restored (pass {folder / MODEL_FILE} to continue from the weights "
                                  "alone with fresh optimizer state)")
        state = _load(folder / STATE_FILE, files.get(STATE_FILE) if files else None)
        bad = non_finite({k: v for k, v in state.items() if k in ("g_opt", "code_d", "gan_d", "code_d_opt",
                                                                     "gan_d_opt")})
        if bad:
            raise CheckpointError(f"{folder / STATE_FILE}: non-finite values in {', '.join(bad[:5])}")
    return Loaded(p, payload, state)


def load(path: str | Path, *, train_state: bool = True) -> Loaded:
    """Read and verify a checkpoint: a model.pt file, a step_* folder, or a run folder (its checkpoints/
    folder or `checkpoints/latest` too). Verified means: every file matches the manifest's size and sha256,
    loads weights-only, and the weights (and optimizer moments) are finite. train_state: also read
    train_state.pt, which a step_* folder must then have (a bare model file has none: state None).

    A run folder gives its newest checkpoint that verifies; each one skipped is named in a warning. An
    explicit file or folder that fails raises CheckpointError (UnsafeCheckpointError for a refused pickle,
    which is never skipped over)."""
    p = Path(path)
    run = _run_folder_of(p)
    if run is None:
        return _load_one(resolve(p), train_state)
    cands = candidates(run)
    if not cands:
        resolve_latest(run)  # raises "no checkpoint found"
    problems = []
    for c in cands:
        try:
            loaded = _load_one(c, train_state)
        except UnsafeFileError:
            raise
        except CheckpointError as e:
            problems.append(str(e))
            log.warning("checkpoint %s is unusable (%s); trying the previous one", c.name, e)
            continue
        if problems:
            log.warning("using checkpoint %s: %d newer checkpoint(s) in %s could not be used", c.name,
                        len(problems), run / "checkpoints")
        return loaded
    raise CheckpointError(f"{run / 'checkpoints'}: no usable checkpoint:\n  " + "\n  ".join(problems))


def load_model_payload(path: str | Path) -> dict[str, Any]:
    """{"format", "step", "recipe_toml", "model"} from a checkpoint file/folder/run folder (verified, see `load`)."""
    return load(path, train_state=False).payload


def load_train_state(path: str | Path) -> dict[str, Any] | None:
    """The training state saved beside model.pt (None for an inference-only checkpoint file)."""
    return load(path, train_state=True).state


def check_compatible(stored_toml: str, recipe, source: str) -> None:
    """Refuse a checkpoint whose architecture differs from the recipe's, naming every differing key."""
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
