/* moekit kernels, CPU SIMD forms and run-time dispatch.
 *
 * Levels, chosen once from __builtin_cpu_supports (x86-64) or the build target (aarch64):
 * 0 scalar ref, 1 AVX2+FMA+F16C, 2 level 1 + AVX-512 F/VL/BW/VNNI, 3 NEON. Every SIMD function
 * is compiled with a target attribute, so the default build runs on any x86-64.
 * MOE_FORCE_REF=1 forces level 0. The AVX2 dot product keeps 4×8 FMA lanes and reduces them in
 * the same order as moe_kern_dot_ref (bit-identical).
 *
 * moe_kern_matmul: Q8_0/Q4_0 weights go the W8A8 way (kern_q8.c) unless MOE_INT8=0; other
 * types dequantize tiles of MOE_KERN_TILE rows to F32 once per tile and reuse them for all T
 * tokens. Threads take contiguous ranges of whole tiles; the result of every (row, token) is
 * computed by one thread in a fixed order, so it does not depend on the thread count. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/kscale.h"
#include "core/vexp.h"
#include "kern/kern.h"
#include "moe/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_X86 1
#include "kern/cpu/unpack_x86.h"
#endif

typedef float (*dot_fn)(const float *, const float *, int64_t);

#ifdef MOE_X86
/* The dot's end, in the ref's order: the 8 lanes v of (s0+s1)+(s2+s3) as
 * ((v0+v4)+(v2+v6))+((v1+v5)+(v3+v7)), then fma of the elements [i, n) one by one */
__attribute__((target("avx2,fma"))) static inline float dot_reduce(__m256 v, const float *a, const float *b, int64_t i,
                                                                   int64_t n) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 q = _mm_add_ps(lo, hi);                 /* v0+v4, v1+v5, v2+v6, v3+v7 */
    __m128 r = _mm_add_ps(q, _mm_movehl_ps(q, q)); /* (v0+v4)+(v2+v6), (v1+v5)+(v3+v7) */
    float s = _mm_cvtss_f32(_mm_add_ss(r, _mm_shuffle_ps(r, r, 1)));
    for (; i < n; i++) s = __builtin_fmaf(a[i], b[i], s);
    return s;
}

__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    return dot_reduce(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)), a, b, i, n);
}

#define F32_R 4 /* rows per block of f32_rows_avx512 (rows_block, below) */
/* dot_avx2's end for one (row, token): its four 8-lane accumulators are z0 = [s0 | s1] and
 * z1 = [s2 | s3] here */
__attribute__((target("avx512f,avx2,fma"))) static inline float f32_reduce(__m512 z0, __m512 z1, const float *a,
                                                                          const float *b, int64_t i, int64_t n) {
    const __m256 s0 = _mm512_castps512_ps256(z0), s1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z0), 1));
    const __m256 s2 = _mm512_castps512_ps256(z1), s3 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z1), 1));
    return dot_reduce(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)), a, b, i, n);
}

/* F16 / BF16 weights, converted in registers (F16: vcvtph2ps; BF16: its 16 bits moved to the top
 * of a float, exact) instead of dequantized into a tile and read back. 4 rows and up to 2 tokens
 * at a time (more tokens: further passes over the same 4 rows, from L1); each 32 values of x are
 * loaded once for the 4 rows. Every (row, token) is dot_avx2's arithmetic lane for lane (z0 =
 * [s0 | s1], z1 = [s2 | s3], f32_reduce's tree, the tail by fmaf in order), so it equals the
 * tile path bit for bit. 2 threads, 32768 × 2048 (docs/performance.md): the tile path streamed
 * one token at 16–18 GB/s, 4 neighbouring rows at a time 44–50, one row of each of 4 equal
 * slices (half_rows_avx512) 64–72. */
#define HALF_R 4
#define HALF_PF 2048
__attribute__((target("avx512f,avx512bw,avx2,fma,f16c"), always_inline)) static inline __m512 half16(const uint16_t *p,
                                                                                                    int bf) {
    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)p);
    return bf ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
}

