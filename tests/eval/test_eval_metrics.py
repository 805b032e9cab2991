"""engine.eval.metrics against hand-computed values: identity statistics, calibration, landmarks, reconstruction."""

from __future__ import annotations

import numpy as np
import pytest

from engine.eval import metrics as M


def test_identity_metrics_hand_computed():
    c_src, c_dst = np.zeros(128), np.zeros(128)
    c_dst[0] = 1.0
    swaps = np.zeros((4, 128))
    swaps[0, 0] = 0.1  # near src: d_src 0.1, d_dst 0.9 -> identified
    swaps[1, 0] = 0.9  # near dst: d_src 0.9, d_dst 0.1
    swaps[2, 1] = 0.7  # nearer src than dst, but 0.7 > dlib's 0.6: not identified (open set)
    swaps[2, 0] = 0.0
    swaps[3, 0] = 0.4  # d_src 0.4, d_dst 0.6 -> identified
    own = np.zeros((4, 128))
    s, pf = M.identity_metrics(swaps, c_src, c_dst, own)
    d_src = np.array([0.1, 0.9, 0.7, 0.4])
    d_dst = np.array([0.9, 0.1, np.hypot(1.0, 0.7), 0.6])
    np.testing.assert_allclose(pf["d_src"], d_src)
    np.testing.assert_allclose(pf["d_dst"], d_dst)
    assert s["identity_retrieval"] == pytest.approx(0.5)  # faces 0 and 3
    assert s["identity_nearest_src"] == pytest.approx(0.75)
    assert s["identity_margin"] == pytest.approx(np.mean(d_dst - d_src))
    assert s["identity_dist_own_dst"] == pytest.approx(np.mean(d_src))  # own dst = origin = c_src here


def test_real_calibration_uses_leave_one_out_centroids():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.02, (5, 128))  # person A around 0 (each face ~0.23 from it)
    b = rng.normal(0, 0.02, (4, 128))
    b[:, 0] += 0.8  # person B 0.8 away
    cal = M.real_calibration(a, b)
    assert cal["real_identity_retrieval"] == 1.0 and cal["loo"]
    assert cal["no_swap_identity_retrieval"] == 0.0
    loo0 = np.linalg.norm(a[0] - a[1:].mean(0))  # face 0 against the others' centroid, by hand
    own = [np.linalg.norm(a[i] - np.delete(a, i, 0).mean(0)) for i in range(5)]
    assert own[0] == pytest.approx(loo0)
    assert cal["real_identity_dist_src"] == pytest.approx(np.mean(own))
    other = np.linalg.norm(a - b.mean(0), axis=1)
    assert cal["real_identity_margin"] == pytest.approx(np.mean(other - own))
    assert cal["real_centroid_distance"] == pytest.approx(np.linalg.norm(a.mean(0) - b.mean(0)))
    empty = M.real_calibration(a[:0], b)
    assert empty["real_identity_retrieval"] is None and empty["n_real_src"] == 0


def test_landmark_nme_zero_for_identical_and_scaled_by_interocular():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 100, (3, 68, 2))
    ref[:, 36], ref[:, 45] = [20.0, 50.0], [70.0, 50.0]  # inter-ocular 50
    out = M.landmark_nme(ref, ref)
    assert all(np.all(v == 0) for v in out.values())
    shifted = ref + np.array([3.0, 4.0])  # every point 5 px off
    np.testing.assert_allclose(M.landmark_nme(shifted, ref)["nme"], 5.0 / 50.0)
    np.testing.assert_allclose(M.landmark_nme(shifted, ref)["nme_mouth"], 0.1)


def test_recon_metrics_identical_is_zero_and_psnr_matches_hand_value():
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
    mask = np.ones((2, 64, 64, 1), np.float32)
    same = M.recon_metrics(img, img, mask)
    assert np.all(same["dssim"] == 0) and np.all(same["mse"] == 0) and np.all(same["psnr"] == M.PSNR_CAP)
    off = np.clip(img + 0.1, 0, 1)
    r = M.recon_metrics(off, img, mask)
    # full mask: the blurred mask is 1 except in the corners (the blur's zero padding), so the weighted mean is
    # the plain mean to within the corners' small weight difference
    expect = ((off - img) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(r["mse"], expect, rtol=1e-3)
    np.testing.assert_allclose(r["psnr"], 10 * np.log10(1 / expect), rtol=1e-4)
    assert np.all(r["dssim"] > 0)
    # outside the mask nothing counts
    half = mask.copy()
    half[:, :, 32:] = 0
    wrong_outside = img.copy()
    wrong_outside[:, :, 48:] = 0.0  # beyond the mask and its blur (sigma R//32 = 2)
    assert np.all(M.recon_metrics(wrong_outside, img, half)["mse"] < 1e-12)


def test_pose_angles_of_a_frontal_face_and_degenerate_points_never_raise():
    from engine.faces.landmarks import landmarks_68_3D

    lm = landmarks_68_3D[:, :2] * 2 + 128  # DFL's mean face seen from the front (orthographic)
    out = M.pose_angles(np.stack([lm, np.zeros((68, 2))]), 256)
    assert out.shape == (2, 2) and np.all(np.isfinite(out[0])) and abs(out[0, 1]) < 10
