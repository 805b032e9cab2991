"""Post-training int8 quantization of an exported ONNX model, for CPU inference (ONNX Runtime).

    q = quantize_int8(fp32_model_proto, calibration_faces, input_name="face", layout="NCHW")

Static QDQ quantization with onnxruntime.quantization: per-channel symmetric int8 weights (QInt8),
per-tensor uint8 activations (QUInt8) whose ranges are calibrated (MinMax) on faces run through the
model: the verification faces of the export (the recipe's dst faceset or --verify-faces, else smooth
random images), so the ranges are those of real inputs. On CPUs with VNNI / AMX-INT8 ONNX Runtime runs
the quantized convolutions in int8 (the speed-up is tracked by bench suite "export", bench/README.md), for
outputs within ~1/255 of fp32 on random weights (the export states and checks its tolerance,
`verify.TOLERANCES["int8"]`).

Per-channel weights need DequantizeLinear's `axis` (opset 13), so this applies to format "onnx" (opset
≥ 13), not to DeepFaceLive's opset-12 DFM. On GPUs use the fp32 or fp16 export: ORT's CUDA provider runs
QDQ graphs without int8 kernels for every op.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from engine.errors import TorchSAEError

log = logging.getLogger("torchsae.export")

__all__ = ["quantize_int8", "MIN_INT8_OPSET"]

MIN_INT8_OPSET = 13


def quantize_int8(model, faces: np.ndarray, *, input_name: str, where: str):
    """The int8 QDQ version of `model` (an fp32 onnx.ModelProto), activation ranges from `faces`
    (N, ...) float32 in the model's input layout, one face per calibration run. Returns a ModelProto."""
    import onnx  # heavy: onnx and onnxruntime's quantizer load only for --int8
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_INT8_OPSET:
        raise TorchSAEError(f"{where}: int8 export needs opset >= {MIN_INT8_OPSET} (per-channel weights); the graph "
                            f"is opset {opset} (DeepFaceLive's DFM is opset 12: use --format onnx for int8)")
    if len(faces) == 0:
        raise TorchSAEError(f"{where}: int8 export needs calibration faces")

    class _Faces(CalibrationDataReader):
        def __init__(self):
            self._it = iter(faces)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: np.ascontiguousarray(x[None], dtype=np.float32)}

    with tempfile.TemporaryDirectory(prefix=".quantize-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, str(src))
        # shape inference first, as onnxruntime.quantization recommends; not ORT's graph optimisation, which
        # would bake ORT-only fused ops (com.microsoft) into a file meant for any ONNX runtime
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        q = onnx.load(str(out))
    # the quantizer declares every domain it knows; keep those the nodes use
    used = {n.domain or "" for n in q.graph.node}
    keep = [o for o in q.opset_import if (o.domain or "") in used | {"", "ai.onnx"}]
    del q.opset_import[:]
    q.opset_import.extend(keep)
    n_q = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    log.info("%s: int8 QDQ graph (%d QuantizeLinear nodes), calibrated on %d faces", where, n_q, len(faces))
    return q
