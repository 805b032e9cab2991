"""Replays the random draws of engine.xseg.augment.augment (DFL's order, one RandomState) into the XSeg device
pipeline's parameter format, so the numpy oracle and engine.xseg.device.augment_batch can be compared on the
same draws (tests/xseg/test_xseg_device.py)."""

from __future__ import annotations

import numpy as np
import torch

from engine.xseg.augment import BLUR_CHANCE, JPEG_CHANCE, KERNEL_MAX, RESIZE_CHANCE, RESIZE_MAX_PERCENT, SHARPEN_CHANCE
from engine.xseg.device import (BLUR_TAPS, DETAIL, flare_length, gaussian_kernel, motion_kernel, sharpen_kernel)
from kernels.warp import WarpBatchParams, gen_warp_params

_NO_CIRCLE = [0, 0, 0, 0]
_IDENTITY = np.zeros((DETAIL, DETAIL), np.float32)
_IDENTITY[DETAIL // 2, DETAIL // 2] = 1


def _colour(rs: np.random.RandomState, hsv: bool) -> tuple[np.ndarray, np.ndarray]:
    if hsv:  # random_hsv_shift: h += randint(360), s += random() - 0.5, v likewise
        return np.array([rs.randint(360), rs.random() - 0.5, rs.random() - 0.5], np.float32), np.zeros((5, 3), np.float32)
    u = np.array([rs.rand() for _ in range(15)]).reshape(5, 3)  # random_rgb_levels: 5 groups of 3 channels
    levels = np.stack([u[0] * 0.25, 1 - u[1] * 0.25, 0.5 + u[2], u[3] * 0.25, 1 - u[4] * 0.25]).astype(np.float32)
    return np.zeros(3, np.float32), levels


def _circle(rs: np.random.RandomState, r: int) -> list[int]:
    start = rs.randint(r)
    end = start + rs.randint(r - start)
    return [start, end, rs.randint(r), rs.randint(r)]


def _chance(rs: np.random.RandomState, chance: int) -> bool:
    return rs.randint(100) < chance


def replay(seed: int, r: int, background: bool) -> tuple[dict, dict, dict | None]:
    """(device parameters of one sample as numpy values, DFL warp params of the main warp, of the background's
    affine or None) for `augment(img, mask, bg, np.random.RandomState(seed))` at resolution r."""
    rs = np.random.RandomState(seed)
    p: dict = {}
    bg_wp = None
    p["bg_on"] = rs.randint(2) == 0 and background
    p["bg_hsv_on"], p["bg_hsv"], p["bg_levels"], p["bg_rnd"] = False, np.zeros(3, np.float32), np.ones((5, 3), np.float32), 0.0
    if p["bg_on"]:
        bg_wp = gen_warp_params(r, True, rotation_range=(-180, 180), scale_range=(-0.10, 0.10), tx_range=(-0.10, 0.10),
                                ty_range=(-0.10, 0.10), rnd_state=rs, warp_rnd_state=rs)
        p["bg_hsv_on"] = rs.randint(2) == 0
        p["bg_hsv"], p["bg_levels"] = _colour(rs, p["bg_hsv_on"])
        p["bg_rnd"] = np.float32(0.15 + rs.uniform() * 0.85)
    wp = gen_warp_params(r, True, rotation_range=(-10, 10), scale_range=(-0.05, 0.05), tx_range=(-0.05, 0.05),
                         ty_range=(-0.05, 0.05), rnd_state=rs, warp_rnd_state=rs)
    kf = flare_length(r)
    flare_on, flare_k = [], []
    for _ in range(2):
        on = rs.randint(2) == 0
        flare_on.append(on)
        k = rs.randint(r // 4, r) if on else 1
        flare_k.append(gaussian_kernel(k - k % 2 + 1, kf))
    p["flare_on"], p["flare_k"] = np.array(flare_on), np.stack(flare_k)
    circles = []
    p["hsv_on"] = rs.randint(2) == 0
    circles.append(_circle(rs, r))
    p["hsv"], p["levels"] = _colour(rs, p["hsv_on"])
    p["detail_on"], p["detail_k"], p["blur_on"], p["blur_k"] = False, _IDENTITY, False, gaussian_kernel(1, BLUR_TAPS)
    if rs.randint(2) == 0:  # sharpen
        circles.append(_circle(rs, r))
        size = rs.randint(KERNEL_MAX) + 1
        if _chance(rs, SHARPEN_CHANCE):
            box = rs.randint(2) == 0
            amount = rs.randint(10) if box else rs.randint(50)
            p["detail_on"], p["detail_k"] = True, sharpen_kernel(size - size % 2 + 1, box, amount)
        circles.append(_NO_CIRCLE)
    else:  # motion blur, then Gaussian blur
        circles.append(_circle(rs, r))
        size, angle = rs.randint(KERNEL_MAX) + 1, rs.randint(360)
        if _chance(rs, BLUR_CHANCE):
            p["detail_on"], p["detail_k"] = True, motion_kernel(size, angle)
        circles.append(_circle(rs, r))
        if _chance(rs, BLUR_CHANCE):
            p["blur_on"], p["blur_k"] = True, gaussian_kernel(rs.randint(KERNEL_MAX) * 2 + 1, BLUR_TAPS)
    p["resize_linear"] = rs.randint(2) != 0
    circles.append(_circle(rs, r))
    p["resize_on"], p["resize_size"] = _chance(rs, RESIZE_CHANCE), np.array([r, r], np.int32)
    if p["resize_on"]:
        t = rs.rand()
        shrink = int(t * int(r * (RESIZE_MAX_PERCENT / 100.0)))
        p["resize_size"] = np.array([r - shrink, r - shrink], np.int32)
    circles.append(_circle(rs, r))
    p["jpeg_on"], p["jpeg_q"] = _chance(rs, JPEG_CHANCE), np.int32(100)
    if p["jpeg_on"]:
        p["jpeg_q"] = np.int32(rs.randint(10, 101))
    p["circles"] = np.array(circles, np.int32)
    return p, wp, bg_wp


def batch_params(samples: list[tuple[dict, dict, dict | None]]) -> tuple[dict, WarpBatchParams, WarpBatchParams]:
    """Stack replayed samples: (params as tensors, main WarpBatchParams, background WarpBatchParams (samples
    without a background get the main warp's, unused))."""
    p = {k: torch.from_numpy(np.stack([np.asarray(s[0][k]) for s in samples])) for k in samples[0][0]}
    warp = WarpBatchParams.from_dfl([s[1] for s in samples])
    bg = WarpBatchParams.from_dfl([s[2] if s[2] is not None else s[1] for s in samples])
    return p, warp, bg
