"""The XSeg device pipeline (`[xseg].pipeline = "device"`): loader processes read, the training device augments.

    loader = make_xseg_loader(faces, ..., pipeline="device", device=torch.device("cuda"))
    batch = next(loader)     # {"image": (B, 3, R, R), "mask": (B, 1, R, R)} already on the device

SAEHD's device pipeline (engine.data.device) built for DFL's XSeg augmentation (docs/dfl.md §5.7; the numpy/OpenCV
per-sample version, engine.xseg.augment, stays as the oracle and the "dfl" pipeline):

    loader process (XSegDeviceBatches)                     training device (XSegAugment)
    -----------------------------------------------------  --------------------------------------------------
    decode each face once into a resolution-R uint8 cache  1. background from another face (p 0.5): its affine
      (engine.data.dataset.FaceCache: image + label, as       (±180°, ±10 %, flip) by kernels.warp, HSV shift
      image_and_mask makes them); later epochs never decode    or RGB levels, DFL's blend
    gather the batch's rows and its background faces' rows 2. grid warp + affine + flip (kernels.warp), clip,
      (uint8: 8 bytes per pixel) into one shared buffer        label binarised at 0.5
    draw each sample's parameters from its own key and     3. / 4. face / background flares (p 0.5 each):
      derive their kernels (Gaussians as cv2.getGaussianKernel, Gaussian blur k = 64..R-1 through the FFT
      motion-blur lines, box/Gaussian sharpen): ~2 KB/sample 5. HSV shift or RGB levels in a faded circle
                                                           6. sharpen, or motion blur then Gaussian blur
                                                           7. nearest / linear down-up resize, clip
                                                           8. JPEG at quality 10..100 (engine.data.device_jpeg)
                                                           each of 5-8 blended through its own faded circle

On CUDA the next batch is copied and augmented on a side stream while the current step runs
(engine.data.device.DeviceLoader), and no op synchronises with the host: every op runs on the whole batch
with static shapes and `torch.where` keeps the samples that drew it. Elsewhere an op runs only on the
samples that drew it.

Randomness: each sample's parameters are a pure function of its 32-bit key from engine.xseg.data's planner
(`PCG64(SeedSequence(key, spawn_key=(21,)))`, every draw made whether or not its branch is taken, so the
layout of the stream is fixed), so the stream does not depend on the worker count, the batch composition or
the device, and the loader's checkpointed state (the planner's position) restores it exactly.

How "device" differs from "dfl" — same distributions (tests/xseg/test_xseg_device.py checks each), not the
same stream:
- the cache holds the LANCZOS4-resized face and label as uint8 (rounding; LANCZOS4's overshoot past [0, 1]
  clipped), as SAEHD's "fast"/"device" caches do;
- the warps are kernels.warp's composed single-sampling path (kernels/warp/fast.py bounds it against DFL's
  two interpolations), the affine-only background warp reproduces cv2.warpAffine's coordinates;
- the filters are engine.data.device_filters' (float rounding; the sharpen is one 5x5 kernel instead of
  GaussianBlur + addWeighted) and JPEG is engine.data.device_jpeg (a float DCT where libjpeg's is integer:
  a small fraction of pixels differ by a level or more, bounded in its tests).

Pretrain mode (`[xseg].pretrain`): the cache holds SAEHD's face-type conversion of the pretrain faces, and
the device warps them (grid warp + affine + flip, rotation ±10°, scale ±5 %, shift ±5 %) and makes the
grayscale target (cv2's BGR2GRAY weights): {"image", "target"}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

from engine.data.dataset import FaceCache, first_usable
from engine.data.device import Packer
from engine.data.device_color import hsv_shift
from engine.data.device_filters import (blend, circle_faded, fft_filter, filter2d, resize_down_up, rgb_levels,
                                        separable_filter)
from engine.data.device_jpeg import jpeg_roundtrip
from engine.data.sample import SampleOptions, prepare_face
from engine.faces.faceset import FaceData
from engine.faces.filters import box_sharpen_kernel, motion_blur_kernel
from engine.faces.facetypes import FaceType
from engine.xseg.augment import (BLUR_CHANCE, JPEG_CHANCE, KERNEL_MAX, RESIZE_CHANCE, RESIZE_MAX_PERCENT,
                                 SHARPEN_CHANCE, image_and_mask)
from kernels.warp import WARP_UNIFORMS, WarpBatchParams, warp_batch, warp_params_from_uniforms

__all__ = ["draw_xseg", "draw_pretrain", "XSegDeviceBatches", "XSegAugment", "augment_batch", "gaussian_kernel",
           "sharpen_kernel", "motion_kernel", "flare_length",
           "CIRCLES", "DETAIL", "BLUR_TAPS", "MAIN_RANGES", "BG_RANGES", "PRETRAIN_RANGES"]

log = logging.getLogger("torchsae.xseg")

_KEY_XSEG = 21  # spawn_key of the XSeg device pipeline's per-sample stream
CIRCLES = ("colour", "detail", "blur", "resize", "jpeg")  # the faded circles of steps 5-8, in this order
DETAIL = 5  # sharpen / motion-blur kernels, zero-padded to DETAIL x DETAIL (KERNEL_MAX = 5)
BLUR_TAPS = 2 * (KERNEL_MAX - 1) + 1  # random_gaussian_blur's largest kernel: randint(5)·2 + 1 <= 9
# gen_warp_params ranges (rotation °, scale, tx, ty) of the two warps of docs/dfl.md §5.7
MAIN_RANGES = {"rotation_range": (-10, 10), "scale_range": (-0.05, 0.05), "tx_range": (-0.05, 0.05),
               "ty_range": (-0.05, 0.05)}
BG_RANGES = {"rotation_range": (-180, 180), "scale_range": (-0.10, 0.10), "tx_range": (-0.10, 0.10),
             "ty_range": (-0.10, 0.10)}
PRETRAIN_RANGES = MAIN_RANGES  # SampleProcessor's defaults with scale ±0.05 (engine.xseg.data)
_GRAY = (0.114, 0.587, 0.299)  # cv2.COLOR_BGR2GRAY weights of B, G, R


def _odd(k: int) -> int:
    return k - k % 2 + 1  # DFL's `k - k % 2 + 1`


def flare_length(resolution: int) -> int:
    """The longest flare kernel at R: randint(R // 4, R) made odd."""
    return _odd(resolution - 1)


def gaussian_kernel(k: int, length: int | None = None) -> np.ndarray:
    """cv2.GaussianBlur's kernel for float images and automatic sigma (cv2.getGaussianKernel(k, 0, CV_32F)),
    centred in `length` taps (zero-padded), float32."""
    g = cv2.getGaussianKernel(k, 0, ktype=cv2.CV_32F)[:, 0]
    length = length or k
    out = np.zeros(length, np.float32)
    off = length // 2 - k // 2
    out[off:off + k] = g
    return out


def _centred(kernel: np.ndarray, size: int) -> np.ndarray:
    """A k x k kernel (anchor k//2, OpenCV's default) inside a size x size one with the anchor at the centre."""
    out = np.zeros((size, size), np.float32)
    k = kernel.shape[0]
    off = size // 2 - k // 2
    out[off:off + k, off:off + k] = kernel
    return out


def sharpen_kernel(size: int, box: bool, amount: int) -> np.ndarray:
    """random_sharpen's filter as one DETAIL x DETAIL kernel: blursharpen's box kernel (mode 1) or
    ``(1 + a/2)·δ - (a/2)·Gaussian`` (mode 2: img·(1 + a/2) - GaussianBlur(img)·a/2); identity for amount 0."""
    if amount <= 0:  # blursharpen leaves the image as it is
        return _centred(np.ones((1, 1), np.float32), DETAIL)
    if box:
        return _centred(box_sharpen_kernel(size, amount), DETAIL)
    gk = gaussian_kernel(size)
    k2d = _centred(-np.outer(gk, gk) * (0.5 * amount), DETAIL)
    k2d[DETAIL // 2, DETAIL // 2] += 1 + 0.5 * amount
    return k2d


def motion_kernel(size: int, angle: float) -> np.ndarray:
    """random_motion_blur's line kernel (engine.faces.filters.motion_blur_kernel) as DETAIL x DETAIL."""
    return _centred(motion_blur_kernel(size, angle), DETAIL)


def _chance(g: np.random.Generator, chance: int) -> bool:
    return int(g.integers(100)) < chance  # DFL: the filter runs when randint(100) < chance


def _draw_colour(g: np.random.Generator) -> tuple[bool, np.ndarray, np.ndarray]:
    """random_hsv_shift (h += randint(360), s, v += U - 0.5) or random_rgb_levels, 50/50: (use_hsv, hsv (3,),
    levels (5, 3): in_black U·0.25, in_white 1 - U·0.25, gamma 0.5 + U, out_black U·0.25, out_white 1 - U·0.25)."""
    use_hsv = bool(g.random() < 0.5)
    hsv = np.array([g.integers(360), g.random() - 0.5, g.random() - 0.5], np.float32)
    u = g.random((5, 3))
    levels = np.stack([u[0] * 0.25, 1 - u[1] * 0.25, 0.5 + u[2], u[3] * 0.25, 1 - u[4] * 0.25]).astype(np.float32)
    return use_hsv, hsv, levels


def _draw_circle(g: np.random.Generator, size: int) -> list[int]:
    """random_circle_faded's draws: fade_start, fade_end (= start + randint(size - start)), centre row, column."""
    start = int(g.integers(size))
    end = start + int(g.integers(size - start))
    return [start, end, int(g.integers(size)), int(g.integers(size))]


def _stream(key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(key), spawn_key=(_KEY_XSEG,))))


