/* Random-warp fast CPU path (docs/dfl.md §5.3): DFL's remap + warpAffine + flip composed, sampled once.
 *
 * Built at first use by kernels/warp/cpu.py (gcc -O3 -march=native, no OpenMP: Python threads call
 * warp_rows on disjoint row ranges; ctypes releases the GIL). Plain C, no torch headers.
 *
 * Per output pixel (x, y) of sample n (all sizes w x w; the caller handles DFL's rw resizes):
 *   q = ((X0[n][d][y] + AD[n][d][x]) >> 5) / 32          cv2.warpAffine's fixed-point source
 *                                                          coordinate (flip folded into AD), d = x, y
 *   warp:  m = bilinear(nodes[n], (clamp(q, 0, w-1) + 0.5) / (w/8))   the DFL grid, continuous
 *          s = m                                           (no warp: s = q, bit-exact with cv2)
 *   out[c] = cov(q) * sum_{j,i} wy_j(s.y) wx_i(s.x) src[c][iy+j][ix+i]
 * with Keys-cubic (a = -0.75, taps floor-1 .. floor+2) or bilinear weights, out-of-range taps either
 * zeroed (ZEROS: cv2 BORDER_CONSTANT 0; done by zeroing the tap weight and clamping its index, so the
 * loops have no branches) or clamped (BORDER_REPLICATE), and cov(q) the affine's zero-border coverage
 * sum_taps k(t - q)[0 <= t < w] when the grid warp is composed with a constant-border affine (COVER).
 * For no-warp calls the 1/32-px coordinates are exact, so the result is cv2.warpAffine's to float
 * rounding (OpenCV tabulates the same weights at the same 32 fractions).
 *
 * Rows are processed in blocks of XB pixels: first the coordinates, tap indices and weights of the
 * block (auto-vectorised; -fno-trapping-math lets floorf vectorise), then the taps. Cubic: per pixel
 * and channel the 4x4 taps are four rows of four contiguous floats when the x taps are inside the
 * image; four neighbouring pixels are done together (SSE3, FMA where present), each reducing its rows
 * to a 4-vector, and two levels of hadd give the four sums for one 4-float store, so the horizontal
 * reduction is shared by four outputs (cubic1 is the one-pixel path, used at the borders and on CPUs
 * without SSE3). Bilinear gathers its 4 taps per channel (auto-vectorised gathers).
 * Measured (1 thread, res 256, 8 samples x 3 channels): ~4.9 ms per cubic pass (6.0 with the grid warp;
 * ~1.6 of it the coordinates and weights), cv2.warpAffine ~10.7 ms and cv2.remap ~11.6 ms for the same.
 */
#include <stdint.h>
#include <math.h>

#define XB 128
#define F_CUBIC 1
#define F_ZEROS 2
#define F_COVER 4
#define F_WARP 8

/* Ternary clamps (not fminf/fmaxf, whose NaN rules keep gcc from vectorising). */
static inline float clampf(float v, float lo, float hi) { v = v < lo ? lo : v; return v > hi ? hi : v; }

/* sum_j wy_j * sum_i wx_i * r_j[i] for four rows of four contiguous floats. */
#if defined(__SSE3__)
#include <immintrin.h>
static inline float row4(const float *r0, const float *r1, const float *r2, const float *r3, const float *wx4,
                         float wy0, float wy1, float wy2, float wy3) {
    /* two independent partial sums, then a shuffle reduction (hadd is 3 uops) */
    const __m128 a = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(r0), _mm_set1_ps(wy0)), _mm_mul_ps(_mm_loadu_ps(r1), _mm_set1_ps(wy1)));
    const __m128 b = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(r2), _mm_set1_ps(wy2)), _mm_mul_ps(_mm_loadu_ps(r3), _mm_set1_ps(wy3)));
    __m128 p = _mm_mul_ps(_mm_add_ps(a, b), _mm_load_ps(wx4));
    p = _mm_add_ps(p, _mm_movehl_ps(p, p));
    p = _mm_add_ss(p, _mm_shuffle_ps(p, p, 1));
    return _mm_cvtss_f32(p);
}
#else
static inline float row4(const float *r0, const float *r1, const float *r2, const float *r3, const float *wx4,
                         float wy0, float wy1, float wy2, float wy3) {
    float v = 0.f;
    const float *r[4] = {r0, r1, r2, r3};
    const float wy[4] = {wy0, wy1, wy2, wy3};
    for (int j = 0; j < 4; ++j) v += wy[j] * (wx4[0] * r[j][0] + wx4[1] * r[j][1] + wx4[2] * r[j][2] + wx4[3] * r[j][3]);
    return v;
}
#endif

