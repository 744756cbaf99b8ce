/* moekit kernels, scalar reference forms. These are the specification the SIMD forms are
 * tested against; they stay forever. The dot product sums in 8 interleaved lanes and then
 * pairwise, the same order the AVX2 form uses, so both give bit-identical results. W8A8: activations to 32-value int8
 * blocks (moe_q8a), exact integer block dots, blocks accumulated in order with one fmaf each. */
#include <math.h>
#include <string.h>

#include "core/kscale.h"
#include "core/vexp.h"
#include "kern/kern.h"
#include "moe/dtype.h"

float moe_kern_dot_ref(const float *a, const float *b, int64_t n) {
    float acc[32] = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k++) acc[k] = fmaf(a[i + k], b[i + k], acc[k]);
    /* reduce 4 vectors of 8 lanes: (v0+v1)+(v2+v3), then lanes pairwise */
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = (acc[k] + acc[8 + k]) + (acc[16 + k] + acc[24 + k]);
    float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

void moe_kern_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

void moe_kern_softmax(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void moe_kern_swiglu_ref(float *x, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = x[i], m = -fabsf(g), e = m >= VEXP_MIN ? vexp_ref(m) : 0.0f; /* NaN: e = 0 */
        x[i] = (g >= 0.0f ? g : g * e) / (1.0f + e) * u[i];
    }
}

void moe_kern_axpy_ref(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

/* ---- MLA attention (kern.h) ---- */

void moe_kern_mla_attn_ref(const float *q, int64_t ldq, int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W,
                           int64_t n, int64_t Lkv, float scale, float *scratch, float *u, int64_t ldu) {
    float *s = scratch;
    for (int h = 0; h < hn; h++) {
        const float *qh = q + h * ldq;
        float mx = -INFINITY;
        for (int64_t k = 0; k < n; k++) {
            float acc = 0.0f;
            for (int64_t w = 0; w < W; w++) acc = fmaf(moe_kv_row(cache, ldc, bs, k)[w], qh[w], acc);
            s[k] = acc * scale;
            mx = s[k] > mx ? s[k] : mx;
        }
        double sum = 0.0;
        for (int64_t k = 0; k < n; k++) {
            const float x = s[k] - mx; /* ≤ 0: core/vexp.h's exp, 0 below VEXP_MIN (and for NaN) */
            s[k] = x >= VEXP_MIN ? vexp_ref(x) : 0.0f;
            sum += s[k];
        }
        float inv = (float)(1.0 / sum), *uh = u + h * ldu;
        for (int64_t c = 0; c < Lkv; c++) uh[c] = 0.0f;
        for (int64_t k = 0; k < n; k++) {
            float p = s[k] * inv;
            for (int64_t c = 0; c < Lkv; c++) uh[c] = fmaf(p, moe_kv_row(cache, ldc, bs, k)[c], uh[c]);
        }
    }
}

/* ---- W8A8 ---- */

void moe_kern_quant_act_ref(const float *x, moe_q8a *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, y++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        if (amax < MOE_Q8A_MIN) amax = 0.0f; /* 127/amax would overflow: the block is zero */
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        int32_t s = 0;
        y->d = amax / 127.0f;
        for (int j = 0; j < 32; j++) {
            int32_t q = (int32_t)rintf(x[j] * id); /* round to nearest even, as cvtps2dq */
            y->q[j] = (int8_t)q;
            s += q;
        }
        y->s = s;
    }
}

