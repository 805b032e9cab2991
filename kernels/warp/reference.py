"""DFL's random warp, reimplemented in numpy + OpenCV: the oracle and the CPU fallback.

This is the per-sample path DFL runs in every SampleProcessor worker (docs/dfl.md §5.2–5.4). It reproduces
DeepFaceLab's `core/imagelib/warp.py` (`gen_warp_params`, `warp_by_params`) and `core/randomex.py`
(`random_normal`) from docs/dfl.md and the recorded goldens (tests/golden/warp/), quirks included:

- §12.6 grid aliasing: DFL's `mapy` is a transposed *view* of `mapx`, so the coarse grids actually
  used are ``MX = G + interior(N1 + N2ᵀ)`` and ``MY = MXᵀ`` (each interior displacement is the sum
  of two independent draws).
- §12.7 half-pixel offset: with zero noise the upsampled maps are ``mapx[y, x] = x + 0.5`` and
  ``mapy[y, x] = y + 0.5`` (cv2.resize's pixel-centre alignment and the half-cell crop).
- `random_normal` redraws each element separately (scalar draws, in order) until ``|x| <= 2.5`` and
  stores ``x / 2.5`` as **float32**; the product with ``cell_size * 0.24`` stays float32 (numpy's
  scalar casting) and is then added to the float64 grid. This precision detail is what makes the
  maps bit-identical to DFL's.
- RNG draw order (§5.2): `rnd_state`: uniform(rotation), uniform(scale), uniform(tx), uniform(ty),
  then randint(10) for the flip only when `flip` is requested (short-circuit `and`);
  `warp_rnd_state`: randint(3) for the cell size, then the N1 draws (row-major) and the N2 draws.
  Either state defaults to numpy's *global* RNG when None, as in DFL.
- w < 64: parameters are built for 64 and `rw` records the real size; `warp_by_params` resizes the
  image to 64 before and back to `rw` after (only when warp or transform is on), with `cv2_inter`.
- The scale draw is ``U(1/(1 - scale_range[0]), 1 + scale_range[1])``, not symmetric around 1.

Nothing here deviates from DFL on purpose. DFL's `warp_by_params` may return a negative-stride view
after the flip; this one returns a contiguous array (same values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["random_normal", "gen_warp_params", "warp_by_params", "DEFAULT_RANGES", "SAEHD_SCALE_RANGE"]

# DFL's defaults (core/imagelib/warp.py); SampleProcessor passes scale_range=[-0.15, 0.15] for SAEHD.
DEFAULT_RANGES = {
    "rotation_range": (-10.0, 10.0),
    "scale_range": (-0.5, 0.5),
    "tx_range": (-0.05, 0.05),
    "ty_range": (-0.05, 0.05),
}
SAEHD_SCALE_RANGE = (-0.15, 0.15)

TRUNC = 2.5  # random_normal's truncation, in standard deviations
WARP_AMOUNT = 0.24  # interior node displacement = random_normal() * cell_size * 0.24


def random_normal(size: tuple[int, ...], rnd_state: Any = None, trunc_val: float = TRUNC) -> np.ndarray:
    """DFL's truncated normal: each element ~ N(0, 1) redrawn until |x| <= trunc_val, returned as x / trunc_val.

    Element i takes the i-th *accepted* scalar draw of `rnd_state` (DFL loops element by element and
    redraws one scalar at a time). Drawing the still-missing count in one `normal(size=k)` call
    consumes exactly the same stream (RandomState's Gaussian cache is shared by scalar and vector
    calls), so this is bit-identical and faster. Output float32 in [-1, 1], shape `size`.
    """
    rs = np.random if rnd_state is None else rnd_state
    n = int(np.prod(size))
    accepted: list[np.ndarray] = []
    need = n
    while need > 0:
        x = rs.normal(size=need)
        x = x[(x >= -trunc_val) & (x <= trunc_val)]
        accepted.append(x)
        need -= x.size
    vals = np.concatenate(accepted) if accepted else np.empty(0)
    # DFL stores x / trunc_val into a float32 array: the division is float64, the store rounds.
    return (vals / trunc_val).astype(np.float32).reshape(size)


def _coarse_grids(w: int, warp_rnd_state: Any) -> tuple[int, np.ndarray, np.ndarray]:
    """Cell size and the aliased coarse grids (MX, MY = MXᵀ), float64 (cc, cc). docs/dfl.md §5.3 steps 1–4."""
    rs = np.random if warp_rnd_state is None else warp_rnd_state
    cell_size = (w // 2, w // 4, w // 8)[rs.randint(3)]
    cell_count = w // cell_size + 1
    grid = np.linspace(0, w, cell_count)  # float64 node coordinates 0, cell, ..., w
    n1 = random_normal((cell_count - 2, cell_count - 2), rs) * (cell_size * WARP_AMOUNT)  # float32
    n2 = random_normal((cell_count - 2, cell_count - 2), rs) * (cell_size * WARP_AMOUNT)  # float32
    mx = np.tile(grid, (cell_count, 1))  # every row is `grid`
    # §12.6: DFL adds N1 to mapx, then N2 to mapy which is a transposed view of the same memory,
    # so N2ᵀ lands on mapx as well. Written out explicitly (no aliasing games) but in DFL's
    # arithmetic order: (G + N1) + N2ᵀ, each float32 noise promoted to float64 on addition.
    mx[1:-1, 1:-1] = mx[1:-1, 1:-1] + n1
    mx[1:-1, 1:-1] = mx[1:-1, 1:-1] + n2.T
    return cell_size, mx, mx.T.copy()


def _upsample_map(coarse: np.ndarray, w: int, cell_size: int) -> np.ndarray:
    """cv2.resize (bilinear, pixel-centre alignment) to (w + cell)², crop cell/2 per side -> float32 (w, w)."""
    half = cell_size // 2
    full = cv2.resize(coarse, (w + cell_size, w + cell_size))  # default INTER_LINEAR
    return full[half:-half, half:-half].astype(np.float32)


def gen_warp_params(
    w: int,
    flip: bool,
    rotation_range: Sequence[float] = DEFAULT_RANGES["rotation_range"],
    scale_range: Sequence[float] = DEFAULT_RANGES["scale_range"],
    tx_range: Sequence[float] = DEFAULT_RANGES["tx_range"],
    ty_range: Sequence[float] = DEFAULT_RANGES["ty_range"],
    rnd_state: Any = None,
    warp_rnd_state: Any = None,
) -> dict[str, Any]:
    """DFL's `gen_warp_params` (docs/dfl.md §5.3): random affine + random grid for one sample.

    Returns DFL's dict: ``mapx``, ``mapy`` float32 (w, w); ``rmat`` float64 (2, 3) =
    cv2.getRotationMatrix2D((w//2, w//2), rotation, scale) with ``[:, 2] += (tx·w, ty·w)``; ``umat``
    (rmat with its translation column divided by w; unused by SAEHD); ``w`` (the working size, 64 when
    the requested size is below 64); ``rw`` (the requested size when below 64, else None); ``flip``
    (bool, probability 0.4 when `flip` is requested).
    """
    rs = np.random if rnd_state is None else rnd_state
    rw = None
    if w < 64:
        rw, w = w, 64

    rotation = rs.uniform(rotation_range[0], rotation_range[1])
    scale = rs.uniform(1 / (1 - scale_range[0]), 1 + scale_range[1])
    tx = rs.uniform(tx_range[0], tx_range[1])
    ty = rs.uniform(ty_range[0], ty_range[1])
    p_flip = bool(flip) and rs.randint(10) < 4  # short-circuit: no draw when flip is off

    cell_size, mx, my = _coarse_grids(w, warp_rnd_state)
    mapx = _upsample_map(mx, w, cell_size)
    mapy = _upsample_map(my, w, cell_size)

    rmat = cv2.getRotationMatrix2D((w // 2, w // 2), rotation, scale)
    rmat[:, 2] += (tx * w, ty * w)
    umat = rmat.copy()
    umat[:, 2] /= w
    return {"mapx": mapx, "mapy": mapy, "rmat": rmat, "umat": umat, "w": w, "rw": rw, "flip": p_flip}


def warp_by_params(
    params: dict[str, Any],
    img: np.ndarray,
    can_warp: bool,
    can_transform: bool,
    can_flip: bool,
    border_replicate: bool,
    cv2_inter: int = cv2.INTER_CUBIC,
) -> np.ndarray:
    """DFL's `warp_by_params` (docs/dfl.md §5.3): remap by the grid, warpAffine by rmat, mirror.

    img: (H, W) or (H, W, C) float32 with H = W = params['w'] (or params['rw'] when set). Steps:
    resize to 64 (rw only) -> cv2.remap(mapx, mapy, cv2_inter, BORDER_CONSTANT 0) if can_warp ->
    cv2.warpAffine(rmat, (w, w), cv2_inter, REPLICATE if border_replicate else CONSTANT 0) if
    can_transform -> resize back to rw (rw only) -> make 3-D -> img[:, ::-1] if can_flip and flip.
    Returns (H, W, C) contiguous.
    """
    w = int(params["w"])
    rw = params.get("rw")
    if rw is not None and int(rw) < 0:  # goldens store None as -1
        rw = None
    resized = (can_warp or can_transform) and rw is not None
    if resized:
        img = cv2.resize(img, (64, 64), interpolation=cv2_inter)
    if can_warp:
        img = cv2.remap(img, params["mapx"], params["mapy"], cv2_inter)
    if can_transform:
        border = cv2.BORDER_REPLICATE if border_replicate else cv2.BORDER_CONSTANT
        img = cv2.warpAffine(img, params["rmat"], (w, w), borderMode=border, flags=cv2_inter)
    if resized:
        img = cv2.resize(img, (int(rw), int(rw)), interpolation=cv2_inter)
    if img.ndim == 2:
        img = img[..., None]
    if can_flip and bool(params["flip"]):
        img = img[:, ::-1, ...]
    return np.ascontiguousarray(img)
