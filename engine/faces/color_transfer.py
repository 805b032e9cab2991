"""Colour transfer: DFL's `core/imagelib/color_transfer.py` (docs/dfl.md §5.6) and the two dispatchers that use it.

Every function recolours its FIRST image to match the colour statistics of its SECOND. Images are BGR
float32 H×W×3 in [0, 1]; masks H×W×1.

| name   | function                       | DFL behaviour kept                                              |
|--------|--------------------------------|-----------------------------------------------------------------|
| rct    | `reinhard_color_transfer`      | LAB mean/std match; masked-out pixels are ZEROED, still counted |
| lct    | `linear_color_transfer`        | covariance match (pca / chol / sym), cov / N + eps·I             |
| mkl    | `color_transfer_mkl`           | Monge-Kantorovich linear map, np.cov (unbiased), eig            |
| idt    | `color_transfer_idt`           | 20 random rotations of 1-D histogram matching, right=bins quirk |
| sot    | `color_transfer_sot`           | sliced optimal transport + bilateral regularisation, unclipped  |
| mix    | `color_transfer_mix`           | uint8 LAB: L by lct, a/b by sot on L=100 images                 |
| hist   | `color_hist_match`             | per-channel quantile matching with a threshold                   |

`color_transfer(ct_mode, img_src, img_trg)` is SampleProcessor's dispatch (§5.4 step 2);
`merger_color_transfer(mode, prd, dst, area_mask)` is MergeMaskedFace's (§10.2 step 10.2, ids 0..8).

Randomness (deviation from DFL, by design): DFL's idt and sot draw from numpy's global RNG, so two
workers seeded alike repeat each other and tests cannot replay them. Here they take `rng`
(np.random.RandomState or Generator; default a fresh unseeded Generator) or the draws themselves
(`rotations=` for idt, `directions=` for sot). `rng=np.random.RandomState(s)` reproduces DFL after
`np.random.seed(s)` exactly (same legacy normal stream, same scipy special_ortho_group sampler).
"""

from __future__ import annotations

from typing import Union

import cv2
import numpy as np
from scipy.stats import special_ortho_group

from engine.errors import DataError, did_you_mean

__all__ = [
    "reinhard_color_transfer",
    "linear_color_transfer",
    "color_transfer_mkl",
    "color_transfer_idt",
    "color_transfer_sot",
    "color_transfer_mix",
    "color_hist_match",
    "channel_hist_match",
    "color_transfer",
    "merger_color_transfer",
    "CT_MODES",
    "MERGER_CT_MODES",
]

Rng = Union[np.random.RandomState, np.random.Generator, None]

# SampleProcessor ct_mode names (SAEHD option 'ct_mode'; 'none' means off).
CT_MODES = ("rct", "lct", "mkl", "idt", "sot")
# Merger colour-transfer ids (MergerConfig ctm_dict); 0 = none.
MERGER_CT_MODES = {0: None, 1: "rct", 2: "lct", 3: "mkl", 4: "mkl-m", 5: "idt", 6: "idt-m", 7: "sot-m", 8: "mix-m"}


def _rng(rng: Rng) -> np.random.RandomState | np.random.Generator:
    return np.random.default_rng() if rng is None else rng


def _lab_stats(lab: np.ndarray) -> list[tuple[np.float32, np.float32]]:
    return [(lab[..., i].mean(), lab[..., i].std()) for i in range(3)]


