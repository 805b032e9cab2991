"""DFL's deterministic image filters (`core/imagelib/blursharpen.py`), shared by the merger's post-processing
(engine.merge.face) and XSeg's training augmentation (engine.xseg.augment); part of the face library.

Inputs are float32 BGR images in [0, 1] (H, W, 3); nothing here draws random numbers.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["blursharpen", "linear_motion_blur", "median_passes", "box_sharpen_kernel", "motion_blur_kernel"]


def box_sharpen_kernel(kernel_size: int, amount: float) -> np.ndarray:
    """blursharpen's box-sharpen kernel: ``δ + (δ - box)·amount`` (kernel_size odd), float32 (k, k)."""
    k = np.zeros((kernel_size, kernel_size), dtype=np.float32)
    k[kernel_size // 2, kernel_size // 2] = 1.0
    box = np.ones((kernel_size, kernel_size), dtype=np.float32) / (kernel_size ** 2)
    return k + (k - box) * amount


def motion_blur_kernel(size: int, angle: float) -> np.ndarray:
    """LinearMotionBlur's kernel: a horizontal line (row (size-1)//2 of a size×size zero matrix set to 1)
    rotated by `angle` degrees about (size/2 - 0.5, size/2 - 0.5) (bilinear), normalised to sum 1; float32."""
    k = np.zeros((size, size), dtype=np.float32)
    k[(size - 1) // 2, :] = 1.0
    rot = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), angle, 1.0)
    k = cv2.warpAffine(k, rot, (size, size))
    return k * (1.0 / np.sum(k))


def blursharpen(img: np.ndarray, sharpen_mode: int, kernel_size: int, amount: int) -> np.ndarray:
    """DFL's blursharpen: amount > 0 sharpens, < 0 blurs; kernel_size made odd.

    - box (mode 1): ``filter2D(img, δ + (δ - box_k)·amount)`` with δ the centred unit impulse;
    - gaussian (mode 2): ``img·(1 + 0.5·amount) - GaussianBlur(img, k, σ auto)·0.5·amount``;
    - amount < 0: n = -amount; repeated median-5 passes, each a full pass while n ≥ 10, else a blend with
      weight (n % 10)/10; n decreases by 10 per pass.
    """
    if kernel_size % 2 == 0:
        kernel_size += 1
    if amount > 0:
        if sharpen_mode == 1:
            return cv2.filter2D(img, -1, box_sharpen_kernel(kernel_size, amount))
        if sharpen_mode == 2:
            blur = cv2.GaussianBlur(img, (kernel_size, kernel_size), 0)
            return cv2.addWeighted(img, 1.0 + 0.5 * amount, blur, -0.5 * amount, 0)
        return img
    if amount < 0:
        return median_passes(img, -amount, 10)
    return img


def median_passes(img: np.ndarray, n: int, full: int) -> np.ndarray:
    """DFL's repeated median-5 smoothing: while n > 0, one median-5 pass, taken whole while n ≥ `full`, else
    blended in with weight (n % full)/full; n decreases by 10 per pass. (blursharpen's blur: full = 10; the
    merger's frame denoise: full = 100.)"""
    while n > 0:
        blurred = cv2.medianBlur(img, 5)
        if n // full != 0:
            img = blurred
        else:
            p = (n % full) / full
            img = img * (1.0 - p) + blurred * p
        n = max(n - 10, 0)
    return img


def linear_motion_blur(img: np.ndarray, size: int, angle: float) -> np.ndarray:
    """DFL's LinearMotionBlur: `motion_blur_kernel(size, angle)` applied with filter2D."""
    return cv2.filter2D(img, -1, motion_blur_kernel(size, angle))
