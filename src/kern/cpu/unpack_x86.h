/* moekit kernels, x86 internal: the 4- and 5-bit block values as 32 unsigned bytes in element
 * order, shared by the W8A8 kernels (kern_q8.c) and the dequantization (kern_cpu.c). */
#ifndef MOE_KERN_UNPACK_X86_H
#define MOE_KERN_UNPACK_X86_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* Unpack a Q4_0 block's 16 bytes to 32 u8 nibbles in element order. */
__attribute__((target("avx2"))) static inline __m256i q4_unpack(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

/* Unpack a Q5_0 block (d, qh[4], qs[16]) to 32 u8 values 0..31 in element order: the nibbles as
 * Q4_0, plus 16 where bit j of qh is set (element j) */
__attribute__((target("avx2"))) static inline __m256i q5_unpack(const uint8_t *blk) {
    uint32_t h;
    memcpy(&h, blk + 2, 4);
    const __m256i sel = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
                                         3, 3, 3, 3);
    const __m256i bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i hb = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), sel);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, bits), bits);
    return _mm256_or_si256(q4_unpack(blk + 6), _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
}

#endif