def reinhard_color_transfer(
    target: np.ndarray,
    source: np.ndarray,
    target_mask: np.ndarray | None = None,
    source_mask: np.ndarray | None = None,
    mask_cutoff: float = 0.5,
) -> np.ndarray:
    """rct: recolour `target` so each LAB channel has `source`'s mean and population std (§5.6).

    out_c = (t_c - μt_c)·σs_c/σt_c + μs_c on the unmasked target LAB; L clipped to [0, 100], a/b to
    [-127, 127]; LAB → BGR with cv2 (whose float conversion clamps to [0, 1]).
    Quirk §12.15: for the statistics, pixels with mask < mask_cutoff are set to 0 in LAB, not excluded.
    A target channel with zero std yields NaN there, which the LAB→BGR conversion maps to white (DFL
    does the same).
    """
    target = np.asarray(target, dtype=np.float32)
    source = np.asarray(source, dtype=np.float32)
    source_lab = cv2.cvtColor(source, cv2.COLOR_BGR2LAB)
    target_lab = cv2.cvtColor(target, cv2.COLOR_BGR2LAB)

    source_input = source_lab
    if source_mask is not None:
        source_input = source_input.copy()
        source_input[np.asarray(source_mask)[..., 0] < mask_cutoff] = [0, 0, 0]
    target_input = target_lab
    if target_mask is not None:
        target_input = target_input.copy()
        target_input[np.asarray(target_mask)[..., 0] < mask_cutoff] = [0, 0, 0]

    s_stats = _lab_stats(source_input)
    t_stats = _lab_stats(target_input)
    out = np.empty_like(target_lab)
    # A constant target channel (σt = 0) gives NaN, which cv2's LAB→BGR turns into white, as in DFL.
    with np.errstate(divide="ignore", invalid="ignore"):
        for c, ((s_mean, s_std), (t_mean, t_std)) in enumerate(zip(s_stats, t_stats)):
            out[..., c] = (target_lab[..., c] - t_mean) * s_std / t_std + s_mean
    np.clip(out[..., 0], 0, 100, out=out[..., 0])
    np.clip(out[..., 1], -127, 127, out=out[..., 1])
    np.clip(out[..., 2], -127, 127, out=out[..., 2])
    return cv2.cvtColor(out, cv2.COLOR_LAB2BGR)


def _sqrtm_sym(c: np.ndarray) -> np.ndarray:
    eva, eve = np.linalg.eigh(c)
    return eve.dot(np.diag(np.sqrt(eva))).dot(eve.T)


def linear_color_transfer(target_img: np.ndarray, source_img: np.ndarray, mode: str = "pca", eps: float = 1e-5) -> np.ndarray:
    """lct: affine colour map matching mean and channel covariance (§5.6), clipped to [0, 1].

    C = X·Xᵀ/N + eps·I for centred (C, N) pixel matrices. pca: out = Qs·Qt⁻¹·(t - μt) + μs with
    Q = C^½ (eigh); chol: Ls·Lt⁻¹ (Cholesky factors); sym: Qt⁻¹·(Qt·Cs·Qt)^½·Qt⁻¹.
    Works for any channel count (the merger's mix uses it on the single L channel).
    """
    if mode not in ("pca", "chol", "sym"):
        raise DataError(f"linear_color_transfer: unknown mode {mode!r}{did_you_mean(mode, ['pca', 'chol', 'sym'])} (valid: pca, chol, sym)")
    mu_t = target_img.mean(0).mean(0)
    t = target_img - mu_t
    t = t.transpose(2, 0, 1).reshape(t.shape[-1], -1)  # (C, N)
    ct = t.dot(t.T) / t.shape[1] + eps * np.eye(t.shape[0])
    mu_s = source_img.mean(0).mean(0)
    s = source_img - mu_s
    s = s.transpose(2, 0, 1).reshape(s.shape[-1], -1)
    cs = s.dot(s.T) / s.shape[1] + eps * np.eye(s.shape[0])
    if mode == "chol":
        chol_t = np.linalg.cholesky(ct)
        chol_s = np.linalg.cholesky(cs)
        ts = chol_s.dot(np.linalg.inv(chol_t)).dot(t)
    elif mode == "pca":
        qt = _sqrtm_sym(ct)
        qs = _sqrtm_sym(cs)
        ts = qs.dot(np.linalg.inv(qt)).dot(t)
    else:  # sym
        qt = _sqrtm_sym(ct)
        qt_cs_qt = _sqrtm_sym(qt.dot(cs).dot(qt))
        ts = np.linalg.inv(qt).dot(qt_cs_qt).dot(np.linalg.inv(qt)).dot(t)
    matched = ts.reshape(*target_img.transpose(2, 0, 1).shape).transpose(1, 2, 0)
    matched = matched + mu_s
    return np.clip(matched.astype(source_img.dtype), 0, 1)


