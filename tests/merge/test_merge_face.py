"""engine.merge.face and engine.merge.config beyond the golden cases: properties (identity when the swapped
face is the dst face itself, outputs in range, untouched pixels outside the mask, faceless frames
unchanged), hand-computed mask processing, compositing and filters, mask-mode selection incl. XSeg, and
the configuration errors a user can reach."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.faces.landmarks import landmarks_68_3D, transform_points
from engine.faces.masks import get_image_hull_mask
from engine.errors import TorchSAEError
from engine.errors import RecipeErrors
from engine.faces.facetypes import FaceType
from engine.merge.config import (CT_MODES, MASK_MODES, MODES, color_transfer_id, mask_mode_id, merge_face_type,
                                 needs_xseg, with_flags)
from engine.merge.face import (Prediction, blursharpen, composite_faces, dst_face_crop, face_geometry,
                               linear_motion_blur, merge_face, merge_frame, predict_face, predictor_input,
                               process_work_mask, reduce_colors, seamless_mask)
from engine.recipe.specs import MergeSpec

R = 64
H, W = 160, 200
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def smooth_frame(seed: int) -> np.ndarray:
    """A low-frequency uint8-valued float frame (cubic warps there and back nearly invert each other)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.random((4, 5, 3)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def landmarks_at(cx: float, cy: float, s: float) -> np.ndarray:
    return (landmarks_68_3D[:, :2] * s + np.array([cx, cy])).astype(np.float32)


def disc(size: int = R, radius: float = 0.4) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    return (((yy - c) ** 2 + (xx - c) ** 2) < (radius * size) ** 2).astype(np.float32)


def crop_inside(lm: np.ndarray, margin: int = 3) -> bool:
    g = face_geometry(lm, R, "f")
    c = transform_points(np.float32([[0, 0], [R, 0], [R, R], [0, R]]), g.face_mat, True)
    return c.min() >= margin and c[:, 0].max() <= W - 1 - margin and c[:, 1].max() <= H - 1 - margin


def settings(face_type="f", **flags) -> tuple[MergeSpec, FaceType]:
    """(the [merge] settings with `flags`, modes by name or DFL id; the crop's face type)."""
    return with_flags(MergeSpec(), flags), merge_face_type(face_type)


def self_prediction(img, lm, mask) -> Prediction:
    """The dst face itself as the 'swap', with the given learned masks."""
    x = predictor_input(dst_face_crop(img, face_geometry(lm, R, "f")), R)
    return Prediction(face=x, prd_mask=mask, dst_mask=mask)


# the post-processing options of step 10.7/10.8, one at a time
POST = [{}, {"blursharpen_amount": 40, "sharpen_mode": 1}, {"blursharpen_amount": 100, "sharpen_mode": 2},
        {"blursharpen_amount": -25}, {"image_denoise_power": 150}, {"bicubic_degrade_power": 60},
        {"color_degrade_power": 70}, {"motion_blur_power": 80}]
FRAME_WIDE = ("image_denoise_power", "bicubic_degrade_power", "color_degrade_power")  # these change the whole frame

face_params = st.tuples(st.floats(85, 115), st.floats(70, 90), st.floats(0.35, 0.6))


@SETTINGS
@given(seed=st.integers(0, 10_000), face=face_params, erode=st.integers(-10, 40), blur=st.integers(0, 60),
       case=st.sampled_from([("overlay", "none"), ("overlay", "rct"), ("overlay", "lct"), ("overlay", "mkl"),
                             ("hist-match", "none"), ("seamless", "none"), ("seamless", "rct"),
                             ("seamless-hist-match", "none")]))
def test_identity_when_the_swap_is_the_dst_face(seed, face, erode, blur, case):
    """Equal source/target statistics: colour transfer, hist-match (whole image, threshold 255) and the
    blend change nothing beyond the cubic warp round trip (< 0.02 on a smooth frame)."""
    lm = landmarks_at(*face)
    assert crop_inside(lm)  # the strategy keeps the crop inside the frame (edges would see the zero border)
    img = smooth_frame(seed)
    cfg = settings(mode=case[0], color_transfer=case[1], mask_mode="learned-prd", erode=erode, blur=blur,
                   hist_match_threshold=255, masked_hist_match=False)
    out, mask = merge_face(img, lm, *cfg, self_prediction(img, lm, disc()))
    assert mask.max() > 0.5  # the face really was blended in
    assert np.abs(out - img).max() < 0.02


@SETTINGS
@given(seed=st.integers(0, 10_000), face=st.tuples(st.floats(40, 160), st.floats(30, 130), st.floats(0.3, 0.9)),
       mode=st.sampled_from(MODES), mask_mode=st.integers(0, 5),
       ct=st.sampled_from(["none", "rct", "lct", "mkl", "mkl-m", "idt-m", "sot-m", "mix-m"]),
       erode=st.integers(-60, 60), blur=st.integers(0, 80), scale=st.integers(-50, 50),
       extra=st.sampled_from(POST))
def test_outputs_stay_in_range_and_outside_the_mask_is_the_frame(seed, face, mode, mask_mode, ct, erode, blur, scale,
                                                                  extra):
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, 256, (H, W, 3)) / 255).astype(np.float32)  # rough frame, faces may leave it
    lm = landmarks_at(*face)
    pred = Prediction(face=rng.uniform(-0.2, 1.2, (R, R, 3)).astype(np.float32),
                      prd_mask=rng.uniform(-0.1, 1.1, (R, R)).astype(np.float32), dst_mask=disc())
    cfg = settings(mode=mode, mask_mode=mask_mode, color_transfer=ct, erode=erode, blur=blur, output_face_scale=scale,
                   **extra)
    out, mask = merge_face(img, lm, *cfg, pred, motion=(12.0, 30.0), rng=np.random.RandomState(seed))
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if mode == "raw-predict":  # DFL returns the face-space work mask with its cubic-resize ringing, unclipped
        assert out.shape == (R, R, 3) and mask.shape == (R, R, 1) and -0.15 < mask.min() and mask.max() < 1.15
        return
    assert mask.min() >= 0 and mask.max() <= 1 and mask.shape[-1] == 1
    assert out.shape == img.shape and mask.shape == (H, W, 1)
    frame_changes = mode != "original" and any(k in extra for k in FRAME_WIDE)
    if mode != "raw-rgb" and not frame_changes:
        outside = mask[..., 0] == 0
        np.testing.assert_array_equal(out[outside], img[outside])
    merged = composite_faces(img, [(out, mask)])
    assert merged.dtype == np.uint8 and merged.shape == (H, W, 4)


