"""Face masks from 68 landmarks: DFL's hull, eye and mouth masks (docs/dfl.md §6.5, §5.4, quirk §12.14).

All masks are float32 H×W×1 with values in [0, 1], drawn at the resolution of the image the landmarks
belong to (the aligned sample's own size, before any warping, as DFL does).

- `get_image_hull_mask`: union of eight convex hulls (jaw halves, cheeks, nose ridge, eye regions,
  nose) over landmarks whose eyebrows were pushed up by `expand_eyebrows`. The landmarks are cast to
  int first (truncation toward zero, DFL's `np.int` cast), and `cv2.fillConvexPoly` draws without AA.
- `get_image_eye_mask` / `get_image_mouth_mask`: hulls of 36-41 + 42-47 (eyes) or 60-67 (inner lips),
  dilated with an elliptical kernel of side h//32, then Gaussian-blurred with k = h//16 made odd, σ auto.
- `get_eyes_mouth_mask`: SampleProcessor's EYES_MOUTH mask: clip(eye + mouth, 0, 1) · (full-face mask ≠ 0).

Deviation from DFL: the optional ie_polys overlay of the hull mask is not here (SAEHD never passes it).
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.faces.landmarks import as_landmarks
from engine.errors import DataError

__all__ = [
    "expand_eyebrows",
    "get_image_hull_mask",
    "get_image_eye_mask",
    "get_image_mouth_mask",
    "get_eyes_mouth_mask",
]


def expand_eyebrows(landmarks, eyebrows_expand_mod: float = 1.0) -> np.ndarray:
    """Int64 (68, 2) landmarks with the brows moved away from the eyes (DFL `expand_eyebrows`).

    With int landmarks L (truncated): ml = (L36 + L0)//2, mr = (L16 + L45)//2, ql = (L36 + ml)//2,
    qr = (L45 + mr)//2; bot_l = [ql, L36..L39], bot_r = [L42..L45, qr];
    L[17:22] += mod·0.5·(L[17:22] - bot_l), L[22:27] += mod·0.5·(L[22:27] - bot_r), computed in float and
    stored back into the int array (truncation again).
    """
    lm = np.array(as_landmarks(landmarks), dtype=np.int64)  # np.int cast: truncation toward zero
    ml = (lm[36] + lm[0]) // 2
    mr = (lm[16] + lm[45]) // 2
    ql = (lm[36] + ml) // 2
    qr = (lm[45] + mr) // 2
    bot_l = np.array((ql, lm[36], lm[37], lm[38], lm[39]))
    bot_r = np.array((lm[42], lm[43], lm[44], lm[45], qr))
    top_l = lm[17:22]
    top_r = lm[22:27]
    # float result assigned into the int array truncates toward zero, as numpy assignment does in DFL
    lm[17:22] = top_l + eyebrows_expand_mod * 0.5 * (top_l - bot_l)
    lm[22:27] = top_r + eyebrows_expand_mod * 0.5 * (top_r - bot_r)
    return lm


def _fill_hull(mask: np.ndarray, pts: np.ndarray) -> None:
    cv2.fillConvexPoly(mask, cv2.convexHull(np.ascontiguousarray(pts)), (1,))


def get_image_hull_mask(image_shape, landmarks, eyebrows_expand_mod: float = 1.0) -> np.ndarray:
    """Float32 H×W×1 {0, 1} face-hull mask (DFL `get_image_hull_mask`, §6.5).

    image_shape: (H, W[, C]); landmarks: (68, 2) in that image's pixels.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    mask = np.zeros((h, w, 1), dtype=np.float32)
    lm = expand_eyebrows(landmarks, eyebrows_expand_mod)
    parts = [
        (lm[0:9], lm[17:18]),  # right jaw
        (lm[8:17], lm[26:27]),  # left jaw
        (lm[17:20], lm[8:9]),  # right cheek
        (lm[24:27], lm[8:9]),  # left cheek
        (lm[19:25], lm[8:9]),  # nose ridge
        (lm[17:22], lm[27:28], lm[31:36], lm[8:9]),  # right eye region
        (lm[22:27], lm[27:28], lm[31:36], lm[8:9]),  # left eye region
        (lm[27:31], lm[31:36]),  # nose
    ]
    for item in parts:
        # int32 points: what cv2.convexHull/fillConvexPoly take for integer coordinates
        _fill_hull(mask, np.concatenate(item).astype(np.int32))
    return mask


def _dilate_blur(mask: np.ndarray, h: int) -> np.ndarray:
    k = h // 32
    if k < 1:
        # DFL's kernel h//32 is empty below 32 px and OpenCV rejects it; say so instead of a cv2.error
        raise DataError(f"eye/mouth masks need an image at least 32 px tall (dilation kernel h//32), got height {h}")
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), iterations=1)
    blur = h // 16
    blur = blur + (1 - blur % 2)  # make odd
    out = cv2.GaussianBlur(mask, (blur, blur), 0)
    return out.reshape(mask.shape[0], mask.shape[1], 1)


def get_image_eye_mask(image_shape, landmarks) -> np.ndarray:
    """Float32 H×W×1 soft eye mask: hulls of 36-41 and 42-47, dilate (h//32 ellipse), blur (h//16 odd)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    lm = np.array(as_landmarks(landmarks), dtype=np.int64).astype(np.int32)  # truncation, §12.14
    mask = np.zeros((h, w, 1), dtype=np.float32)
    _fill_hull(mask, lm[36:42])
    _fill_hull(mask, lm[42:48])
    return _dilate_blur(mask, h)


def get_image_mouth_mask(image_shape, landmarks) -> np.ndarray:
    """Float32 H×W×1 soft inner-mouth mask: hull of 60-67, dilate (h//32 ellipse), blur (h//16 odd)."""
    h, w = int(image_shape[0]), int(image_shape[1])
    lm = np.array(as_landmarks(landmarks), dtype=np.int64).astype(np.int32)
    mask = np.zeros((h, w, 1), dtype=np.float32)
    _fill_hull(mask, lm[60:68])
    return _dilate_blur(mask, h)


def get_eyes_mouth_mask(image_shape, landmarks, full_face_mask: np.ndarray) -> np.ndarray:
    """SampleProcessor's EYES_MOUTH mask before geometry (§5.4): clip(eye + mouth, 0, 1) · (full ≠ 0).

    full_face_mask: the sample's FULL_FACE mask (xseg mask or hull), H×W×1 or H×W, same size.
    """
    full = np.asarray(full_face_mask, dtype=np.float32).reshape(int(image_shape[0]), int(image_shape[1]), 1)
    full = (full != 0).astype(np.float32)
    em = np.clip(get_image_eye_mask(image_shape, landmarks) + get_image_mouth_mask(image_shape, landmarks), 0, 1)
    return em * full
