/* moekit kernels: W8A8 integer matrix products for Q8_0 and Q4_0 weights (SIMD forms).
 *
 * Numerics (identical in every form, see kern.h): activations are quantized once per product to
 * moe_q8a blocks; for each (row, token) the integer dot of every 32-value block is exact, and the
 * blocks are accumulated in order with acc = fma((float)idot, d_w·d_x, acc). SIMD forms put 8
 * rows in the 8 lanes of a vector, so each lane performs exactly the ref's sequence of fmas.
 *
 * Integer dots:
 *  - AVX2: Q8_0 with the sign trick (|w| as u8, x·sign(w) as s8, maddubs never saturates since
 *    |w| ≤ 128, |x| ≤ 127); Q4_0 nibbles are u8 0..15: maddubs(q, x) − 8·Σx.
 *  - AVX-512 VNNI (VL, ymm): vpdpbusd(u8, s8); Q8_0 weights as w ⊕ 0x80 = w + 128, so
 *    Σ(w+128)x − 128·Σx; Q4_0 as above. Σx is the block's `s`, computed at quantization.
 *  - NEON: vmull_s8 + vpadalq_s16 (armv8.0, no dotprod needed).
 * The 8 per-row partial vectors are reduced with a fixed hadd tree (integer, exact).
 * Rows not a multiple of 8 at the end of a range use the ref. */
#include <math.h>
#include <string.h>

#include "core/clock.h"
#include "core/kscale.h"
#include "kern/kern.h"
#include "moe/dtype.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define MOE_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#ifdef MOE_X86
#include "kern/cpu/unpack_x86.h"

/* ---- activation quantization ---- */
__attribute__((target("avx2,fma"))) static void quant_act_avx2(const float *x, moe_q8a *y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++, x += 32, y++) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
               v3 = _mm256_loadu_ps(x + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float amax = _mm_cvtss_f32(h);
        if (amax < MOE_Q8A_MIN) amax = 0.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y->d = amax / 127.0f;
        __m256 vid = _mm256_set1_ps(id);
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid)),
                i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        y->s = _mm_cvtsi128_si32(s4);
        /* pack 32 int32 -> 32 int8 in order: packs work per 128-bit lane, permute restores order */
        __m256i p01 = _mm256_packs_epi32(i0, i1), p23 = _mm256_packs_epi32(i2, i3);
        __m256i p = _mm256_packs_epi16(p01, p23);
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y->q, p);
    }
}

/* sums of 8 vectors of 8 int32 lanes: out lane i = Σ lanes of p[i] */
__attribute__((target("avx2"))) static inline __m256i reduce8(const __m256i p[8]) {
    __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    /* a: [r0 r1 r2 r3 (low halves) | r0 r1 r2 r3 (high halves)], b likewise for r4..r7 */
    __m256i lo = _mm256_permute2x128_si256(a, b, 0x20), hi = _mm256_permute2x128_si256(a, b, 0x31);
    return _mm256_add_epi32(lo, hi);
}

/* the 8 rows' F16 block scales as floats; built in registers (pinsrw), since 8 narrow stores
 * followed by one wide load would stall on store forwarding every block */
static inline short ld16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return (short)h;
}

__attribute__((target("avx2,f16c"))) static inline __m256 scales8(const uint8_t *const r[8], size_t off) {
    return _mm256_cvtph_ps(_mm_setr_epi16(ld16(r[0] + off), ld16(r[1] + off), ld16(r[2] + off), ld16(r[3] + off),
                                          ld16(r[4] + off), ld16(r[5] + off), ld16(r[6] + off), ld16(r[7] + off)));
}

#define AVX2_PF_AHEAD 2048 /* bytes ahead on each row stream: 2-4 KB read 35-39 GB/s, 0.5-1 KB ~30 */
#define TT 4 /* tokens per pass over an 8-row group (accumulators kept in registers) */

/* the unsigned values of a Q4_0 (0..15) or Q5_0 (0..31) block */
__attribute__((target("avx2"))) static inline __m256i q45_unpack(int q5, const uint8_t *blk) {
    return q5 ? q5_unpack(blk) : q4_unpack(blk + 2);
}

/* q8 and q5 are compile-time constants in each instance (mmq_avx2 below): with the type a
 * runtime value GCC kept the 8-row arrays on the stack and did not unroll the row loops, and
 * the kernel read a Q8_0 head at ~15 GB/s on 2 threads */
__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
mmq_avx2_body(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1, int q8,
              int q5) {
    const int64_t nb = w->in / 32;
    const size_t bb = q8 ? 34 : q5 ? 22 : 18;
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        const uint8_t *r[8];
        for (int i = 0; i < 8; i++) r[i] = w->data + (size_t)(o + i) * w->row_bytes;
        for (int64_t t0 = 0; t0 < T; t0 += TT) {
            const int nt = T - t0 < TT ? (int)(T - t0) : TT;
            __m256 acc[TT];
            for (int k = 0; k < TT; k++) acc[k] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const size_t off = (size_t)b * bb;
                if (!(b & 1) && t0 == 0) /* 8 streams: each row ~2 KB ahead, a line per two blocks */
#pragma GCC unroll 8
                    for (int i = 0; i < 8; i++) _mm_prefetch((const char *)r[i] + off + AVX2_PF_AHEAD, _MM_HINT_T0);
                const __m256 dw = scales8(r, off);
                __m256i wq[8];
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    wq[i] = q8 ? _mm256_loadu_si256((const __m256i *)(r[i] + off + 2)) : q45_unpack(q5, r[i] + off);
#pragma GCC unroll 4
                for (int k = 0; k < TT; k++) {
                    if (k >= nt) break;
                    const moe_q8a *a = xq + (t0 + k) * nb + b;
                    const __m256i x = _mm256_loadu_si256((const __m256i *)a->q);
                    __m256i p[8];
#pragma GCC unroll 8
                    for (int i = 0; i < 8; i++) {
                        __m256i m16 = q8 ? _mm256_maddubs_epi16(_mm256_sign_epi8(wq[i], wq[i]), _mm256_sign_epi8(x, wq[i]))
                                         : _mm256_maddubs_epi16(wq[i], x);
                        p[i] = _mm256_madd_epi16(m16, ones);
                    }
                    __m256i s = reduce8(p);
                    if (!q8) s = _mm256_sub_epi32(s, _mm256_set1_epi32((q5 ? 16 : 8) * a->s));
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(a->d)), acc[k]);
                }
            }
#pragma GCC unroll 4
            for (int k = 0; k < TT; k++) {
                if (k >= nt) break;
                float v[8];
                _mm256_storeu_ps(v, acc[k]);
                for (int i = 0; i < 8; i++) y[(t0 + k) * ldy + o + i] = v[i];
            }
        }
    }
    if (o < o1) moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o, o1);
}

__attribute__((target("avx2,fma,f16c"))) static void mmq_avx2(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y,
                                                             int64_t ldy, int64_t o0, int64_t o1) {
    if (w->type == MOE_DTYPE_Q8_0)
        mmq_avx2_body(w, xq, T, y, ldy, o0, o1, 1, 0);
    else if (w->type == MOE_DTYPE_Q5_0)
        mmq_avx2_body(w, xq, T, y, ldy, o0, o1, 0, 1);
    else
        mmq_avx2_body(w, xq, T, y, ldy, o0, o1, 0, 0);
}

/* 8×8 transpose of dwords: out[k] lane i = in[i] lane k (rows to "columns of 4 bytes") */
__attribute__((target("avx2"))) static inline void transpose8(const __m256i in[8], __m256i out[8]) {
    __m256i a0 = _mm256_unpacklo_epi32(in[0], in[1]), a1 = _mm256_unpackhi_epi32(in[0], in[1]);
    __m256i a2 = _mm256_unpacklo_epi32(in[2], in[3]), a3 = _mm256_unpackhi_epi32(in[2], in[3]);
    __m256i a4 = _mm256_unpacklo_epi32(in[4], in[5]), a5 = _mm256_unpackhi_epi32(in[4], in[5]);
    __m256i a6 = _mm256_unpacklo_epi32(in[6], in[7]), a7 = _mm256_unpackhi_epi32(in[6], in[7]);
    __m256i b0 = _mm256_unpacklo_epi64(a0, a2), b1 = _mm256_unpackhi_epi64(a0, a2);
    __m256i b2 = _mm256_unpacklo_epi64(a1, a3), b3 = _mm256_unpackhi_epi64(a1, a3);
    __m256i b4 = _mm256_unpacklo_epi64(a4, a6), b5 = _mm256_unpackhi_epi64(a4, a6);
    __m256i b6 = _mm256_unpacklo_epi64(a5, a7), b7 = _mm256_unpackhi_epi64(a5, a7);
    out[0] = _mm256_permute2x128_si256(b0, b4, 0x20);
    out[1] = _mm256_permute2x128_si256(b1, b5, 0x20);
    out[2] = _mm256_permute2x128_si256(b2, b6, 0x20);
    out[3] = _mm256_permute2x128_si256(b3, b7, 0x20);
    out[4] = _mm256_permute2x128_si256(b0, b4, 0x31);
    out[5] = _mm256_permute2x128_si256(b1, b5, 0x31);
    out[6] = _mm256_permute2x128_si256(b2, b6, 0x31);
    out[7] = _mm256_permute2x128_si256(b3, b7, 0x31);
}

/* T = 1 or 2 (decode), 16 rows per pass in zmm: row i in the low 256 bits, row i+8 in the high,
 * one vpdpbusd per row pair and block, then a 16-row reduction (unpack/add tree, 22 ops for 16
 * rows against 21 for 8 in the ymm hadd tree). While a group streams, the next group's bytes are
 * prefetched at the same pace (16 blocks' worth per block), so the first load of each weight
 * block finds its line on the way instead of waiting for memory. Returns the rows done. */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline int64_t
mmq_vnni16_body(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1, int q8,
                int q5) {
    const int64_t nb = w->in / 32;
    const size_t bb = q8 ? 34 : q5 ? 22 : 18, rb = w->row_bytes, step = 16 * bb;
    const int32_t bias = q8 ? 128 : q5 ? 16 : 8;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    int64_t o = o0;
    for (; o + 16 <= o1; o += 16) {
        const uint8_t *r[16];
        for (int i = 0; i < 16; i++) r[i] = w->data + (size_t)(o + i) * rb;
        const uint8_t *next = r[0] + 16 * rb; /* the next group (prefetch only; may lie past the range) */
        __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t b = 0; b < nb; b++) {
            const size_t off = (size_t)b * bb;
            const char *pf = (const char *)next + (size_t)b * step;
            for (size_t k = 0; k < step; k += 64) _mm_prefetch(pf + k, _MM_HINT_T0);
            const __m512 dw = _mm512_cvtph_ps(_mm256_setr_epi16(
                ld16(r[0] + off), ld16(r[1] + off), ld16(r[2] + off), ld16(r[3] + off), ld16(r[4] + off), ld16(r[5] + off),
                ld16(r[6] + off), ld16(r[7] + off), ld16(r[8] + off), ld16(r[9] + off), ld16(r[10] + off),
                ld16(r[11] + off), ld16(r[12] + off), ld16(r[13] + off), ld16(r[14] + off), ld16(r[15] + off)));
            __m512i wq[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) {
                __m256i lo = q8 ? _mm256_loadu_si256((const __m256i *)(r[i] + off + 2)) : q45_unpack(q5, r[i] + off);
                __m256i hi = q8 ? _mm256_loadu_si256((const __m256i *)(r[i + 8] + off + 2)) : q45_unpack(q5, r[i + 8] + off);
                wq[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                if (q8) wq[i] = _mm512_xor_si512(wq[i], flip);
            }
            for (int k = 0; k < T; k++) {
                const moe_q8a *a = xq + k * nb + b;
                const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)a->q));
                __m512i p[8];
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) p[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[i], x);
                /* per 128-bit lane: pairs, then quads of rows (lane j of 4: rows i..i+3 of that 16 bytes) */
                __m512i s01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
                __m512i s23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
                __m512i s45 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[4], p[5]), _mm512_unpackhi_epi32(p[4], p[5]));
                __m512i s67 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[6], p[7]), _mm512_unpackhi_epi32(p[6], p[7]));
                __m512i s03 = _mm512_add_epi32(_mm512_unpacklo_epi64(s01, s23), _mm512_unpackhi_epi64(s01, s23));
                __m512i s47 = _mm512_add_epi32(_mm512_unpacklo_epi64(s45, s67), _mm512_unpackhi_epi64(s45, s67));
                /* s03 lanes: [r0-3 lo16, r0-3 hi16, r8-11 lo16, r8-11 hi16]; s47 likewise for 4-7, 12-15 */
                __m512i ev = _mm512_shuffle_i32x4(s03, s47, 0x88), od = _mm512_shuffle_i32x4(s03, s47, 0xdd);
                __m512i s = _mm512_permutexvar_epi32(lanes, _mm512_add_epi32(ev, od)); /* rows 0..15 */
                s = _mm512_sub_epi32(s, _mm512_set1_epi32(bias * a->s));
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(a->d)), acc[k]);
            }
        }
        for (int k = 0; k < T; k++) {
            float v[16];
            _mm512_storeu_ps(v, acc[k]);
            for (int i = 0; i < 16; i++) y[k * ldy + o + i] = v[i];
        }
    }
    return o - o0;
}

