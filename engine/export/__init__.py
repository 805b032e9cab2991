"""Export and inference: ONNX / DeepFaceLive DFM (docs/dfl.md §9), per-part ONNX, `torchsae swap`.

    from engine.export import export_model, export_parts, load_for_inference, open_model
    recipe, model = load_for_inference("runs/x/checkpoints/step_000500.pt")
    export_model(model, "x.dfm", fmt="dfm")              # verified with ONNX Runtime before it is written
    celeb, celeb_mask, face_mask = open_model("x.dfm")(faces_nhwc)

Modules: graphs (the traced wrappers, fp16 policy), onnx_export (trace, check, simplify, verify, write),
dfm (DeepFaceLive's contract), parts (per-part export + PartsRunner), verify (tolerances, graph checks),
runtime (swappers for files, parts and checkpoints), inference (where models come from: checkpoints, DFL
folders, a recipe's newest checkpoint), faces (image I/O), cli_export / cli_swap (the commands).
"""

from engine.export.inference import (default_export_path, latest_checkpoint, load_for_inference, model_source,
                                    run_dir_of)
from engine.export.onnx_export import DFM_OPSET, ExportReport, export_model
from engine.export.parts import PartsReport, PartsRunner, export_parts
from engine.export.runtime import OrtSwapper, PartsSwapper, TorchSwapper, open_model
from engine.export.verify import TOLERANCES

__all__ = [
    "load_for_inference", "model_source", "latest_checkpoint", "run_dir_of", "default_export_path",
    "export_model", "ExportReport", "DFM_OPSET", "export_parts", "PartsReport", "PartsRunner",
    "open_model", "OrtSwapper", "PartsSwapper", "TorchSwapper", "TOLERANCES",
]
