/* moekit core: element types, scalar float conversions, row (de)quantization.
 *
 * Bit behaviour follows ggml's reference code as written down in spec gguf.md §8–9:
 * F16 and BF16 conversions round to nearest even; Q8_0 and Q4_0 quantization reproduce
 * quantize_row_q8_0_ref / quantize_row_q4_0_ref exactly. Dequantization is exact (one binary32 multiply per value
 * for Q8_0). These are the scalar reference paths; SIMD paths in kern/cpu are tested
 * against them. */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "moe/dtype.h"
#include "moe/status.h"

typedef struct {
    const char *name;
    int64_t blck;
    size_t bytes;
    int supported;
} dtype_info;

static const dtype_info k_info[MOE_DTYPE_COUNT] = {
    [MOE_DTYPE_F32] = {"f32", 1, 4, 1},     [MOE_DTYPE_F16] = {"f16", 1, 2, 1},
    [MOE_DTYPE_Q4_0] = {"q4_0", 32, 18, 1}, [MOE_DTYPE_Q4_1] = {"q4_1", 32, 20, 1},
    [MOE_DTYPE_Q5_0] = {"q5_0", 32, 22, 1}, [MOE_DTYPE_Q5_1] = {"q5_1", 32, 24, 1},
    [MOE_DTYPE_Q8_0] = {"q8_0", 32, 34, 1}, [MOE_DTYPE_Q8_1] = {"q8_1", 32, 36, 0},
    [MOE_DTYPE_Q2_K] = {"q2_k", 256, 84, 0}, [MOE_DTYPE_Q3_K] = {"q3_k", 256, 110, 0},
    [MOE_DTYPE_Q4_K] = {"q4_k", 256, 144, 1}, [MOE_DTYPE_Q5_K] = {"q5_k", 256, 176, 1},
    [MOE_DTYPE_Q6_K] = {"q6_k", 256, 210, 1}, [MOE_DTYPE_Q8_K] = {"q8_k", 256, 292, 0},
    [16] = {"iq2_xxs", 256, 66, 0},          [17] = {"iq2_xs", 256, 74, 0},
    [18] = {"iq3_xxs", 256, 98, 0},          [19] = {"iq1_s", 256, 50, 0},
    [20] = {"iq4_nl", 32, 18, 0},            [21] = {"iq3_s", 256, 110, 0},
    [22] = {"iq2_s", 256, 82, 0},            [23] = {"iq4_xs", 256, 136, 0},
    [MOE_DTYPE_I8] = {"i8", 1, 1, 0},        [MOE_DTYPE_I16] = {"i16", 1, 2, 0},
    [MOE_DTYPE_I32] = {"i32", 1, 4, 0},      [MOE_DTYPE_I64] = {"i64", 1, 8, 0},
    [MOE_DTYPE_F64] = {"f64", 1, 8, 0},      [29] = {"iq1_m", 256, 56, 0},
    [MOE_DTYPE_BF16] = {"bf16", 1, 2, 1},    [34] = {"tq1_0", 256, 54, 0},
    [35] = {"tq2_0", 256, 66, 0},            [39] = {"mxfp4", 32, 17, 0},
    [40] = {"nvfp4", 64, 36, 0},             [41] = {"q1_0", 128, 18, 0},
    [42] = {"q2_0", 64, 18, 0},
};

static const dtype_info *info(int type) {
    if (type < 0 || type >= MOE_DTYPE_COUNT || !k_info[type].name) return NULL;
    return &k_info[type];
}

int64_t moe_dtype_block_size(int type) { return info(type) ? info(type)->blck : 0; }
size_t moe_dtype_block_bytes(int type) { return info(type) ? info(type)->bytes : 0; }
const char *moe_dtype_name(int type) { return info(type) ? info(type)->name : NULL; }
int moe_dtype_supported(int type) { return info(type) ? info(type)->supported : 0; }

int moe_dtype_from_name(const char *name) {
    for (int t = 0; t < MOE_DTYPE_COUNT; t++)
        if (k_info[t].name && strcasecmp(k_info[t].name, name) == 0) return t;
    return -1;
}

