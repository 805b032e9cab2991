"""Landmarks, face types, masks and pose against DFL's goldens (tests/golden/landmarks) and the §6.4 vector."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces import landmarks as L
from engine.faces import masks as M
from engine.faces.facetypes import FaceType
from engine.errors import DataError

GOLDEN = Path(__file__).parent.parent / "golden" / "landmarks"
SETS = ["landmarks_frontal", "landmarks_yaw20_roll15"]
FACE_TYPES = ["half_face", "midfull_face", "full_face", "full_face_no_align", "whole_face", "head", "head_no_align"]


@pytest.fixture(scope="module", params=SETS)
def gold(request):
    return np.load(GOLDEN / f"{request.param}.npz")


# ---------------------------------------------------------------------------------------------- face types


def test_face_type_names_and_ids():
    assert FaceType.parse("wf") is FaceType.WHOLE_FACE
    assert FaceType.parse("whole_face") is FaceType.WHOLE_FACE
    assert FaceType.parse(4) is FaceType.WHOLE_FACE
    assert FaceType.parse("HEAD") is FaceType.HEAD
    assert [FaceType.parse(s).long_name for s in ("h", "mf", "f", "wf", "head")] == ["half_face", "midfull_face", "full_face", "whole_face", "head"]
    assert FaceType.FULL_NO_ALIGN.short_name is None
    # DFL's ints (sidecar face_type_strings)
    assert {t.long_name: int(t) for t in FaceType if t is not FaceType.MARK_ONLY} == {
        "half_face": 0, "midfull_face": 1, "full_face": 2, "full_face_no_align": 3, "whole_face": 4, "head": 10, "head_no_align": 20}


def test_face_type_unknown_names_valid_options():
    with pytest.raises(DataError, match=r"unknown face type 'whole_fac'.*did you mean 'whole_face'.*valid:"):
        FaceType.parse("whole_fac")
    with pytest.raises(DataError, match="unknown face type 7"):
        FaceType.parse(7)


# ---------------------------------------------------------------------------------------------- constants


def test_mean_3d_face_matches_golden_landmark_generation():
    # Golden landmarks were generated from DFL's landmarks_68_3D (sidecar 'landmarks_generation'):
    # frontal = lm3d[:, :2]*1.5 + 256 exactly; yaw20_roll15 rotates the 3D points, so it also checks z.
    frontal = np.load(GOLDEN / "landmarks_frontal.npz")["landmarks"]
    assert np.abs(L.landmarks_68_3D[:, :2] * 1.5 + 256 - frontal).max() < 1e-4

    def rx(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    yaw, pitch, roll = np.deg2rad([20.0, 0.0, 15.0])
    r = rz(roll) @ rx(pitch) @ ry(yaw)
    noise = np.random.RandomState(1).normal(0, 0.5, (68, 2))
    expect = (L.landmarks_68_3D.astype(np.float64) @ r.T)[:, :2] * 1.3 + (240.0, 280.0) + noise
    rotated = np.load(GOLDEN / "landmarks_yaw20_roll15.npz")["landmarks"]
    assert np.abs(expect - rotated).max() < 1e-4


# ---------------------------------------------------------------------------------------------- transforms


@pytest.mark.parity
def test_umeyama_matches_golden(gold):
    lm = gold["landmarks"]
    mat = L.umeyama(np.concatenate([lm[17:49], lm[54:55]]), L.landmarks_2D_new, True)[0:2]
    # DFL ran on numpy 1.26's LAPACK; the SVD differs in the last float32 bits
    np.testing.assert_allclose(mat, gold["umeyama_mat"], rtol=0, atol=2e-7)


def _relerr(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parity
@pytest.mark.parametrize("face_type", FACE_TYPES)
def test_get_transform_mat_matches_golden(gold, face_type):
    lm = gold["landmarks"]
    for size in (128, 256, 512):
        mat = L.get_transform_mat(lm, size, face_type)
        assert mat.shape == (2, 3) and mat.dtype == np.float64
        # DFL's path is float32 (unit-square points through cv2.transform); tiny umeyama differences flip
        # float32 roundings, so agreement is ~2e-7 of the matrix scale, i.e. < 2e-4 px at 512.
        assert _relerr(mat[:, :2], gold[f"mat_{face_type}_{size}"][:, :2]) < 1e-6
        assert np.abs(mat[:, 2] - gold[f"mat_{face_type}_{size}"][:, 2]).max() < 5e-4
        pts = L.transform_points(lm, mat)
        assert pts.dtype == np.float32
        np.testing.assert_allclose(pts, gold[f"face_landmarks_{face_type}_{size}"], rtol=0, atol=5e-4)
        back = L.transform_points(pts, mat, invert=True)
        np.testing.assert_allclose(back, gold[f"inv_check_{face_type}_{size}"], rtol=0, atol=5e-4)
    scaled = L.get_transform_mat(lm, 256, face_type, scale=1.25)
    assert np.abs(scaled - gold[f"mat_{face_type}_256_scale1.25"]).max() < 5e-4


def test_short_names_and_inverse(gold):
    lm = gold["landmarks"]
    np.testing.assert_array_equal(L.get_transform_mat(lm, 256, "wf"), L.get_transform_mat(lm, 256, "whole_face"))
    np.testing.assert_array_equal(L.get_transform_mat(lm, 256, FaceType.HEAD), L.get_transform_mat(lm, 256, 10))
    m = L.get_transform_mat(lm, 256, "f")
    inv = L.get_inverse_transform_mat(lm, 256, "f")
    # composing the two 2x3 affines gives the identity
    full = np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]])
    np.testing.assert_allclose(full, np.eye(3), atol=1e-9)


def test_mark_only_and_bad_landmarks_raise():
    lm = L.landmarks_68_3D[:, :2] * 2 + (300, 260)
    with pytest.raises(DataError, match="mark_only.*no crop"):
        L.get_transform_mat(lm, 256, "mark_only")
    with pytest.raises(DataError, match=r"68 \[x, y\].*\(5, 2\)"):
        L.get_transform_mat(lm[:5], 256, "f")
    bad = lm.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        L.get_transform_mat(bad, 256, "f")


@pytest.mark.parity
def test_spec_6_4_test_vector():
    lm = L.landmarks_68_3D[:, :2] * 2 + (300, 260)
    expect = {
        "half_face": ([1.065437, -0.006610, -193.231068, 0.006610, 1.065437, -139.134991], 240.272),
        "midfull_face": ([0.894634, -0.005550, -141.733798, 0.005551, 0.894634, -96.309978], 286.145),
        "full_face": ([0.667307, -0.004140, -73.194266, 0.004140, 0.667307, -39.312651], 383.624),
        "whole_face": ([0.499883, -0.003101, -22.715717, 0.003101, 0.499883, 11.072916], 512.110),
        "head": ([0.357541, -0.002218, 20.300023, 0.002218, 0.357541, 81.308828], 715.988),
    }
    for ft, (m, side) in expect.items():
        mat = L.get_transform_mat(lm, 256, ft)
        np.testing.assert_allclose(mat.ravel()[[0, 1, 3, 4]], np.array(m)[[0, 1, 3, 4]], rtol=0, atol=2e-6)
        np.testing.assert_allclose(mat.ravel()[[2, 5]], np.array(m)[[2, 5]], rtol=0, atol=5e-5)
        assert abs(256 / math.hypot(mat[0, 0], mat[0, 1]) - side) < 1e-3


def test_crop_side_ratio_follows_padding():
    # docs/dfl.md §6.3: crop side = unit side * (1 + 2*sqrt(2)*p), for every face type with a crop
    lm = L.landmarks_68_3D[:, :2] * 2 + (300, 260)
    unit = 256 / math.hypot(*L.get_transform_mat(lm, 256, "half_face")[0, :2])
    for ft, p in [("midfull_face", 0.0675), ("full_face", 0.2109375), ("whole_face", 0.40), ("head", 0.70)]:
        side = 256 / math.hypot(*L.get_transform_mat(lm, 256, ft)[0, :2])
        assert abs(side / unit - (1 + 2 * math.sqrt(2) * p)) < 1e-5


@pytest.mark.parity
def test_estimate_averaged_yaw(gold):
    lm = gold["landmarks"]
    mat = L.umeyama(np.concatenate([lm[17:49], lm[54:55]]), L.landmarks_2D_new, True)[0:2]
    assert abs(L.estimate_averaged_yaw(L.transform_points(lm, mat)) - float(gold["estimate_averaged_yaw"])) < 1e-6


# ---------------------------------------------------------------------------------------------- masks


@pytest.mark.parity
def test_masks_match_golden_exactly(gold):
    lm = gold["landmarks"]
    np.testing.assert_array_equal(M.expand_eyebrows(lm), gold["expand_eyebrows_1"])
    for key, got in [
        ("hull_mask_512", M.get_image_hull_mask((512, 512, 3), lm)),
        ("hull_mask_512_ebm2", M.get_image_hull_mask((512, 512, 3), lm, 2.0)),
        ("eye_mask_512", M.get_image_eye_mask((512, 512, 3), lm)),
        ("mouth_mask_512", M.get_image_mouth_mask((512, 512, 3), lm)),
        ("hull_mask_face256_wf", M.get_image_hull_mask((256, 256, 3), gold["face_landmarks_whole_face_256"])),
        ("eye_mask_face256_wf", M.get_image_eye_mask((256, 256, 3), gold["face_landmarks_whole_face_256"])),
        ("mouth_mask_face256_wf", M.get_image_mouth_mask((256, 256, 3), gold["face_landmarks_whole_face_256"])),
        ("hull_mask_face128_f", M.get_image_hull_mask((128, 128, 3), gold["face_landmarks_full_face_128"])),
    ]:
        assert got.dtype == np.float32 and got.shape == gold[key].shape, key
        np.testing.assert_array_equal(got, gold[key], err_msg=key)


def test_landmark_truncation_quirk():
    # §12.14: landmarks are truncated to int before drawing, so moving every point by +0.9 px changes
    # nothing, while +1.0 px shifts the mask by one pixel.
    lm = np.load(GOLDEN / "landmarks_frontal.npz")["landmarks"].astype(np.float64)
    base = np.floor(lm)  # whole-pixel landmarks, so +0.9 stays in the same integer cell
    a = M.get_image_hull_mask((512, 512), base)
    b = M.get_image_hull_mask((512, 512), base + 0.9)
    c = M.get_image_hull_mask((512, 512), base + 1.0)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:-1, :-1], c[1:, 1:])


def test_eye_mask_needs_32_px():
    lm = L.landmarks_68_3D[:, :2] * 0.1 + 8
    with pytest.raises(DataError, match="at least 32 px tall.*got height 16"):
        M.get_image_eye_mask((16, 16), lm)


def test_eyes_mouth_mask_is_product_with_binarised_full_mask():
    lm = np.load(GOLDEN / "landmarks_frontal.npz")["landmarks"]
    eye = M.get_image_eye_mask((512, 512), lm)
    mouth = M.get_image_mouth_mask((512, 512), lm)
    full = np.zeros((512, 512, 1), np.float32)
    full[:, :256] = 0.25  # any nonzero value counts as inside (binarised)
    em = M.get_eyes_mouth_mask((512, 512), lm, full)
    np.testing.assert_array_equal(em[:, 256:], 0)
    np.testing.assert_allclose(em[:, :256], np.clip(eye + mouth, 0, 1)[:, :256])
    assert em.max() > 0.99


# ---------------------------------------------------------------------------------------------- pose


def _euler(pitch, yaw, roll):
    def rx(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])

    def ry(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])

    def rz(a):
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])

    return rz(roll) @ ry(yaw) @ rx(pitch)


@pytest.mark.parametrize("x,y,z", [(0.0, 0.3, 0.0), (0.2, 0.0, 0.0), (0.0, 0.0, -0.25), (0.15, -0.35, 0.1)])
def test_pitch_yaw_roll_recovers_projected_pose(x, y, z):
    # Independent expectation: project the 3D mean face with R = Rz(z)·Ry(y)·Rx(x) through the same
    # pinhole camera (f = size, centre size/2); §6.6 returns (-x, y, z).
    size = 256
    r = _euler(x, y, z)
    k = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], dtype=np.float64)
    rvec = cv2.Rodrigues(r)[0]
    pts, _ = cv2.projectPoints(L.landmarks_68_3D.astype(np.float64), rvec, np.array([0.0, 0.0, 600.0]), k, np.zeros(4))
    pitch, yaw, roll = L.estimate_pitch_yaw_roll(pts[:, 0, :], size)
    np.testing.assert_allclose([pitch, yaw, roll], [-x, y, z], atol=1e-4)


def test_pose_angles_are_clipped():
    lm = np.load(GOLDEN / "landmarks_frontal.npz")["face_landmarks_whole_face_256"]
    out = L.estimate_pitch_yaw_roll(lm, 256)
    assert all(abs(a) <= math.pi / 2 for a in out)
