"""DFL's XSeg training sample: image + label mask at the network resolution, and its augmentation
(docs/dfl.md §5.7; DFL `samplelib/SampleGeneratorFaceXSeg.py`, `core/imagelib/filters.py`, `core/imagelib/sd`).

    img, mask = image_and_mask(sample, polys, resolution=256, face_type=FaceType.WHOLE_FACE)
    img, mask = augment(img, mask, background, np.random.RandomState(seed))

`image_and_mask` (DFL's gen_img_mask): the label is the rasterised polygons (engine.xseg.polys), else the
stored xseg_mask binarised at 0.5; then, if the face type matches, both are resized to R with LANCZOS4,
otherwise both are warped with `get_transform_mat(landmarks, R, face_type)` (LANCZOS4, constant 0 border).

`augment` (DFL's batch_func, per sample, in DFL's order of random draws):
1. p = 0.5: composite another labelled face's background: affine only (rotation ±180°, scale ±0.10,
   tx/ty ±0.10, flip; image replicate border, mask constant), keep `bg·(1-bg_mask)`, random HSV shift or
   RGB levels (50/50); `c = 1-(1-bg_mask)(1-mask)`, `rnd = 0.15 + 0.85·U`,
   `img = img·c + img·(1-c)·rnd + bg·(1-c)·(1-rnd)`.
2. gen_warp_params(R, flip, rotation ±10°, scale ±0.05, tx/ty ±0.05): grid warp + affine + flip on image
   (cubic, replicate) and mask (constant 0 border); clip the image, binarise the mask at 0.5.
3. p = 0.5 face flare `img += GaussianBlur(img·mask, k)`, 4. p = 0.5 background flare on `img·(1-mask)`,
   k = randint(R//4, R) made odd (k - k%2 + 1), σ automatic.
5. HSV shift (h += randint(360), s, v += U(-0.5, 0.5)) or RGB levels, 50/50.
6. 50/50: sharpen (chance 25, kernel ≤ 5: box amount randint(10) or gaussian randint(50)), or motion blur
   (chance 25, size randint(5)+1, angle randint(360)) then Gaussian blur (chance 25, k = randint(5)·2+1).
7. 50/50 nearest or bilinear down/up-resize (chance 25, by up to 75 %), clip.
8. JPEG re-encode (chance 25, quality randint(10, 101)).
Steps 5-8 each blend through their own `random_circle_faded` mask (a disc of random centre and radius with a
linear fade); every "chance" is `randint(100) < chance`.

Where this differs from DFL: DFL draws from each worker's unseeded global RNG; here every draw comes from
the one RandomState passed in (seeded per sample by the loader), in the same order, so a batch is a pure
function of the seed. DFL warps the mask with `warp_by_params`' default interpolation (cubic; docs/dfl.md §5.7's
"linear" describes SAEHD's masks) — followed here, the mask is binarised right after anyway. A stored
xseg_mask whose size differs from the image (DFL's apply writes 256², faces are 512²) is resized to the
image first: DFL would warp the 256² mask with the 512² image's matrix when the face types differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from engine.faces.facetypes import FaceType
from engine.faces.face_sample import FaceSample
from engine.faces.filters import blursharpen, linear_motion_blur
from engine.faces.landmarks import get_transform_mat
from engine.errors import DataError
from engine.xseg.polys import Poly, point_count, rasterize
from kernels.warp import gen_warp_params, warp_by_params

__all__ = ["image_and_mask", "face_image", "label_mask", "augment", "random_circle_faded", "random_hsv_shift", "random_rgb_levels",
           "random_sharpen", "random_motion_blur", "random_gaussian_blur", "random_resize", "random_jpeg",
           "SHARPEN_CHANCE", "BLUR_CHANCE", "RESIZE_CHANCE", "RESIZE_MAX_PERCENT", "JPEG_CHANCE", "KERNEL_MAX"]

# DFL's SampleGeneratorFaceXSeg settings
SHARPEN_CHANCE = BLUR_CHANCE = RESIZE_CHANCE = JPEG_CHANCE = 25
KERNEL_MAX = 5
RESIZE_MAX_PERCENT = 75


def label_mask(sample: FaceSample, polys: Sequence[Poly], shape: tuple[int, int]) -> np.ndarray:
    """The label at the image's own size, float32 (h, w, 1) in {0, 1}: polygons, else the binarised xseg_mask."""
    h, w = shape
    if point_count(polys):
        return rasterize(polys, (h, w))
    m = sample.get_xseg_mask()
    if m is None:
        raise DataError(f"{sample.name}: no XSeg polygons and no xseg_mask to train on")
    if m.shape[:2] != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, -1)[..., :1]
    return (m >= 0.5).astype(np.float32)