/* R ≤ 4 rows × NT ≤ 2 tokens of F32 (kind 0: f32_rows_avx512), F16 (1) or BF16 (2) rows, the
 * sums in dot_avx2's lanes; pf > 0: each row prefetches pf bytes on per 32 values */
__attribute__((target("avx512f,avx512bw,avx2,fma,f16c"), always_inline)) static inline void
rows_block(const void *const *rows, int R, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t in, int NT,
           int kind, size_t pf) {
    __m512 z[HALF_R][2][2];
    const int64_t n32 = in / 32 * 32;
#pragma GCC unroll 4
    for (int j = 0; j < HALF_R; j++)
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++) z[j][k][0] = z[j][k][1] = _mm512_setzero_ps();
    for (int64_t i = 0; i < n32; i += 32) {
        __m512 xa[2], xb[2];
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++)
            if (k < NT) {
                xa[k] = _mm512_loadu_ps(x + k * ldx + i);
                xb[k] = _mm512_loadu_ps(x + k * ldx + i + 16);
            }
#pragma GCC unroll 4
        for (int j = 0; j < HALF_R; j++)
            if (j < R) {
                __m512 wa, wb;
                if (kind == 0) {
                    wa = _mm512_loadu_ps((const float *)rows[j] + i);
                    wb = _mm512_loadu_ps((const float *)rows[j] + i + 16);
                } else {
                    const uint16_t *h = (const uint16_t *)rows[j] + i;
                    if (pf) _mm_prefetch((const char *)h + pf, _MM_HINT_T0);
                    wa = half16(h, kind == 2);
                    wb = half16(h + 16, kind == 2);
                }
#pragma GCC unroll 2
                for (int k = 0; k < 2; k++)
                    if (k < NT) {
                        z[j][k][0] = _mm512_fmadd_ps(wa, xa[k], z[j][k][0]);
                        z[j][k][1] = _mm512_fmadd_ps(wb, xb[k], z[j][k][1]);
                    }
            }
    }
    for (int j = 0; j < R; j++) {
        if (kind == 0) {
            for (int k = 0; k < NT; k++)
                y[k * ldy + j] = f32_reduce(z[j][k][0], z[j][k][1], (const float *)rows[j], x + k * ldx, n32, in);
            continue;
        }
        const uint16_t *h = rows[j];
        float tl[32];
        for (int64_t i = n32; i < in; i++) tl[i - n32] = kind == 2 ? moe_bf16_to_f32(h[i]) : moe_f16_to_f32(h[i]);
        for (int k = 0; k < NT; k++) y[k * ldy + j] = f32_reduce(z[j][k][0], z[j][k][1], tl, x + k * ldx + n32, 0, in - n32);
    }
}

/* F32 rows × tokens (the F32 weights' path and dequantized tiles): F32_R rows × NT tokens at a
 * time (rows_block, kind 0), so a row's 64 bytes serve NT tokens and a token's serve F32_R rows,
 * where one moe_kern_dot per (row, token) loaded both for one fma and paid a call and a reduction
 * each. Every (row, token) is dot_avx2's arithmetic lane for lane: equal to moe_kern_dot bit for
 * bit. One thread, 2048 × 2048, T = 4 / 16 / 64: 1.4 / 1.8 / 1.9× the dot loop (F32); at T = 1
 * the dot loop streams faster, so it keeps it. */
__attribute__((target("avx512f,avx512bw,avx2,fma,f16c"))) static void f32_rows_avx512(const float *const *rows, int64_t nr, const float *x,
                                                                       int64_t ldx, float *y, int64_t ldy, int64_t T,
                                                                       int64_t in) {
    int64_t r = 0;
    for (; r + F32_R <= nr; r += F32_R) {
        int64_t t = 0;
        for (; t + 2 <= T; t += 2) rows_block((const void *const *)(rows + r), F32_R, x + t * ldx, ldx, y + t * ldy + r, ldy, in, 2, 0, 0);
        if (t < T) rows_block((const void *const *)(rows + r), F32_R, x + t * ldx, ldx, y + t * ldy + r, ldy, in, 1, 0, 0);
    }
    for (; r < nr; r++)
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = dot_avx2(rows[r], x + t * ldx, in);
}