static float f16(const uint8_t *p) { return moe_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* integer dot of one weight block with one activation block */
static int32_t idot_q8_0(const uint8_t *wb, const moe_q8a *a) {
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += (int32_t)(int8_t)wb[2 + j] * a->q[j];
    return s;
}

static int32_t idot_q5_0(const uint8_t *wb, const moe_q8a *a) {
    const uint32_t h = (uint32_t)wb[2] | (uint32_t)wb[3] << 8 | (uint32_t)wb[4] << 16 | (uint32_t)wb[5] << 24;
    int32_t s = 0;
    for (int j = 0; j < 16; j++) {
        s += ((int)((wb[6 + j] & 0x0F) | ((h >> j) & 1) << 4) - 16) * a->q[j];
        s += ((int)((wb[6 + j] >> 4) | ((h >> (j + 16)) & 1) << 4) - 16) * a->q[j + 16];
    }
    return s;
}

/* Q5_1: unsigned 5-bit values (d at 0, m at 2, qh at 4, qs at 8) */
static int32_t idot_q5_1(const uint8_t *wb, const moe_q8a *a) {
    const uint32_t h = (uint32_t)wb[4] | (uint32_t)wb[5] << 8 | (uint32_t)wb[6] << 16 | (uint32_t)wb[7] << 24;
    int32_t s = 0;
    for (int j = 0; j < 16; j++) {
        s += (int)((wb[8 + j] & 0x0F) | ((h >> j) & 1) << 4) * a->q[j];
        s += (int)((wb[8 + j] >> 4) | ((h >> (j + 16)) & 1) << 4) * a->q[j + 16];
    }
    return s;
}

static int32_t idot_q4_0(const uint8_t *wb, const moe_q8a *a) {
    int32_t s = 0;
    for (int j = 0; j < 16; j++) {
        s += ((wb[2 + j] & 0x0F) - 8) * a->q[j];
        s += ((wb[2 + j] >> 4) - 8) * a->q[j + 16];
    }
    return s;
}

int moe_kern_mmq_supported(int type) {
    return type == MOE_DTYPE_Q8_0 || type == MOE_DTYPE_Q4_0 || type == MOE_DTYPE_Q5_0 || type == MOE_KTYPE_Q8_0_R16 ||
           type == MOE_DTYPE_Q4_K || type == MOE_KTYPE_Q4_K_R16 || type == MOE_KTYPE_Q5_0_R16 || type == MOE_DTYPE_Q5_K ||
           type == MOE_DTYPE_Q6_K || type == MOE_KTYPE_Q6_K_R16 || type == MOE_KTYPE_Q5_K_R16 || type == MOE_DTYPE_Q5_1 ||
           type == MOE_KTYPE_Q5_1_R16 || type == MOE_KTYPE_Q4_0_R16;
}

/* Q4_K row · activation blocks (kern.h): sub-block j of a 256-value block (6-bit scale sc,
 * min m, spec gguf.md §9.6-9.7) against activation block 8·sb + j:
 *   acc[j] = fmaf(idot, (d·sc)·dx, acc[j]); acc[j] = fmaf(Σq, −((dmin·m)·dx), acc[j])
 * one running sum per sub-block position j, then ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
/* one 256-value block of Q4_K (five = 0) or Q5_K (five = 1: the nibble plus bit j of qh[l] as 16) */
void moe_kern_qk_block_fma(const uint8_t *blk, const moe_q8a *a, const int32_t idot[8], float acc[8]) {
    const uint8_t *sc = blk + 4;
    const float d = f16(blk), dmin = f16(blk + 2);
    for (int j = 0; j < 8; j++) {
        int scj, mj;
        moe_kscale(j, sc, &scj, &mj);
        const moe_q8a *x = a + j;
        const float d1 = d * (float)scj, m1 = dmin * (float)mj;
        acc[j] = fmaf((float)idot[j], d1 * x->d, acc[j]);
        acc[j] = fmaf((float)x->s, -(m1 * x->d), acc[j]);
    }
}

static void qk_block_acc(const uint8_t *blk, const moe_q8a *a, float acc[8], int five) {
    const uint8_t *qh = blk + 16;
    int32_t idot[8];
    for (int j = 0; j < 8; j++) {
        const uint8_t *q = blk + (five ? 48 : 16) + 32 * (j / 2);
        const int sh = 4 * (j & 1);
        const moe_q8a *x = a + j;
        idot[j] = 0;
        for (int l = 0; l < 32; l++) idot[j] += (((q[l] >> sh) & 15) | (five ? ((qh[l] >> j) & 1) << 4 : 0)) * x->q[l];
    }
    moe_kern_qk_block_fma(blk, a, idot, acc);
}

float moe_kern_ksum_tree(const float acc[8]) {
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

float moe_kern_q4k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb) {
    float acc[8] = {0};
    for (int64_t sb = 0; sb < nsb; sb++) qk_block_acc(row + (size_t)sb * 144, a + sb * 8, acc, 0);
    return moe_kern_ksum_tree(acc);
}

float moe_kern_q5k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb) {
    float acc[8] = {0};
    for (int64_t sb = 0; sb < nsb; sb++) qk_block_acc(row + (size_t)sb * 176, a + sb * 8, acc, 1);
    return moe_kern_ksum_tree(acc);
}

