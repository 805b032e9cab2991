"""`torchsae swap`: a folder of aligned faces through a .dfm, an .onnx, a parts folder or a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.__main__ import main
from engine.export import export_model, export_parts, open_model

R = 64


@pytest.fixture(scope="module")
def models(tiny_df, tmp_path_factory):
    """The same tiny model as a checkpoint, a .dfm, an .onnx and a parts folder."""
    from engine.recipe import dumps
    from engine.train.checkpoint import save_model_file

    recipe, model = tiny_df
    d = tmp_path_factory.mktemp("models")
    ck = save_model_file(d / "model.pt", model, dumps(recipe))
    dfm = export_model(model, d / "m.dfm", fmt="dfm").path
    onx = export_model(model, d / "m.onnx", fmt="onnx", simplify_graph=False).path
    parts = export_parts(model, d / "parts", simplify_graph=False).folder
    return {"ckpt": ck, "dfm": dfm, "onnx": onx, "parts": parts}


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """5 good faces (64 px png x3, 128 px png, 64 px jpg), a corrupt file and a non-square image."""
    d = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 256, (R, R, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(d / f"f{i}.png"), img)
    cv2.imwrite(str(d / "big.png"), cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 3))
    cv2.imwrite(str(d / "g.jpg"), rng.integers(0, 256, (R, R, 3), dtype=np.uint8))
    (d / "broken.png").write_bytes(b"this is not a png")
    cv2.imwrite(str(d / "wide.png"), rng.integers(0, 256, (R, 2 * R, 3), dtype=np.uint8))
    return d


GOOD = ["big", "f0", "f1", "f2", "g"]


def _reference(model_path: Path, face_file: Path):
    """What the model gives for one face, computed directly: (celeb uint8, mask uint8) at model size."""
    m = open_model(model_path)
    x = cv2.imread(str(face_file)).astype(np.float32) / 255.0
    if x.shape[0] != R:
        x = cv2.resize(x, (R, R), interpolation=cv2.INTER_AREA)
    celeb, celeb_mask, face_mask = m(x[None])
    to8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(celeb[0]), to8((celeb_mask * face_mask)[0, ..., 0])


def test_swap_dfm_folder(models, faces, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="torchsae.export"):
        assert main(["swap", str(models["dfm"]), "--faces", str(faces), "--out", str(out), "--batch-size", "2"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{s}.png" for s in GOOD] + [f"{s}_mask.png" for s in GOOD])
    assert "skipped 2 file(s)" in caplog.text
    assert "broken.png: not a decodable image" in caplog.text and "wide.png: 128x64 is not square" in caplog.text
    # outputs at the input size (big.png is 128 px), 3-channel face, 1-channel mask
    assert cv2.imread(str(out / "big.png")).shape == (128, 128, 3)
    assert cv2.imread(str(out / "big_mask.png"), cv2.IMREAD_UNCHANGED).shape == (128, 128)
    for stem in ("f0", "f2", "g"):
        celeb, mask = _reference(models["dfm"], faces / f"{stem}{'.jpg' if stem == 'g' else '.png'}")
        np.testing.assert_array_equal(cv2.imread(str(out / f"{stem}.png")), celeb)
        np.testing.assert_array_equal(cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED), mask)


@pytest.mark.parametrize("kind", ["ckpt", "onnx", "parts"])
def test_every_model_form_gives_the_same_faces(models, faces, tmp_path, kind):
    a, b = tmp_path / "dfm", tmp_path / kind
    assert main(["swap", str(models["dfm"]), "--faces", str(faces), "--out", str(a), "--size", "model"]) == 0
    assert main(["swap", str(models[kind]), "--faces", str(faces), "--out", str(b), "--size", "model",
                 "--batch-size", "3"]) == 0
    for stem in GOOD:
        for suffix in (".png", "_mask.png"):
            x = cv2.imread(str(a / f"{stem}{suffix}"), cv2.IMREAD_UNCHANGED).astype(int)
            y = cv2.imread(str(b / f"{stem}{suffix}"), cv2.IMREAD_UNCHANGED).astype(int)
            assert x.shape[:2] == (R, R)
            assert np.abs(x - y).max() <= 1  # fp32 noise may flip a rounding step


def test_mask_choice(models, faces, tmp_path):
    m = open_model(models["dfm"])
    x = cv2.imread(str(faces / "f1.png")).astype(np.float32)[None] / 255.0
    _, celeb_mask, face_mask = m(x)
    for kind, want in [("prd", celeb_mask), ("dst", face_mask)]:
        out = tmp_path / kind
        assert main(["swap", str(models["dfm"]), "--faces", str(faces), "--out", str(out), "--mask", kind]) == 0
        got = cv2.imread(str(out / "f1_mask.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, np.clip(np.rint(want[0, ..., 0] * 255), 0, 255).astype(np.uint8))
    assert np.abs(celeb_mask - face_mask).max() > 2 / 255  # the two choices really differ


def test_swap_errors(models, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["swap", str(models["dfm"]), "--faces", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    assert main(["swap", str(models["dfm"]), "--faces", str(tmp_path / "bad"), "--out", str(tmp_path / "o")]) == 2
    assert "no face could be swapped (1 file(s) skipped" in capsys.readouterr().err
    assert main(["swap", str(tmp_path / "none.dfm"), "--faces", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no such model file or folder" in capsys.readouterr().err
