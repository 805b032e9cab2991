"""DFL's SampleProcessor for SAEHD (docs/dfl.md §5.2–5.5, §7.3, quirks §12.8/§12.14), in two execution modes.

Per sample, SAEHD asks its generators for four outputs at model resolution R and face type:

| # | name     | content                                                                          |
|---|----------|----------------------------------------------------------------------------------|
| 0 | warped   | FACE_IMAGE: face-type conversion, ct (src), HSV shift (src), grid warp + affine + flip |
| 1 | target   | FACE_IMAGE: face-type conversion, ct (src), affine + flip                        |
| 2 | mask     | FULL_FACE mask (XSeg mask if present, else landmark hull), affine + flip          |
| 3 | mask_em  | EYES_MOUTH mask ((eye + mouth) · (full ≠ 0)), affine + flip, renormalised to max 1 |

Random-number protocol (§5.2), reproduced exactly: the sample's `seed` (DFL: `np.random.randint(2**31)`
from the worker's global RNG) seeds fresh `rnd_state = RandomState(seed)` and
`warp_rnd_state = RandomState(seed)` for every output, so all four share rotation, scale, translation,
flip and grid; output 0 continues `rnd_state` with the three HSV draws. DFL's idt/sot colour transfer
draws from the worker's global RNG *after* the seed draw, once per FACE_IMAGE output (so outputs 0 and 1
differ); `sample_rngs(sample_key)` rebuilds that per-sample "global" stream: RandomState(sample_key)
draws the seed, then feeds idt/sot.

Execution modes:

- "dfl" (`process_dfl`): per-sample numpy + OpenCV exactly as DFL — float32 decode, face-type warpAffine
  (images: cubic, replicate; masks: linear, constant) or resize, ct against the dst sample resized
  (linear) to R, HSV, `kernels.warp.warp_by_params`. The oracle; bit-exact against the goldens.
- "fast" (`prepare_face` once per sample + `process_fast_batch` per batch): the face-type conversion /
  resize is done once per sample and cached at model resolution as uint8 (image, FULL_FACE mask,
  EYES_MOUTH mask); per batch only ct and HSV (the same numpy code as "dfl") and the geometric warp run,
  the warp batched in torch by `kernels.warp.warp_batch` with the *same* DFL parameters.

Where "fast" differs from "dfl" (bounded in tests/data/test_sample_fast.py):
1. Cache quantisation: the converted image and masks are stored as uint8, so ct/HSV/warp start from
   values rounded to 1/255 (|Δ| ≤ 0.5/255 before the warp) and clipped to [0, 1] (DFL keeps the cubic
   face-type conversion's slight overshoot until the final clip). Exact when no conversion is needed
   (faceset face type = model face type and image side = R): the decoded uint8 pixels are cached as is.
2. Warped input (output 0): DFL interpolates twice (cv2.remap by the grid, then cv2.warpAffine);
   warp_batch composes both maps and samples once (see kernels/warp/batched.py). This is the only
   non-rounding difference; it is interpolation error, largest at sharp edges.
3. Targets and masks (no grid warp): warp_batch reproduces cv2.warpAffine's fixed-point coordinates, so
   these differ only by float summation order (~1e-6) on top of (1).
ct and HSV are identical numpy code in both modes, with the same RNG streams (rct/lct/mkl use whole-image
statistics, so (1) shifts every pixel of a converted face a little, not just the edges).
Measured on synthetic 256² wf faces into an f-128 model with rct and HSV 0.1 (|fast − dfl|):
target mean 0.002, 99th percentile 0.009, max 0.06 (clipped overshoot at sharp edges); warped input mean
0.004, p99 0.06, max 0.23 (at sharp edges); masks max 2/255 (uint8 rounding); no conversion: target and
FULL_FACE mask identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import cv2
import numpy as np
import torch

from engine.faces.color_transfer import CT_MODES, color_transfer
from engine.faces.faceset import FaceData
from engine.faces.facetypes import FaceType
from engine.data.hsv import HSVShift, apply_hsv_shift, draw_hsv_shift
from engine.faces.landmarks import get_transform_mat
from engine.faces.masks import get_eyes_mouth_mask, get_image_hull_mask
from engine.errors import DataError, did_you_mean
from kernels.warp import WarpBatchParams, gen_warp_params, warp_batch, warp_by_params
from kernels.warp import choose as choose_warp

__all__ = [
    "SampleOptions",
    "SampleOutputs",
    "PreparedFace",
    "OUTPUT_NAMES",
    "sample_rngs",
    "draw_augmentation",
    "image_to_model",
    "mask_to_model",
    "full_face_mask",
    "process_dfl",
    "prepare_face",
    "prepare_ct_ref",
    "process_fast_batch",
]

OUTPUT_NAMES = ("warped", "target", "mask", "mask_em")
_RANDOM_CT = ("idt", "sot")  # draw from the global RNG per call (§5.2): called once per FACE_IMAGE output


def _face_type(value: FaceType | str | int) -> FaceType:
    return FaceType.parse(value, "model face_type")


def _ct_mode(value: str | None) -> str | None:
    if value is None or value == "none":
        return None
    if value not in CT_MODES:
        raise DataError(f"ct_mode = {value!r}: unknown colour transfer{did_you_mean(str(value), CT_MODES)} "
                        f"(valid: none, {', '.join(CT_MODES)})")
    return value


def _pair(v: Sequence[float]) -> tuple[float, float]:
    lo, hi = (float(x) for x in v)
    return lo, hi


@attrs.frozen(kw_only=True)
class SampleOptions:
    """One generator's SampleProcessor settings (§5.1): the model's R and face type plus augmentation.

    SAEHD src: random_flip = random_src_flip, random_hsv_power, ct_mode; dst: random_flip =
    random_dst_flip, no HSV, no ct. Ranges default to SAEHD's (scale ±0.15, the rest DFL defaults).
    """

    resolution: int
    face_type: FaceType = attrs.field(converter=_face_type)
    random_warp: bool = True
    random_flip: bool = False
    random_hsv_power: float = 0.0
    ct_mode: str | None = attrs.field(default=None, converter=_ct_mode)
    rotation_range: tuple[float, float] = attrs.field(default=(-10.0, 10.0), converter=_pair)
    scale_range: tuple[float, float] = attrs.field(default=(-0.15, 0.15), converter=_pair)
    tx_range: tuple[float, float] = attrs.field(default=(-0.05, 0.05), converter=_pair)
    ty_range: tuple[float, float] = attrs.field(default=(-0.05, 0.05), converter=_pair)

    def __attrs_post_init__(self) -> None:
        if self.resolution < 16:
            raise DataError(f"resolution = {self.resolution}: expected at least 16 (SAEHD: 64..640)")
        if not 0.0 <= self.random_hsv_power <= 1.0:
            raise DataError(f"random_hsv_power = {self.random_hsv_power}: expected 0..1 (SAEHD: 0..0.3)")
        if self.face_type not in (FaceType.HALF, FaceType.MID_FULL, FaceType.FULL, FaceType.WHOLE_FACE, FaceType.HEAD):
            raise DataError(f"model face_type = {self.face_type.long_name!r}: SAEHD trains h, mf, f, wf or head")

    def for_pretrain(self) -> SampleOptions:
        """DFL's pretrain forcing (§5.5): no warp, flip on, no HSV, no ct."""
        return attrs.evolve(self, random_warp=False, random_flip=True, random_hsv_power=0.0, ct_mode=None)