/* Q6_K row · activation blocks (kern.h): one 256-value block into the 8 running sums */
void moe_kern_q6k_block_fma(const uint8_t *blk, const moe_q8a *a, const int32_t isum[8], float acc[8]) {
    const float d = f16(blk + 208);
    for (int j = 0; j < 8; j++) acc[j] = fmaf((float)isum[j], d * a[j].d, acc[j]);
}

static void q6k_block_acc(const uint8_t *blk, const moe_q8a *a, float acc[8]) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    int32_t is[8];
    for (int j = 0; j < 8; j++) {
        const int n = j / 4, m = j % 4;
        const moe_q8a *x = a + j;
        int32_t i0 = 0, i1 = 0;
        for (int l = 0; l < 32; l++) {
            const int u = ((ql[64 * n + 32 * (m & 1) + l] >> (4 * (m >> 1))) & 15) | ((qh[32 * n + l] >> (2 * m)) & 3) << 4;
            if (l < 16)
                i0 += (u - 32) * x->q[l];
            else
                i1 += (u - 32) * x->q[l];
        }
        is[j] = sc[8 * n + 2 * m] * i0 + sc[8 * n + 2 * m + 1] * i1;
    }
    moe_kern_q6k_block_fma(blk, a, is, acc);
}

float moe_kern_q6k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb) {
    float acc[8] = {0};
    for (int64_t sb = 0; sb < nsb; sb++) q6k_block_acc(row + (size_t)sb * 210, a + sb * 8, acc);
    return moe_kern_ksum_tree(acc);
}

/* ---- the R16 layout (kern.h) ---- */

int moe_kern_can_repack(int type, int64_t in, int64_t out) {
    const int64_t blk = type == MOE_DTYPE_Q8_0 || type == MOE_DTYPE_Q4_0 || type == MOE_DTYPE_Q5_0 || type == MOE_DTYPE_Q5_1 ? 32 : type == MOE_DTYPE_Q4_K || type == MOE_DTYPE_Q5_K || type == MOE_DTYPE_Q6_K ? 256 : 0;
    return blk && in > 0 && in % blk == 0 && out > 0 && out % 16 == 0;
}