/* row b of each of R slices of q rows from o0: r[j] = row o0 + j·q + b */
static inline void slice_rows(const moe_wview *w, int64_t o0, int64_t q, int64_t b, int R, const uint16_t **r) {
    for (int j = 0; j < R; j++) r[j] = (const uint16_t *)(const void *)(w->data + (size_t)(o0 + j * q + b) * w->row_bytes);
}

/* rows [o0, o1) of an F16 or BF16 view over T tokens: the rows cut into HALF_R equal slices,
 * block b takes row b of each slice (the probe's fastest pattern: a cursor per slice, each
 * prefetching HALF_PF bytes on, across its rows), the last (o1 − o0) mod HALF_R rows one by one */
__attribute__((target("avx512f,avx512bw,avx2,fma,f16c"))) static void half_rows_avx512(const moe_wview *w, const float *x,
                                                                                      int64_t ldx, float *y, int64_t ldy,
                                                                                      int64_t T, int64_t o0, int64_t o1) {
    const int bf = w->type == MOE_DTYPE_BF16;
    const int64_t q = (o1 - o0) / HALF_R;
    for (int64_t b = 0; b < q; b++) {
        const uint16_t *r[HALF_R];
        slice_rows(w, o0, q, b, HALF_R, r);
        for (int64_t t = 0; t < T; t += 2) {
            const int nt = T - t < 2 ? (int)(T - t) : 2;
            float yy[2][HALF_R];
            if (bf)
                rows_block((const void *const *)r, HALF_R, x + t * ldx, ldx, yy[0], HALF_R, w->in, nt, 2, HALF_PF);
            else
                rows_block((const void *const *)r, HALF_R, x + t * ldx, ldx, yy[0], HALF_R, w->in, nt, 1, HALF_PF);
            for (int k = 0; k < nt; k++)
                for (int j = 0; j < HALF_R; j++) y[(t + k) * ldy + o0 + j * q + b] = yy[k][j];
        }
    }
    for (int64_t o = o0 + HALF_R * q; o < o1; o++) {
        const uint16_t *r = (const uint16_t *)(const void *)(w->data + (size_t)o * w->row_bytes);
        for (int64_t t = 0; t < T; t += 2)
            rows_block((const void *const *)&r, 1, x + t * ldx, ldx, y + t * ldy + o, ldy, w->in, T - t < 2 ? (int)(T - t) : 2, bf ? 2 : 1, HALF_PF);
    }
}

/* half_block's AVX2 form: dot_avx2's four 8-lane sums per row (16 ymm registers: 2 rows, one
 * token per pass), the rows from 2 equal slices. AVX2 level on this machine, 2 threads, 32768 ×
 * 2048 F16, tile path → in registers: T 1 19 → 57 GB/s, T 3 12 → 23. */
#define HALF_R2 2
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline __m256 half8(const uint16_t *p, int bf) {
    const __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
}