def image_and_mask(sample: FaceSample, polys: Sequence[Poly], resolution: int, face_type: FaceType
                   ) -> tuple[np.ndarray, np.ndarray]:
    """DFL's gen_img_mask: (image float32 (R, R, 3) BGR, mask float32 (R, R, 1)); see the module doc."""
    img = sample.load_bgr()
    h, w = img.shape[:2]
    mask = label_mask(sample, polys, (h, w))
    r = int(resolution)
    if sample.face_type_enum == face_type:
        if (w, h) != (r, r):
            img = cv2.resize(img, (r, r), interpolation=cv2.INTER_LANCZOS4)
            mask = cv2.resize(mask, (r, r), interpolation=cv2.INTER_LANCZOS4)
    else:
        mat = get_transform_mat(sample.landmarks, r, face_type)
        img = cv2.warpAffine(img, mat, (r, r), borderMode=cv2.BORDER_CONSTANT, flags=cv2.INTER_LANCZOS4)
        mask = cv2.warpAffine(mask, mat, (r, r), borderMode=cv2.BORDER_CONSTANT, flags=cv2.INTER_LANCZOS4)
    return img.astype(np.float32), mask.reshape(r, r, 1).astype(np.float32)


def face_image(sample: FaceSample, resolution: int, face_type: FaceType) -> np.ndarray:
    """The face alone as image_and_mask prepares it (unlabelled faces in previews), float32 (R, R, 3)."""
    img = sample.load_bgr()
    r = int(resolution)
    if sample.face_type_enum == face_type:
        return cv2.resize(img, (r, r), interpolation=cv2.INTER_LANCZOS4) if img.shape[:2] != (r, r) else img
    mat = get_transform_mat(sample.landmarks, r, face_type)
    return cv2.warpAffine(img, mat, (r, r), borderMode=cv2.BORDER_CONSTANT, flags=cv2.INTER_LANCZOS4)


# ---------------------------------------------------------------------------------------------------------
# DFL's random filters (core/imagelib/filters.py), with an explicit RandomState


def random_circle_faded(size: int, rs: np.random.RandomState) -> np.ndarray:
    """DFL's random_circle_faded for a square size×size image, float32 (size, size, 1) in [0, 1].

    fade_start = randint(size), fade_end = fade_start + randint(size - fade_start), centre (randint, randint);
    value = clip(1 - (dist - fade_start)/fade_end, 0, 1) (fade_end 0 taken as 1). DFL's first centre
    coordinate indexes rows (its point grid is transposed); for square images that is the whole story.
    """
    start = rs.randint(size)
    end = start + rs.randint(size - start)
    c_row, c_col = rs.randint(size), rs.randint(size)
    end = end or 1
    rows = np.arange(size, dtype=np.float32)[:, None] - c_row
    cols = np.arange(size, dtype=np.float32)[None, :] - c_col
    d = np.sqrt(rows * rows + cols * cols)
    return np.clip(1.0 - (d - start) / end, 0.0, 1.0).astype(np.float32)[..., None]