/* Q4_K (five = 0) or Q5_K (five = 1: the qs after 32 bytes of qh, the qh columns after the nibbles) */
static void repack_qk_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1, uint8_t *dst,
                          int five) {
    const int64_t nsb = in / 256;
    const size_t bs = five ? MOE_Q5K_R16_BLOCK : MOE_Q4K_R16_BLOCK, fb = five ? 176 : 144;
    for (int64_t g = g0; g < g1; g++)
        for (int64_t sb = 0; sb < nsb; sb++) {
            uint8_t *o = dst + ((size_t)g * (size_t)nsb + (size_t)sb) * bs;
            for (int j = 0; j < 16; j++) {
                const uint8_t *blk = src + (size_t)(16 * g + j) * src_row_bytes + (size_t)sb * fb;
                memcpy(o + 2 * j, blk, 2);          /* d */
                memcpy(o + 32 + 2 * j, blk + 2, 2); /* dmin */
                for (int k = 0; k < 3; k++) memcpy(o + 64 + 64 * k + 4 * j, blk + 4 + 4 * k, 4);
                for (int p = 0; p < 4; p++)
                    for (int c = 0; c < 8; c++)
                        memcpy(o + 256 + 512 * p + 64 * c + 4 * j, blk + (five ? 48 : 16) + 32 * p + 4 * c, 4);
                if (five)
                    for (int c = 0; c < 8; c++) memcpy(o + 2304 + 64 * c + 4 * j, blk + 16 + 4 * c, 4);
            }
        }
}

void moe_kern_repack_q4_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    repack_qk_r16(src, src_row_bytes, in, g0, g1, dst, 0);
}

void moe_kern_repack_q5_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    repack_qk_r16(src, src_row_bytes, in, g0, g1, dst, 1);
}

/* Q5_0 (kind 0), Q5_1 (kind 1: the min after d, 32 bytes more per block) or Q4_0 (kind 2: no
 * high bits) */
static const size_t q5r_bytes[3] = {352, 384, 288}, q5r_file[3] = {22, 24, 18}, q5r_cols[3] = {96, 128, 32};
static void repack_q5_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1, uint8_t *dst,
                          int kind) {
    const int64_t nb = in / 32;
    const int m = kind == 1;
    const size_t hq = m ? 64 : 32;
    for (int64_t g = g0; g < g1; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *o = dst + ((size_t)g * (size_t)nb + (size_t)b) * q5r_bytes[kind];
            for (int j = 0; j < 16; j++) {
                const uint8_t *blk = src + (size_t)(16 * g + j) * src_row_bytes + (size_t)b * q5r_file[kind];
                const uint8_t *qs = blk + q5r_file[kind] - 16;
                memcpy(o + 2 * j, blk, 2);
                if (m) memcpy(o + 32 + 2 * j, blk + 2, 2);
                if (kind != 2) {
                    const uint8_t *qh = blk + 2 + 2 * m;
                    const uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
                    uint32_t hp = 0;
                    for (int q = 0; q < 32; q++) hp |= ((h >> moe_q5r_qh_bit(q)) & 1u) << q;
                    for (int k = 0; k < 4; k++) o[hq + 4 * j + k] = (uint8_t)(hp >> (8 * k));
                }
                for (int c = 0; c < 4; c++) memcpy(o + q5r_cols[kind] + 64 * c + 4 * j, qs + 4 * c, 4);
            }
        }
}

void moe_kern_repack_q5_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    repack_q5_r16(src, src_row_bytes, in, g0, g1, dst, 0);
}

void moe_kern_repack_q4_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    repack_q5_r16(src, src_row_bytes, in, g0, g1, dst, 2);
}

void moe_kern_repack_q5_1_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    repack_q5_r16(src, src_row_bytes, in, g0, g1, dst, 1);
}

void moe_kern_repack_q6_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    const int64_t nsb = in / 256;
    for (int64_t g = g0; g < g1; g++)
        for (int64_t sb = 0; sb < nsb; sb++) {
            uint8_t *o = dst + ((size_t)g * (size_t)nsb + (size_t)sb) * MOE_Q6K_R16_BLOCK;
            for (int j = 0; j < 16; j++) {
                const uint8_t *blk = src + (size_t)(16 * g + j) * src_row_bytes + (size_t)sb * 210;
                memcpy(o + 2 * j, blk + 208, 2);
                for (int k = 0; k < 4; k++) memcpy(o + 32 + 64 * k + 4 * j, blk + 192 + 4 * k, 4);
                for (int c = 0; c < 32; c++) memcpy(o + 288 + 64 * c + 4 * j, blk + 4 * c, 4);
                for (int c = 0; c < 16; c++) memcpy(o + 2336 + 64 * c + 4 * j, blk + 128 + 4 * c, 4);
            }
        }
}

