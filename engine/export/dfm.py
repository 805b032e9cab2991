"""DeepFaceLive's .dfm contract (docs/dfl.md §9.1, §9.2), as recorded from a .dfm DFL's own exporter wrote
(tests/golden/dfm/dfl_export_contract.json).

A .dfm is a plain ONNX protobuf with:
- opset 12 (default domain), IR version 7;
- exactly one input ``in_face:0``, float32 ``[N, R, R, 3]`` NHWC BGR in [0, 1], symbolic N, static R;
- outputs in this order (DeepFaceLive unpacks them **by position**): ``out_face_mask:0`` [N,R,R,1],
  ``out_celeb_face:0`` [N,R,R,3], ``out_celeb_face_mask:0`` [N,R,R,1], float32 NHWC.

Op family. DFL's file uses Conv, LeakyRelu (or Cos+Mul for -c), Reshape+Transpose for the DCR
depth-to-space, MatMul+Add for Dense, Concat, Sigmoid and ReduceMean/Sqrt/Reciprocal for the -u pixel
norm. torch's exporter writes the same math with a few equivalent ops: Gemm (= MatMul + Add), Flatten
(= Reshape), Div (= Reciprocal + Mul), Constant, and Cast in the fp16 export (DFL's quantized export
casts too). Every one of them is a core opset-12 op that any ONNX Runtime DeepFaceLive ships can run;
anything outside this list fails the export.
"""

from __future__ import annotations

from collections import Counter

from engine.errors import TorchSAEError
from engine.export.graphs import DFM_INPUT, DFM_OUTPUTS

__all__ = ["DFM_OPSET", "DFM_IR_VERSION", "DFL_OPS", "EQUIVALENT_OPS", "ALLOWED_OPS", "check_dfm"]

DFM_OPSET = 12
DFM_IR_VERSION = 7
# op types in the .dfm DFL's exporter wrote for df-udtc (golden contract) plus LeakyRelu (docs/dfl.md §9.1: the
# op set without -c)
DFL_OPS = frozenset({"Transpose", "Conv", "Add", "Cos", "Mul", "Reshape", "ReduceMean", "Sqrt", "Reciprocal",
                     "MatMul", "Concat", "Sigmoid", "LeakyRelu"})
# what torch writes for the same math (see module docstring)
EQUIVALENT_OPS = frozenset({"Gemm", "Flatten", "Div", "Constant", "Cast"})
ALLOWED_OPS = DFL_OPS | EQUIVALENT_OPS


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def check_dfm(proto, resolution: int, *, where: str = "dfm") -> None:
    """Raise TorchSAEError listing every way `proto` departs from the DFM contract; see module docstring."""
    import onnx  # heavy (protobuf): loaded only when a .dfm is checked

    problems = []
    opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if opset != DFM_OPSET:
        problems.append(f"opset {opset}, expected {DFM_OPSET}")
    if proto.ir_version > DFM_IR_VERSION:
        problems.append(f"IR version {proto.ir_version}, expected <= {DFM_IR_VERSION}")
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    if [i.name for i in inputs] != [DFM_INPUT]:
        problems.append(f"inputs {[i.name for i in inputs]}, expected exactly ['{DFM_INPUT}']")
    else:
        dims = _dims(inputs[0])
        et = inputs[0].type.tensor_type.elem_type
        if et != onnx.TensorProto.FLOAT:
            problems.append(f"input {DFM_INPUT} has element type {onnx.TensorProto.DataType.Name(et)}, expected FLOAT")
        if len(dims) != 4 or dims[1:] != [resolution, resolution, 3] or not isinstance(dims[0], str):
            problems.append(f"input {DFM_INPUT} has shape {dims}, expected [N (symbolic), {resolution}, {resolution}, 3]")
    outs = list(proto.graph.output)
    if [o.name for o in outs] != list(DFM_OUTPUTS):
        problems.append(f"outputs {[o.name for o in outs]}, expected {list(DFM_OUTPUTS)} in this order")
    else:
        for o, ch in zip(outs, (1, 3, 1)):
            dims = _dims(o)
            if o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                problems.append(f"output {o.name} is not float32")
            if len(dims) != 4 or dims[1:] != [resolution, resolution, ch]:
                problems.append(f"output {o.name} has shape {dims}, expected [N, {resolution}, {resolution}, {ch}]")
    ops = Counter(n.op_type for n in proto.graph.node)
    alien = sorted(set(ops) - ALLOWED_OPS)
    if alien:
        problems.append(f"op types outside DFL's family {alien} (allowed: {', '.join(sorted(ALLOWED_OPS))})")
    if problems:
        raise TorchSAEError(f"{where}: not a valid DeepFaceLive .dfm: " + "; ".join(problems))
