"""DFL's colour steps as batched torch ops for the device pipeline (docs/dfl.md §5.4 step 3, §5.6).

Every function takes a batch of BGR float32 images (N, 3, H, W) in [0, 1] on any device (CPU tensors in
the tests, CUDA in training) and treats each image with its own statistics or random draws, so one call
serves a whole batch. The numpy oracles are engine.faces.color_transfer and engine.data.hsv; tests compare
both on the same draws (tests/data/test_device_color.py).

| op                    | numpy oracle                  | how the torch op differs                                  |
|-----------------------|-------------------------------|-----------------------------------------------------------|
| `hsv_shift`           | hsv.apply_hsv_shift           | OpenCV's float BGR↔HSV formulas; float rounding only       |
| `rct`                 | reinhard_color_transfer       | OpenCV's float BGR↔LAB formulas with the exact sRGB curve (OpenCV interpolates a 1024-entry spline table): ~1e-4 |
| `lct`                 | linear_color_transfer (pca)   | statistics in float64 (numpy: float32 products); float rounding |
| `mkl`                 | color_transfer_mkl            | symmetric eigendecomposition (eigh) where DFL calls eig on the same symmetric matrices: T is unchanged |
| `idt`                 | color_transfer_idt            | per-pixel interpolation in float32 (numpy: float64)        |
| `sot`                 | color_transfer_sot (+ clip)   | regularisation: cv2.bilateralFilter(σcolour 5, σspace 16) on the advection field becomes the same normalised circular Gaussian without the colour term. The colour weight exp(−(Σ|Δ|)²/50) of an advection field (|Δ| ≲ 0.3) is ≥ 0.99, so this is a < 1% change of the smoothing weights (bounded in the tests) |

On CUDA every op queues without a host synchronisation except torch.linalg.eigh (lct, mkl), which checks
its convergence on the host: with those two ct modes the host waits for the side stream's work queued so
far (the batch's copy and its colour statistics) before the current step is launched, so that part does
not overlap the step.

Random draws (idt's rotations, sot's directions) are arguments, drawn by the caller from each sample's
own stream (engine.data.device): `haar_rotations` gives special_ortho_group's distribution (Haar on
SO(3)) from normals, not scipy's stream.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "bgr_to_hsv",
    "hsv_to_bgr",
    "hsv_shift",
    "bgr_to_lab",
    "lab_to_bgr",
    "rct",
    "lct",
    "mkl",
    "idt",
    "sot",
    "color_transfer",
    "haar_rotations",
    "IDT_ROTATIONS",
    "SOT_DIRECTIONS",
]

IDT_ROTATIONS = 20  # color_transfer_idt's n_rot
IDT_BINS = 256
SOT_STEPS, SOT_BATCH = 10, 5  # color_transfer_sot's steps and batch_size as SampleProcessor calls it
SOT_DIRECTIONS = SOT_STEPS * SOT_BATCH
SOT_SIGMA_SPACE, SOT_SIGMA_COLOR = 16.0, 5.0
_FLT_EPS = float(np.finfo(np.float32).eps)


def _const(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A constant of this module on `device`, made once per (device, dtype): building it from a Python
    list on every call would be a blocking host-to-device copy inside the side-stream augmentation."""
    return _const_cached(name, str(device), dtype)