/* 1 for a tap index p in [0, top], else `keep` (branch-free so the loops vectorise). */
static inline float inside(float p, float top, float keep) {
    const float in = (float)(p >= 0.f) * (float)(p <= top);
    return in + (1.f - in) * keep;
}

/* Source coordinates -> tap offsets and weights along one axis, for a whole block. Keys cubic
 * (a = -0.75, taps floor-1 .. floor+2; PyTorch's / OpenCV's expressions) or linear. An out-of-range tap
 * keeps its weight times `keep` (0: zero border, 1: replicate) and reads the clamped index. */
static inline void cubic_weights(float s, float keep, float top, float *w4, float *f_out) {
    const float A = -0.75f;
    const float f = floorf(s);
    const float t = s - f;
    const float x0 = t + 1.f, x1 = t, x2 = 1.f - t, x3 = 2.f - t;
    w4[0] = (((A * x0 - 5.f * A) * x0 + 8.f * A) * x0 - 4.f * A) * inside(f - 1.f, top, keep);
    w4[1] = (((A + 2.f) * x1 - (A + 3.f)) * x1 * x1 + 1.f) * inside(f, top, keep);
    w4[2] = (((A + 2.f) * x2 - (A + 3.f)) * x2 * x2 + 1.f) * inside(f + 1.f, top, keep);
    w4[3] = (((A * x3 - 5.f * A) * x3 + 8.f * A) * x3 - 4.f * A) * inside(f + 2.f, top, keep);
    *f_out = f;
}

static void taps_cubic(const float *restrict sv, int nb, int w, float keep, float (*restrict wt)[XB],
                       int32_t (*restrict idx)[XB]) {
    const float lo = -4.f, hi = (float)w + 3.f, top = (float)(w - 1);
    for (int k = 0; k < nb; ++k) {
        const float s = clampf(sv[k], lo, hi); /* beyond: every tap out (zeros) or clamped alike */
        float w4[4], f;
        cubic_weights(s, keep, top, w4, &f);
        for (int i = 0; i < 4; ++i) {
            wt[i][k] = w4[i];
            idx[i][k] = (int32_t)clampf(f + (float)(i - 1), 0.f, top);
        }
    }
}

/* The x axis of the cubic sampler: weights packed per pixel (one aligned 4-float load each) and the
 * first tap's unclamped index; clamped indices are only needed at the border (see cubic1). */
static void taps_cubic_x(const float *restrict sv, int nb, int w, float keep, float (*restrict wxa)[4],
                         int32_t *restrict fx0) {
    const float lo = -4.f, hi = (float)w + 3.f, top = (float)(w - 1);
    for (int k = 0; k < nb; ++k) {
        float f;
        cubic_weights(clampf(sv[k], lo, hi), keep, top, wxa[k], &f);
        fx0[k] = (int32_t)f - 1;
    }
}