@attrs.frozen
class SampleOutputs:
    """The four outputs of one sample, HWC float32: warped/target (R, R, 3) in [0, 1], masks (R, R, 1)."""

    warped: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    mask_em: np.ndarray


# ---------------------------------------------------------------------------------------------------------
# Random-number protocol


def sample_rngs(sample_key: int) -> tuple[int, np.random.RandomState]:
    """(seed, ct_rng) of one sample from its key: DFL's per-worker global stream, made per-sample.

    DFL: `seed = np.random.randint(0x80000000)` from the worker's global RNG, then idt/sot keep drawing
    from that global RNG. Here RandomState(sample_key) plays that RNG for this one sample.
    """
    g = np.random.RandomState(int(sample_key) & 0xFFFFFFFF)
    return int(g.randint(0x80000000)), g


def draw_augmentation(seed: int, opts: SampleOptions) -> tuple[dict[str, Any], HSVShift | None]:
    """DFL's per-sample warp parameters and (src) HSV shift for `seed` (§5.2).

    Fresh RandomState(seed) for rnd_state and warp_rnd_state, `gen_warp_params(R, random_flip, ranges)`,
    then — for output 0 only, continuing the same rnd_state — the three HSV draws. Every output of a
    DFL sample regenerates identical params from identical fresh states, so one draw serves all four.
    """
    rnd_state = np.random.RandomState(seed)
    warp_rnd_state = np.random.RandomState(seed)
    params = gen_warp_params(
        opts.resolution, opts.random_flip,
        rotation_range=opts.rotation_range, scale_range=opts.scale_range,
        tx_range=opts.tx_range, ty_range=opts.ty_range,
        rnd_state=rnd_state, warp_rnd_state=warp_rnd_state,
    )
    hsv = draw_hsv_shift(rnd_state, opts.random_hsv_power) if opts.random_hsv_power != 0 else None
    return params, hsv