/* row o's 256-value block sb of a Q6_K R16 view back in Q6_K form (210 bytes) */
static void q6kr_block(const moe_wview *w, int64_t o, int64_t sb, uint8_t blk[210]) {
    const uint8_t *b = w->data + ((size_t)(o / 16) * (size_t)(w->in / 256) + (size_t)sb) * MOE_Q6K_R16_BLOCK;
    const int j = (int)(o % 16);
    memcpy(blk + 208, b + 2 * j, 2);
    for (int k = 0; k < 4; k++) memcpy(blk + 192 + 4 * k, b + 32 + 64 * k + 4 * j, 4);
    for (int c = 0; c < 32; c++) memcpy(blk + 4 * c, b + 288 + 64 * c + 4 * j, 4);
    for (int c = 0; c < 16; c++) memcpy(blk + 128 + 4 * c, b + 2336 + 64 * c + 4 * j, 4);
}

/* row o's block b of a Q5_0, Q5_1 or Q4_0 R16 view back in file form: 22, 24 or 18 bytes */
static void q5r_block(const moe_wview *w, int64_t o, int64_t b, uint8_t *blk) {
    const int kind = w->type == MOE_KTYPE_Q5_1_R16 ? 1 : w->type == MOE_KTYPE_Q4_0_R16 ? 2 : 0, m = kind == 1;
    const size_t hq = m ? 64 : 32;
    const uint8_t *g = w->data + ((size_t)(o / 16) * (size_t)(w->in / 32) + (size_t)b) * q5r_bytes[kind];
    const int j = (int)(o % 16);
    memcpy(blk, g + 2 * j, 2);
    if (m) memcpy(blk + 2, g + 32 + 2 * j, 2);
    if (kind != 2) {
        const uint32_t hp = (uint32_t)g[hq + 4 * j] | (uint32_t)g[hq + 1 + 4 * j] << 8 | (uint32_t)g[hq + 2 + 4 * j] << 16 |
                            (uint32_t)g[hq + 3 + 4 * j] << 24;
        uint32_t h = 0;
        for (int q = 0; q < 32; q++) h |= ((hp >> q) & 1u) << moe_q5r_qh_bit(q);
        uint8_t *qh = blk + 2 + 2 * m;
        for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(h >> (8 * k));
    }
    uint8_t *qs = blk + q5r_file[kind] - 16;
    for (int c = 0; c < 4; c++) memcpy(qs + 4 * c, g + q5r_cols[kind] + 64 * c + 4 * j, 4);
}

/* row o's 256-value block sb of a Q4_K R16 (Q5_K R16) view back in Q4_K (Q5_K) form: 144 (176) bytes */
static void q4kr_block(const moe_wview *w, int64_t o, int64_t sb, uint8_t *blk) {
    const int64_t nsb = w->in / 256;
    const int five = w->type == MOE_KTYPE_Q5_K_R16;
    const uint8_t *b = w->data + ((size_t)(o / 16) * (size_t)nsb + (size_t)sb) * (five ? MOE_Q5K_R16_BLOCK : MOE_Q4K_R16_BLOCK);
    const int j = (int)(o % 16);
    memcpy(blk, b + 2 * j, 2);
    memcpy(blk + 2, b + 32 + 2 * j, 2);
    for (int k = 0; k < 3; k++) memcpy(blk + 4 + 4 * k, b + 64 + 64 * k + 4 * j, 4);
    for (int p = 0; p < 4; p++)
        for (int c = 0; c < 8; c++) memcpy(blk + (five ? 48 : 16) + 32 * p + 4 * c, b + 256 + 512 * p + 64 * c + 4 * j, 4);
    if (five)
        for (int c = 0; c < 8; c++) memcpy(blk + 16 + 4 * c, b + 2304 + 64 * c + 4 * j, 4);
}

