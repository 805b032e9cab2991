"""JPEG compression and decompression as batched torch ops: what `cv2.imdecode(cv2.imencode(".jpg", img,
[IMWRITE_JPEG_QUALITY, q]))` does to a uint8 BGR image, for a batch with one quality per image, on any device.

DFL's XSeg augmentation re-encodes a quarter of its samples at a random quality (docs/dfl.md §5.7 step 8); the
device pipeline (engine.xseg.device) does it here instead of calling the CPU codec per sample.

What OpenCV's encoder does by default (libjpeg-turbo, baseline, 4:2:0, no smoothing, integer DCT) and this op
reproduces step by step:

1. colour: RGB -> YCbCr with libjpeg's 16-bit fixed-point coefficients (jccolor.c), exactly;
2. chroma 4:2:0: each 2x2 block of Cb and Cr averaged with libjpeg's alternating rounding bias 1, 2, 1, ...
   (jcsample.c h2v2_downsample), exactly; images whose sides are not multiples of 16 are padded by
   repeating the last row / column first, as libjpeg expands partial MCUs;
3. 8x8 DCT-II of each block of each plane minus 128 (JPEG's orthonormal definition);
4. quantisation by the standard tables of the JPEG specification (Annex K: luminance for Y, chrominance for
   Cb and Cr) scaled by quality as libjpeg's jpeg_quality_scaling (q < 50: 5000/q, else 200 - 2q; entries
   (t·scale + 50) // 100 clamped to 1..255, baseline), rounding half away from zero;
5. dequantisation, inverse DCT, +128, rounding, clamping to 0..255;
6. chroma upsampling by libjpeg's "fancy" (triangle) filter, h2v2_fancy_upsample, with its +8/+7 rounding
   and replicated edges, exactly;
7. YCbCr -> RGB with libjpeg's fixed-point tables (jdcolor.c), exactly.

Where it is not bit-exact, and why: libjpeg's default DCT and inverse DCT (JDCT_ISLOW, jfdctint.c /
jidctint.c) are 13-bit fixed-point approximations that round between their row and column passes; here
steps 3 and 5 are the exact transform in float32. A DCT coefficient that lands within about 1e-3 of a
rounding boundary of its quantiser step can therefore round to the neighbouring level; that changes the
decoded 8x8 block (by up to one quantiser step times the basis function) and, through the final rounding,
single pixels by one level elsewhere. tests/data/test_device_jpeg.py measures it against OpenCV across
qualities 10..100: most pixels are identical, the mean difference is a small fraction of a level and far
below the compression error itself (the bounds are stated there).

The DCT runs as two 8x8 matrix products per block (torch.matmul): full float32 on CPU and on CUDA unless a
caller enables TF32 matmuls (torch's default leaves them off), which would make coefficients near a
rounding boundary flip more often.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

__all__ = ["jpeg_roundtrip", "quant_tables", "LUMA_TABLE", "CHROMA_TABLE"]

# JPEG specification Annex K.1, natural (row-major) order, as libjpeg's jcparam.c
LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)

_SCALEBITS = 16
_ONE_HALF = 1 << (_SCALEBITS - 1)
_CBCR_OFFSET = 128 << _SCALEBITS


def _fix(x: float) -> int:
    """libjpeg's FIX(x): x in 16-bit fixed point, rounded."""
    return int(x * (1 << _SCALEBITS) + 0.5)


@functools.lru_cache(maxsize=None)
def _dct_matrix(device: str) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix D (D @ x transforms a column), float32 on `device`."""
    d = torch.empty(8, 8, dtype=torch.float64)
    for k in range(8):
        c = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
        for n in range(8):
            d[k, n] = c * math.cos(math.pi * (2 * n + 1) * k / 16)
    return d.to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=None)
def _base_tables(device: str) -> torch.Tensor:
    return torch.tensor([LUMA_TABLE, CHROMA_TABLE], dtype=torch.int32, device=device)  # (2, 64)


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """libjpeg's jpeg_set_quality(q, force_baseline=TRUE) for each quality (N,) int -> (N, 2, 64) int32
    (luminance, chrominance) in natural order."""
    q = quality.to(torch.int32).clamp(1, 100)
    scale = torch.where(q < 50, torch.div(5000, q, rounding_mode="floor"), 200 - 2 * q)
    base = _base_tables(str(quality.device))
    t = torch.div(base[None] * scale[:, None, None] + 50, 100, rounding_mode="floor")
    return t.clamp_(1, 255)


def _rgb_to_ycc(b: torch.Tensor, g: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """jccolor.c rgb_ycc_convert on int32 planes."""
    y = (_fix(0.29900) * r + _fix(0.58700) * g + _fix(0.11400) * b + _ONE_HALF) >> _SCALEBITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + _CBCR_OFFSET + _ONE_HALF - 1) >> _SCALEBITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + _CBCR_OFFSET + _ONE_HALF - 1) >> _SCALEBITS
    return y, cb, cr


def _ycc_to_bgr(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ycc_rgb_convert (its tables as formulas) -> (..., 3, H, W) int32 BGR in 0..255."""
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.40200) * cr + _ONE_HALF) >> _SCALEBITS)
    b = y + ((_fix(1.77200) * cb + _ONE_HALF) >> _SCALEBITS)
    g = y + ((-_fix(0.34414) * cb + (-_fix(0.71414) * cr + _ONE_HALF)) >> _SCALEBITS)
    return torch.stack([b, g, r], -3).clamp_(0, 255)


