"""Face detection + 68-point landmarks for extraction: a dlib backend (offline) and a FAN backend.

DFL's extractor finds face rectangles with S3FD and places 68 iBUG landmarks with FAN (2DFAN-4), then
aligns with `get_transform_mat` (docs/dfl.md §6.2, §6.4). Here:

- `dlib`: dlib's HOG frontal face detector + its 68-point shape predictor
  (`shape_predictor_68_face_landmarks.dat`, shipped by the face-recognition-models package). Works with
  no network. Landmarks are dlib's integer pixel positions, same iBUG order as FAN.
- `fan`: the FAN landmark network of the face-alignment package (the network DFL's extractor uses), its
  weights `2DFAN4-*.pth.tar` downloaded by that package into torch's hub cache on first use, or taken
  from a local file (`--fan-weights`). The crop is the package's (`crop`: centre = rect centre moved up
  12 % of its height, scale = (w + h) / 195); heatmaps are decoded in float as DFL does.
  Deviation from DFL: rectangles come from dlib's HOG detector, not S3FD, because S3FD's weights are one
  more download; DFL's FAN pass does not average a flipped input either, and neither do we.
- `auto`: FAN when its weights are already on disk, otherwise dlib; the chosen backend and the reason
  are logged.

Faces are returned largest rectangle first (DFL sorts detections by area), so `--max-faces 1` keeps the
most prominent face.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Protocol

import attrs
import cv2
import numpy as np

from engine.errors import DataError, UnsafeFileError, first_line
from engine.safe_pickle import describe_torch_load_error

__all__ = [
    "DetectedFace",
    "FaceBackend",
    "DlibDetector",
    "DlibBackend",
    "FanBackend",
    "dlib_model_path",
    "fan_weights_url",
    "fan_cached_weights_path",
    "load_fan",
    "heatmaps_to_points",
    "resolve_backend",
]

log = logging.getLogger("torchsae.extract")


@attrs.frozen
class DetectedFace:
    """One face in a frame: detector rect (l, t, r, b) int64 (4,), landmarks (68, 2) float32 in frame
    pixels (iBUG order), detector score (dlib HOG margin; higher = surer)."""

    rect: np.ndarray = attrs.field(eq=False)
    landmarks: np.ndarray = attrs.field(eq=False)
    score: float = 0.0


class FaceBackend(Protocol):
    """Anything that turns a BGR frame into a list of DetectedFace, largest rect first."""

    name: str

    def __call__(self, image_bgr: np.ndarray) -> list[DetectedFace]: ...


def _rect_area(r: np.ndarray) -> float:
    return float(max(0, r[2] - r[0]) * max(0, r[3] - r[1]))


def dlib_model_path(filename: str) -> Path:
    """Path of a model file shipped in the face-recognition-models package (`models/<filename>`).

    The package is located with importlib (importing it fails on current setuptools, which removed the
    pkg_resources module it uses). DataError when the package or file is missing.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the face-recognition-models package is not installed; it ships dlib's landmark and "
            f"recognition models ({filename}); install it with pip install face-recognition-models"
        )
    for root in spec.submodule_search_locations:
        cand = Path(root) / "models" / filename
        if cand.is_file():
            return cand
    raise DataError(f"face-recognition-models has no models/{filename} (looked in {list(spec.submodule_search_locations)})")


