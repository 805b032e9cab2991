"""Labels without DFL's editor (engine.xseg.labels: JSON and COCO both ways) and XSeg export (engine.xseg.
export: ONNX in DFL's contract, verified against torch; engine.xseg.dfl_io: DFL's XSeg folder both ways)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import torch

from engine import recipe
from engine.faces import dfljpg
from engine.dfl.files import read_optimizer_file, read_part_file
from engine.errors import CheckpointError, DataError
from engine.train import checkpoint as ck
from engine.xseg import apply as ap
from engine.xseg.dfl_io import XSEG_OPT_NAME, export_dfl_xseg, import_dfl_xseg
from engine.xseg.export import export_xseg_onnx
from engine.xseg.labels import export_labels, import_labels
from engine.xseg.model import XSEG_DATA_NAME, load_xseg, open_masker
from engine.xseg.polys import parse_polys
from engine.xseg.train import train_xseg
from xseg_helpers import xseg_recipe_text


def _polys(folder):
    return {p.name: parse_polys(dfljpg.load(p).meta.get("seg_ie_polys"), p.name) for p in sorted(folder.glob("*.jpg"))}


@pytest.mark.parametrize("fmt", ["json", "coco"])
def test_labels_round_trip_through_a_file(xseg_faces, tmp_path, fmt):
    files = sorted(xseg_faces.glob("*.jpg"))
    exc = {"type": 0, "pts": np.float32([[40, 40], [60, 40], [50, 60]])}
    meta = dfljpg.load(files[0]).meta
    dfljpg.update_meta(files[0], seg_ie_polys={"polys": meta["seg_ie_polys"]["polys"] + [exc]})
    dfljpg.update_meta(files[5], seg_ie_polys=None)
    want = _polys(xseg_faces)
    out = export_labels(xseg_faces, tmp_path / "labels.json", fmt=fmt)
    assert out["faces"] == 5 and out["polygons"] == 6
    doc = json.loads((tmp_path / "labels.json").read_text())
    if fmt == "coco":
        assert {c["name"] for c in doc["categories"]} == {"include", "exclude"} and len(doc["annotations"]) == 6
    else:
        assert doc["faces"][files[0].name]["polygons"][1]["type"] == "exclude"
    ap.remove_labels(xseg_faces, progress=False)
    assert all(not v for v in _polys(xseg_faces).values())
    res = import_labels(xseg_faces, tmp_path / "labels.json", progress=False)
    assert res["faces"] == 5 and res["format"] == fmt
    assert _polys(xseg_faces) == want
    stored = dfljpg.load(files[0]).meta["seg_ie_polys"]["polys"][1]  # DFL's editor representation
    assert stored["type"] == 0 and stored["pts"].dtype == np.float32


def test_label_file_errors_are_named_before_any_write(xseg_faces, tmp_path):
    before = {p.name: p.read_bytes() for p in xseg_faces.glob("*.jpg")}
    cases = {
        "unknown.json": ({"format": "torchsae-xseg-labels-1", "faces": {"nope.jpg": {"polygons": []}}},
                         r"1 face\(s\) not in .*nope.jpg"),
        "badtype.json": ({"format": "torchsae-xseg-labels-1", "faces": {"00000_0.jpg": {"polygons": [
            {"type": "inside", "points": [[1, 1], [2, 2], [3, 1]]}]}}}, "polygon type 'inside' is not valid"),
        "nan.json": ({"format": "torchsae-xseg-labels-1", "faces": {"00000_0.jpg": {"polygons": [
            {"type": "include", "points": [[1, 1], [2, "x"], [3, 1]]}]}}}, "points are not numbers"),
        "rle.json": ({"images": [{"id": 1, "file_name": "00000_0.jpg"}], "categories": [],
                      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"counts": [], "size": [1, 1]}}]},
                     r"\(RLE\); only polygon segmentations"),
        "other.json": ({"hello": 1}, "neither TorchSAE labels"),
    }
    for name, (doc, match) in cases.items():
        (tmp_path / name).write_text(json.dumps(doc))
        with pytest.raises(DataError, match=match):
            import_labels(xseg_faces, tmp_path / name, progress=False)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        import_labels(xseg_faces, tmp_path / "broken.json", progress=False)
    assert {p.name: p.read_bytes() for p in xseg_faces.glob("*.jpg")} == before


@pytest.fixture(scope="module")
def run256(xseg_faces_master, tmp_path_factory):
    """A 1-step XSeg at DFL's resolution 256 (base width 1: DFL's 222 tensors, tiny)."""
    run = tmp_path_factory.mktemp("xseg256") / "run"
    r = recipe.loads(xseg_recipe_text([xseg_faces_master], run, resolution=256, base_ch=1, batch_size=1,
                                      extra_xseg='augment = false\nface_type = "wf"'), source="t.toml")
    train_xseg(r, max_steps=2, progress=False)
    return run


def test_onnx_export_matches_torch_and_the_merger_and_apply_take_it(run256, xseg_faces, tmp_path):
    rep = export_xseg_onnx(run256, tmp_path / "xseg.onnx")
    assert rep.opset == 13 and rep.resolution == 256 and rep.face_type == "whole_face"
    assert max(c[1] for c in rep.checks) < 1e-4
    m = onnx.load(str(tmp_path / "xseg.onnx"))
    assert [i.name for i in m.graph.input] == ["in_face:0"] and [o.name for o in m.graph.output] == ["out_mask:0"]
    dims = [d.dim_value or d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [256, 256, 3]  # NHWC as DFL's XSeg_model.onnx
    onnx_masker, torch_masker = open_masker(tmp_path / "xseg.onnx"), open_masker(run256)
    assert onnx_masker.face_type == torch_masker.face_type and onnx_masker.resolution == 256
    x = np.random.default_rng(0).random((3, 256, 256, 3), dtype=np.float32)
    np.testing.assert_allclose(onnx_masker(x), torch_masker(x), atol=1e-4)
    a = ap.apply_xseg(tmp_path / "xseg.onnx", xseg_faces, progress=False)
    assert a["written"] == 6 and a["face_type"] == "whole_face"

    # the merger's XSeg-prd*XSeg-dst mode with the ONNX file (what `merge --xseg-model xseg.onnx` opens)
    from engine.faces.facetypes import FaceType
    from engine.merge.face import predict_faces
    from engine.recipe.specs import MergeSpec

    class _Model:
        resolution = 64

        def predict(self, x):
            ones = np.ones((x.shape[0], 64, 64, 1), np.float32)
            return x, ones, ones

    frame = dfljpg.read_image(sorted(xseg_faces.glob("*.jpg"))[0])
    lm = dfljpg.read(sorted(xseg_faces.glob("*.jpg"))[0])["landmarks"]
    img, spec = frame.astype(np.float32) / 255, MergeSpec(mask_mode="XSeg-prd*XSeg-dst")
    (p_onnx, _), = predict_faces(img, [lm], spec, FaceType.WHOLE_FACE, 64, _Model().predict, onnx_masker)
    (p_torch, _), = predict_faces(img, [lm], spec, FaceType.WHOLE_FACE, 64, _Model().predict, torch_masker)
    np.testing.assert_allclose(p_onnx.xseg_dst, p_torch.xseg_dst, atol=1e-4)
    np.testing.assert_allclose(p_onnx.xseg_prd, p_torch.xseg_prd, atol=1e-4)


def test_dfl_folder_export_and_import_round_trip(run256, tmp_path):
    info = export_dfl_xseg(run256, tmp_path / "dfl")
    assert info["iter"] == 2 and info["optimizer_state"]
    weights = read_part_file(tmp_path / "dfl" / "XSeg_256.npy")
    assert len(weights) == 222 and weights["conv01/conv/weight:0"].shape == (3, 3, 3, 1)  # TF layout, DFL names
    opt = read_optimizer_file(tmp_path / "dfl" / XSEG_OPT_NAME)
    assert int(opt["iters:0"]) == 2 and "acc_XSeg/conv01/conv/weight_0:0" in opt and len(opt) == 223
    dat = pickle.loads((tmp_path / "dfl" / XSEG_DATA_NAME).read_bytes())
    assert dat["iter"] == 2 and dat["options"]["face_type"] == "wf" and len(dat["loss_history"]) == 2
    net, ft, step, _ = load_xseg(tmp_path / "dfl")
    assert ft.short_name == "wf" and step == 2
    want = ck.load_model_payload(run256)["model"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, want[k]), k
    path, r = import_dfl_xseg(tmp_path / "dfl", tmp_path / "imported" / "model.pt")
    assert r.kind == "xseg" and r.xseg.base_ch == 1 and ck.load_model_payload(path)["step"] == 2
    (tmp_path / "dfl" / XSEG_DATA_NAME).unlink()
    with pytest.raises(CheckpointError, match="give --face-type"):
        import_dfl_xseg(tmp_path / "dfl", tmp_path / "x.pt")
    small = tmp_path / "small"
    r64 = recipe.loads(xseg_recipe_text(["x"], small), source="t.toml")
    ck.save_model_file(small / "model.pt", load_xseg(run256)[0].__class__(base_ch=4, resolution=64), recipe.dumps(r64))
    with pytest.raises(CheckpointError, match="DFL's XSeg is fixed at 256"):
        export_dfl_xseg(small / "model.pt", tmp_path / "dfl64")