__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
half_block2(const uint16_t *const *r, int R, const float *x, float *y, int64_t in, int bf, size_t pf) {
    __m256 s[HALF_R2][4];
    const int64_t n32 = in / 32 * 32;
#pragma GCC unroll 2
    for (int j = 0; j < HALF_R2; j++)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) s[j][q] = _mm256_setzero_ps();
    for (int64_t i = 0; i < n32; i += 32) {
        __m256 xv[4];
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++) xv[q] = _mm256_loadu_ps(x + i + 8 * q);
#pragma GCC unroll 2
        for (int j = 0; j < HALF_R2; j++)
            if (j < R) {
                _mm_prefetch((const char *)(r[j] + i) + pf, _MM_HINT_T0);
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++) s[j][q] = _mm256_fmadd_ps(half8(r[j] + i + 8 * q, bf), xv[q], s[j][q]);
            }
    }
    for (int j = 0; j < R; j++) {
        float tl[32];
        for (int64_t i = n32; i < in; i++) tl[i - n32] = bf ? moe_bf16_to_f32(r[j][i]) : moe_f16_to_f32(r[j][i]);
        y[j] = dot_reduce(_mm256_add_ps(_mm256_add_ps(s[j][0], s[j][1]), _mm256_add_ps(s[j][2], s[j][3])), tl, x + n32, 0,
                          in - n32);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void half_rows_avx2(const moe_wview *w, const float *x, int64_t ldx,
                                                                   float *y, int64_t ldy, int64_t T, int64_t o0,
                                                                   int64_t o1) {
    const int bf = w->type == MOE_DTYPE_BF16;
    const int64_t q = (o1 - o0) / HALF_R2;
    for (int64_t b = 0; b < q; b++) {
        const uint16_t *r[HALF_R2];
        slice_rows(w, o0, q, b, HALF_R2, r);
        for (int64_t t = 0; t < T; t++) {
            float yy[HALF_R2];
            if (bf)
                half_block2(r, HALF_R2, x + t * ldx, yy, w->in, 1, HALF_PF);
            else
                half_block2(r, HALF_R2, x + t * ldx, yy, w->in, 0, HALF_PF);
            for (int j = 0; j < HALF_R2; j++) y[t * ldy + o0 + j * q + b] = yy[j];
        }
    }
    for (int64_t o = o0 + HALF_R2 * q; o < o1; o++) {
        const uint16_t *r = (const uint16_t *)(const void *)(w->data + (size_t)o * w->row_bytes);
        for (int64_t t = 0; t < T; t++) half_block2(&r, 1, x + t * ldx, y + t * ldy + o, w->in, bf, HALF_PF);
    }
}

/* y += a·x with one fma per element: the same rounding as the ref's fmaf */
__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x, int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = __builtin_fmaf(a, x[i], y[i]);
}

/* SwiGLU (kern.h): the ref's operations on 16 / 8 lanes; e below VEXP_MIN or of a NaN is 0 */
__attribute__((target("avx512f"))) static void swiglu_avx512(float *x, const float *u, int64_t n) {
    const __m512 lo = _mm512_set1_ps(VEXP_MIN), one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 g = _mm512_loadu_ps(x + i);
        const __m512 m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(g), _mm512_set1_epi32((int)0x80000000u)));
        const __mmask16 live = _mm512_cmp_ps_mask(m, lo, _CMP_GE_OQ);
        const __m512 e = _mm512_maskz_mov_ps(live, vexp16(_mm512_max_ps(m, lo)));
        const __m512 num = _mm512_mask_mul_ps(g, _mm512_cmp_ps_mask(g, zero, _CMP_GE_OQ) ^ 0xffff, g, e);
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_div_ps(num, _mm512_add_ps(one, e)), _mm512_loadu_ps(u + i)));
    }
    moe_kern_swiglu_ref(x + i, u + i, n - i);
}

__attribute__((target("avx2,fma"))) static void swiglu_avx2(float *x, const float *u, int64_t n) {
    const __m256 lo = _mm256_set1_ps(VEXP_MIN), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(x + i), m = _mm256_or_ps(g, sign);
        const __m256 e = _mm256_and_ps(_mm256_cmp_ps(m, lo, _CMP_GE_OQ), vexp8(_mm256_max_ps(m, lo)));
        const __m256 num = _mm256_blendv_ps(_mm256_mul_ps(g, e), g, _mm256_cmp_ps(g, zero, _CMP_GE_OQ));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_div_ps(num, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    moe_kern_swiglu_ref(x + i, u + i, n - i);
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

/* Q4_K (spec gguf.md §9.7): per 64 outputs d1·q − m1 and d2·q − m2, a product then a
 * difference as in moe_dtype_dequant_row, so the values are the same bits */
__attribute__((target("avx2,fma,f16c"))) static void dequant_q4_k_avx2(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    const __m128i lo4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < n / 256; b++, s += 144) {
        uint16_t hd, hm;
        memcpy(&hd, s, 2);
        memcpy(&hm, s + 2, 2);
        const float d = _cvtsh_ss(hd), dmin = _cvtsh_ss(hm);
        const uint8_t *sc = s + 4, *qs = s + 16;
        float *y = dst + b * 256;
        for (int g = 0; g < 4; g++) {
            int a[2], m[2];
            for (int h = 0; h < 2; h++) moe_kscale(2 * g + h, sc, &a[h], &m[h]);
            const __m256 d1 = _mm256_set1_ps(d * (float)a[0]), m1 = _mm256_set1_ps(dmin * (float)m[0]);
            const __m256 d2 = _mm256_set1_ps(d * (float)a[1]), m2 = _mm256_set1_ps(dmin * (float)m[1]);
            for (int k = 0; k < 4; k++) { /* bytes 8k..8k+7 of this group's 32 */
                const __m128i q = _mm_loadl_epi64((const __m128i *)(qs + 32 * g + 8 * k));
                const __m256 ql = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(q, lo4)));
                const __m256 qh = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), lo4)));
                _mm256_storeu_ps(y + 64 * g + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d1, ql), m1));
                _mm256_storeu_ps(y + 64 * g + 32 + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d2, qh), m2));
            }
        }
    }
}

