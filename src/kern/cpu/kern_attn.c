/* moekit kernels: MLA attention of one query token for up to 16 heads (kern.h), SIMD forms.
 *
 * In MLA every head attends over the same latent cache rows, so the heads go in the lanes of a
 * vector (16 floats: one zmm, or two ymm on AVX2): a cache element is loaded once, broadcast, and
 * multiplied into all heads' queries at once. Scores: 8 keys per pass, 8 accumulators, the
 * queries transposed once into (W, 16) so one load serves the 8 keys. Values: 8 heads × 32
 * columns per pass (16 accumulators), the passes of one 32-column strip back to back so the
 * strip is read from memory once and from L2 for the other head group. Every
 * (head, key) score and every (head, column) output is the same fma chain as in the ref, in the
 * same order, and the exponentials are core/vexp.h's, whose vector forms give the scalar's bits:
 * results equal moe_kern_mla_attn_ref bit for bit. */
#include <math.h>

#include "core/vexp.h"
#include "kern/kern.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Lane-parallel pieces shared by both forms, written once over a 16-float "vector" type V with
 * the operations LOAD, STORE, SET1, ZERO, FMA(a, b, c) = a·b + c, MUL. The scratch holds the
 * transposed queries qt (W, 16) and then the scores / weights s (n, 16). */
/* one key's scores */
#define MLA_SCORE1(k)                                                                                                  \
    do {                                                                                                               \
        const float *c1_ = moe_kv_row(cache, ldc, bs, (k));                                                            \
        V a = ZERO();                                                                                                  \
        for (int64_t w = 0; w < W; w++) a = FMA(SET1(c1_[w]), LOAD(qt + 16 * w), a);                                   \
        STORE(s + 16 * (k), MUL(a, vs));                                                                               \
    } while (0)
#define MLA_SCORES /* keys [lo, hi) */                                                                                 \
    const float *qt = scratch;                                                                                         \
    float *s = scratch + 16 * W;                                                                                       \
    const V vs = SET1(scale);                                                                                          \
    int64_t k = lo;                                                                                                    \
    while (k + 8 <= hi) {                                                                                              \
        if (k % MOE_KV_BLOCK > MOE_KV_BLOCK - 8) { /* 8 keys across two blocks (lo not a multiple of 8): one key */     \
            MLA_SCORE1(k);                                                                                             \
            k++;                                                                                                       \
            continue;                                                                                                  \
        }                                                                                                              \
        /* 8 keys of one block: 8 independent chains over w; the next 8 keys' rows prefetched, a line       \
         * each per 16 columns */                                                                                      \
        const float *c0 = moe_kv_row(cache, ldc, bs, k), *pf = moe_kv_row(cache, ldc, bs, k + 8);                     \
        V a0 = ZERO(), a1 = ZERO(), a2 = ZERO(), a3 = ZERO(), a4 = ZERO(), a5 = ZERO(), a6 = ZERO(), a7 = ZERO();      \
        for (int64_t w = 0; w < W; w++) {                                                                              \
            if (!(w & 15) && k + 16 <= hi)                                                                             \
                for (int r = 0; r < 8; r++) PREFETCH(pf + r * ldc + w);                                                \
            const V qv = LOAD(qt + 16 * w);                                                                            \
            a0 = FMA(SET1(c0[w]), qv, a0);                                                                             \
            a1 = FMA(SET1(c0[ldc + w]), qv, a1);                                                                       \
            a2 = FMA(SET1(c0[2 * ldc + w]), qv, a2);                                                                   \
            a3 = FMA(SET1(c0[3 * ldc + w]), qv, a3);                                                                   \
            a4 = FMA(SET1(c0[4 * ldc + w]), qv, a4);                                                                   \
            a5 = FMA(SET1(c0[5 * ldc + w]), qv, a5);                                                                   \
            a6 = FMA(SET1(c0[6 * ldc + w]), qv, a6);                                                                   \
            a7 = FMA(SET1(c0[7 * ldc + w]), qv, a7);                                                                   \
        }                                                                                                              \
        STORE(s + 16 * k, MUL(a0, vs));                                                                                \
        STORE(s + 16 * (k + 1), MUL(a1, vs));                                                                          \
        STORE(s + 16 * (k + 2), MUL(a2, vs));                                                                          \
        STORE(s + 16 * (k + 3), MUL(a3, vs));                                                                          \
        STORE(s + 16 * (k + 4), MUL(a4, vs));                                                                          \
        STORE(s + 16 * (k + 5), MUL(a5, vs));                                                                          \
        STORE(s + 16 * (k + 6), MUL(a6, vs));                                                                          \
        STORE(s + 16 * (k + 7), MUL(a7, vs));                                                                          \
        k += 8;                                                                                                        \
    }                                                                                                                  \
    for (; k < hi; k++) MLA_SCORE1(k);

