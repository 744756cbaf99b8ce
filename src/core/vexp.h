/* moekit core: one polynomial exp for x in [VEXP_MIN, 0], as a scalar and as AVX2 / AVX-512
 * vectors that perform the same operations in the same order, so every form gives the same bits
 * (internal; the sampler's weights and the kernels' SwiGLU).
 *
 * x = n·ln2 + r with n = round(x·log2 e) (the 1.5·2^23 shifter) and r split over a two-part
 * ln 2; e^r ≈ 1 + r + r²·P(r) with a degree-5 P; the result is scaled by 2^n built in the
 * exponent field. Error about 1 ulp on the range; callers map inputs below VEXP_MIN to 0. */
#ifndef MOE_VEXP_H
#define MOE_VEXP_H

#include <math.h>

#include "core/bits.h"

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF /* the scalar a*b+c must stay two roundings, as in the vector forms */
#endif

#define VEXP_MIN -87.0f /* e^-87 = 1.6e-38: below it the float normal range ends (1.2e-38) */

static const float C_L2E = 1.44269504088896341f, C_MAGIC = 12582912.0f; /* 1.5 · 2^23 */
static const float C_LN2_HI = 0.693359375f, C_LN2_LO = -2.12194440e-4f;
static const float C_P0 = 1.9875691500e-4f, C_P1 = 1.3981999507e-3f, C_P2 = 8.3334519073e-3f,
                   C_P3 = 4.1665795894e-2f, C_P4 = 1.6666665459e-1f, C_P5 = 5.0000001201e-1f;
#define MAGIC_BITS 0x4b400000 /* bits of C_MAGIC */

/* exp(x) for VEXP_MIN <= x <= 0, the operations of the vector forms one by one */
static inline float vexp_ref(float x) {
    float t = fmaf(x, C_L2E, C_MAGIC);
    float n = t - C_MAGIC;
    float r = fmaf(n, -C_LN2_HI, x);
    r = fmaf(n, -C_LN2_LO, r);
    float p = fmaf(C_P0, r, C_P1);
    p = fmaf(p, r, C_P2);
    p = fmaf(p, r, C_P3);
    p = fmaf(p, r, C_P4);
    p = fmaf(p, r, C_P5);
    float r2 = r * r;
    p = fmaf(p, r2, r);
    p = p + 1.0f;
    return p * u2f((f2u(t) - (MAGIC_BITS - 127)) << 23);
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx512f"))) static inline __m512 vexp16(__m512 x) {
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(C_L2E), _mm512_set1_ps(C_MAGIC));
    __m512 n = _mm512_sub_ps(t, _mm512_set1_ps(C_MAGIC));
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C_LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-C_LN2_LO), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(C_P0), r, _mm512_set1_ps(C_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(C_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
    p = _mm512_add_ps(p, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(MAGIC_BITS - 127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

__attribute__((target("avx2,fma"))) static inline __m256 vexp8(__m256 x) {
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(C_L2E), _mm256_set1_ps(C_MAGIC));
    __m256 n = _mm256_sub_ps(t, _mm256_set1_ps(C_MAGIC));
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-C_LN2_LO), r);
    __m256 p = _mm256_fmadd_ps(_mm256_set1_ps(C_P0), r, _mm256_set1_ps(C_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(C_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(MAGIC_BITS - 127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

#endif