/* Q5_0: (q − 16)·d, the 5-bit values from q5_unpack as the W8A8 kernels read them */
__attribute__((target("avx2,fma,f16c"))) static void dequant_q5_0_avx2(const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    const __m256i sixteen = _mm256_set1_epi32(16);
    for (int64_t b = 0; b < n / 32; b++, s += 22) {
        uint16_t hd;
        memcpy(&hd, s, 2);
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(hd));
        const __m256i q = q5_unpack(s);
        const __m128i half[2] = {_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1)};
        for (int k = 0; k < 4; k++) { /* elements 8k..8k+7 */
            const __m128i q8 = k & 1 ? _mm_srli_si128(half[k / 2], 8) : half[k / 2];
            const __m256i v = _mm256_cvtepu8_epi32(q8);
            _mm256_storeu_ps(dst + b * 32 + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, sixteen)), d));
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

static int g_level = -1, g_int8 = -1;

static int detect(void) {
    int l = 0;
    const char *f = getenv("MOE_FORCE_REF");
    if (f && *f && strcmp(f, "0") != 0) return 0;
#ifdef MOE_X86
    __builtin_cpu_init();
    /* every AVX2 CPU also has F16C (clang 14 has no "f16c" feature string to ask) */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) l = 1;
    if (l && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vnni"))
        l = 2;
    /* MOE_SIMD=avx2 runs the AVX2 forms on an AVX-512 machine (to measure or test them) */
    const char *cap = getenv("MOE_SIMD");
    if (l == 2 && cap && !strcmp(cap, "avx2")) l = 1;
#elif defined(__aarch64__)
    l = 3;
#endif
    return l;
}

static inline int level(void) {
    if (g_level < 0) g_level = detect();
    return g_level;
}

int moe_kern_level(void) { return level(); }

int moe_kern_set_level(int l) {
    int old = level(), top = detect();
    /* only levels this machine runs: lower x86 levels, or scalar */
    if (l < 0 || (top == 3 && l != 0 && l != 3) || (top != 3 && l > top)) return old;
    g_level = l;
    return old;
}

int moe_kern_int8_enabled(void) {
    if (g_int8 < 0) {
        const char *e = getenv("MOE_INT8");
        g_int8 = !(e && !strcmp(e, "0"));
    }
    return g_int8;
}

void moe_kern_set_int8(int on) { g_int8 = on ? 1 : 0; }

const char *moe_kern_simd_name(void) {
    static const char *names[] = {"scalar", "avx2", "avx512vnni", "neon"};
    return names[level()];
}

#define X86_SIMD() (level() == 1 || level() == 2)

float moe_kern_dot(const float *a, const float *b, int64_t n) {
#ifdef MOE_X86
    if (X86_SIMD()) return dot_avx2(a, b, n);
#endif
    return moe_kern_dot_ref(a, b, n);
}

void moe_kern_axpy(float *y, float a, const float *x, int64_t n) {
#ifdef MOE_X86
    if (X86_SIMD()) {
        axpy_avx2(y, a, x, n);
        return;
    }
#endif
    moe_kern_axpy_ref(y, a, x, n);
}

