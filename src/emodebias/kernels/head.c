/* Fused CPU kernels for the SER head on feature-bank rows (see emodebias/fused.py).
 *
 * Built on first use by emodebias.kernels with the system C compiler (GCC or Clang: 8-wide vector
 * extensions, lowered to whatever SIMD the CPU has). float32 arithmetic; the bank holds float16 or
 * float32 rows [N, L, D], read in place (no gathered copy). One thread: grids get their
 * parallelism from worker processes. Shapes:
 *   rows [R, B] (rs = B) or one row list that every run reads [B] (rs = 0)
 *   s [R, L] softmaxed layer weights, h / dh [R, B, D]
 *   w1 [R, D, H], b1 [R, H], w2 [R, H, K], b2 [R, K], mt [R, K, D] = (w1 w2)^T, c [R, K]
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));

static inline v8 ld(const float *p) { return *(const v8u *)p; }
static inline void st(float *p, v8 v) { *(v8u *)p = v; }
static inline v8 splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }
static inline float hsum(v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* Keep values in vector registers: compilers otherwise fold each use into a memory operand, and
 * the loads (not the multiply-adds) then bound the loop. */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define REG(a) __asm__("" : "+x"(a))
#else
#define REG(a) ((void)0)
#endif

/* Prefetch distances of the passes that stream per-run weights from memory: with w, m
 * and v read side by side, the hardware prefetchers fall behind (measured: Adam on cold state
 * 1.4x faster, the chain's w1 pass 1.6x). */
#define ADAM_AHEAD 1536 /* floats */
#define ROWS_AHEAD 6 /* rows of w1 */

