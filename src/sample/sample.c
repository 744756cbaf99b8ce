/* moekit sample: temperature / top-k / top-p sampling (see moe/sample.h).
 *
 * Cost per token is O(V) in every mode, and the O(V) passes are SIMD (AVX-512 or AVX2+FMA,
 * chosen once at run time; the scalar `_ref` forms are the spec and run elsewhere, e.g. aarch64,
 * or with MOE_FORCE_REF=1). Every form computes the same floats bit for bit, so a seed gives the
 * same tokens on every machine: the weights use one exp (below) whose every operation is fixed,
 * FMAs included, and sums run in a fixed lane order (below) that the ref spells out.
 *
 * Per token:
 *   1. mx = max of the logits (NaN ignored). Temperature <= 0, or a non-finite mx (a +inf
 *      logit, or nothing but -inf/NaN), samples greedily: the first index holding mx.
 *   2. weights w_i = exp((l_i − mx) · (1/T)) for the candidates: every token, or the top k
 *      (kept sorted by insertion; a SIMD scan skips the 16-token groups with no logit above the
 *      current k-th). NaN logits and x = (l − mx)/T below −87 get weight 0.
 *   3. top-p < 1: the smallest set of the largest weights (ties: lower id first) whose mass
 *      reaches p × sum. Without top-k, tokens with w < τ = (1 − p) · sum / (2V) cannot be in it
 *      (all of them together weigh less than (1 − p) · sum), so a SIMD filter keeps only w >= τ
 *      — a few hundred tokens on real logits — and a growing quickselect + sort runs on those.
 *   4. one draw r = u · sum (u uniform in [0, 1) from xoshiro256**), walking the candidates in
 *      order with a double accumulator. Without truncation nothing is stored: the draw walks
 *      the block sums of step 2 and recomputes the weights of the one block it lands in.
 *
 * exp(x) for x in [−87, 0] (Cephes expf): n = round(x · log2 e) by the 1.5·2^23 trick in one
 * FMA, r = x − n · ln 2 in two FMAs (Cody–Waite: ln 2 = 0.693359375 − 2.12194440e−4), degree-5
 * polynomial p(r) in Horner FMAs, e^r ≈ p·r² + r + 1, times 2^n built in the exponent bits.
 * Largest relative error against exp() in double: below 2^−21 (tests/sample checks it).
 *
 * Sums: the candidates form blocks of 256 (BLK); in a block, lane j of 16 adds the block's
 * elements j, j+16, j+32, ... in order (float), then lanes fold as j += j+8, j += j+4, j += j+2,
 * 0 += 1 (AVX-512: one zmm; AVX2: two ymm, low lanes 0..7). The block sums (float) add up in a
 * double in block order. Elements past the end count as nothing. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/bits.h"
#include "core/vexp.h"
#include "moe/sample.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_X86 1
#endif

#define BLK 256      /* elements per block sum */
#define LANES 16     /* lanes of the block-sum layout */
#define X_MIN VEXP_MIN /* exp below this is 0 */

typedef struct {
    float logit; /* the logit, then the weight */
    int32_t id;
} cand;

struct moe_sampler {
    moe_sampler_params p;
    int32_t n_vocab;
    cand *c;   /* owned, (V): top-k / top-p candidates */
    float *w;  /* owned, (V): weights (top-p without top-k), or the top-k logits */
    float *bs; /* owned, (V / BLK + 1): block sums */
    uint64_t s[4];
};

/* ---- exp and the kernels: scalar references ---- */

/* the weight of logit l: exp((l − mx) · invT), 0 for NaN and below X_MIN */
static inline float weight_ref(float l, float mx, float invT) {
    float x = (l - mx) * invT;
    return x >= X_MIN ? vexp_ref(x) : 0.0f;
}