void moe_kern_repack_q8_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst) {
    const int64_t nb = in / 32;
    const size_t gb = (size_t)nb * 544;
    for (int64_t g = g0; g < g1; g++) {
        uint8_t *gp = dst + (size_t)g * gb;
        for (int j = 0; j < 16; j++) {
            const uint8_t *row = src + (size_t)(16 * g + j) * src_row_bytes;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *blk = row + (size_t)b * 34;
                uint8_t *wq = gp + moe_r16_woff(b), *sc = gp + moe_r16_soff(nb, b);
                sc[2 * j] = blk[0];
                sc[2 * j + 1] = blk[1];
                for (int c = 0; c < 8; c++) { /* 4 bytes of column c, each + 128 */
                    uint32_t v;
                    memcpy(&v, blk + 2 + 4 * c, 4);
                    v ^= 0x80808080u;
                    memcpy(wq + c * 64 + j * 4, &v, 4);
                }
            }
        }
    }
}

/* row o's block b back in Q8_0 form (34 bytes) */
static void r16_block(const moe_wview *w, int64_t o, int64_t b, uint8_t blk[34]) {
    const int64_t nb = w->in / 32;
    const uint8_t *g = w->data + (size_t)(o / 16) * (size_t)nb * 544;
    const int j = (int)(o % 16);
    const uint8_t *wq = g + moe_r16_woff(b), *sc = g + moe_r16_soff(nb, b);
    blk[0] = sc[2 * j];
    blk[1] = sc[2 * j + 1];
    for (int i = 0; i < 32; i++) blk[2 + i] = wq[(i / 4) * 64 + j * 4 + i % 4] ^ 0x80;
}

void moe_kern_dequant_wrow(const moe_wview *w, int64_t o, float *dst) {
    if (w->type == MOE_KTYPE_Q4_K_R16 || w->type == MOE_KTYPE_Q5_K_R16 || w->type == MOE_KTYPE_Q5_0_R16 ||
        w->type == MOE_KTYPE_Q5_1_R16 || w->type == MOE_KTYPE_Q6_K_R16 || w->type == MOE_KTYPE_Q4_0_R16) {
        /* block by block, in file form */
        const int64_t per =
            w->type == MOE_KTYPE_Q5_0_R16 || w->type == MOE_KTYPE_Q5_1_R16 || w->type == MOE_KTYPE_Q4_0_R16 ? 32 : 256;
        uint8_t blk[210];
        for (int64_t b = 0; b < w->in / per; b++) {
            if (w->type == MOE_KTYPE_Q4_K_R16 || w->type == MOE_KTYPE_Q5_K_R16)
                q4kr_block(w, o, b, blk);
            else if (w->type == MOE_KTYPE_Q6_K_R16)
                q6kr_block(w, o, b, blk);
            else
                q5r_block(w, o, b, blk);
            const int ft = w->type == MOE_KTYPE_Q4_K_R16   ? MOE_DTYPE_Q4_K
                           : w->type == MOE_KTYPE_Q5_K_R16 ? MOE_DTYPE_Q5_K
                           : w->type == MOE_KTYPE_Q6_K_R16 ? MOE_DTYPE_Q6_K
                           : w->type == MOE_KTYPE_Q5_1_R16 ? MOE_DTYPE_Q5_1
                           : w->type == MOE_KTYPE_Q4_0_R16 ? MOE_DTYPE_Q4_0
                                                           : MOE_DTYPE_Q5_0;
            moe_kern_dequant_row(ft, blk, dst + per * b, per);
        }
        return;
    }
    if (w->type != MOE_KTYPE_Q8_0_R16) {
        moe_kern_dequant_row(w->type, w->data + (size_t)o * w->row_bytes, dst, w->in);
        return;
    }
    uint8_t blk[34];
    for (int64_t b = 0; b < w->in / 32; b++) {
        r16_block(w, o, b, blk);
        moe_kern_dequant_row(MOE_DTYPE_Q8_0, blk, dst + 32 * b, 32);
    }
}