static inline float half_to_float(uint16_t h) {
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (!man) {
        bits = sign;
    } else {  /* subnormal: normalise */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

/* Eight features from x + i as float32 (x: float16 when `half`, else float32). */
static inline v8 ldx(const void *x, int half, int64_t i) {
    if (!half) return ld((const float *)x + i);
    const uint16_t *p = (const uint16_t *)x + i;
#ifdef __F16C__
    return (v8)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#else
    v8 v;
    for (int j = 0; j < 8; j++) v[j] = half_to_float(p[j]);
    return v;
#endif
}

static inline float ldx1(const void *x, int half, int64_t i) {
    return half ? half_to_float(((const uint16_t *)x)[i]) : ((const float *)x)[i];
}

static inline const void *row_at(const void *bank, int half, int64_t row, int64_t n) {
    return (const char *)bank + row * n * (half ? 2 : 4);
}

static inline float dotx(const void *x, int half, const float *g, int64_t n) {
    v8 a0 = splat(0.f), a1 = splat(0.f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 += ldx(x, half, i) * ld(g + i);
        a1 += ldx(x, half, i + 8) * ld(g + i + 8);
    }
    for (; i + 8 <= n; i += 8) a0 += ldx(x, half, i) * ld(g + i);
    float s = hsum(a0 + a1);
    for (; i < n; i++) s += ldx1(x, half, i) * g[i];
    return s;
}

static inline float dot(const float *a, const float *b, int64_t n) { return dotx(a, 0, b, n); }

static inline void axpy(float *y, float a, const float *x, int64_t n) {
    v8 av = splat(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) st(y + i, ld(y + i) + av * ld(x + i));
    for (; i < n; i++) y[i] += a * x[i];
}

/* out[k] = <a, m + k * n> for k < K: `a` is read once per block of four rows of m. */
static void dots(const float *a, const float *m, int64_t n, int64_t K, float *out) {
    int64_t k = 0;
    for (; k + 4 <= K; k += 4) {
        const float *m0 = m + k * n, *m1 = m0 + n, *m2 = m1 + n, *m3 = m2 + n;
        v8 a0 = splat(0.f), a1 = splat(0.f), a2 = splat(0.f), a3 = splat(0.f);
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            v8 x = ld(a + i);
            a0 += x * ld(m0 + i);
            a1 += x * ld(m1 + i);
            a2 += x * ld(m2 + i);
            a3 += x * ld(m3 + i);
        }
        float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
        for (; i < n; i++) {
            s0 += a[i] * m0[i];
            s1 += a[i] * m1[i];
            s2 += a[i] * m2[i];
            s3 += a[i] * m3[i];
        }
        out[k] = s0, out[k + 1] = s1, out[k + 2] = s2, out[k + 3] = s3;
    }
    for (; k < K; k++) out[k] = dot(a, m + k * n, n);
}

/* out[k] = <h, mt[k]> + c[k] for k < K: one row's logits through the chain's linear map. */
static inline void logit_row(const float *h, const float *mt, const float *c, int64_t D,
                             int64_t K, float *out) {
    dots(h, mt, D, K, out);
    for (int64_t k = 0; k < K; k++) out[k] += c[k];
}

/* h = sum_l s[l] x[l] for one feature row x [L, D]: 64 columns at a time (eight independent
 * sums, so the adds do not wait on each other). */
static void mix_row(const void *x, int half, const float *s, int64_t L, int64_t D, float *h) {
    int64_t d = 0;
    for (; d + 64 <= D; d += 64) {
        v8 acc[8];
        v8 w = splat(s[0]);
        for (int j = 0; j < 8; j++) acc[j] = w * ldx(x, half, d + 8 * j);
        for (int64_t l = 1; l < L; l++) {
            w = splat(s[l]);
            for (int j = 0; j < 8; j++) acc[j] += w * ldx(x, half, l * D + d + 8 * j);
        }
        for (int j = 0; j < 8; j++) st(h + d + 8 * j, acc[j]);
    }
    for (; d + 8 <= D; d += 8) {
        v8 acc = splat(s[0]) * ldx(x, half, d);
        for (int64_t l = 1; l < L; l++) acc += splat(s[l]) * ldx(x, half, l * D + d);
        st(h + d, acc);
    }
    for (; d < D; d++) {
        float acc = s[0] * ldx1(x, half, d);
        for (int64_t l = 1; l < L; l++) acc += s[l] * ldx1(x, half, l * D + d);
        h[d] = acc;
    }
}

/* Row b of a batch for run r: a bank row read in place, or, when every run reads the same rows
 * (rs = 0), that row converted to float32 once (into buf [L*D], at r = 0) for all runs. */
static const void *batch_row(const void *bank, int half, int64_t n, const int64_t *rows,
                             int64_t r, int64_t b, int64_t rs, float *buf, int *row_half) {
    const void *x = row_at(bank, half, rows[r * rs + b], n);
    *row_half = half;
    if (rs || !half) return x;
    if (r == 0) {
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) st(buf + i, ldx(x, 1, i));
        for (; i < n; i++) buf[i] = ldx1(x, 1, i);
    }
    *row_half = 0;
    return buf;
}

/* h[r, b] = sum_l s[r, l] x[rows[r, b], l], rows outermost (shared rows are read once).
 * buf: L*D floats. */
void mix_forward(const void *bank, int half, int64_t L, int64_t D, const int64_t *rows,
                 int64_t R, int64_t B, int64_t rs, const float *s, float *h, float *buf) {
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < R; r++) {
            int rh;
            const void *x = batch_row(bank, half, L * D, rows, r, b, rs, buf, &rh);
            mix_row(x, rh, s + r * L, L, D, h + (r * B + b) * D);
        }
}

/* logits[r, b, k] = <mt[r, k], mix(x[rows[r, b]], s[r])> + c[r, k] without storing the mix
 * (evaluation: the mixed rows of R runs would not fit any cache). buf: (L + 1) * D floats. */
void mix_logits(const void *bank, int half, int64_t L, int64_t D, const int64_t *rows,
                int64_t R, int64_t B, int64_t rs, const float *s, const float *mt, const float *c,
                int64_t K, float *logits, float *buf) {
    float *h = buf + L * D;
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < R; r++) {
            int rh;
            const void *x = batch_row(bank, half, L * D, rows, r, b, rs, buf, &rh);
            mix_row(x, rh, s + r * L, L, D, h);
            logit_row(h, mt + r * K * D, c + r * K, D, K, logits + (r * B + b) * K);
        }
}