static void taps_linear(const float *restrict sv, int nb, int w, float keep, float (*restrict wt)[XB],
                        int32_t (*restrict idx)[XB]) {
    const float lo = -4.f, hi = (float)w + 3.f, top = (float)(w - 1);
    for (int k = 0; k < nb; ++k) {
        const float s = clampf(sv[k], lo, hi);
        const float f = floorf(s);
        const float t = s - f;
        const float p0 = f, p1 = f + 1.f;
        wt[0][k] = (1.f - t) * inside(p0, top, keep);
        wt[1][k] = t * inside(p1, top, keep);
        idx[0][k] = (int32_t)clampf(p0, 0.f, top);
        idx[1][k] = (int32_t)clampf(p1, 0.f, top);
    }
}

/* Zero-border coverage along one axis: sum of the kernel weights whose taps fall inside [0, w). */
static void coverage(const float *restrict qv, int nb, int w, int cubic, float *restrict out) {
    float wt[4][XB];
    int32_t idx[4][XB];
    if (cubic) {
        taps_cubic(qv, nb, w, 0.f, wt, idx);
        for (int k = 0; k < nb; ++k) out[k] = wt[0][k] + wt[1][k] + wt[2][k] + wt[3][k];
    } else {
        taps_linear(qv, nb, w, 0.f, wt, idx);
        for (int k = 0; k < nb; ++k) out[k] = wt[0][k] + wt[1][k];
    }
}

/* One output pixel k of a block, all channels: contiguous 4-float rows when its x taps are inside,
 * else clamped column indices with the (possibly zeroed) weights. */
static inline void cubic1(const float *restrict src, float *restrict d, int C, int64_t plane, const int32_t *fx0,
                          int32_t (*ry)[XB], float (*wy)[XB], float (*wxa)[4], const float *cov, int w, int k) {
    const float ck = cov[k];
    const float *wx = wxa[k];
    if (fx0[k] >= 0 && fx0[k] + 3 <= w - 1) {
        const float *r0 = src + ry[0][k] + fx0[k], *r1 = src + ry[1][k] + fx0[k];
        const float *r2 = src + ry[2][k] + fx0[k], *r3 = src + ry[3][k] + fx0[k];
        for (int c = 0; c < C; ++c) {
            const int64_t o = c * plane;
            d[o] = row4(r0 + o, r1 + o, r2 + o, r3 + o, wx, wy[0][k], wy[1][k], wy[2][k], wy[3][k]) * ck;
        }
    } else { /* x taps straddle the border: clamped indices, zeroed weights if ZEROS */
        int32_t cx[4];
        for (int i = 0; i < 4; ++i) cx[i] = fx0[k] + i < 0 ? 0 : (fx0[k] + i > w - 1 ? w - 1 : fx0[k] + i);
        for (int c = 0; c < C; ++c) {
            const float *restrict sp = src + c * plane;
            float v = 0.f;
            for (int j = 0; j < 4; ++j)
                v += wy[j][k] * (wx[0] * sp[ry[j][k] + cx[0]] + wx[1] * sp[ry[j][k] + cx[1]] +
                                 wx[2] * sp[ry[j][k] + cx[2]] + wx[3] * sp[ry[j][k] + cx[3]]);
            d[c * plane] = v * ck;
        }
    }
}

#if defined(__SSE3__)
#if defined(__FMA__)
#define MADD(a, b, c) _mm_fmadd_ps(a, b, c)
#else
#define MADD(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c)
#endif
/* Four neighbouring output pixels k..k+3 whose x taps are all inside, all channels: per pixel and
 * channel the 4x4 taps reduce to a 4-vector (rows weighted by wy, then times wx), and two levels of
 * hadd turn the four pixels' vectors into their four sums, stored with one 4-float store. The
 * horizontal reduction is then shared by four outputs instead of repeated per output. */