/* largest of x[0..n), NaN ignored; -inf if there is none */
static float max_ref(const float *x, int32_t n) {
    float m = -INFINITY;
    for (int32_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* first i >= from with x[i] > v (v = -inf: the first non-NaN, non -inf); n if none */
static int32_t next_gt_ref(const float *x, int32_t from, int32_t n, float v) {
    for (int32_t i = from; i < n; i++)
        if (x[i] > v) return i;
    return n;
}

/* first i with x[i] == v; n if none */
static int32_t find_ref(const float *x, int32_t n, float v) {
    for (int32_t i = 0; i < n; i++)
        if (x[i] == v) return i;
    return n;
}

/* Weights of x[0..n) into w (if not NULL) and the sums of each block of BLK into bs. */
static void weights_ref(const float *x, int32_t n, float mx, float invT, float *w, float *bs) {
    for (int32_t b = 0; b * BLK < n; b++) {
        float a[LANES] = {0};
        int32_t e = n - b * BLK < BLK ? n - b * BLK : BLK;
        for (int32_t k = 0; k < e; k++) {
            float v = weight_ref(x[b * BLK + k], mx, invT);
            if (w) w[b * BLK + k] = v;
            a[k % LANES] += v;
        }
        for (int h = LANES / 2; h >= 1; h /= 2)
            for (int j = 0; j < h; j++) a[j] += a[j + h];
        bs[b] = a[0];
    }
}

/* Append (w[i], i) for every w[i] >= tau to c; returns how many. */
static int32_t above_ref(const float *w, int32_t n, float tau, cand *c) {
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (w[i] >= tau) c[m++] = (cand){w[i], i};
    return m;
}

/* ---- SIMD forms ---- */

#ifdef MOE_X86
__attribute__((target("avx512f"))) static inline __m512 weight16(__m512 l, __m512 mx, __m512 invT) {
    __m512 x = _mm512_mul_ps(_mm512_sub_ps(l, mx), invT);
    __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(X_MIN), _CMP_GE_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(X_MIN)); /* NaN → X_MIN (max returns its second operand) */
    return _mm512_maskz_mov_ps(live, vexp16(x));
}

__attribute__((target("avx512f"))) static float max_avx512(const float *x, int32_t n) {
    __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
    int32_t i = 0;
    for (; i + 32 <= n; i += 32) { /* max(new, acc): a NaN in new leaves acc */
        m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
        m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
    }
    float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

__attribute__((target("avx512f"))) static int32_t next_gt_avx512(const float *x, int32_t from, int32_t n, float v) {
    __m512 vv = _mm512_set1_ps(v);
    int32_t i = from;
    for (; i + 16 <= n; i += 16) {
        __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), vv, _CMP_GT_OQ);
        if (k) return i + __builtin_ctz(k);
    }
    return next_gt_ref(x, i, n, v);
}

__attribute__((target("avx512f"))) static int32_t find_avx512(const float *x, int32_t n, float v) {
    __m512 vv = _mm512_set1_ps(v);
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), vv, _CMP_EQ_OQ);
        if (k) return i + __builtin_ctz(k);
    }
    int32_t j = find_ref(x + i, n - i, v);
    return i + j;
}

__attribute__((target("avx512f"))) static float fold16(__m512 a) {
    __m256 lo = _mm512_castps512_ps256(a);
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

__attribute__((target("avx512f"))) static void weights_avx512(const float *x, int32_t n, float mx, float invT, float *w,
                                                              float *bs) {
    const __m512 vmx = _mm512_set1_ps(mx), vit = _mm512_set1_ps(invT);
    for (int32_t b = 0; b * BLK < n; b++) {
        const float *xb = x + (size_t)b * BLK;
        float *wb = w ? w + (size_t)b * BLK : NULL;
        int32_t e = n - b * BLK < BLK ? n - b * BLK : BLK;
        __m512 a = _mm512_setzero_ps();
        int32_t k = 0;
        for (; k + 16 <= e; k += 16) {
            __m512 v = weight16(_mm512_loadu_ps(xb + k), vmx, vit);
            if (wb) _mm512_storeu_ps(wb + k, v);
            a = _mm512_add_ps(a, v);
        }
        if (k < e) { /* the last partial group: missing lanes get -inf, weight 0, and add +0 */
            __mmask16 m = (__mmask16)((1u << (e - k)) - 1);
            __m512 v = weight16(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, xb + k), vmx, vit);
            if (wb) _mm512_mask_storeu_ps(wb + k, m, v);
            a = _mm512_add_ps(a, v);
        }
        bs[b] = fold16(a);
    }
}

__attribute__((target("avx512f"))) static int32_t above_avx512(const float *w, int32_t n, float tau, cand *c) {
    const __m512 vt = _mm512_set1_ps(tau);
    int32_t m = 0, i = 0;
    for (; i + 16 <= n; i += 16) {
        unsigned k = _mm512_cmp_ps_mask(_mm512_loadu_ps(w + i), vt, _CMP_GE_OQ);
        for (; k; k &= k - 1) {
            int32_t j = i + __builtin_ctz(k);
            c[m++] = (cand){w[j], j};
        }
    }
    for (; i < n; i++)
        if (w[i] >= tau) c[m++] = (cand){w[i], i};
    return m;
}

