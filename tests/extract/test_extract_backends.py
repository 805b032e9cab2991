"""Backends: dlib model discovery, FAN weight loading and its geometry, and `auto`'s choice."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from engine.errors import DataError
from engine.extract import backends as B


class FixedDetector:
    """Detector stand-in returning fixed rects."""

    def __init__(self, rects):
        self.rects = [(np.asarray(r, dtype=np.int64), 1.0) for r in rects]

    def __call__(self, image):
        return list(self.rects)


@pytest.fixture(scope="module")
def fan1_weights(tmp_path_factory):
    """A randomly initialised FAN with one hourglass (the 2DFAN-4 layout with 1 module), saved the way
    face-alignment's weights are: a plain state dict."""
    from face_alignment.models import FAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fan") / "fan1.pth.tar"
    torch.save(FAN(1).state_dict(), path)
    return path


def test_dlib_model_path_finds_shipped_models():
    p = B.dlib_model_path("shape_predictor_68_face_landmarks.dat")
    assert p.is_file() and p.stat().st_size > 50_000_000
    assert B.dlib_model_path("dlib_face_recognition_resnet_model_v1.dat").is_file()
    with pytest.raises(DataError, match="no models/nope.dat"):
        B.dlib_model_path("nope.dat")


def test_auto_uses_dlib_without_fan_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    be, reason = B.resolve_backend("auto")
    assert be.name == "dlib"
    assert "FAN weights not found" in reason and str(tmp_path) in reason and "2DFAN4" in reason


def test_explicit_missing_fan_weights_is_an_error(tmp_path):
    with pytest.raises(DataError, match="--fan-weights .*missing.pth.tar: file not found"):
        B.resolve_backend("auto", fan_weights=tmp_path / "missing.pth.tar")


def test_fan_requested_offline_names_the_remedies(tmp_path, monkeypatch):
    import face_alignment.utils

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(face_alignment.utils, "load_file_from_url", offline)
    with pytest.raises(DataError) as e:
        B.resolve_backend("fan")
    msg = str(e.value)
    assert "FAN weights are not available" in msg and "--fan-weights PATH" in msg and "--backend dlib" in msg
    assert "adrianbulat.com" in msg  # the URL face-alignment downloads from


def test_unknown_backend():
    with pytest.raises(DataError, match="'dilb' is not known"):
        B.resolve_backend("dilb")


def test_auto_prefers_fan_when_weights_are_cached(tmp_path, monkeypatch, fan1_weights):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = B.fan_cached_weights_path()
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(fan1_weights.read_bytes())
    be, reason = B.resolve_backend("auto", device="cpu")
    assert be.name == "fan" and "found in" in reason
    assert be.net.num_modules == 1 and not be.net.training
    # the real FAN network runs end to end on a frame: 68 finite points near the rect
    be.detector = FixedDetector([(100, 80, 200, 180)])
    img = np.random.default_rng(0).integers(0, 255, (300, 320, 3), dtype=np.uint8)
    faces = be(img)
    assert len(faces) == 1
    lm = faces[0].landmarks
    assert lm.shape == (68, 2) and np.all(np.isfinite(lm))
    # the 64x64 heatmap grid spans a square of side 200·s around the crop centre
    s = (100 + 100) / 195.0
    assert np.all(np.abs(lm[:, 0] - 150) <= 100 * s + 1) and np.all(np.abs(lm[:, 1] - (130 - 12)) <= 100 * s + 1)


def test_load_fan_errors(tmp_path):
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="bad.pth.tar: cannot read FAN weights"):
        B.load_fan(bad)
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    with pytest.raises(DataError, match="not a FAN state dict"):
        B.load_fan(other)
    wrong = tmp_path / "wrong.pth"
    torch.save({"m0.x": torch.zeros(1)}, wrong)
    with pytest.raises(DataError, match=r"does not match FAN\(1\)"):
        B.load_fan(wrong)
    with pytest.raises(DataError, match="FAN weights file not found"):
        B.load_fan(tmp_path / "none.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty.pth: cannot read FAN weights \(EOFError: EOFError\)"):
        B.load_fan(tmp_path / "empty.pth")