/* one instance per weight type (a runtime type kept the row arrays on the stack, as in mmq_avx2) */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static int64_t
mmq_vnni16(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    if (w->type == MOE_DTYPE_Q8_0) return mmq_vnni16_body(w, xq, T, y, ldy, o0, o1, 1, 0);
    if (w->type == MOE_DTYPE_Q5_0) return mmq_vnni16_body(w, xq, T, y, ldy, o0, o1, 0, 1);
    return mmq_vnni16_body(w, xq, T, y, ldy, o0, o1, 0, 0);
}

/* T >= 3 (prefill, expert groups, batched decode), 16 rows per pass: a chunk of up to GK blocks
 * of the 16 rows is transposed once into column form on the stack (col[c] lane j = bytes
 * 4c..4c+3 of row j's block, 16 KB) with the rows' scales as floats, then every group of 8
 * tokens runs over the chunk with 8 vpdpbusd zmm per token and block (activation dword c
 * broadcast) and no shuffles at all. Between chunks the running sums wait in y (a float store
 * and reload is exact), so each (row, token) still sees the ref's sequence of fmas. */
#define GK 32
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static int64_t
mmq_vnni_gemm16(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32;
    const int q8 = w->type == MOE_DTYPE_Q8_0;
    const int q5 = w->type == MOE_DTYPE_Q5_0;
    const size_t bb = q8 ? 34 : q5 ? 22 : 18;
    const int32_t bias = q8 ? 128 : q5 ? 16 : 8;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i ilo = _mm512_setr_epi64(0, 1, 8, 9, 4, 5, 12, 13), ihi = _mm512_setr_epi64(2, 3, 10, 11, 6, 7, 14, 15);
    __m512i colbuf[GK * 8];
    __m512 dwbuf[GK];
    int64_t o = o0;
    for (; o + 16 <= o1; o += 16) {
        const uint8_t *r[16];
        for (int i = 0; i < 16; i++) r[i] = w->data + (size_t)(o + i) * w->row_bytes;
        for (int64_t b0 = 0; b0 < nb; b0 += GK) {
            const int nbk = nb - b0 < GK ? (int)(nb - b0) : GK;
            for (int bk = 0; bk < nbk; bk++) {
                const size_t off = (size_t)(b0 + bk) * bb;
                dwbuf[bk] = _mm512_cvtph_ps(_mm256_setr_epi16(
                    ld16(r[0] + off), ld16(r[1] + off), ld16(r[2] + off), ld16(r[3] + off), ld16(r[4] + off),
                    ld16(r[5] + off), ld16(r[6] + off), ld16(r[7] + off), ld16(r[8] + off), ld16(r[9] + off),
                    ld16(r[10] + off), ld16(r[11] + off), ld16(r[12] + off), ld16(r[13] + off), ld16(r[14] + off),
                    ld16(r[15] + off)));
                __m512i in[8];
                for (int i = 0; i < 8; i++) {
                    __m256i lo = q8 ? _mm256_loadu_si256((const __m256i *)(r[i] + off + 2)) : q45_unpack(q5, r[i] + off);
                    __m256i hi = q8 ? _mm256_loadu_si256((const __m256i *)(r[i + 8] + off + 2)) : q45_unpack(q5, r[i + 8] + off);
                    in[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                    if (q8) in[i] = _mm512_xor_si512(in[i], flip);
                }
                /* 8×8 dword transpose in each 256-bit half (rows 0-7 low, 8-15 high), as transpose8 */
                __m512i a0 = _mm512_unpacklo_epi32(in[0], in[1]), a1 = _mm512_unpackhi_epi32(in[0], in[1]);
                __m512i a2 = _mm512_unpacklo_epi32(in[2], in[3]), a3 = _mm512_unpackhi_epi32(in[2], in[3]);
                __m512i a4 = _mm512_unpacklo_epi32(in[4], in[5]), a5 = _mm512_unpackhi_epi32(in[4], in[5]);
                __m512i a6 = _mm512_unpacklo_epi32(in[6], in[7]), a7 = _mm512_unpackhi_epi32(in[6], in[7]);
                __m512i c0 = _mm512_unpacklo_epi64(a0, a2), c1 = _mm512_unpackhi_epi64(a0, a2);
                __m512i c2 = _mm512_unpacklo_epi64(a1, a3), c3 = _mm512_unpackhi_epi64(a1, a3);
                __m512i c4 = _mm512_unpacklo_epi64(a4, a6), c5 = _mm512_unpackhi_epi64(a4, a6);
                __m512i c6 = _mm512_unpacklo_epi64(a5, a7), c7 = _mm512_unpackhi_epi64(a5, a7);
                __m512i *col = colbuf + bk * 8;
                col[0] = _mm512_permutex2var_epi64(c0, ilo, c4);
                col[1] = _mm512_permutex2var_epi64(c1, ilo, c5);
                col[2] = _mm512_permutex2var_epi64(c2, ilo, c6);
                col[3] = _mm512_permutex2var_epi64(c3, ilo, c7);
                col[4] = _mm512_permutex2var_epi64(c0, ihi, c4);
                col[5] = _mm512_permutex2var_epi64(c1, ihi, c5);
                col[6] = _mm512_permutex2var_epi64(c2, ihi, c6);
                col[7] = _mm512_permutex2var_epi64(c3, ihi, c7);
            }
            for (int64_t t0 = 0; t0 < T; t0 += 8) {
                const int nt = T - t0 < 8 ? (int)(T - t0) : 8;
                __m512 acc[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) acc[k] = b0 && k < nt ? _mm512_loadu_ps(y + (t0 + k) * ldy + o) : _mm512_setzero_ps();
                for (int bk = 0; bk < nbk; bk++) {
                    const __m512i *col = colbuf + bk * 8;
                    const __m512 dw = dwbuf[bk];
#pragma GCC unroll 8
                    for (int k = 0; k < 8; k++) {
                        if (k >= nt) break;
                        const moe_q8a *a = xq + (t0 + k) * nb + b0 + bk;
                        const int32_t *xd = (const int32_t *)(const void *)a->q;
                        __m512i s = _mm512_set1_epi32(-bias * a->s);
                        for (int c = 0; c < 8; c++) s = _mm512_dpbusd_epi32(s, col[c], _mm512_set1_epi32(xd[c]));
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(a->d)), acc[k]);
                    }
                }
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++)
                    if (k < nt) _mm512_storeu_ps(y + (t0 + k) * ldy + o, acc[k]);
            }
        }
    }
    return o - o0;
}

#define TV 8 /* tokens per pass, VNNI form (32 ymm registers) */

/* Two ways to the same exact integer sums (lanes = the 8 rows):
 *  - few tokens: one vpdpbusd per row over the whole block, then the hadd tree (reduce8);
 *  - 3 or more tokens: the 8 weight blocks are transposed once into 8 vectors of 4-byte columns
 *    (lane i = row i), and each token needs only 8 vpdpbusd with its 4 activation bytes
 *    broadcast, no reduction: the register-blocked GEMM form used by prefill. */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static void
mmq_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32;
    const int q8 = w->type == MOE_DTYPE_Q8_0;
    const int q5 = w->type == MOE_DTYPE_Q5_0;
    const size_t bb = q8 ? 34 : q5 ? 22 : 18;
    const int32_t bias = q8 ? 128 : q5 ? 16 : 8;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    int64_t o = o0;
    o += T <= 2 ? mmq_vnni16(w, xq, T, y, ldy, o0, o1) : mmq_vnni_gemm16(w, xq, T, y, ldy, o0, o1);
    for (; o + 8 <= o1; o += 8) {
        const uint8_t *r[8];
        for (int i = 0; i < 8; i++) r[i] = w->data + (size_t)(o + i) * w->row_bytes;
        for (int i = 0; i < 8; i++) _mm_prefetch((const char *)r[i] + w->row_bytes * 8, _MM_HINT_T0);
        for (int64_t t0 = 0; t0 < T; t0 += TV) {
            const int nt = T - t0 < TV ? (int)(T - t0) : TV;
            __m256 acc[TV];
            for (int k = 0; k < TV; k++) acc[k] = _mm256_setzero_ps();
            for (int64_t b = 0; b < nb; b++) {
                const size_t off = (size_t)b * bb;
                const __m256 dw = scales8(r, off);
                __m256i wq[8];
                for (int i = 0; i < 8; i++) {
                    _mm_prefetch((const char *)r[i] + off + 512, _MM_HINT_T0);
                    wq[i] = q8 ? _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(r[i] + off + 2)), flip)
                               : q45_unpack(q5, r[i] + off);
                }
                if (nt >= 3) {
                    __m256i col[8];
                    transpose8(wq, col);
#pragma GCC unroll 8
                    for (int k = 0; k < TV; k++) {
                        if (k >= nt) break;
                        const moe_q8a *a = xq + (t0 + k) * nb + b;
                        const int32_t *xd = (const int32_t *)(const void *)a->q;
                        __m256i s = _mm256_set1_epi32(-bias * a->s);
                        for (int c = 0; c < 8; c++) s = _mm256_dpbusd_epi32(s, col[c], _mm256_set1_epi32(xd[c]));
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(a->d)), acc[k]);
                    }
                } else {
#pragma GCC unroll 8
                    for (int k = 0; k < TV; k++) {
                        if (k >= nt) break;
                        const moe_q8a *a = xq + (t0 + k) * nb + b;
                        const __m256i x = _mm256_loadu_si256((const __m256i *)a->q);
                        __m256i p[8];
                        for (int i = 0; i < 8; i++) p[i] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wq[i], x);
                        __m256i s = _mm256_sub_epi32(reduce8(p), _mm256_set1_epi32(bias * a->s));
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(a->d)), acc[k]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int k = 0; k < TV; k++) {
                if (k >= nt) break;
                float v[8];
                _mm256_storeu_ps(v, acc[k]);
                for (int i = 0; i < 8; i++) y[(t0 + k) * ldy + o + i] = v[i];
            }
        }
    }
    if (o < o1) moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o, o1);
}