/* columns [lo, hi) of u_h = Σ_k p_kh · cache[k]: the keys in chunks of MLA_KC rows (in order), each
 * chunk run over every 32-column strip and group of 8 heads with the 16 sums loaded from u and
 * stored back, so every cache row is read once, front to back, while its chunk is in L2 (a strip
 * at a time over all keys read each row 16 times in 128-byte pieces, 2.3 KB apart); each
 * (head, column) is still one fma chain in key order. */
#define MLA_KC MOE_KV_BLOCK
#define MLA_VALUES                                                                                                     \
    const float *s = scratch + 16 * W;                                                                                 \
    const int64_t cfull = lo + (hi - lo) / (2 * VL) * (2 * VL);                                                        \
    for (int h = 0; h < hn; h++)                                                                                       \
        for (int64_t c = lo; c < cfull; c++) u[h * ldu + c] = 0.0f;                                                    \
    for (int64_t k0 = 0; k0 < n; k0 += MLA_KC) {                                                                       \
        const int64_t k1 = n - k0 < MLA_KC ? n : k0 + MLA_KC;                                                          \
        const float *blk = moe_kv_row(cache, ldc, bs, k0); /* a chunk is one block of rows */                          \
        for (int64_t c = lo; c < cfull; c += 2 * VL)                                                                   \
            for (int hg = 0; hg < hn; hg += 8) {                                                                       \
                const int nh = hn - hg < 8 ? hn - hg : 8;                                                              \
                V acc[8][2]; /* unrolled, so the 16 sums stay in registers (GCC kept the array in memory) */           \
                _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                                  \
                    acc[i][0] = i < nh ? LOAD(u + (hg + i) * ldu + c) : ZERO();                                        \
                    acc[i][1] = i < nh ? LOAD(u + (hg + i) * ldu + c + VL) : ZERO();                                   \
                }                                                                                                      \
                for (int64_t kk = k0; kk < k1; kk++) {                                                                 \
                    const float *row = blk + (kk - k0) * ldc + c;                                                      \
                    if (!hg && kk + MLA_KC < n) { /* this strip of the next chunk's row */                              \
                        PREFETCH(row + bs);                                                                            \
                        PREFETCH(row + bs + VL);                                                                       \
                    }                                                                                                  \
                    const V v0 = LOAD(row), v1 = LOAD(row + VL);                                                       \
                    _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                              \
                        const V p = SET1(s[16 * kk + hg + i]);                                                         \
                        acc[i][0] = FMA(p, v0, acc[i][0]);                                                             \
                        acc[i][1] = FMA(p, v1, acc[i][1]);                                                             \
                    }                                                                                                  \
                }                                                                                                      \
                _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {                                                  \
                    if (i >= nh) break;                                                                                \
                    STORE(u + (hg + i) * ldu + c, acc[i][0]);                                                          \
                    STORE(u + (hg + i) * ldu + c + VL, acc[i][1]);                                                     \
                }                                                                                                      \
            }                                                                                                          \
    }                                                                                                                  \
    for (int64_t c = cfull; c < hi; c++) /* columns past the last full strip */                                        \
        for (int h = 0; h < hn; h++) {                                                                                 \
            float acc = 0.0f;                                                                                          \
            for (int64_t kk = 0; kk < n; kk++) acc = fmaf(s[16 * kk + h], moe_kv_row(cache, ldc, bs, kk)[c], acc);      \
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
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
__attribute__((target("avx2,fma,avx512f"))) static void scores_avx512(const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t lo,
                                                                      int64_t hi, float scale, float *scratch) {
    OPS512
    MLA_SCORES
}
__attribute__((target("avx2,fma,avx512f"))) static void values_avx512(int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n,
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
#undef PREFETCH

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
#define PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
#define OPS2                                                                                                           \
    typedef v2x8 V;                                                                                                    \
    enum { VL = 16 };
__attribute__((target("avx2,fma"))) static void scores_avx2(const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t lo, int64_t hi,
                                                            float scale, float *scratch) {
    OPS2
    MLA_SCORES
}
__attribute__((target("avx2,fma"))) static void values_avx2(int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n,
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
#undef PREFETCH
#endif

/* ---- the phases (kern.h); scalar forms, then dispatch ---- */

void moe_kern_mla_prep(const float *q, int64_t ldq, int hn, int64_t W, float *scratch) {
    for (int64_t w = 0; w < W; w++)
        for (int h = 0; h < 16; h++) scratch[w * 16 + h] = h < hn ? q[h * ldq + w] : 0.0f;
}

#if defined(__x86_64__)
/* max and the normalization's sums over the 16 lanes at once: vmaxps(s, m) is s > m ? s : m, the
 * ref's choice (NaN included), and each lane's double sum runs in key order, as in the ref */
__attribute__((target("avx2,fma,avx512f"))) static void max_avx512(int64_t n, const float *s, float m[16]) {
    __m512 a = _mm512_set1_ps(-INFINITY);
    for (int64_t k = 0; k < n; k++) a = _mm512_max_ps(_mm512_loadu_ps(s + 16 * k), a);
    _mm512_storeu_ps(m, a);
}
__attribute__((target("avx2,fma,avx512f"))) static void norm_avx512(int hn, int64_t n, float *s) {
    __m512d lo = _mm512_setzero_pd(), hi = lo;
    for (int64_t k = 0; k < n; k++) {
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm256_loadu_ps(s + 16 * k)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_loadu_ps(s + 16 * k + 8)));
    }
    double sum[16];
    float inv[16];
    _mm512_storeu_pd(sum, lo);
    _mm512_storeu_pd(sum + 8, hi);
    for (int h = 0; h < 16; h++) inv[h] = h < hn ? (float)(1.0 / sum[h]) : 0.0f;
    const __m512 iv = _mm512_loadu_ps(inv);
    const __mmask16 live = (__mmask16)((1u << hn) - 1); /* lanes past hn: 0, as the ref stores */
    for (int64_t k = 0; k < n; k++) _mm512_storeu_ps(s + 16 * k, _mm512_maskz_mul_ps(live, _mm512_loadu_ps(s + 16 * k), iv));
}
#endif

void moe_kern_mla_max(int hn, int64_t W, int64_t n, const float *scratch, float m[16]) {
    const float *s = scratch + 16 * W;
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        max_avx512(n, s, m);
        for (int h = hn; h < 16; h++) m[h] = -INFINITY;
        return;
    }
#endif
    for (int h = 0; h < 16; h++) m[h] = -INFINITY;
    for (int64_t k = 0; k < n; k++) /* key by key, v > m ? v : m, as the ref */
        for (int h = 0; h < hn; h++) m[h] = s[16 * k + h] > m[h] ? s[16 * k + h] : m[h];
}