# ---------------------------------------------------------------------------------------------------------
# Geometry to model resolution and face type (§5.4 FACE_IMAGE step 1, FACE_MASK step 3)


def _to_float(img: np.ndarray) -> np.ndarray:
    """DFL's load_bgr: uint8 -> float32 / 255 (float arrays pass through as float32)."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    return np.asarray(img, dtype=np.float32)


def _convert(img: np.ndarray, face: FaceData, opts: SampleOptions, *, inter: int, border: int) -> np.ndarray:
    r = opts.resolution
    h, w = img.shape[:2]
    if face.face_type != opts.face_type:
        mat = get_transform_mat(face.landmarks, r, opts.face_type)
        return cv2.warpAffine(img, mat, (r, r), borderMode=border, flags=inter)
    # DFL tests only `w != resolution`; aligned faces are square. A non-square image would break the
    # batch shape later, so both sides are checked.
    if w != r or h != r:
        return cv2.resize(img, (r, r), interpolation=inter)
    return img


def image_to_model(img: np.ndarray, face: FaceData, opts: SampleOptions) -> np.ndarray:
    """float32 (h, w, 3) -> (R, R, 3): warpAffine(get_transform_mat(lm, R, model ft), cubic, replicate)
    when the face types differ, else cubic resize when the size differs (may overshoot [0, 1] slightly)."""
    return _convert(img, face, opts, inter=cv2.INTER_CUBIC, border=cv2.BORDER_REPLICATE)


def mask_to_model(mask: np.ndarray, face: FaceData, opts: SampleOptions) -> np.ndarray:
    """float32 (h, w, 1) -> (R, R, 1): as image_to_model but linear interpolation and a constant 0 border."""
    out = _convert(mask, face, opts, inter=cv2.INTER_LINEAR, border=cv2.BORDER_CONSTANT)
    return out.reshape(opts.resolution, opts.resolution, 1) if out.ndim == 2 else out


def full_face_mask(face: FaceData) -> np.ndarray:
    """FULL_FACE mask at the sample's own size, float32 (h, w, 1) in [0, 1] (§5.4, §7.3).

    The XSeg mask when the sample has one (cubic-resized to (w, h) if it is another size, one channel,
    clipped), else the landmark hull with the sample's eyebrows_expand_mod.
    """
    h, w = face.image.shape[:2]
    if face.xseg_mask is not None:
        m = np.asarray(face.xseg_mask, dtype=np.float32)
        if m.ndim == 2:
            m = m[..., None]
        if m.shape[0] != h or m.shape[1] != w:
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_CUBIC)
            m = m.reshape(h, w, -1)[..., :1]
        return np.clip(m, 0, 1)
    return np.clip(get_image_hull_mask(face.image.shape, face.landmarks, face.eyebrows_expand_mod), 0, 1)


def _masks_at_model(face: FaceData, opts: SampleOptions) -> tuple[np.ndarray, np.ndarray]:
    full = full_face_mask(face)
    em = get_eyes_mouth_mask(face.image.shape, face.landmarks, full)
    return mask_to_model(full, face, opts), mask_to_model(em, face, opts)


# ---------------------------------------------------------------------------------------------------------
# "dfl" mode: the oracle


def _ct_ref(ct_image: np.ndarray, r: int) -> np.ndarray:
    """The dst colour reference: the dst sample's decoded image resized (linear) to R, not re-aligned."""
    return cv2.resize(_to_float(ct_image), (r, r), interpolation=cv2.INTER_LINEAR)