@SETTINGS
@given(seed=st.integers(0, 10_000), h=st.integers(8, 60), w=st.integers(8, 60))
def test_frames_without_faces_are_unchanged(seed, h, w):
    frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    out = merge_frame(frame, [], MergeSpec(), FaceType.FULL)
    np.testing.assert_array_equal(out[..., :3], frame)
    assert not out[..., 3].any()


def test_original_mode_returns_the_frame_and_the_face_mask():
    img = smooth_frame(3)
    lm = landmarks_at(100, 80, 0.5)
    out, mask = merge_face(img, lm, *settings(mode="original", mask_mode="full"), self_prediction(img, lm, disc()))
    assert out is img and mask.max() == 1.0 and mask[0, 0, 0] == 0


def test_composite_is_dfl_alpha_over_in_order():
    img = np.zeros((2, 2, 3), np.float32)
    a = (np.full((2, 2, 3), 0.8, np.float32), np.array([[1.0, 0.5], [0.0, 0.25]], np.float32)[..., None])
    b = (np.full((2, 2, 3), 0.2, np.float32), np.array([[0.5, 0.5], [1.0, 0.0]], np.float32)[..., None])
    got = composite_faces(img, [a, b])
    # final = a_out*(1-mb) + b_out*mb; mask = clip(ma + mb); then (x*255) truncated
    want_rgb = 0.8 * (1 - b[1]) + 0.2 * b[1]
    want_m = np.clip(a[1] + b[1], 0, 1)
    want = np.concatenate([np.broadcast_to(want_rgb, (2, 2, 3)), want_m], -1)
    np.testing.assert_array_equal(got, (want * 255).astype(np.uint8))
    assert got[0, 0, 0] == int(0.5 * 255) and got[1, 0, 3] == 255 and got[1, 1, 3] == int(0.25 * 255)