def draw_xseg(keys: Sequence[int], resolution: int, background: bool) -> dict[str, np.ndarray]:
    """Every random parameter of docs/dfl.md §5.7's augmentation for one batch, one stream per sample key, with the
    kernels derived from them. Returns arrays with a leading N (see XSegAugment for their use):

    bg_on (bool; False when `background` is False: a single-face set), bg_u (WARP_UNIFORMS,) the background's
    affine, bg_hsv_on, bg_hsv (3,), bg_levels (5, 3), bg_rnd = 0.15 + 0.85·U; warp_u (WARP_UNIFORMS,);
    flare_on (2,) face / background, flare_k (2, flare_length(R)) Gaussians of k = randint(R//4, R) made odd;
    hsv_on, hsv, levels (step 5); detail_on, detail_k (5, 5): the sharpen kernel (chance 25, size randint(5)+1
    made odd, box amount randint(10) or Gaussian amount randint(50), 50/50) or the motion-blur line (chance 25,
    size randint(5)+1, angle randint(360)); blur_on (chance 25, motion branch only), blur_k (9,) Gaussian of
    k = randint(5)·2 + 1; resize_on (chance 25), resize_linear (50/50), resize_size (2,) = R - int(U·int(0.75 R));
    jpeg_on (chance 25), jpeg_q = randint(10, 101); circles (5, 4) (CIRCLES order).
    """
    r = int(resolution)
    kf = flare_length(r)
    rows: dict[str, list] = {}

    def put(name: str, value) -> None:
        rows.setdefault(name, []).append(value)

    for key in keys:
        g = _stream(key)
        put("bg_on", bool(g.random() < 0.5) and background)
        put("bg_u", g.random(WARP_UNIFORMS))
        for name, v in zip(("bg_hsv_on", "bg_hsv", "bg_levels"), _draw_colour(g)):
            put(name, v)
        put("bg_rnd", np.float32(0.15 + 0.85 * g.random()))
        put("warp_u", g.random(WARP_UNIFORMS))
        flare_on, flare_k = [], []
        for _ in range(2):  # face flare, background flare
            flare_on.append(bool(g.random() < 0.5))
            flare_k.append(gaussian_kernel(_odd(int(g.integers(r // 4, r))), kf))
        put("flare_on", np.array(flare_on))
        put("flare_k", np.stack(flare_k))
        for name, v in zip(("hsv_on", "hsv", "levels"), _draw_colour(g)):
            put(name, v)
        circles = [_draw_circle(g, r) for _ in CIRCLES]
        sharpen = bool(g.random() < 0.5)
        # sharpen draws
        size = _odd(int(g.integers(KERNEL_MAX)) + 1)  # blursharpen makes the kernel size odd
        s_on = _chance(g, SHARPEN_CHANCE)
        box = bool(g.random() < 0.5)
        amount = int(g.integers(10)) if box else int(g.integers(50))
        # motion blur + Gaussian blur draws
        m_size, m_angle, m_on = int(g.integers(KERNEL_MAX)) + 1, int(g.integers(360)), _chance(g, BLUR_CHANCE)
        b_on, b_k = _chance(g, BLUR_CHANCE), int(g.integers(KERNEL_MAX)) * 2 + 1
        if sharpen:
            k2d = sharpen_kernel(size, box, amount)
            put("detail_on", s_on)
            put("blur_on", False)
        else:
            k2d = motion_kernel(m_size, m_angle)
            put("detail_on", m_on)
            put("blur_on", b_on)
        put("detail_k", k2d.astype(np.float32))
        put("blur_k", gaussian_kernel(b_k, BLUR_TAPS))
        put("resize_linear", bool(g.random() < 0.5))
        put("resize_on", _chance(g, RESIZE_CHANCE))
        t = g.random()
        shrink = int(t * int(r * (RESIZE_MAX_PERCENT / 100.0)))
        put("resize_size", np.array([r - shrink, r - shrink], np.int32))
        put("jpeg_on", _chance(g, JPEG_CHANCE))
        put("jpeg_q", np.int32(g.integers(10, 101)))
        put("circles", np.array(circles, np.int32))
    return {k: np.stack([np.asarray(x) for x in v]) for k, v in rows.items()}


def draw_pretrain(keys: Sequence[int]) -> dict[str, np.ndarray]:
    """Pretrain mode's parameters: warp_u (N, WARP_UNIFORMS), one stream per key."""
    return {"warp_u": np.stack([_stream(k).random(WARP_UNIFORMS) for k in keys])}


# ---------------------------------------------------------------------------------------------------------
# Loader side


class XSegDeviceBatches(torch.utils.data.Dataset):
    """Map-style dataset keyed by engine.xseg.data.XSegPlan: `batches[plan]` -> {"packed": uint8 buffer,
    "layout", "_step", "_bad"} (engine.data.device.Packer / unpack).

    Arrays: image (N, R, R, 3) and mask (N, R, R, 1) uint8 from the cache; in normal mode with more than one
    face bg_image / bg_mask of each sample's background face; the draws of `draw_xseg` (pretrain:
    `draw_pretrain`). Faces that no longer decode are replaced by the next usable one and reported.
    """

    mode = "device"

    def __init__(self, faces: Sequence, *, resolution: int, face_type: str | FaceType, pretrain: bool = False,
                 augment: bool = True, cache_dir=None, label: str = "xseg"):
        self.faces = list(faces)
        self.resolution = int(resolution)
        self.face_type = FaceType.parse(face_type, "[xseg].face_type")
        self.pretrain, self.augment, self.label = bool(pretrain), bool(augment), label
        self.cache = FaceCache(len(self.faces), self.resolution, cache_dir=cache_dir, mask_channels=1)
        if pretrain:
            self.opts = SampleOptions(resolution=self.resolution, face_type=self.face_type)

    def __len__(self) -> int:  # map-style, indexed by plans; the length is not used
        return len(self.faces)

    def close(self) -> None:
        self.cache.close()

    def _prepared(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(image (R, R, 3) uint8, label (R, R, 1) uint8) of face j: what the "dfl" pipeline starts from."""
        f = self.faces[j]
        if self.pretrain:  # SAEHD's geometry (face-type conversion or cubic resize), no label
            s = f.sample
            face = FaceData(image=s.load_image(), landmarks=s.landmarks, face_type=s.face_type, name=s.name)
            return prepare_face(face, self.opts).image, np.zeros((self.resolution, self.resolution, 1), np.uint8)
        img, mask = image_and_mask(f.sample, f.polys, self.resolution, self.face_type)
        return _to_u8(img), _to_u8(mask)

    def row(self, i: int, bad: list) -> int:
        """The cache row of face i (or of the face that replaces it), decoding it on first use."""
        c = self.cache

        def fill(j: int) -> None:
            if c.status[j] == 1:
                return
            c.image[j], c.masks[j] = self._prepared(j)
            c.status[j] = 1  # after the data: readers that see 1 read complete arrays

        def mark(j: int) -> None:
            c.status[j] = 2

        return first_usable(len(self.faces), i, bad, fill, lambda j: c.status[j] == 2, mark, self.label,
                            lambda j: self.faces[j].name)[0]

    def __getitem__(self, plan) -> dict:
        bad: list = []
        r, n = self.resolution, len(plan.faces)
        rows = [self.row(i, bad) for i in plan.faces]
        with_bg = self.augment and not self.pretrain and len(self.faces) > 1
        bg_rows = [self.row(i, bad) for i in plan.backgrounds] if with_bg else None
        if not self.augment:
            draws = {}
        elif self.pretrain:
            draws = draw_pretrain(plan.keys)
        else:
            draws = draw_xseg(plan.keys, r, with_bg)
        pk = Packer()
        pk.add("image", (n, r, r, 3), np.uint8)
        pk.add("mask", (n, r, r, 1), np.uint8)
        if bg_rows is not None:
            pk.add("bg_image", (n, r, r, 3), np.uint8)
            pk.add("bg_mask", (n, r, r, 1), np.uint8)
        for k, v in draws.items():
            pk.add(k, v.shape, v.dtype)
        np.take(self.cache.image, rows, axis=0, out=pk.view("image"))
        np.take(self.cache.masks, rows, axis=0, out=pk.view("mask"))
        if bg_rows is not None:
            np.take(self.cache.image, bg_rows, axis=0, out=pk.view("bg_image"))
            np.take(self.cache.masks, bg_rows, axis=0, out=pk.view("bg_mask"))
        for k, v in draws.items():
            pk.view(k)[...] = v
        return {"packed": pk.buffer(), "layout": pk.layout, "_step": plan.step, "_bad": bad}


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Device side


def _where(on: torch.Tensor, fn: Callable[[torch.Tensor | slice], torch.Tensor], base: torch.Tensor) -> torch.Tensor:
    """`fn(sel)` (the op on the samples `sel`) where `on`, `base` elsewhere. On CUDA the op runs on every
    sample and `torch.where` keeps the drawn ones (no host synchronisation, static shapes); elsewhere it
    runs only on the drawn samples."""
    if base.device.type == "cuda":
        return torch.where(on.view(-1, *([1] * (base.ndim - 1))), fn(slice(None)), base)
    idx = on.nonzero().flatten()
    if idx.numel() == 0:
        return base
    out = base.clone()
    out[idx] = fn(idx).to(out.dtype)
    return out


def _colour(x: torch.Tensor, use_hsv: torch.Tensor, hsv: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """HSV shift where use_hsv, RGB levels elsewhere (DFL's 50/50), per sample."""
    out = _where(use_hsv, lambda s: hsv_shift(x[s], hsv[s]), x)
    return _where(~use_hsv, lambda s: rgb_levels(x[s], levels[s]), out)


def _take(bp: WarpBatchParams, s: torch.Tensor | slice) -> WarpBatchParams:
    """The warp parameters of the samples `s`."""
    if isinstance(s, slice):
        return bp
    return WarpBatchParams(bp.w, bp.rw, bp.nodes[s], bp.rmat[s], bp.flip[s])


def augment_batch(img: torch.Tensor, mask: torch.Tensor, p: dict[str, torch.Tensor], warp: WarpBatchParams,
                  background: tuple[torch.Tensor, torch.Tensor, WarpBatchParams] | None = None, *,
                  impl: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """docs/dfl.md §5.7 on a batch: img (N, 3, R, R) float BGR, mask (N, 1, R, R) the label as cached (not yet
    binary); p the draws of `draw_xseg` as tensors on img's device (bg_u / warp_u unused: `warp` and the
    background's params are given); background = (bg images, bg labels, their affine params) when the
    faceset has more than one face. Returns (image in [0, 1], label in {0, 1}), float32."""
    if background is not None:
        img = _paste_background(img, mask, p, *background, impl=impl)
    img = warp_batch(img, warp, True, True, True, True, "cubic", impl=impl).clamp_(0, 1)
    # DFL warps the label with warp_by_params' default interpolation (cubic), then binarises it
    mask = (warp_batch(mask, warp, True, True, True, False, "cubic", impl=impl) >= 0.5).float()
    return _filters(img, mask, p), mask


def _paste_background(img: torch.Tensor, mask: torch.Tensor, p: dict, bg_img: torch.Tensor, bg_mask: torch.Tensor,
                      bg_warp: WarpBatchParams, *, impl: str) -> torch.Tensor:
    """Step 1: another face's background pasted where neither label is (where bg_on)."""

    def paste(s):
        bp = _take(bg_warp, s)
        b = warp_batch(bg_img[s], bp, False, True, True, True, "cubic", impl=impl)
        bm = warp_batch(bg_mask[s], bp, False, True, True, False, "cubic", impl=impl)
        b = _colour(b * (1 - bm), p["bg_hsv_on"][s], p["bg_hsv"][s], p["bg_levels"][s])
        c = 1.0 - (1 - bm) * (1 - mask[s])
        rnd = p["bg_rnd"][s].view(-1, 1, 1, 1)
        x = img[s]
        return x * c + x * (1 - c) * rnd + b * (1 - c) * (1 - rnd)

    return _where(p["bg_on"], paste, img)


def _filters(img: torch.Tensor, mask: torch.Tensor, p: dict) -> torch.Tensor:
    """Steps 3-8 on the warped image (N, 3, R, R) with its binary label."""
    r = img.shape[-1]
    circles = {name: circle_faded(p["circles"][:, i], r) for i, name in enumerate(CIRCLES)}
    for i, weight in enumerate((mask, 1 - mask)):  # face flare, background flare: img += blur(img·weight)
        img = _where(p["flare_on"][:, i],
                     lambda s, w=weight, i=i: img[s] + fft_filter(img[s] * w[s], p["flare_k"][s, i]), img)
    img = blend(img, _colour(img, p["hsv_on"], p["hsv"], p["levels"]), circles["colour"])
    img = _where(p["detail_on"],
                 lambda s: blend(img[s], filter2d(img[s], p["detail_k"][s]), circles["detail"][s]), img)
    img = _where(p["blur_on"],
                 lambda s: blend(img[s], separable_filter(img[s], p["blur_k"][s]), circles["blur"][s]), img)
    img = _where(p["resize_on"], lambda s: blend(img[s], resize_down_up(img[s], p["resize_size"][s],
                                                                        p["resize_linear"][s]),
                                                 circles["resize"][s]), img)
    img = img.clamp(0, 1)

    def jpeg(s):
        x = img[s]
        u8 = torch.floor((x * 255).clamp(0, 255))  # numpy's astype(uint8) truncates
        return blend(x, jpeg_roundtrip(u8, p["jpeg_q"][s]).float() / 255.0, circles["jpeg"][s])

    return _where(p["jpeg_on"], jpeg, img)


class XSegAugment:
    """Raw batch (XSegDeviceBatches' arrays, unpacked on the training device) -> {"image" (N, 3, R, R) in
    [0, 1], "mask" (N, 1, R, R) in {0, 1}} (pretrain: {"image", "target" (N, 1, R, R)}), float32.

    warp_impl: kernels.warp implementation ("auto": Triton on CUDA, the C kernel on CPU). Nothing here draws
    random numbers."""

    def __init__(self, resolution: int, *, pretrain: bool = False, augment: bool = True, warp_impl: str = "auto"):
        self.resolution, self.pretrain, self.augment, self.warp_impl = int(resolution), pretrain, augment, warp_impl

    def _params(self, u: torch.Tensor, ranges: dict, dev: torch.device) -> WarpBatchParams:
        return warp_params_from_uniforms(u.to(dev), self.resolution, True, **ranges)

    def __call__(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img = raw["image"].permute(0, 3, 1, 2).float().div_(255.0).contiguous()  # (N, 3, R, R)
        dev = img.device
        if self.pretrain:
            if self.augment:
                bp = self._params(raw["warp_u"], PRETRAIN_RANGES, dev)
                img = warp_batch(img, bp, True, True, True, True, "cubic", impl=self.warp_impl)
            img = img.clamp_(0, 1)
            gray = sum(w * img[:, c:c + 1] for c, w in enumerate(_GRAY))  # python weights: no host-to-device copy
            return {"image": img.contiguous(), "target": gray}
        mask = raw["mask"].permute(0, 3, 1, 2).float().div_(255.0).contiguous()
        if not self.augment:  # the faces and labels as they are (checks, not DFL)
            return {"image": img.clamp_(0, 1), "mask": mask}
        bg = None
        if "bg_image" in raw:
            bg = (raw["bg_image"].permute(0, 3, 1, 2).float().div_(255.0).contiguous(),
                  raw["bg_mask"].permute(0, 3, 1, 2).float().div_(255.0).contiguous(),
                  self._params(raw["bg_u"], BG_RANGES, dev))
        img, mask = augment_batch(img, mask, raw, self._params(raw["warp_u"], MAIN_RANGES, dev), bg,
                                  impl=self.warp_impl)
        return {"image": img.contiguous(), "mask": mask}
