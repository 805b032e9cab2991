"""Every kind of model `torchsae eval` scores, behind one small interface.

    m = open_eval_model(ref)           # a ModelRef from expand_inputs(paths)
    celeb = m.swap(dst_faces)          # (N, R, R, 3) float32 BGR [0, 1] -> the swap (A_to_B)
    recon = m.reconstruct(faces, "src")  # the identity's own path, or None (then m.no_recon[identity] says why)

Inputs (`expand_inputs`):
- a recipe `.toml`: its run folder (below), or its newest checkpoint file when the run has no step folders;
- a TorchSAE checkpoint: `model.pt`, a `step_*` folder, any `.pt` file (e.g. `torchsae import-dfl --out`);
  a run folder stands for **every** complete checkpoint in it, oldest first, so one command scores a run
  over its training steps. Run in torch (CUDA when available) in float32 whatever the training autocast
  (the weights are measured, not the dtype). The checkpoint's held-out record (engine.data.holdout) and
  step come along.
- a DFL model folder (`*_SAEHD_*.npy` / `data.dat`): imported with engine.dfl through
  engine.export.inference.load_for_inference, then as a checkpoint.
- an exported `.onnx` / `.dfm` (engine.export.runtime.OrtSwapper, ONNX Runtime): the swap only. Its
  `reconstruct("src")` is the swap applied to src faces — the src decoder on the face's own code, which
  is exactly SAEHD's src reconstruction for DFL's DF and LIAE presets; dst reconstruction is not in the
  DFM contract and is reported as unavailable. The face type is read from the file's metadata (TorchSAE
  exports write it); a third-party DFM needs `--face-type`.
- a `--parts` export folder (engine.export.parts.PartsRunner): swap and both reconstructions.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from engine.errors import CheckpointError, TorchSAEError
from engine import recipe as recipe_mod
from engine.export.inference import latest_checkpoint, load_for_inference
from engine.export.parts import MANIFEST, PartsRunner
from engine.export.runtime import OrtSwapper, ort_providers
from engine.train import checkpoint as ck

__all__ = ["ModelRef", "EvalModel", "TorchEvalModel", "OrtEvalModel", "PartsEvalModel", "expand_inputs",
           "open_eval_model"]

log = logging.getLogger("torchsae.eval")

BATCH = 16


@attrs.frozen(kw_only=True)
class ModelRef:
    """One model to evaluate: `path`, `kind` ("checkpoint", "dfl", "onnx", "dfm", "parts"), and, for
    checkpoints found in a run folder, `run` (that folder)."""

    path: Path
    kind: str
    run: Path | None = None


class EvalModel(abc.ABC):
    """What the evaluator needs of a model. label: shown in reports; step: training step or None; run: run
    folder (groups checkpoints of one training run); held_out: engine.data.holdout record or None; recipe:
    the resolved Recipe when known (torch models); no_recon: identity -> reason reconstruction is missing."""

    label: str
    kind: str
    path: Path
    resolution: int
    face_type: str | None
    step: int | None = None
    run: Path | None = None
    held_out: dict | None = None
    recipe: Any = None
    no_recon: dict[str, str]

    @abc.abstractmethod
    def swap(self, faces: np.ndarray) -> np.ndarray:
        """dst faces (N, R, R, 3) float BGR [0, 1] -> the swapped faces, same shape."""

    @abc.abstractmethod
    def reconstruct(self, faces: np.ndarray, identity: str) -> np.ndarray | None:
        """Faces of `identity` ("src"/"dst") through that identity's own path; None when the model has none
        (`no_recon[identity]` says why)."""

    def info(self) -> dict[str, Any]:
        return {"model": str(self.path), "label": self.label, "kind": self.kind, "step": self.step,
                "run": str(self.run) if self.run else None, "resolution": self.resolution, "face_type": self.face_type,
                "recipe": getattr(self.recipe, "name", None)}


def _batched(fn, faces: np.ndarray) -> np.ndarray:
    outs = [fn(faces[i:i + BATCH]) for i in range(0, len(faces), BATCH)]
    return np.concatenate(outs) if outs else np.zeros_like(faces)


class TorchEvalModel(EvalModel):
    """A SwapModel in torch (from a checkpoint, a DFL folder, or the live model of a training run)."""

    def __init__(self, model: torch.nn.Module, recipe, *, path: str | Path = "", kind: str = "checkpoint",
                 label: str | None = None, step: int | None = None, run: Path | None = None,
                 held_out: dict | None = None, device: torch.device | str | None = None):
        self.model, self.recipe = model, recipe
        self.path, self.kind = Path(path), kind
        self.label = label or (f"{Path(path).name}" if path else recipe.name)
        self.step, self.run, self.held_out = step, run, held_out
        self.resolution = int(model.resolution)
        self.face_type = recipe.model.face_type
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.no_recon = {}

    def _run(self, fn, faces: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            def one(x: np.ndarray) -> np.ndarray:
                t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(self.device, torch.float32)
                with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                    y = fn(t)
                return y.float().permute(0, 2, 3, 1).cpu().numpy()

            return _batched(one, faces)
        finally:
            self.model.train(was_training)

    def swap(self, faces: np.ndarray) -> np.ndarray:
        return self._run(lambda t: self.model.swap(t)[0], faces)

    def reconstruct(self, faces: np.ndarray, identity: str) -> np.ndarray | None:
        return self._run(lambda t: self.model.reconstruct(t, identity)[0], faces)


def _ort_face_type(sess) -> str | None:
    try:
        meta = sess.get_modelmeta().custom_metadata_map
    except Exception:  # noqa: BLE001 - onnxruntime raises its own types; missing metadata is not an error
        return None
    return meta.get("torchsae.face_type") or meta.get("face_type") or None  # engine.export writes torchsae.*


class OrtEvalModel(EvalModel):
    """An exported .onnx / .dfm in ONNX Runtime (swap only; see the module docstring)."""

    def __init__(self, path: Path, *, face_type: str | None = None):
        self.swapper = OrtSwapper(path)
        self.path, self.kind = Path(path), path.suffix.lower().lstrip(".")
        self.label = self.path.name
        self.resolution = int(self.swapper.resolution)
        stored = _ort_face_type(self.swapper.sess)
        if face_type and stored and face_type != stored:
            log.warning("%s: --face-type %s overrides the face type %s stored in the file", path, face_type, stored)
        self.face_type = face_type or stored
        self.no_recon = {"dst": "an exported model renders only the src identity (DFM contract)"}

    def swap(self, faces: np.ndarray) -> np.ndarray:
        return _batched(lambda x: self.swapper(x)[0], faces)

    def reconstruct(self, faces: np.ndarray, identity: str) -> np.ndarray | None:
        if identity != "src":
            return None
        return self.swap(faces)  # the src decoder on the face's own code = SAEHD's src reconstruction


class PartsEvalModel(EvalModel):
    """A `--parts` export folder chained by PartsRunner (swap and both reconstructions)."""

    def __init__(self, path: Path, *, face_type: str | None = None):
        self.runner = PartsRunner(path, ort_providers())
        self.path, self.kind, self.label = Path(path), "parts", Path(path).name
        self.resolution = int(self.runner.resolution)
        self.face_type = face_type or self.runner.manifest.get("metadata", {}).get("face_type") or None
        self.no_recon = {}

    @staticmethod
    def _nchw(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)

    def swap(self, faces: np.ndarray) -> np.ndarray:
        return _batched(lambda x: self.runner.swap(self._nchw(x))[0].transpose(0, 2, 3, 1), faces)

    def reconstruct(self, faces: np.ndarray, identity: str) -> np.ndarray | None:
        return _batched(lambda x: self.runner.translate(self._nchw(x), identity, identity)[0].transpose(0, 2, 3, 1),
                        faces)


def _is_dfl_folder(p: Path) -> bool:
    return p.is_dir() and (any(p.glob("*encoder.npy")) or any(p.glob("*_SAEHD_data.dat")))


def expand_inputs(paths: list[str | Path], overrides: tuple[str, ...] = ()) -> list[ModelRef]:
    """ModelRefs for the command line's inputs (module docstring); a run folder gives all its checkpoints;
    `overrides` (table.key=value) apply to recipe inputs (e.g. train.run_dir). CheckpointError naming the path
    when one is none of the known kinds."""
    out: list[ModelRef] = []
    for raw in paths:
        p = Path(raw)
        if p.suffix == ".toml" and p.is_file():  # a recipe: every checkpoint of its run (else its newest .pt)
            r = recipe_mod.load(p, list(overrides))
            run = ck.run_dir_of(r)
            if ck.complete_checkpoints(run / "checkpoints"):
                p = run
            else:
                out.append(ModelRef(path=latest_checkpoint(r), kind="checkpoint"))
                continue
        if not p.exists():
            raise CheckpointError(f"{p}: no such file or folder (expected a checkpoint, run folder, .onnx/.dfm, "
                                  "--parts folder or DFL model folder)")
        if p.is_file() and p.suffix.lower() in (".onnx", ".dfm"):
            out.append(ModelRef(path=p, kind=p.suffix.lower().lstrip(".")))
        elif p.is_dir() and (p / MANIFEST).is_file():
            out.append(ModelRef(path=p, kind="parts"))
        elif p.is_dir() and (p / "checkpoints").is_dir():
            found = ck.complete_checkpoints(p / "checkpoints")
            if not found:
                raise CheckpointError(f"{p}: run folder without a complete checkpoint (checkpoints/step_*/model.pt)")
            out.extend(ModelRef(path=c, kind="checkpoint", run=p) for c in found)
        elif _is_dfl_folder(p):
            out.append(ModelRef(path=p, kind="dfl"))
        elif p.is_file() or (p / ck.MODEL_FILE).is_file():
            step_dir = p if p.is_dir() else p.parent  # <run>/checkpoints/step_*/[model.pt]: belongs to <run>
            run = step_dir.parent.parent if step_dir.parent.name == "checkpoints" else None
            out.append(ModelRef(path=p, kind="checkpoint", run=run))
        else:
            raise CheckpointError(f"{p}: not a model (expected a checkpoint .pt, a step_* or run folder, an .onnx/.dfm "
                                  "file, a --parts folder or a DFL model folder)")
    return out


def open_eval_model(ref: ModelRef, *, face_type: str | None = None, device: str | None = None) -> EvalModel:
    """Load one ModelRef (TorchSAEError subclasses name the file when it cannot be used)."""
    if ref.kind in ("onnx", "dfm"):
        return OrtEvalModel(ref.path, face_type=face_type)
    if ref.kind == "parts":
        return PartsEvalModel(ref.path, face_type=face_type)
    recipe, model = load_for_inference(ref.path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    step, held = None, None
    if ref.kind == "checkpoint":
        payload = ck.load_model_payload(ref.path)
        step, held = int(payload.get("step", 0)), payload.get("held_out")
    label = ref.path.parent.name if ref.path.name == ck.MODEL_FILE else ref.path.name  # step_* for model.pt
    if ref.run is not None:
        label = f"{ref.run.name}/{label}"
    m = TorchEvalModel(model.to(dev), recipe, path=ref.path, kind=ref.kind, label=label, step=step, run=ref.run,
                       held_out=held, device=dev)
    if face_type and face_type != recipe.model.face_type:
        raise TorchSAEError(f"{ref.path}: --face-type {face_type} contradicts the model's face type "
                            f"{recipe.model.face_type} (stored in its recipe); drop --face-type")
    return m
