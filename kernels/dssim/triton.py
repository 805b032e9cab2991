"""DSSIM's Triton path ("triton", CUDA): the separable form of DFL's window (docs/dfl.md §4.1), fp32 accumulation.

Same decomposition as the CPU kernel (dssim_cpu.c), as four launches per window, each program a
BLOCK_H x BLOCK_W tile of one plane (N·C planes):
  1. `_hpass`      h_m[r, j]  = Σ_k g[k]·m[r, j+k]          m ∈ {x, y, x·y, x²+y²}          (4, P, H, W')
  2. `_vpass_ssim` mu_m[i, j] = Σ_k g[k]·h_m[i+k, j]; SSIM row sums; with GRAD the partials
                   ∂map/∂(a, b, sxy, s) are stored                                          (4, P, H', W')
  3. `_vtpass`     V_m[r, j]  = Σ_k g[k]·P_m[r−k, j]  (transposed = full correlation; window symmetric)
  4. `_htpass`     G_m[r, c]  = Σ_k g[k]·V_m[r, c−k];  J2 += s·(G_b + 2y·G_s + x·G_xy),  J1 likewise
The SSIM map is written out and reduced with torch, so results are deterministic (no atomics). The window length is a runtime loop bound: one compile serves every window size.

The kernels are decorated lazily by `kernels()` so that TRITON_INTERPRET=1 (numpy interpreter, used by the
CPU test suite on tiny shapes) can be switched on after triton was imported. For the same reason they use
only builtins of triton.language (tl.full, not tl.zeros / tl.sum, which are @jit functions that the
interpreter can run only if TRITON_INTERPRET was set before triton's import).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .reference import gaussian_1d


def _hpass(x_ptr, y_ptr, h_ptr, g_ptr, P, H, W, Wp, fs, NRB, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # plane * NRB + row block
    plane = (pid // NRB).to(tl.int64)  # int64 from here: offsets of big batches pass 2**31
    p64 = plane * 0 + P  # P as int64 (an int argument equal to 1 is a constexpr and has no .to())
    rows = (pid % NRB) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < H)[:, None] & (cols < Wp)[None, :]
    src = plane * H * W + rows[:, None] * W + cols[None, :]
    a0 = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    a1 = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    a2 = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    a3 = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    for k in range(0, fs):
        gk = tl.load(g_ptr + k)
        xv = tl.load(x_ptr + src + k, mask=mask, other=0.0)
        yv = tl.load(y_ptr + src + k, mask=mask, other=0.0)
        a0 += gk * xv
        a1 += gk * yv
        a2 += gk * (xv * yv)
        a3 += gk * (xv * xv + yv * yv)
    msz = p64 * H * Wp
    out = plane * H * Wp + rows[:, None] * Wp + cols[None, :]
    tl.store(h_ptr + out, a0, mask=mask)
    tl.store(h_ptr + msz + out, a1, mask=mask)
    tl.store(h_ptr + 2 * msz + out, a2, mask=mask)
    tl.store(h_ptr + 3 * msz + out, a3, mask=mask)


def _vpass_ssim(h_ptr, part_ptr, map_ptr, g_ptr, P, H, Hp, Wp, fs, NRB, c1, c2,
                GRAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # plane * NRB + row block (rows of the H' x W' map)
    plane = (pid // NRB).to(tl.int64)  # int64 from here: offsets of big batches pass 2**31
    p64 = plane * 0 + P  # P as int64 (an int argument equal to 1 is a constexpr and has no .to())
    rows = (pid % NRB) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < Hp)[:, None] & (cols < Wp)[None, :]
    msz = p64 * H * Wp
    src = plane * H * Wp + rows[:, None] * Wp + cols[None, :]
    a = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    b = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    sxy = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    ss = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    for k in range(0, fs):
        gk = tl.load(g_ptr + k)
        off = src + k * Wp
        a += gk * tl.load(h_ptr + off, mask=mask, other=0.0)
        b += gk * tl.load(h_ptr + msz + off, mask=mask, other=0.0)
        sxy += gk * tl.load(h_ptr + 2 * msz + off, mask=mask, other=0.0)
        ss += gk * tl.load(h_ptr + 3 * msz + off, mask=mask, other=0.0)
    # §4.1 steps 5-7, in the reference's operation order
    num0 = a * b * 2.0
    den0 = a * a + b * b
    d0 = den0 + c1
    q = ss - den0 + c2
    lum = (num0 + c1) / d0
    cs = (sxy * 2.0 - num0 + c2) / q
    # The map goes to memory and torch reduces it: deterministic (no atomics).
    pout = plane * Hp * Wp + rows[:, None] * Wp + cols[None, :]
    tl.store(map_ptr + pout, lum * cs, mask=mask)
    if GRAD:
        psz = p64 * Hp * Wp
        pa = cs * (2.0 * b - 2.0 * a * lum) / d0 + lum * (2.0 * a * cs - 2.0 * b) / q
        pb = cs * (2.0 * a - 2.0 * b * lum) / d0 + lum * (2.0 * b * cs - 2.0 * a) / q
        tl.store(part_ptr + pout, pa, mask=mask)
        tl.store(part_ptr + psz + pout, pb, mask=mask)
        tl.store(part_ptr + 2 * psz + pout, 2.0 * lum / q, mask=mask)
        tl.store(part_ptr + 3 * psz + pout, -lum * cs / q, mask=mask)


def _vtpass(part_ptr, v_ptr, g_ptr, P, H, Hp, Wp, fs, NRB, NEED_A: tl.constexpr, NEED_B: tl.constexpr,
            BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # plane * NRB + row block (rows of H)
    plane = (pid // NRB).to(tl.int64)  # int64 from here: offsets of big batches pass 2**31
    p64 = plane * 0 + P  # P as int64 (an int argument equal to 1 is a constexpr and has no .to())
    rows = (pid % NRB) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < H)[:, None] & (cols < Wp)[None, :]
    psz = p64 * Hp * Wp
    vsz = p64 * H * Wp
    pbase = plane * Hp * Wp + cols[None, :]
    va = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    vb = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    vxy = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    vs = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    for k in range(0, fs):
        src = rows - k  # only source rows inside the VALID map contribute
        ok = mask & ((src >= 0) & (src < Hp))[:, None]
        gk = tl.load(g_ptr + k)
        off = pbase + src[:, None] * Wp
        if NEED_A:
            va += gk * tl.load(part_ptr + off, mask=ok, other=0.0)
        if NEED_B:
            vb += gk * tl.load(part_ptr + psz + off, mask=ok, other=0.0)
        vxy += gk * tl.load(part_ptr + 2 * psz + off, mask=ok, other=0.0)
        vs += gk * tl.load(part_ptr + 3 * psz + off, mask=ok, other=0.0)
    out = plane * H * Wp + rows[:, None] * Wp + cols[None, :]
    if NEED_A:
        tl.store(v_ptr + out, va, mask=mask)
    if NEED_B:
        tl.store(v_ptr + vsz + out, vb, mask=mask)
    tl.store(v_ptr + 2 * vsz + out, vxy, mask=mask)
    tl.store(v_ptr + 3 * vsz + out, vs, mask=mask)


def _htpass(v_ptr, x_ptr, y_ptr, j1_ptr, j2_ptr, g_ptr, P, H, W, Wp, fs, NRB, jscale,
            NEED_A: tl.constexpr, NEED_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)  # plane * NRB + row block
    plane = (pid // NRB).to(tl.int64)  # int64 from here: offsets of big batches pass 2**31
    p64 = plane * 0 + P  # P as int64 (an int argument equal to 1 is a constexpr and has no .to())
    rows = (pid % NRB) * BLOCK_H + tl.arange(0, BLOCK_H)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    rmask = (rows < H)[:, None]
    mask = rmask & (cols < W)[None, :]
    vsz = p64 * H * Wp
    vbase = plane * H * Wp + rows[:, None] * Wp
    ga = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    gb = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    gxy = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    gs = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    for k in range(0, fs):
        src = cols - k  # only source columns inside the VALID map contribute
        ok = rmask & ((src >= 0) & (src < Wp))[None, :]
        gk = tl.load(g_ptr + k)
        off = vbase + src[None, :]
        if NEED_A:
            ga += gk * tl.load(v_ptr + off, mask=ok, other=0.0)
        if NEED_B:
            gb += gk * tl.load(v_ptr + vsz + off, mask=ok, other=0.0)
        gxy += gk * tl.load(v_ptr + 2 * vsz + off, mask=ok, other=0.0)
        gs += gk * tl.load(v_ptr + 3 * vsz + off, mask=ok, other=0.0)
    pix = plane * H * W + rows[:, None] * W + cols[None, :]
    xv = tl.load(x_ptr + pix, mask=mask, other=0.0)
    yv = tl.load(y_ptr + pix, mask=mask, other=0.0)
    if NEED_B:
        j2 = tl.load(j2_ptr + pix, mask=mask, other=0.0)
        tl.store(j2_ptr + pix, j2 + jscale * (gb + 2.0 * yv * gs + xv * gxy), mask=mask)
    if NEED_A:
        j1 = tl.load(j1_ptr + pix, mask=mask, other=0.0)
        tl.store(j1_ptr + pix, j1 + jscale * (ga + 2.0 * xv * gs + yv * gxy), mask=mask)


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    # `interpret` only keys the cache: triton.jit reads TRITON_INTERPRET when it decorates.
    return tuple(triton.jit(f) for f in (_hpass, _vpass_ssim, _vtpass, _htpass))


def kernels():
    """The four jitted kernels, (re)decorated if TRITON_INTERPRET changed since the last call."""
    return _kernels(bool(triton.knobs.runtime.interpret))


BLOCK_H = 8  # rows per program; 4 fp32 accumulators of BLOCK_H x BLOCK_W stay in registers


def _block(n: int) -> int:
    return max(16, min(128, triton.next_power_of_2(n)))


def dssim_fused(img1: torch.Tensor, img2: torch.Tensor, filter_sizes: list[int], weights: list[float],
                max_val: float, grad1: bool, grad2: bool,
                launch=lambda k: k) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as kernels.dssim.cpu.dssim_fused, on CUDA (or CPU tensors under TRITON_INTERPRET=1).

    `launch` wraps each kernel before launching (op.py passes torch.library.wrap_triton so torch.compile
    can trace the launches).
    """
    hpass, vpass, vtpass, htpass = kernels()
    x = img1.contiguous()
    y = img2.contiguous()
    n, c, h, w = x.shape
    p = n * c
    dev = x.device
    out = torch.zeros((n, c), dtype=torch.float32, device=dev)
    j1 = torch.zeros_like(x) if grad1 else x.new_empty(0)
    j2 = torch.zeros_like(y) if grad2 else y.new_empty(0)
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2
    grad = grad1 or grad2
    bh = BLOCK_H
    nrb_h = triton.cdiv(h, bh)
    for f, wt in zip(filter_sizes, weights):
        fs = max(1, int(f))
        hp, wp = h - fs + 1, w - fs + 1
        g = gaussian_1d(fs, device=dev)
        bw = _block(wp)
        ncb = triton.cdiv(wp, bw)
        nrb_p = triton.cdiv(hp, bh)
        hbuf = torch.empty((4, p, h, wp), dtype=torch.float32, device=dev)
        smap = torch.empty((n, c, hp, wp), dtype=torch.float32, device=dev)
        part = torch.empty((4, p, hp, wp) if grad else (0,), dtype=torch.float32, device=dev)
        launch(hpass)[(p * nrb_h, ncb)](x, y, hbuf, g, p, h, w, wp, fs, nrb_h, BLOCK_H=bh, BLOCK_W=bw)
        launch(vpass)[(p * nrb_p, ncb)](hbuf, part, smap, g, p, h, hp, wp, fs, nrb_p, c1, c2,
                                        GRAD=grad, BLOCK_H=bh, BLOCK_W=bw)
        mean = smap.mean(dim=(2, 3))
        out = out + float(wt) * (1.0 - mean) / 2.0
        if grad:
            v = torch.empty((4, p, h, wp), dtype=torch.float32, device=dev)
            launch(vtpass)[(p * nrb_h, ncb)](part, v, g, p, h, hp, wp, fs, nrb_h, NEED_A=grad1, NEED_B=grad2,
                                             BLOCK_H=bh, BLOCK_W=bw)
            bwf = _block(w)
            jscale = -float(wt) / (2.0 * hp * wp)
            launch(htpass)[(p * nrb_h, triton.cdiv(w, bwf))](v, x, y, j1 if grad1 else x, j2 if grad2 else y, g, p, h, w,
                                                             wp, fs, nrb_h, jscale, NEED_A=grad1, NEED_B=grad2,
                                                             BLOCK_H=bh, BLOCK_W=bwf)
    return out, j1, j2
