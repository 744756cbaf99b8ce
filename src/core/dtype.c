/* moekit core: element types, scalar float conversions, row (de)quantization.
 *
 * Bit behaviour follows ggml's reference code as written down in spec gguf.md §8–9:
 * F16 and BF16 conversions round to nearest even; Q8_0 and Q4_0 quantization reproduce
 * quantize_row_q8_0_ref / quantize_row_q4_0_ref exactly. Dequantization is exact (one binary32 multiply per value
 * for Q8_0). These are the scalar reference paths; SIMD paths in kern/cpu are tested
 * against them. */
#include <float.h>
#include <math.h>
#include <string.h>
#include <strings.h>

#include "core/bits.h"
#include "core/kscale.h"
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
                int a, m;
                moe_kscale(2 * g, sc, &a, &m);
                float d1 = d * a, m1 = dmin * m;
                moe_kscale(2 * g + 1, sc, &a, &m);
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

/* ---- quantizers beyond Q8_0/Q4_0 (ggml-quants.c reference paths, no importance matrix) ---- */

/* ggml's nearest_int: round to nearest, ties to even, by the 1.5·2^23 trick. The input is
 * clamped first so hostile values (inf, NaN, huge) cannot reach the bit trick's undefined range. */
static inline int nearest_int(float fval) {
    if (!(fval > -4194303.0f)) fval = -4194303.0f; /* also maps NaN */
    if (fval > 4194303.0f) fval = 4194303.0f;
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* make_qkx2_quants (ggml-quants.c): asymmetric n-element quantization to 0..nmax with a
 * weighted least-squares refinement of (scale, min) over nstep+1 candidate scales.
 * Returns the scale; *the_min receives -min (>= 0). */
static float make_qkx2_quants(int n, int nmax, const float *restrict x, const float *restrict weights,
                              uint8_t *restrict L, float *restrict the_min, uint8_t *restrict Laux, float rmin,
                              float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* quantize_row_q4_K_ref: per 32-element sub-block make_qkx2_quants(nmax 15, weights
 * sqrt(mean x²) + |x|, rmin -1, rdelta 0.1, 20 steps); the 8 scales and mins are quantized to
 * 6 bits against d = max_scale/63 and dmin = max_min/63 (F16), then every value is re-quantized
 * with the rounded sub-block scale and min. Layout: spec gguf.md §9.6–9.7.
 * five = 1: quantize_row_q5_K_ref, the same with nmax 31 (rmin -0.5, 15 steps); value l of
 * sub-block j keeps its low 4 bits in the qs nibble and its fifth bit as bit j of qh[l]. */
static void quant_qk_block(const float *restrict x, uint8_t *restrict y, int five) {
    const int nmax = five ? 31 : 15;
    uint8_t L[256], Laux[32], *scl = y + 4, *q = y + (five ? 48 : 16), *qh = y + 16;
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = five ? make_qkx2_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 0)
                         : make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scl[j] = ls;
            scl[j + 4] = lm;
        } else {
            scl[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scl[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scl[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    uint16_t hd = moe_f32_to_f16(max_scale / 63.f), hm = moe_f32_to_f16(max_min / 63.f);
    y[0] = (uint8_t)hd;
    y[1] = (uint8_t)(hd >> 8);
    y[2] = (uint8_t)hm;
    y[3] = (uint8_t)(hm >> 8);
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        moe_kscale(j, scl, &sc, &m);
        const float d = moe_f16_to_f32(hd) * sc;
        if (!d) continue;
        const float dm = moe_f16_to_f32(hm) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        }
    }
    if (five) memset(qh, 0, 32);
    for (int j = 0; j < 256; j += 64) {
        for (int l = 0; l < 32; ++l) {
            const int a = L[j + l], b = L[j + l + 32];
            q[l] = (uint8_t)((a & 15) | ((b & 15) << 4));
            if (five) qh[l] |= (uint8_t)(((a >> 4) << (j / 32)) | ((b >> 4) << (j / 32 + 1)));
        }
        q += 32;
    }
}

/* quantize_row_q5_0_ref (spec gguf.md §9.4): the signed value of largest magnitude maps to -16;
 * q = min(31, (int8)(x*id + 16.5f)); low nibbles in qs, fifth bits in qh (element j -> bit j). */
static void quant_q5_0_block(const float *restrict x, uint8_t *restrict y) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    float d = max / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = moe_f32_to_f16(d);
    y[0] = (uint8_t)h;
    y[1] = (uint8_t)(h >> 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        int8_t a = (int8_t)(x[j] * id + 16.5f), b = (int8_t)(x[16 + j] * id + 16.5f);
        uint8_t xi0 = (uint8_t)(a < 31 ? a : 31), xi1 = (uint8_t)(b < 31 ? b : 31);
        y[6 + j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    y[2] = (uint8_t)qh;
    y[3] = (uint8_t)(qh >> 8);
    y[4] = (uint8_t)(qh >> 16);
    y[5] = (uint8_t)(qh >> 24);
}

/* quantize_row_q5_1_ref: d = (max − min)/31 and m = min (F16); q = (uint8)((x − min)·(1/d) + 0.5),
 * low nibbles in qs, fifth bits in qh (element j -> bit j). */
static void quant_q5_1_block(const float *restrict x, uint8_t *restrict y) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
    const uint16_t hd = moe_f32_to_f16(d), hm = moe_f32_to_f16(min);
    y[0] = (uint8_t)hd;
    y[1] = (uint8_t)(hd >> 8);
    y[2] = (uint8_t)hm;
    y[3] = (uint8_t)(hm >> 8);
    uint32_t qh = 0;
    for (int j = 0; j < 16; ++j) {
        const uint8_t xi0 = (uint8_t)((x[j] - min) * id + 0.5f), xi1 = (uint8_t)((x[16 + j] - min) * id + 0.5f);
        y[8 + j] = (uint8_t)((xi0 & 0x0F) | ((xi1 & 0x0F) << 4));
        qh |= ((xi0 & 0x10u) >> 4) << (j + 0);
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    for (int k = 0; k < 4; k++) y[4 + k] = (uint8_t)(qh >> (8 * k));
}

/* Q6_K (spec gguf.md: ql[128] low 4 bits, qh[64] high 2 bits, 16 int8 scales, F16 d; value =
 * d·sc·(u − 32)). moekit's own quantizer, no search: each 16-value sub-block's scale maps its
 * signed value of largest magnitude to −32 (the code's widest end); the 16 scales are stored as
 * int8 against d = (signed largest scale)/−128, and every value is re-quantized against the
 * stored d·sc, rounded to nearest and clamped to [−32, 31]. */
static void quant_q6_k_block(const float *restrict x, uint8_t *restrict y) {
    float sc[16], smax = 0.0f, samax = 0.0f;
    for (int i = 0; i < 16; i++) {
        float amax = 0.0f, max = 0.0f;
        for (int l = 0; l < 16; l++)
            if (fabsf(x[16 * i + l]) > amax) {
                amax = fabsf(x[16 * i + l]);
                max = x[16 * i + l];
            }
        sc[i] = max / -32.0f;
        if (fabsf(sc[i]) > samax) {
            samax = fabsf(sc[i]);
            smax = sc[i];
        }
    }
    const float d = smax / -128.0f;
    const uint16_t h = moe_f32_to_f16(d);
    const float dq = moe_f16_to_f32(h), id = d != 0.0f ? 1.0f / d : 0.0f;
    int8_t *scales = (int8_t *)(y + 192);
    uint8_t u[256];
    for (int i = 0; i < 16; i++) {
        int q = nearest_int(sc[i] * id);
        scales[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
        const float e = dq * (float)scales[i], ie = e != 0.0f ? 1.0f / e : 0.0f;
        for (int l = 0; l < 16; l++) {
            int v = nearest_int(x[16 * i + l] * ie);
            v = v < -32 ? -32 : v > 31 ? 31 : v;
            u[16 * i + l] = (uint8_t)(v + 32);
        }
    }
    uint8_t *ql = y, *qh = y + 128;
    memset(y, 0, 192);
    for (int n = 0; n < 2; n++)
        for (int m = 0; m < 4; m++)
            for (int l = 0; l < 32; l++) {
                const uint8_t v = u[128 * n + 32 * m + l];
                ql[64 * n + 32 * (m & 1) + l] |= (uint8_t)((v & 15) << (4 * (m >> 1)));
                qh[32 * n + l] |= (uint8_t)((v >> 4) << (2 * m));
            }
    y[208] = (uint8_t)h;
    y[209] = (uint8_t)(h >> 8);
}

static void quant_q4_k_block(const float *restrict x, uint8_t *restrict y) { quant_qk_block(x, y, 0); }
static void quant_q5_k_block(const float *restrict x, uint8_t *restrict y) { quant_qk_block(x, y, 1); }

/* n values of a block type, block by block (n a multiple of the block size) */
static int quant_blocks(const float *src, uint8_t *d8, int64_t n, int type, void (*block)(const float *, uint8_t *)) {
    const int64_t bs = moe_dtype_block_size(type);
    const size_t bb = moe_dtype_row_bytes(type, bs);
    if (n % bs) return MOE_ERR_INVAL;
    for (int64_t b = 0; b < n / bs; b++) block(src + b * bs, d8 + (size_t)b * bb);
    return 0;
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
    case MOE_DTYPE_Q5_0: return quant_blocks(src, d8, n, type, quant_q5_0_block);
    case MOE_DTYPE_Q5_1: return quant_blocks(src, d8, n, type, quant_q5_1_block);
    case MOE_DTYPE_Q4_K: return quant_blocks(src, d8, n, type, quant_q4_k_block);
    case MOE_DTYPE_Q5_K: return quant_blocks(src, d8, n, type, quant_q5_k_block);
    case MOE_DTYPE_Q6_K: return quant_blocks(src, d8, n, type, quant_q6_k_block);
    default: return MOE_ERR_UNSUPPORTED;
    }
}