/* the K-quant refs' tree over 8 running sums: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)) */
__attribute__((target("avx2"))) static inline float tree8(__m256 a) {
    const __m128 v = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 h = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

/* Q4_K and Q5_K (kern.h, moe_kern_q4k_dot_ref / q5k): one row at a time, up to 8 tokens per pass
 * (Q5_K: the fifth bit of each value or-ed in from qh before the dots). Per 256-value
 * block: the 8 sub-blocks' 4-bit values unpacked once (ymm of 32 u8), then per token 8 integer
 * dots (vpdpbusd, or vpmaddubsw + vpmaddwd on AVX2: u4·s8 pairs fit int16), reduced to one
 * lane per sub-block, and the ref's two fmas per sub-block on 8 lanes at once. The activation
 * blocks' d and Σq, 10 floats apart in moe_q8a, are laid out once per call as 8 + 8 contiguous
 * floats per (token, 256-value block) (`tab`), so each block loads them instead of two gathers
 * (the gathers and a spilled unpack were most of the kernel's time). */
#define Q4K_TOK 8
#define Q4K_MAXSB 128 /* rows of up to 32768 values take the table; longer ones the ref */
#define Q4K_BODY(DOT, FIVE)                                                                                            \
    const int64_t nb = w->in / 32, nsb = nb / 8;                                                                       \
    if (nsb > Q4K_MAXSB) {                                                                                             \
        moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o0, o1);                                                               \
        return;                                                                                                        \
    }                                                                                                                  \
    const __m256i lo4 = _mm256_set1_epi8(0x0F);                                                                        \
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));                                     \
    float tab[Q4K_TOK * Q4K_MAXSB * 16];                                                                               \
    for (int64_t t0 = 0; t0 < T; t0 += Q4K_TOK) {                                                                      \
        const int nt = T - t0 < Q4K_TOK ? (int)(T - t0) : Q4K_TOK;                                                     \
        for (int k = 0; k < nt; k++)                                                                                   \
            for (int64_t b = 0; b < nb; b++) {                                                                         \
                const moe_q8a *a = xq + (t0 + k) * nb + b;                                                             \
                float *e = tab + ((size_t)k * (size_t)nsb + (size_t)(b / 8)) * 16 + (b % 8);                           \
                e[0] = a->d;                                                                                           \
                e[8] = (float)a->s; /* |Σq| <= 4064: exact */                                                          \
            }                                                                                                          \
        for (int64_t o = o0; o < o1; o++) {                                                                            \
            const uint8_t *row = w->data + (size_t)o * w->row_bytes;                                                   \
            __m256 acc[Q4K_TOK];                                                                                       \
            _Pragma("GCC unroll 8") for (int k = 0; k < Q4K_TOK; k++) acc[k] = _mm256_setzero_ps();                   \
            for (int64_t sb = 0; sb < nsb; sb++) {                                                                     \
                const uint8_t *blk = row + (size_t)sb * (FIVE ? 176 : 144), *sc = blk + 4;                             \
                uint16_t hd, hm;                                                                                       \
                memcpy(&hd, blk, 2);                                                                                   \
                memcpy(&hm, blk + 2, 2);                                                                               \
                uint32_t scw[2], mw[2]; /* in registers: no store-to-load stall */                                  \
                moe_kscale8(sc, scw, mw);                                                                              \
                const __m128i sc8 = _mm_setr_epi32((int)scw[0], (int)scw[1], 0, 0);                                    \
                const __m128i m8 = _mm_setr_epi32((int)mw[0], (int)mw[1], 0, 0);                                       \
                const __m256 d1 = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hd)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc8))); \
                const __m256 m1 = _mm256_mul_ps(_mm256_set1_ps(_cvtsh_ss(hm)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m8)));  \
                __m256i nib[8];                                                                                        \
                _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++) {                                                  \
                    const __m256i q = _mm256_loadu_si256((const __m256i *)(const void *)(blk + (FIVE ? 48 : 16) + 32 * g)); \
                    nib[2 * g] = _mm256_and_si256(q, lo4);                                                             \
                    nib[2 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), lo4);                                   \
                }                                                                                                      \
                if (FIVE) { /* bit j of qh[l] to bit 4 of sub-block j's byte l */                                      \
                    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(blk + 16)), b4 = _mm256_set1_epi8(0x10); \
                    nib[0] = _mm256_or_si256(nib[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), b4));                  \
                    nib[1] = _mm256_or_si256(nib[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), b4));                  \
                    nib[2] = _mm256_or_si256(nib[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), b4));                  \
                    nib[3] = _mm256_or_si256(nib[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), b4));                  \
                    nib[4] = _mm256_or_si256(nib[4], _mm256_and_si256(h, b4));                                         \
                    nib[5] = _mm256_or_si256(nib[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), b4));                  \
                    nib[6] = _mm256_or_si256(nib[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), b4));                  \
                    nib[7] = _mm256_or_si256(nib[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), b4));                  \
                }                                                                                                      \
                _Pragma("GCC unroll 8") for (int k = 0; k < Q4K_TOK; k++) {                                            \
                    if (k >= nt) break;                                                                                \
                    const moe_q8a *a = xq + (t0 + k) * nb + sb * 8;                                                    \
                    const float *e = tab + ((size_t)k * (size_t)nsb + (size_t)sb) * 16;                                \
                    __m256i p[8];                                                                                      \
                    _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++)                                                \
                        p[j] = DOT(nib[j], _mm256_loadu_si256((const __m256i *)(const void *)a[j].q));                 \
                    const __m256i idot = reduce8(p);                                                                   \
                    const __m256 dx = _mm256_loadu_ps(e), sx = _mm256_loadu_ps(e + 8);                                 \
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(idot), _mm256_mul_ps(d1, dx), acc[k]);               \
                    acc[k] = _mm256_fmadd_ps(sx, _mm256_xor_ps(_mm256_mul_ps(m1, dx), sign), acc[k]);                \
                }                                                                                                      \
            }                                                                                                          \
            for (int k = 0; k < nt; k++) y[(t0 + k) * ldy + o] = tree8(acc[k]);                                        \
        }                                                                                                              \
    }

/* Q6_K (kern.h, moe_kern_q6k_dot_ref): one row at a time, up to 8 tokens per pass. Per 256-value
 * block: the 8 activation blocks' 6-bit values u assembled once (ymm of 32 u8: a ql nibble or-ed
 * with two qh bits at bits 4-5), each block's two int8 scales as an 8-lane vector; per token
 * and block one dot of u and one of the constant 32 (the −32 offset, per 4 values), their
 * difference times the scales, the 8 blocks' lanes summed into one lane each (reduce8), and
 * the ref's fma per block position on 8 lanes at once. */
#define Q6K_BODY(DOT)                                                                                                  \
    const int64_t nb = w->in / 32, nsb = nb / 8;                                                                       \
    if (nsb > Q4K_MAXSB) {                                                                                             \
        moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o0, o1);                                                               \
        return;                                                                                                        \
    }                                                                                                                  \
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30), k32 = _mm256_set1_epi8(32);            \
    float tab[Q4K_TOK * Q4K_MAXSB * 8];                                                                                \
    for (int64_t t0 = 0; t0 < T; t0 += Q4K_TOK) {                                                                      \
        const int nt = T - t0 < Q4K_TOK ? (int)(T - t0) : Q4K_TOK;                                                     \
        for (int k = 0; k < nt; k++)                                                                                   \
            for (int64_t b = 0; b < nb; b++) tab[(size_t)k * (size_t)nb + (size_t)b] = xq[(t0 + k) * nb + b].d;       \
        for (int64_t o = o0; o < o1; o++) {                                                                            \
            const uint8_t *row = w->data + (size_t)o * w->row_bytes;                                                   \
            __m256 acc[Q4K_TOK];                                                                                       \
            _Pragma("GCC unroll 8") for (int k = 0; k < Q4K_TOK; k++) acc[k] = _mm256_setzero_ps();                   \
            for (int64_t sb = 0; sb < nsb; sb++) {                                                                     \
                const uint8_t *blk = row + (size_t)sb * 210, *ql = blk, *qh = blk + 128;                               \
                uint16_t hd;                                                                                           \
                memcpy(&hd, blk + 208, 2);                                                                             \
                const __m256 dv = _mm256_set1_ps(_cvtsh_ss(hd));                                                       \
                __m256i u[8], sv[8];                                                                                   \
                _Pragma("GCC unroll 2") for (int n = 0; n < 2; n++) {                                                  \
                    const __m256i s8 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(blk + 192 + 8 * n))); \
                    const __m256i h = _mm256_loadu_si256((const __m256i *)(const void *)(qh + 32 * n));                \
                    const __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * n));               \
                    const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 64 * n + 32));          \
                    u[4 * n + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(h, 4), m30)); \
                    u[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(h, 2), m30)); \
                    u[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(h, m30)); \
                    u[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),                    \
                                                   _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));                   \
                    _Pragma("GCC unroll 4") for (int m = 0; m < 4; m++)                                                \
                        sv[4 * n + m] = _mm256_permutevar8x32_epi32(                                                   \
                            s8, _mm256_setr_epi32(2 * m, 2 * m, 2 * m, 2 * m, 2 * m + 1, 2 * m + 1, 2 * m + 1, 2 * m + 1)); \
                }                                                                                                      \
                _Pragma("GCC unroll 8") for (int k = 0; k < Q4K_TOK; k++) {                                            \
                    if (k >= nt) break;                                                                                \
                    const moe_q8a *a = xq + (t0 + k) * nb + sb * 8;                                                    \
                    __m256i p[8];                                                                                      \
                    _Pragma("GCC unroll 8") for (int j = 0; j < 8; j++) {                                              \
                        const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)a[j].q);                  \
                        p[j] = _mm256_mullo_epi32(_mm256_sub_epi32(DOT(u[j], xv), DOT(k32, xv)), sv[j]);               \
                    }                                                                                                  \
                    const __m256i isum = reduce8(p);                                                                   \
                    const __m256 dx = _mm256_loadu_ps(tab + (size_t)k * (size_t)nb + (size_t)sb * 8);                  \
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, dx), acc[k]);                \
                }                                                                                                      \
            }                                                                                                          \
            for (int k = 0; k < nt; k++) y[(t0 + k) * ldy + o] = tree8(acc[k]);                                        \
        }                                                                                                              \
    }

#define DOT_VNNI(w8, x8) _mm256_dpbusd_epi32(_mm256_setzero_si256(), w8, x8)
#define DOT_AVX2(w8, x8) _mm256_madd_epi16(_mm256_maddubs_epi16(w8, x8), _mm256_set1_epi16(1))
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))) static void
q4k_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q4K_BODY(DOT_VNNI, 0)
}
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))) static void
q5k_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q4K_BODY(DOT_VNNI, 1)
}
__attribute__((target("avx2,fma,f16c"))) static void q4k_avx2(const moe_wview *w, const moe_q8a *xq, int64_t T,
                                                             float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q4K_BODY(DOT_AVX2, 0)
}
__attribute__((target("avx2,fma,f16c"))) static void q5k_avx2(const moe_wview *w, const moe_q8a *xq, int64_t T,
                                                             float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q4K_BODY(DOT_AVX2, 1)
}
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512vnni"))) static void
q6k_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q6K_BODY(DOT_VNNI)
}
__attribute__((target("avx2,fma,f16c"))) static void q6k_avx2(const moe_wview *w, const moe_q8a *xq, int64_t T,
                                                             float *y, int64_t ldy, int64_t o0, int64_t o1) {
    Q6K_BODY(DOT_AVX2)
}
#undef DOT_VNNI
#undef DOT_AVX2
#undef Q4K_BODY
#undef Q6K_BODY

/* The R16 kernels' row span: rows of [o0, o1) outside whole 16-row groups go to the ref; [*a, *e)
 * are the whole groups, 0 when there are none (everything done). */
static int r16_span(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1,
                    int64_t *a, int64_t *e) {
    *a = (o0 + 15) / 16 * 16;
    *e = o1 / 16 * 16;
    if (*a >= *e) {
        moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o0, o1);
        return 0;
    }
    if (o0 < *a) moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o0, *a);
    if (*e < o1) moe_kern_mmq_rows_ref(w, xq, T, y, ldy, *e, o1);
    return 1;
}

/* One block of r16_multi (below) for G groups and NT tokens: group i's weights at wg[i], its 16
 * scales at sg[i], token k's activation block at xb[k]; adds to acc. */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
r16_block(const uint8_t *const wg[4], const uint8_t *const sg[4], const moe_q8a *const xb[6], int G, int NT,
          __m512 acc[4][6]) {
    __m512i s[4][6];
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++)
        if (k < NT) {
            const __m512i s0 = _mm512_set1_epi32(-128 * xb[k]->s);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                if (i < G) s[i][k] = s0;
        }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) {
        __m512i wc[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++)
            if (i < G) {
                wc[i] = _mm512_loadu_si512((const void *)(wg[i] + 64 * c));
                __asm__("" : "+v"(wc[i])); /* one load per column: GCC otherwise reloads it per token */
            }
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++)
            if (k < NT) {
                const __m512i x4 = _mm512_set1_epi32(((const int32_t *)(const void *)xb[k]->q)[c]);
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++)
                    if (i < G) s[i][k] = _mm512_dpbusd_epi32(s[i][k], wc[i], x4);
            }
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        if (i < G) {
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sg[i]));
#pragma GCC unroll 6
            for (int k = 0; k < 6; k++)
                if (k < NT)
                    acc[i][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][k]), _mm512_mul_ps(dw, _mm512_set1_ps(xb[k]->d)),
                                                acc[i][k]);
        }
}