def process_dfl(face: FaceData, seed: int, opts: SampleOptions, ct_image: np.ndarray | None = None,
                ct_rng: np.random.RandomState | None = None) -> SampleOutputs:
    """DFL's SampleProcessor.process for one SAEHD sample (§5.4), numpy + OpenCV, bit-exact.

    face: the decoded sample; seed: DFL's per-sample seed (see `sample_rngs`); ct_image: the dst sample's
    decoded image (uint8 or float) when opts.ct_mode is set (None: no ct, as DFL without ct_sample);
    ct_rng: the RNG idt/sot draw from (DFL: the worker's global RNG), used for output 0 then output 1.
    """
    r = opts.resolution
    params, hsv = draw_augmentation(seed, opts)
    base = image_to_model(_to_float(face.image), face, opts)
    ref = _ct_ref(ct_image, r) if (opts.ct_mode and ct_image is not None) else None
    shared_ct = color_transfer(opts.ct_mode, base, ref) if (ref is not None and opts.ct_mode not in _RANDOM_CT) else None

    images = []
    for out in (0, 1):
        img = base
        if ref is not None:
            img = shared_ct if shared_ct is not None else color_transfer(opts.ct_mode, base, ref, rng=ct_rng)
        if out == 0 and hsv is not None:
            img = apply_hsv_shift(img, hsv)
        img = warp_by_params(params, img, can_warp=(out == 0 and opts.random_warp), can_transform=True,
                             can_flip=True, border_replicate=True, cv2_inter=cv2.INTER_CUBIC)
        images.append(np.clip(img.astype(np.float32), 0, 1))

    full, em = _masks_at_model(face, opts)
    masks = [warp_by_params(params, m, can_warp=False, can_transform=True, can_flip=True, border_replicate=False,
                            cv2_inter=cv2.INTER_LINEAR).astype(np.float32) for m in (full, em)]
    div = masks[1].max()
    if div != 0.0:
        masks[1] = masks[1] / div  # §5.4 step 4: renormalise the EYES_MOUTH peak to 1 after warping
    return SampleOutputs(images[0], images[1], masks[0], masks[1])


# ---------------------------------------------------------------------------------------------------------
# "fast" mode


@attrs.frozen
class PreparedFace:
    """One sample converted to model geometry once: image (R, R, 3) uint8 BGR, masks (R, R, 2) uint8
    (channel 0 FULL_FACE, channel 1 EYES_MOUTH before the affine), i.e. DFL's values after its
    face-type conversion / resize, rounded to 1/255."""

    image: np.ndarray
    masks: np.ndarray


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def prepare_face(face: FaceData, opts: SampleOptions) -> PreparedFace:
    """The cacheable, randomness-free part of the pipeline for one sample (see module docstring)."""
    r = opts.resolution
    if face.face_type == opts.face_type and face.image.shape[:2] == (r, r) and face.image.dtype == np.uint8:
        image = np.ascontiguousarray(face.image)  # no conversion: DFL uses the decoded pixels as they are
    else:
        image = _to_u8(image_to_model(_to_float(face.image), face, opts))
    full, em = _masks_at_model(face, opts)
    masks = _to_u8(np.concatenate([full, em], axis=-1))
    return PreparedFace(image, masks)