def color_transfer_mkl(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """mkl: Monge-Kantorovich linear transfer (§5.6), float32 clipped to [0, 1].

    A = cov(x0), B = cov(x1) (unbiased); A = Ua·Da²·Uaᵀ, C = Da·Uaᵀ·B·Ua·Da = Uc·Dc²·Ucᵀ (eig, eigenvalues
    clipped at float64 eps); T = Ua·Da⁻¹·Uc·Dc·Ucᵀ·Da⁻¹·Uaᵀ; out = (x0 - mean0)·T + mean1.
    """
    eps = np.finfo(float).eps
    h, w, c = x0.shape
    x0f = x0.reshape(-1, c)
    x1f = x1.reshape(-1, x1.shape[-1])
    a = np.cov(x0f.T)
    b = np.cov(x1f.T)
    da2, ua = np.linalg.eig(a)
    da = np.diag(np.sqrt(da2.clip(eps, None)))
    cm = np.dot(np.dot(np.dot(np.dot(da, ua.T), b), ua), da)
    dc2, uc = np.linalg.eig(cm)
    dc = np.diag(np.sqrt(dc2.clip(eps, None)))
    da_inv = np.diag(1.0 / np.diag(da))
    t = np.dot(np.dot(np.dot(np.dot(np.dot(np.dot(ua, da_inv), uc), dc), uc.T), da_inv), ua.T)
    mx0 = np.mean(x0f, axis=0)
    mx1 = np.mean(x1f, axis=0)
    result = np.dot(x0f - mx0, t) + mx1
    return np.clip(result.reshape((h, w, c)).astype(x0.dtype), 0, 1)


def color_transfer_idt(
    i0: np.ndarray,
    i1: np.ndarray,
    bins: int = 256,
    n_rot: int = 20,
    rng: Rng = None,
    rotations: np.ndarray | None = None,
) -> np.ndarray:
    """idt: iterative distribution transfer (Pitié et al.), DFL variant (§5.6), clipped to [0, 1].

    For each of n_rot random rotations r (scipy special_ortho_group, as float32): rotate both pixel
    clouds, match each rotated axis' 1-D distribution through `bins`-bin CDFs over the joint range
    (np.interp with right=bins: DFL's out-of-range quirk), and move d0 by solve(r, Δ)/n_rot.
    rotations: (n_rot, C, C) draws to use instead of `rng` (the goldens store DFL's).
    """
    relaxation = 1 / n_rot
    h, w, c = i0.shape
    d0 = i0.reshape(-1, c).T  # (C, N)
    d1 = i1.reshape(-1, i1.shape[-1]).T
    gen = None if rotations is not None else _rng(rng)
    for i in range(n_rot):
        if rotations is not None:
            r = np.asarray(rotations[i], dtype=np.float32)
        else:
            r = special_ortho_group.rvs(c, random_state=gen).astype(np.float32)
        d0r = np.dot(r, d0)
        d1r = np.dot(r, d1)
        d_r = np.empty_like(d0)
        for j in range(c):
            lo = min(d0r[j].min(), d1r[j].min())
            hi = max(d0r[j].max(), d1r[j].max())
            # Bin edges as numpy 1.x built them for DFL: linspace in float64, then cast to the data's
            # float32 (numpy >= 2 would run linspace in float32, moving edges by an ulp and pixels
            # across bins). Explicit edges give the same counts as the uniform-bin fast path.
            edges = np.linspace(float(lo), float(hi), bins + 1).astype(d0r.dtype)
            p0r, _ = np.histogram(d0r[j], bins=edges)
            p1r, _ = np.histogram(d1r[j], bins=edges)
            cp0r = p0r.cumsum().astype(np.float32)
            cp0r /= cp0r[-1]
            cp1r = p1r.cumsum().astype(np.float32)
            cp1r /= cp1r[-1]
            f = np.interp(cp0r, cp1r, edges[1:])
            d_r[j] = np.interp(d0r[j], edges[1:], f, left=0, right=bins)
        d0 = relaxation * np.linalg.solve(r, (d_r - d0r)) + d0
    return np.clip(d0.T.reshape((h, w, c)).astype(i0.dtype), 0, 1)


def color_transfer_sot(
    src: np.ndarray,
    trg: np.ndarray,
    steps: int = 10,
    batch_size: int = 5,
    reg_sigmaXY: float = 16.0,
    reg_sigmaV: float = 5.0,
    rng: Rng = None,
    directions: np.ndarray | None = None,
) -> np.ndarray:
    """sot: sliced optimal transport of src's colours onto trg's (§5.6). Returned UNCLIPPED.

    Per step: for batch_size random unit directions d, sort both projections and accumulate
    advect[argsort(src·d)] += (sorted(trg·d) - sorted(src·d))·d; src += advect/batch_size.
    Then (reg_sigmaXY ≠ 0) src = orig + bilateralFilter(src - orig, d=0, σcolor=reg_sigmaV, σspace=reg_sigmaXY).
    directions: (steps·batch_size, C) raw normal draws (before normalisation) to use instead of `rng`.
    """
    if not np.issubdtype(src.dtype, np.floating) or not np.issubdtype(trg.dtype, np.floating):
        raise DataError(f"color_transfer_sot: src and trg must be float images, got {src.dtype} and {trg.dtype}")
    if src.shape != trg.shape:
        raise DataError(f"color_transfer_sot: src and trg must have the same shape, got {src.shape} and {trg.shape}")
    h, w, c = src.shape
    gen = None if directions is not None else _rng(rng)
    new_src = src.copy()
    advect = np.empty((h * w, c), dtype=src.dtype)
    k = 0
    for _step in range(steps):
        advect.fill(0)
        for _batch in range(batch_size):
            raw = directions[k] if directions is not None else gen.normal(size=c)
            k += 1
            d = np.asarray(raw).astype(src.dtype)
            d /= np.linalg.norm(d)
            projsource = np.sum(new_src * d, axis=-1).reshape((h * w))
            projtarget = np.sum(trg * d, axis=-1).reshape((h * w))
            id_source = np.argsort(projsource)
            id_target = np.argsort(projtarget)
            a = projtarget[id_target] - projsource[id_source]
            for i_c in range(c):
                advect[id_source, i_c] += a * d[i_c]
        new_src += advect.reshape((h, w, c)) / batch_size
    if reg_sigmaXY != 0.0:
        src_diff = new_src - src
        src_diff_filt = cv2.bilateralFilter(src_diff, 0, reg_sigmaV, reg_sigmaXY)
        if src_diff_filt.ndim == 2:
            src_diff_filt = src_diff_filt[..., None]
        new_src = src + src_diff_filt
    return new_src


def color_transfer_mix(img_src: np.ndarray, img_trg: np.ndarray, rng: Rng = None, directions: np.ndarray | None = None) -> np.ndarray:
    """mix (merger mix-m): uint8 LAB pipeline (§5.6). Float32 BGR in [0, 1] out.

    L: lct on the L channels (/255), back to uint8. a/b: both images get L = 100, go back to BGR, sot
    (default steps/batch, [0, 255] float32) moves src's chroma onto trg's; the result's LAB gets the
    transferred L and returns to BGR. directions: the sot draws (50, 3), see color_transfer_sot.
    """
    src8 = np.clip(img_src * 255.0, 0, 255).astype(np.uint8)
    trg8 = np.clip(img_trg * 255.0, 0, 255).astype(np.uint8)
    src_lab = cv2.cvtColor(src8, cv2.COLOR_BGR2LAB)
    trg_lab = cv2.cvtColor(trg8, cv2.COLOR_BGR2LAB)

    light = linear_color_transfer(src_lab[..., 0:1].astype(np.float32) / 255.0, trg_lab[..., 0:1].astype(np.float32) / 255.0)
    light = np.clip(light[..., 0] * 255.0, 0, 255).astype(np.uint8)

    src_lab[..., 0] = 100
    src_l100 = cv2.cvtColor(src_lab, cv2.COLOR_LAB2BGR)
    trg_lab[..., 0] = 100
    trg_l100 = cv2.cvtColor(trg_lab, cv2.COLOR_LAB2BGR)

    out = color_transfer_sot(src_l100.astype(np.float32), trg_l100.astype(np.float32), rng=rng, directions=directions)
    out = np.clip(out, 0, 255).astype(np.uint8)
    out = cv2.cvtColor(out, cv2.COLOR_BGR2LAB)
    out[..., 0] = light
    out = cv2.cvtColor(out, cv2.COLOR_LAB2BGR)
    return (out / 255.0).astype(np.float32)


def channel_hist_match(source: np.ndarray, template: np.ndarray, hist_match_threshold: float = 255) -> np.ndarray:
    """Remap one channel of `source` to the value distribution of `template` (quantile matching).

    s_q = threshold·cumsum(s_counts)/N over np.unique(source); t_q = 255·cumsum(t_counts)/N;
    out = interp(s_q, t_q, t_values)[inverse index]. A threshold < 255 compresses the top quantiles.
    """
    oldshape = source.shape
    s_values, bin_idx, s_counts = np.unique(source.ravel(), return_inverse=True, return_counts=True)
    t_values, t_counts = np.unique(template.ravel(), return_counts=True)
    s_quantiles = np.cumsum(s_counts).astype(np.float64)
    s_quantiles = hist_match_threshold * s_quantiles / s_quantiles[-1]
    t_quantiles = np.cumsum(t_counts).astype(np.float64)
    t_quantiles = 255 * t_quantiles / t_quantiles[-1]
    interp_t_values = np.interp(s_quantiles, t_quantiles, t_values)
    return interp_t_values[bin_idx.ravel()].reshape(oldshape)


def color_hist_match(src_im: np.ndarray, tar_im: np.ndarray, hist_match_threshold: float = 255) -> np.ndarray:
    """Per-channel histogram matching of src_im's first 3 channels to tar_im's (merger hist-match).

    Extra channels (beyond 3) pass through. Output has src_im's dtype and is not clipped.
    """
    c = src_im.shape[-1]
    chans = [channel_hist_match(src_im[..., i], tar_im[..., i], hist_match_threshold) for i in range(3)]
    chans += [src_im[..., i] for i in range(3, c)]
    return np.stack(chans, axis=-1).astype(src_im.dtype)


def color_transfer(ct_mode: str, img_src: np.ndarray, img_trg: np.ndarray, rng: Rng = None) -> np.ndarray:
    """SampleProcessor's colour transfer (§5.4 step 2): recolour img_src (src face) like img_trg (dst face).

    rct → reinhard (no masks); lct → linear (pca); mkl; idt; sot → clip(sot, 0, 1).
    rng feeds idt/sot (see module docstring). Raises DataError for an unknown mode.
    """
    if ct_mode == "lct":
        return linear_color_transfer(img_src, img_trg)
    if ct_mode == "rct":
        return reinhard_color_transfer(img_src, img_trg)
    if ct_mode == "mkl":
        return color_transfer_mkl(img_src, img_trg)
    if ct_mode == "idt":
        return color_transfer_idt(img_src, img_trg, rng=rng)
    if ct_mode == "sot":
        return np.clip(color_transfer_sot(img_src, img_trg, rng=rng), 0.0, 1.0)
    raise DataError(f"ct_mode: unknown colour transfer {ct_mode!r}{did_you_mean(str(ct_mode), CT_MODES)} (valid: {', '.join(CT_MODES)})")


def merger_color_transfer(
    mode: int | str | None,
    prd_face_bgr: np.ndarray,
    dst_face_bgr: np.ndarray,
    face_mask_area: np.ndarray,
    rng: Rng = None,
) -> np.ndarray:
    """MergeMaskedFace's colour transfer of the predicted face to the dst face (§10.2 step 10.2).

    mode: id 0..8 or name (None/0 returns prd unchanged). face_mask_area: H×W×1 binary area mask
    (merger's `wrk_face_mask_area_a`); the -m modes multiply both images by it first, rct uses it as both
    masks (cutoff 0.5). sot-m uses steps 10, batch 30 and is clipped to [0, 1].
    """
    name = MERGER_CT_MODES.get(mode) if isinstance(mode, int) and not isinstance(mode, bool) else mode
    if isinstance(mode, int) and mode not in MERGER_CT_MODES:
        raise DataError(f"color_transfer_mode: unknown id {mode} (valid: {', '.join(f'{k} {v}' for k, v in MERGER_CT_MODES.items())})")
    if name is None:
        return prd_face_bgr
    area = face_mask_area
    if name == "rct":
        return reinhard_color_transfer(prd_face_bgr, dst_face_bgr, target_mask=area, source_mask=area)
    if name == "lct":
        return linear_color_transfer(prd_face_bgr, dst_face_bgr)
    if name == "mkl":
        return color_transfer_mkl(prd_face_bgr, dst_face_bgr)
    if name == "mkl-m":
        return color_transfer_mkl(prd_face_bgr * area, dst_face_bgr * area)
    if name == "idt":
        return color_transfer_idt(prd_face_bgr, dst_face_bgr, rng=rng)
    if name == "idt-m":
        return color_transfer_idt(prd_face_bgr * area, dst_face_bgr * area, rng=rng)
    if name == "sot-m":
        out = color_transfer_sot(prd_face_bgr * area, dst_face_bgr * area, steps=10, batch_size=30, rng=rng)
        return np.clip(out, 0.0, 1.0)
    if name == "mix-m":
        return color_transfer_mix(prd_face_bgr * area, dst_face_bgr * area, rng=rng)
    names = [v for v in MERGER_CT_MODES.values() if v]
    raise DataError(f"color_transfer_mode: unknown mode {mode!r}{did_you_mean(str(mode), names)} (valid: none, {', '.join(names)})")