__attribute__((target("avx2,fma"))) static inline __m256 weight8(__m256 l, __m256 mx, __m256 invT) {
    __m256 x = _mm256_mul_ps(_mm256_sub_ps(l, mx), invT);
    __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(X_MIN), _CMP_GE_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(X_MIN)); /* NaN → X_MIN */
    return _mm256_and_ps(live, vexp8(x));
}

__attribute__((target("avx2,fma"))) static float max_avx2(const float *x, int32_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    }
    float t[8], m = -INFINITY;
    _mm256_storeu_ps(t, _mm256_max_ps(m0, m1));
    for (int j = 0; j < 8; j++) m = t[j] > m ? t[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

__attribute__((target("avx2,fma"))) static int32_t next_gt_avx2(const float *x, int32_t from, int32_t n, float v) {
    __m256 vv = _mm256_set1_ps(v);
    int32_t i = from;
    for (; i + 8 <= n; i += 8) {
        int k = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vv, _CMP_GT_OQ));
        if (k) return i + __builtin_ctz((unsigned)k);
    }
    return next_gt_ref(x, i, n, v);
}

__attribute__((target("avx2,fma"))) static int32_t find_avx2(const float *x, int32_t n, float v) {
    __m256 vv = _mm256_set1_ps(v);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int k = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vv, _CMP_EQ_OQ));
        if (k) return i + __builtin_ctz((unsigned)k);
    }
    return i + find_ref(x + i, n - i, v);
}

/* lanes 0..7 in lo, 8..15 in hi, folded in the ref's order */
__attribute__((target("avx2,fma"))) static float fold8x2(__m256 lo, __m256 hi) {
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

__attribute__((target("avx2,fma"))) static void weights_avx2(const float *x, int32_t n, float mx, float invT,
                                                           float *w, float *bs) {
    const __m256 vmx = _mm256_set1_ps(mx), vit = _mm256_set1_ps(invT);
    for (int32_t b = 0; b * BLK < n; b++) {
        const float *xb = x + (size_t)b * BLK;
        float *wb = w ? w + (size_t)b * BLK : NULL;
        int32_t e = n - b * BLK < BLK ? n - b * BLK : BLK;
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        int32_t k = 0;
        for (; k + 16 <= e; k += 16) {
            __m256 v0 = weight8(_mm256_loadu_ps(xb + k), vmx, vit);
            __m256 v1 = weight8(_mm256_loadu_ps(xb + k + 8), vmx, vit);
            if (wb) {
                _mm256_storeu_ps(wb + k, v0);
                _mm256_storeu_ps(wb + k + 8, v1);
            }
            lo = _mm256_add_ps(lo, v0);
            hi = _mm256_add_ps(hi, v1);
        }
        if (k < e) { /* the last partial group, padded with -inf (weight 0, adds +0) */
            float t[16], o[16];
            for (int j = 0; j < 16; j++) t[j] = k + j < e ? xb[k + j] : -INFINITY;
            __m256 v0 = weight8(_mm256_loadu_ps(t), vmx, vit), v1 = weight8(_mm256_loadu_ps(t + 8), vmx, vit);
            _mm256_storeu_ps(o, v0);
            _mm256_storeu_ps(o + 8, v1);
            if (wb) memcpy(wb + k, o, (size_t)(e - k) * sizeof(float));
            lo = _mm256_add_ps(lo, v0);
            hi = _mm256_add_ps(hi, v1);
        }
        bs[b] = fold8x2(lo, hi);
    }
}

__attribute__((target("avx2,fma"))) static int32_t above_avx2(const float *w, int32_t n, float tau, cand *c) {
    const __m256 vt = _mm256_set1_ps(tau);
    int32_t m = 0, i = 0;
    for (; i + 8 <= n; i += 8) {
        unsigned k = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(w + i), vt, _CMP_GE_OQ));
        for (; k; k &= k - 1) {
            int32_t j = i + __builtin_ctz(k);
            c[m++] = (cand){w[j], j};
        }
    }
    for (; i < n; i++)
        if (w[i] >= tau) c[m++] = (cand){w[i], i};
    return m;
}
#endif

/* ---- dispatch: 0 scalar ref, 1 AVX2+FMA, 2 AVX-512F; chosen once (MOE_FORCE_REF=1: 0) ---- */

static int g_level = -1;