/* R16 layout (kern.h): 16 rows of a block are 8 aligned zmm columns, so a token costs 8
 * vpdpbusd (its 4 activation bytes c broadcast from memory) and no shuffle or reduction; the
 * running integer sum starts at −128·Σx (the w + 128 bias). r16_multi runs G groups (group i
 * at g + gs·i, its outputs at y + ys·i: neighbours, gs = 544·nb and ys = 16, or one group from
 * each of G slices of the range, see mmq_r16_vnni) over NT tokens, G·NT ≤ 12: each broadcast activation
 * dword feeds G vpdpbusd, with G·NT integer chains, G·NT float accumulators and G weight columns
 * live (≤ 30 registers), the float sums in registers over the whole row (exact ref order).
 * Each group is one stream, read front to back in 1088-byte pairs of blocks; each pair
 * prefetches the pair two ahead (17 lines, 2 KB on), running on into the next group (or past
 * the matrix: a prefetch does not fault). With nx set it prefetches nl lines a block of the
 * range at nx into L2 instead (the caller's next groups, see mmq_r16_vnni). Measured (docs/performance.md, fourth pass): G
 * streams per thread read faster than one (a read loop on 2 threads: 1 stream 53 GB/s, 2
 * streams 58, 4 streams 63), and halving the broadcast loads per vpdpbusd (the limit: with a
 * broadcast memory operand it ran at ~70 % of the register-operand rate) made two groups
 * compute 15-30 % faster than one at T 3-16 in L3-resident products. A scale stream kept apart
 * from the weights cost ~20 % of the streaming rate; 1 pair or 4+ pairs ahead streamed slower. */
/* r16_multi's prefetch at a pair of blocks: n lines from q into L2 (the caller's next groups),
 * or with q NULL each group's own pair two ahead (17 lines, 2 KB on) */
__attribute__((always_inline)) static inline void r16_prefetch(const uint8_t *const p[4], int G, const char *q, int64_t n) {
    if (q) {
        for (int64_t l = 0; l < n; l++) _mm_prefetch(q + 64 * l, _MM_HINT_T1);
        return;
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
        if (i < G)
            for (int c = 0; c < 17; c++) _mm_prefetch((const char *)p[i] + 2 * 1088 + 64 * c, _MM_HINT_T0);
}

__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
r16_multi(const uint8_t *g, const moe_q8a *xq, int64_t nb, int G, int NT, float *y, int64_t ldy, const char *nx,
          int64_t nl, size_t gs, int64_t ys) {
    __m512 acc[4][6];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++)
            if (i < G && k < NT) acc[i][k] = _mm512_setzero_ps();
    /* a pointer per group and per token, moved on a pair of blocks at a time: with offsets
     * computed from b, gs and nb in the loop GCC kept 32 of them on the stack and bounced
     * weight columns through it (T 1-3 quads) */
    const uint8_t *p[4];
    const moe_q8a *xp[6];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) p[i] = g + gs * (size_t)(i < G ? i : 0);
#pragma GCC unroll 6
    for (int k = 0; k < 6; k++) xp[k] = xq + (k < NT ? k : 0) * nb;
    const char *q = nx;
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        r16_prefetch(p, G, q, 2 * nl);
        if (q) q += 128 * nl;
        const uint8_t *w0[4], *s0[4], *w1[4], *s1[4];
        const moe_q8a *x0[6], *x1[6];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            w0[i] = p[i];
            w1[i] = p[i] + 512;
            s0[i] = p[i] + 1024;
            s1[i] = p[i] + 1056;
        }
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++) {
            x0[k] = xp[k] + b;
            x1[k] = xp[k] + b + 1;
        }
        r16_block(w0, s0, x0, G, NT, acc);
        r16_block(w1, s1, x1, G, NT, acc);
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) p[i] += 1088;
    }
    if (b < nb) { /* an odd last block: its scales follow its weights */
        r16_prefetch(p, G, q, nl);
        const uint8_t *s0[4];
        const moe_q8a *x0[6];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) s0[i] = p[i] + 512;
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++) x0[k] = xp[k] + b;
        r16_block(p, s0, x0, G, NT, acc);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++)
            if (i < G && k < NT) _mm512_storeu_ps(y + k * ldy + ys * i, acc[i][k]);
}

/* r16_multi for G groups and n tokens, with G and n compile-time constants in every case */
#define R16_CASE(G, n)                                                                                                 \
    case 8 * G + n: r16_multi(g, xq, nb, G, n, y, ldy, nx, nl, gs, ys); break;
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
r16_run(int G, int n, const uint8_t *g, const moe_q8a *xq, int64_t nb, float *y, int64_t ldy, const char *nx,
        int64_t nl, size_t gs, int64_t ys) {
    switch (8 * G + n) {
    R16_CASE(4, 1)
    R16_CASE(4, 2)
    R16_CASE(4, 3)
    R16_CASE(2, 1)
    R16_CASE(2, 2)
    R16_CASE(2, 3)
    R16_CASE(2, 4)
    R16_CASE(2, 5)
    R16_CASE(2, 6)
    R16_CASE(1, 1)
    R16_CASE(1, 2)
    R16_CASE(1, 3)
    R16_CASE(1, 4)
    R16_CASE(1, 5)
    R16_CASE(1, 6)
    }
}
#undef R16_CASE

__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static void
mmq_r16_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32;
    int64_t a, e;
    if (!r16_span(w, xq, T, y, ldy, o0, o1, &a, &e)) return;
    /* Many tokens: the tokens go in super-tiles whose activation blocks stay in L2 (about 384 KB,
     * 40 bytes a block) while every group of the range runs over them; otherwise the 16 strided
     * activation streams of each tile come from L3 (prefill ran at ~60 % of the in-cache rate). */
    int64_t ts = (int64_t)(384 * 1024 / 40) / nb / 16 * 16;
    ts = ts < 16 ? 16 : ts;
    for (int64_t s0 = 0; s0 < T; s0 += ts) {
        const int64_t L = (s0 + ts < T ? s0 + ts : T) - s0;
        /* Up to 3 tokens: quads of groups (4 streams), then a pair, then a last single group;
         * more tokens: pairs, then a single group, in tiles of near-equal size of at most 6
         * (13 tokens are 4+4+5, not 6+6+1: a 1-token pass costs a weight pass for a sixth of
         * the work). One tile: no L2 prefetch further ahead (on 2 threads the pair's two
         * streams read at 98-114 % of a one-stream read loop at T 1-2 and 90-96 % at T 4-6
         * without one, 78-96 % with the next pair prefetched). Several tiles: only the first
         * reads memory, the others run on L1/L2, so memory sat idle while they computed (the
         * 222 MB head at T 16 took about the sum of its memory and compute times). Each tile
         * after the range's first therefore prefetches its share of the next groups into L2,
         * and those groups' first tile finds them there: the head at T 16 8.1 -> 5.7 ms, T 12
         * 6.3 -> 5.5 ms in a harness. */
        const int64_t ntile = (L + 5) / 6;
        int64_t o = a;
        if (ntile == 1) {
            /* One tile: the quad's (pair's) groups are one from each of 4 (2) equal slices of the
             * range, so each stream runs on through its slice, group after group: the probe's
             * fastest pattern. Neighbouring groups (one stream each, all 4 moving on together)
             * read 11-17 % slower at T 1-3 and 18-28 % at T 4-6 (the 222 MB head, 2 threads);
             * with several tiles the slices gained nothing (T 8-16: 0.95-0.99). */
            const int GS = L <= 3 ? 4 : 2;
            const int64_t q = (e - a) / (16 * GS);
            for (int64_t b = 0; b < q; b++)
                r16_run(GS, (int)L, w->data + (size_t)(a / 16 + b) * (size_t)nb * 544, xq + s0 * nb, nb,
                        y + s0 * ldy + a + 16 * b, ldy, NULL, 0, (size_t)q * (size_t)nb * 544, 16 * q);
            o = a + 16 * GS * q;
        }
        for (int G = L <= 3 ? 4 : 2; G >= 1; G /= 2)
            for (; o + 16 * G <= e; o += 16 * G) {
                const uint8_t *g = w->data + (size_t)(o / 16) * (size_t)nb * 544;
                const int64_t nlines = (int64_t)G * nb * 544 / 64;
                for (int64_t i = 0; i < ntile; i++) {
                    const int64_t t0 = s0 + L * i / ntile;
                    const char *nx = NULL;
                    int64_t nl = 0;
                    if (ntile > 1 && (i > 0 || o > a)) {
                        const int64_t q0 = nlines * i / ntile, q1 = nlines * (i + 1) / ntile;
                        nx = (const char *)g + (size_t)G * (size_t)nb * 544 + 64 * (size_t)q0;
                        nl = (q1 - q0 + nb - 1) / nb;
                    }
                    r16_run(G, (int)(s0 + L * (i + 1) / ntile - t0), g, xq + t0 * nb, nb, y + t0 * ldy + o, ldy, nx, nl,
                            (size_t)nb * 544, 16);
                }
            }
    }
}

/* The K-quant R16 kernels' eight running sums per token (16 rows each): zeroed, and at the end
 * combined by the refs' tree ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)) and stored, NT ≤ 2 tokens. */
__attribute__((target("avx512f"), always_inline)) static inline void ksum_zero(__m512 acc[2][8], int NT) {
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            if (k < NT) acc[k][j] = _mm512_setzero_ps();
}
__attribute__((target("avx512f"), always_inline)) static inline void ksum_store(__m512 acc[2][8], int NT, float *y,
                                                                                  int64_t ldy) {
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT) {
            const __m512 *a = acc[k];
            _mm512_storeu_ps(y + k * ldy, _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[4]), _mm512_add_ps(a[2], a[6])),
                                                        _mm512_add_ps(_mm512_add_ps(a[1], a[5]), _mm512_add_ps(a[3], a[7]))));
        }
}

/* A Q4_K / Q5_K R16 block's head: the 16 rows' d and dmin as floats, and their 6-bit scales and
 * mins unpacked with moe_kscale8's arithmetic lane-wise (byte j of sc[j / 4] / mn[j / 4] is
 * sub-block j's scale / min); the next block (bs bytes on) is prefetched */
__attribute__((target("avx2,f16c,avx512f,avx512bw"), always_inline)) static inline void
qkr_head(const uint8_t *blk, size_t bs, __m512 *dv, __m512 *mv, __m512i sc[2], __m512i mn[2]) {
    for (size_t c = 0; c < bs / 64; c++) _mm_prefetch((const char *)blk + bs + 64 * c, _MM_HINT_T0);
    const __m512i k3f = _mm512_set1_epi32(0x3f3f3f3f), k0f = _mm512_set1_epi32(0x0f0f0f0f), k30 = _mm512_set1_epi32(0x30303030);
    *dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)blk));
    *mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(blk + 32)));
    const __m512i w0 = _mm512_loadu_si512(blk + 64), w1 = _mm512_loadu_si512(blk + 128), w2 = _mm512_loadu_si512(blk + 192);
    sc[0] = _mm512_and_si512(w0, k3f);
    sc[1] = _mm512_or_si512(_mm512_and_si512(w2, k0f), _mm512_and_si512(_mm512_srli_epi32(w0, 2), k30));
    mn[0] = _mm512_and_si512(w1, k3f);
    mn[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(w2, 4), k0f), _mm512_and_si512(_mm512_srli_epi32(w1, 2), k30));
}

/* Q5_K R16: the fifth bits of column c for sub-blocks j (into lo) and j + 1 (into hi): bit j
 * (j + 1) of each qh byte moved to bit 4 (16-bit shifts: no bit crosses into bit 4 of the other
 * byte) */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void q5k_high(const uint8_t *blk, int c, int j,
                                                                                        __m512i m10, __m512i *lo,
                                                                                        __m512i *hi) {
    const __m512i qh = _mm512_loadu_si512(blk + 2304 + 64 * c);
    *lo = _mm512_or_si512(*lo, _mm512_and_si512(_mm512_slli_epi16(_mm512_srli_epi16(qh, j), 4), m10));
    *hi = _mm512_or_si512(*hi, _mm512_and_si512(_mm512_slli_epi16(_mm512_srli_epi16(qh, j + 1), 4), m10));
}

