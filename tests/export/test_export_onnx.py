"""ONNX export ("onnx" format): graph hygiene, ONNX Runtime vs torch, dynamic batch, loud failures,
the onnxsim -> onnxslim fallback."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
import torch

from engine.errors import TorchSAEError
from engine.export import TOLERANCES, export_model
from engine.export.verify import check_graph, ort_session


@pytest.fixture(scope="module")
def onnx_export(tiny_df, tmp_path_factory):
    _, model = tiny_df
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    rep = export_model(model, out, fmt="onnx", metadata={"recipe": "tiny_df"})
    return model, rep


def test_graph_interface(onnx_export):
    model, rep = onnx_export
    proto = onnx.load(str(rep.path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 17}
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "face" and isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim][1:] for o in proto.graph.output}
    assert list(outs) == ["celeb_face", "celeb_mask", "face_mask"]
    assert list(outs.values()) == [[3, 64, 64], [1, 64, 64], [1, 64, 64]]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["torchsae.format"] == "onnx" and meta["torchsae.layout"] == "NCHW"
    assert meta["torchsae.resolution"] == "64" and meta["torchsae.recipe"] == "tiny_df"
    assert rep.simplified_with == "onnxsim" and rep.unsimplified_path is None
    # simplification left no shape plumbing behind (the traced graph has Shape/Gather for the batch dim)
    assert not {"Shape", "Gather", "Unsqueeze"} & set(rep.op_types)


@pytest.mark.parametrize("batch", [1, 5])
def test_ort_matches_torch_any_batch(onnx_export, batch, torch_swap_nhwc):
    model, rep = onnx_export
    x = np.random.default_rng(7).uniform(0, 1, (batch, 64, 64, 3)).astype(np.float32)
    got = ort_session(rep.path).run(None, {"face": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})
    want = torch_swap_nhwc(model, x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.transpose(0, 2, 3, 1), w, **TOLERANCES["fp32"])
    # the three outputs are distinct tensors (a wiring mix-up between the masks would pass allclose on ~0.5)
    assert np.abs(got[1] - got[2]).max() > 1e-2


def test_report_lists_every_check(onnx_export):
    _, rep = onnx_export
    sets = {c[0] for c in rep.checks}
    assert {"random batch 1", "random batch 2", "random batch 3", "4 smooth random images"} <= sets
    assert any(s.startswith("simplified vs unsimplified") for s in sets)
    assert all(c[2] <= 1e-5 + 1e-3 for c in rep.checks)


class _TracesDifferently(torch.nn.Module):
    """Gives torch eager one answer and the tracer another: the exported graph is wrong by 1e-3."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.resolution = model.resolution

    def swap(self, x):
        celeb, celeb_mask, face_mask = self.model.swap(x)
        if torch.jit.is_tracing():
            celeb_mask = celeb_mask + 1e-3
        return celeb, celeb_mask, face_mask


def test_verification_failure_is_loud_and_writes_nothing(tiny_df, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(TorchSAEError, match=r"output 'celeb_mask' differs from torch: max abs error 0\.001"):
        export_model(_TracesDifferently(tiny_df[1]), out, fmt="onnx", simplify_graph=False)
    assert list(tmp_path.iterdir()) == []


def test_onnxsim_failure_falls_back_to_onnxslim(tiny_df, tmp_path, monkeypatch, caplog):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    with caplog.at_level(logging.WARNING, logger="torchsae.export"):
        rep = export_model(tiny_df[1], tmp_path / "m.onnx", fmt="onnx")
    assert "onnxsim failed (RuntimeError: simulated onnxsim crash); simplifying with onnxslim" in caplog.text
    assert rep.simplified_with == "onnxslim"
    assert rep.unsimplified_path == tmp_path / "m.unsimplified.onnx" and rep.unsimplified_path.is_file()
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, 64, 64)).astype(np.float32)
    a = ort_session(rep.path).run(None, {"face": x})
    b = ort_session(rep.unsimplified_path).run(None, {"face": x})
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, **TOLERANCES["fp32"])


def test_bad_requests_raise(tiny_df, tmp_path):
    model = tiny_df[1]
    with pytest.raises(TorchSAEError, match=r"--opset 17 with format dfm: DeepFaceLive's \.dfm contract is opset 12"):
        export_model(model, tmp_path / "x.dfm", fmt="dfm", opset=17)
    with pytest.raises(TorchSAEError, match=r"opset 9: .* writes opsets 11\.\.20"):
        export_model(model, tmp_path / "x.onnx", fmt="onnx", opset=9)
    with pytest.raises(TorchSAEError, match=r"export format 'tflite': valid formats are onnx, dfm"):
        export_model(model, tmp_path / "x.tfl", fmt="tflite")


def test_too_big_for_one_onnx_file(tiny_df, tmp_path, monkeypatch):
    from engine.export import onnx_export

    model = tiny_df[1]
    n = sum(p.numel() for p in model.parameters())
    monkeypatch.setattr(onnx_export, "MAX_BYTES", 4 * n - 1)  # pretend 2 GiB is just below this model's size
    with pytest.raises(TorchSAEError, match=r"x\.onnx: the model's weights take .* GiB; an ONNX file holds at most "
                                            r"2 GiB; try --fp16"):
        export_model(model, tmp_path / "x.onnx", fmt="onnx")
    model.train()
    with pytest.raises(TorchSAEError):
        export_model(model, tmp_path / "x.onnx", fmt="onnx")
    assert model.training  # the caller's mode is restored
    model.eval()


def test_check_graph_rejects_custom_domain_ops():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    node = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.microsoft")
    proto = helper.make_model(helper.make_graph([node], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(TorchSAEError, match=r"custom-domain ops \[FusedGelu \(domain 'com\.microsoft'\)\]"):
        check_graph(proto, opset=17, where="t")


def test_highest_supported_opset_exports(tiny_df, tmp_path):
    rep = export_model(tiny_df[1], tmp_path / "o20.onnx", fmt="onnx", opset=20, simplify_graph=False)
    assert {o.domain: o.version for o in onnx.load(str(rep.path)).opset_import} == {"": 20}


def test_tracing_forces_the_reference_kernels(tmp_path, caplog):
    """trace_onnx runs every kernel op on its reference whatever was requested (kernels.dispatch.force_reference):
    a module that asks DSSIM for the C kernel explicitly still exports to default-domain ONNX ops only."""
    import logging

    from engine.export.onnx_export import reference_kernels, trace_onnx
    from kernels import dispatch
    from kernels.dssim import saehd_dssim

    class Scored(torch.nn.Module):
        def forward(self, x):
            return saehd_dssim(x, x.flip(-1), 64, impl="cpu")  # (N,)

    dispatch._logged.clear()
    path = tmp_path / "dssim.onnx"
    with caplog.at_level(logging.INFO, logger="torchsae.kernels"):
        trace_onnx(Scored(), torch.rand(2, 3, 64, 64), path, input_name="x", output_names=("d",), opset=17)
    assert "dssim: reference (forced: export)" in caplog.text
    proto = onnx.load(str(path))
    check_graph(proto, opset=17, where="dssim.onnx")
    assert "Conv" in {n.op_type for n in proto.graph.node}  # the reference's depthwise window
    with reference_kernels():
        assert dispatch.forced() == "export"
    assert dispatch.forced() is None