static int detect_level(void) {
    const char *f = getenv("MOE_FORCE_REF");
    if (f && *f && strcmp(f, "0") != 0) return 0;
#ifdef MOE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
    return 0;
}

static inline int level(void) {
    int l = __atomic_load_n(&g_level, __ATOMIC_RELAXED); /* samplers run on several threads */
    if (l < 0) {
        l = detect_level();
        __atomic_store_n(&g_level, l, __ATOMIC_RELAXED);
    }
    return l;
}

static float k_max(const float *x, int32_t n) {
    int l = level();
#ifdef MOE_X86
    if (l == 2) return max_avx512(x, n);
    if (l == 1) return max_avx2(x, n);
#endif
    (void)l;
    return max_ref(x, n);
}

static int32_t k_next_gt(const float *x, int32_t from, int32_t n, float v) {
    int l = level();
#ifdef MOE_X86
    if (l == 2) return next_gt_avx512(x, from, n, v);
    if (l == 1) return next_gt_avx2(x, from, n, v);
#endif
    (void)l;
    return next_gt_ref(x, from, n, v);
}

static int32_t k_find(const float *x, int32_t n, float v) {
    int l = level();
#ifdef MOE_X86
    if (l == 2) return find_avx512(x, n, v);
    if (l == 1) return find_avx2(x, n, v);
#endif
    (void)l;
    return find_ref(x, n, v);
}

static void k_weights(const float *x, int32_t n, float mx, float invT, float *w, float *bs) {
    int l = level();
#ifdef MOE_X86
    if (l == 2) {
        weights_avx512(x, n, mx, invT, w, bs);
        return;
    }
    if (l == 1) {
        weights_avx2(x, n, mx, invT, w, bs);
        return;
    }
#endif
    (void)l;
    weights_ref(x, n, mx, invT, w, bs);
}

static int32_t k_above(const float *w, int32_t n, float tau, cand *c) {
    int l = level();
#ifdef MOE_X86
    if (l == 2) return above_avx512(w, n, tau, c);
    if (l == 1) return above_avx2(w, n, tau, c);
#endif
    (void)l;
    return above_ref(w, n, tau, c);
}

/* ---- the sampler ---- */

moe_sampler_params moe_sampler_default_params(void) {
    moe_sampler_params p = {0.8f, 0.95f, 40, 0};
    return p;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(moe_sampler *r) {
    uint64_t *s = r->s, t = s[1] << 17;
    uint64_t res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return (double)(res >> 11) * 0x1.0p-53;
}

moe_status moe_sampler_init(const moe_sampler_params *p, int32_t n_vocab, moe_sampler **out) {
    *out = NULL;
    if (n_vocab <= 0 || !(p->top_p > 0.0f && p->top_p <= 1.0f) || p->top_k < 0) return MOE_ERR_INVAL;
    moe_sampler *s = calloc(1, sizeof *s);
    if (!s) return MOE_ERR_NOMEM;
    /* untouched unless top-k or top-p asks for them (plain temperature sampling stores nothing) */
    s->c = malloc(sizeof(cand) * (size_t)n_vocab);
    s->w = malloc(sizeof(float) * (size_t)n_vocab);
    s->bs = malloc(sizeof(float) * (size_t)(n_vocab / BLK + 1));
    if (!s->c || !s->w || !s->bs) {
        moe_sampler_free(s);
        return MOE_ERR_NOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix(&x);
    *out = s;
    return MOE_OK;
}

void moe_sampler_free(moe_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->w);
    free(s->bs);
    free(s);
}

static int by_logit_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

/* Quickselect: afterwards c[0..m) hold the m largest logits (in no particular order). O(n). */
static void select_top(cand *c, int32_t n, int32_t m) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = c[lo + (hi - lo) / 2].logit;
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (m - 1 <= j) hi = j;
        else if (m - 1 >= i) lo = i;
        else break;
    }
}

static double sum_blocks(const float *bs, int32_t nb) {
    double sum = 0.0;
    for (int32_t b = 0; b < nb; b++) sum += bs[b];
    return sum;
}

/* The draw without truncation: walk the block sums, then the weights of the block hit
 * (recomputed: the same floats as in the sums). Rounding can leave r past the end: the last
 * token of positive weight then (mx's own token weighs 1, so there is one). */