/* Q4_K R16 (kern.h): 16 rows in the lanes of a zmm. Per 256-value block: the 16 rows' d and
 * dmin as floats, their 6-bit scales and mins unpacked from three words with moe_kscale8's
 * arithmetic lane-wise; per pair of sub-blocks 8 columns, each masked (low nibbles: sub-block
 * 2p) and shifted (high: 2p+1) into vpdpbusd's unsigned operand against the token's broadcast
 * activation dword; then per sub-block j the ref's two fmas into running sum j (8 per token,
 * as moe_kern_q4k_dot_ref keeps them), and the ref's tree at the end. NT ≤ 2 tokens (16 float
 * sums), for 1 or 2 tokens; from KR_MANY_MIN tokens on, q4kr_many. Each block prefetches the
 * block after it (36 lines, 2.3 KB on). */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q4kr_group(const uint8_t *g, const moe_q8a *xq, int64_t nb, int NT, float *y, int64_t ldy, int FIVE) {
    const int64_t nsb = nb / 8;
    const size_t bs = FIVE ? MOE_Q5K_R16_BLOCK : MOE_Q4K_R16_BLOCK;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10), mff = _mm512_set1_epi32(0xFF);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512 acc[2][8];
    ksum_zero(acc, NT);
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = g + (size_t)sb * bs;
        __m512 dv, mv;
        __m512i sc[2], mn[2];
        qkr_head(blk, bs, &dv, &mv, sc, mn);
        const moe_q8a *xb = xq + sb * 8;
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            /* integer sums per (token, sub-block); one token splits each over two chains (columns
             * 0-3 and 4-7, added after: exact) to hide the vpdpbusd latency */
            __m512i i0[2], i1[2], i0b = _mm512_setzero_si512(), i1b = i0b;
#pragma GCC unroll 2
            for (int k = 0; k < 2; k++)
                if (k < NT) i0[k] = i1[k] = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                const __m512i q = _mm512_loadu_si512(blk + 256 + 512 * p + 64 * c);
                __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                if (FIVE) q5k_high(blk, c, 2 * p, m10, &lo, &hi);
#pragma GCC unroll 2
                for (int k = 0; k < 2; k++)
                    if (k < NT) {
                        const moe_q8a *a = xb + k * nb + 2 * p;
                        const __m512i x0 = _mm512_set1_epi32(((const int32_t *)(const void *)a[0].q)[c]);
                        const __m512i x1 = _mm512_set1_epi32(((const int32_t *)(const void *)a[1].q)[c]);
                        if (NT == 1 && c >= 4) {
                            i0b = _mm512_dpbusd_epi32(i0b, lo, x0);
                            i1b = _mm512_dpbusd_epi32(i1b, hi, x1);
                        } else {
                            i0[k] = _mm512_dpbusd_epi32(i0[k], lo, x0);
                            i1[k] = _mm512_dpbusd_epi32(i1[k], hi, x1);
                        }
                    }
            }
            if (NT == 1) {
                i0[0] = _mm512_add_epi32(i0[0], i0b);
                i1[0] = _mm512_add_epi32(i1[0], i1b);
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const int j = 2 * p + h;
                const __m512 d1 = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(sc[j / 4], 8 * (j % 4)), mff)));
                const __m512 m1 = _mm512_mul_ps(mv, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srli_epi32(mn[j / 4], 8 * (j % 4)), mff)));
#pragma GCC unroll 2
                for (int k = 0; k < 2; k++)
                    if (k < NT) {
                        const moe_q8a *a = xb + k * nb + j;
                        const __m512 dx = _mm512_set1_ps(a->d);
                        acc[k][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(h ? i1[k] : i0[k]), _mm512_mul_ps(d1, dx), acc[k][j]);
                        acc[k][j] = _mm512_fmadd_ps(_mm512_set1_ps((float)a->s), _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(_mm512_mul_ps(m1, dx)), sign)), acc[k][j]);
                    }
            }
        }
    }
    ksum_store(acc, NT, y, ldy);
}

/* ksum_zero and ksum_store for the many-token kernels' running sums, kept in memory */
__attribute__((target("avx512f"))) static void ksum_zero_many(float (*acc)[8][16], int64_t T) {
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < 8; j++) _mm512_store_ps(acc[t][j], _mm512_setzero_ps());
}
__attribute__((target("avx512f"))) static void ksum_store_many(float (*acc)[8][16], int64_t T, float *y, int64_t ldy) {
    for (int64_t t = 0; t < T; t++) {
        float(*a)[16] = acc[t];
        const __m512 s04 = _mm512_add_ps(_mm512_load_ps(a[0]), _mm512_load_ps(a[4]));
        const __m512 s26 = _mm512_add_ps(_mm512_load_ps(a[2]), _mm512_load_ps(a[6]));
        const __m512 s15 = _mm512_add_ps(_mm512_load_ps(a[1]), _mm512_load_ps(a[5]));
        const __m512 s37 = _mm512_add_ps(_mm512_load_ps(a[3]), _mm512_load_ps(a[7]));
        _mm512_storeu_ps(y + t * ldy, _mm512_add_ps(_mm512_add_ps(s04, s26), _mm512_add_ps(s15, s37)));
    }
}

/* Q4_K R16 over many tokens (3 to Q4KR_TC per call): the same arithmetic as q4kr_group, the
 * loops turned so each pair of sub-blocks is unpacked once (16 columns of 4-bit values, the
 * scales times d and the negated mins times dmin, in registers) and then runs over all the
 * tokens, two at a time, their eight running sums each kept in a stack buffer (Q4KR_TC × 2 KB,
 * in L1). Every (token, sub-block) sum sees the ref's fmas in the ref's order: −(m·dx) and
 * (−m)·dx are the same float. */
#define Q4KR_TC 24
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q4kr_tok(const __m512i lo[8], const __m512i hi[8], const __m512 d1[2], const __m512 nm1[2], const moe_q8a *xb,
         int64_t nb, int p, float (*acc)[8][16], int NT) {
    __m512i i0[2], i1[2], i0b[2], i1b[2];
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT) i0[k] = i1[k] = i0b[k] = i1b[k] = _mm512_setzero_si512();
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++)
            if (k < NT) {
                const moe_q8a *a = xb + k * nb + 2 * p;
                const __m512i x0 = _mm512_set1_epi32(((const int32_t *)(const void *)a[0].q)[c]);
                const __m512i x1 = _mm512_set1_epi32(((const int32_t *)(const void *)a[1].q)[c]);
                if (c < 4) {
                    i0[k] = _mm512_dpbusd_epi32(i0[k], lo[c], x0);
                    i1[k] = _mm512_dpbusd_epi32(i1[k], hi[c], x1);
                } else {
                    i0b[k] = _mm512_dpbusd_epi32(i0b[k], lo[c], x0);
                    i1b[k] = _mm512_dpbusd_epi32(i1b[k], hi[c], x1);
                }
            }
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT)
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const moe_q8a *a = xb + k * nb + 2 * p + h;
                const __m512 dx = _mm512_set1_ps(a->d);
                const __m512i is = h ? _mm512_add_epi32(i1[k], i1b[k]) : _mm512_add_epi32(i0[k], i0b[k]);
                float *ap = acc[k][2 * p + h];
                __m512 A = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(d1[h], dx), _mm512_load_ps(ap));
                _mm512_store_ps(ap, _mm512_fmadd_ps(_mm512_set1_ps((float)a->s), _mm512_mul_ps(nm1[h], dx), A));
            }
}

__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q4kr_many(const uint8_t *g, const moe_q8a *xq, int64_t nb, int64_t T, float *y, int64_t ldy, int FIVE) {
    const int64_t nsb = nb / 8;
    const size_t bs = FIVE ? MOE_Q5K_R16_BLOCK : MOE_Q4K_R16_BLOCK;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10), mff = _mm512_set1_epi32(0xFF);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    _Alignas(64) float acc[Q4KR_TC][8][16];
    ksum_zero_many(acc, T);
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *blk = g + (size_t)sb * bs;
        __m512 dv, mv;
        __m512i sc[2], mn[2];
        qkr_head(blk, bs, &dv, &mv, sc, mn);
        const moe_q8a *xb = xq + sb * 8;
        for (int p = 0; p < 4; p++) {
            __m512i lo[8], hi[8];
            __m512 d1[2], nm1[2];
#pragma GCC unroll 8
            for (int c = 0; c < 8; c++) {
                const __m512i q = _mm512_loadu_si512(blk + 256 + 512 * p + 64 * c);
                lo[c] = _mm512_and_si512(q, m4);
                hi[c] = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                if (FIVE) q5k_high(blk, c, 2 * p, m10, &lo[c], &hi[c]);
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const int j = 2 * p + h;
                d1[h] = _mm512_mul_ps(dv, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(sc[j / 4], _mm512_set1_epi32(8 * (j % 4))), mff)));
                nm1[h] = _mm512_castsi512_ps(_mm512_xor_si512(
                    _mm512_castps_si512(_mm512_mul_ps(mv, _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_srlv_epi32(mn[j / 4], _mm512_set1_epi32(8 * (j % 4))), mff)))),
                    sign));
            }
            int64_t t = 0;
            for (; t + 2 <= T; t += 2) q4kr_tok(lo, hi, d1, nm1, xb + t * nb, nb, p, acc + t, 2);
            if (t < T) q4kr_tok(lo, hi, d1, nm1, xb + t * nb, nb, p, acc + t, 1);
        }
    }
    ksum_store_many(acc, T, y, ldy);
}

/* from 3 tokens on, the many-token forms (Q4_K: 3 tokens +6 %, 16 tokens +30 % in L2; Q6_K: +38 %
 * and 2.3×) */
#define KR_MANY_MIN 3
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
qkr_rows(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1, int FIVE) {
    const int64_t nb = w->in / 32, nsb = nb / 8;
    int64_t a, e;
    if (!r16_span(w, xq, T, y, ldy, o0, o1, &a, &e)) return;
    for (int64_t o = a; o < e; o += 16) {
        const uint8_t *g = w->data + (size_t)(o / 16) * (size_t)nsb * (FIVE ? MOE_Q5K_R16_BLOCK : MOE_Q4K_R16_BLOCK);
        if (T >= KR_MANY_MIN) {
            const int64_t nc = (T + Q4KR_TC - 1) / Q4KR_TC;
            for (int64_t i = 0; i < nc; i++) {
                const int64_t t0 = T * i / nc;
                q4kr_many(g, xq + t0 * nb, nb, T * (i + 1) / nc - t0, y + t0 * ldy + o, ldy, FIVE);
            }
            continue;
        }
        int64_t t = 0;
        for (; t + 2 <= T; t += 2) q4kr_group(g, xq + t * nb, nb, 2, y + t * ldy + o, ldy, FIVE);
        if (t < T) q4kr_group(g, xq + t * nb, nb, 1, y + t * ldy + o, ldy, FIVE);
    }
}

/* one mmq form per layout of a family: FAMILY_rows with the layout's compile-time kind */
#define R16_FORM(NAME, ROWS, KIND)                                                                                     \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static void NAME(                   \
        const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {             \
        ROWS(w, xq, T, y, ldy, o0, o1, KIND);                                                                          \
    }
R16_FORM(q4kr_vnni, qkr_rows, 0)
R16_FORM(q5kr_vnni, qkr_rows, 1)

