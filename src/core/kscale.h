/* moekit core: the 6-bit scales and mins of Q4_K / Q5_K blocks (spec gguf.md §9.6), unpacked
 * once for every reader (internal; dtype conversions, the kernels' refs and SIMD forms).
 *
 * sc = the 12 packed bytes. Sub-block j < 4: scale sc[j] & 63, min sc[j+4] & 63; j >= 4: scale
 * (sc[j+4] & 15) | (sc[j-4] >> 6) << 4, min (sc[j+4] >> 4) | (sc[j] >> 6) << 4. */
#ifndef MOE_KSCALE_H
#define MOE_KSCALE_H

#include <stdint.h>
#include <string.h>

/* sub-block j's scale and min */
static inline void moe_kscale(int j, const uint8_t *sc, int *scale, int *min) {
    if (j < 4) {
        *scale = sc[j] & 63;
        *min = sc[j + 4] & 63;
    } else {
        *scale = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
        *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
    }
}

/* all 8 at once, 4 bytes at a time in registers: byte j of scales[] / mins[] is sub-block j's
 * (little-endian words; the SIMD kernels widen them without a store-to-load round trip) */
static inline void moe_kscale8(const uint8_t *sc, uint32_t scales[2], uint32_t mins[2]) {
    uint32_t w0, w1, w2;
    memcpy(&w0, sc, 4);
    memcpy(&w1, sc + 4, 4);
    memcpy(&w2, sc + 8, 4);
    scales[0] = w0 & 0x3f3f3f3fu;
    scales[1] = (w2 & 0x0f0f0f0fu) | ((w0 >> 2) & 0x30303030u);
    mins[0] = w1 & 0x3f3f3f3fu;
    mins[1] = ((w2 >> 4) & 0x0f0f0f0fu) | ((w1 >> 2) & 0x30303030u);
}

#endif