void moe_kern_swiglu(float *x, const float *u, int64_t n) {
#ifdef MOE_X86
    if (level() == 2) {
        swiglu_avx512(x, u, n);
        return;
    }
    if (level() == 1) {
        swiglu_avx2(x, u, n);
        return;
    }
#endif
    moe_kern_swiglu_ref(x, u, n);
}

void moe_kern_dequant_row(int type, const void *src, float *dst, int64_t n) {
#ifdef MOE_X86
    if (X86_SIMD()) {
        switch (type) {
        case MOE_DTYPE_F16: dequant_f16_avx2(src, dst, n); return;
        case MOE_DTYPE_Q8_0: dequant_q8_0_avx2(src, dst, n); return;
        case MOE_DTYPE_BF16: dequant_bf16_avx2(src, dst, n); return;
        case MOE_DTYPE_Q4_K: dequant_q4_k_avx2(src, dst, n); return;
        case MOE_DTYPE_Q5_0: dequant_q5_0_avx2(src, dst, n); return;
        default: break;
        }
    }
#endif
    moe_dtype_dequant_row(type, src, dst, n);
}

void moe_kern_matmul_rows(const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t T,
                          int64_t o0, int64_t o1, float *scratch) {
    const int64_t in = w->in;
#ifdef MOE_X86
    if (level() == 2 && (w->type == MOE_DTYPE_F16 || w->type == MOE_DTYPE_BF16)) {
        half_rows_avx512(w, x, ldx, y, ldy, T, o0, o1);
        return;
    }
    if (level() == 1 && (w->type == MOE_DTYPE_F16 || w->type == MOE_DTYPE_BF16)) {
        half_rows_avx2(w, x, ldx, y, ldy, T, o0, o1);
        return;
    }
#endif
    for (int64_t ob = o0; ob < o1; ob += MOE_KERN_TILE) {
        int64_t oe = ob + MOE_KERN_TILE < o1 ? ob + MOE_KERN_TILE : o1;
        const float *rows[MOE_KERN_TILE];
        for (int64_t o = ob; o < oe; o++) {
            if (w->type == MOE_DTYPE_F32) {
                rows[o - ob] = (const float *)(const void *)(w->data + (size_t)o * w->row_bytes);
            } else {
                float *dst = scratch + (size_t)(o - ob) * (size_t)in;
                moe_kern_dequant_wrow(w, o, dst);
                rows[o - ob] = dst;
            }
        }
#ifdef MOE_X86
        if (level() == 2 && T > 1) { /* the same bits as moe_kern_dot below (one token: a row at a time streams best) */
            f32_rows_avx512(rows, oe - ob, x, ldx, y + ob, ldy, T, in);
            continue;
        }
#endif
        for (int64_t t = 0; t < T; t++) {
            const float *xt = x + t * ldx;
            float *yt = y + t * ldy;
            for (int64_t o = ob; o < oe; o++) yt[o] = moe_kern_dot(rows[o - ob], xt, in);
        }
    }
}

/* ---- sets of products, one pool job ----
 * Cost model for the row split: a tile of MOE_KERN_TILE rows of a product with input length
 * `in` over T tokens costs in·(8 + T) (streaming its weights ≈ 8 token-passes of arithmetic).
 * The cost range [0, C) is cut into chunks of decreasing size (guided: each a 1/(2·threads)
 * share of what is left, down to C/(32·threads), then equal), and threads take them in order
 * from a shared counter: big chunks keep each weight stream long, the small last ones keep the
 * threads finishing together, and a thread the OS preempts on a loaded machine does not hold up
 * the job: the others take its chunks. Results never depend on who takes what: each
 * (row, token) is computed whole by one thread in a fixed order. */