@functools.lru_cache(maxsize=None)
def _const_cached(name: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    value = {"sectors": _SECTORS, "lab_lo": (0.0, -127.0, -127.0), "lab_hi": (100.0, 127.0, 127.0),
             "rgb2xyz": _RGB2XYZ / _WHITE[:, None], "xyz2rgb": _XYZ2RGB * _WHITE[None, :]}[name]
    if name == "sectors":
        return torch.tensor(value, device=device)
    return torch.as_tensor(value, dtype=torch.float64).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# HSV (OpenCV's float conversions: H in [0, 360), S and V in [0, 1])


def bgr_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_BGR2HSV for float images: (N, 3, H, W) BGR -> (N, 3, H, W) HSV."""
    b, g, r = x[:, 0], x[:, 1], x[:, 2]
    v = torch.maximum(torch.maximum(b, g), r)
    vmin = torch.minimum(torch.minimum(b, g), r)
    diff = v - vmin
    s = diff / (v.abs() + _FLT_EPS)
    k = 60.0 / (diff + _FLT_EPS)
    h = torch.where(v == r, (g - b) * k, torch.where(v == g, (b - r) * k + 120.0, (r - g) * k + 240.0))
    h = torch.where(h < 0, h + 360.0, h)
    return torch.stack([h, s, v], 1)


# OpenCV's HSV2RGB sector table: which of (v, p, q, t) is (b, g, r) in each 60° sector
_SECTORS = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))


def hsv_to_bgr(x: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_HSV2BGR for float images: (N, 3, H, W) HSV (H in degrees) -> BGR."""
    h, s, v = x[:, 0] * (6.0 / 360.0), x[:, 1], x[:, 2]
    h = h - torch.floor(h / 6.0) * 6.0  # into [0, 6)
    sector = torch.floor(h)
    frac = h - sector
    sector = sector.long().clamp_(0, 5)
    tab = torch.stack([v, v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))], 0)  # (4, N, H, W)
    sel = _const("sectors", x.device)[sector]  # (N, H, W, 3)
    out = torch.gather(tab, 0, sel.permute(3, 0, 1, 2))  # (3, N, H, W): b, g, r
    out = torch.where((s == 0)[None], v[None].expand_as(out), out)
    return out.permute(1, 0, 2, 3)


def hsv_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """DFL's random HSV shift (§5.4 step 3) with per-image draws shift (N, 3) = (dh degrees, ds, dv):
    H' = (H + dh) mod 360, S' = clip(S + ds, 0, 1), V' = clip(V + dv, 0, 1), BGR clipped to [0, 1]."""
    hsv = bgr_to_hsv(x)
    sh = shift.to(device=x.device, dtype=x.dtype)[:, :, None, None]
    h = torch.remainder(hsv[:, 0:1] + sh[:, 0:1], 360.0)
    sv = (hsv[:, 1:3] + sh[:, 1:3]).clamp(0, 1)
    return hsv_to_bgr(torch.cat([h, sv], 1)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------
# LAB (OpenCV's float conversions with the sRGB curve, D65)

_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_XYZ2RGB = torch.tensor([[3.240479, -1.53715, -0.498535],
                         [-0.969256, 1.875991, 0.041556],
                         [0.055648, -0.204043, 1.057311]], dtype=torch.float64)
_T = 0.008856  # CIE threshold on Y (and f(t) below it: 7.787·t + 16/116)


def _srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0, 1)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-12) ** (1 / 2.4) - 0.055)


