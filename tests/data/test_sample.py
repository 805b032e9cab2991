"""SampleProcessor "dfl" mode (engine.data.sample): DFL parity, RNG protocol, masks, HSV, options."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthetic_faces import synthetic_face

from engine.faces.facetypes import FaceType
from engine.data.hsv import HSVShift, apply_hsv_shift, draw_hsv_shift
from engine.faces.landmarks import get_transform_mat, transform_points
from engine.faces.masks import get_image_hull_mask
from engine.faces.faceset import FaceData
from engine.data.sample import (
    SampleOptions,
    draw_augmentation,
    full_face_mask,
    process_dfl,
    sample_rngs,
)
from engine.errors import DataError

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "sample"
NO_AFFINE = dict(rotation_range=(0, 0), scale_range=(0, 0), tx_range=(0, 0), ty_range=(0, 0))


def _golden(name: str) -> tuple[dict, dict]:
    d = np.load(GOLDEN / f"{name}.npz")
    return {k: d[k] for k in d}, json.loads((GOLDEN / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def face256() -> FaceData:
    img, lm = synthetic_face(np.random.default_rng(3), size=256, face_type="wf")
    return FaceData(image=img, landmarks=lm, face_type=FaceType.WHOLE_FACE, name="synthetic")


# ------------------------------------------------------------------------------------------ golden parity


@pytest.mark.opencv4_numerics
@pytest.mark.parity
@pytest.mark.parametrize("seed", [0, 1])
def test_outputs_match_dfl_warp_golden(seed):
    """DFL SampleProcessor at R = 64 (SAEHD ranges, flip on) on the recorded warp input, with the recorded
    mask as the sample's XSeg mask: outputs 0, 1, 2 are DFL's warp_by_params calls on RandomState(seed)."""
    g, side = _golden(f"warp_res64_saehd_ranges_seed{seed}_flip1")
    face = FaceData(image=g["image"], landmarks=np.full((68, 2), 32.0), face_type="full_face", xseg_mask=g["mask"])
    opts = SampleOptions(resolution=64, face_type="f", random_warp=True, random_flip=True)
    out = process_dfl(face, seed, opts)
    np.testing.assert_array_equal(out.warped, np.clip(g["out_w1_t1_b1_cubic"], 0, 1))
    np.testing.assert_array_equal(out.target, np.clip(g["out_w0_t1_b1_cubic"], 0, 1))
    np.testing.assert_array_equal(out.mask, g["out_w0_t1_b0_mask_linear"])
    assert out.warped.dtype == out.mask.dtype == np.float32


@pytest.mark.parity
@pytest.mark.parametrize("seed", [0, 1])
def test_rng_protocol_draws_match_golden(seed):
    """Fresh RandomState(seed) for both states (§5.2): the recorded rotation/scale/tx/ty/cell/flip draws."""
    g, _ = _golden(f"warp_res64_saehd_ranges_seed{seed}_flip1")
    params, hsv = draw_augmentation(seed, SampleOptions(resolution=64, face_type="f", random_flip=True))
    assert hsv is None
    np.testing.assert_array_equal(params["rmat"], g["rmat"])
    np.testing.assert_array_equal(params["mapx"], g["mapx"])
    assert params["flip"] == bool(g["flip"])


@pytest.mark.opencv4_numerics
@pytest.mark.parity
@pytest.mark.parametrize("mode,atol", [("rct", 0), ("lct", 1e-6), ("mkl", 0), ("idt", 0), ("sot", 1e-5)])
def test_ct_matches_sampleprocessor_golden(mode, atol):
    """SampleProcessor's ct call (§5.4 step 2): 128² src face cubic-resized to R=64, dst reference linear-
    resized to 64, global RNG seeded 777 (ct_rng=RandomState(777)). With an identity affine and no warp,
    output 0 is clip(golden)."""
    g, _ = _golden("sampleprocessor_ct")
    face = FaceData(image=g["target"], landmarks=np.full((68, 2), 64.0), face_type="f",
                    xseg_mask=np.ones((128, 128, 1), np.float32))
    opts = SampleOptions(resolution=64, face_type="f", random_warp=False, ct_mode=mode, **NO_AFFINE)
    out = process_dfl(face, 5, opts, ct_image=g["source"], ct_rng=np.random.RandomState(777))
    expect = np.clip(g[f"sp_{mode}"], 0, 1)
    np.testing.assert_allclose(out.warped, expect, rtol=0, atol=atol)
    if mode in ("idt", "sot"):
        # DFL draws from its global RNG again for output 1, so the target gets a different transfer.
        assert np.abs(out.target - expect).max() > 1e-3
    else:
        np.testing.assert_allclose(out.target, expect, rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------ RNG protocol


def test_sample_rngs_mirror_dfl_worker_stream():
    """seed = first randint(2**31) of RandomState(key); the returned RNG continues that stream."""
    seed, rng = sample_rngs(12345)
    ref = np.random.RandomState(12345)
    assert seed == ref.randint(0x80000000)
    assert rng.random() == ref.random()


def test_hsv_draws_follow_the_warp_draws():
    """Output 0's HSV draws come from rnd_state right after rotation, scale, tx, ty and the flip draw."""
    seed, power = 77, 0.3
    params, hsv = draw_augmentation(seed, SampleOptions(resolution=64, face_type="f", random_flip=True,
                                                        random_hsv_power=power))
    rs = np.random.RandomState(seed)
    rs.uniform(-10, 10), rs.uniform(1 / 1.15, 1.15), rs.uniform(-0.05, 0.05), rs.uniform(-0.05, 0.05)
    rs.randint(10)
    h = 54  # max(1, int(360 * 0.3 * 0.5))
    assert hsv == HSVShift(int(rs.randint(-h, h + 1)), (rs.random() - 0.5) * power, (rs.random() - 0.5) * power)
    # without random flip the flip draw is skipped (short-circuit), shifting the HSV draws
    _, hsv_noflip = draw_augmentation(seed, SampleOptions(resolution=64, face_type="f", random_hsv_power=power))
    assert hsv_noflip != hsv