#define MAX_CHUNKS 512
typedef struct {
    const moe_kern_prod *p;
    int n, nq;
    const moe_kern_ws *ws;
    const moe_q8a *xq[MOE_KERN_MAX_PRODS];     /* per product: its activation blocks, NULL = F32 path */
    int64_t start[MOE_KERN_MAX_PRODS + 1];     /* cumulative cost before product k */
    int qp[MOE_KERN_MAX_PRODS];                /* distinct W8A8 inputs: the product that owns each */
    int64_t qrow[MOE_KERN_MAX_PRODS + 1];      /* cumulative token rows of the distinct inputs */
    int64_t n_chunk;
    int64_t bound[MAX_CHUNKS + 1]; /* chunk c covers costs [bound[c], bound[c+1]) */
    _Alignas(64) _Atomic int64_t next_chunk;
} set_job;

static int64_t tile_cost(const moe_kern_prod *p) { return p->w->in * (8 + p->T); }
static int64_t n_tiles(const moe_kern_prod *p) { return (p->w->out + MOE_KERN_TILE - 1) / MOE_KERN_TILE; }
static int64_t cdiv_pos(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

static void set_quant_worker(void *arg, int ith, int nth) {
    set_job *j = arg;
    const int64_t R = j->qrow[j->nq];
    int q = 0;
    for (int64_t r = R * ith / nth; r < R * (ith + 1) / nth; r++) {
        while (r >= j->qrow[q + 1]) q++;
        const moe_kern_prod *p = &j->p[j->qp[q]];
        const int64_t t = r - j->qrow[q];
        moe_kern_quant_act(p->x + t * p->ldx, (moe_q8a *)j->xq[j->qp[q]] + t * (p->w->in / 32), p->w->in);
    }
}

/* tiles of chunk [lo, hi) of the cost range */
static void set_chunk(set_job *j, int64_t lo, int64_t hi, int ith) {
    for (int k = 0; k < j->n; k++) {
        if (j->start[k + 1] <= lo || j->start[k] >= hi) continue;
        const moe_kern_prod *p = &j->p[k];
        const int64_t tc = tile_cost(p), nt = n_tiles(p);
        int64_t k0 = cdiv_pos(lo - j->start[k], tc), k1 = cdiv_pos(hi - j->start[k], tc);
        k1 = k1 < nt ? k1 : nt;
        if (k0 >= k1) continue;
        int64_t o0 = k0 * MOE_KERN_TILE, o1 = k1 * MOE_KERN_TILE < p->w->out ? k1 * MOE_KERN_TILE : p->w->out;
        if (j->xq[k])
            moe_kern_mmq_rows(p->w, j->xq[k], p->T, p->y, p->ldy, o0, o1);
        else
            moe_kern_matmul_rows(p->w, p->x, p->ldx, p->y, p->ldy, p->T, o0, o1,
                                 j->ws->scratch + (size_t)ith * j->ws->per_thread);
    }
}

static void set_worker(void *arg, int ith, int nth) {
    set_job *j = arg;
    const int64_t N = j->n_chunk;
    (void)nth;
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&j->next_chunk, 1, memory_order_relaxed);
        if (c >= N) break;
        set_chunk(j, j->bound[c], j->bound[c + 1], ith);
    }
}

static moe_kern_trace *g_trace;
static int g_trace_tag;
void moe_kern_set_trace(moe_kern_trace *t) { g_trace = t; }
void moe_kern_trace_tag(int tag) { g_trace_tag = tag; }

static void trace_set(moe_kern_trace *t, const moe_kern_prod *p, int n) {
    if (t->overflow || t->n_span + n > t->cap_span || t->n_set >= t->cap_set) {
        t->overflow = 1;
        return;
    }
    for (int k = 0; k < n; k++)
        t->span[t->n_span++] = (moe_kern_span){p[k].w->data, (size_t)p[k].w->out * p[k].w->row_bytes};
    if (t->set_tag) t->set_tag[t->n_set] = g_trace_tag;
    t->set_end[t->n_set++] = t->n_span;
}

