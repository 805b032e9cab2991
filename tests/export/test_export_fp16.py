"""fp16 export (DFL's "Export quantized?", docs/dfl.md §9.1): conv weights/compute fp16, Dense fp32, fp32 I/O,
pixel norm in fp32; verified against the fp32 torch model at the stated looser tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from engine.export import TOLERANCES, export_model
from engine.export.verify import ort_session


@pytest.fixture(scope="module")
def fp16_dfm(tiny_df, tmp_path_factory):
    _, model = tiny_df
    return model, export_model(model, tmp_path_factory.mktemp("fp16") / "h.dfm", fmt="dfm", fp16=True)


def _pruned(name: str) -> bool:
    """decoder_dst's image branch: the inference graph only uses decoder_dst's mask (docs/dfl.md §2.4)."""
    return name.startswith("decoder_dst.") and not name.startswith(("decoder_dst.upscalem", "decoder_dst.out_convm"))


def test_precision_layout(fp16_dfm):
    model, rep = fp16_dfm
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(rep.path)))
    g = proto.graph
    assert [i.type.tensor_type.elem_type for i in g.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in g.output] == [TensorProto.FLOAT] * 3
    inits = {t.name: t for t in g.initializer}
    conv = [n for n in g.node if n.op_type == "Conv"]
    dense = [n for n in g.node if n.op_type in ("Gemm", "MatMul")]
    assert len(conv) == 28 and len(dense) == 2  # encoder 4, inter 1, decoder_src 18, decoder_dst mask branch 5
    # conv weights and biases are fp16 initializers, dense weights and biases fp32
    assert all(inits[i].data_type == TensorProto.FLOAT16 for n in conv for i in n.input[1:])
    assert all(inits[i].data_type == TensorProto.FLOAT for n in dense for i in n.input[1:])
    n_half = sum(numpy_helper.to_array(inits[i]).size for n in conv for i in n.input[1:])
    assert n_half == sum(p.numel() for name, p in model.named_parameters()
                         if not name.startswith("inter.dense") and not _pruned(name))
    # the -u pixel norm runs in fp32 (deliberate deviation: mean(x²) overflows fp16 above |x| = 256)
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    (rm,) = [n for n in g.node if n.op_type == "ReduceMean"]
    assert types[rm.input[0]] == TensorProto.FLOAT


def test_fp16_outputs_close_to_fp32_torch(fp16_dfm, torch_swap_nhwc):
    model, rep = fp16_dfm
    faces = np.random.default_rng(5).uniform(0, 1, (4, 64, 64, 3)).astype(np.float32)
    face_mask, celeb, celeb_mask = ort_session(rep.path).run(None, {"in_face:0": faces})
    want = torch_swap_nhwc(model, faces)
    errs = []
    for got, ref in zip((celeb, celeb_mask, face_mask), want):
        np.testing.assert_allclose(got, ref, **TOLERANCES["fp16"])
        errs.append(np.abs(got - ref).max())
    # it really computes in fp16: not bit-equal to fp32, and well above fp32's rounding noise
    assert max(errs) > 1e-5
