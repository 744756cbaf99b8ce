/* moekit kernels: MLA attention of one query token for up to 16 heads (kern.h), SIMD forms.
 *
 * In MLA every head attends over the same latent cache rows, so the heads go in the lanes of a
 * vector (16 floats: one zmm, or two ymm on AVX2): a cache element is loaded once, broadcast, and
 * multiplied into all heads' queries at once. Scores: 8 keys per pass, 8 accumulators, the
 * queries transposed once into (W, 16) so one load serves the 8 keys. Values: 8 heads × 32
 * columns per pass (16 accumulators), the passes of one 32-column strip back to back so the
 * strip is read from memory once and from L2 for the other head group. Every
 * (head, key) score and every (head, column) output is the same fma chain as in the ref, in the
 * same order, and expf is the same scalar function: results equal moe_kern_mla_attn_ref bit for
 * bit. */
#include <math.h>

#include "kern/kern.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Lane-parallel pieces shared by both forms, written once over a 16-float "vector" type V with
 * the operations LOAD, STORE, SET1, ZERO, FMA(a, b, c) = a·b + c, MUL. The scratch holds the
 * transposed queries qt (W, 16) and then the scores / weights s (n, 16). */
#define MLA_SCORES /* keys [lo, hi) */                                                                                 \
    const float *qt = scratch;                                                                                         \
    float *s = scratch + 16 * W;                                                                                       \
    const V vs = SET1(scale);                                                                                          \
    int64_t k = lo;                                                                                                    \
    for (; k + 8 <= hi; k += 8) { /* 8 keys: 8 independent chains over w */                                            \
        const float *c0 = cache + k * W;                                                                               \
        V a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO(), a4 = ZERO(), a5 = ZERO(), a6 = ZERO(), a7 = ZERO();      \
        for (int64_t w = 0; w < W; w++) {                                                                              \
            const V qv = LOAD(qt + 16 * w);                                                                            \
            a0 = FMA(SET1(c0[w]), qv, a0);                                                                             \
            a1 = FMA(SET1(c0[W + w]), qv, a1);                                                                         \
            a2 = FMA(SET1(c0[2 * W + w]), qv, a2);                                                                     \
            a3 = FMA(SET1(c0[3 * W + w]), qv, a3);                                                                     \
            a4 = FMA(SET1(c0[4 * W + w]), qv, a4);                                                                     \
            a5 = FMA(SET1(c0[5 * W + w]), qv, a5);                                                                     \
            a6 = FMA(SET1(c0[6 * W + w]), qv, a6);                                                                     \
            a7 = FMA(SET1(c0[7 * W + w]), qv, a7);                                                                     \
        }                                                                                                              \
        STORE(s + 16 * k, MUL(a0, vs));                                                                                \
        STORE(s + 16 * (k + 1), MUL(a1, vs));                                                                          \
        STORE(s + 16 * (k + 2), MUL(a2, vs));                                                                          \
        STORE(s + 16 * (k + 3), MUL(a3, vs));                                                                          \
        STORE(s + 16 * (k + 4), MUL(a4, vs));                                                                          \
        STORE(s + 16 * (k + 5), MUL(a5, vs));                                                                          \
        STORE(s + 16 * (k + 6), MUL(a6, vs));                                                                          \
        STORE(s + 16 * (k + 7), MUL(a7, vs));                                                                          \
    }                                                                                                                  \
    for (; k < hi; k++) {                                                                                              \
        V a = ZERO();                                                                                                  \
        for (int64_t w = 0; w < W; w++) a = FMA(SET1(cache[k * W + w]), LOAD(qt + 16 * w), a);                        \
        STORE(s + 16 * k, MUL(a, vs));                                                                                 \
    }