/* Runs products [0, n) that fit the workspace together. */
static void run_set(moe_pool *pool, const moe_kern_prod *p, int n, const moe_kern_ws *ws, const int *w8a8) {
    set_job j;
    if (g_trace) trace_set(g_trace, p, n); /* one recorded set per pool job */
    j.p = p;
    j.n = n;
    j.nq = 0;
    j.ws = ws;
    j.start[0] = 0;
    j.qrow[0] = 0;
    size_t used = 0;
    for (int k = 0; k < n; k++) {
        j.xq[k] = NULL;
        if (w8a8[k] && p[k].xq) {
            j.xq[k] = p[k].xq;
        } else if (w8a8[k]) {
            int same = -1;
            for (int q = 0; q < j.nq && same < 0; q++) {
                const moe_kern_prod *o = &p[j.qp[q]];
                if (o->x == p[k].x && o->ldx == p[k].ldx && o->T == p[k].T && o->w->in == p[k].w->in) same = j.qp[q];
            }
            if (same >= 0) {
                j.xq[k] = j.xq[same];
            } else {
                j.xq[k] = ws->xq + used;
                used += (size_t)(p[k].T * (p[k].w->in / 32));
                j.qp[j.nq] = k;
                j.qrow[j.nq + 1] = j.qrow[j.nq] + p[k].T;
                j.nq++;
            }
        }
        j.start[k + 1] = j.start[k] + n_tiles(&p[k]) * tile_cost(&p[k]);
    }
    const int par = pool && moe_pool_n_threads(pool) > 1;
    int64_t qfloats = 0, tiles = 0;
    for (int q = 0; q < j.nq; q++) qfloats += p[j.qp[q]].T * p[j.qp[q]].w->in;
    for (int k = 0; k < n; k++) tiles += n_tiles(&p[k]);
    if (j.nq) {
        if (par && qfloats >= 16384)
            moe_pool_run(pool, set_quant_worker, &j);
        else
            set_quant_worker(&j, 0, 1);
    }
    /* guided chunks (see above); at most one per tile */
    const int64_t C = j.start[n], nth = par ? moe_pool_n_threads(pool) : 1;
    int64_t lim = tiles < MAX_CHUNKS ? tiles : MAX_CHUNKS, floor_c = C / (32 * nth) + 1;
    j.bound[0] = 0;
    j.n_chunk = 0;
    if (!par || lim <= 1) {
        j.bound[++j.n_chunk] = C;
    } else {
        int64_t at = 0;
        while (at < C && j.n_chunk < lim - 1) {
            int64_t step = (C - at) / (2 * nth);
            step = step > floor_c ? step : floor_c;
            at = at + step < C ? at + step : C;
            j.bound[++j.n_chunk] = at;
        }
        if (at < C) j.bound[++j.n_chunk] = C;
    }
    atomic_init(&j.next_chunk, 0);
    /* tiny sets (a router, one small head slice) are not worth a hand-off */
    if (!par || tiles < 2)
        set_worker(&j, 0, 1);
    else
        moe_pool_run(pool, set_worker, &j);
}

void moe_kern_matmul_set(moe_pool *pool, const moe_kern_prod *p, int n, const moe_kern_ws *ws) {
    int w8a8[MOE_KERN_MAX_PRODS];
    const int int8 = ws->xq && moe_kern_int8_enabled();
    while (n > 0) {
        /* the longest prefix whose distinct inputs fit ws->xq (a shared input counts once) */
        int m = 0;
        size_t used = 0;
        for (; m < n && m < MOE_KERN_MAX_PRODS; m++) {
            const moe_kern_prod *q = &p[m];
            size_t need = (size_t)(q->T * (q->w->in / 32));
            int shared = 0;
            for (int k = 0; k < m && !shared; k++)
                shared = w8a8[k] && !p[k].xq && p[k].x == q->x && p[k].ldx == q->ldx && p[k].T == q->T && p[k].w->in == q->w->in;
            w8a8[m] = int8 && moe_kern_mmq_supported(q->w->type) && (q->xq || need <= ws->xq_cap);
            if (w8a8[m] && !shared && !q->xq) {
                if (used + need > ws->xq_cap) break;
                used += need;
            }
        }
        run_set(pool, p, m, ws, w8a8);
        p += m;
        n -= m;
    }
}

void moe_kern_matmul(moe_pool *pool, const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t T, const moe_kern_ws *ws) {
    moe_kern_prod p = {w, x, ldx, y, ldy, T, NULL};
    moe_kern_matmul_set(pool, &p, 1, ws);
}
