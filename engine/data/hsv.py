"""DFL's random HSV shift of the src network input (docs/dfl.md §5.4 FACE_IMAGE step 3, option `random_hsv_power`).

DFL applies it inside SampleProcessor to output 0 (the warped input) of the src generator only, after the
colour transfer and before the geometric warp, drawing from the same per-output `rnd_state` that
`gen_warp_params` used, right after the warp draws (§5.2):

    h  = max(1, int(360·a·0.5))
    dH = rnd_state.randint(-h, h+1)            # degrees
    dS = (rnd_state.random() - 0.5)·a
    dV = (rnd_state.random() - 0.5)·a
    H' = (H + dH) mod 360,  S' = clip(S + dS, 0, 1),  V' = clip(V + dV, 0, 1)
    out = clip(HSV→BGR(H', S', V'), 0, 1)

with OpenCV's float conversions (H in [0, 360), S and V in [0, 1]). Both execution modes ("dfl" and
"fast") use this same numpy code, so HSV never differs between them.
"""

from __future__ import annotations

import attrs
import cv2
import numpy as np

__all__ = ["HSVShift", "draw_hsv_shift", "apply_hsv_shift"]


@attrs.frozen
class HSVShift:
    """One sample's drawn shift: hue in degrees (int), saturation and value offsets (floats)."""

    dh: int
    ds: float
    dv: float


def draw_hsv_shift(rnd_state: np.random.RandomState, power: float) -> HSVShift:
    """Draw DFL's three HSV values from `rnd_state` in DFL's order: randint(-h, h+1), random(), random()."""
    h = max(1, int(360 * power * 0.5))
    dh = int(rnd_state.randint(-h, h + 1))
    ds = (rnd_state.random() - 0.5) * power
    dv = (rnd_state.random() - 0.5) * power
    return HSVShift(dh, ds, dv)


def apply_hsv_shift(img: np.ndarray, shift: HSVShift) -> np.ndarray:
    """Apply `shift` to a float32 BGR (H, W, 3) image; returns float32 (H, W, 3) clipped to [0, 1].

    Arithmetic stays in float32 like DFL (numpy adds Python scalars to float32 arrays in float32).
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(img, dtype=np.float32), cv2.COLOR_BGR2HSV)
    h, s, v = cv2.split(hsv)
    h = (h + shift.dh) % 360
    s = np.clip(s + shift.ds, 0, 1)
    v = np.clip(v + shift.dv, 0, 1)
    out = cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2BGR)
    return np.clip(out, 0, 1)
