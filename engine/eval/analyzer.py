"""dlib's face models as evaluation instruments: 68 landmarks, a 128-D identity embedding, face detection.

The three models ship in the face-recognition-models package (in requirements.lock beside dlib-bin);
`model_path` finds them in the installed package and nothing is ever downloaded:

    shape_predictor_68_face_landmarks.dat        68 iBUG landmarks (ERT, Kazemi & Sullivan 2014)
    dlib_face_recognition_resnet_model_v1.dat    128-D face descriptor (ResNet-29; same person < 0.6 apart)
    mmod_human_face_detector.dat                 CNN (MMOD) face detector

How a face chip is obtained from our inputs. Every image evaluated here is an aligned DFL crop at the
model's face type and resolution (real held-out faces converted exactly like training targets, or a
model's output for one of them), so where the face is is already known; detecting it again would only add
failures that say nothing about the swap. Per dst face the analysis therefore
  1. upscales the R×R crop to at least `work_size` (cubic; dlib's recognition chip is 150 px with 25 %
     padding, i.e. it wants the face about 100 px wide — a 64 px wf crop shows it at ~35 px);
  2. takes the face rectangle from dlib's HOG detector on the *real* dst crop — the kind of box the
     68-point predictor was trained on — or, when HOG finds nothing, from the face's stored landmarks
     (`rect_from_landmarks`, placed the way HOG boxes sit around the 68 points), or failing those from
     the face type's canonical landmark positions (`canonical_landmarks`);
  3. runs the shape predictor inside that same rectangle on the real face and on the swapped face, so
     both get landmarks from the same starting box and identical images give identical landmarks;
  4. aligns each image's 150 px chip with its own 68 points (dlib.get_face_chip, as dlib's
     compute_face_descriptor does) and embeds it.
Whether a face is *visible* in the output is measured separately: the CNN detector runs on the swapped
image (at `detect_size`) and a swap counts as "no face found" when no detection's centre falls inside
the expected rectangle. Such swaps stay in every metric (dropping them would flatter a bad model) and
are counted in the report.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
from pathlib import Path

import attrs
import cv2
import numpy as np

from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, landmarks_68_3D, transform_points
from engine.errors import DataError

__all__ = ["MODEL_FILES", "model_path", "FaceAnalyzer", "FaceAnalysis", "rect_from_landmarks",
           "canonical_landmarks", "load_models"]

log = logging.getLogger("torchsae.eval")

# role -> (file in face_recognition_models/models, the package's own locator function)
MODEL_FILES: dict[str, tuple[str, str]] = {
    "landmarks68": ("shape_predictor_68_face_landmarks.dat", "pose_predictor_model_location"),
    "recognition": ("dlib_face_recognition_resnet_model_v1.dat", "face_recognition_model_location"),
    "cnn_detector": ("mmod_human_face_detector.dat", "cnn_face_detector_model_location"),
}

# Where dlib's HOG boxes sit around the bounding box (x0, y0, x1, y1) of the 68 points they lead to, as
# fractions of its width w and height h: left x0 − 0.025w, top y0 − 0.095h, right x1 + 0.03w,
# bottom y1 − 0.08h (means over real faces of both demo identities; spread ±0.07).
_HOG_BOX_FROM_POINTS = (-0.025, -0.095, 0.03, -0.08)


def model_path(role: str) -> Path:
    """Path of one of dlib's model files (`MODEL_FILES` role) in the installed face-recognition-models.

    The package's own locator (e.g. `face_recognition_model_location()`) is asked first; it imports
    pkg_resources, which current setuptools no longer ships, so the package folder found by
    importlib.util.find_spec (no import) is the fallback. DataError naming the package when neither works.
    """
    if role not in MODEL_FILES:
        raise ValueError(f"unknown dlib model role {role!r} (valid: {', '.join(MODEL_FILES)})")
    filename, helper = MODEL_FILES[role]
    try:
        path = Path(getattr(importlib.import_module("face_recognition_models"), helper)())
        if path.is_file():
            return path
    except ImportError:
        pass
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the face-recognition-models package is not installed; it ships dlib's {filename} that "
                        "torchsae eval uses (it is in requirements.lock: run make venv)")
    for root in spec.submodule_search_locations:
        cand = Path(root) / "models" / filename
        if cand.is_file():
            return cand
    raise DataError(f"face-recognition-models has no models/{filename} (looked in "
                    f"{list(spec.submodule_search_locations)}); reinstall it")


@functools.lru_cache(maxsize=1)
def load_models():
    """(shape predictor, recognition net, CNN detector, HOG detector), loaded once per process."""
    import dlib  # optional heavy dependency: only evaluation needs it

    return (dlib.shape_predictor(str(model_path("landmarks68"))),
            dlib.face_recognition_model_v1(str(model_path("recognition"))),
            dlib.cnn_face_detection_model_v1(str(model_path("cnn_detector"))),
            dlib.get_frontal_face_detector())


def rect_from_landmarks(points: np.ndarray) -> np.ndarray:
    """(l, t, r, b) float: a HOG-like face box for 68 landmarks (x, y) (see _HOG_BOX_FROM_POINTS)."""
    p = np.asarray(points, dtype=np.float64)
    x0, y0 = p.min(0)
    x1, y1 = p.max(0)
    w, h = x1 - x0, y1 - y0
    a, b, c, d = _HOG_BOX_FROM_POINTS
    return np.array([x0 + a * w, y0 + b * h, x1 + c * w, y1 + d * h])


@functools.lru_cache(maxsize=32)
def canonical_landmarks(size: int, face_type: str) -> np.ndarray:
    """(68, 2) where a frontal mean face lands in an aligned `face_type` crop of side `size`: DFL's 3-D mean
    face (x, y) aligned with get_transform_mat like the extractor does. A read-only array."""
    # any placement will do: the alignment is invariant to scale and translation
    frame = landmarks_68_3D[:, :2].astype(np.float64) * 3.0 + 400.0
    mat = get_transform_mat(frame, size, FaceType.parse(face_type, "face type"))
    out = transform_points(frame, mat).astype(np.float64)
    out.setflags(write=False)
    return out


@attrs.frozen
class FaceAnalysis:
    """What dlib sees in one image: `landmarks` (68, 2) float64 in `work_size` pixels, `embedding` (128,)
    float64, `detected` (None when detection was not asked for)."""

    landmarks: np.ndarray = attrs.field(eq=False)
    embedding: np.ndarray = attrs.field(eq=False)
    detected: bool | None = None


def _rgb_u8(img_bgr: np.ndarray) -> np.ndarray:
    """float BGR [0, 1] or uint8 BGR -> contiguous uint8 RGB (what dlib's Python API takes)."""
    if img_bgr.dtype != np.uint8:
        img_bgr = np.clip(np.rint(np.asarray(img_bgr, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img_bgr[..., ::-1])


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    inter = cv2.INTER_AREA if size < img.shape[0] else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=inter)


class FaceAnalyzer:
    """dlib's models applied to aligned crops (module docstring: rectangle, landmarks, chip, detection).

    work_size: side the crops are analysed at (crops smaller than this are upscaled; larger ones are used
    as they are); detect_size: side the CNN detector sees (it finds wf/f crops reliably from ~128 px,
    and its cost grows with the area).
    """

    def __init__(self, *, work_size: int = 192, detect_size: int = 160):
        import dlib  # optional heavy dependency: only evaluation needs it

        self._dlib = dlib
        self.predictor, self.recognizer, self.cnn, self.hog = load_models()
        self.work_size = int(work_size)
        self.detect_size = int(detect_size)

    def side(self, resolution: int) -> int:
        """The analysis side for crops of `resolution`."""
        return max(int(resolution), self.work_size)

    def prepare(self, img_bgr: np.ndarray) -> np.ndarray:
        """An R×R BGR crop (float [0, 1] or uint8) -> uint8 RGB at `side(R)`."""
        return _rgb_u8(_resize(np.asarray(img_bgr), self.side(img_bgr.shape[0])))

    def face_rect(self, rgb: np.ndarray, landmarks: np.ndarray | None, face_type: str) -> tuple[np.ndarray, str]:
        """((l, t, r, b), how) for a real aligned crop `rgb` (from `prepare`): the HOG detection nearest the
        crop's centre ("hog"), else from `landmarks` in rgb's pixels ("landmarks"), else from the face type's
        canonical landmarks ("face_type")."""
        size = rgb.shape[0]
        dets = self.hog(rgb, 0)
        if len(dets):
            c = size / 2.0
            best = min(dets, key=lambda r: (r.left() + r.right() - 2 * c) ** 2 + (r.top() + r.bottom() - 2 * c) ** 2)
            return np.array([best.left(), best.top(), best.right(), best.bottom()], dtype=np.float64), "hog"
        if landmarks is not None:
            return rect_from_landmarks(landmarks), "landmarks"
        return rect_from_landmarks(canonical_landmarks(size, face_type)), "face_type"

    def _drect(self, rect: np.ndarray):
        l, t, r, b = (int(round(v)) for v in rect)
        return self._dlib.rectangle(l, t, r, b)

    def analyse(self, rgbs: list[np.ndarray], rects: list[np.ndarray], *, detect: bool = False) -> list[FaceAnalysis]:
        """Landmarks inside `rects[i]`, the embedding of the chip they align, and (detect) whether the CNN
        detector finds a face whose centre lies in that rectangle, for each uint8 RGB image (`prepare`)."""
        shapes, chips = [], []
        for rgb, rect in zip(rgbs, rects):
            shape = self.predictor(rgb, self._drect(rect))
            shapes.append(shape)
            chips.append(self._dlib.get_face_chip(rgb, shape, size=150, padding=0.25))
        embs = self.recognizer.compute_face_descriptor(chips) if chips else []
        out = []
        for rgb, rect, shape, emb in zip(rgbs, rects, shapes, embs):
            pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], dtype=np.float64)
            out.append(FaceAnalysis(pts, np.array(emb, dtype=np.float64), self.detect(rgb, rect) if detect else None))
        return out

    def detect(self, rgb: np.ndarray, rect: np.ndarray) -> bool:
        """Whether the CNN detector finds a face in `rgb` whose centre lies inside `rect` (rgb's pixels)."""
        s = self.detect_size / rgb.shape[0]
        small = np.ascontiguousarray(_resize(rgb, self.detect_size))
        for d in self.cnn(small, 0):
            cx = (d.rect.left() + d.rect.right()) / 2 / s
            cy = (d.rect.top() + d.rect.bottom()) / 2 / s
            if rect[0] <= cx <= rect[2] and rect[1] <= cy <= rect[3]:
                return True
        return False