size_t moe_dtype_row_bytes(int type, int64_t n) {
    const dtype_info *in = info(type);
    if (!in || n < 0 || n % in->blck) return 0;
    return (size_t)(n / in->blck) * in->bytes;
}

/* ---- scalar conversions ---- */

static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float moe_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: man * 2^-24, exact in binary32 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t moe_f32_to_f16(float f) {
    uint32_t u = f2u(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00; /* NaN -> quiet */
    if (a >= 0x477ff000u) return sign | 0x7c00; /* rounds to >= 65520 -> inf */
    if (a < 0x38800000u) {
        /* result is subnormal (or zero): round a * 2^24 to nearest even integer */
        if (a < 0x33000000u) return sign; /* < 2^-25: rounds to 0 */
        uint32_t e = a >> 23, m = (a & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e; /* value = m * 2^(e-150); want m*2^(e-150+24) */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return sign | (uint16_t)q;
    }
    /* normal: rebias exponent, round mantissa to 10 bits, ties to even */
    uint32_t r = a + 0xfffu + ((a >> 13) & 1);
    r -= 0x38000000u; /* exponent bias 127 -> 15 */
    return sign | (uint16_t)(r >> 13);
}

float moe_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t moe_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* ---- rows ---- */

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline void k_scale_min(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    /* spec gguf.md §9.6 */
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

int moe_dtype_dequant_row(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch (type) {
    case MOE_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return 0;
    case MOE_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = moe_f16_to_f32(rd16(s + 2 * i));
        return 0;
    case MOE_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = moe_bf16_to_f32(rd16(s + 2 * i));
        return 0;
    case MOE_DTYPE_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, s += 34) {
            float d = moe_f16_to_f32(rd16(s));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = (float)(int8_t)s[2 + j] * d;
        }
        return 0;
    case MOE_DTYPE_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, s += 18) {
            float d = moe_f16_to_f32(rd16(s));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = (float)((s[2 + j] & 0xF) - 8) * d;
                dst[b * 32 + j + 16] = (float)((s[2 + j] >> 4) - 8) * d;
            }
        }
        return 0;
    case MOE_DTYPE_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, s += 20) {
            float d = moe_f16_to_f32(rd16(s)), m = moe_f16_to_f32(rd16(s + 2));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = (float)(s[4 + j] & 0xF) * d + m;
                dst[b * 32 + j + 16] = (float)(s[4 + j] >> 4) * d + m;
            }
        }
        return 0;
    case MOE_DTYPE_Q5_0:
    case MOE_DTYPE_Q5_1: {
        int has_m = type == MOE_DTYPE_Q5_1;
        size_t bb = has_m ? 24 : 22;
        for (int64_t b = 0; b < n / 32; b++, s += bb) {
            float d = moe_f16_to_f32(rd16(s)), m = has_m ? moe_f16_to_f32(rd16(s + 2)) : 0.0f;
            const uint8_t *qh = s + (has_m ? 4 : 2), *qs = qh + 4;
            uint32_t h = (uint32_t)qh[0] | ((uint32_t)qh[1] << 8) | ((uint32_t)qh[2] << 16) |
                         ((uint32_t)qh[3] << 24);
            for (int j = 0; j < 16; j++) {
                int q0 = (qs[j] & 0xF) | (((h >> j) & 1) << 4);
                int q1 = (qs[j] >> 4) | (((h >> (j + 16)) & 1) << 4);
                if (has_m) {
                    dst[b * 32 + j] = (float)q0 * d + m;
                    dst[b * 32 + j + 16] = (float)q1 * d + m;
                } else {
                    dst[b * 32 + j] = (float)(q0 - 16) * d;
                    dst[b * 32 + j + 16] = (float)(q1 - 16) * d;
                }
            }
        }
        return 0;
    }
    case MOE_DTYPE_Q4_K:
    case MOE_DTYPE_Q5_K: {
        int five = type == MOE_DTYPE_Q5_K;
        size_t bb = five ? 176 : 144;
        for (int64_t b = 0; b < n / 256; b++, s += bb) {
            float d = moe_f16_to_f32(rd16(s)), dmin = moe_f16_to_f32(rd16(s + 2));
            const uint8_t *sc = s + 4, *qh = s + 16, *qs = five ? s + 48 : s + 16;
            float *y = dst + b * 256;
            for (int g = 0; g < 4; g++) {
                uint8_t a, m;
                k_scale_min(2 * g, sc, &a, &m);
                float d1 = d * a, m1 = dmin * m;
                k_scale_min(2 * g + 1, sc, &a, &m);
                float d2 = d * a, m2 = dmin * m;
                uint8_t u1 = (uint8_t)(1u << (2 * g)), u2 = (uint8_t)(2u << (2 * g));
                for (int l = 0; l < 32; l++) {
                    int lo = qs[32 * g + l] & 0xF, hi = qs[32 * g + l] >> 4;
                    if (five) {
                        lo += (qh[l] & u1) ? 16 : 0;
                        hi += (qh[l] & u2) ? 16 : 0;
                    }
                    y[64 * g + l] = d1 * (float)lo - m1;
                    y[64 * g + 32 + l] = d2 * (float)hi - m2;
                }
            }
        }
        return 0;
    }
    case MOE_DTYPE_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, s += 210) {
            float d = moe_f16_to_f32(rd16(s + 208));
            for (int half = 0; half < 2; half++) {
                const uint8_t *ql = s + 64 * half, *qh = s + 128 + 32 * half;
                const int8_t *sc = (const int8_t *)(s + 192 + 8 * half);
                float *y = dst + b * 256 + 128 * half;
                for (int l = 0; l < 32; l++) {
                    int i = l / 16;
                    int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * sc[i + 0] * q1;
                    y[l + 32] = d * sc[i + 2] * q2;
                    y[l + 64] = d * sc[i + 4] * q3;
                    y[l + 96] = d * sc[i + 6] * q4;
                }
            }
        }
        return 0;
    default: return MOE_ERR_UNSUPPORTED;
    }
}