/* ds[r, l] = sum_b <x[rows[r, b], l], g[r, b]>: the layer weights' gradient. */
void mix_backward(const void *bank, int half, int64_t L, int64_t D, const int64_t *rows,
                  int64_t R, int64_t B, int64_t rs, const float *g, float *ds) {
    memset(ds, 0, sizeof(float) * R * L);
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            const char *x = row_at(bank, half, rows[r * rs + b], L * D);
            const float *gb = g + (r * B + b) * D;
            for (int64_t l = 0; l < L; l++)
                ds[r * L + l] += dotx(x + l * D * (half ? 2 : 4), half, gb, D);
        }
}

/* w2t[k, :] = w2[:, k] for one run, rows K..K4-1 zero (K4 = K rounded up to 4). */
static void transpose_w2(const float *w2, int64_t H, int64_t K, float *w2t) {
    int64_t k4 = (K + 3) & ~(int64_t)3;
    memset(w2t + K * H, 0, sizeof(float) * (k4 - K) * H);
    for (int64_t i = 0; i < H; i++)
        for (int64_t k = 0; k < K; k++) w2t[k * H + i] = w2[i * K + k];
}

/* The eight horizontal sums of a[0..7] as one vector (a transpose-and-add tree). */
static inline v8 hsum8(const v8 a[8]) {
    v8 t[4], u[2];
    for (int j = 0; j < 4; j++)
        t[j] = __builtin_shufflevector(a[2 * j], a[2 * j + 1], 0, 8, 2, 10, 4, 12, 6, 14) +
               __builtin_shufflevector(a[2 * j], a[2 * j + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int j = 0; j < 2; j++)
        u[j] = __builtin_shufflevector(t[2 * j], t[2 * j + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(t[2 * j], t[2 * j + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* out[e * 4 + j] = <w[e], t[j]> for rows e = 0, 1 of w (two rows of H) and j < 4. */
static void dots_2x4(const float *w, const float *t, int64_t H, float out[8]) {
    v8 a[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= H; i += 8) {
        v8 x0 = ld(w + i), x1 = ld(w + H + i);
        for (int j = 0; j < 4; j++) {
            v8 y = ld(t + j * H + i);
            REG(y);
            a[j] += x0 * y;
            a[4 + j] += x1 * y;
        }
    }
    v8 s = hsum8(a);
    for (int e = 0; e < 2; e++)
        for (int j = 0; j < 4; j++) {
            float acc = s[e * 4 + j];
            for (int64_t r = i; r < H; r++) acc += w[e * H + r] * t[j * H + r];
            out[e * 4 + j] = acc;
        }
}

/* mt[r] = (w1 w2)^T and c[r] = b1 w2 + b2: the head as one linear map (K rows of D), two rows
 * of w1 against four columns of w2 at a time. work: K4 * H floats. */
void chain_prepare(const float *w1, const float *b1, const float *w2, const float *b2,
                   int64_t R, int64_t D, int64_t H, int64_t K, float *mt, float *c, float *work) {
    float *w2t = work, out[8];
    for (int64_t r = 0; r < R; r++) {
        transpose_w2(w2 + r * H * K, H, K, w2t);
        const float *w = w1 + r * D * H;
        float *m = mt + r * K * D;
        for (int64_t d = 0; d < D; d += 2) {
            int64_t rows = D - d < 2 ? 1 : 2;
            if (d + ROWS_AHEAD + 2 <= D)
                for (int64_t j = 0; j < 2 * H; j += 16)
                    __builtin_prefetch(w + (d + ROWS_AHEAD) * H + j);
            for (int64_t k = 0; k < K; k += 4) {
                if (rows == 2) {
                    dots_2x4(w + d * H, w2t + k * H, H, out);
                } else {
                    for (int j = 0; j < 4; j++) out[j] = dot(w + d * H, w2t + (k + j) * H, H);
                }
                for (int64_t j = 0; j < 4 && k + j < K; j++)
                    for (int64_t e = 0; e < rows; e++) m[(k + j) * D + d + e] = out[e * 4 + j];
            }
        }
        for (int64_t k = 0; k < K; k++)
            c[r * K + k] = b2[r * K + k] + dot(b1 + r * H, w2t + k * H, H);
    }
}

/* logits[r, b, k] = <mt[r, k], h[r, b]> + c[r, k] */
void chain_logits(const float *h, const float *mt, const float *c, int64_t R, int64_t B,
                  int64_t D, int64_t K, float *logits) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++)
            logit_row(h + (r * B + b) * D, mt + r * K * D, c + r * K, D, K,
                      logits + (r * B + b) * K);
}

struct adam_args {
    float *m, *v;
    const float *hp;  /* 1 - beta1, beta2, 1 - beta2, eps, weight decay, lr / bc1, 1 / sqrt(bc2) */
    float *buf;       /* 4 * H */
};

static void weight_pass(float *w, const float *dm, const float *w2t, int64_t D, int64_t H,
                        int64_t K, int64_t K_out, float *dw, float *dw2t,
                        const struct adam_args *adam);

/* dw[e] += sum_k dm[k, d + e] f[k] over K factor rows f [K, H] (rows e < 4): 24 columns at a
 * time (twelve independent sums, three loads of f per four broadcasts), then 8 at a time. */
static void factor_4(const float *dm, int64_t d, int64_t D, const float *f, int64_t H, int64_t K,
                     float *dw) {
    int64_t i = 0;
    for (; i + 24 <= H; i += 24) {
        v8 acc[12] = {0};
        for (int64_t k = 0; k < K; k++) {
            const float *a = dm + k * D + d;
            const float *fk = f + k * H + i;
            v8 t0 = ld(fk), t1 = ld(fk + 8), t2 = ld(fk + 16);
            REG(t0);
            REG(t1);
            REG(t2);
            for (int e = 0; e < 4; e++) {
                v8 ae = splat(a[e]);
                acc[3 * e] += ae * t0;
                acc[3 * e + 1] += ae * t1;
                acc[3 * e + 2] += ae * t2;
            }
        }
        for (int e = 0; e < 4; e++)
            for (int j = 0; j < 3; j++) {
                float *o = dw + e * H + i + 8 * j;
                st(o, ld(o) + acc[3 * e + j]);
            }
    }
    for (; i + 8 <= H; i += 8) {
        v8 acc[4] = {0};
        for (int64_t k = 0; k < K; k++) {
            const float *a = dm + k * D + d;
            v8 t = ld(f + k * H + i);
            for (int e = 0; e < 4; e++) acc[e] += splat(a[e]) * t;
        }
        for (int e = 0; e < 4; e++) st(dw + e * H + i, ld(dw + e * H + i) + acc[e]);
    }
    for (; i < H; i++)
        for (int e = 0; e < 4; e++) {
            float acc = 0.f;
            for (int64_t k = 0; k < K; k++) acc += dm[k * D + d + e] * f[k * H + i];
            dw[e * H + i] += acc;
        }
}

/* For rows d..d+3 of w (4 rows of H): dw[d + e] = sum_k dm[k, d + e] w2t[k] over k < K, and
 * dw2t[k] += sum_e dm[k, d + e] w[d + e] for k < K_out, with dm [K, D]. */
static void outer_4(const float *w, const float *dm, int64_t d, int64_t D, const float *w2t,
                    int64_t H, int64_t K, int64_t K_out, float *dw, float *dw2t) {
    int64_t i = 0;
    for (; i + 8 <= H; i += 8) {
        v8 x0 = ld(w + i), x1 = ld(w + H + i), x2 = ld(w + 2 * H + i), x3 = ld(w + 3 * H + i);
        v8 r0 = splat(0.f), r1 = splat(0.f), r2 = splat(0.f), r3 = splat(0.f);
        for (int64_t k = 0; k < K_out; k++) {
            const float *a = dm + k * D + d;
            v8 a0 = splat(a[0]), a1 = splat(a[1]), a2 = splat(a[2]), a3 = splat(a[3]);
            v8 t = ld(w2t + k * H + i);
            REG(t);
            r0 += a0 * t, r1 += a1 * t, r2 += a2 * t, r3 += a3 * t;
            float *o = dw2t + k * H + i;
            st(o, ld(o) + ((a0 * x0 + a1 * x1) + (a2 * x2 + a3 * x3)));
        }
        st(dw + i, r0), st(dw + H + i, r1), st(dw + 2 * H + i, r2), st(dw + 3 * H + i, r3);
    }
    for (; i < H; i++)
        for (int64_t e = 0; e < 4; e++) {
            float acc = 0.f;
            for (int64_t k = 0; k < K_out; k++) {
                acc += dm[k * D + d + e] * w2t[k * H + i];
                dw2t[k * H + i] += dm[k * D + d + e] * w[e * H + i];
            }
            dw[e * H + i] = acc;
        }
    if (K > K_out) factor_4(dm + K_out * D, d, D, w2t + K_out * H, H, K - K_out, dw);
}

/* The gradients of logits = h (w1 w2) + b1 w2 + b2 from g = dlogits [R, B, K]:
 *   dmt = g^T h,  dh = g mt,  db1 = w2 sum_b g,  db2 = sum_b g, and, unless dw1 is NULL (the
 *   optimiser then takes dw1 = dmt^T w2^T in factored form, see adam_outer),
 *   dw1[d] = sum_k dmt[k, d] w2[:, k],  dw2[:, k] = sum_d dmt[k, d] w1[d] + b1 sum_b g[:, k],
 * dw1 and dw2 from one pass over w1, four rows at a time. work: 2 * K4 * H floats. */
void chain_backward(const float *g, const float *h, const float *mt, const float *w1,
                    const float *b1, const float *w2, int64_t R, int64_t B, int64_t D, int64_t H,
                    int64_t K, float *dh, float *dmt, float *db1, float *db2, float *dw1,
                    float *dw2, float *work) {
    int64_t k4 = (K + 3) & ~(int64_t)3;
    float *w2t = work, *dw2t = w2t + k4 * H;
    for (int64_t r = 0; r < R; r++) {
        const float *gr = g + r * B * K, *hr = h + r * B * D, *m = mt + r * K * D;
        float *gs = db2 + r * K, *dm = dmt + r * K * D;
        memset(dm, 0, sizeof(float) * K * D);
        memset(gs, 0, sizeof(float) * K);
        for (int64_t b = 0; b < B; b++) {
            float *dhb = dh + (r * B + b) * D;
            memset(dhb, 0, sizeof(float) * D);
            for (int64_t k = 0; k < K; k++) {
                float gk = gr[b * K + k];
                gs[k] += gk;
                axpy(dm + k * D, gk, hr + b * D, D);
                axpy(dhb, gk, m + k * D, D);
            }
        }
        transpose_w2(w2 + r * H * K, H, K, w2t);
        const float *b1r = b1 + r * H;
        for (int64_t i = 0; i < H; i++) {
            float acc = 0.f;
            for (int64_t k = 0; k < K; k++) acc += gs[k] * w2t[k * H + i];
            db1[r * H + i] = acc;
        }
        if (!dw1) continue;
        memset(dw2t, 0, sizeof(float) * K * H);
        /* without adam, weight_pass only reads w */
        weight_pass((float *)(w1 + r * D * H), dm, w2t, D, H, K, K, dw1 + r * D * H, dw2t, NULL);
        float *dw2r = dw2 + r * H * K;
        for (int64_t i = 0; i < H; i++)
            for (int64_t k = 0; k < K; k++)
                dw2r[i * K + k] = dw2t[k * H + i] + b1r[i] * gs[k];
    }
}

/* One element of torch's Adam (L2 weight decay); the bias correction of the second moment
 * multiplies by 1 / sqrt(bc2), as torch's fused GPU kernels do. */
static inline void adam_1(float *restrict p, float *restrict m, float *restrict v, float g,
                          const float *hp) {
    float gi = g + hp[4] * *p;
    float mi = *m + hp[0] * (gi - *m);
    float vi = *v * hp[1] + hp[2] * gi * gi;
    *p -= hp[5] * (mi / (sqrtf(vi) * hp[6] + hp[3]));
    *m = mi;
    *v = vi;
}

/* torch's Adam on n contiguous elements with gradient g; hp: 1 - beta1, beta2, 1 - beta2, eps,
 * weight decay, lr / bc1, 1 / sqrt(bc2). Sixteen elements (one cache line) at a time. */
static void adam_rows(float *restrict p, float *restrict m, float *restrict v,
                      const float *restrict g, int64_t n, const float *hyper) {
    float hp[7];  /* a local copy: no store to p, m or v can change it */
    memcpy(hp, hyper, sizeof hp);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __builtin_prefetch(p + i + ADAM_AHEAD, 1);
        __builtin_prefetch(m + i + ADAM_AHEAD, 1);
        __builtin_prefetch(v + i + ADAM_AHEAD, 1);
        for (int j = 0; j < 16; j++) adam_1(p + i + j, m + i + j, v + i + j, g[i + j], hp);
    }
    for (; i < n; i++) adam_1(p + i, m + i, v + i, g[i], hp);
}

/* One pass over w [D, H]: g[d] = sum_k dm[k, d] w2t[k] (k < K) and dw2t[k] += sum_d dm[k, d] w[d]
 * (the old rows; k < K_out), four rows at a time; g goes to dw rows, or, with `adam`, into a
 * 4-row buffer that updates those rows of w and its moments (adam: m, v, hyperparameters,
 * buffer). */
static void weight_pass(float *w, const float *dm, const float *w2t, int64_t D, int64_t H,
                        int64_t K, int64_t K_out, float *dw, float *dw2t,
                        const struct adam_args *adam) {
    int64_t d = 0;
    for (; d < D; d += 4) {
        int64_t rows = D - d < 4 ? D - d : 4;
        float *g = adam ? adam->buf : dw + d * H;
        if (rows == 4) {
            outer_4(w + d * H, dm, d, D, w2t, H, K, K_out, g, dw2t);
        } else {
            for (int64_t e = 0; e < rows; e++) {
                float *row = g + e * H;
                memset(row, 0, sizeof(float) * H);
                for (int64_t k = 0; k < K; k++) {
                    float a = dm[k * D + d + e];
                    axpy(row, a, w2t + k * H, H);
                    if (k < K_out) axpy(dw2t + k * H, a, w + (d + e) * H, H);
                }
            }
        }
        if (adam) adam_rows(w + d * H, adam->m + d * H, adam->v + d * H, g, rows * H, adam->hp);
    }
}

/* Adam on w [R, D, H] from its gradient in factored form, dw = u^T v (+ wd w) with u [R, N, D]
 * and v [R, N, H], for the runs where active[r]: step counts t[r] += 1, then one pass over w
 * that also returns out[r, k] = sum_d u[r, k, d] w_old[r, d] for the first N_out rows of u
 * (out [R, N_out, H], zeros on entry: accumulated; a linear chain's second weight gradient,
 * transposed). lr_etc: lr, beta1, beta2, eps, weight decay. work: 4 * H floats. */
void adam_outer(float *w, float *m, float *v, float *t, const float *u, const float *vt,
                const uint8_t *active, int64_t R, int64_t D, int64_t H, int64_t N, int64_t N_out,
                const double *lr_etc, float *out, float *work) {
    double lr = lr_etc[0], beta1 = lr_etc[1], beta2 = lr_etc[2];
    for (int64_t r = 0; r < R; r++) {
        if (!active[r]) continue;
        t[r] += 1.f;
        double bc1 = 1.0 - pow(beta1, t[r]), bc2 = 1.0 - pow(beta2, t[r]);
        float hp[7] = {(float)(1.0 - beta1), (float)beta2, (float)(1.0 - beta2),
                       (float)lr_etc[3], (float)lr_etc[4], (float)(lr / bc1),
                       (float)(1.0 / sqrt(bc2))};
        struct adam_args a = {m + r * D * H, v + r * D * H, hp, work};
        float *o = N_out ? out + r * N_out * H : NULL;
        weight_pass(w + r * D * H, u + r * N * D, vt + r * N * H, D, H, N, N_out, NULL, o, &a);
    }
}
