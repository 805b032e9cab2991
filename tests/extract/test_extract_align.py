"""Alignment stage vs DFL's extractor (golden data recorded from DFL's own final_stage, docs/dfl.md §6.2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.extract.align import align_face, crop_area_in_frame, fails_area_check, rect_area, warp_face

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "extract"
CASES = [("face_full_frontal", "full_face"), ("face_wf_yaw20", "whole_face")]


def _load(name):
    z = np.load(GOLDEN / f"{name}.npz")
    side = json.loads((GOLDEN / f"{name}.json").read_text())
    frame = cv2.imread(str(GOLDEN / "source_frame.png"), cv2.IMREAD_COLOR)
    return z, side, frame


@pytest.mark.opencv4_numerics
@pytest.mark.parity
@pytest.mark.parametrize("name,ft", CASES)
def test_warp_is_dfls_bilinear_bit_exact(name, ft):
    """Given DFL's matrix, our warp reproduces DFL's aligned pixels exactly (quirk §12.13)."""
    z, side, frame = _load(name)
    assert side["face_type"] == ft
    img = warp_face(frame, z["image_to_face_mat"], side["image_size"])
    assert img.dtype == np.uint8 and img.shape == z["face_image_written"].shape
    np.testing.assert_array_equal(img, z["face_image_written"])
    # The test can tell interpolations apart: Lanczos (what DFL's call seems to ask for) differs.
    lanczos = cv2.warpAffine(frame, z["image_to_face_mat"], (256, 256), flags=cv2.INTER_LANCZOS4)
    assert np.count_nonzero(lanczos != z["face_image_written"]) > 1000


@pytest.mark.opencv4_numerics
@pytest.mark.parity
@pytest.mark.parametrize("name,ft", CASES)
def test_align_face_matches_dfl(name, ft):
    """align_face from the source landmarks: DFL's matrix, stored landmarks and pixels."""
    z, side, frame = _load(name)
    a = align_face(frame, z["source_landmarks"], ft, 256)
    # float32 arithmetic inside get_transform_mat: the translation (~100 px) agrees to ~1e-4 px
    np.testing.assert_allclose(a.image_to_face_mat[:, :2], z["image_to_face_mat"][:, :2], atol=1e-6)
    np.testing.assert_allclose(a.image_to_face_mat[:, 2], z["image_to_face_mat"][:, 2], atol=1e-3)
    np.testing.assert_allclose(a.landmarks, z["landmarks"], atol=1e-3)
    assert a.face_type.long_name == ft
    # a 1e-4 px difference in the matrix moves a few bilinear weights by one 1/32 step
    diff = np.abs(a.image.astype(np.int16) - z["face_image_written"].astype(np.int16))
    assert diff.mean() < 0.05 and np.count_nonzero(diff) < 0.01 * diff.size


@pytest.mark.parity
@pytest.mark.parametrize("name,ft", CASES)
def test_jpeg_quality_90_bytes_match_dfl(name, ft):
    """The aligned face is stored as cv2.imencode JPEG q90, byte-identical to DFL's cv2_imwrite."""
    from engine.faces import dfljpg

    z, _side, _frame = _load(name)
    assert dfljpg.encode_jpeg(z["face_image_written"], 90) == z["plain_jpg_bytes"].tobytes()


def test_area_check_threshold_hand_computed():
    """DFL drops a face when its crop, mapped back to the frame, covers > 4x the detector rect.

    docs/dfl.md §6.4 test vector: lm = landmarks_68_3D[:, :2]·2 + (300, 260) gives a full_face crop side of
    383.624 px (for output 256). The check maps the corners (0,0)..(S-1,S-1), so the area is
    (383.624·255/256)².
    """
    from engine.faces.landmarks import get_transform_mat, landmarks_68_3D

    lm = landmarks_68_3D[:, :2].astype(np.float32) * 2 + np.float32([300, 260])
    mat = get_transform_mat(lm, 256, "f")
    expected = (383.624 * 255 / 256) ** 2
    assert crop_area_in_frame(mat, 256) == pytest.approx(expected, rel=2e-5)
    side_limit = math.sqrt(expected / 4)  # rect side at which 4x rect area == crop area
    big = [0, 0, int(math.ceil(side_limit)) + 1, int(math.ceil(side_limit)) + 1]
    small = [0, 0, int(side_limit) - 1, int(side_limit) - 1]
    assert rect_area(big) == pytest.approx((big[2]) ** 2)
    assert not fails_area_check("f", mat, 256, big)
    assert fails_area_check("f", mat, 256, small)
    assert fails_area_check("full_face_no_align", get_transform_mat(lm, 256, "full_face_no_align"), 256, small)
    # DFL applies it only up to full_face_no_align: whole_face and head are never dropped
    assert not fails_area_check("wf", get_transform_mat(lm, 256, "wf"), 256, [0, 0, 1, 1])
    assert not fails_area_check("head", get_transform_mat(lm, 256, "head"), 256, [0, 0, 1, 1])