#if defined(__x86_64__)
/* e = exp(s − m) for the hn live lanes (core/vexp.h: 0 below VEXP_MIN and for NaN); the other
 * lanes keep their values, as in the scalar form */
__attribute__((target("avx2,fma,avx512f"))) static void exp_avx512(int hn, int64_t k0, int64_t k1, const float m[16],
                                                                   float *s) {
    const __m512 mv = _mm512_loadu_ps(m), lo = _mm512_set1_ps(VEXP_MIN);
    const __mmask16 heads = (__mmask16)((1u << hn) - 1);
    for (int64_t k = k0; k < k1; k++) {
        const __m512 v = _mm512_loadu_ps(s + 16 * k), x = _mm512_sub_ps(v, mv);
        const __mmask16 in = _mm512_mask_cmp_ps_mask(heads, x, lo, _CMP_GE_OQ);
        const __m512 e = _mm512_maskz_mov_ps(in, vexp16(_mm512_max_ps(x, lo)));
        _mm512_storeu_ps(s + 16 * k, _mm512_mask_mov_ps(v, heads, e));
    }
}
__attribute__((target("avx2,fma"))) static void exp_avx2(int hn, int64_t k0, int64_t k1, const float m[16], float *s) {
    const __m256 lo = _mm256_set1_ps(VEXP_MIN);
    for (int half = 0; half < 2; half++) {
        if (8 * half >= hn) break;
        const __m256 mv = _mm256_loadu_ps(m + 8 * half);
        int32_t lanes[8];
        for (int i = 0; i < 8; i++) lanes[i] = 8 * half + i < hn ? -1 : 0;
        const __m256 heads = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i *)(const void *)lanes));
        for (int64_t k = k0; k < k1; k++) {
            float *p = s + 16 * k + 8 * half;
            const __m256 v = _mm256_loadu_ps(p), x = _mm256_sub_ps(v, mv);
            const __m256 in = _mm256_and_ps(heads, _mm256_cmp_ps(x, lo, _CMP_GE_OQ));
            const __m256 e = _mm256_and_ps(in, vexp8(_mm256_max_ps(x, lo)));
            _mm256_storeu_ps(p, _mm256_blendv_ps(v, e, heads));
        }
    }
}
#endif

