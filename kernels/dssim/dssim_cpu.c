/* DSSIM fast CPU path (docs/dfl.md §4.1): separable Gaussian, fp32, one plane (n, c) at a time.
 *
 * Built at first use by kernels/dssim/cpu.py (gcc -O3 -march=native, no OpenMP: Python threads call
 * dssim_planes on disjoint plane ranges; ctypes releases the GIL). Plain C, no torch headers, so the
 * build takes about a second.
 *
 * Per plane and window (fs, 1-D weights g, weight w), with H' = H-fs+1, W' = W-fs+1:
 *   forward   h_m[r]  = sum_k g[k] m[r][j+k]           for the moments m in {x, y, x*y, x^2+y^2}
 *             mu_m[i] = sum_k g[k] h_m[i+k]             (VALID separable filter = DFL's 2-D window)
 *             map     = lum * cs; out += w * (1 - mean(map)) / 2
 *   gradient  (only when asked) P_m = d map / d mu_m, pointwise; the transpose of the VALID filter is a
 *             full correlation with the flipped window, and the window is symmetric, so
 *             G_m = sum_k g[k] Ppad_m[r+k] (rows) then the same along columns on zero-padded rows;
 *             J2 += -w/(2 H'W') * (G_b + 2 y G_s + x G_xy),  J1 likewise with a <-> b, x <-> y.
 * J1/J2 are d out[n,c] / d img (the "unit" Jacobian of each plane): backward is grad_out[n,c] * J.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define JB 64 /* output block kept in registers: 4 zmm / 8 ymm accumulators */

/* out[j] = sum_k g[k] * in[k*stride + j], j < n. stride 1: along a row; stride = row length: down columns. */
static void corr(const float *restrict in, ptrdiff_t stride, float *restrict out, int n,
                 const float *restrict g, int fs) {
    int j0 = 0;
    for (; j0 + JB <= n; j0 += JB) {
        float acc[JB];
        for (int jj = 0; jj < JB; ++jj) acc[jj] = 0.f;
        for (int k = 0; k < fs; ++k) {
            const float gk = g[k];
            const float *restrict p = in + (ptrdiff_t)k * stride + j0;
            for (int jj = 0; jj < JB; ++jj) acc[jj] += gk * p[jj];
        }
        for (int jj = 0; jj < JB; ++jj) out[j0 + jj] = acc[jj];
    }
    if (j0 < n) {
        const int rem = n - j0;
        float acc[JB];
        for (int jj = 0; jj < rem; ++jj) acc[jj] = 0.f;
        for (int k = 0; k < fs; ++k) {
            const float gk = g[k];
            const float *restrict p = in + (ptrdiff_t)k * stride + j0;
            for (int jj = 0; jj < rem; ++jj) acc[jj] += gk * p[jj];
        }
        for (int jj = 0; jj < rem; ++jj) out[j0 + jj] = acc[jj];
    }
}

/* Sum of a row in double: 8 independent lanes so the compiler can vectorise without reassociating. */
static double row_sum(const float *restrict v, int n) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; ++l) lane[l] += (double)v[j + l];
    double s = 0.0;
    for (; j < n; ++j) s += (double)v[j];
    for (int l = 0; l < 8; ++l) s += lane[l];
    return s;
}

/* One window on one plane. Returns sum of the SSIM map (double); adds the gradient into J1/J2 if non-NULL.
 * scratch holds at least scratch_floats(H, W, fs) floats. */