def _blend(img: np.ndarray, result: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    return result if mask is None else img * (1 - mask) + result * mask


def random_hsv_shift(img: np.ndarray, rs: np.random.RandomState, mask: np.ndarray | None = None) -> np.ndarray:
    """h += randint(360) (mod 360), s, v += random() - 0.5 (clipped), back to BGR clipped to [0, 1]."""
    h, s, v = cv2.split(cv2.cvtColor(np.ascontiguousarray(img, np.float32), cv2.COLOR_BGR2HSV))
    h = (h + rs.randint(360)) % 360
    s = np.clip(s + rs.random() - 0.5, 0, 1)
    v = np.clip(v + rs.random() - 0.5, 0, 1)
    out = np.clip(cv2.cvtColor(cv2.merge([h, s, v]), cv2.COLOR_HSV2BGR), 0, 1)
    return _blend(img, out, mask)


def random_rgb_levels(img: np.ndarray, rs: np.random.RandomState, mask: np.ndarray | None = None) -> np.ndarray:
    """Per channel: in_black U[0,.25], in_white 1-U[0,.25], gamma 0.5+U[0,1], out_black U[0,.25], out_white
    1-U[0,.25]; ``clip((x-ib)/(iw-ib))^(1/g)·(ow-ob)+ob``, clipped (DFL's apply_random_rgb_levels)."""
    u = rs.rand
    in_black = np.array([u() * 0.25 for _ in range(3)], np.float32)
    in_white = np.array([1.0 - u() * 0.25 for _ in range(3)], np.float32)
    gamma = np.array([0.5 + u() for _ in range(3)], np.float32)
    out_black = np.array([u() * 0.25 for _ in range(3)], np.float32)
    out_white = np.array([1.0 - u() * 0.25 for _ in range(3)], np.float32)
    out = np.clip((img - in_black) / (in_white - in_black), 0, 1)
    out = np.clip(out ** (1 / gamma) * (out_white - out_black) + out_black, 0, 1)
    return _blend(img, out, mask)


def random_sharpen(img: np.ndarray, rs: np.random.RandomState, chance: int = SHARPEN_CHANCE,
                   kernel_max: int = KERNEL_MAX, mask: np.ndarray | None = None) -> np.ndarray:
    kernel = rs.randint(kernel_max) + 1
    if rs.randint(100) >= np.clip(chance, 0, 100):
        return img
    if rs.randint(2) == 0:
        out = blursharpen(img, 1, kernel, rs.randint(10))
    else:
        out = blursharpen(img, 2, kernel, rs.randint(50))
    return _blend(img, out, mask)


def random_motion_blur(img: np.ndarray, rs: np.random.RandomState, chance: int = BLUR_CHANCE,
                       size_max: int = KERNEL_MAX, mask: np.ndarray | None = None) -> np.ndarray:
    size = rs.randint(size_max) + 1
    angle = rs.randint(360)
    if rs.randint(100) >= np.clip(chance, 0, 100):
        return img
    return _blend(img, linear_motion_blur(img, size, angle), mask)


def random_gaussian_blur(img: np.ndarray, rs: np.random.RandomState, chance: int = BLUR_CHANCE,
                         kernel_max: int = KERNEL_MAX, mask: np.ndarray | None = None) -> np.ndarray:
    if rs.randint(100) >= np.clip(chance, 0, 100):
        return img
    k = rs.randint(kernel_max) * 2 + 1
    return _blend(img, cv2.GaussianBlur(img, (k, k), 0), mask)


def random_resize(img: np.ndarray, rs: np.random.RandomState, interpolation: int, chance: int = RESIZE_CHANCE,
                  max_percent: int = RESIZE_MAX_PERCENT, mask: np.ndarray | None = None) -> np.ndarray:
    if rs.randint(100) >= np.clip(chance, 0, 100):
        return img
    h, w = img.shape[:2]
    t = rs.rand()
    rw = w - int(t * int(w * (max_percent / 100.0)))
    rh = h - int(t * int(h * (max_percent / 100.0)))
    out = cv2.resize(img, (rw, rh), interpolation=interpolation)
    out = cv2.resize(out, (w, h), interpolation=interpolation)
    return _blend(img, out, mask)


def random_jpeg(img: np.ndarray, rs: np.random.RandomState, chance: int = JPEG_CHANCE,
                mask: np.ndarray | None = None) -> np.ndarray:
    if rs.randint(100) >= np.clip(chance, 0, 100):
        return img
    quality = rs.randint(10, 101)
    ok, buf = cv2.imencode(".jpg", np.clip(img * 255, 0, 255).astype(np.uint8), [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        return img
    out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255.0
    return _blend(img, out, mask)


# ---------------------------------------------------------------------------------------------------------
# the per-sample pipeline


def _flare(img: np.ndarray, weight: np.ndarray, r: int, rs: np.random.RandomState) -> np.ndarray:
    k = rs.randint(r // 4, r)
    k = k - k % 2 + 1
    return img + cv2.GaussianBlur(img * weight, (k, k), 0).reshape(img.shape)


def augment(img: np.ndarray, mask: np.ndarray, background: tuple[np.ndarray, np.ndarray] | None,
            rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """DFL's XSeg augmentation of one sample (module doc). img (R, R, 3) float32 BGR, mask (R, R, 1) {0, 1};
    background: another labelled face's (img, mask) at R, used with probability 0.5 (None: never).
    Returns (img float32 (R, R, 3) in [0, 1], mask float32 (R, R, 1) in {0, 1})."""
    r = img.shape[0]
    img = img.astype(np.float32)
    if rs.randint(2) == 0 and background is not None:
        bg_img, bg_mask = background
        wp = gen_warp_params(r, True, rotation_range=(-180, 180), scale_range=(-0.10, 0.10), tx_range=(-0.10, 0.10),
                             ty_range=(-0.10, 0.10), rnd_state=rs, warp_rnd_state=rs)
        bg_img = warp_by_params(wp, bg_img, can_warp=False, can_transform=True, can_flip=True, border_replicate=True)
        bg_mask = warp_by_params(wp, bg_mask, can_warp=False, can_transform=True, can_flip=True, border_replicate=False)
        bg_img = bg_img * (1 - bg_mask)
        bg_img = random_hsv_shift(bg_img, rs) if rs.randint(2) == 0 else random_rgb_levels(bg_img, rs)
        c = 1.0 - (1 - bg_mask) * (1 - mask)
        rnd = 0.15 + rs.uniform() * 0.85
        img = (img * c + img * (1 - c) * rnd + bg_img * (1 - c) * (1 - rnd)).astype(np.float32)

    wp = gen_warp_params(r, True, rotation_range=(-10, 10), scale_range=(-0.05, 0.05), tx_range=(-0.05, 0.05),
                         ty_range=(-0.05, 0.05), rnd_state=rs, warp_rnd_state=rs)
    img = warp_by_params(wp, img, can_warp=True, can_transform=True, can_flip=True, border_replicate=True)
    mask = warp_by_params(wp, mask, can_warp=True, can_transform=True, can_flip=True, border_replicate=False)
    img = np.clip(img.astype(np.float32), 0, 1)
    mask = (mask >= 0.5).astype(np.float32)

    if rs.randint(2) == 0:  # face flare
        img = _flare(img, mask, r, rs)
    if rs.randint(2) == 0:  # background flare
        img = _flare(img, 1 - mask, r, rs)
    if rs.randint(2) == 0:
        img = random_hsv_shift(img, rs, mask=random_circle_faded(r, rs))
    else:
        img = random_rgb_levels(img, rs, mask=random_circle_faded(r, rs))
    if rs.randint(2) == 0:
        img = random_sharpen(img, rs, mask=random_circle_faded(r, rs))
    else:
        img = random_motion_blur(img, rs, mask=random_circle_faded(r, rs))
        img = random_gaussian_blur(img, rs, mask=random_circle_faded(r, rs))
    if rs.randint(2) == 0:
        img = random_resize(img, rs, cv2.INTER_NEAREST, mask=random_circle_faded(r, rs))
    else:
        img = random_resize(img, rs, cv2.INTER_LINEAR, mask=random_circle_faded(r, rs))
    img = np.clip(img, 0, 1)
    img = random_jpeg(img, rs, mask=random_circle_faded(r, rs))
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(mask, dtype=np.float32)