def test_hsv_amount_range():
    shifts = [draw_hsv_shift(np.random.RandomState(s), 0.1) for s in range(300)]
    assert {x.dh for x in shifts} <= set(range(-18, 19)) and max(abs(x.dh) for x in shifts) == 18
    assert all(abs(x.ds) <= 0.05 and abs(x.dv) <= 0.05 for x in shifts)


def test_hsv_shift_against_colorsys():
    """cv2's float HSV (H in degrees) shift, checked pixel by pixel with Python's colorsys."""
    rng = np.random.default_rng(0)
    img = rng.uniform(0.05, 0.95, (4, 5, 3)).astype(np.float32)
    shift = HSVShift(dh=-40, ds=0.12, dv=-0.07)
    out = apply_hsv_shift(img, shift)
    for y in range(4):
        for x in range(5):
            b, g, r = img[y, x]
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            h = ((h * 360 + shift.dh) % 360) / 360
            s, v = min(max(s + shift.ds, 0), 1), min(max(v + shift.dv, 0), 1)
            r2, g2, b2 = colorsys.hsv_to_rgb(h, s, v)
            np.testing.assert_allclose(out[y, x], [b2, g2, r2], atol=2e-5)


# ------------------------------------------------------------------------------------------ shared augmentation, masks


def test_all_outputs_share_affine_and_flip(face256):
    """§12.8: with an XSeg mask equal to the image's first channel, the mask output is the image's first
    channel warped the same way (linear vs cubic only), flipped or not alike."""
    img_f = face256.image.astype(np.float32) / 255
    face = FaceData(image=face256.image, landmarks=face256.landmarks, face_type="wf", xseg_mask=img_f[..., :1])
    opts = SampleOptions(resolution=128, face_type="wf", random_warp=True, random_flip=True)
    flips = []
    for seed in range(6):
        out = process_dfl(face, seed, opts)
        flips.append(draw_augmentation(seed, opts)[0]["flip"])
        diff = np.abs(out.target[..., :1] - out.mask)
        assert np.median(diff) < 0.01  # same geometry; a different flip or affine would be far off
        assert np.median(np.abs(out.target[..., :1] - out.mask[:, ::-1])) > 0.02
    assert any(flips) and not all(flips)