static double plane_window(const float *restrict x, const float *restrict y, int H, int W, int fs,
                           const float *restrict g, float c1, float c2, float jscale,
                           float *restrict J1, float *restrict J2, float *restrict scratch) {
    const int Hp = H - fs + 1, Wp = W - fs + 1, pad = fs - 1;
    const ptrdiff_t hsz = (ptrdiff_t)H * Wp;            /* one horizontally filtered moment map */
    const ptrdiff_t psz = (ptrdiff_t)(Hp + 2 * pad) * Wp; /* one zero-padded partial map */
    const int grad = (J1 != NULL) || (J2 != NULL);
    float *h = scratch;                  /* 4 * hsz: hx, hy, hxy, hs */
    float *P = h + 4 * hsz;              /* 4 * psz: Pa, Pb, Pxy, Ps (rows pad .. pad+Hp-1 used) */
    float *row = P + (grad ? 4 * psz : 0); /* 2 * W: x*y and x^2+y^2 of one input row */
    float *mu = row + 2 * W;             /* 4 * Wp: a, b, sxy, s of one output row */
    float *vpad = mu + 4 * Wp;           /* 4 * (W + 2 pad): transposed-filtered rows, zero padded */
    float *G = vpad + 4 * (W + 2 * pad); /* 4 * W */
    float *smap = G + 4 * W;             /* Wp: one row of the SSIM map */

    /* forward, horizontal: the product moments are formed one row at a time (window independent,
       but cheap next to the filter: 2 multiplies against 2*fs multiply-adds). */
    for (int r = 0; r < H; ++r) {
        const float *xr = x + (ptrdiff_t)r * W, *yr = y + (ptrdiff_t)r * W;
        for (int c = 0; c < W; ++c) {
            row[c] = xr[c] * yr[c];
            row[W + c] = xr[c] * xr[c] + yr[c] * yr[c];
        }
        corr(xr, 1, h + 0 * hsz + (ptrdiff_t)r * Wp, Wp, g, fs);
        corr(yr, 1, h + 1 * hsz + (ptrdiff_t)r * Wp, Wp, g, fs);
        corr(row, 1, h + 2 * hsz + (ptrdiff_t)r * Wp, Wp, g, fs);
        corr(row + W, 1, h + 3 * hsz + (ptrdiff_t)r * Wp, Wp, g, fs);
    }
    if (grad) {
        for (int m = 0; m < 4; ++m) {
            memset(P + m * psz, 0, sizeof(float) * (size_t)pad * Wp);
            memset(P + m * psz + (ptrdiff_t)(pad + Hp) * Wp, 0, sizeof(float) * (size_t)pad * Wp);
        }
    }
    /* forward, vertical + pointwise SSIM (same operation order as the reference, §4.1 steps 5-7). */
    double total = 0.0;
    float *a = mu, *b = mu + Wp, *sxy = mu + 2 * Wp, *ss = mu + 3 * Wp;
    for (int i = 0; i < Hp; ++i) {
        for (int m = 0; m < 4; ++m) corr(h + m * hsz + (ptrdiff_t)i * Wp, Wp, mu + m * Wp, Wp, g, fs);
        if (!grad) {
            for (int j = 0; j < Wp; ++j) {
                const float num0 = a[j] * b[j] * 2.f, den0 = a[j] * a[j] + b[j] * b[j];
                const float lum = (num0 + c1) / (den0 + c1);
                const float cs = (sxy[j] * 2.f - num0 + c2) / (ss[j] - den0 + c2);
                smap[j] = lum * cs;
            }
            total += row_sum(smap, Wp);
        } else {
            float *Pa = P + 0 * psz + (ptrdiff_t)(pad + i) * Wp, *Pb = P + 1 * psz + (ptrdiff_t)(pad + i) * Wp;
            float *Pxy = P + 2 * psz + (ptrdiff_t)(pad + i) * Wp, *Ps = P + 3 * psz + (ptrdiff_t)(pad + i) * Wp;
            for (int j = 0; j < Wp; ++j) {
                const float aj = a[j], bj = b[j];
                const float num0 = aj * bj * 2.f, den0 = aj * aj + bj * bj;
                const float d0 = den0 + c1, q = ss[j] - den0 + c2;
                const float lum = (num0 + c1) / d0;
                const float cs = (sxy[j] * 2.f - num0 + c2) / q;
                smap[j] = lum * cs;
                const float id0 = 1.f / d0, iq = 1.f / q;
                /* d lum/da = (2b - 2a lum)/d0, d cs/da = (2a cs - 2b)/q, d cs/dsxy = 2/q, d cs/ds = -cs/q */
                Pa[j] = cs * (2.f * bj - 2.f * aj * lum) * id0 + lum * (2.f * aj * cs - 2.f * bj) * iq;
                Pb[j] = cs * (2.f * aj - 2.f * bj * lum) * id0 + lum * (2.f * bj * cs - 2.f * aj) * iq;
                Pxy[j] = 2.f * lum * iq;
                Ps[j] = -lum * cs * iq;
            }
            total += row_sum(smap, Wp);
        }
    }
    if (!grad) return total;

    /* gradient: transposed filter = full correlation (window symmetric), vertical then horizontal. */
    for (int m = 0; m < 4; ++m) {
        memset(vpad + m * (W + 2 * pad), 0, sizeof(float) * (size_t)pad);
        memset(vpad + m * (W + 2 * pad) + pad + Wp, 0, sizeof(float) * (size_t)pad);
    }
    const int need_a = J1 != NULL, need_b = J2 != NULL;
    for (int r = 0; r < H; ++r) {
        for (int m = 0; m < 4; ++m) {
            if ((m == 0 && !need_a) || (m == 1 && !need_b)) continue;
            float *vr = vpad + m * (W + 2 * pad);
            corr(P + m * psz + (ptrdiff_t)r * Wp, Wp, vr + pad, Wp, g, fs);
            corr(vr, 1, G + m * W, W, g, fs);
        }
        const float *xr = x + (ptrdiff_t)r * W, *yr = y + (ptrdiff_t)r * W;
        const float *Ga = G, *Gb = G + W, *Gxy = G + 2 * W, *Gs = G + 3 * W;
        if (need_b) {
            float *jr = J2 + (ptrdiff_t)r * W;
            for (int c = 0; c < W; ++c) jr[c] += jscale * (Gb[c] + 2.f * yr[c] * Gs[c] + xr[c] * Gxy[c]);
        }
        if (need_a) {
            float *jr = J1 + (ptrdiff_t)r * W;
            for (int c = 0; c < W; ++c) jr[c] += jscale * (Ga[c] + 2.f * xr[c] * Gs[c] + yr[c] * Gxy[c]);
        }
    }
    return total;
}