def prepare_ct_ref(ct_image: np.ndarray, resolution: int) -> np.ndarray:
    """The cacheable dst colour reference: (R, R, 3) uint8 of the dst image resized (linear) to R."""
    return _to_u8(_ct_ref(ct_image, resolution))


def process_fast_batch(images: np.ndarray, masks: np.ndarray, seeds: Sequence[int], opts: SampleOptions,
                       ct_refs: np.ndarray | None = None, ct_rngs: Sequence[np.random.RandomState] | None = None,
                       warp_impl: str = "auto") -> dict[str, torch.Tensor]:
    """The per-batch part of "fast" mode for N prepared samples.

    images (N, R, R, 3) uint8, masks (N, R, R, 2) uint8 (from `prepare_face`), seeds (N,) DFL seeds,
    ct_refs (N, R, R, 3) uint8 (from `prepare_ct_ref`) and ct_rngs when opts.ct_mode is set.
    Returns NCHW float32 CPU tensors: warped (N, 3, R, R), target (N, 3, R, R), mask and mask_em
    (N, 1, R, R). ct and HSV run per sample in numpy (as "dfl"); the warp runs batched in torch.
    """
    n = len(seeds)
    drawn = [draw_augmentation(int(s), opts) for s in seeds]
    params: list | WarpBatchParams = [p for p, _ in drawn]
    if choose_warp("cpu", warp_impl) != "reference":
        params = WarpBatchParams.from_dfl(params)  # converted once for the three warps below
    base = images.astype(np.float32) / 255.0  # (N, R, R, 3)
    use_ct = opts.ct_mode is not None and ct_refs is not None
    hsv_any = any(h is not None for _, h in drawn)

    if use_ct or hsv_any:
        inputs = np.empty_like(base)
        targets = np.empty_like(base) if use_ct else base
        for i in range(n):
            img0 = img1 = base[i]
            if use_ct:
                ref = ct_refs[i].astype(np.float32) / 255.0
                rng = ct_rngs[i] if ct_rngs is not None else None
                if opts.ct_mode in _RANDOM_CT:
                    img0 = color_transfer(opts.ct_mode, base[i], ref, rng=rng)
                    img1 = color_transfer(opts.ct_mode, base[i], ref, rng=rng)
                else:
                    img0 = img1 = color_transfer(opts.ct_mode, base[i], ref)
                targets[i] = img1
            hsv = drawn[i][1]
            inputs[i] = apply_hsv_shift(img0, hsv) if hsv is not None else img0
    else:
        inputs = targets = base

    def nchw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    t_in = nchw(inputs)
    t_tg = t_in if targets is inputs else nchw(targets)
    target = warp_batch(t_tg, params, False, True, True, True, "cubic", impl=warp_impl)
    if opts.random_warp or t_in is not t_tg:
        warped = warp_batch(t_in, params, opts.random_warp, True, True, True, "cubic", impl=warp_impl)
    else:  # no grid warp, no HSV, no random ct: the network input is the target (pretrain)
        warped = target.clone()
    m = warp_batch(nchw(masks.astype(np.float32) / 255.0), params, False, True, True, False, "linear", impl=warp_impl)
    mask, mask_em = m[:, 0:1], m[:, 1:2]
    peak = mask_em.amax(dim=(1, 2, 3), keepdim=True)
    mask_em = mask_em / torch.where(peak != 0, peak, torch.ones_like(peak))  # §5.4 step 4; all-zero stays 0
    return {
        "warped": warped.clamp_(0, 1).contiguous(),
        "target": target.clamp_(0, 1).contiguous(),
        "mask": mask.contiguous(),
        "mask_em": mask_em.contiguous(),
    }