/* Q5_0 R16 (kern.h): 16 rows in the lanes. Per 32-value block and column c: the nibbles masked
 * and shifted, the high bits of the permuted qh shifted to bit 4 of each byte (left by 4 − c for
 * the low nibbles, right by c for the high ones) and or-ed in: two vectors of w + 16 for
 * vpdpbusd against the token's broadcast dwords c and 4 + c. Two chains per token (low and
 * high halves, the first starting at −16·Σx), NT ≤ 6 tokens per pass; then the ref's one fma per
 * block. Each block prefetches the block six ahead (~2 KB). */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q5r_group(const uint8_t *g, const moe_q8a *xq, int64_t nb, int NT, float *y, int64_t ldy, int KIND, int G, size_t gst,
          int64_t ys) {
    /* KIND 0: Q5_0 R16; 1: Q5_1 R16 (the min's F16s before qh, no −16); 2: Q4_0 R16 (no qh, −8).
     * G groups (group i at g + gst·i, its outputs at y + ys·i), G·NT ≤ 6 */
    const int M = KIND == 1, Q4 = KIND == 2;
    const __m512i m4 = _mm512_set1_epi8(0x0F), m10 = _mm512_set1_epi8(0x10);
    const size_t bs = Q4 ? 288 : M ? 384 : 352, hq0 = M ? 64 : 32;
    __m512 acc[4][6];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++)
            if (i < G && k < NT) acc[i][k] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) {
            if (i >= G) break;
            const uint8_t *blk = g + gst * (size_t)i + (size_t)b * bs;
            for (int l = 0; l < 6; l++) _mm_prefetch((const char *)blk + 6 * bs + 64 * l, _MM_HINT_T0);
            const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)blk));
            const __m512i hq = Q4 ? _mm512_setzero_si512() : _mm512_loadu_si512(blk + hq0);
            __m512i sl[6], sh[6];
#pragma GCC unroll 6
            for (int k = 0; k < 6; k++)
                if (k < NT) {
                    sl[k] = M ? _mm512_setzero_si512() : _mm512_set1_epi32((Q4 ? -8 : -16) * xq[k * nb + b].s);
                    sh[k] = _mm512_setzero_si512();
                }
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i q = _mm512_loadu_si512(blk + (Q4 ? 32 : hq0 + 64) + 64 * c);
                __m512i ul = _mm512_and_si512(q, m4), uh = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
                if (!Q4) {
                    ul = _mm512_or_si512(ul, _mm512_and_si512(_mm512_slli_epi32(hq, 4 - c), m10));
                    uh = _mm512_or_si512(uh, _mm512_and_si512(_mm512_srli_epi32(hq, c), m10));
                }
#pragma GCC unroll 6
                for (int k = 0; k < 6; k++)
                    if (k < NT) {
                        const int32_t *xd = (const int32_t *)(const void *)xq[k * nb + b].q;
                        sl[k] = _mm512_dpbusd_epi32(sl[k], ul, _mm512_set1_epi32(xd[c]));
                        sh[k] = _mm512_dpbusd_epi32(sh[k], uh, _mm512_set1_epi32(xd[4 + c]));
                    }
            }
#pragma GCC unroll 6
            for (int k = 0; k < 6; k++)
                if (k < NT)
                    acc[i][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(sl[k], sh[k])),
                                                _mm512_mul_ps(dw, _mm512_set1_ps(xq[k * nb + b].d)), acc[i][k]);
            if (M) {
                const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(blk + 32)));
#pragma GCC unroll 6
                for (int k = 0; k < 6; k++)
                    if (k < NT)
                        acc[i][k] = _mm512_fmadd_ps(_mm512_set1_ps((float)xq[k * nb + b].s),
                                                    _mm512_mul_ps(mw, _mm512_set1_ps(xq[k * nb + b].d)), acc[i][k]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++)
#pragma GCC unroll 6
        for (int k = 0; k < 6; k++)
            if (i < G && k < NT) _mm512_storeu_ps(y + k * ldy + ys * i, acc[i][k]);
}

#define Q5R_CASE(n)                                                                                                    \
    case n: q5r_group(g, xq + t0 * nb, nb, n, y + t0 * ldy + o, ldy, KIND, 1, 0, 16); break;
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q5r_rows(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1, int KIND) {
    const int64_t nb = w->in / 32, ntile = (T + 5) / 6;
    const size_t gs = (size_t)nb * (KIND == 2 ? 288 : KIND == 1 ? 384 : 352);
    int64_t a, e;
    if (!r16_span(w, xq, T, y, ldy, o0, o1, &a, &e)) return;
    if (T <= 2) {
        /* one group from each of 4 (2 tokens: 2) equal slices of the range per pass, as
         * mmq_r16_vnni's quads: a stream per slice. One group at a time (one stream) decoded the
         * Q4_0 bench model 20-33 % slower (docs/performance.md, seventh pass) */
        const int GS = T == 1 ? 4 : 2;
        const int64_t q = (e - a) / (16 * GS);
        for (int64_t b = 0; b < q; b++) {
            const uint8_t *g = w->data + (size_t)(a / 16 + b) * gs;
            if (GS == 4)
                q5r_group(g, xq, nb, 1, y + a + 16 * b, ldy, KIND, 4, (size_t)q * gs, 16 * q);
            else
                q5r_group(g, xq, nb, 2, y + a + 16 * b, ldy, KIND, 2, (size_t)q * gs, 16 * q);
        }
        a += 16 * GS * q;
    }
    for (int64_t o = a; o < e; o += 16) {
        const uint8_t *g = w->data + (size_t)(o / 16) * gs;
        for (int64_t i = 0; i < ntile; i++) { /* tiles of near-equal size, at most 6 */
            const int64_t t0 = T * i / ntile;
            switch ((int)(T * (i + 1) / ntile - t0)) {
            Q5R_CASE(6)
            Q5R_CASE(5)
            Q5R_CASE(4)
            Q5R_CASE(3)
            Q5R_CASE(2)
            Q5R_CASE(1)
            }
        }
    }
}

R16_FORM(q5r_vnni, q5r_rows, 0)
R16_FORM(q51r_vnni, q5r_rows, 1)
R16_FORM(q4r_vnni, q5r_rows, 2)

/* Q6_K R16 block blk's activation block j = 4n + m: the 16 rows' 6-bit values of its 8 columns
 * (ql nibble or-ed with the qh bits 2m, 2m+1 moved to bits 4-5) and its two int8 scale vectors
 * (scale indices 8n + 2m and + 1: word s/4, byte s%4, sign-extended) */
__attribute__((target("avx512f,avx512bw"), always_inline)) static inline void q6kr_cols(const uint8_t *blk, int j, __m512i u[8],
                                                                                         __m512i *sc0, __m512i *sc1) {
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    const int n = j / 4, m = j % 4;
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++) {
        const __m512i lq = _mm512_loadu_si512(blk + 288 + 64 * (16 * n + 8 * (m & 1) + c));
        const __m512i hq = _mm512_loadu_si512(blk + 2336 + 64 * (8 * n + c));
        const __m512i nib = m < 2 ? _mm512_and_si512(lq, m4) : _mm512_and_si512(_mm512_srli_epi16(lq, 4), m4);
        const __m512i hb = m == 0   ? _mm512_and_si512(_mm512_slli_epi16(hq, 4), m30)
                           : m == 1 ? _mm512_and_si512(_mm512_slli_epi16(hq, 2), m30)
                           : m == 2 ? _mm512_and_si512(hq, m30)
                                    : _mm512_and_si512(_mm512_srli_epi16(hq, 2), m30);
        u[c] = _mm512_or_si512(nib, hb);
    }
    const int s0 = 8 * n + 2 * m, s1 = s0 + 1;
    const __m512i w0 = _mm512_loadu_si512(blk + 32 + 64 * (s0 / 4)), w1 = _mm512_loadu_si512(blk + 32 + 64 * (s1 / 4));
    *sc0 = _mm512_srai_epi32(_mm512_slli_epi32(w0, 24 - 8 * (s0 % 4)), 24);
    *sc1 = _mm512_srai_epi32(_mm512_slli_epi32(w1, 24 - 8 * (s1 % 4)), 24);
}

/* Activation block b of NT ≤ 2 tokens against the 16 rows' columns u: two chains per token
 * (the block's 16-value halves) started at −32·Σx of their half (hs), times the int8 scales and
 * summed exactly */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline void
q6kr_isum(const __m512i u[8], __m512i sc0, __m512i sc1, const moe_q8a *xq, int64_t nb, int64_t b, const int32_t *hs, int NT,
          __m512i isum[2]) {
    __m512i i0[2], i1[2];
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT) {
            i0[k] = _mm512_set1_epi32(-hs[(k * nb + b) * 2]);
            i1[k] = _mm512_set1_epi32(-hs[(k * nb + b) * 2 + 1]);
        }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c++)
#pragma GCC unroll 2
        for (int k = 0; k < 2; k++)
            if (k < NT) {
                const __m512i xb = _mm512_set1_epi32(((const int32_t *)(const void *)xq[k * nb + b].q)[c]);
                if (c < 4)
                    i0[k] = _mm512_dpbusd_epi32(i0[k], u[c], xb);
                else
                    i1[k] = _mm512_dpbusd_epi32(i1[k], u[c], xb);
            }
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT) isum[k] = _mm512_add_epi32(_mm512_mullo_epi32(sc0, i0[k]), _mm512_mullo_epi32(sc1, i1[k]));
}

/* Q6_K R16 (kern.h): 16 rows in the lanes. Per activation block j = 4n + m of a 256-value block
 * and column c: the ql column masked or shifted (nibble) or-ed with the qh column's bits 2m, 2m+1
 * moved to bits 4-5: the 6-bit u of 16 rows for vpdpbusd. Two chains per token (the block's two
 * 16-value halves), started at −32·Σx of their half (hs); then the two int8 scales of 16 rows
 * (sign-extended from the scale words) times the halves, summed exactly, and the ref's fma into
 * running sum j. NT ≤ 2 tokens per pass, for up to 2 tokens (from KR_MANY_MIN on, q6kr_many).
 * Each block prefetches the next (q6kr_block). */
/* Block sb of a Q6_K R16 group: prefetches the next block (53 lines) and loads the 16 rows' d. */
__attribute__((target("avx2,fma,f16c,avx512f"), always_inline)) static inline const uint8_t *
q6kr_block(const uint8_t *g, int64_t sb, __m512 *dv) {
    const uint8_t *blk = g + (size_t)sb * MOE_Q6K_R16_BLOCK;
    for (int c = 0; c < 53; c++) _mm_prefetch((const char *)blk + MOE_Q6K_R16_BLOCK + 64 * c, _MM_HINT_T0);
    *dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)blk));
    return blk;
}
/* The ref's step of a running sum: acc + (float)isum · (d·dx), one fma. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 q6kr_fma(__m512i isum, __m512 dv, float dx,
                                                                                __m512 acc) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dv, _mm512_set1_ps(dx)), acc);
}
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q6kr_group(const uint8_t *g, const moe_q8a *xq, int64_t nb, int NT, float *y, int64_t ldy, const int32_t *hs) {
    const int64_t nsb = nb / 8;
    __m512 acc[2][8];
    ksum_zero(acc, NT);
    for (int64_t sb = 0; sb < nsb; sb++) {
        __m512 dv;
        const uint8_t *blk = q6kr_block(g, sb, &dv);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const int64_t b = sb * 8 + j;
            __m512i u[8], sc0, sc1, isum[2];
            q6kr_cols(blk, j, u, &sc0, &sc1);
            q6kr_isum(u, sc0, sc1, xq, nb, b, hs, NT, isum);
#pragma GCC unroll 2
            for (int k = 0; k < 2; k++)
                if (k < NT)
                    acc[k][j] = q6kr_fma(isum[k], dv, xq[k * nb + b].d, acc[k][j]);
        }
    }
    ksum_store(acc, NT, y, ldy);
}

/* Q6_K R16 over many tokens (3 to Q4KR_TC per call), as q4kr_many does Q4_K: each activation
 * block's 16 columns of 6-bit values and two scale vectors are assembled once and run over all
 * the tokens, two at a time; hs holds 32·Σx of each half block for every token (hs[(t·nb + b)·2]). */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"), always_inline)) static inline void
q6kr_tok(const __m512i u[8], __m512i sc0, __m512i sc1, __m512 dv, const moe_q8a *xq, int64_t nb, int64_t b,
         const int32_t *hs, float (*acc)[8][16], int j, int NT) {
    __m512i isum[2];
    q6kr_isum(u, sc0, sc1, xq, nb, b, hs, NT, isum);
#pragma GCC unroll 2
    for (int k = 0; k < 2; k++)
        if (k < NT) {
            float *ap = acc[k][j];
            _mm512_store_ps(ap, q6kr_fma(isum[k], dv, xq[k * nb + b].d, _mm512_load_ps(ap)));
        }
}