def test_process_work_mask_erode_dilate_and_border():
    r = 16
    ones = np.ones((4 * r, 4 * r), np.float32)
    np.testing.assert_array_equal(process_work_mask(ones, r, 0, 0), ones)  # no-op at erode 0, blur 0
    er = process_work_mask(ones, r, 9, 0)  # 9x9 ellipse: 4 px eaten from the zero-padded edge
    assert er[4:-4, 4:-4].min() == 1 and er[:4].max() == 0 and er[:, -4:].max() == 0
    sq = np.zeros((4 * r, 4 * r), np.float32)
    sq[20:40, 20:40] = 1
    dil = process_work_mask(sq, r, -7, 0)  # 7x7 ellipse grows the square by 3 px (not at the corners)
    assert dil[17:43, 30].min() == 1 and dil[16, 30] == 0 and dil[30, 17:43].min() == 1
    bl = process_work_mask(ones, r, 0, 20)  # border of blur//2 = 10 px zeroed, then a 21 px Gaussian
    assert bl[32, 32] == pytest.approx(1.0) and bl[0, 32] < 0.05 and 0 < bl[10, 32] < 1
    np.testing.assert_allclose(bl, bl[::-1, ::-1], atol=1e-6)


def test_seamless_mask_threshold_is_the_first_non_empty_tenth():
    m = np.array([[0.05, 0.15], [0.35, 0.0]], np.float32)[..., None]
    np.testing.assert_array_equal(seamless_mask(m)[..., 0], [[0, 1], [1, 0]])
    assert seamless_mask(np.full((2, 2, 1), 0.1, np.float32)) is None


