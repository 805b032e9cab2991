/* DFL's optimizer updates (docs/dfl.md §3.6), one fused pass over memory per parameter tensor.
 *
 * Built at first use by kernels/dfl_update/cpu.py (gcc -O3 -march=native, no OpenMP: Python threads
 * call dfl_update on disjoint element ranges; ctypes releases the GIL). Plain C, no torch headers.
 *
 * Per element, with g = grad * gscale (gscale: DFL's clipnorm factor, 1 when off):
 *   RMSprop    a <- rho*a + (1-rho)*g^2                      p <- p - lr * g / (sqrt(a) + eps)
 *   AdaBelief  m <- b1*m + (1-b1)*g;  s <- b2*s + (1-b2)*(g-m)^2   p <- p - lr * m / (sqrt(s) + eps)
 * The same operations in the same order as the torch._foreach_* path of engine/optim/dfl.py, so the
 * results agree to float32 rounding (the compiler may contract a*b+c into an FMA). The foreach path reads
 * and writes every array 8-9 times per step; this reads p, g and the moments once and writes them once.
 */
#include <math.h>
#include <stdint.h>

#define K_RMSPROP 0
#define K_ADABELIEF 1

static void rmsprop(float *restrict p, const float *restrict g, float *restrict a, int64_t n, float lr, float gs,
                    float eps, float rho) {
    const float c = 1.f - rho;
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * gs;
        const float ai = a[i] * rho + c * gi * gi;
        a[i] = ai;
        p[i] = p[i] - lr * gi / (sqrtf(ai) + eps);
    }
}

static void adabelief(float *restrict p, const float *restrict g, float *restrict m, float *restrict s, int64_t n,
                      float lr, float gs, float eps, float b1, float b2) {
    const float c1 = 1.f - b1, c2 = 1.f - b2;
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * gs;
        const float mi = m[i] * b1 + c1 * gi;
        const float d = gi - mi;
        const float si = s[i] * b2 + c2 * d * d;
        m[i] = mi;
        s[i] = si;
        p[i] = p[i] - lr * mi / (sqrtf(si) + eps);
    }
}

/* Elements [lo, hi) of the concatenation of k tensors (sizes n[t]). hp = {lr, gscale, eps, rho or b1, b2}.
 * s2 is unused (may be NULL) for RMSprop. Returns 0, or -1 for an unknown kind. */
int dfl_update(int kind, int k, float **p, float **g, float **s1, float **s2, const int64_t *n, int64_t lo,
               int64_t hi, const float *hp) {
    if (kind != K_RMSPROP && kind != K_ADABELIEF) return -1;
    int64_t off = 0;
    for (int t = 0; t < k && off < hi; off += n[t], ++t) {
        const int64_t a = lo > off ? lo - off : 0;
        const int64_t b = hi < off + n[t] ? hi - off : n[t];
        if (b <= a) continue;
        if (kind == K_RMSPROP)
            rmsprop(p[t] + a, g[t] + a, s1[t] + a, b - a, hp[0], hp[1], hp[2], hp[3]);
        else
            adabelief(p[t] + a, g[t] + a, s1[t] + a, s2[t] + a, b - a, hp[0], hp[1], hp[2], hp[3], hp[4]);
    }
    return 0;
}
