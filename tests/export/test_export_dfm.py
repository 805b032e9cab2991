"""DFM export against DeepFaceLive's contract (tests/golden/dfm/dfl_export_contract.json, recorded from a
.dfm DFL's own exporter wrote for a df-udtc res 96 model) and DeepFaceLive's loader (docs/dfl.md §9.2)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.errors import TorchSAEError
from engine.export import TOLERANCES, export_model
from engine.export.dfm import ALLOWED_OPS, DFL_OPS, check_dfm

CONTRACT = json.loads((Path(__file__).resolve().parents[1] / "golden" / "dfm" / "dfl_export_contract.json")
                      .read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def liae_dfm(tiny_liae, tmp_path_factory):
    _, model = tiny_liae
    return model, export_model(model, tmp_path_factory.mktemp("dfm") / "liae.dfm", fmt="dfm")


@pytest.fixture(scope="module")
def udtc_dfm(build_model, tmp_path_factory):
    """The contract's architecture (df-udtc, res 96) at tiny dims."""
    _, model = build_model("tiny_df", ("model.archi=df-udtc", "model.resolution=96", "model.ae_dims=16"))
    return model, export_model(model, tmp_path_factory.mktemp("dfm") / "udtc.dfm", fmt="dfm")


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_interface_matches_dfl_contract(udtc_dfm):
    """Names, order, element types, ranks, static R / symbolic batch, opset and IR version as DFL wrote them."""
    _, rep = udtc_dfm
    proto = onnx.load(str(rep.path))
    c = CONTRACT["onnx"]
    R = c["inputs"][0]["shape"][1]
    assert R == 96 and rep.resolution == R
    for got, want in [(proto.graph.input, c["inputs"]), (proto.graph.output, c["outputs"])]:
        assert [g.name for g in got] == [w["name"] for w in want]
        for g, w in zip(got, want):
            assert onnx.TensorProto.DataType.Name(g.type.tensor_type.elem_type) == w["elem_type"]
            dims = _dims(g)
            assert isinstance(dims[0], str) and isinstance(w["shape"][0], str)  # symbolic batch in both
            assert dims[1:] == w["shape"][1:]
    assert [o.name for o in proto.graph.output] == CONTRACT["output_semantics"]["order_of_outputs_in_graph"]
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == c["opset_import"]["ai.onnx"]
    assert proto.ir_version == c["ir_version"]


def test_op_counts_match_dfl_export(udtc_dfm):
    """Same layers as DFL's graph: counts of the ops that carry the architecture are equal; torch's
    equivalents stand in for DFL's (Gemm = MatMul + bias Add, Div = Reciprocal, conv bias inside Conv)."""
    _, rep = udtc_dfm
    ours = Counter(rep.op_types)
    dfl = Counter(CONTRACT["onnx"]["op_type_counts"])
    for op in ("Conv", "Cos", "Mul", "Sigmoid", "ReduceMean", "Sqrt", "Concat"):
        assert ours[op] == dfl[op], op
    assert ours["Gemm"] + ours["MatMul"] == dfl["MatMul"]
    assert ours["Div"] + ours["Reciprocal"] == dfl["Reciprocal"]
    # DFL adds every conv and dense bias with a separate Add; torch folds them into Conv/Gemm
    assert ours["Add"] == dfl["Add"] - dfl["Conv"] - dfl["MatMul"]
    assert set(ours) <= ALLOWED_OPS and set(dfl) <= DFL_OPS
    assert "DepthToSpace" not in ours and ours["Transpose"] > 4  # DCR depth-to-space as Reshape/Transpose


def test_deepfacelive_loader(liae_dfm, torch_swap_nhwc):
    """Load and run the file the way DeepFaceLive's DFMModel does (docs/dfl.md §9.2) and compare with torch."""
    model, rep = liae_dfm
    sess = ort.InferenceSession(str(rep.path), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    assert "in_face" in inputs[0].name
    h, w = inputs[0].shape[1:3]
    assert (h, w) == (64, 64)
    model_type = 1 if len(inputs) == 1 else 2 if "morph_value" in inputs[1].name else None
    assert model_type == 1
    # DeepFaceLive feeds one face at a time (uint8 / 255, NHWC BGR), unpacks by position
    faces = (np.random.default_rng(11).integers(0, 256, (3, h, w, 3)) / 255.0).astype(np.float32)
    for i in range(3):
        out_face_mask, out_celeb, out_celeb_mask = sess.run(None, {inputs[0].name: faces[i:i + 1]})
        celeb, celeb_mask, face_mask = torch_swap_nhwc(model, faces[i:i + 1])
        np.testing.assert_allclose(out_celeb, celeb, **TOLERANCES["fp32"])
        np.testing.assert_allclose(out_celeb_mask, celeb_mask, **TOLERANCES["fp32"])
        np.testing.assert_allclose(out_face_mask, face_mask, **TOLERANCES["fp32"])
        assert out_celeb.shape == (1, h, w, 3) and out_face_mask.shape == out_celeb_mask.shape == (1, h, w, 1)
    # batched run (the batch axis is dynamic) gives the same as one at a time
    batched = sess.run(None, {inputs[0].name: faces})
    np.testing.assert_allclose(batched[1][2:3], out_celeb, rtol=1e-5, atol=1e-6)


def test_check_dfm_rejects_other_layouts(tiny_df, tmp_path):
    """An "onnx"-format export (NCHW, other names, opset 17) is not a DFM, and says why."""
    rep = export_model(tiny_df[1], tmp_path / "x.onnx", fmt="onnx", simplify_graph=False)
    with pytest.raises(TorchSAEError) as ei:
        check_dfm(onnx.load(str(rep.path)), 64, where="x.onnx")
    msg = str(ei.value)
    assert "opset 17, expected 12" in msg and "expected exactly ['in_face:0']" in msg
    assert "['out_face_mask:0', 'out_celeb_face:0', 'out_celeb_face_mask:0'] in this order" in msg
    assert "Shape" in msg or "Gather" in msg  # the unsimplified graph's batch plumbing is outside the family
