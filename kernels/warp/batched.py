"""The warp's batched-torch path ("batched"): DFL's remap + warpAffine + flip composed into ONE sampling per pixel,
and the batch's parameters (WarpBatchParams) that the cpu and triton paths take too.

DFL (docs/dfl.md §5.3) resamples a warped network input twice: ``cv2.remap`` by the random grid (border
constant 0), then ``cv2.warpAffine`` by ``rmat`` (border replicate for images), then mirrors. Here
each output pixel's source coordinate is composed analytically and the image is sampled once:

    p  = flip(x', y')                                  # §5.3 step 6, folded into the coordinates
    q  = rmat⁻¹ · p                                    # warpAffine's inverse map (cv2 fixed point)
    m  = map(clamp(q, 0, w-1))                         # the random grid, evaluated continuously
    out(x', y') = weight · sample(img, m)              # cubic (a = -0.75) or bilinear

`map` is the exact continuous form of DFL's upsampled grid: cv2.resize (bilinear, pixel-centre
alignment) of the coarse node grid, cropped by half a cell, equals bilinear interpolation of the
nodes at coarse coordinate ``u = (q + 0.5) / cell`` — node k sits at pixel ``k·cell − 0.5`` and holds
``k·cell`` plus noise, so a zero-noise grid maps q to ``q + 0.5`` (§12.7's half-pixel quirk, kept).
All three of DFL's cell sizes (w/2, w/4, w/8) are represented exactly on the finest node lattice
(cell w/8, 9×9 nodes), so a batch mixing cell sizes is one tensor.

Where this differs from DFL's two-pass result (and why it is bounded):
- Interior: two-pass interpolates the *remapped image* at q (cubic), one-pass samples the source at
  the *continuous map* m(q). Both approximate the same continuous warp; the difference is
  interpolation error of the remapped image (largest where the source has high-frequency content and
  at the grid's cell boundaries, where the remapped image has kinks), not a systematic shift.
  Measured on a smooth image away from zero borders (25 seeds): max 0.019 at res ≤ 64, 0.011 at 128,
  0.005 at 256 (values in [0, 1]); whole-image mean ≤ 0.0065. Bounded in tests/kernels/test_warp.py.
- Replicate border (images): two-pass replicates the edge pixels of the remapped image; one-pass
  clamps q to [0, w-1] before evaluating the map, i.e. replicates the map's edge *coordinates*. Same
  value for q far outside; within ~2 px of the edge the cubic taps differ (two-pass mixes clamped
  taps of R, one-pass evaluates R's continuous extension).
- Constant affine border with a grid warp (not used by SAEHD for warped inputs): the affine's zero
  border becomes a multiplicative coverage weight ``Σ_taps k(t − q)·[t inside]`` (the affine
  applied to an all-ones image) times the one-pass sample — exact where the remapped image is locally
  constant across the edge taps, interpolation error otherwise.
- The remap's own zero border (taps of the source outside the image) is exact: the sampler zeroes
  out-of-range taps, as cv2.remap does.
- OpenCV quantises remap/warpAffine coordinates to 1/32 px (INTER_BITS = 5). The affine coordinates
  reproduce cv2.warpAffine's fixed-point arithmetic exactly; the composed map value m is not rounded
  (cv2.remap rounds its float map to 1/32 px; here m is no single OpenCV stage's coordinate, and
  rounding would let 1e-6 float differences flip a 1/32-px step between the CPU, torch and Triton paths).
- w < 64 (`rw`): as DFL, the image is resized rw→64 (cv2.resize semantics: pixel-centre aligned,
  clamped taps; F.interpolate reproduces it), warped at 64 by the composed map, resized back to rw,
  then mirrored. Only the remap+warpAffine pair is composed there.

Exact cases (no composition): no grid warp (targets and masks, §12.8: transform + flip only)
reproduce cv2.warpAffine's coordinates bit for bit and its border semantics (tap clamp for
replicate, tap zero for constant), so they match DFL to float rounding of the interpolation sums;
no warp and no transform is a pure copy (plus flip).

Implementations of the same contract: compose_grid + sample_torch here (torch, any device; the oracle for
the other two), kernels/warp/cpu.py (the composition and sampling fused in C) and kernels/warp/triton.py
(the Triton sampler of compose_grid's coordinates, registered as torch.ops.torchsae.warp_sample in op.py).

Coordinates are carried in grid_sample's normalised convention (align_corners=False): a source pixel
coordinate s in a w-wide image is ``(2s + 1)/w − 1``; bilinear interpolation of normalised node
values gives normalised map values, so the map needs no unit conversion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kernels.warp.reference import DEFAULT_RANGES, TRUNC, WARP_AMOUNT

__all__ = [
    "WarpBatchParams",
    "random_warp_params",
    "warp_params_from_uniforms",
    "WARP_UNIFORMS",
    "compose_grid",
    "sample_torch",
    "G_NODES",
    "CUBIC_A",
]

G_NODES = 9  # finest DFL lattice: cell = w // 8 -> w // cell + 1 = 9 nodes per axis
CUBIC_A = -0.75  # OpenCV's and PyTorch's bicubic (Keys) coefficient
_AB_BITS = 10  # cv2.warpAffine: coordinates in 1/1024 px, then rounded to 1/32 px (INTER_BITS = 5)
_INTER_BITS = 5


@dataclass(frozen=True, eq=False)
class WarpBatchParams:
    """DFL warp parameters for N samples, as tensors.

    w: working size (64 when the requested size is below 64, as DFL). rw: the requested size when
    below 64, else None. nodes: (N, 2, 9, 9) float32, the (x, y) map values at the finest node
    lattice (node (i, j) at pixel (j·w/8 − 0.5, i·w/8 − 0.5)), in normalised coordinates of a w-wide
    image. rmat: (N, 2, 3) float64, DFL's forward affine (dst = rmat · src). flip: (N,) bool.
    """

    w: int
    rw: int | None
    nodes: torch.Tensor
    rmat: torch.Tensor
    flip: torch.Tensor
    # Affine source coordinates per (can_transform, can_flip): the network input, the target and the
    # masks of a sample share them (§12.8), so a batch computes them once.
    _coords: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.nodes.shape[0]
        if self.w % 8 != 0 or self.w < 64:
            raise ValueError(f"WarpBatchParams.w = {self.w}: expected a multiple of 8 that is >= 64 "
                             "(DFL builds the warp at 64 for smaller sizes; see `rw`)")
        if tuple(self.nodes.shape) != (n, 2, G_NODES, G_NODES):
            raise ValueError(f"WarpBatchParams.nodes has shape {tuple(self.nodes.shape)}, expected ({n}, 2, 9, 9)")
        if tuple(self.rmat.shape) != (n, 2, 3) or tuple(self.flip.shape) != (n,):
            raise ValueError(f"WarpBatchParams: rmat {tuple(self.rmat.shape)} / flip {tuple(self.flip.shape)} "
                             f"do not match N = {n} (expected ({n}, 2, 3) and ({n},))")

    @property
    def n(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def size(self) -> int:
        """Image size the params apply to: rw when set, else w."""
        return self.rw if self.rw is not None else self.w

    def to(self, device: torch.device | str) -> WarpBatchParams:
        return WarpBatchParams(self.w, self.rw, self.nodes.to(device), self.rmat.to(device), self.flip.to(device))

    # ---------------------------------------------------------------- DFL dicts <-> tensors
    @classmethod
    def from_dfl(cls, params_list: Sequence[dict[str, Any]], device: torch.device | str = "cpu") -> WarpBatchParams:
        """Stack DFL `gen_warp_params` dicts. The node lattice is recovered from the float32 maps.

        Inside one finest cell the upsampled map is bilinear in pixel coordinates, so the value at
        node (i, j) (pixel (j·c − 0.5, i·c − 0.5), c = w/8) is the bilinear extrapolation from the
        four pixels {a, b}² with a = k·c, b = k·c + 1 (last node: a = w − 1, b = w − 2):
        ``1.5·f(a) − 0.5·f(b)`` per axis. Exact up to the maps' float32 rounding (~1e-5 px).
        """
        if len(params_list) == 0:
            raise ValueError("warp params: empty list (expected one DFL params dict per sample)")
        w = int(params_list[0]["w"])
        rws = {_rw(p) for p in params_list}
        ws = {int(p["w"]) for p in params_list}
        if len(ws) != 1 or len(rws) != 1:
            raise ValueError(f"warp params: all samples of a batch must share w/rw, got w={sorted(ws)} rw={sorted(rws, key=str)}")
        rw = rws.pop()
        c = w // 8
        k = np.arange(G_NODES)
        a = np.minimum(k * c, w - 1)
        b = np.where(k * c + 1 > w - 1, w - 2, k * c + 1)
        rows = np.concatenate([a, b])  # only these 18 rows/columns of each map are read
        sub = np.stack([np.stack([np.asarray(p[k])[rows[:, None], rows[None, :]] for k in ("mapx", "mapy")])
                        for p in params_list]).astype(np.float64)  # (N, 2, 18, 18)
        g = G_NODES
        f_aa, f_ab = sub[:, :, :g, :g], sub[:, :, :g, g:]
        f_ba, f_bb = sub[:, :, g:, :g], sub[:, :, g:, g:]
        nodes = 2.25 * f_aa - 0.75 * f_ab - 0.75 * f_ba + 0.25 * f_bb  # (N, 2, 9, 9) pixel units
        nodes = (2.0 * nodes + 1.0) / w - 1.0
        rmat = np.stack([np.asarray(p["rmat"], dtype=np.float64) for p in params_list])
        flip = np.array([bool(p["flip"]) for p in params_list])
        return cls(w, rw, torch.as_tensor(nodes, dtype=torch.float32, device=device),
                   torch.as_tensor(rmat, dtype=torch.float64, device=device), torch.as_tensor(flip, device=device))

    def maps(self) -> torch.Tensor:
        """The per-pixel maps DFL would store, (N, 2, w, w) float32 in pixel units (x+0.5-style)."""
        w = self.w
        idx = torch.arange(w, device=self.nodes.device, dtype=torch.float32)
        g = (2 * idx + 1) / w - 1
        grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).expand(self.n, w, w, 2)
        m = F.grid_sample(self.nodes, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return ((m + 1) * w - 1) / 2

    def to_dfl(self) -> list[dict[str, Any]]:
        """DFL params dicts (for the numpy reference), maps evaluated from the node lattice."""
        maps = self.maps().cpu().numpy().astype(np.float32)
        rmat = self.rmat.detach().cpu().numpy().astype(np.float64)
        flip = self.flip.cpu().numpy()
        out = []
        for i in range(self.n):
            umat = rmat[i].copy()
            umat[:, 2] /= self.w
            out.append({"mapx": np.ascontiguousarray(maps[i, 0]), "mapy": np.ascontiguousarray(maps[i, 1]),
                        "rmat": rmat[i].copy(), "umat": umat, "w": self.w, "rw": self.rw, "flip": bool(flip[i])})
        return out


def _rw(p: dict[str, Any]) -> int | None:
    rw = p.get("rw")
    if rw is None or int(rw) < 0:  # goldens store None as -1
        return None
    return int(rw)


def _rotation_matrix(w: int, rotation_deg: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """cv2.getRotationMatrix2D((w//2, w//2), angle, scale) + (tx·w, ty·w) translation, batched float64 (N, 2, 3)."""
    c = float(w // 2)
    ang = torch.deg2rad(rotation_deg.double())
    alpha = scale.double() * torch.cos(ang)
    beta = scale.double() * torch.sin(ang)
    row0 = torch.stack([alpha, beta, (1 - alpha) * c - beta * c + tx.double() * w], -1)
    row1 = torch.stack([-beta, alpha, beta * c + (1 - alpha) * c + ty.double() * w], -1)
    return torch.stack([row0, row1], 1)


def random_warp_params(
    n: int,
    w: int,
    flip: bool,
    *,
    rotation_range: Sequence[float] = DEFAULT_RANGES["rotation_range"],
    scale_range: Sequence[float] = DEFAULT_RANGES["scale_range"],
    tx_range: Sequence[float] = DEFAULT_RANGES["tx_range"],
    ty_range: Sequence[float] = DEFAULT_RANGES["ty_range"],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> WarpBatchParams:
    """Draw N samples of DFL's warp distribution directly on `device` from a torch Generator.

    Same distribution as `gen_warp_params` (§5.3), not the same stream: rotation, scale (U(1/(1−s0),
    1+s1)), tx, ty uniform; flip with probability 0.4 when requested; cell size uniformly one of w/2,
    w/4, w/8; interior displacements N1 + N2ᵀ (§12.6 aliasing) of truncated normals (|z| ≤ 2.5, via
    the inverse CDF instead of redraws), each scaled by cell·0.24; MY = MXᵀ. w < 64 builds at 64 with
    rw = w, as DFL.
    """
    if generator is not None and device is None:
        device = generator.device
    device = torch.device(device if device is not None else "cpu")

    def rand(*size: int) -> torch.Tensor:
        return torch.rand(size, generator=generator, device=device, dtype=torch.float64)

    u_affine = [rand(n) for _ in range(4)]  # rotation, scale, tx, ty (this order keeps the stream)
    u_flip = torch.rand((n,), generator=generator, device=device).double()
    level = torch.randint(0, 3, (n,), generator=generator, device=device)
    u_noise = rand(2, n, G_NODES - 2, G_NODES - 2)
    return _params_from_draws(n, w, flip, u_affine, u_flip, level, u_noise, rotation_range, scale_range,
                              tx_range, ty_range, device)


WARP_UNIFORMS = 6 + 2 * (G_NODES - 2) ** 2  # rotation, scale, tx, ty, flip, cell size, 2 × 7×7 noise


def warp_params_from_uniforms(
    u: torch.Tensor,
    w: int,
    flip: bool,
    *,
    rotation_range: Sequence[float] = DEFAULT_RANGES["rotation_range"],
    scale_range: Sequence[float] = DEFAULT_RANGES["scale_range"],
    tx_range: Sequence[float] = DEFAULT_RANGES["tx_range"],
    ty_range: Sequence[float] = DEFAULT_RANGES["ty_range"],
) -> WarpBatchParams:
    """DFL's warp distribution (as `random_warp_params`) from given uniforms: u (N, WARP_UNIFORMS) in [0, 1).

    Columns: 0 rotation, 1 scale, 2 tx, 3 ty, 4 flip (< 0.4), 5 cell size (floor(3u): w/2, w/4, w/8),
    6.. the two 7×7 truncated-normal fields (inverse CDF). Lets a caller derive each sample's warp from
    its own random stream (per-sample keys), independent of how samples are grouped into batches.
    Built on u's device.
    """
    if u.ndim != 2 or u.shape[1] != WARP_UNIFORMS:
        raise ValueError(f"warp_params_from_uniforms: u must be (N, {WARP_UNIFORMS}), got {tuple(u.shape)}")
    u = u.double()
    n = u.shape[0]
    level = (u[:, 5] * 3).floor().long().clamp_(0, 2)
    inner = G_NODES - 2
    u_noise = u[:, 6:].reshape(n, 2, inner, inner).transpose(0, 1)
    return _params_from_draws(n, w, flip, [u[:, 0], u[:, 1], u[:, 2], u[:, 3]], u[:, 4], level, u_noise,
                              rotation_range, scale_range, tx_range, ty_range, u.device)


def _params_from_draws(n: int, w: int, flip: bool, u_affine: list[torch.Tensor], u_flip: torch.Tensor,
                       level: torch.Tensor, u_noise: torch.Tensor, rotation_range: Sequence[float],
                       scale_range: Sequence[float], tx_range: Sequence[float], ty_range: Sequence[float],
                       device: torch.device) -> WarpBatchParams:
    """WarpBatchParams from uniform draws: u_affine 4 × (N,), u_flip (N,), level (N,) in {0, 1, 2}
    (cell = w // 2**(level+1)), u_noise (2, N, 7, 7); all uniforms in [0, 1)."""
    rw = None
    if w < 64:
        rw, w = w, 64
    if w % 8 != 0:
        raise ValueError(f"random_warp_params: w = {w} must be a multiple of 8 (DFL resolutions are multiples of 16)")

    def scaled(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x * (hi - lo) + lo

    rotation = scaled(u_affine[0], rotation_range[0], rotation_range[1])
    scale = scaled(u_affine[1], 1 / (1 - scale_range[0]), 1 + scale_range[1])
    tx = scaled(u_affine[2], tx_range[0], tx_range[1])
    ty = scaled(u_affine[3], ty_range[0], ty_range[1])
    p_flip = u_flip < 0.4
    if not flip:
        p_flip = torch.zeros_like(p_flip)

    # Truncated normal by inverse CDF: u ~ U(Φ(-2.5), Φ(2.5)), z = √2·erfinv(2u − 1).
    lo = 0.5 * (1 + math.erf(-TRUNC / math.sqrt(2)))
    u = scaled(u_noise, lo, 1 - lo)
    z = (math.sqrt(2) * torch.erfinv(2 * u - 1)).clamp_(-TRUNC, TRUNC) / TRUNC  # (2, N, 7, 7) in [-1, 1]

    cell = (w // 2) // (2 ** level)  # (N,) pixels
    cc = w // cell + 1  # nodes per axis: 3, 5 or 9
    kk = torch.arange(G_NODES, device=device)
    inside = (kk[None, :] >= 1) & (kk[None, :] <= (cc[:, None] - 2))  # interior of each sample's grid
    mask2 = (inside[:, :, None] & inside[:, None, :]).double()  # (N, 9, 9)
    noise = torch.zeros((n, G_NODES, G_NODES), device=device, dtype=torch.float64)
    noise[:, 1:-1, 1:-1] = z[0] + z[1].transpose(-1, -2)  # N1 + N2ᵀ (§12.6)
    mx = kk[None, None, :].double() * cell[:, None, None] + noise * mask2 * (cell[:, None, None] * WARP_AMOUNT)
    # Evaluate each sample's coarse grid (cc nodes, spacing `cell`) at the finest lattice (spacing w/8):
    # finest node k sits at coarse coordinate k·(w/8)/cell; the coarse map is bilinear between nodes.
    uc = kk[None, :].double() * (w // 8) / cell[:, None]  # (N, 9)
    i0 = uc.floor().long().clamp(max=(cc - 2)[:, None])
    fr = uc - i0
    i1 = i0 + 1
    g00 = torch.gather(torch.gather(mx, 1, i0[:, :, None].expand(-1, -1, G_NODES)), 2, i0[:, None, :].expand(-1, G_NODES, -1))
    g01 = torch.gather(torch.gather(mx, 1, i0[:, :, None].expand(-1, -1, G_NODES)), 2, i1[:, None, :].expand(-1, G_NODES, -1))
    g10 = torch.gather(torch.gather(mx, 1, i1[:, :, None].expand(-1, -1, G_NODES)), 2, i0[:, None, :].expand(-1, G_NODES, -1))
    g11 = torch.gather(torch.gather(mx, 1, i1[:, :, None].expand(-1, -1, G_NODES)), 2, i1[:, None, :].expand(-1, G_NODES, -1))
    fy, fx = fr[:, :, None], fr[:, None, :]
    fine_x = (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy  # (N, 9, 9) pixel units
    fine = torch.stack([fine_x, fine_x.transpose(-1, -2)], 1)  # MY = MXᵀ
    nodes = ((2 * fine + 1) / w - 1).float()
    rmat = _rotation_matrix(w, rotation, scale, tx, ty)
    return WarpBatchParams(w, rw, nodes, rmat, p_flip)


# -------------------------------------------------------------------------------- composition
def _invert_affine(m: torch.Tensor) -> torch.Tensor:
    """cv2.invertAffineTransform, batched float64: (N, 2, 3) -> (N, 2, 3), same operation order."""
    m = m.double()
    d = m[:, 0, 0] * m[:, 1, 1] - m[:, 0, 1] * m[:, 1, 0]
    d = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    a11 = m[:, 1, 1] * d
    a22 = m[:, 0, 0] * d
    a12 = -m[:, 0, 1] * d
    a21 = -m[:, 1, 0] * d
    b1 = -a11 * m[:, 0, 2] - a12 * m[:, 1, 2]
    b2 = -a21 * m[:, 0, 2] - a22 * m[:, 1, 2]
    return torch.stack([torch.stack([a11, a12, b1], -1), torch.stack([a21, a22, b2], -1)], 1)


def _out_coords(bp: WarpBatchParams, can_flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Output pixel columns (after the flip is folded in) (N, w) and rows (w,), float64 integers."""
    so = bp.w
    dev = bp.nodes.device
    xs = torch.arange(so, device=dev, dtype=torch.float64)
    xcol = xs.expand(bp.n, so)
    if can_flip:
        xcol = torch.where(bp.flip[:, None], (so - 1) - xs[None, :], xcol)
    return xcol, xs


def _affine_fixed_point(minv: torch.Tensor, xcol: torch.Tensor, yrow: torch.Tensor, w: int) -> torch.Tensor:
    """cv2.warpAffine's source coordinates for integer dst pixels, normalised, (N, H, W, 2) float32.

    OpenCV: X0(y) = round((M1·y + M2)·1024) + 16, adelta(x) = round(M0·x·1024),
    X = (X0 + adelta) >> 5 in 1/32 px (round half to even, arithmetic shift). The 1024-scaled
    terms are separable, so the (N, H, W) work is one int add and a shift.
    """
    scale = float(1 << _AB_BITS)
    delta = float(1 << (_AB_BITS - _INTER_BITS - 1))  # AB_SCALE / INTER_TAB_SIZE / 2 = 16
    row = torch.round((minv[:, :, 1, None] * yrow[None, None, :] + minv[:, :, 2, None]) * scale) + delta  # (N, 2, H)
    col = torch.round(minv[:, :, 0, None] * xcol[:, None, :] * scale)  # (N, 2, W)
    row_i = row.to(torch.int32).permute(0, 2, 1)[:, :, None, :]  # (N, H, 1, 2)
    col_i = col.to(torch.int32).permute(0, 2, 1)[:, None, :, :]  # (N, 1, W, 2)
    fixed = torch.bitwise_right_shift(row_i + col_i, _AB_BITS - _INTER_BITS)  # (N, H, W, 2) in 1/32 px
    # normalised = (2·(X/32) + 1)/w − 1
    return fixed.to(torch.float32).mul_(2.0 / (32 * w)).add_(1.0 / w - 1.0)


def _identity_grid(px: torch.Tensor, py: torch.Tensor, w: int) -> torch.Tensor:
    """Normalised coordinates of the pixels (px (N, W), py (H,)) themselves, (N, H, W, 2)."""
    n, so = px.shape
    gx = ((2 * px + 1) / w - 1).to(torch.float32)[:, None, :].expand(n, py.shape[0], so)
    gy = ((2 * py + 1) / w - 1).to(torch.float32)[None, :, None].expand(n, py.shape[0], so)
    return torch.stack([gx, gy], -1)


def _kernel_taps(t: torch.Tensor, cubic: bool) -> list[tuple[int, torch.Tensor]]:
    """(offset from floor, weight) pairs of the interpolation kernel at fraction t."""
    if not cubic:
        return [(0, 1 - t), (1, t)]
    a = CUBIC_A

    def k1(x: torch.Tensor) -> torch.Tensor:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def k2(x: torch.Tensor) -> torch.Tensor:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [(-1, k2(t + 1)), (0, k1(t)), (1, k1(1 - t)), (2, k2(2 - t))]


def _coverage(g: torch.Tensor, size: int, cubic: bool) -> torch.Tensor:
    """Σ_taps k(t − s)·[0 ≤ t < size] per axis, multiplied: the zero border's weight. g normalised (…, 2)."""
    s = ((g + 1) * size - 1) / 2
    s0 = torch.floor(s)
    t = s - s0
    cov = None
    for axis in (0, 1):
        acc = torch.zeros_like(s[..., axis])
        for off, wt in _kernel_taps(t[..., axis], cubic):
            idx = s0[..., axis] + off
            acc = acc + wt * ((idx >= 0) & (idx <= size - 1))
        cov = acc if cov is None else cov * acc
    return cov


def compose_grid(
    bp: WarpBatchParams,
    can_warp: bool,
    can_transform: bool,
    can_flip: bool,
    border_replicate: bool,
    cubic: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, bool]:
    """One source coordinate per output pixel for DFL's remap → warpAffine → flip chain at size w.

    Returns (grid, weight, zeros): grid (N, w, w, 2) float32 in grid_sample's normalised convention
    (align_corners=False), or None when the result is a plain copy (no warp, no transform); weight
    (N, w, w) float32 or None (multiplies the sample: the affine's zero border turned into coverage
    when it is composed with the grid); zeros: True to zero the sampler's out-of-range taps (cv2
    BORDER_CONSTANT), False to clamp them (BORDER_REPLICATE). Params with `rw` set are handled by
    the caller (resize to w, compose, resize back; see `warp_batch`).
    """
    if bp.rw is not None:
        raise ValueError("compose_grid: params with rw set (size < 64) must be composed at w; resize first")
    w = bp.w
    if not (can_warp or can_transform):
        return None, None, False
    key = (bool(can_transform), bool(can_flip))
    q = bp._coords.get(key)
    if q is None:
        xcol, yrow = _out_coords(bp, can_flip)
        if can_transform:
            q = _affine_fixed_point(_invert_affine(bp.rmat), xcol, yrow, w)
        else:
            q = _identity_grid(xcol, yrow, w)
        bp._coords[key] = q
    if not can_warp:
        return q, None, not border_replicate  # exactly cv2.warpAffine's coordinates and border
    weight = _coverage(q, w, cubic) if (can_transform and not border_replicate) else None
    lim = 1.0 - 1.0 / w  # normalised coordinate of pixel w-1 (and -lim of pixel 0)
    # Replicating the remapped image's edge == evaluating the map at the clamped coordinate.
    qc = q.clamp(-lim, lim)
    m = F.grid_sample(bp.nodes, qc, mode="bilinear", padding_mode="border", align_corners=True)  # (N, 2, w, w)
    return m.permute(0, 2, 3, 1), weight, True  # remap's zero border: zero the source taps


def sample_torch(image: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor | None, cubic: bool, zeros: bool) -> torch.Tensor:
    """Sample (N, C, H, W) at a normalised grid (N, Ho, Wo, 2): bicubic (a = −0.75) or bilinear,
    out-of-range taps zeroed (`zeros`) or clamped; times `weight` (N, Ho, Wo) if given. fp32 math."""
    x = image if image.dtype == torch.float32 else image.float()
    out = F.grid_sample(x, grid, mode="bicubic" if cubic else "bilinear",
                        padding_mode="zeros" if zeros else "border", align_corners=False)
    if weight is not None:
        out = out * weight[:, None]
    return out if out.dtype == image.dtype else out.to(image.dtype)
