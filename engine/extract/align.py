"""From frame + landmarks to an aligned face, as DFL's extractor's final stage does (docs/dfl.md §6.2, §6.4).

    M = get_transform_mat(source_landmarks, size, face_type)      # frame -> crop, 2x3
    face = cv2.warpAffine(frame, M, (size, size), flags=INTER_LINEAR, borderMode=CONSTANT 0)
    landmarks = transform_points(source_landmarks, M)             # crop pixels

Interpolation: DFL passes cv2.INTER_LANCZOS4 as warpAffine's 4th *positional* argument, which is the
`dst` slot, so the warp it actually performs is OpenCV's default bilinear (quirk §12.13). We warp with
bilinear on purpose, which makes the aligned pixels identical to DFL's for the same matrix.

Sanity filter (DFL `final_stage`): for face types up to full_face_no_align, a face whose crop square,
mapped back to the frame, covers more than 4x the detector rectangle's area is dropped (the landmarks
went astray). DFL does not apply it to whole_face or head, and neither do we.
"""

from __future__ import annotations

import attrs
import cv2
import numpy as np

from engine.faces.facetypes import FaceType
from engine.faces.landmarks import get_transform_mat, polygon_area, transform_points

__all__ = ["AlignedFace", "align_face", "crop_area_in_frame", "rect_area", "fails_area_check", "warp_face"]


@attrs.frozen
class AlignedFace:
    """An aligned crop: image (S, S, 3) uint8 BGR, image_to_face_mat (2, 3) float64 (frame -> crop),
    landmarks (68, 2) float in crop pixels, source_landmarks (68, 2) float in frame pixels."""

    image: np.ndarray = attrs.field(eq=False, repr=False)
    image_to_face_mat: np.ndarray = attrs.field(eq=False)
    landmarks: np.ndarray = attrs.field(eq=False)
    source_landmarks: np.ndarray = attrs.field(eq=False)
    face_type: FaceType = FaceType.WHOLE_FACE


def warp_face(frame: np.ndarray, mat: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine(frame, mat, (size, size)) with bilinear interpolation and a black constant
    border: exactly the warp DFL's extractor performs (§12.13)."""
    return cv2.warpAffine(frame, np.asarray(mat, dtype=np.float64), (int(size), int(size)), flags=cv2.INTER_LINEAR)


def align_face(frame: np.ndarray, source_landmarks, face_type: FaceType | str | int, size: int) -> AlignedFace:
    """Align one face: DFL's transform for `face_type`, bilinear warp, landmarks moved into the crop."""
    ft = FaceType.parse(face_type)
    src = np.asarray(source_landmarks, dtype=np.float32)
    mat = get_transform_mat(src, size, ft)
    img = warp_face(frame, mat, size)
    lms = transform_points(src, mat)
    return AlignedFace(img, mat, lms, src, ft)


def crop_area_in_frame(mat: np.ndarray, size: int) -> float:
    """Area (frame px²) of the crop square's corners (0,0), (0,S-1), (S-1,S-1), (S-1,0) mapped back to
    the frame with the inverse of `mat` (DFL's `landmarks_bbox` area)."""
    s1 = size - 1
    corners = np.array([(0, 0), (0, s1), (s1, s1), (s1, 0)], dtype=np.float32)
    back = transform_points(corners, mat, invert=True)
    return polygon_area(back[:, 0].astype(np.float32), back[:, 1].astype(np.float32))


def rect_area(rect) -> float:
    """Area of the rectangle (l, t, r, b) as the shoelace area of its corners (DFL's rect_area)."""
    r = np.asarray(rect, dtype=np.float32)
    return polygon_area(r[[0, 2, 2, 0]], r[[1, 1, 3, 3]])


def fails_area_check(face_type: FaceType | str | int, mat: np.ndarray, size: int, rect) -> bool:
    """True when DFL's extractor would drop the face: face type <= full_face_no_align and the crop's
    area in the frame exceeds 4x the detector rect's area (§6.2)."""
    ft = FaceType.parse(face_type)
    if ft > FaceType.FULL_NO_ALIGN:
        return False
    return crop_area_in_frame(mat, size) > 4.0 * rect_area(rect)
