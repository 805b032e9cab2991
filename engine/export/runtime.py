"""Run a face-swap model on batches of aligned faces, whatever form it is in.

    swapper = open_model("model.dfm")        # .dfm / .onnx: ONNX Runtime; a parts folder; a checkpoint
    celeb, celeb_mask, face_mask = swapper(faces)   # faces (N, R, R, 3) float32 BGR [0, 1], NHWC

Every swapper takes and returns NHWC float32 numpy arrays: celeb (N,R,R,3), celeb_mask (N,R,R,1),
face_mask (N,R,R,1).

- `OrtSwapper` reads an ONNX file. A DeepFaceLive-style model is recognised the way DeepFaceLive's
  DFMModel does (docs/dfl.md §9.2): the first input's name contains ``in_face``, H and W come from
  ``inputs[0].shape[1:3]``, exactly one input means a SAEHD (type 1) model, and the outputs are taken
  **by position** as (face_mask, celeb, celeb_mask). TorchSAE's own "onnx" format (input ``face``
  NCHW, outputs named celeb_face, celeb_mask, face_mask) is recognised by its input name. The CUDA
  execution provider is used when onnxruntime offers it, else the CPU.
- `PartsSwapper` chains a ``--parts`` export (engine.export.parts.PartsRunner).
- `TorchSwapper` runs a checkpoint or DFL model folder (engine.export.inference.load_for_inference)
  in torch, on CUDA when available.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from engine.errors import TorchSAEError, first_line
from engine.export.inference import load_for_inference
from engine.export.parts import MANIFEST, PartsRunner
from engine.export.verify import ort_session

log = logging.getLogger("torchsae.export")

__all__ = ["OrtSwapper", "PartsSwapper", "TorchSwapper", "open_model", "ort_providers"]


def ort_providers() -> list[str]:
    """["CUDAExecutionProvider", "CPUExecutionProvider"] when onnxruntime has CUDA, else the CPU only."""
    import onnxruntime as ort  # heavy: loaded only when a model runs in ONNX Runtime

    avail = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in avail else []) + ["CPUExecutionProvider"]


class OrtSwapper:
    """An exported model (.dfm or .onnx) in ONNX Runtime; see the module docstring for how it is read."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        self.path = Path(path)
        try:
            self.sess = ort_session(self.path, providers or ort_providers())
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise TorchSAEError(f"{self.path}: ONNX Runtime cannot load it: {first_line(e)}") from None
        inputs = self.sess.get_inputs()
        first = inputs[0]
        if "in_face" in first.name:  # DeepFaceLive's DFMModel rules (docs/dfl.md §9.2)
            if len(inputs) != 1:
                kind = "an AMP (type 2) model" if len(inputs) == 2 and "morph_value" in inputs[1].name else \
                    f"{len(inputs)} inputs"
                raise TorchSAEError(f"{self.path}: {kind}; torchsae swap runs SAEHD models (exactly one input "
                                    "named in_face)")
            h, w = first.shape[1:3]
            self.layout = "NHWC"
        elif first.name == "face" and len(inputs) == 1:
            h, w = first.shape[2:4]
            self.layout = "NCHW"
        else:
            raise TorchSAEError(f"{self.path}: input(s) {[i.name for i in inputs]}; expected a DFM (first input "
                                "named in_face...) or a TorchSAE ONNX export (one input named face)")
        if not (isinstance(h, int) and isinstance(w, int) and h == w):
            raise TorchSAEError(f"{self.path}: input height/width must be static and equal, got {h}x{w}")
        self.resolution = int(h)
        self.in_name = first.name
        names = [o.name for o in self.sess.get_outputs()]
        if self.layout == "NCHW":
            want = ["celeb_face", "celeb_mask", "face_mask"]
            if sorted(names) != sorted(want):
                raise TorchSAEError(f"{self.path}: outputs {names}; expected {want}")
            self._order = [names.index(n) for n in want]
        elif len(names) != 3:
            raise TorchSAEError(f"{self.path}: {len(names)} outputs; a DFM has 3 (face_mask, celeb, celeb_mask)")
        self.description = f"{self.path.name} (ONNX Runtime, {self.sess.get_providers()[0]}, {self.layout})"

    def __call__(self, faces: np.ndarray):
        x = np.ascontiguousarray(faces, dtype=np.float32)
        if self.layout == "NHWC":
            face_mask, celeb, celeb_mask = self.sess.run(None, {self.in_name: x})  # by position, as DFLive
            return celeb, celeb_mask, face_mask
        outs = self.sess.run(None, {self.in_name: np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
        celeb, celeb_mask, face_mask = (outs[i].transpose(0, 2, 3, 1) for i in self._order)
        return celeb, celeb_mask, face_mask


class PartsSwapper:
    """A ``--parts`` export folder, chained by PartsRunner."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None):
        self.runner = PartsRunner(folder, providers or ort_providers())
        self.resolution = self.runner.resolution
        self.description = f"{Path(folder).name} (parts, ONNX Runtime)"

    def __call__(self, faces: np.ndarray):
        outs = self.runner.swap(np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32))
        return tuple(o.transpose(0, 2, 3, 1) for o in outs)


class TorchSwapper:
    """A checkpoint or DFL model folder run in torch (CUDA when available)."""

    def __init__(self, path: str | Path, device: str | None = None):
        self.recipe, model = load_for_inference(path)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.resolution = int(model.resolution)
        self.description = f"{Path(path).name} (torch, {self.device})"

    def __call__(self, faces: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2), dtype=np.float32)).to(self.device)
        with torch.no_grad():
            outs = self.model.swap(x)
        return tuple(o.float().permute(0, 2, 3, 1).cpu().numpy() for o in outs)


def open_model(path: str | Path):
    """A swapper for `path`: .onnx/.dfm file -> OrtSwapper; folder with parts.json -> PartsSwapper;
    anything else (checkpoint file, DFL model folder) -> TorchSwapper."""
    path = Path(path)
    if not path.exists():
        raise TorchSAEError(f"{path}: no such model file or folder")
    if path.is_file() and path.suffix.lower() in (".onnx", ".dfm"):
        return OrtSwapper(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        return PartsSwapper(path)
    return TorchSwapper(path)
