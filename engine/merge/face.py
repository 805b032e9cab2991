"""DFL's `MergeMaskedFace` and `MergeMasked` (docs/dfl.md §10.2): put one swapped face back into a frame, then
composite every face of the frame.

Images are BGR float32 in [0, 1], (H, W, 3); masks (H, W, 1). R is the model resolution.

merge_face(img_bgr, landmarks, spec, face_type, prediction):  (spec: the [merge] table, engine.merge.config)
 1. hull = landmark hull of the frame (§6.5).
 2-3. face_mat = get_transform_mat(lm, R, face_type); face_output_mat the same with scale
    1 + output_face_scale/100; face_mask_output_mat the latter at 4R (mask_subres_size).
 4. dst_face = clip(warpAffine(frame, face_mat, R, CUBIC)); the hull is warped the same way.
 5. The predictor saw resize(dst_face, R) (`predictor_input`); its three outputs are clipped to [0, 1].
 6. Mask by mask_mode (0 full, 1 dst hull, 2 learned-prd, 3 learned-dst, 4 product, 5 clipped sum, 6 XSeg-prd,
    7 XSeg-dst, 8 XSeg product, 9 all four); XSeg masks (256²) are cubic-resized to R.
 7. Values < 1/255 -> 0; cubic resize to 4R.
 8. Non-raw modes: pad by R, erode (e > 0, elliptic e×e) or dilate (e < 0), zero a border of R + blur//2,
    Gaussian blur (odd k = blur + (1 - blur%2), σ auto), crop the pad, clip. Sizes are px at 4R.
 9. frame mask = clip(warpAffine(mask, face_mask_output_mat, frame, INVERSE|CUBIC)), < 1/255 -> 0; the
    work mask is cubic-resized back to R.
10. original -> the frame; raw-rgb -> the inverse-warped face over a warped square of ones; raw-predict ->
    the predicted face (face space); overlay / hist-match / seamless / seamless-hist-match when the frame
    mask's ≥ 0.1 bounding box is ≥ 4 px each way: colour transfer (non-seamless, merger dispatch §5.6 on the
    binary area mask), hist-match (masked: outside forced white), inverse warp, seamlessClone (mask
    thresholded at the first non-empty i/10, centred on its bounding box), blend
    ``frame·(1-M) + out·M``; then, if any of seamless+ct, seamless-hist-match, motion blur, blur/sharpen,
    denoise, bicubic degrade is on, a face-space round trip with face_mat applying them (denoise and
    bicubic degrade act on the frame) and a second blend; finally colour degrade (lerp with a 256-colour
    image).
MergeMasked: each face is merged into the ORIGINAL frame; results are composited in order,
``final = final·(1-m) + img·m``, ``mask = clip(Σ m)``; output ``(concat(final, mask)·255).astype(uint8)``
(truncation, as DFL).

Checked against DFL's recorded MergeMaskedFace (golden merge/: overlay, overlay with defaults, hist-match,
seamless, raw-rgb, raw-predict): bit-identical outputs and inner calls when fed DFL's transforms. Details
that golden pinned down: inverse warps have a zero constant border; the binary area mask keeps the cubic
resize's negative ringing; hist-match's second image is not clipped; cv2.seamlessClone writes into its
mask argument. Not covered by the golden (no recorded case): mask modes 0/1/3/5-9, output_face_scale,
the colour transfers other than rct (each is golden-tested alone in tests/data), seamless-hist-match and
the post-processing filters (motion blur, blur/sharpen, denoise, bicubic and colour degrade), which follow
docs/dfl.md §10.2 steps 10.7-10.8.

Deviations:
- DFL's idt / sot draw from numpy's global RNG; here `rng` (per frame, seeded) makes merges reproducible.
- Super resolution (FaceEnhancer) is not available: [merge].super_resolution_power accepts only 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import cv2
import numpy as np
from PIL import Image

from engine.faces.color_transfer import color_hist_match, merger_color_transfer
from engine.faces.facetypes import FaceType
from engine.faces.filters import blursharpen, linear_motion_blur, median_passes  # re-exported: the merger's filters
from engine.faces.landmarks import get_transform_mat
from engine.faces.masks import get_image_hull_mask
from engine.errors import TorchSAEError
from engine.merge.config import color_transfer_id, mask_mode_id, needs_xseg, sharpen_mode_id
from engine.recipe.specs import MergeSpec

__all__ = [
    "FaceGeometry", "Prediction", "face_geometry", "dst_face_crop", "predictor_input", "xseg_dst_input",
    "xseg_prd_input", "XSEG_INPUT_SIZE", "predict_face", "merge_face", "composite_faces", "merge_frame",
    "process_work_mask", "blursharpen", "linear_motion_blur", "reduce_colors", "denoise_frame",
    "bicubic_degrade", "seamless_mask",
]

log = logging.getLogger("torchsae.merge")

XSEG_INPUT_SIZE = 256
_NOISE = 1.0 / 255.0  # DFL zeroes mask values below one 8-bit step ("get rid of noise")


@attrs.frozen
class FaceGeometry:
    """The three 2×3 image->face affines of one face (§10.2 step 3) and the sizes they map to."""

    face_mat: np.ndarray = attrs.field(eq=False)  # image -> face at output_size
    face_output_mat: np.ndarray = attrs.field(eq=False)  # same, with output_face_scale
    face_mask_output_mat: np.ndarray = attrs.field(eq=False)  # same scale, at mask_subres_size
    input_size: int
    output_size: int
    mask_subres_size: int


@attrs.frozen
class Prediction:
    """What the predictor (and XSeg) said about one face.

    face (R, R, 3) BGR, prd_mask (R, R) "learned-prd" (src decoder mask of the swap), dst_mask (R, R)
    "learned-dst"; xseg_prd / xseg_dst: XSeg masks (256, 256[, 1]) or None when no mask mode needs them.
    Values are as the networks returned them; merge_face clips.
    """

    face: np.ndarray = attrs.field(eq=False)
    prd_mask: np.ndarray = attrs.field(eq=False)
    dst_mask: np.ndarray = attrs.field(eq=False)
    xseg_prd: np.ndarray | None = attrs.field(default=None, eq=False)
    xseg_dst: np.ndarray | None = attrs.field(default=None, eq=False)


def face_geometry(landmarks: Any, resolution: int, face_type: FaceType | str | int, output_face_scale: int = 0
                  ) -> FaceGeometry:
    """Step 3: face_mat, face_output_mat (scale 1 + 0.01·output_face_scale) and face_mask_output_mat at 4R."""
    r = int(resolution)
    scale = 1.0 + 0.01 * output_face_scale
    return FaceGeometry(
        face_mat=get_transform_mat(landmarks, r, face_type),
        face_output_mat=get_transform_mat(landmarks, r, face_type, scale=scale),
        face_mask_output_mat=get_transform_mat(landmarks, 4 * r, face_type, scale=scale),
        input_size=r, output_size=r, mask_subres_size=4 * r,
    )


def dst_face_crop(img_bgr: np.ndarray, geom: FaceGeometry) -> np.ndarray:
    """Step 4: the dst face, ``clip(warpAffine(frame, face_mat, R, CUBIC), 0, 1)``, (R, R, 3)."""
    s = geom.output_size
    return np.clip(cv2.warpAffine(img_bgr, geom.face_mat, (s, s), flags=cv2.INTER_CUBIC), 0.0, 1.0)


def predictor_input(dst_face: np.ndarray, input_size: int) -> np.ndarray:
    """Step 5: what the predictor sees, ``cv2.resize(dst_face, (R, R))`` (bilinear; identity at equal size)."""
    return cv2.resize(dst_face, (input_size, input_size))


def xseg_dst_input(img_bgr: np.ndarray, landmarks: Any, face_type: FaceType | str | int) -> np.ndarray:
    """XSeg-dst input: ``warpAffine(frame, get_transform_mat(lm, 256, face_type), 256, CUBIC)`` (not clipped)."""
    mat = get_transform_mat(landmarks, XSEG_INPUT_SIZE, face_type)
    return cv2.warpAffine(img_bgr, mat, (XSEG_INPUT_SIZE, XSEG_INPUT_SIZE), flags=cv2.INTER_CUBIC)


def xseg_prd_input(prd_face: np.ndarray) -> np.ndarray:
    """XSeg-prd input: the clipped predicted face resized to 256 (bilinear)."""
    return cv2.resize(np.clip(prd_face, 0.0, 1.0), (XSEG_INPUT_SIZE, XSEG_INPUT_SIZE))


def predict_faces(img_bgr: np.ndarray, landmarks: Sequence[Any], spec: MergeSpec, face_type: FaceType, resolution: int,
                  predict: Callable[[np.ndarray], Sequence[np.ndarray]],
                  xseg: Callable[[np.ndarray], np.ndarray] | None = None) -> list[tuple[Prediction, FaceGeometry]]:
    """Crop every face of a frame and run the predictor on them as one batch (and XSeg, as one batch, when
    the mask mode needs it): one (Prediction, FaceGeometry) per landmarks.

    predict(faces (N, R, R, 3)) -> (face (N,R,R,3), prd_mask (N,R,R[,1]), dst_mask (N,R,R[,1])), as
    engine.export.runtime swappers return (celeb, celeb_mask, face_mask). xseg: XSegExtractor-like,
    (N,256,256,3) -> (N,256,256,1).
    """
    geoms = [face_geometry(lm, resolution, face_type, spec.output_face_scale) for lm in landmarks]
    x = np.stack([predictor_input(dst_face_crop(img_bgr, g), resolution) for g in geoms])
    faces, prd_m, dst_m = (np.asarray(o) for o in predict(x))
    xp = xd = [None] * len(geoms)
    if needs_xseg(spec):
        if xseg is None:
            raise TorchSAEError(f"mask mode {spec.mask_mode} needs an XSeg model (--xseg-model DIR with XSeg_256.npy)")
        if mask_mode_id(spec) in (6, 8, 9):
            xp = list(xseg(np.stack([xseg_prd_input(f) for f in faces])))
        if mask_mode_id(spec) in (7, 8, 9):
            xd = list(xseg(np.stack([xseg_dst_input(img_bgr, lm, face_type) for lm in landmarks])))
    return [(Prediction(face=faces[i], prd_mask=_hw(prd_m[i]), dst_mask=_hw(dst_m[i]), xseg_prd=xp[i], xseg_dst=xd[i]),
             g) for i, g in enumerate(geoms)]


def predict_face(img_bgr: np.ndarray, landmarks: Any, spec: MergeSpec, face_type: FaceType, resolution: int,
                 predictor: Callable[[np.ndarray], Sequence[np.ndarray]],
                 xseg: Callable[[np.ndarray], np.ndarray] | None = None) -> Prediction:
    """`predict_faces` for one face of a frame."""
    return predict_faces(img_bgr, [landmarks], spec, face_type, resolution, predictor, xseg)[0][0]


def _hw(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return m[..., 0] if m.ndim == 3 else m


# ---------------------------------------------------------------------------------------------------------
# filters (DFL core/imagelib), used by the post-processing step


def reduce_colors(img_bgr: np.ndarray, n_colors: int) -> np.ndarray:
    """DFL's reduce_colors: uint8 RGB (truncating ·255) -> PIL adaptive palette of n colours -> back to BGR
    float32 in [0, 1]."""
    rgb = (img_bgr[..., ::-1] * 255.0).astype(np.uint8)
    pal = Image.fromarray(np.ascontiguousarray(rgb)).convert("P", palette=Image.Palette.ADAPTIVE, colors=n_colors)
    back = np.asarray(pal.convert("RGB"), dtype=np.float32) / 255.0
    return cv2.cvtColor(back, cv2.COLOR_RGB2BGR)


def denoise_frame(img_bgr: np.ndarray, power: int) -> np.ndarray:
    """Image denoise over the whole frame: median-5 passes, full while the power is ≥ 100, else blended
    with weight (power % 100)/100; the power decreases by 10 per pass (`median_passes`)."""
    return median_passes(img_bgr, power, 100)


def bicubic_degrade(img_bgr: np.ndarray, power: int) -> np.ndarray:
    """Bicubic degrade of the frame: p = 1 - power/101; cubic downscale to (int(W·p), int(H·p)) and back."""
    h, w = img_bgr.shape[:2]
    p = 1.0 - power / 101.0
    small = cv2.resize(img_bgr, (max(int(w * p), 1), max(int(h * p), 1)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def seamless_mask(frame_mask: np.ndarray) -> np.ndarray | None:
    """The seamlessClone mask: 1 where the frame mask > i/10 for the first i in 1..9 that selects any pixel,
    else 0; None when no i does."""
    for i in range(1, 10):
        a = frame_mask > i / 10.0
        if a.any():
            return a.astype(np.float32)
    return None


# ---------------------------------------------------------------------------------------------------------
# the merge


def process_work_mask(mask_4r: np.ndarray, input_size: int, erode: int, blur: int) -> np.ndarray:
    """Step 8 on a (4R, 4R) mask: pad by R, erode/dilate, zero a border of R + blur//2, Gaussian blur,
    crop the pad, clip to [0, 1]. Returns (4R, 4R) float32."""
    m = np.pad(mask_4r, input_size)
    if erode > 0:
        m = cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (erode, erode)), iterations=1)
    elif erode < 0:
        m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-erode, -erode)), iterations=1)
    # confine the (eroded/dilated) mask to the predicted area, leaving half a blur of room to fade to zero
    clip = input_size + blur // 2
    m[:clip, :] = 0
    m[-clip:, :] = 0
    m[:, :clip] = 0
    m[:, -clip:] = 0
    if blur > 0:
        k = blur + (1 - blur % 2)
        m = cv2.GaussianBlur(m, (k, k), 0)
    m = m[input_size:-input_size, input_size:-input_size]
    return np.clip(m, 0.0, 1.0)


def _select_mask(spec: MergeSpec, pred_mask: np.ndarray, dst_mask: np.ndarray, hull_face: np.ndarray,
                 prediction: Prediction, size: int) -> np.ndarray:
    """Step 6: the (R, R) work mask for the mask mode (DFL's ids)."""
    mm = mask_mode_id(spec)
    if mm == 0:
        return np.ones_like(hull_face)
    if mm == 1:
        return hull_face
    if mm == 2:
        return pred_mask
    if mm == 3:
        return dst_mask
    if mm == 4:
        return pred_mask * dst_mask
    if mm == 5:
        return np.clip(pred_mask + dst_mask, 0.0, 1.0)

    def xs(m: np.ndarray | None, which: str) -> np.ndarray:
        if m is None:
            raise TorchSAEError(f"mask mode {spec.mask_mode} needs the {which} mask; give an XSeg model "
                                "(--xseg-model DIR holding XSeg_256.npy)")
        m = np.asarray(m, dtype=np.float32)
        m = m[..., 0] if m.ndim == 3 else m
        return cv2.resize(m, (size, size), interpolation=cv2.INTER_CUBIC) if m.shape[0] != size else m

    if mm == 6:
        return xs(prediction.xseg_prd, "XSeg-prd")
    if mm == 7:
        return xs(prediction.xseg_dst, "XSeg-dst")
    if mm == 8:
        return xs(prediction.xseg_prd, "XSeg-prd") * xs(prediction.xseg_dst, "XSeg-dst")
    return pred_mask * dst_mask * xs(prediction.xseg_prd, "XSeg-prd") * xs(prediction.xseg_dst, "XSeg-dst")


def _warp_back(face: np.ndarray, mat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inverse cubic warp of a face-space image into frame space, zero outside (BORDER_CONSTANT 0).

    DFL's recorded outputs (golden merge/ overlay, raw-rgb, seamless) are reproduced bit-exactly by a
    constant zero border: the face's last rows/columns fade towards 0 where the cubic kernel leaves the
    face, and the frame outside the face square is 0.
    """
    return cv2.warpAffine(face, mat, size, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT)


def merge_face(
    img_bgr: np.ndarray,
    landmarks: Any,
    spec: MergeSpec,
    face_type: FaceType,
    prediction: Prediction,
    *,
    img_bgr_uint8: np.ndarray | None = None,
    geometry: FaceGeometry | None = None,
    motion: tuple[float, float] = (0.0, 0.0),
    rng: np.random.RandomState | np.random.Generator | None = None,
    trace: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """DFL's MergeMaskedFace (docs/dfl.md §10.2, steps in the module docstring) for one face.

    img_bgr (H, W, 3) float32 in [0, 1] (= uint8 frame / 255); landmarks (68, 2) frame px; spec: the [merge]
    settings; face_type: the model's crop; prediction from
    `predict_face` (or any predictor fed `predictor_input`). img_bgr_uint8: the uint8 frame for
    seamlessClone (default round(img·255)). geometry: precomputed transforms (tests inject DFL's recorded
    ones). motion: (motion_power px, motion_deg) of this frame for motion blur. rng: for idt/sot/mix.
    trace: if a dict, receives the intermediates (masks, colour-transfer inputs, seamless arguments).

    Returns (out (H, W, 3), merging mask (H, W, 1)); raw-predict returns face-space (R, R, ·) arrays.
    """
    h, w = img_bgr.shape[:2]
    img_size = (w, h)
    t = trace if trace is not None else {}
    ct = color_transfer_id(spec)  # DFL's merger dispatches colour transfer by id (0 none)
    geom = geometry or face_geometry(landmarks, prediction.face.shape[0], face_type, spec.output_face_scale)
    r_in, r_out, r_mask = geom.input_size, geom.output_size, geom.mask_subres_size

    hull = get_image_hull_mask(img_bgr.shape, landmarks)  # (H, W, 1)
    dst_face = dst_face_crop(img_bgr, geom)
    hull_face = np.clip(cv2.warpAffine(hull, geom.face_mat, (r_out, r_out), flags=cv2.INTER_CUBIC), 0.0, 1.0)
    t["predictor_input_bgr"] = predictor_input(dst_face, r_in)

    prd_face = np.clip(np.asarray(prediction.face, dtype=np.float32), 0.0, 1.0)
    prd_mask = np.clip(_hw(prediction.prd_mask), 0.0, 1.0)
    dst_mask = np.clip(_hw(prediction.dst_mask), 0.0, 1.0)
    if prd_face.shape[:2] != (r_out, r_out):
        raise TorchSAEError(f"predicted face is {prd_face.shape[:2]}, expected the model resolution {(r_out, r_out)}")

    wrk = np.array(_select_mask(spec, prd_mask, dst_mask, hull_face, prediction, r_out), dtype=np.float32)
    wrk[wrk < _NOISE] = 0.0
    if wrk.shape[0] != r_mask:
        wrk = cv2.resize(wrk, (r_mask, r_mask), interpolation=cv2.INTER_CUBIC)
    if "raw" not in spec.mode:
        wrk = process_work_mask(wrk, r_in, spec.erode, spec.blur)
    t["work_mask_subres"] = wrk

    frame_mask = cv2.warpAffine(wrk, geom.face_mask_output_mat, img_size, np.zeros((h, w), dtype=np.float32),
                                flags=cv2.WARP_INVERSE_MAP | cv2.INTER_CUBIC)[..., None]
    frame_mask = np.clip(frame_mask, 0.0, 1.0)
    frame_mask[frame_mask < _NOISE] = 0.0
    if wrk.shape[0] != r_out:
        wrk = cv2.resize(wrk, (r_out, r_out), interpolation=cv2.INTER_CUBIC)
    wrk_a = wrk[..., None]  # (R, R, 1)
    t["frame_mask"] = frame_mask

    if spec.mode == "original":
        return img_bgr, frame_mask
    if spec.mode == "raw-rgb":
        face_px = _warp_back(prd_face, geom.face_output_mat, img_size)
        square = _warp_back(np.ones_like(prd_face), geom.face_output_mat, img_size)
        return np.clip(img_bgr * (1 - square) + face_px * square, 0.0, 1.0), frame_mask
    if spec.mode == "raw-predict":
        return prd_face, wrk_a

    # overlay / hist-match / seamless / seamless-hist-match: only if the mask covers ≥ 4 px each way
    ys, xs = np.nonzero(frame_mask[..., 0] >= 0.1)
    if ys.size == 0 or min(xs.max() - xs.min(), ys.max() - ys.min()) < 4:
        log.debug("merge: face mask too small, frame left unchanged")
        return img_bgr, frame_mask

    # DFL's wrk_face_mask_area_a: positive values -> 1; the cubic resize's small negative ringing is KEPT
    # (DFL sets only a > 0 to 1), which the -m colour transfers and hist-match then see
    area = np.where(wrk_a > 0, np.float32(1.0), wrk_a).astype(np.float32)
    t["area_mask"] = area
    seamless = "seamless" in spec.mode
    if not seamless and ct != 0:
        t["ct_arg0"], t["ct_arg1"] = prd_face, dst_face
        prd_face = merger_color_transfer(ct, prd_face, dst_face, area, rng=rng)
        t["ct_out"] = prd_face

    if spec.mode == "hist-match":
        hist_mask = area if spec.masked_hist_match else np.ones_like(area)
        white = 1.0 - hist_mask  # outside the mask both images are forced to white
        hm1 = np.minimum(prd_face * hist_mask + white, 1.0)
        # DFL clips hm2 where the (already clipped) hm1 > 1, i.e. never: hm2 keeps values above 1 where the
        # area mask carries the cubic resize's small negative ringing
        hm2 = dst_face * hist_mask + white
        t["hist_match_arg0"], t["hist_match_arg1"] = hm1, hm2
        prd_face = color_hist_match(hm1, hm2, spec.hist_match_threshold).astype(np.float32)
        t["hist_match_out"] = prd_face

    s_mask = seamless_mask(frame_mask) if seamless else None
    out = np.clip(_warp_back(prd_face, geom.face_output_mat, img_size), 0.0, 1.0)

    if seamless:
        if s_mask is None:
            log.warning("merge: seamless skipped, the face mask has no pixel above 0.1")
        else:
            u8 = img_bgr_uint8 if img_bgr_uint8 is not None else np.clip(np.rint(img_bgr * 255), 0, 255).astype(np.uint8)
            m8 = (s_mask * 255).astype(np.uint8)
            x0, y0, bw, bh = cv2.boundingRect(m8)
            center = (int(x0 + bw / 2), int(y0 + bh / 2))  # DFL computes the centre itself (stable, no jitter)
            src8 = (out * 255).astype(np.uint8)
            # OpenCV's seamlessClone writes into its mask argument: the trace keeps the mask as passed
            t["seamless_args"] = (src8, u8, m8.copy(), center)
            try:
                out = cv2.seamlessClone(src8, u8, m8, center, cv2.NORMAL_CLONE).astype(np.float32) / 255.0
            except cv2.error as e:  # DFL also carries on with the plain overlay when seamlessClone fails
                log.warning("merge: seamlessClone failed (%s); using the overlay", str(e).strip().splitlines()[-1])

    out = img_bgr * (1 - frame_mask) + out * frame_mask

    motion_power, motion_deg = motion
    mp = spec.motion_blur_power / 100.0
    if ((seamless and ct != 0) or spec.mode == "seamless-hist-match" or mp != 0
            or spec.blursharpen_amount != 0 or spec.image_denoise_power != 0 or spec.bicubic_degrade_power != 0):
        out_face = cv2.warpAffine(out, geom.face_mat, (r_out, r_out), flags=cv2.INTER_CUBIC)
        if seamless and ct != 0:
            t["ct_arg0"], t["ct_arg1"] = out_face, dst_face
            out_face = merger_color_transfer(ct, out_face, dst_face, area, rng=rng)
            t["ct_out"] = out_face
        if spec.mode == "seamless-hist-match":
            out_face = color_hist_match(out_face, dst_face, spec.hist_match_threshold)
        if mp != 0:
            k = int(motion_power * mp)
            if k >= 1:
                out_face = linear_motion_blur(out_face, int(np.clip(k + 1, 2, 50)), motion_deg)
        if spec.blursharpen_amount != 0:
            out_face = blursharpen(out_face, sharpen_mode_id(spec), 3, spec.blursharpen_amount)
        base = img_bgr
        if spec.image_denoise_power != 0:
            base = denoise_frame(base, spec.image_denoise_power)
        if spec.bicubic_degrade_power != 0:
            base = bicubic_degrade(base, spec.bicubic_degrade_power)
        new_out = _warp_back(out_face.astype(np.float32), geom.face_mat, img_size)
        out = np.clip(base * (1 - frame_mask) + new_out * frame_mask, 0.0, 1.0)

    if spec.color_degrade_power != 0:
        reduced = reduce_colors(out, 256)
        if spec.color_degrade_power == 100:
            out = reduced
        else:
            a = spec.color_degrade_power / 100.0
            out = out * (1.0 - a) + reduced * a
    return out.astype(np.float32), frame_mask


def composite_faces(img_bgr: np.ndarray, results: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """MergeMasked's composition: results [(out, mask), ...] in order -> (H, W, 4) uint8 (BGR + mask).

    ``final = final·(1-m) + out·m``, ``mask = clip(mask + m, 0, 1)``, starting from the first result;
    with no result the frame and a zero mask. The ·255 cast truncates, as DFL's astype(uint8).
    """
    if not results:
        final = img_bgr
        fmask = np.zeros(img_bgr.shape[:2] + (1,), dtype=np.float32)
    else:
        final, fmask = results[0]
        for out, m in results[1:]:
            final = final * (1 - m) + out * m
            fmask = np.clip(fmask + m, 0.0, 1.0)
    return (np.concatenate([final, fmask], -1) * 255).astype(np.uint8)


def merge_frame(
    frame_uint8: np.ndarray,
    faces: Sequence[tuple[Any, Prediction]],
    spec: MergeSpec,
    face_type: FaceType,
    *,
    motion: tuple[float, float] = (0.0, 0.0),
    rng: np.random.RandomState | np.random.Generator | None = None,
) -> np.ndarray:
    """DFL's MergeMasked: merge every (landmarks, prediction) of a frame into the original frame and
    composite them (`composite_faces`). frame_uint8 (H, W, 3) uint8 BGR -> (H, W, 4) uint8 BGR + mask.
    A frame without faces comes back unchanged (mask 0)."""
    img = frame_uint8.astype(np.float32) / 255.0
    results = [merge_face(img, lm, spec, face_type, pred, img_bgr_uint8=frame_uint8, motion=motion, rng=rng)
               for lm, pred in faces]
    if not results:
        return np.concatenate([frame_uint8, np.zeros(frame_uint8.shape[:2] + (1,), np.uint8)], -1)
    return composite_faces(img, results)