#define MLA_VALUES /* columns [lo, hi) of u_h = Σ_k p_kh · cache[k]: 32 columns × 8 heads per pass */            \
    const float *s = scratch + 16 * W;                                                                                 \
    int64_t c = lo;                                                                                                    \
    for (; c + 2 * VL <= hi; c += 2 * VL) /* a 32-column strip of the cache stays in L2 for every head group */         \
        for (int hg = 0; hg < hn; hg += 8) {                                                                           \
            const int nh = hn - hg < 8 ? hn - hg : 8;                                                                  \
            V acc[8][2]; /* unrolled, so the 16 sums stay in registers (GCC kept the array in memory) */               \
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = ZERO();                        \
            for (int64_t kk = 0; kk < n; kk++) {                                                                       \
                const float *row = cache + kk * W + c;                                                                 \
                const V v0 = LOAD(row), v1 = LOAD(row + VL);                                                           \
                _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                                  \
                    const V p = SET1(s[16 * kk + hg + i]);                                                             \
                    acc[i][0] = FMA(p, v0, acc[i][0]);                                                                 \
                    acc[i][1] = FMA(p, v1, acc[i][1]);                                                                 \
                }                                                                                                      \
            }                                                                                                          \
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                                      \
                if (i >= nh) break;                                                                                    \
                STORE(u + (hg + i) * ldu + c, acc[i][0]);                                                              \
                STORE(u + (hg + i) * ldu + c + VL, acc[i][1]);                                                         \
            }                                                                                                          \
        }                                                                                                              \
    for (; c < hi; c++) /* columns past the last full strip */                                                         \
        for (int h = 0; h < hn; h++) {                                                                                 \
            float acc = 0.0f;                                                                                          \
            for (int64_t kk = 0; kk < n; kk++) acc = fmaf(s[16 * kk + h], cache[kk * W + c], acc);                     \
            u[h * ldu + c] = acc;                                                                                      \
        }

/* AVX-512: V = __m512 */
#define OPS512                                                                                                         \
    typedef __m512 V;                                                                                                  \
    enum { VL = 16 };
#define LOAD(p) _mm512_loadu_ps(p)
#define STORE(p, v) _mm512_storeu_ps(p, v)
#define SET1(x) _mm512_set1_ps(x)
#define ZERO() _mm512_setzero_ps()
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define MUL(a, b) _mm512_mul_ps(a, b)
__attribute__((target("avx2,fma,avx512f"))) static void scores_avx512(const float *cache, int64_t W, int64_t lo,
                                                                      int64_t hi, float scale, float *scratch) {
    OPS512
    MLA_SCORES
}
__attribute__((target("avx2,fma,avx512f"))) static void values_avx512(int hn, const float *cache, int64_t W, int64_t n,
                                                                      int64_t lo, int64_t hi, const float *scratch,
                                                                      float *u, int64_t ldu) {
    OPS512
    MLA_VALUES
}
#undef LOAD
#undef STORE
#undef SET1
#undef ZERO
#undef FMA
#undef MUL

/* AVX2: V = two __m256 (lanes 0-7, 8-15) */
typedef struct {
    __m256 lo, hi;
} v2x8;