static inline void cubic4(const float *restrict src, float *restrict d, int C, int64_t plane, const int32_t *fx0,
                          int32_t (*ry)[XB], float (*wy)[XB], float (*wxa)[4], const float *cov, int k) {
    const float *r[4][4];
    __m128 wyv[4][4], wxv[4];
    for (int p = 0; p < 4; ++p) {
        for (int j = 0; j < 4; ++j) {
            r[p][j] = src + ry[j][k + p] + fx0[p];
            wyv[p][j] = _mm_set1_ps(wy[j][k + p]);
        }
        wxv[p] = _mm_load_ps(wxa[p]);
    }
    const __m128 cv = _mm_loadu_ps(cov + k);
    for (int c = 0; c < C; ++c) {
        const int64_t o = c * plane;
        __m128 s[4];
        for (int p = 0; p < 4; ++p) {
            __m128 a = _mm_mul_ps(_mm_loadu_ps(r[p][0] + o), wyv[p][0]);
            a = MADD(_mm_loadu_ps(r[p][1] + o), wyv[p][1], a);
            a = MADD(_mm_loadu_ps(r[p][2] + o), wyv[p][2], a);
            a = MADD(_mm_loadu_ps(r[p][3] + o), wyv[p][3], a);
            s[p] = _mm_mul_ps(a, wxv[p]);
        }
        const __m128 h = _mm_hadd_ps(_mm_hadd_ps(s[0], s[1]), _mm_hadd_ps(s[2], s[3]));
        _mm_storeu_ps(d + o, _mm_mul_ps(h, cv));
    }
}
#endif

/* One block of output pixels [x0, x0 + nb) of row y, sample n. */
static void block(const float *restrict src, float *restrict dst, int C, int w, int y, int x0, int nb,
                  const int32_t *restrict X0, const int32_t *restrict AD, const float *restrict nodes,
                  int flags) {
    const int cubic = flags & F_CUBIC, zeros = flags & F_ZEROS;
    const int32_t x0q = X0[y], y0q = X0[w + y]; /* row terms for the x and y coordinates */
    const int32_t *restrict adx = AD + x0, *restrict ady = AD + w + x0;

    float qx[XB], qy[XB], sx[XB], sy[XB], cov[XB], covy[XB];
    float wx[2][XB], wy[4][XB]; /* wx: linear only (cubic packs its x weights per pixel) */
    int32_t cx[2][XB], ry[4][XB];

    /* cv2.warpAffine fixed point: arithmetic shift = floor division by 32, then 1/32 px units */
    for (int k = 0; k < nb; ++k) {
        qx[k] = (float)((x0q + adx[k]) >> 5) * (1.f / 32.f);
        qy[k] = (float)((y0q + ady[k]) >> 5) * (1.f / 32.f);
    }
    if (flags & F_WARP) {
        const float *restrict nx = nodes, *restrict ny = nodes + 81;
        const float inv_c8 = 8.f / (float)w, top = (float)(w - 1);
        for (int k = 0; k < nb; ++k) {
            /* the remapped image's replicated edge = the map evaluated at the clamped coordinate */
            const float ux = (clampf(qx[k], 0.f, top) + 0.5f) * inv_c8;
            const float uy = (clampf(qy[k], 0.f, top) + 0.5f) * inv_c8;
            const int iu = ux < 7.f ? (int)ux : 7, iv = uy < 7.f ? (int)uy : 7;
            const float fu = ux - (float)iu, fv = uy - (float)iv;
            const int o = iv * 9 + iu;
            sx[k] = (nx[o] * (1.f - fu) + nx[o + 1] * fu) * (1.f - fv) + (nx[o + 9] * (1.f - fu) + nx[o + 10] * fu) * fv;
            sy[k] = (ny[o] * (1.f - fu) + ny[o + 1] * fu) * (1.f - fv) + (ny[o + 9] * (1.f - fu) + ny[o + 10] * fu) * fv;
        }
    } else {
        for (int k = 0; k < nb; ++k) {
            sx[k] = qx[k];
            sy[k] = qy[k];
        }
    }
    if (flags & F_COVER) {
        coverage(qx, nb, w, cubic, cov);
        coverage(qy, nb, w, cubic, covy);
        for (int k = 0; k < nb; ++k) cov[k] *= covy[k];
    }
    const float keep = zeros ? 0.f : 1.f;
    const int64_t plane = (int64_t)w * w;
    if (cubic) {
        int32_t fx0[XB]; /* first x tap, unclamped: the 4 x taps are contiguous when all are inside */
        _Alignas(16) float wxa[XB][4]; /* x weights per pixel, packed for one aligned 4-float load */
        taps_cubic_x(sx, nb, w, keep, wxa, fx0);
        taps_cubic(sy, nb, w, keep, wy, ry);
        for (int j = 0; j < 4; ++j)
            for (int k = 0; k < nb; ++k) ry[j][k] *= w; /* row index -> offset (int32: w*w < 2^31) */
        if (!(flags & F_COVER))
            for (int k = 0; k < nb; ++k) cov[k] = 1.f;
        float *restrict drow = dst + (int64_t)y * w + x0;
        int k = 0;
#if defined(__SSE3__)
        for (; k + 4 <= nb; k += 4) {
            int all_in = 1;
            for (int j = 0; j < 4; ++j) all_in &= (fx0[k + j] >= 0) & (fx0[k + j] + 3 <= w - 1);
            if (all_in) {
                cubic4(src, drow + k, C, plane, fx0 + k, ry, wy, wxa + k, cov, k);
                continue;
            }
            for (int j = 0; j < 4; ++j) cubic1(src, drow + k + j, C, plane, fx0, ry, wy, wxa, cov, w, k + j);
        }
#endif
        for (; k < nb; ++k) cubic1(src, drow + k, C, plane, fx0, ry, wy, wxa, cov, w, k);
    } else {
        taps_linear(sx, nb, w, keep, wx, cx);
        taps_linear(sy, nb, w, keep, wy, ry);
        for (int j = 0; j < 2; ++j)
            for (int k = 0; k < nb; ++k) ry[j][k] *= w;
        for (int c = 0; c < C; ++c) {
            const float *restrict sp = src + c * plane;
            float *restrict d = dst + c * plane + (int64_t)y * w + x0;
            for (int k = 0; k < nb; ++k) {
                const int32_t o0 = ry[0][k], o1 = ry[1][k], c0 = cx[0][k], c1 = cx[1][k];
                const float a = wx[0][k] * sp[o0 + c0] + wx[1][k] * sp[o0 + c1];
                const float b = wx[0][k] * sp[o1 + c0] + wx[1][k] * sp[o1 + c1];
                d[k] = wy[0][k] * a + wy[1][k] * b;
            }
            if (flags & F_COVER)
                for (int k = 0; k < nb; ++k) d[k] *= cov[k];
        }
    }
}

