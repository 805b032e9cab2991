"""engine.data.device_color (the device pipeline's HSV and colour transfers) against the numpy/OpenCV oracles
of engine.data.hsv / engine.faces.color_transfer, on the same draws.

Bounds (BGR values in [0, 1]), from the differences listed in device_color's docstring:
- HSV conversions and the shift: float rounding (≤ 1e-4 on H in degrees, ≤ 1e-5 after the shift).
- rct: OpenCV's float BGR→LAB interpolates a 33³ table (up to ~0.6 a/b units off at dark colours); the
  torch op uses the exact formula. Statistics match: per-image channel means and stds within 2e-3,
  mean |Δ| ≤ 2e-3; single dark pixels differ by up to ~0.04.
- lct, mkl: float rounding (≤ 1e-4 / 1e-3).
- idt: same rotations, float32 interpolation: mean |Δ| ≤ 1e-5, 99th percentile ≤ 1e-4.
- sot: same directions; the bilateral regularisation without its colour term: mean |Δ| ≤ 5e-4.
Plus batch independence (each image its own statistics) and the Haar law of the idt rotations.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.stats import special_ortho_group
from synthetic_faces import synthetic_face

from engine.data import device_color as dc
from engine.data.hsv import HSVShift, apply_hsv_shift
from engine.faces import color_transfer as ct


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(0)
    imgs = [cv2.resize(synthetic_face(rng, 192)[0], (96, 96)).astype(np.float32) / 255 for _ in range(3)]
    refs = [cv2.resize(synthetic_face(rng, 192)[0], (96, 96)).astype(np.float32) / 255 for _ in range(3)]
    return imgs, refs


def _t(a) -> torch.Tensor:
    return torch.from_numpy(np.stack(a).transpose(0, 3, 1, 2).copy())


def _h(t: torch.Tensor) -> np.ndarray:
    return t.numpy().transpose(0, 2, 3, 1)


def _close(got: np.ndarray, want: np.ndarray, *, mean: float, p99: float | None = None, mx: float | None = None,
           what: str = "") -> None:
    e = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    msg = f"{what}: mean {e.mean():.3g} p99 {np.percentile(e, 99):.3g} max {e.max():.3g}"
    assert e.mean() <= mean, msg
    if p99 is not None:
        assert np.percentile(e, 99) <= p99, msg
    if mx is not None:
        assert e.max() <= mx, msg


def test_hsv_conversions_and_shift_match_opencv(pair):
    imgs, _ = pair
    x = _t(imgs)
    want = np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2HSV) for i in imgs])
    _close(_h(dc.bgr_to_hsv(x)), want, mean=1e-6, mx=1e-4, what="BGR->HSV")
    back = np.stack([cv2.cvtColor(h, cv2.COLOR_HSV2BGR) for h in want])
    _close(_h(dc.hsv_to_bgr(torch.from_numpy(want.transpose(0, 3, 1, 2).copy()))), back, mean=1e-7, mx=1e-5,
           what="HSV->BGR")
    shifts = [HSVShift(-17, 0.05, -0.1), HSVShift(40, -0.12, 0.12), HSVShift(0, 0.0, 0.0)]
    got = dc.hsv_shift(x, torch.tensor([[s.dh, s.ds, s.dv] for s in shifts]))
    want = np.stack([apply_hsv_shift(i, s) for i, s in zip(imgs, shifts)])
    _close(_h(got), want, mean=1e-7, mx=1e-5, what="hsv_shift")


def test_lab_round_trip_and_inverse_match_opencv(pair):
    imgs, _ = pair
    lab_cv = np.stack([cv2.cvtColor(i, cv2.COLOR_BGR2LAB) for i in imgs])
    back = np.stack([cv2.cvtColor(lab, cv2.COLOR_LAB2BGR) for lab in lab_cv])
    _close(_h(dc.lab_to_bgr(torch.from_numpy(lab_cv.transpose(0, 3, 1, 2).copy()))), back, mean=1e-5, mx=2e-4,
           what="LAB->BGR")
    x = _t(imgs)
    _close(_h(dc.lab_to_bgr(dc.bgr_to_lab(x))), np.stack(imgs), mean=1e-6, mx=1e-4, what="round trip")
    _close(_h(dc.bgr_to_lab(x)), lab_cv, mean=0.15, mx=1.0, what="BGR->LAB (OpenCV interpolates a table)")


def test_rct_matches_statistically(pair):
    imgs, refs = pair
    got = _h(dc.rct(_t(imgs), _t(refs)))
    want = np.stack([ct.reinhard_color_transfer(i, r) for i, r in zip(imgs, refs)])
    _close(got, want, mean=2e-3, p99=1e-2, what="rct")
    np.testing.assert_allclose(got.mean((1, 2)), want.mean((1, 2)), atol=2e-3)
    np.testing.assert_allclose(got.std((1, 2)), want.std((1, 2)), atol=2e-3)


@pytest.mark.parametrize(("mode", "fn", "tol"), [("lct", ct.linear_color_transfer, 1e-4),
                                                 ("mkl", ct.color_transfer_mkl, 1e-3)])
def test_linear_transfers_match(pair, mode, fn, tol):
    imgs, refs = pair
    got = _h(dc.color_transfer(mode, _t(imgs), _t(refs)))
    want = np.stack([fn(i, r) for i, r in zip(imgs, refs)])
    _close(got, want, mean=tol / 10, mx=tol, what=mode)


def test_idt_matches_on_the_same_rotations(pair):
    imgs, refs = pair
    rots = np.stack([special_ortho_group.rvs(3, size=dc.IDT_ROTATIONS, random_state=k).astype(np.float32)
                     for k in range(len(imgs))])
    got = _h(dc.idt(_t(imgs), _t(refs), torch.from_numpy(rots)))
    want = np.stack([ct.color_transfer_idt(i, r, rotations=q) for i, r, q in zip(imgs, refs, rots)])
    _close(got, want, mean=1e-5, p99=1e-4, what="idt")


def test_sot_matches_on_the_same_directions(pair):
    imgs, refs = pair
    dirs = np.random.default_rng(1).normal(size=(len(imgs), dc.SOT_DIRECTIONS, 3))
    got = _h(dc.sot(_t(imgs), _t(refs), torch.from_numpy(dirs)))
    want = np.stack([np.clip(ct.color_transfer_sot(i, r, directions=d), 0, 1) for i, r, d in zip(imgs, refs, dirs)])
    _close(got, want, mean=5e-4, p99=3e-3, mx=2e-2, what="sot")
    # and it did transfer: far closer to DFL's result than to the untouched image
    assert np.abs(got - want).mean() < 0.1 * np.abs(np.stack(imgs) - want).mean()


@pytest.mark.parametrize("mode", ["rct", "lct", "mkl", "idt", "sot"])
def test_each_image_is_transferred_on_its_own(pair, mode):
    imgs, refs = pair
    g = torch.Generator().manual_seed(0)
    draws = None
    if mode == "idt":
        draws = torch.from_numpy(dc.haar_rotations(np.random.default_rng(2).normal(size=(3, 20, 3, 3)))).float()
    elif mode == "sot":
        draws = torch.randn(3, dc.SOT_DIRECTIONS, 3, generator=g)
    batch = dc.color_transfer(mode, _t(imgs), _t(refs), draws)
    for i in range(3):
        one = dc.color_transfer(mode, _t(imgs[i:i + 1]), _t(refs[i:i + 1]), None if draws is None else draws[i:i + 1])
        torch.testing.assert_close(batch[i:i + 1], one, atol=1e-5, rtol=0)


def test_haar_rotations_follow_special_ortho_group():
    q = dc.haar_rotations(np.random.default_rng(0).normal(size=(20000, 3, 3)))
    np.testing.assert_allclose(np.linalg.det(q), 1.0, atol=1e-12)
    np.testing.assert_allclose(q @ q.transpose(0, 2, 1), np.broadcast_to(np.eye(3), q.shape), atol=1e-12)
    ref = special_ortho_group.rvs(3, size=20000, random_state=0)
    # the law of the rotation angle (through the trace) and of single entries
    qs = np.linspace(0.05, 0.95, 10)
    np.testing.assert_allclose(np.quantile(np.trace(q, axis1=1, axis2=2), qs),
                               np.quantile(np.trace(ref, axis1=1, axis2=2), qs), atol=0.05)
    np.testing.assert_allclose(np.quantile(q[:, 0, 1], qs), np.quantile(ref[:, 0, 1], qs), atol=0.03)