def bgr_to_lab(x: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_BGR2LAB for float images: (N, 3, H, W) BGR in [0, 1] -> L in [0, 100], a, b ~ ±127."""
    rgb = _srgb_to_linear(x.flip(1))
    m = _const("rgb2xyz", x.device, x.dtype)  # X and Z rows normalised by the white point
    xyz = torch.einsum("ij,njhw->nihw", m, rgb)
    f = torch.where(xyz > _T, xyz.clamp_min(0) ** (1 / 3), 7.787 * xyz + 16 / 116)
    y = xyz[:, 1]
    L = torch.where(y > _T, 116 * f[:, 1] - 16, 903.3 * y)
    a = 500 * (f[:, 0] - f[:, 1])
    b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], 1)


def lab_to_bgr(lab: torch.Tensor) -> torch.Tensor:
    """cv2.COLOR_LAB2BGR for float images (output clamped to [0, 1], as OpenCV's float path does)."""
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    low = L <= _T * 903.3
    y = torch.where(low, L / 903.3, ((L + 16) / 116) ** 3)
    fy = torch.where(low, 7.787 * y + 16 / 116, (L + 16) / 116)
    fx = a / 500 + fy
    fz = fy - b / 200
    f_t = 7.787 * _T + 16 / 116

    def inv(f: torch.Tensor) -> torch.Tensor:
        return torch.where(f <= f_t, (f - 16 / 116) / 7.787, f ** 3)

    xyz = torch.stack([inv(fx), y, inv(fz)], 1)
    m = _const("xyz2rgb", lab.device, lab.dtype)
    rgb = torch.einsum("ij,njhw->nihw", m, xyz)
    return _linear_to_srgb(rgb).flip(1)


# ---------------------------------------------------------------------------------------------------------
# Colour transfers: recolour `x` (N, 3, H, W) like `ref` (N, 3, H', W')


def rct(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Reinhard transfer (DFL rct, no masks): per LAB channel (t − μt)·σs/σt + μs with population std;
    L clipped to [0, 100], a/b to [−127, 127]; back to BGR (clamped). σt = 0 gives white, as cv2 does."""
    t = bgr_to_lab(x)
    s = bgr_to_lab(ref)
    mt, st = t.mean((2, 3), keepdim=True), t.std((2, 3), keepdim=True, correction=0)
    ms, ss = s.mean((2, 3), keepdim=True), s.std((2, 3), keepdim=True, correction=0)
    out = (t - mt) * ss / st + ms
    lo = _const("lab_lo", x.device, x.dtype)[None, :, None, None]
    hi = _const("lab_hi", x.device, x.dtype)[None, :, None, None]
    out = torch.minimum(torch.maximum(out, lo), hi)
    return torch.nan_to_num(lab_to_bgr(out), nan=1.0)


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], -1)  # (N, C, P)


def _sqrtm_sym(c: torch.Tensor) -> torch.Tensor:
    eva, eve = torch.linalg.eigh(c)
    return eve @ torch.diag_embed(eva.clamp_min(0).sqrt()) @ eve.transpose(-1, -2)


def lct(x: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Linear (pca) transfer (DFL lct): Qs·Qt⁻¹·(t − μt) + μs with Q = (XXᵀ/N + eps·I)^½, clipped to [0, 1]."""
    t, s = _flat(x).double(), _flat(ref).double()
    mt, ms = t.mean(-1, keepdim=True), s.mean(-1, keepdim=True)
    tc, sc = t - mt, s - ms
    eye = torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    ct = tc @ tc.transpose(-1, -2) / tc.shape[-1] + eps * eye
    cs = sc @ sc.transpose(-1, -2) / sc.shape[-1] + eps * eye
    m = _sqrtm_sym(cs) @ torch.linalg.inv_ex(_sqrtm_sym(ct))[0]  # _ex: no error check, no host sync
    out = (m.to(x.dtype) @ tc.to(x.dtype)) + ms.to(x.dtype)
    return out.reshape(x.shape).clamp(0, 1)


def mkl(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Monge-Kantorovich linear transfer (DFL mkl): T = Ua·Da⁻¹·Uc·Dc·Ucᵀ·Da⁻¹·Uaᵀ from the unbiased
    covariances A (of x) and B (of ref), C = Da·Uaᵀ·B·Ua·Da; out = (x − μx)·T + μref, clipped to [0, 1]."""
    eps = float(np.finfo(np.float64).eps)
    t, s = _flat(x).double(), _flat(ref).double()
    mt, ms = t.mean(-1, keepdim=True), s.mean(-1, keepdim=True)
    tc, sc = t - mt, s - ms
    a = tc @ tc.transpose(-1, -2) / (tc.shape[-1] - 1)
    b = sc @ sc.transpose(-1, -2) / (sc.shape[-1] - 1)
    da2, ua = torch.linalg.eigh(a)
    da = da2.clamp_min(eps).sqrt()
    c = (da[:, :, None] * ua.transpose(-1, -2)) @ b @ (ua * da[:, None, :])
    dc2, uc = torch.linalg.eigh(c)
    dc = dc2.clamp_min(eps).sqrt()
    inv_da = torch.diag_embed(1.0 / da)
    tmat = ua @ inv_da @ uc @ torch.diag_embed(dc) @ uc.transpose(-1, -2) @ inv_da @ ua.transpose(-1, -2)
    # row-vector form: (x − μ)·T, i.e. Tᵀ·(x − μ) on the (C, P) layout
    out = tmat.transpose(-1, -2).to(x.dtype) @ tc.to(x.dtype) + ms.to(x.dtype)
    return out.reshape(x.shape).clamp(0, 1)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor, left: torch.Tensor | float | None = None,
            right: torch.Tensor | float | None = None) -> torch.Tensor:
    """np.interp batched over the leading dims: x (B, K), xp (B, M) non-decreasing, fp (B, M).

    Between xp[j] ≤ x < xp[j+1]: fp[j] + (x − xp[j])·(fp[j+1] − fp[j])/(xp[j+1] − xp[j]); x == xp[-1]
    gives fp[-1]; outside: left / right (default fp[0] / fp[-1])."""
    m = xp.shape[-1]
    j = (torch.searchsorted(xp.contiguous(), x.contiguous(), right=True) - 1).clamp_(0, m - 2)
    x0, x1 = torch.gather(xp, -1, j), torch.gather(xp, -1, j + 1)
    f0, f1 = torch.gather(fp, -1, j), torch.gather(fp, -1, j + 1)
    den = x1 - x0
    slope = torch.where(den != 0, (f1 - f0) / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(den))
    out = f0 + (x - x0) * slope
    out = torch.where(x == xp[..., -1:], fp[..., -1:].expand_as(out), out)
    lo = fp[..., :1].expand_as(out) if left is None else torch.full_like(out, left)
    hi = fp[..., -1:].expand_as(out) if right is None else torch.full_like(out, right)
    out = torch.where(x < xp[..., :1], lo, out)
    return torch.where(x > xp[..., -1:], hi, out)


def _cdf(vals: torch.Tensor, edges: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised cumulative histogram of vals (B, P) over explicit edges (B, bins+1), float32 (B, bins)."""
    idx = torch.searchsorted(edges.contiguous(), vals.contiguous(), right=True) - 1
    idx = torch.where(vals == edges[:, -1:], torch.full_like(idx, bins - 1), idx).clamp_(0, bins - 1)
    counts = torch.zeros(vals.shape[0], bins, device=vals.device, dtype=torch.float32)
    counts.scatter_add_(1, idx, torch.ones_like(vals, dtype=torch.float32))
    cdf = counts.cumsum(-1)
    return cdf / cdf[:, -1:]


def idt(x: torch.Tensor, ref: torch.Tensor, rotations: torch.Tensor, bins: int = IDT_BINS) -> torch.Tensor:
    """Iterative distribution transfer (DFL idt) with per-image rotations (N, R, 3, 3), clipped to [0, 1].

    Per rotation r: d0r = r·d0, d1r = r·d1; per axis, bins-bin CDFs over the joint [min, max], f =
    interp(cdf0, cdf1, edges[1:]), Δ = interp(d0r, edges[1:], f, left=0, right=bins) − d0r (DFL's
    left/right quirk kept); d0 += solve(r, Δ)/R."""
    n, c = x.shape[:2]
    d0 = _flat(x).float()  # (N, C, P)
    d1 = _flat(ref).float()
    rots = rotations.to(device=x.device, dtype=torch.float32)
    n_rot = rots.shape[1]
    steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64, device=x.device)
    for i in range(n_rot):
        r = rots[:, i]  # (N, C, C)
        d0r = r @ d0
        d1r = r @ d1
        a = d0r.reshape(n * c, -1)
        b = d1r.reshape(n * c, -1)
        lo = torch.minimum(a.amin(-1), b.amin(-1)).double()
        hi = torch.maximum(a.amax(-1), b.amax(-1)).double()
        edges = (lo[:, None] + (hi - lo)[:, None] * steps[None, :]).float()  # float64 linspace, float32 edges
        edges[:, -1] = hi.float()
        cdf0, cdf1 = _cdf(a, edges, bins), _cdf(b, edges, bins)
        f = _interp(cdf0.double(), cdf1.double(), edges[:, 1:].double())
        d_r = _interp(a, edges[:, 1:], f.float(), left=0.0, right=float(bins))
        delta = (d_r - a).reshape(n, c, -1)
        d0 = d0 + torch.linalg.solve_ex(r, delta)[0] / n_rot  # _ex: no error check, no host sync
    return d0.reshape(x.shape).clamp(0, 1).to(x.dtype)


@functools.lru_cache(maxsize=8)
def _circular_gaussian_cpu(sigma: float) -> torch.Tensor:
    """cv2.bilateralFilter's spatial weights for d <= 0: radius round(1.5σ), offsets with r ≤ radius,
    exp(−r²/(2σ²)), normalised to sum 1. (2r+1, 2r+1) float32."""
    radius = int(round(sigma * 1.5))
    yy, xx = torch.meshgrid(torch.arange(-radius, radius + 1, dtype=torch.float64),
                            torch.arange(-radius, radius + 1, dtype=torch.float64), indexing="ij")
    r2 = yy ** 2 + xx ** 2
    k = torch.where(r2 <= radius ** 2, torch.exp(-r2 / (2 * sigma ** 2)), torch.zeros_like(r2))
    return (k / k.sum()).float()


def _circular_gaussian(sigma: float, device: torch.device) -> torch.Tensor:
    return _const_kernel(float(sigma), str(device))


@functools.lru_cache(maxsize=8)
def _const_kernel(sigma: float, device: str) -> torch.Tensor:
    return _circular_gaussian_cpu(sigma).to(device)


def _smooth(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Normalised circular-Gaussian smoothing of (N, C, H, W) with reflect-101 borders (cv2's default),
    by FFT (the window is 49×49 for σ = 16)."""
    k = _circular_gaussian(sigma, field.device)
    r = k.shape[0] // 2
    n, c, h, w = field.shape
    # reflect-101 needs the pad below the size; images under 2r+1 px (not SAEHD's >= 64) replicate instead
    p = F.pad(field.float(), (r, r, r, r), mode="reflect" if r < min(h, w) else "replicate")
    hp, wp = p.shape[-2:]
    kp = torch.zeros(hp, wp, device=field.device)
    kp[:2 * r + 1, :2 * r + 1] = k
    out = torch.fft.irfft2(torch.fft.rfft2(p) * torch.fft.rfft2(kp), s=(hp, wp))
    return out[..., 2 * r:2 * r + h, 2 * r:2 * r + w].to(field.dtype)


def sot(x: torch.Tensor, ref: torch.Tensor, directions: torch.Tensor, batch_size: int = SOT_BATCH,
        sigma_space: float = SOT_SIGMA_SPACE) -> torch.Tensor:
    """Sliced optimal transport (DFL sot, as SampleProcessor uses it: clipped) with per-image raw
    direction draws (N, steps·batch_size, 3) (normalised here).

    Per step, for each of batch_size directions d: advect[argsort(x·d)] += (sorted(ref·d) − sorted(x·d))·d;
    x += advect/batch_size. Then x = orig + smooth(x − orig) (see the module docstring), clipped to [0, 1].
    x and ref must have the same size (as DFL requires)."""
    if x.shape != ref.shape:
        raise ValueError(f"sot: x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
    n, c, h, w = x.shape
    src = _flat(x).float().transpose(1, 2)  # (N, P, C)
    trg = _flat(ref).float().transpose(1, 2)
    d_all = directions.to(device=x.device, dtype=torch.float32)
    d_all = d_all / torch.linalg.vector_norm(d_all, dim=-1, keepdim=True)
    steps = d_all.shape[1] // batch_size
    new = src.clone()
    k = 0
    for _ in range(steps):
        advect = torch.zeros_like(new)
        for _ in range(batch_size):
            d = d_all[:, k]  # (N, C)
            k += 1
            ps = (new * d[:, None, :]).sum(-1)  # (N, P)
            pt = (trg * d[:, None, :]).sum(-1)
            vs, ids = torch.sort(ps, dim=-1)
            vt, _ = torch.sort(pt, dim=-1)
            a = vt - vs
            advect.scatter_add_(1, ids[..., None].expand(-1, -1, c), a[..., None] * d[:, None, :])
        new = new + advect / batch_size
    diff = (new - src).transpose(1, 2).reshape(n, c, h, w)
    out = x.float() + _smooth(diff, sigma_space)
    return out.clamp(0, 1).to(x.dtype)


def color_transfer(mode: str, x: torch.Tensor, ref: torch.Tensor, draws: torch.Tensor | None = None) -> torch.Tensor:
    """SampleProcessor's colour transfer (§5.4 step 2) for a batch: rct | lct | mkl | idt | sot.

    draws: idt rotations (N, 20, 3, 3) or sot directions (N, 50, 3); unused by the others."""
    if mode == "rct":
        return rct(x, ref)
    if mode == "lct":
        return lct(x, ref)
    if mode == "mkl":
        return mkl(x, ref)
    if mode in ("idt", "sot"):
        if draws is None:
            raise ValueError(f"color_transfer: {mode} needs its random draws")
        return idt(x, ref, draws) if mode == "idt" else sot(x, ref, draws)
    raise ValueError(f"color_transfer: unknown mode {mode!r} (valid: rct, lct, mkl, idt, sot)")


def haar_rotations(normals: np.ndarray) -> np.ndarray:
    """Rotations distributed like scipy.stats.special_ortho_group (Haar measure on SO(d)) from standard
    normals (..., d, d): QR with the signs of R's diagonal moved into Q (Mezzadri 2007), then one column
    negated where the determinant is −1. float64 (..., d, d)."""
    q, r = np.linalg.qr(np.asarray(normals, dtype=np.float64))
    q = q * np.sign(np.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
    det = np.linalg.det(q)
    q[..., :, 0] *= np.where(det < 0, -1.0, 1.0)[..., None]
    return q