int64_t dssim_scratch_floats(int H, int W, int fs) {
    const int Hp = H - fs + 1, Wp = W - fs + 1, pad = fs - 1;
    return 4 * (int64_t)H * Wp + 4 * (int64_t)(Hp + 2 * pad) * Wp + 2 * (int64_t)W + 4 * (int64_t)Wp
           + 4 * (int64_t)(W + 2 * pad) + 4 * (int64_t)W + (int64_t)Wp + 64;
}

/* Planes [0, nplanes) of x, y (each H*W floats, contiguous). For each plane p:
 *   out[p] = sum_w weights[w] * (1 - mean(ssim_map_w)) / 2
 *   J1[p], J2[p] (if non-NULL, zero-initialised by the caller) += d out[p] / d x, d y.
 * windows: nwin sizes in fs[], their 1-D weights concatenated in g[]. Returns 0, or -1 if malloc failed. */
int dssim_planes(const float *x, const float *y, int64_t nplanes, int H, int W, int nwin,
                 const int *fs, const float *g, const double *weights, float c1, float c2,
                 float *out, float *J1, float *J2) {
    int64_t need = 0;
    for (int w = 0; w < nwin; ++w) {
        const int64_t s = dssim_scratch_floats(H, W, fs[w]);
        if (s > need) need = s;
    }
    float *scratch = (float *)malloc(sizeof(float) * (size_t)need);
    if (!scratch) return -1;
    const ptrdiff_t plane = (ptrdiff_t)H * W;
    for (int64_t p = 0; p < nplanes; ++p) {
        double acc = 0.0;
        const float *gw = g;
        for (int w = 0; w < nwin; ++w) {
            const int f = fs[w];
            const double n = (double)(H - f + 1) * (double)(W - f + 1);
            const float jscale = (float)(-weights[w] / (2.0 * n));
            const double s = plane_window(x + p * plane, y + p * plane, H, W, f, gw, c1, c2, jscale,
                                          J1 ? J1 + p * plane : NULL, J2 ? J2 + p * plane : NULL, scratch);
            acc += weights[w] * (1.0 - s / n) / 2.0;
            gw += f;
        }
        out[p] = (float)acc;
    }
    free(scratch);
    return 0;
}