def _downsample_h2v2(x: torch.Tensor) -> torch.Tensor:
    """jcsample.c h2v2_downsample: (M, H, W) int32, H and W even -> (M, H/2, W/2)."""
    m, h, w = x.shape
    s = x.reshape(m, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
    bias = torch.ones(w // 2, dtype=x.dtype, device=x.device)
    bias[1::2] = 2
    return (s + bias) >> 2


def _upsample_h2v2_fancy(x: torch.Tensor) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample: (M, h, w) int32 -> (M, 2h, 2w); edges replicated (libjpeg's context
    rows at the top and bottom of the image), w >= 2."""
    up = torch.cat([x[:, :1], x[:, :-1]], 1)  # the row above (the first row at the top)
    down = torch.cat([x[:, 1:], x[:, -1:]], 1)  # the row below
    cols = torch.stack([3 * x + up, 3 * x + down], 2).flatten(1, 2)  # (M, 2h, w) column sums: output rows
    left = torch.cat([cols[..., :1], cols[..., :-1]], -1)
    right = torch.cat([cols[..., 1:], cols[..., -1:]], -1)
    even = (3 * cols + left + 8) >> 4
    odd = (3 * cols + right + 7) >> 4
    even[..., 0] = (4 * cols[..., 0] + 8) >> 4
    odd[..., -1] = (4 * cols[..., -1] + 7) >> 4
    return torch.stack([even, odd], -1).flatten(-2)


def _blocks(x: torch.Tensor) -> torch.Tensor:
    """(M, H, W) -> (M, H/8, W/8, 8, 8)."""
    m, h, w = x.shape
    return x.reshape(m, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(x: torch.Tensor) -> torch.Tensor:
    m, bh, bw = x.shape[:3]
    return x.transpose(2, 3).reshape(m, bh * 8, bw * 8)


def _code_plane(plane: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Steps 3-5 for planes (M, H, W) int32 (H, W multiples of 8) with tables q (M, 64): DCT, quantise,
    dequantise, inverse DCT, round, clamp -> int32."""
    d = _dct_matrix(str(plane.device))
    blk = _blocks(plane.float() - 128.0)
    coef = d @ blk @ d.T  # (M, bh, bw, 8, 8)
    # The DC coefficient is the block sum / 8, a multiple of 1/8: computed exactly (the matrix products
    # are not), so that exact ties round as libjpeg rounds them (its DC path is exact too).
    coef[..., 0, 0] = blk.sum(dim=(-1, -2)) / 8
    step = q.float().reshape(-1, 1, 1, 8, 8)
    level = torch.sign(coef) * torch.floor(coef.abs() / step + 0.5)  # libjpeg rounds half away from zero
    dq = level * step
    dc = dq[..., :1, :1] / 8  # the DC term of the inverse, exact; the AC terms through the matrices
    dq[..., 0, 0] = 0
    rec = dc + d.T @ dq @ d
    return _unblocks(torch.floor(rec + 128.5).clamp_(0, 255)).to(torch.int32)


def jpeg_roundtrip(bgr: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG-compress and decompress each image as OpenCV's codec does (module doc).

    bgr: (N, 3, H, W) uint8 (or integer-valued) BGR; quality: (N,) integers in 1..100 (cv2's
    IMWRITE_JPEG_QUALITY). Returns (N, 3, H, W) uint8 on bgr's device."""
    n, c, h, w = bgr.shape
    if c != 3:
        raise ValueError(f"jpeg_roundtrip: expected (N, 3, H, W) BGR, got shape {tuple(bgr.shape)}")
    if n == 0:
        return bgr.to(torch.uint8).clone()
    ph, pw = -h % 16, -w % 16
    x = bgr.to(torch.int32)
    if ph or pw:  # libjpeg expands a partial MCU by repeating the last row and column
        x = F.pad(x.float(), (0, pw, 0, ph), mode="replicate").to(torch.int32)
    y, cb, cr = _rgb_to_ycc(x[:, 0], x[:, 1], x[:, 2])  # (N, H', W') each
    chroma = _downsample_h2v2(torch.cat([cb, cr], 0))  # (2N, H'/2, W'/2)
    tables = quant_tables(quality.to(bgr.device))  # (N, 2, 64)
    y = _code_plane(y, tables[:, 0])
    chroma = _code_plane(chroma, tables[:, 1].repeat(2, 1))
    ch, cw = (h + 1) // 2, (w + 1) // 2  # the decoder upsamples the component's own size, then crops
    chroma = _upsample_h2v2_fancy(chroma[:, :ch, :cw])[:, :h, :w]
    out = _ycc_to_bgr(y[:, :h, :w], chroma[:n], chroma[n:])
    return out.to(torch.uint8)