def test_xseg_mask_replaces_hull(face256):
    hull = get_image_hull_mask(face256.image.shape, face256.landmarks)
    opts = SampleOptions(resolution=64, face_type="f", random_flip=True)
    plain = process_dfl(face256, 9, opts)
    as_xseg = process_dfl(FaceData(image=face256.image, landmarks=face256.landmarks, face_type="wf", xseg_mask=hull), 9, opts)
    np.testing.assert_array_equal(plain.mask, as_xseg.mask)
    np.testing.assert_array_equal(plain.mask_em, as_xseg.mask_em)
    # a 128² all-ones XSeg mask on the 256² image: cubic upsizing keeps it 1, so the mask is the warp of 1s
    ones = FaceData(image=face256.image, landmarks=face256.landmarks, face_type="wf", xseg_mask=np.ones((128, 128, 1), np.float32))
    np.testing.assert_allclose(full_face_mask(ones), 1.0, atol=1e-6)
    m = process_dfl(ones, 9, opts).mask
    assert m.max() == pytest.approx(1.0) and not np.array_equal(m, plain.mask)


def test_eyes_mouth_mask_peak_and_location(face256):
    """EYES_MOUTH peaks at 1 after warping and sits on the eyes/mouth the face-type conversion maps to."""
    opts = SampleOptions(resolution=128, face_type="f", random_warp=False, **NO_AFFINE)
    out = process_dfl(face256, 0, opts)
    assert out.mask_em.max() == pytest.approx(1.0)
    lm = transform_points(face256.landmarks, get_transform_mat(face256.landmarks, 128, "f"))
    for idx in (np.r_[36:42], np.r_[42:48], np.r_[60:68]):
        x, y = np.round(lm[idx].mean(0)).astype(int)
        assert out.mask_em[y, x, 0] > 0.5, f"no eye/mouth mask at landmarks {idx[0]}..{idx[-1]}"
    assert out.mask_em[5, 5, 0] == 0 and out.mask[64, 64, 0] == 1


def test_face_type_conversion_puts_landmarks_in_place(face256):
    """wf sample -> f model: the target is the get_transform_mat crop; the mouth drawn on the synthetic
    face (dark inner lips) ends up at the transformed inner-lip landmarks."""
    opts = SampleOptions(resolution=128, face_type="f", random_warp=False, **NO_AFFINE)
    out = process_dfl(face256, 0, opts)
    lm = transform_points(face256.landmarks, get_transform_mat(face256.landmarks, 128, "f"))
    x, y = np.round(lm[60:68].mean(0)).astype(int)
    assert out.target[y, x].max() < 0.3  # inner mouth colour (40, 30, 60)/255
    # same face type and size: the target is the decoded image itself
    same = SampleOptions(resolution=256, face_type="wf", random_warp=False, **NO_AFFINE)
    np.testing.assert_array_equal(process_dfl(face256, 0, same).target, face256.image.astype(np.float32) / 255)


def test_pretrain_forcing():
    o = SampleOptions(resolution=64, face_type="wf", random_warp=True, random_flip=False, random_hsv_power=0.2,
                      ct_mode="rct").for_pretrain()
    assert (o.random_warp, o.random_flip, o.random_hsv_power, o.ct_mode) == (False, True, 0.0, None)


def test_bad_options_raise():
    with pytest.raises(DataError, match="ct_mode = 'rtc'.*did you mean 'rct'"):
        SampleOptions(resolution=64, face_type="f", ct_mode="rtc")
    with pytest.raises(DataError, match="unknown face type 'ff'"):
        SampleOptions(resolution=64, face_type="ff")
    with pytest.raises(DataError, match="SAEHD trains"):
        SampleOptions(resolution=64, face_type="full_face_no_align")


# ------------------------------------------------------------------------------------------ properties


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), ct=st.sampled_from([None, "rct", "lct", "mkl", "idt", "sot"]),
       hsv=st.sampled_from([0.0, 0.3]), warp=st.booleans(), flip=st.booleans(),
       ft=st.sampled_from(["h", "f", "wf", "head"]))
def test_outputs_shape_dtype_range(face256, seed, ct, hsv, warp, flip, ft):
    opts = SampleOptions(resolution=64, face_type=ft, random_warp=warp, random_flip=flip, random_hsv_power=hsv, ct_mode=ct)
    ref_img, _ = synthetic_face(np.random.default_rng(seed % 7), size=128, face_type="wf")
    out = process_dfl(face256, seed, opts, ct_image=ref_img, ct_rng=np.random.RandomState(seed))
    for a, c in ((out.warped, 3), (out.target, 3), (out.mask, 1), (out.mask_em, 1)):
        assert a.shape == (64, 64, c) and a.dtype == np.float32
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert out.mask_em.max() in (0.0, pytest.approx(1.0))