int moe_dtype_quant_row(int type, const float *src, void *dst, int64_t n) {
    uint8_t *d8 = dst;
    switch (type) {
    case MOE_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); return 0;
    case MOE_DTYPE_F16:
    case MOE_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = type == MOE_DTYPE_F16 ? moe_f32_to_f16(src[i]) : moe_f32_to_bf16(src[i]);
            d8[2 * i] = (uint8_t)h;
            d8[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    case MOE_DTYPE_Q8_0:
        if (n % 32) return MOE_ERR_INVAL;
        for (int64_t b = 0; b < n / 32; b++, d8 += 34) {
            const float *x = src + b * 32;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t h = moe_f32_to_f16(d);
            d8[0] = (uint8_t)h;
            d8[1] = (uint8_t)(h >> 8);
            for (int j = 0; j < 32; j++) d8[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        }
        return 0;
    case MOE_DTYPE_Q4_0:
        /* quantize_row_q4_0_ref (spec gguf.md §9.2): the signed value of largest magnitude (first
         * one on ties) maps to -8; q = min(15, (int8)(x*id + 8.5f)), truncation toward zero. */
        if (n % 32) return MOE_ERR_INVAL;
        for (int64_t b = 0; b < n / 32; b++, d8 += 18) {
            const float *x = src + b * 32;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < 32; j++) {
                if (amax < fabsf(x[j])) {
                    amax = fabsf(x[j]);
                    max = x[j];
                }
            }
            float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            uint16_t h = moe_f32_to_f16(d);
            d8[0] = (uint8_t)h;
            d8[1] = (uint8_t)(h >> 8);
            for (int j = 0; j < 16; j++) {
                int8_t q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
                uint8_t u0 = (uint8_t)(q0 < 15 ? q0 : 15), u1 = (uint8_t)(q1 < 15 ? q1 : 15);
                d8[2 + j] = (uint8_t)(u0 | (u1 << 4));
            }
        }
        return 0;
    default: return MOE_ERR_UNSUPPORTED;
    }
}