__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static void
q6kr_many(const uint8_t *g, const moe_q8a *xq, int64_t nb, int64_t T, float *y, int64_t ldy, const int32_t *hs) {
    const int64_t nsb = nb / 8;
    _Alignas(64) float acc[Q4KR_TC][8][16];
    ksum_zero_many(acc, T);
    for (int64_t sb = 0; sb < nsb; sb++) {
        __m512 dv;
        const uint8_t *blk = q6kr_block(g, sb, &dv);
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const int64_t b = sb * 8 + j;
            __m512i u[8], sc0, sc1;
            q6kr_cols(blk, j, u, &sc0, &sc1);
            int64_t t = 0;
            for (; t + 2 <= T; t += 2) q6kr_tok(u, sc0, sc1, dv, xq + t * nb, nb, b, hs + t * nb * 2, acc + t, j, 2);
            if (t < T) q6kr_tok(u, sc0, sc1, dv, xq + t * nb, nb, b, hs + t * nb * 2, acc + t, j, 1);
        }
    }
    ksum_store_many(acc, T, y, ldy);
}

/* 32·Σx of each 16-value half of blocks [0, nb) of tokens [0, n) (q6kr_group's and q6kr_many's hs) */
static void q6k_halves(const moe_q8a *xq, int64_t nb, int64_t n, int32_t *hs) {
    for (int64_t k = 0; k < n; k++)
        for (int64_t b = 0; b < nb; b++) {
            const moe_q8a *x = xq + k * nb + b;
            int32_t h0 = 0;
            for (int l = 0; l < 16; l++) h0 += x->q[l];
            hs[(k * nb + b) * 2] = 32 * h0;
            hs[(k * nb + b) * 2 + 1] = 32 * (x->s - h0);
        }
}

#define Q6KR_MAXNB 1024 /* rows of up to 32768 values; longer ones the ref */
__attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"))) static void
q6kr_vnni(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32, nsb = nb / 8;
    if (nb > Q6KR_MAXNB) {
        moe_kern_mmq_rows_ref(w, xq, T, y, ldy, o0, o1);
        return;
    }
    int64_t a, e;
    if (!r16_span(w, xq, T, y, ldy, o0, o1, &a, &e)) return;
    /* per token and block: 32·Σx of each 16-value half; 48 KB, enough for Q4KR_TC tokens of
     * rows up to 6144 values and 6 tokens of the longest */
    int32_t hs[12288];
    if (T >= KR_MANY_MIN) {
        int64_t tc = 12288 / (2 * nb);
        tc = tc < Q4KR_TC ? tc : Q4KR_TC;
        const int64_t nc = (T + tc - 1) / tc;
        for (int64_t i = 0; i < nc; i++) {
            const int64_t t0 = T * i / nc, n = T * (i + 1) / nc - t0;
            q6k_halves(xq + t0 * nb, nb, n, hs);
            for (int64_t o = a; o < e; o += 16)
                q6kr_many(w->data + (size_t)(o / 16) * (size_t)nsb * MOE_Q6K_R16_BLOCK, xq + t0 * nb, nb, n,
                          y + t0 * ldy + o, ldy, hs);
        }
        return;
    }
    for (int64_t t = 0; t < T; t += 2) {
        const int nt = T - t < 2 ? (int)(T - t) : 2;
        q6k_halves(xq + t * nb, nb, nt, hs);
        for (int64_t o = a; o < e; o += 16) {
            const uint8_t *g = w->data + (size_t)(o / 16) * (size_t)nsb * MOE_Q6K_R16_BLOCK;
            if (nt == 2)
                q6kr_group(g, xq + t * nb, nb, 2, y + t * ldy + o, ldy, hs);
            else
                q6kr_group(g, xq + t * nb, nb, 1, y + t * ldy + o, ldy, hs);
        }
    }
}
#endif /* MOE_X86 */

#if defined(__aarch64__)
static void quant_act_neon(const float *x, moe_q8a *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32, y++) {
        float32x4_t v[8], m = vdupq_n_f32(0.0f);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(x + 4 * k);
            m = vmaxq_f32(m, vabsq_f32(v[k]));
        }
        float amax = vmaxvq_f32(m);
        if (amax < MOE_Q8A_MIN) amax = 0.0f;
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y->d = amax / 127.0f;
        int32_t s = 0;
        for (int k = 0; k < 8; k++) {
            int32x4_t q = vcvtnq_s32_f32(vmulq_n_f32(v[k], id)); /* nearest, ties to even */
            s += vaddvq_s32(q);
            int32_t t[4];
            vst1q_s32(t, q);
            for (int j = 0; j < 4; j++) y->q[4 * k + j] = (int8_t)t[j];
        }
        y->s = s;
    }
}

/* Σ of 16 or 32 int8 products (exact in int32: every product fits int16) */
static inline int32_t dot16_neon(int8x16_t w, const int8_t *x) {
    const int8x16_t v = vld1q_s8(x);
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(v)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(w), vget_high_s8(v)));
    return vaddvq_s32(s);
}
static inline int32_t dot32_neon(int8x16_t w0, int8x16_t w1, const int8_t *x) {
    const int8x16_t x0 = vld1q_s8(x), x1 = vld1q_s8(x + 16);
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(w0), vget_high_s8(x0)));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
    s = vpadalq_s16(s, vmull_s8(vget_high_s8(w1), vget_high_s8(x1)));
    return vaddvq_s32(s);
}

/* bit j of the 32-bit qh word, for bytes j = 0..31, as 0x10 (the fifth bit of Q5_0 / Q5_1 values) */
static inline void q5_high_neon(const uint8_t *qh, uint8x16_t *h0, uint8x16_t *h1) {
    const uint8x8_t sel = {1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t m10 = vdupq_n_u8(0x10);
    *h0 = vandq_u8(vcombine_u8(vtst_u8(vdup_n_u8(qh[0]), sel), vtst_u8(vdup_n_u8(qh[1]), sel)), m10);
    *h1 = vandq_u8(vcombine_u8(vtst_u8(vdup_n_u8(qh[2]), sel), vtst_u8(vdup_n_u8(qh[3]), sel)), m10);
}

/* Q8_0, Q4_0, Q5_0 and Q5_1 in the file's layout: a row at a time, the block's integer dot in
 * NEON and the ref's fmas (Q5_1: then the min's) */
static void mmq_neon(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32;
    const int q8 = w->type == MOE_DTYPE_Q8_0, q51 = w->type == MOE_DTYPE_Q5_1, q5 = q51 || w->type == MOE_DTYPE_Q5_0;
    const size_t bb = q8 ? 34 : q51 ? 24 : q5 ? 22 : 18;
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = w->data + (size_t)o * w->row_bytes;
        for (int64_t t = 0; t < T; t++) {
            const moe_q8a *a = xq + t * nb;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                const uint8_t *wb = row + (size_t)b * bb;
                int8x16_t w0, w1;
                if (q8) {
                    w0 = vld1q_s8((const int8_t *)wb + 2);
                    w1 = vld1q_s8((const int8_t *)wb + 18);
                } else {
                    /* Q4_0: u − 8; Q5_0: (u | fifth bit) − 16; Q5_1: u | fifth bit */
                    const uint8_t *qs = wb + bb - 16;
                    const uint8x16_t q = vld1q_u8(qs);
                    uint8x16_t u0 = vandq_u8(q, vdupq_n_u8(0x0F)), u1 = vshrq_n_u8(q, 4);
                    if (q5) {
                        uint8x16_t h0, h1;
                        q5_high_neon(wb + (q51 ? 4 : 2), &h0, &h1);
                        u0 = vorrq_u8(u0, h0);
                        u1 = vorrq_u8(u1, h1);
                    }
                    const int8x16_t bias = vdupq_n_s8(q51 ? 0 : q5 ? 16 : 8);
                    w0 = vsubq_s8(vreinterpretq_s8_u8(u0), bias);
                    w1 = vsubq_s8(vreinterpretq_s8_u8(u1), bias);
                }
                uint16_t h;
                memcpy(&h, wb, 2);
                acc = fmaf((float)dot32_neon(w0, w1, a[b].q), moe_f16_to_f32(h) * a[b].d, acc);
                if (q51) {
                    memcpy(&h, wb + 2, 2);
                    acc = fmaf((float)a[b].s, moe_f16_to_f32(h) * a[b].d, acc);
                }
            }
            y[t * ldy + o] = acc;
        }
    }
}

/* Q4_K and Q5_K: a row at a time; per block the 8 sub-blocks' integer dots in NEON, then the
 * ref's float part (moe_kern_qk_block_fma) */
static void qk_neon(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int five = w->type == MOE_DTYPE_Q5_K;
    const int64_t nb = w->in / 32, nsb = nb / 8;
    const size_t bs = five ? 176 : 144;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), one = vdupq_n_u8(1);
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = w->data + (size_t)o * w->row_bytes;
        for (int64_t t = 0; t < T; t++) {
            const moe_q8a *a = xq + t * nb;
            float acc[8] = {0};
            for (int64_t sb = 0; sb < nsb; sb++) {
                const uint8_t *blk = row + (size_t)sb * bs, *qs = blk + (five ? 48 : 16);
                const uint8x16_t h0 = five ? vld1q_u8(blk + 16) : m4, h1 = five ? vld1q_u8(blk + 32) : m4;
                int32_t idot[8];
                for (int p = 0; p < 4; p++) {
                    const uint8x16_t q0 = vld1q_u8(qs + 32 * p), q1 = vld1q_u8(qs + 32 * p + 16);
                    uint8x16_t l0 = vandq_u8(q0, m4), l1 = vandq_u8(q1, m4), g0 = vshrq_n_u8(q0, 4), g1 = vshrq_n_u8(q1, 4);
                    if (five) { /* bit 2p (2p + 1) of qh[l] is value l's fifth bit in sub-block 2p (2p + 1) */
                        const int8x16_t sl = vdupq_n_s8((int8_t)(-2 * p)), sh = vdupq_n_s8((int8_t)(-2 * p - 1));
                        l0 = vorrq_u8(l0, vshlq_n_u8(vandq_u8(vshlq_u8(h0, sl), one), 4));
                        l1 = vorrq_u8(l1, vshlq_n_u8(vandq_u8(vshlq_u8(h1, sl), one), 4));
                        g0 = vorrq_u8(g0, vshlq_n_u8(vandq_u8(vshlq_u8(h0, sh), one), 4));
                        g1 = vorrq_u8(g1, vshlq_n_u8(vandq_u8(vshlq_u8(h1, sh), one), 4));
                    }
                    idot[2 * p] = dot32_neon(vreinterpretq_s8_u8(l0), vreinterpretq_s8_u8(l1), a[sb * 8 + 2 * p].q);
                    idot[2 * p + 1] = dot32_neon(vreinterpretq_s8_u8(g0), vreinterpretq_s8_u8(g1), a[sb * 8 + 2 * p + 1].q);
                }
                moe_kern_qk_block_fma(blk, a + sb * 8, idot, acc);
            }
            y[t * ldy + o] = moe_kern_ksum_tree(acc);
        }
    }
}

/* Q6_K: a row at a time; per activation block the two 16-value halves' dots in NEON, times the
 * int8 scales, then the ref's float part (moe_kern_q6k_block_fma) */