#define A2 __attribute__((target("avx2,fma"), always_inline)) static inline
A2 v2x8 v_load(const float *p) { return (v2x8){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
A2 void v_store(float *p, v2x8 v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
}
A2 v2x8 v_set1(float x) { return (v2x8){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
A2 v2x8 v_fma(v2x8 a, v2x8 b, v2x8 c) { return (v2x8){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
A2 v2x8 v_mul(v2x8 a, v2x8 b) { return (v2x8){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
#undef A2

#define LOAD(p) v_load(p)
#define STORE(p, v) v_store(p, v)
#define SET1(x) v_set1(x)
#define ZERO() v_set1(0.0f)
#define FMA(a, b, c) v_fma(a, b, c)
#define MUL(a, b) v_mul(a, b)
#define OPS2                                                                                                           \
    typedef v2x8 V;                                                                                                    \
    enum { VL = 16 };
__attribute__((target("avx2,fma"))) static void scores_avx2(const float *cache, int64_t W, int64_t lo, int64_t hi,
                                                            float scale, float *scratch) {
    OPS2
    MLA_SCORES
}
__attribute__((target("avx2,fma"))) static void values_avx2(int hn, const float *cache, int64_t W, int64_t n,
                                                            int64_t lo, int64_t hi, const float *scratch, float *u,
                                                            int64_t ldu) {
    OPS2
    MLA_VALUES
}
#undef LOAD
#undef STORE
#undef SET1
#undef ZERO
#undef FMA
#undef MUL
#endif

/* ---- the phases (kern.h); scalar forms, then dispatch ---- */

void moe_kern_mla_prep(const float *q, int64_t ldq, int hn, int64_t W, float *scratch) {
    for (int64_t w = 0; w < W; w++)
        for (int h = 0; h < 16; h++) scratch[w * 16 + h] = h < hn ? q[h * ldq + w] : 0.0f;
}

void moe_kern_mla_max(int hn, int64_t W, int64_t n, const float *scratch, float m[16]) {
    const float *s = scratch + 16 * W;
    for (int h = 0; h < 16; h++) m[h] = -INFINITY;
    for (int64_t k = 0; k < n; k++) /* key by key, v > m ? v : m, as the ref */
        for (int h = 0; h < hn; h++) m[h] = s[16 * k + h] > m[h] ? s[16 * k + h] : m[h];
}

void moe_kern_mla_exp(int hn, int64_t W, int64_t k0, int64_t k1, const float m[16], float *scratch) {
    float *s = scratch + 16 * W;
    for (int64_t k = k0; k < k1; k++)
        for (int h = 0; h < hn; h++) s[16 * k + h] = expf(s[16 * k + h] - m[h]);
}

void moe_kern_mla_norm(int hn, int64_t W, int64_t n, float *scratch) {
    float *s = scratch + 16 * W, inv[16];
    double sum[16] = {0};
    for (int64_t k = 0; k < n; k++) /* in key order, as the ref */
        for (int h = 0; h < hn; h++) sum[h] += s[16 * k + h];
    for (int h = 0; h < 16; h++) inv[h] = h < hn ? (float)(1.0 / sum[h]) : 0.0f;
    for (int64_t k = 0; k < n; k++) /* p = e·inv; lanes past hn hold 0 */
        for (int h = 0; h < 16; h++) s[16 * k + h] = h < hn ? s[16 * k + h] * inv[h] : 0.0f;
}

void moe_kern_mla_softmax(int hn, int64_t W, int64_t n, float *scratch) {
    float m[16];
    moe_kern_mla_max(hn, W, n, scratch, m);
    moe_kern_mla_exp(hn, W, 0, n, m, scratch);
    moe_kern_mla_norm(hn, W, n, scratch);
}

static void scores_scalar(const float *cache, int64_t W, int64_t lo, int64_t hi, float scale, float *scratch) {
    const float *qt = scratch;
    float *s = scratch + 16 * W;
    for (int64_t k = lo; k < hi; k++)
        for (int h = 0; h < 16; h++) {
            float a = 0.0f;
            for (int64_t w = 0; w < W; w++) a = fmaf(cache[k * W + w], qt[16 * w + h], a);
            s[16 * k + h] = a * scale;
        }
}

static void values_scalar(int hn, const float *cache, int64_t W, int64_t n, int64_t lo, int64_t hi,
                          const float *scratch, float *u, int64_t ldu) {
    const float *s = scratch + 16 * W;
    for (int h = 0; h < hn; h++)
        for (int64_t c = lo; c < hi; c++) {
            float a = 0.0f;
            for (int64_t k = 0; k < n; k++) a = fmaf(s[16 * k + h], cache[k * W + c], a);
            u[h * ldu + c] = a;
        }
}

void moe_kern_mla_scores(const float *cache, int64_t W, int64_t k0, int64_t k1, float scale, float *scratch) {
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        scores_avx512(cache, W, k0, k1, scale, scratch);
        return;
    }
    if (moe_kern_level() == 1) {
        scores_avx2(cache, W, k0, k1, scale, scratch);
        return;
    }
#endif
    scores_scalar(cache, W, k0, k1, scale, scratch);
}

void moe_kern_mla_values(int hn, const float *cache, int64_t W, int64_t n, int64_t c0, int64_t c1,
                         const float *scratch, float *u, int64_t ldu) {
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        values_avx512(hn, cache, W, n, c0, c1, scratch, u, ldu);
        return;
    }
    if (moe_kern_level() == 1) {
        values_avx2(hn, cache, W, n, c0, c1, scratch, u, ldu);
        return;
    }
#endif
    values_scalar(hn, cache, W, n, c0, c1, scratch, u, ldu);
}

void moe_kern_mla_attn(const float *q, int64_t ldq, int hn, const float *cache, int64_t W, int64_t n, int64_t Lkv,
                       float scale, float *scratch, float *u, int64_t ldu) {
    if (hn < 1 || hn > 16 || moe_kern_level() == 0) {
        moe_kern_mla_attn_ref(q, ldq, hn, cache, W, n, Lkv, scale, scratch, u, ldu);
        return;
    }
    moe_kern_mla_prep(q, ldq, hn, W, scratch);
    moe_kern_mla_scores(cache, W, 0, n, scale, scratch);
    moe_kern_mla_softmax(hn, W, n, scratch);
    moe_kern_mla_values(hn, cache, W, n, 0, Lkv, scratch, u, ldu);
}