void moe_kern_mmq_rows_ref(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0,
                           int64_t o1) {
    const int64_t nb = w->in / 32;
    if (w->type == MOE_DTYPE_Q4_K || w->type == MOE_DTYPE_Q5_K || w->type == MOE_DTYPE_Q6_K) {
        float (*dot)(const uint8_t *, const moe_q8a *, int64_t) = w->type == MOE_DTYPE_Q4_K   ? moe_kern_q4k_dot_ref
                                                                   : w->type == MOE_DTYPE_Q5_K ? moe_kern_q5k_dot_ref
                                                                                               : moe_kern_q6k_dot_ref;
        for (int64_t o = o0; o < o1; o++)
            for (int64_t t = 0; t < T; t++) y[t * ldy + o] = dot(w->data + (size_t)o * w->row_bytes, xq + t * nb, nb / 8);
        return;
    }
    if (w->type == MOE_KTYPE_Q4_K_R16 || w->type == MOE_KTYPE_Q5_K_R16 || w->type == MOE_KTYPE_Q6_K_R16) {
        /* block by block, in file form */
        const int six = w->type == MOE_KTYPE_Q6_K_R16, five = w->type == MOE_KTYPE_Q5_K_R16;
        uint8_t blk[210];
        for (int64_t o = o0; o < o1; o++)
            for (int64_t t = 0; t < T; t++) {
                float acc[8] = {0};
                for (int64_t sb = 0; sb < nb / 8; sb++) {
                    if (six) {
                        q6kr_block(w, o, sb, blk);
                        q6k_block_acc(blk, xq + t * nb + sb * 8, acc);
                    } else {
                        q4kr_block(w, o, sb, blk);
                        qk_block_acc(blk, xq + t * nb + sb * 8, acc, five);
                    }
                }
                y[t * ldy + o] = moe_kern_ksum_tree(acc);
            }
        return;
    }
    const int q5r = w->type == MOE_KTYPE_Q5_0_R16 || w->type == MOE_KTYPE_Q5_1_R16 || w->type == MOE_KTYPE_Q4_0_R16,
              q5 = w->type == MOE_DTYPE_Q5_0 || w->type == MOE_KTYPE_Q5_0_R16 || w->type == MOE_KTYPE_Q5_1_R16,
              q51 = w->type == MOE_DTYPE_Q5_1 || w->type == MOE_KTYPE_Q5_1_R16;
    const int q4 = w->type == MOE_DTYPE_Q4_0 || w->type == MOE_KTYPE_Q4_0_R16;
    const size_t bb = q4 ? 18 : q51 ? 24 : q5 ? 22 : 34;
    const int r16 = w->type == MOE_KTYPE_Q8_0_R16;
    uint8_t blk[34];
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = w->data + (size_t)o * w->row_bytes;
        for (int64_t t = 0; t < T; t++) {
            const moe_q8a *a = xq + t * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *wb = row + (size_t)b * bb;
                if (r16) {
                    r16_block(w, o, b, blk);
                    wb = blk;
                } else if (q5r) {
                    q5r_block(w, o, b, blk);
                    wb = blk;
                }
                int32_t d = q4                    ? idot_q4_0(wb, a + b)
                            : q51                 ? idot_q5_1(wb, a + b)
                            : q5                  ? idot_q5_0(wb, a + b)
                                                  : idot_q8_0(wb, a + b);
                acc = fmaf((float)d, f16(wb) * a[b].d, acc);
                if (q51) acc = fmaf((float)a[b].s, f16(wb + 2) * a[b].d, acc); /* the min: m · Σx */
            }
            y[t * ldy + o] = acc;
        }
    }
}