void moe_kern_mla_exp(int hn, int64_t W, int64_t k0, int64_t k1, const float m[16], float *scratch) {
    float *s = scratch + 16 * W;
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        exp_avx512(hn, k0, k1, m, s);
        return;
    }
    if (moe_kern_level() == 1) {
        exp_avx2(hn, k0, k1, m, s);
        return;
    }
#endif
    for (int64_t k = k0; k < k1; k++)
        for (int h = 0; h < hn; h++) {
            const float x = s[16 * k + h] - m[h]; /* ≤ 0 (m is the max); 0 below VEXP_MIN, as the ref */
            s[16 * k + h] = x >= VEXP_MIN ? vexp_ref(x) : 0.0f;
        }
}

void moe_kern_mla_norm(int hn, int64_t W, int64_t n, float *scratch) {
    float *s = scratch + 16 * W, inv[16];
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        norm_avx512(hn, n, s);
        return;
    }
#endif
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

static void scores_scalar(const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t lo, int64_t hi, float scale, float *scratch) {
    const float *qt = scratch;
    float *s = scratch + 16 * W;
    for (int64_t k = lo; k < hi; k++)
        for (int h = 0; h < 16; h++) {
            float a = 0.0f;
            for (int64_t w = 0; w < W; w++) a = fmaf(moe_kv_row(cache, ldc, bs, k)[w], qt[16 * w + h], a);
            s[16 * k + h] = a * scale;
        }
}

static void values_scalar(int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n, int64_t lo, int64_t hi,
                          const float *scratch, float *u, int64_t ldu) {
    const float *s = scratch + 16 * W;
    for (int h = 0; h < hn; h++)
        for (int64_t c = lo; c < hi; c++) {
            float a = 0.0f;
            for (int64_t k = 0; k < n; k++) a = fmaf(s[16 * k + h], moe_kv_row(cache, ldc, bs, k)[c], a);
            u[h * ldu + c] = a;
        }
}

void moe_kern_mla_scores(const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t k0, int64_t k1, float scale, float *scratch) {
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        scores_avx512(cache, ldc, bs, W, k0, k1, scale, scratch);
        return;
    }
    if (moe_kern_level() == 1) {
        scores_avx2(cache, ldc, bs, W, k0, k1, scale, scratch);
        return;
    }
#endif
    scores_scalar(cache, ldc, bs, W, k0, k1, scale, scratch);
}

void moe_kern_mla_values(int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n, int64_t c0, int64_t c1,
                         const float *scratch, float *u, int64_t ldu) {
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        values_avx512(hn, cache, ldc, bs, W, n, c0, c1, scratch, u, ldu);
        return;
    }
    if (moe_kern_level() == 1) {
        values_avx2(hn, cache, ldc, bs, W, n, c0, c1, scratch, u, ldu);
        return;
    }
#endif
    values_scalar(hn, cache, ldc, bs, W, n, c0, c1, scratch, u, ldu);
}

void moe_kern_mla_attn(const float *q, int64_t ldq, int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n,
                       int64_t Lkv, float scale, float *scratch, float *u, int64_t ldu) {
    if (hn < 1 || hn > 16 || moe_kern_level() == 0) {
        moe_kern_mla_attn_ref(q, ldq, hn, cache, ldc, bs, W, n, Lkv, scale, scratch, u, ldu);
        return;
    }
    moe_kern_mla_prep(q, ldq, hn, W, scratch);
    moe_kern_mla_scores(cache, ldc, bs, W, 0, n, scale, scratch);
    moe_kern_mla_softmax(hn, W, n, scratch);
    moe_kern_mla_values(hn, cache, ldc, bs, W, n, 0, Lkv, scratch, u, ldu);
}