static int32_t draw_blocks(moe_sampler *s, const float *logits, float mx, float invT, int32_t nb, double r) {
    const int32_t V = s->n_vocab;
    int32_t b = 0;
    double acc = 0.0;
    for (; b < nb; b++) {
        if (r < acc + s->bs[b]) break;
        acc += s->bs[b];
    }
    if (b == nb) { /* r rounded past the end */
        while (b > 0 && s->bs[b - 1] <= 0.0f) b--;
        b = b > 0 ? b - 1 : 0;
        r = INFINITY;
    }
    float w[BLK], bsum;
    int32_t e = V - b * BLK < BLK ? V - b * BLK : BLK, last = 0;
    k_weights(logits + (size_t)b * BLK, e, mx, invT, w, &bsum);
    double a = 0.0;
    r -= acc;
    for (int32_t k = 0; k < e; k++) {
        if (w[k] <= 0.0f) continue;
        last = k;
        a += w[k];
        if (r < a) return b * BLK + k;
    }
    return b * BLK + last;
}

int32_t moe_sampler_sample(moe_sampler *s, const float *logits) {
    const int32_t V = s->n_vocab;
    float mx = k_max(logits, V);
    float invT = s->p.temp > 0.0f ? 1.0f / s->p.temp : 0.0f;
    if (!(invT > 0.0f && invT < INFINITY) || !isfinite(mx)) {
        int32_t i = k_find(logits, V, mx); /* greedy: the first index holding the max */
        return i < V ? i : 0;
    }
    int32_t k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : 0;
    int truncate = k || s->p.top_p < 1.0f;
    if (!truncate) {
        int32_t nb = (V + BLK - 1) / BLK;
        k_weights(logits, V, mx, invT, NULL, s->bs);
        return draw_blocks(s, logits, mx, invT, nb, uniform01(s) * sum_blocks(s->bs, nb));
    }
    cand *c = s->c;
    int32_t n = 0;
    double sum;
    if (k) {
        /* keep the k largest in a sorted (descending) array by insertion; once it is full, the
         * scan skips straight to the next logit above the k-th */
        for (int32_t i = k_next_gt(logits, 0, V, -INFINITY); i < V;) {
            float l = logits[i];
            int32_t j = n < k ? n++ : k - 1;
            while (j > 0 && c[j - 1].logit < l) {
                c[j] = c[j - 1];
                j--;
            }
            c[j] = (cand){l, i};
            i = k_next_gt(logits, i + 1, V, n == k ? c[k - 1].logit : -INFINITY);
        }
        for (int32_t i = 0; i < n; i++) s->w[i] = c[i].logit;
        k_weights(s->w, n, mx, invT, s->w, s->bs);
        for (int32_t i = 0; i < n; i++) c[i].logit = s->w[i];
        sum = sum_blocks(s->bs, (n + BLK - 1) / BLK);
    } else {
        int32_t nb = (V + BLK - 1) / BLK;
        k_weights(logits, V, mx, invT, s->w, s->bs);
        sum = sum_blocks(s->bs, nb);
        /* top-p: only tokens with w >= tau can be in the nucleus (see the top of the file) */
        float tau = (float)((1.0 - (double)s->p.top_p) * sum / (2.0 * (double)V));
        n = k_above(s->w, V, tau, c);
    }
    /* top-p: the smallest set of most likely tokens whose mass reaches p × sum. Unsorted
     * candidates (no top-k): select the top m (m growing 4x) until their mass reaches it, then
     * sort only those. */
    if (s->p.top_p < 1.0f) {
        double want = (double)s->p.top_p * sum;
        if (!k) {
            for (int32_t m = 64;; m *= 4) {
                if (m >= n) {
                    qsort(c, (size_t)n, sizeof(cand), by_logit_desc);
                    break;
                }
                select_top(c, n, m);
                double mass = 0.0;
                for (int32_t i = 0; i < m; i++) mass += c[i].logit;
                if (mass >= want) {
                    qsort(c, (size_t)m, sizeof(cand), by_logit_desc);
                    n = m;
                    break;
                }
            }
        }
        double acc = 0.0;
        for (int32_t i = 0; i < n; i++) {
            acc += c[i].logit;
            if (acc >= want) {
                n = i + 1;
                break;
            }
        }
        sum = 0.0;
        for (int32_t i = 0; i < n; i++) sum += c[i].logit;
    }
    double r = uniform01(s) * sum, acc = 0.0;
    int32_t last = 0;
    for (int32_t i = 0; i < n; i++) {
        if (c[i].logit <= 0.0f) continue;
        last = i;
        acc += c[i].logit;
        if (r < acc) return c[i].id;
    }
    return c[last].id;
}
