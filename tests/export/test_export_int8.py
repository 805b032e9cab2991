"""int8 export (engine.export.quantize): a static QDQ graph for CPU inference, calibrated on faces and
checked against fp32 torch by its error distribution on faces it was not calibrated on."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.errors import TorchSAEError
from engine.export import export_model
from engine.export.faces import smooth_faces
from engine.export.verify import INT8_TOLERANCE, ort_session


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    """40 smooth face-like images as files: 4 to check, up to 32 to calibrate on."""
    import cv2

    d = tmp_path_factory.mktemp("int8faces")
    for i, img in enumerate(smooth_faces(40, 64, seed=3)):
        cv2.imwrite(str(d / f"{i:03d}.png"), (img * 255).round().astype(np.uint8))
    return d


@pytest.fixture(scope="module")
def int8_onnx(tiny_df, faces_dir, tmp_path_factory):
    _, model = tiny_df
    return model, export_model(model, tmp_path_factory.mktemp("int8") / "q.onnx", fmt="onnx", int8=True,
                               verify_faces=faces_dir)


def test_graph_is_qdq_int8_in_the_default_domain(int8_onnx):
    model, rep = int8_onnx
    proto = onnx.load(str(rep.path))
    ops = [n.op_type for n in proto.graph.node]
    convs = ops.count("Conv")
    assert convs > 0 and ops.count("QuantizeLinear") >= convs and ops.count("DequantizeLinear") > convs
    # weights are stored as int8 (per-channel scales), not float
    ints = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(ints) >= convs
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["torchsae.int8"] == "True" and rep.int8 and not rep.fp16
    # the report says what was checked: faces not used for calibration, by mean and 99th percentile
    int8_checks = [c for c in rep.checks if c[0].startswith("int8")]
    assert len(int8_checks) == 3 and "calibrated on the other 32" in int8_checks[0][0]
    assert all(c[3] == INT8_TOLERANCE["mean"] and c[4] == INT8_TOLERANCE["p99"] for c in int8_checks)


def test_int8_outputs_close_to_fp32_torch_on_faces(int8_onnx, torch_swap_nhwc):
    model, rep = int8_onnx
    faces = smooth_faces(6, 64, seed=11)  # unseen
    sess = ort_session(rep.path)
    got = sess.run(None, {"face": np.ascontiguousarray(faces.transpose(0, 3, 1, 2))})
    want = torch_swap_nhwc(model, faces)
    errs = []
    for g, w in zip(got, want):
        err = np.abs(g.transpose(0, 2, 3, 1) - w)
        assert err.mean() <= INT8_TOLERANCE["mean"] and np.percentile(err, 99) <= INT8_TOLERANCE["p99"]
        errs.append(err.max())
    assert max(errs) > 1e-4  # quantized for real: not fp32's rounding noise


def test_int8_requests_and_failures_are_clear(tiny_df, faces_dir, tmp_path, monkeypatch):
    _, model = tiny_df
    with pytest.raises(TorchSAEError, match="format onnx only.*DeepFaceLive DFM is opset 12"):
        export_model(model, tmp_path / "q.dfm", fmt="dfm", int8=True)
    with pytest.raises(TorchSAEError, match="not with --fp16"):
        export_model(model, tmp_path / "q.onnx", fmt="onnx", int8=True, fp16=True)
    with pytest.raises(TorchSAEError, match="needs opset >= 13"):
        export_model(model, tmp_path / "q.onnx", fmt="onnx", opset=12, int8=True)
    # a verification that cannot pass fails loudly and writes nothing
    monkeypatch.setitem(INT8_TOLERANCE, "mean", 1e-9)
    with pytest.raises(TorchSAEError, match="int8 verification failed .* on average"):
        export_model(model, tmp_path / "bad.onnx", fmt="onnx", int8=True, verify_faces=faces_dir)
    assert not (tmp_path / "bad.onnx").exists()


def test_cli_int8(tiny_df, faces_dir, tmp_path, capsys):
    from engine.__main__ import main
    from engine.recipe import dumps
    from engine.train.checkpoint import save_model_file

    recipe, model = tiny_df
    ck = save_model_file(tmp_path / "model.pt", model, dumps(recipe), step=10)
    out = tmp_path / "m.onnx"
    # without --format, --int8 picks onnx (the recipe's default format is dfm, which int8 cannot be)
    rc = main(["export", str(ck), "--int8", "--out", str(out), "--verify-faces", str(faces_dir)])
    assert rc == 0 and out.is_file()
    assert "int8" in capsys.readouterr().out
    rc = main(["export", str(ck), "--format", "onnx", "--int8", "--parts", "--out", str(tmp_path / "parts")])
    assert rc == 2 and "--int8 applies to whole models" in capsys.readouterr().err