static void q6k_neon(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const int64_t nb = w->in / 32, nsb = nb / 8;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    const int8x16_t k32 = vdupq_n_s8(32);
    for (int64_t o = o0; o < o1; o++) {
        const uint8_t *row = w->data + (size_t)o * w->row_bytes;
        for (int64_t t = 0; t < T; t++) {
            const moe_q8a *a = xq + t * nb;
            float acc[8] = {0};
            for (int64_t sb = 0; sb < nsb; sb++) {
                const uint8_t *blk = row + (size_t)sb * 210, *ql = blk, *qh = blk + 128;
                const int8_t *sc = (const int8_t *)(blk + 192);
                int32_t is[8];
                for (int j = 0; j < 8; j++) {
                    const int n = j / 4, m = j % 4;
                    int32_t half[2];
                    for (int hf = 0; hf < 2; hf++) {
                        const uint8x16_t l = vld1q_u8(ql + 64 * n + 32 * (m & 1) + 16 * hf);
                        const uint8x16_t hb = vld1q_u8(qh + 32 * n + 16 * hf);
                        const uint8x16_t nib = (m >> 1) ? vshrq_n_u8(l, 4) : vandq_u8(l, m4);
                        const uint8x16_t hi = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t)(-2 * m))), m3);
                        const int8x16_t u = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(nib, vshlq_n_u8(hi, 4))), k32);
                        half[hf] = dot16_neon(u, a[sb * 8 + j].q + 16 * hf);
                    }
                    is[j] = sc[8 * n + 2 * m] * half[0] + sc[8 * n + 2 * m + 1] * half[1];
                }
                moe_kern_q6k_block_fma(blk, a + sb * 8, is, acc);
            }
            y[t * ldy + o] = moe_kern_ksum_tree(acc);
        }
    }
}
#endif

void moe_kern_quant_act(const float *x, moe_q8a *y, int64_t n) {
#ifdef MOE_X86
    if (moe_kern_level() >= 1) {
        quant_act_avx2(x, y, n);
        return;
    }
#endif
#if defined(__aarch64__)
    if (moe_kern_level() == 3) {
        quant_act_neon(x, y, n);
        return;
    }
#endif
    moe_kern_quant_act_ref(x, y, n);
}

typedef void (*mmq_fn)(const moe_wview *, const moe_q8a *, int64_t, float *, int64_t, int64_t, int64_t);

/* The SIMD form for a weight type at a level, or NULL for the ref. The R16 layouts exist only
 * where VNNI runs (other levels read them through the ref); NEON covers Q8_0, Q4_0, Q5_0, Q5_1
 * and the K-quants in the file's layout. */
static mmq_fn mmq_form(int type, int level) {
#ifdef MOE_X86
    if (level == 2)
        return type == MOE_DTYPE_Q4_K       ? q4k_vnni
               : type == MOE_DTYPE_Q5_K     ? q5k_vnni
               : type == MOE_DTYPE_Q6_K     ? q6k_vnni
               : type == MOE_KTYPE_Q8_0_R16 ? mmq_r16_vnni
               : type == MOE_KTYPE_Q4_K_R16 ? q4kr_vnni
               : type == MOE_KTYPE_Q5_K_R16 ? q5kr_vnni
               : type == MOE_KTYPE_Q5_0_R16 ? q5r_vnni
               : type == MOE_KTYPE_Q5_1_R16 ? q51r_vnni
               : type == MOE_KTYPE_Q4_0_R16 ? q4r_vnni
               : type == MOE_DTYPE_Q5_1     ? NULL
               : type == MOE_KTYPE_Q6_K_R16 ? q6kr_vnni
                                            : mmq_vnni;
    if (level == 1)
        return type == MOE_DTYPE_Q4_K                                         ? q4k_avx2
               : type == MOE_DTYPE_Q5_K                                       ? q5k_avx2
               : type == MOE_DTYPE_Q6_K                                       ? q6k_avx2
               : type == MOE_KTYPE_Q8_0_R16 || type == MOE_KTYPE_Q4_K_R16 || type == MOE_KTYPE_Q5_0_R16 ||
                       type == MOE_KTYPE_Q6_K_R16 || type == MOE_KTYPE_Q5_K_R16 || type == MOE_KTYPE_Q5_1_R16 ||
                       type == MOE_DTYPE_Q5_1 || type == MOE_KTYPE_Q4_0_R16
                   ? NULL
                                                                              : mmq_avx2;
#endif
#if defined(__aarch64__)
    if (level == 3)
        return type == MOE_DTYPE_Q8_0 || type == MOE_DTYPE_Q4_0 || type == MOE_DTYPE_Q5_0 || type == MOE_DTYPE_Q5_1 ? mmq_neon
               : type == MOE_DTYPE_Q4_K || type == MOE_DTYPE_Q5_K                                                  ? qk_neon
               : type == MOE_DTYPE_Q6_K                                                                            ? q6k_neon
                                                                                                                   : NULL;
#endif
    (void)type;
    (void)level;
    return NULL;
}

void moe_kern_mmq_rows(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1) {
    const mmq_fn f = mmq_form(w->type, moe_kern_level());
    (f ? f : moe_kern_mmq_rows_ref)(w, xq, T, y, ldy, o0, o1);
}

/* ---- int8 peak probe ----
 * The machine's int8 multiply-accumulate peak, measured: a loop of independent dot-product
 * instructions (12 accumulators, no loads) on every pool thread for about `seconds`; returns
 * int8 operations per second (one multiply-add = 2 ops), all threads together. The instruction
 * is the one the W8A8 kernels use at this level: AVX-512 VNNI vpdpbusd zmm (64 MACs), else
 * AVX2 vpmaddubsw ymm (32 MACs; its vpmaddwd partner is not counted), else 0 (no probe).
 * Each thread reports its best 20 ms slice, like the bandwidth probe's best of 5: on a shared
 * machine the average over the whole interval measures the neighbours, and a peak below what
 * the kernels reach makes "% of peak" meaningless. Wall time (moe_now), like the throughputs it
 * is compared with. */
#define SLICE 0.02 /* seconds per measured slice */
#ifdef MOE_X86


__attribute__((target("avx512f,avx512vnni"))) static double peak_vnni(double seconds) {
    __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(5);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3),
            a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7),
            a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    double t0 = moe_now(), ts = t0, t, best = 0;
    long n = 0;
    do {
        /* the loop in asm: written in C, GCC placed a register copy after every vpdpbusd and the
         * rate then depended on where the loop was linked (±35 %) */
#define DP(k) "vpdpbusd %[w], %[x], %[a" #k "]\n\t"
        __asm__ volatile("mov $1000, %%ecx\n\t"
                         "1:\n\t" DP(0) DP(1) DP(2) DP(3) DP(4) DP(5) DP(6) DP(7) DP(8) DP(9) DP(10) DP(11)
                         "dec %%ecx\n\t"
                         "jnz 1b"
                         : [a0] "+v"(a0), [a1] "+v"(a1), [a2] "+v"(a2), [a3] "+v"(a3), [a4] "+v"(a4), [a5] "+v"(a5),
                           [a6] "+v"(a6), [a7] "+v"(a7), [a8] "+v"(a8), [a9] "+v"(a9), [a10] "+v"(a10), [a11] "+v"(a11)
                         : [x] "v"(x), [w] "v"(w)
                         : "ecx", "cc");
#undef DP
        n += 1000;
        if ((t = moe_now()) - ts >= SLICE) { /* best slice: the core's rate when the OS lets it run */
            best = (double)n / (t - ts) > best ? (double)n / (t - ts) : best;
            n = 0;
            ts = t;
        }
    } while (t - t0 < seconds);
    int32_t sink[16];
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    _mm512_storeu_si512(sink, s);
    __asm__ volatile("" ::"r"(sink[0]));
    if (best == 0) best = (double)n / (t - ts);
    return best * 12.0 * 64.0 * 2.0;
}

__attribute__((target("avx2"))) static double peak_avx2(double seconds) {
    const __m256i w = _mm256_set1_epi8(5);
    __m256i a0 = _mm256_set1_epi16(0), a1 = _mm256_set1_epi16(1), a2 = _mm256_set1_epi16(2), a3 = _mm256_set1_epi16(3),
            a4 = _mm256_set1_epi16(4), a5 = _mm256_set1_epi16(5), a6 = _mm256_set1_epi16(6), a7 = _mm256_set1_epi16(7),
            a8 = _mm256_set1_epi16(8), a9 = _mm256_set1_epi16(9), a10 = _mm256_set1_epi16(10), a11 = _mm256_set1_epi16(11);
    double t0 = moe_now(), ts = t0, t, best = 0;
    long n = 0;
    do {
        /* in asm for the reason given in peak_vnni; a += maddubs(a, w), 12 independent chains */
#define MA(k) "vpmaddubsw %[w], %[a" #k "], %%ymm14\n\tvpaddw %%ymm14, %[a" #k "], %[a" #k "]\n\t"
        __asm__ volatile("mov $1000, %%ecx\n\t"
                         "1:\n\t" MA(0) MA(1) MA(2) MA(3) MA(4) MA(5) MA(6) MA(7) MA(8) MA(9) MA(10) MA(11)
                         "dec %%ecx\n\t"
                         "jnz 1b"
                         : [a0] "+x"(a0), [a1] "+x"(a1), [a2] "+x"(a2), [a3] "+x"(a3), [a4] "+x"(a4), [a5] "+x"(a5),
                           [a6] "+x"(a6), [a7] "+x"(a7), [a8] "+x"(a8), [a9] "+x"(a9), [a10] "+x"(a10), [a11] "+x"(a11)
                         : [w] "x"(w)
                         : "ecx", "cc", "xmm14");
#undef MA
        n += 1000;
        if ((t = moe_now()) - ts >= SLICE) { /* best slice: the core's rate when the OS lets it run */
            best = (double)n / (t - ts) > best ? (double)n / (t - ts) : best;
            n = 0;
            ts = t;
        }
    } while (t - t0 < seconds);
    int16_t sink[16];
    __m256i s = _mm256_add_epi16(_mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3)),
                                 _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
    s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(a8, a9), _mm256_add_epi16(a10, a11)));
    _mm256_storeu_si256((__m256i *)sink, s);
    __asm__ volatile("" ::"r"(sink[0]));
    if (best == 0) best = (double)n / (t - ts);
    return best * 12.0 * 32.0 * 2.0;
}
#endif

/* 100 dependent adds per iteration: one per cycle on every x86-64 and aarch64 core */
static double clock_chain(double seconds) {
#if defined(__x86_64__) || defined(__aarch64__)
    uint64_t v = 0;
    double t0 = moe_now(), ts = t0, t, best = 0;
    long n = 0;
    do {
        for (int r = 0; r < 1000; r++) {
#define A10 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1 ADD1
#if defined(__x86_64__)
#define ADD1 "add $1, %0\n\t"
#else
#define ADD1 "add %0, %0, #1\n\t"
#endif
            __asm__ volatile(A10 A10 A10 A10 A10 A10 A10 A10 A10 A10 : "+r"(v));
#undef ADD1
#undef A10
        }
        n += 1000;
        if ((t = moe_now()) - ts >= SLICE) {
            best = (double)n / (t - ts) > best ? (double)n / (t - ts) : best;
            n = 0;
            ts = t;
        }
    } while (t - t0 < seconds);
    if (best == 0) best = (double)n / (t - ts);
    return best * 100.0;
#else
    (void)seconds;
    return 0.0;
#endif
}

/* fn(seconds) on every pool thread (or here without a pool); the sum of the results and how
 * many threads gave one */
typedef struct {
    double seconds, *out;
    double (*fn)(double);
} probe_job;

static void probe_worker(void *arg, int ith, int nth) {
    probe_job *j = arg;
    if (ith < 256) j->out[ith] = j->fn(j->seconds);
    (void)nth;
}

static double probe_sum(moe_pool *pool, double seconds, double (*fn)(double), int *n_out) {
    double out[256] = {0};
    probe_job j = {seconds, out, fn};
    int n = pool ? moe_pool_n_threads(pool) : 1;
    if (pool) moe_pool_run(pool, probe_worker, &j);
    else probe_worker(&j, 0, 1);
    n = n < 256 ? n : 256;
    double s = 0;
    for (int i = 0; i < n; i++) s += out[i];
    *n_out = n;
    return s;
}

double moe_kern_clock_hz(moe_pool *pool, double seconds) {
    int n;
    double s = probe_sum(pool, seconds, clock_chain, &n);
    return s / n;
}

static double peak_level(double seconds) {
#ifdef MOE_X86
    if (moe_kern_level() == 2) return peak_vnni(seconds);
    if (moe_kern_level() == 1) return peak_avx2(seconds);
#endif
    (void)seconds;
    return 0.0;
}

double moe_kern_int8_peak(moe_pool *pool, double seconds) {
    int n;
    return probe_sum(pool, seconds, peak_level, &n);
}