/* Rows [y0, y1) of samples [n0, n1). src/dst: (N, C, w, w) float32; X0: (N, 2, w) int32 row terms;
 * AD: (N, 2, w) int32 column terms; nodes: (N, 2, 9, 9) float32 map values in pixels (or NULL). */
int warp_rows(const float *src, float *dst, int C, int w, int n0, int n1, int y0, int y1,
              const int32_t *X0, const int32_t *AD, const float *nodes, int flags) {
    if (w <= 0 || C <= 0) return 0;
    if ((flags & F_WARP) && (nodes == 0 || w % 8 != 0)) return -1;
    if (w > 16384) return -2; /* row offsets are int32: w * w must stay below 2^31 */
    const int64_t plane = (int64_t)C * w * w;
    for (int n = n0; n < n1; ++n) {
        const float *s = src + n * plane;
        float *d = dst + n * plane;
        const int32_t *x0n = X0 + (int64_t)n * 2 * w, *adn = AD + (int64_t)n * 2 * w;
        const float *nn = (flags & F_WARP) ? nodes + (int64_t)n * 2 * 81 : 0;
        for (int y = y0; y < y1; ++y)
            for (int x0 = 0; x0 < w; x0 += XB)
                block(s, d, C, w, y, x0, (w - x0) < XB ? (w - x0) : XB, x0n, adn, nn, flags);
    }
    return 0;
}
