/* moekit kernels, CPU SIMD forms and run-time dispatch.
 *
 * x86-64: AVX2+FMA (and F16C for F16 rows) compiled with target attributes, chosen once from
 * __builtin_cpu_supports; every other machine uses the scalar ref. The AVX2 dot product keeps
 * 4×8 FMA lanes and reduces them in the same order as moe_kern_dot_ref (bit-identical). */
#include <string.h>

#include "kern/kern.h"
#include "moe/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_X86 1
#endif

typedef float (*dot_fn)(const float *, const float *, int64_t);

#ifdef MOE_X86
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    __m256 v = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 q = _mm_add_ps(lo, hi);                 /* v0+v4, v1+v5, v2+v6, v3+v7 */
    __m128 r = _mm_add_ps(q, _mm_movehl_ps(q, q)); /* (v0+v4)+(v2+v6), (v1+v5)+(v3+v7) */
    float s = _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
    for (; i < n; i++) s = __builtin_fmaf(a[i], b[i], s);
    return s;
}

__attribute__((target("avx2,fma,f16c"))) static void dequant_f16_avx2(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++) dst[i] = moe_f16_to_f32(s[i]);
}

__attribute__((target("avx2,fma,f16c"))) static void dequant_q8_0_avx2(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    for (int64_t b = 0; b < n / 32; b++, s += 34) {
        uint16_t h;
        memcpy(&h, s, 2);
        __m256 d = _mm256_set1_ps(_cvtsh_ss(h));
        for (int k = 0; k < 4; k++) {
            __m128i q8 = _mm_loadl_epi64((const __m128i *)(s + 2 + 8 * k));
            __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
            _mm256_storeu_ps(dst + b * 32 + 8 * k, _mm256_mul_ps(f, d));
        }
    }
}

__attribute__((target("avx2"))) static void dequant_bf16_avx2(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = moe_bf16_to_f32(s[i]);
}
#endif

static int g_level = -1; /* 0 scalar, 1 avx2+fma+f16c */

static int level(void) {
    if (g_level < 0) {
        int l = 0;
#ifdef MOE_X86
        __builtin_cpu_init();
        /* every AVX2 CPU also has F16C (clang 14 has no "f16c" feature string to ask) */
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
#endif
        g_level = l;
    }
    return g_level;
}

const char *moe_kern_simd_name(void) { return level() ? "avx2" : "scalar"; }

float moe_kern_dot(const float *a, const float *b, int64_t n) {
#ifdef MOE_X86
    if (level()) return dot_avx2(a, b, n);
#endif
    return moe_kern_dot_ref(a, b, n);
}

void moe_kern_dequant_row(int type, const void *src, float *dst, int64_t n) {
#ifdef MOE_X86
    if (level()) {
        switch (type) {
        case MOE_DTYPE_F16: dequant_f16_avx2(src, dst, n); return;
        case MOE_DTYPE_Q8_0: dequant_q8_0_avx2(src, dst, n); return;
        case MOE_DTYPE_BF16: dequant_bf16_avx2(src, dst, n); return;
        default: break;
        }
    }
#endif
    moe_dtype_dequant_row(type, src, dst, n);
}

void moe_kern_matmul_rows(const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t T,
                          int64_t o0, int64_t o1, float *scratch) {
    const int64_t in = w->in;
    for (int64_t ob = o0; ob < o1; ob += MOE_KERN_TILE) {
        int64_t oe = ob + MOE_KERN_TILE < o1 ? ob + MOE_KERN_TILE : o1;
        const float *rows[MOE_KERN_TILE];
        for (int64_t o = ob; o < oe; o++) {
            const uint8_t *src = w->data + (size_t)o * w->row_bytes;
            if (w->type == MOE_DTYPE_F32) {
                rows[o - ob] = (const float *)src;
            } else {
                float *dst = scratch + (size_t)(o - ob) * (size_t)in;
                moe_kern_dequant_row(w->type, src, dst, in);
                rows[o - ob] = dst;
            }
        }
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * ldx;
            float *yt = y + t * ldy;
            for (int64_t o = ob; o < oe; o++) yt[o] = moe_kern_dot(rows[o - ob], xt, in);
        }
    }
}

typedef struct {
    const moe_wview *w;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy, T;
    float *scratch;
    size_t per_thread;
} mm_job;

static void mm_worker(void *arg, int ith, int nth) {
    mm_job *j = arg;
    int64_t tiles = (j->w->out + MOE_KERN_TILE - 1) / MOE_KERN_TILE;
    int64_t t0 = tiles * ith / nth, t1 = tiles * (ith + 1) / nth;
    int64_t o0 = t0 * MOE_KERN_TILE, o1 = t1 * MOE_KERN_TILE;
    if (o1 > j->w->out) o1 = j->w->out;
    if (o0 < o1) moe_kern_matmul_rows(j->w, j->x, j->ldx, j->y, j->ldy, j->T, o0, o1, j->scratch + (size_t)ith * j->per_thread);
}

void moe_kern_matmul(moe_pool *pool, const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t T, float *scratch, size_t scratch_per_thread) {
    mm_job j = {w, x, ldx, y, ldy, T, scratch, scratch_per_thread};
    if (!pool || moe_pool_n_threads(pool) == 1 || w->out < 2 * MOE_KERN_TILE)
        moe_kern_matmul_rows(w, x, ldx, y, ldy, T, 0, w->out, scratch);
    else
        moe_pool_run(pool, mm_worker, &j);
}