class _System:
    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_load_fan_refusal_says_what_was_refused(tmp_path):
    import pickle

    from engine.errors import UnsafeFileError

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"m0.x": _System()}, protocol=2))
    with pytest.raises(UnsafeFileError) as ei:
        B.load_fan(evil)
    msg = str(ei.value)
    assert "asks for 'posix.system'" in msg and "Nothing was executed" in msg
    assert "\x1b" not in msg and "weights_only" not in msg


def test_load_fan_accepts_wrapped_state_dict(tmp_path, fan1_weights):
    sd = torch.load(fan1_weights, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, wrapped)
    net = B.load_fan(wrapped)
    assert torch.equal(net.state_dict()["conv1.weight"], sd["conv1.weight"])


class PeakNet(torch.nn.Module):
    """Fake landmark network: heatmap j has a single peak at grid cell (hx_j, hy_j)."""

    def __init__(self, cells):
        super().__init__()
        self.cells = cells

    def forward(self, x):
        hm = torch.zeros(x.shape[0], 68, 64, 64)
        for j, (hx, hy) in enumerate(self.cells):
            hm[:, j, hy, hx] = 1.0
        return [hm]


def test_fan_heatmap_to_frame_geometry():
    """Heatmap cell centre (hx + 0.5)/64 across a square of side 200·s centred at
    c = ((l + r)/2, (t + b)/2 - 0.12·(b - t)), s = (w + h)/195 (face-alignment's convention)."""
    rng = np.random.default_rng(1)
    cells = [(int(a), int(b)) for a, b in rng.integers(2, 62, (68, 2))]
    l, t, r, b = 140, 60, 260, 190
    be = B.FanBackend(PeakNet(cells), detector=FixedDetector([(l, t, r, b)]))
    img = np.zeros((300, 400, 3), np.uint8)
    (face,) = be(img)
    s = ((r - l) + (b - t)) / 195.0
    cx, cy = (l + r) / 2.0, (t + b) / 2.0 - 0.12 * (b - t)
    side = 200.0 * s
    exp = np.array([[cx - side / 2 + (hx + 0.5) / 64 * side, cy - side / 2 + (hy + 0.5) / 64 * side] for hx, hy in cells])
    np.testing.assert_allclose(face.landmarks, exp, atol=1e-3)
    np.testing.assert_array_equal(face.rect, [l, t, r, b])


def test_dlib_detects_real_faces_largest_first(demo_videos, dlib_backend):
    """A real frame pasted at full and 0.6x size: two faces, the larger one first, landmarks inside."""
    import cv2

    from engine.extract.media import open_media

    frame = next(open_media(demo_videos[1]).frames()).image  # (360, 640, 3)
    small = cv2.resize(frame, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((360, 640 + small.shape[1], 3), np.uint8)
    canvas[:, :640] = frame
    canvas[: small.shape[0], 640:] = small
    faces = dlib_backend(canvas)
    assert len(faces) == 2
    areas = [(f.rect[2] - f.rect[0]) * (f.rect[3] - f.rect[1]) for f in faces]
    assert areas[0] > areas[1]
    assert faces[0].rect[2] <= 640 and faces[1].rect[0] >= 640
    for f in faces:
        assert f.landmarks.shape == (68, 2) and f.landmarks.dtype == np.float32
        l, t, r, b = f.rect
        w = r - l
        inside = (f.landmarks[:, 0] > l - 0.3 * w) & (f.landmarks[:, 0] < r + 0.3 * w) & (f.landmarks[:, 1] > t - 0.3 * w) & (f.landmarks[:, 1] < b + 0.3 * w)
        assert inside.all()
    # same face at 0.6x: landmarks scale with the image (to within a few px of dlib's integer output)
    rel0 = (faces[0].landmarks - faces[0].landmarks.mean(0)) * 0.6
    rel1 = faces[1].landmarks - faces[1].landmarks.mean(0)
    assert np.abs(rel0 - rel1).mean() < 2.5