@pytest.mark.parametrize("mask_mode", range(10))
def test_mask_modes_select_dfls_combination(mask_mode):
    img = smooth_frame(7)
    lm = landmarks_at(100, 80, 0.5)
    rng = np.random.default_rng(mask_mode)
    p, d = rng.random((R, R)).astype(np.float32), rng.random((R, R)).astype(np.float32)
    xp, xd = rng.random((256, 256, 1)).astype(np.float32), rng.random((256, 256, 1)).astype(np.float32)
    cfg = settings(mode="raw-predict", mask_mode=mask_mode)
    pred = Prediction(face=np.zeros((R, R, 3), np.float32), prd_mask=p, dst_mask=d, xseg_prd=xp, xseg_dst=xd)
    _, wrk = merge_face(img, lm, *cfg, pred)
    xs = lambda m: cv2.resize(m[..., 0], (R, R), interpolation=cv2.INTER_CUBIC)  # noqa: E731
    hull = cv2.warpAffine(get_image_hull_mask(img.shape, lm), face_geometry(lm, R, "f").face_mat, (R, R),
                          flags=cv2.INTER_CUBIC)
    want = [np.ones((R, R), np.float32), np.clip(hull, 0, 1), p, d, p * d, np.clip(p + d, 0, 1), xs(xp), xs(xd),
            xs(xp) * xs(xd), p * d * xs(xp) * xs(xd)][mask_mode]
    want = want.copy()
    want[want < 1 / 255] = 0
    # raw modes skip step 8: the work mask goes to 4R and back with cubic resizes only
    want = cv2.resize(cv2.resize(want, (4 * R, 4 * R), interpolation=cv2.INTER_CUBIC), (R, R), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_allclose(wrk[..., 0], want, rtol=0, atol=1e-6)


def test_xseg_modes_need_the_xseg_masks():
    img = smooth_frame(1)
    lm = landmarks_at(100, 80, 0.5)
    cfg = settings(mask_mode="XSeg-dst")
    with pytest.raises(TorchSAEError, match="XSeg-dst mask.*--xseg-model"):
        merge_face(img, lm, *cfg, self_prediction(img, lm, disc()))
    predictor = lambda x: (x, np.ones(x.shape[:3] + (1,), np.float32), np.ones(x.shape[:3] + (1,), np.float32))  # noqa: E731
    with pytest.raises(TorchSAEError, match="needs an XSeg model"):
        predict_face(img, lm, *cfg, R, predictor)
    seen = []
    fake_xseg = lambda x: (seen.append(x.shape), np.ones(x.shape[:3] + (1,), np.float32))[1]  # noqa: E731
    pred = predict_face(img, lm, *settings(mask_mode=9), R, predictor, fake_xseg)
    assert seen == [(1, 256, 256, 3), (1, 256, 256, 3)] and pred.xseg_prd.shape == (256, 256, 1)
    # XSeg masks of ones make mode 8 equal to mode 0 (full)
    a, _ = merge_face(img, lm, *settings(mask_mode=8, erode=10), pred)
    b, _ = merge_face(img, lm, *settings(mask_mode=0, erode=10), pred)
    np.testing.assert_array_equal(a, b)


def test_filters_hand_computed():
    img = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    # box sharpen: delta + (delta - box)*a
    k = np.zeros((3, 3), np.float32)
    k[1, 1] = 1
    box = np.full((3, 3), 1 / 9, np.float32)
    np.testing.assert_allclose(blursharpen(img, 1, 3, 2), cv2.filter2D(img, -1, k + (k - box) * 2), atol=1e-6)
    # blur 15: one full median pass, then a half-weighted one
    m1 = cv2.medianBlur(img, 5)
    np.testing.assert_allclose(blursharpen(img, 0, 3, -15), m1 * 0.5 + cv2.medianBlur(m1, 5) * 0.5, atol=1e-6)
    assert blursharpen(img, 0, 3, 30) is img  # sharpen mode none
    # motion blur at angle 0 is a horizontal box of `size` taps
    one = np.zeros((9, 9), np.float32)
    one[4, 4] = 1
    mb = linear_motion_blur(one, 3, 0)
    np.testing.assert_allclose(mb[4, 3:6], 1 / 3, atol=1e-6)
    assert mb.sum() == pytest.approx(1.0) and mb[3].max() == 0
    # 256-colour reduction of an image with <= 256 colours is lossless
    few = (np.random.default_rng(1).integers(0, 8, (16, 16, 3)) * 32 / 255.0).astype(np.float32)
    np.testing.assert_allclose(reduce_colors(few, 256), few, atol=1e-6)


def test_settings_are_the_merge_table_with_dfls_ids():
    spec = MergeSpec()
    assert (spec.mode, mask_mode_id(spec), color_transfer_id(spec), spec.hist_match_threshold, spec.masked_hist_match) \
        == ("overlay", 4, 1, 238, True)  # DFL's MergerConfigMasked defaults (§10.3)
    spec = with_flags(MergeSpec(), {"erode": 20, "mode": "seamless", "mask_mode": "7", "blur": None})
    assert (spec.erode, spec.mode, spec.mask_mode, spec.blur) == (20, "seamless", "XSeg-dst", 0)
    assert needs_xseg(spec) and merge_face_type("wf").long_name == "whole_face"
    assert with_flags(MergeSpec(), {"color_transfer": "MKL-m"}).color_transfer == "mkl-m"
    assert [mask_mode_id(with_flags(MergeSpec(), {"mask_mode": n})) for n in MASK_MODES] == list(range(10))
    assert [with_flags(MergeSpec(), {"color_transfer": i}).color_transfer for i in range(9)] == list(CT_MODES)


@pytest.mark.parametrize("flags, message", [
    ({"super_resolution_power": 50}, r"'super_resolution_power' = 50 is out of range \(valid: 0 only: .*FaceEnhancer"),
    ({"erode": 500}, r"'erode' = 500 is out of range \(valid: -400..400\)"),
    ({"mode": "seamles"}, "did you mean 'seamless'"),
    ({"mask_mode": 10}, r"'mask_mode' = '10' is not allowed \(valid: full, dst, "),
    ({"blurr": 3}, "unknown key 'blurr' — did you mean 'blur'"),
])
def test_bad_settings_are_named(flags, message):
    with pytest.raises(RecipeErrors, match=message):
        with_flags(MergeSpec(), flags, source="merge flags")


def test_a_mark_only_crop_is_refused():
    with pytest.raises(TorchSAEError, match="mark_only"):
        merge_face_type("mark_only")


def test_motion_vectors_from_neighbouring_frames():
    from engine.merge.sources import motion_vectors

    right = [[landmarks_at(80 + 5 * i, 80, 0.5)] for i in range(4)]  # 5 px/frame to the right
    mv = motion_vectors(right)
    # central difference next - prev (the first/last frame use themselves as prev/next), angle -atan2(dy, dx)
    np.testing.assert_allclose([p for p, _ in mv], [5, 10, 10, 5], atol=0.05)
    np.testing.assert_allclose([d for _, d in mv], 0, atol=0.5)
    down = motion_vectors([[landmarks_at(100, 60 + 4 * i, 0.5)] for i in range(3)])
    assert down[1][0] == pytest.approx(8, abs=0.05) and down[1][1] == pytest.approx(-90, abs=0.5)
    gap = motion_vectors([right[0], [], right[2], right[3]])
    assert gap[0] == gap[1] == gap[2] == (0.0, 0.0) and gap[3][0] == pytest.approx(5, abs=0.05)
    assert motion_vectors([right[0], right[1] * 2, right[2]]) == [(0.0, 0.0)] * 3  # several faces: off, as DFL