class DlibDetector:
    """dlib's HOG frontal face detector.

    upsample: image doublings before detection (0 finds faces >= ~80 px; each step halves that and
    costs ~4x time). threshold: dlib's `adjust_threshold` (0 = dlib's default; negative finds more faces,
    e.g. turned heads, with more false positives). retry_upsample: when nothing is found at `upsample`,
    try once more at `upsample + 1` (small or distant faces in photos).
    """

    def __init__(self, upsample: int = 0, threshold: float = 0.0, retry_upsample: bool = True):
        import dlib  # heavy (C extension): loaded only by the dlib backend

        self._det = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.threshold = float(threshold)
        self.retry_upsample = retry_upsample

    def __call__(self, image_bgr: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """[(rect (l, t, r, b) int64, score)] sorted by rect area, largest first."""
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        rects, scores, _kinds = self._det.run(rgb, self.upsample, self.threshold)
        if not rects and self.retry_upsample:
            rects, scores, _kinds = self._det.run(rgb, self.upsample + 1, self.threshold)
        out = [(np.array([r.left(), r.top(), r.right(), r.bottom()], dtype=np.int64), float(s)) for r, s in zip(rects, scores)]
        out.sort(key=lambda rs: -_rect_area(rs[0]))
        return out


class DlibBackend:
    """HOG detector + dlib's 68-point shape predictor (ERT, Kazemi & Sullivan 2014)."""

    name = "dlib"

    def __init__(self, detector: DlibDetector | None = None, predictor_path: str | Path | None = None):
        import dlib  # heavy (C extension): loaded only by the dlib backend

        self.detector = detector or DlibDetector()
        path = Path(predictor_path) if predictor_path else dlib_model_path("shape_predictor_68_face_landmarks.dat")
        if not path.is_file():
            raise DataError(f"{path}: dlib 68-point shape predictor not found")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(path))

    def landmarks(self, image_bgr: np.ndarray, rect: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks for the face in `rect` (l, t, r, b)."""
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return self._landmarks_rgb(rgb, rect)

    def _landmarks_rgb(self, rgb: np.ndarray, rect: np.ndarray) -> np.ndarray:
        l, t, r, b = (int(v) for v in rect)
        shape = self._predictor(rgb, self._dlib.rectangle(l, t, r, b))
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float32)

    def __call__(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return [DetectedFace(rect, self._landmarks_rgb(rgb, rect), score) for rect, score in self.detector(image_bgr)]


# --------------------------------------------------------------------------------------------------
# FAN


def fan_weights_url() -> str:
    """Download URL of the 2D FAN-4 weights, as the face-alignment package knows it."""
    from face_alignment.api import models_urls  # optional: only the FAN backend needs face-alignment

    return models_urls["2DFAN-4"]


def fan_cached_weights_path() -> Path:
    """Where face-alignment's downloader keeps the FAN weights: <torch hub dir>/checkpoints/<file name>."""
    import torch.hub  # heavy: extraction with dlib runs without torch

    name = os.path.basename(fan_weights_url())
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def load_fan(weights: str | Path, device: str = "cpu"):
    """face_alignment.models.FAN with weights from a local file, in eval mode.

    The file is a torch state dict (what face-alignment downloads; `{'state_dict': ...}` and
    DataParallel's `module.` prefixes are accepted too), loaded with weights_only=True (no arbitrary
    unpickling). The number of hourglass modules is read from the keys (`m0.`, `m1.`, ...; 2DFAN-4 has
    4). DataError naming the file when it is missing, unreadable or not a FAN state dict.
    """
    import torch  # heavy: extraction with dlib runs without torch
    from face_alignment.models import FAN

    path = Path(weights)
    if not path.is_file():
        raise DataError(f"{path}: FAN weights file not found (expected a 2DFAN-4 .pth.tar state dict from {fan_weights_url()})")
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as e:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        kind = describe_torch_load_error(e)
        if kind is not None and kind[0] == "refused":
            raise UnsafeFileError(f"{path}: refused to load FAN weights: the file asks for {kind[1]}, which is not "
                                  "tensor data or a plain container. Nothing was executed. If you did not create "
                                  "this file yourself, do not use it.") from None
        raise DataError(f"{path}: cannot read FAN weights ({type(e).__name__}: "
                        f"{kind[1] if kind is not None else first_line(e)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise DataError(f"{path}: FAN weights must be a state dict of tensors, got {type(state).__name__}")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    n_modules = len({k.split(".")[0] for k in state if k.split(".")[0][:1] == "m" and k.split(".")[0][1:].isdigit()})
    if n_modules == 0:
        raise DataError(f"{path}: not a FAN state dict (no hourglass keys 'm0.*'; first keys: {list(state)[:4]})")
    net = FAN(n_modules)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise DataError(f"{path}: FAN state dict does not match FAN({n_modules}): {first_line(e)}") from e
    return net.to(device).eval()


def heatmaps_to_points(hm: np.ndarray, center, scale: float) -> np.ndarray:
    """(N, 2) float32 frame points from FAN heatmaps hm (N, H, W) of a crop around `center`.

    Per heatmap: arg-max cell (px, py); when it is not on the border, move it 0.25 toward the larger
    neighbour along x and along y; take the cell centre (+0.5). The H×W grid spans a square of side
    200·scale centred at `center`, so x = cx + ((px + 0.5)/W - 0.5)·200·scale (same for y). This is the
    FAN decoding DFL's extractor uses, in float: face-alignment's own helper truncates the result to
    integer pixels.
    """
    n, h, w = hm.shape
    flat = hm.reshape(n, h * w).argmax(axis=1)
    px, py = flat % w, flat // w
    pts = np.stack([px, py], axis=1).astype(np.float64)
    for j in range(n):
        x, y = int(px[j]), int(py[j])
        if 0 < x < w - 1 and 0 < y < h - 1:
            d = np.array([hm[j, y, x + 1] - hm[j, y, x - 1], hm[j, y + 1, x] - hm[j, y - 1, x]])
            pts[j] += np.sign(d) * 0.25
    side = 200.0 * scale
    res = np.array([w, h], dtype=np.float64)
    return (np.asarray(center, dtype=np.float64) + ((pts + 0.5) / res - 0.5) * side).astype(np.float32)


class FanBackend:
    """Rects from `detector` (dlib HOG by default) + landmarks from a FAN network.

    Per face (DFL's and face-alignment's recipe): centre c = ((l + r)/2, (t + b)/2 - 0.12·(b - t)),
    scale s = ((r - l) + (b - t)) / 195; the 256x256 crop of side 200·s around c (face-alignment's
    `crop`) goes through the net; the last hourglass's 64x64 heatmaps are decoded by
    `heatmaps_to_points`.
    """

    name = "fan"

    def __init__(self, net, detector: DlibDetector | None = None, device: str = "cpu"):
        self.net = net
        self.detector = detector or DlibDetector()
        self.device = device

    def landmarks(self, image_bgr: np.ndarray, rect: np.ndarray) -> np.ndarray:
        """(68, 2) float32 landmarks for the face in `rect` (l, t, r, b)."""
        return self._landmarks_rgb(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB), rect)

    def _landmarks_rgb(self, rgb: np.ndarray, rect: np.ndarray) -> np.ndarray:
        import torch  # heavy: extraction with dlib runs without torch
        from face_alignment.utils import crop

        l, t, r, b = (float(v) for v in rect)
        center = np.array([(l + r) / 2.0, (t + b) / 2.0 - (b - t) * 0.12])
        scale = (r - l + b - t) / 195.0
        patch = crop(rgb, center, scale)  # (256, 256, 3) uint8 RGB
        inp = torch.from_numpy(patch.transpose(2, 0, 1).astype(np.float32) / 255.0)[None].to(self.device)
        with torch.inference_mode():
            out = self.net(inp)
        hm = (out[-1] if isinstance(out, (list, tuple)) else out).float().cpu().numpy()[0]  # (68, 64, 64)
        return heatmaps_to_points(hm, center, scale)

    def __call__(self, image_bgr: np.ndarray) -> list[DetectedFace]:
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return [DetectedFace(rect, self._landmarks_rgb(rgb, rect), score) for rect, score in self.detector(image_bgr)]


def _default_device() -> str:
    import torch  # heavy: extraction with dlib runs without torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend(backend: str = "auto", fan_weights: str | Path | None = None, device: str | None = None) -> tuple[FaceBackend, str]:
    """(backend, reason) for --backend auto|dlib|fan.

    - dlib: always available offline.
    - fan: weights from `fan_weights`, else the hub cache, else face-alignment downloads them (its own
      `load_file_from_url`); DataError when that fails (e.g. no network), naming both remedies.
    - auto: fan when weights are on disk (explicit path or hub cache), otherwise dlib. An explicit
      `fan_weights` path that does not exist is an error, not a silent fallback.
    """
    if backend not in ("auto", "dlib", "fan"):
        raise DataError(f"extract backend {backend!r} is not known (valid: auto, dlib, fan)")
    if backend == "dlib":
        return DlibBackend(), "requested"
    if fan_weights is not None and not Path(fan_weights).is_file():
        raise DataError(f"--fan-weights {fan_weights}: file not found (expected a 2DFAN-4 .pth.tar from {fan_weights_url()})")
    device = device or _default_device()
    if fan_weights is not None:
        return FanBackend(load_fan(fan_weights, device), device=device), f"FAN weights from {fan_weights}"
    cached = fan_cached_weights_path()
    if cached.is_file():
        return FanBackend(load_fan(cached, device), device=device), f"FAN weights found in {cached}"
    if backend == "auto":
        return DlibBackend(), f"auto: FAN weights not found at {cached} (pass --fan-weights PATH to use FAN)"
    from face_alignment.utils import load_file_from_url  # optional: only the FAN backend needs face-alignment

    url = fan_weights_url()
    try:
        path = load_file_from_url(url)
    except Exception as e:  # urllib/http errors of every kind when offline
        raise DataError(
            f"FAN weights are not available: {cached} does not exist and downloading {url} failed "
            f"({type(e).__name__}: {e}); pass --fan-weights PATH or use --backend dlib"
        ) from e
    return FanBackend(load_fan(path, device), device=device), f"FAN weights downloaded to {path}"
