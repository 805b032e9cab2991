"""engine.data.device_filters against the OpenCV / numpy calls they reproduce, on the same parameters, several
images per batch each with its own parameters (odd, even and prime sizes; H != W where the op allows it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.data import device_filters as df
from engine.data.device_color import hsv_shift
from engine.faces.filters import blursharpen, linear_motion_blur
from engine.xseg.augment import random_circle_faded, random_hsv_shift, random_resize, random_rgb_levels
from engine.xseg.device import BLUR_TAPS, gaussian_kernel, motion_kernel, sharpen_kernel

FLOAT = 2e-5  # float32 rounding of the same arithmetic in another order


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, float32 (n, h, w, 3) in [0, 1]: blurs and resizes have something to do."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    out = np.stack([cv2.resize(b, (w, h), interpolation=cv2.INTER_CUBIC) for b in base])
    return np.clip(out + 0.1 * rng.standard_normal(out.shape).astype(np.float32), 0, 1)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


def _report(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    bad = np.abs(got - want) > atol
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} beyond {atol}, first at {np.argwhere(bad)[:3].tolist()}, " \
                          f"max |Δ| {np.abs(got - want).max():.3g}"


@pytest.mark.parametrize("h,w", [(64, 64), (37, 53)])
def test_separable_gaussian_blur_matches_cv2_gaussianblur(h, w):
    ks = [1, 3, 5, 7, 9]
    imgs = _images(len(ks), h, w)
    k1d = torch.from_numpy(np.stack([gaussian_kernel(k, BLUR_TAPS) for k in ks]))
    got = _nhwc(df.separable_filter(_nchw(imgs), k1d))
    want = np.stack([cv2.GaussianBlur(im, (k, k), 0) for im, k in zip(imgs, ks)])
    _report(got, want, FLOAT, "separable_filter")


@pytest.mark.parametrize("size", [64, 128])
def test_fft_blur_matches_cv2_gaussianblur_for_flare_sizes(size):
    """DFL's flares: k = randint(R/4, R) made odd, up to R - 1 (reflect-101 border over half the image)."""
    ks = [size // 4 + 1, size // 2 + 1, size - 1]
    imgs = _images(len(ks), size, size, seed=1)
    kf = ks[-1]
    k1d = torch.from_numpy(np.stack([gaussian_kernel(k, kf) for k in ks]))
    got = _nhwc(df.fft_filter(_nchw(imgs), k1d))
    want = np.stack([cv2.GaussianBlur(im, (k, k), 0) for im, k in zip(imgs, ks)])
    _report(got, want, 2e-5, "fft_filter")
    np.testing.assert_allclose(_nhwc(df.separable_filter(_nchw(imgs), k1d)), got, atol=2e-5)  # long kernels go to FFT


def test_filter2d_matches_cv2_for_sharpen_and_motion_kernels():
    """Box sharpen (blursharpen mode 1), Gaussian sharpen as one kernel (mode 2: GaussianBlur + addWeighted),
    motion-blur lines of sizes 1-5 (even sizes anchored at k // 2 as OpenCV's filter2D)."""
    cases = [("box", 3, 7), ("box", 5, 9), ("gauss", 3, 25), ("gauss", 5, 49), ("gauss", 1, 10),
             ("motion", 2, 30), ("motion", 4, 135), ("motion", 5, 290), ("motion", 1, 0), ("motion", 3, 77)]
    imgs = _images(len(cases), 48, 40, seed=2)
    kernels, want = [], []
    for im, (kind, size, arg) in zip(imgs, cases):
        if kind == "motion":
            kernels.append(motion_kernel(size, arg))
            want.append(linear_motion_blur(im, size, arg))
        else:
            kernels.append(sharpen_kernel(size, kind == "box", arg))
            want.append(blursharpen(im, 1 if kind == "box" else 2, size, arg))
    got = _nhwc(df.filter2d(_nchw(imgs), torch.from_numpy(np.stack(kernels))))
    # sharpening by up to 49x amplifies float32 rounding: relative bound on the kernel's gain
    _report(got, np.stack(want), 1e-4, "filter2d")


@pytest.mark.parametrize("linear", [False, True])
def test_resize_down_up_matches_cv2_resize_pair(linear):
    """random_resize's cv2.resize to (rw, rh) and back, nearest exactly, linear to float rounding."""
    r = 64
    sizes = [64, 63, 48, 33, 32, 17, 16]  # DFL: R - int(t·int(0.75 R)), so R/4 .. R
    imgs = _images(len(sizes), r, r, seed=3)
    interp = cv2.INTER_LINEAR if linear else cv2.INTER_NEAREST
    want = np.stack([cv2.resize(cv2.resize(im, (s, s), interpolation=interp), (r, r), interpolation=interp)
                     for im, s in zip(imgs, sizes)])
    size = torch.tensor([[s, s] for s in sizes], dtype=torch.int32)
    got = _nhwc(df.resize_down_up(_nchw(imgs), size, torch.full((len(sizes),), linear)))
    _report(got, want, FLOAT if linear else 0.0, f"resize_down_up linear={linear}")


def test_resize_draw_and_blend_match_random_resize():
    """DFL's random_resize (chance 100: t drawn, the size from t) through the device op and blend."""
    img = _images(1, 64, 64, seed=4)[0]
    mask = random_circle_faded(64, np.random.RandomState(9))
    rs = np.random.RandomState(5)
    want = random_resize(img, rs, cv2.INTER_LINEAR, chance=100, mask=mask)
    rs = np.random.RandomState(5)
    rs.randint(100)
    s = 64 - int(rs.rand() * int(64 * 0.75))
    out = df.resize_down_up(_nchw(img[None]), torch.tensor([[s, s]]), torch.tensor([True]))
    got = _nhwc(df.blend(_nchw(img[None]), out, _nchw(mask[None])))[0]
    _report(got, want, FLOAT, "random_resize")


def test_rgb_levels_and_hsv_shift_match_the_numpy_filters_on_the_same_draws():
    imgs = _images(4, 32, 32, seed=5)
    levels, hsv, want_l, want_h = [], [], [], []
    for i, im in enumerate(imgs):
        want_l.append(random_rgb_levels(im, np.random.RandomState(i)))
        u = np.array([np.random.RandomState(i).rand(15)]).reshape(5, 3)
        levels.append(np.stack([u[0] * 0.25, 1 - u[1] * 0.25, 0.5 + u[2], u[3] * 0.25, 1 - u[4] * 0.25]))
        want_h.append(random_hsv_shift(im, np.random.RandomState(i)))
        rs = np.random.RandomState(i)
        hsv.append([rs.randint(360), rs.random() - 0.5, rs.random() - 0.5])
    got_l = _nhwc(df.rgb_levels(_nchw(imgs), torch.tensor(np.stack(levels), dtype=torch.float32)))
    _report(got_l, np.stack(want_l), 1e-5, "rgb_levels")
    got_h = _nhwc(hsv_shift(_nchw(imgs), torch.tensor(hsv, dtype=torch.float32)))
    _report(got_h, np.stack(want_h), 1e-4, "hsv_shift")  # OpenCV's float HSV formulas (engine.data.device_color)


def test_circle_faded_matches_random_circle_faded():
    params, want = [], []
    for seed in range(6):
        want.append(random_circle_faded(40, np.random.RandomState(seed)))
        rs = np.random.RandomState(seed)
        start = rs.randint(40)
        params.append([start, start + rs.randint(40 - start), rs.randint(40), rs.randint(40)])
    got = _nhwc(df.circle_faded(torch.tensor(params), 40))
    _report(got, np.stack(want), 1e-6, "circle_faded")
