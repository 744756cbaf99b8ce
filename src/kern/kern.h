/* moekit kernels (internal API): matrix products over weights of any supported dtype and
 * the small vector ops of the forward pass.
 *
 * Weights follow GGUF/ggml convention: a weight with ne = [in, out] has `out` rows of `in`
 * contiguous elements, and y = W·x means y[o] = Σ_i W[o][i]·x[i]. Every function has a
 * scalar `_ref` form in kern/ref (the specification, kept forever); SIMD forms in kern/cpu are
 * picked at run time from CPU features and tested against the ref. Accumulation order is
 * fixed per output element, so results do not depend on the number of threads. */
#ifndef MOE_KERN_H
#define MOE_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "core/pool.h"

/* A borrowed 2-D weight view: `out` rows of `in` elements of `type`, rows `row_bytes` apart. */
typedef struct moe_wview {
    const uint8_t *data;
    int type;
    int64_t in, out;
    size_t row_bytes;
} moe_wview;

/* An activation block for W8A8 products: 32 values x[j] ≈ d·q[j], q = rint(x·127/amax)
 * (round to nearest even, 127/amax in binary32), d = amax/127 in binary32, s = Σ q[j] (the compensation term of the
 * unsigned×signed int8 dot products, computed once per block instead of once per weight row). */
#define MOE_Q8A_MIN 1e-36f /* blocks with amax below this quantize to zero (127/amax must stay finite) */
typedef struct moe_q8a {
    float d;
    int32_t s;
    int8_t q[32];
} moe_q8a;

/* Scratch a matrix product may use, carved by the caller once (no allocation per product):
 * `scratch` n_threads × per_thread floats (dequantized weight tiles), `xq` xq_cap activation
 * blocks (T × in/32 for W8A8 inputs; NULL disables W8A8). */
typedef struct moe_kern_ws {
    float *scratch;
    size_t per_thread;
    moe_q8a *xq;
    size_t xq_cap;
} moe_kern_ws;

/* Rows dequantized per tile (each thread dequantizes a tile once, then reuses it for all T). */
#define MOE_KERN_TILE 16

/* Per-thread scratch floats that moe_kern_matmul needs for inputs of length `in`. */
static inline size_t moe_kern_scratch_floats(int64_t in) { return (size_t)MOE_KERN_TILE * (size_t)in + 64; }

/* y[t*ldy + o] = Σ_i W[o][i] · x[t*ldx + i] for t < T, o < w->out. ws->scratch holds
 * n_threads × moe_kern_scratch_floats(max in) floats. Rows are split across the pool.
 * Q8_0 and Q4_0 weights take the W8A8 path when moe_kern_int8_enabled() and ws->xq has room
 * for T × in/32 blocks: x is quantized once (moe_kern_quant_act), then integer dot products
 * (moe_kern_mmq_rows). Other types: rows dequantized to F32 per tile, F32 dot products. */
void moe_kern_matmul(moe_pool *pool, const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t T, const moe_kern_ws *ws);
/* One product of a set (moe_kern_matmul_set): y[t*ldy + o] = Σ_i W[o][i] · x[t*ldx + i], t < T. */
typedef struct moe_kern_prod {
    const moe_wview *w; /* borrowed */
    const float *x;     /* (T, ldx) borrowed */
    int64_t ldx;
    float *y;           /* (T, ldy) borrowed */
    int64_t ldy, T;
    /* NULL, or x already quantized: moe_kern_quant_act of each of the T rows, T × in/32 blocks
     * token-major (borrowed). Only for weights with a W8A8 path (moe_kern_mmq_supported) while
     * moe_kern_int8_enabled(); x is then not read, and the set quantizes nothing for it. Lets
     * the caller quantize an input once for products that read it in pieces (the experts'
     * tokens), where the set would quantize every piece as a distinct input. */
    const moe_q8a *xq;
} moe_kern_prod;
/* Most products one set takes (more are run in several sets). */
#define MOE_KERN_MAX_PRODS 256

/* n independent products as one pool job (one thread hand-off instead of n): the rows of all
 * products, in whole MOE_KERN_TILE-row tiles, are split across the threads by estimated cost.
 * W8A8 inputs are quantized once per distinct (x, ldx, T, in), so products sharing an input
 * (gate and up, q and kv_a, the experts of one token) share its blocks; ws->xq must hold the
 * sum of T × in/32 over the distinct inputs (otherwise the set runs in smaller pieces). Every
 * (row, token) result equals what moe_kern_matmul gives for that product, bit for bit, and the
 * outputs must not overlap the inputs. */
void moe_kern_matmul_set(moe_pool *pool, const moe_kern_prod *p, int n, const moe_kern_ws *ws);
/* Weight-read trace (`moe bench --ceiling`): while one is set, every product set records the
 * bytes of its weights, one span per product ([w->data, + w->out·w->row_bytes): every layout
 * keeps a matrix in one range), and where each set ends; moe_membw_replay reads them back with
 * no arithmetic. The engine calls sets from one thread, so recording takes no lock. A full
 * trace stops recording and sets `overflow`. */
typedef struct moe_kern_span {
    const uint8_t *p;
    size_t n;
} moe_kern_span;
typedef struct moe_kern_trace {
    moe_kern_span *span; /* cap_span entries, caller-owned */
    int64_t n_span, cap_span;
    int64_t *set_end; /* set k is spans [set_end[k-1], set_end[k]) (set_end[-1] = 0) */
    int64_t n_set, cap_set;
    int overflow;
    int *set_tag; /* NULL, or cap_set entries: the tag (moe_kern_trace_tag) each set ran under */
} moe_kern_trace;
void moe_kern_set_trace(moe_kern_trace *t); /* NULL stops recording */
/* The tag the next sets are recorded with (the engine passes its profile phase, moe_phase). */
void moe_kern_trace_tag(int tag);
/* Single-threaded variant over rows [o0, o1) (callers that parallelize themselves). */
void moe_kern_matmul_rows(const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t T,
                          int64_t o0, int64_t o1, float *scratch);

/* W8A8 (Q8_0 and Q4_0 weights). Activations: n (multiple of 32) floats to n/32 blocks. */
void moe_kern_quant_act(const float *x, moe_q8a *y, int64_t n);
void moe_kern_quant_act_ref(const float *x, moe_q8a *y, int64_t n);
/* y[t*ldy + o] for rows o in [o0, o1), t < T, from activation blocks xq (T × in/32, token-major).
 * Per (row, token) the integer dot of each block b is exact; blocks are accumulated in order,
 * acc = fmaf((float)idot_b, d_w(b)·d_x(b), acc) from 0, so every SIMD form equals the ref bit
 * for bit and the result depends neither on T nor on the row split. */
void moe_kern_mmq_rows(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0, int64_t o1);
void moe_kern_mmq_rows_ref(const moe_wview *w, const moe_q8a *xq, int64_t T, float *y, int64_t ldy, int64_t o0,
                           int64_t o1);
/* Q8_0 repacked for the VNNI kernels ("R16"): an in-memory layout, never written to files.
 * Rows come in groups of 16; with nb = in/32 blocks per row, group g occupies 544·nb bytes,
 * blocks in pairs of 1088 bytes (17 cache lines), each pair
 *   [512 bytes of weights of block 2p][512 of block 2p+1][32 bytes of scales of 2p][32 of 2p+1]
 * (an odd last block: [512 weights][32 scales]). Weight block b is 8 columns of 64 bytes:
 * column c, lane j (4 bytes) holds bytes 4c..4c+3 of row j's block b, each stored as w ⊕ 0x80
 * (= w + 128, the unsigned operand of vpdpbusd); scale (b, j) is row j's F16 d. So one aligned
 * 64-byte load gives 4 bytes of all 16 rows, a block is 8 vpdpbusd per token with no shuffles
 * and no per-row reduction, the scales of 16 rows are one 32-byte load, and a matrix is read
 * front to back as one stream (one prefetch pointer; scales kept apart from the weights were a
 * second stream and cost ~20 % of the streaming rate). The size equals Q8_0's (16 × 34 bytes
 * per block), so row_bytes stays 34·nb: `data + o·row_bytes` is group o/16 for o a multiple of
 * 16, and per-head / per-expert slices move by the same strides as in the file. `out` is a
 * multiple of 16. Every product gives the same bits as on the Q8_0 original. */
#define MOE_KTYPE_Q8_0_R16 0x1008
/* Byte offsets of block b's weights and scales inside an R16 group of nb blocks (only an odd
 * last block places its scales differently). */
static inline size_t moe_r16_woff(int64_t b) {
    return (size_t)(b >> 1) * 1088 + (size_t)(b & 1) * 512;
}
static inline size_t moe_r16_soff(int64_t nb, int64_t b) {
    return (size_t)(b >> 1) * 1088 + ((b & 1) || b + 1 < nb ? 1024 + (size_t)(b & 1) * 32 : 512);
}
/* Q4_K repacked for the VNNI kernels ("Q4_K R16"), also never written to files. Rows come in
 * groups of 16; each 256-value block of a group is 2304 bytes (16 × 144, so row_bytes stays
 * 144·nsb and slices move as in the file):
 *   [32: the 16 rows' d (F16)][32: their dmin]
 *   [3 × 64: scale words; word k, lane j (4 bytes) = bytes 4k..4k+3 of row j's 12 scale bytes]
 *   [4 × 8 × 64: nibbles; pair p (sub-blocks 2p, 2p+1), column c, lane j = bytes 4c..4c+3 of
 *    row j's qs[32p .. 32p+32): low nibbles are sub-block 2p's values 4c..4c+3, high nibbles
 *    sub-block 2p+1's]
 * so the 6-bit scales of 16 rows unpack with the same word arithmetic as one row's (kscale.h),
 * a column masked or shifted is the unsigned operand of vpdpbusd for 16 rows at once, and the
 * 16 rows' sums sit in the lanes of a vector: no horizontal reduction. Every product gives the
 * same bits as on the Q4_K original (the ref's eight running sums per row and their tree). */
#define MOE_KTYPE_Q4_K_R16 0x100C
#define MOE_Q4K_R16_BLOCK 2304
/* Q5_K repacked for the VNNI kernels ("Q5_K R16"), never written to files: Q4_K R16's 2304 bytes
 * per block (the nibbles from the Q5_K block's qs) followed by the high bits,
 *   [8 × 64: qh, column c, lane j = bytes 4c..4c+3 of row j's qh[32]]
 * 2816 bytes (16 × 176). Sub-block j's value l has its fifth bit at bit j of qh byte l, so for
 * column c the same qh column serves all 8 sub-blocks: shifted right by j and left by 4, masked
 * to bit 4 of each byte, or-ed into the nibble. Same bits as on the Q5_K original. */
#define MOE_KTYPE_Q5_K_R16 0x100D
#define MOE_Q5K_R16_BLOCK 2816
/* Groups [g0, g1) of a Q5_K matrix (rows src_row_bytes apart) to Q5_K R16 at dst. */
void moe_kern_repack_q5_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* Q6_K repacked for the VNNI kernels ("Q6_K R16"), never written to files: groups of 16 rows;
 * each 256-value block of a group is 3360 bytes (16 × 210, so row_bytes stays 210·nsb):
 *   [32: the 16 rows' d (F16)][4 × 64: int8 scales, word k lane j = row j's scales 4k..4k+3]
 *   [32 × 64: ql, column c lane j = bytes 4c..4c+3 of row j's ql][16 × 64: qh, likewise]
 * so activation block 4n + m of the block reads ql columns 16n + 8(m&1) + 0..7 (low nibbles for
 * m < 2, high for m ≥ 2) and qh columns 8n + 0..7 (bits 2m, 2m+1), 16 rows per vector. Same
 * bits as on the Q6_K original (moe_kern_q6k_dot_ref). */
#define MOE_KTYPE_Q6_K_R16 0x100E
#define MOE_Q6K_R16_BLOCK 3360
/* Groups [g0, g1) of a Q6_K matrix (rows src_row_bytes apart) to Q6_K R16 at dst. */
void moe_kern_repack_q6_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* Q5_0 repacked for the VNNI kernels ("Q5_0 R16"), never written to files: groups of 16 rows;
 * each 32-value block of a group is 352 bytes (16 × 22, so row_bytes stays 22·nb):
 *   [32: the 16 rows' d (F16)][64: high bits, lane j = row j's qh permuted][4 × 64: nibbles,
 *    column c, lane j = bytes 4c..4c+3 of row j's qs (low nibbles: values 4c..4c+3, high
 *    nibbles: values 16+4c..16+4c+3)]
 * The permuted qh puts the high bit of column c's byte k at bit 8k + c (low nibbles) and
 * 8k + 4 + c (high nibbles), i.e. original bit 4c + k or 16 + 4c + k: one shift and one mask
 * bring it to bit 4 of byte k, where it completes the unsigned 5-bit value (w + 16) for
 * vpdpbusd; the running sum starts at −16·Σx. Same bits as on the Q5_0 original. */
#define MOE_KTYPE_Q5_0_R16 0x1006
/* Q4_0 repacked likewise ("Q4_0 R16"): 288 bytes per block of a group (16 × 18):
 *   [32: d (F16)][4 × 64: nibble columns, as Q5_0 R16's]
 * the values u − 8: the running sum starts at −8·Σx. */
#define MOE_KTYPE_Q4_0_R16 0x1002
void moe_kern_repack_q4_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* Q5_1 repacked likewise ("Q5_1 R16"): 384 bytes per block of a group (16 × 24):
 *   [32: d (F16)][32: m (F16)][64: permuted qh][4 × 64: nibble columns]
 * the same permutation and columns as Q5_0 R16; the 5-bit values are unsigned (no −16), and the
 * ref adds the min term fmaf(Σx, m·dx) after each block's fmaf(idot, d·dx). */
#define MOE_KTYPE_Q5_1_R16 0x1007
void moe_kern_repack_q5_1_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* original qh bit of permuted bit p = 8k + m (m < 4: low nibbles of column m; else high of m − 4) */
static inline int moe_q5r_qh_bit(int p) {
    const int k = p / 8, m = p % 8;
    return m < 4 ? 4 * m + k : 16 + 4 * (m - 4) + k;
}
/* Groups [g0, g1) of a Q5_0 matrix (rows src_row_bytes apart) to Q5_0 R16 at dst. */
void moe_kern_repack_q5_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* 1 when a view of this type and shape can be repacked (Q8_0, Q4_0, Q5_0 and Q5_1 with in a multiple of 32,
 * Q4_K, Q5_K and Q6_K with in a multiple of 256; out a multiple of 16). */
int moe_kern_can_repack(int type, int64_t in, int64_t out);
/* Groups [g0, g1) of a Q4_K matrix (rows src_row_bytes apart) to Q4_K R16 at dst. */
void moe_kern_repack_q4_k_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* Groups [g0, g1) of a Q8_0 matrix (rows src_row_bytes apart) to R16 at dst (the matrix's start). */
void moe_kern_repack_q8_0_r16(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1,
                              uint8_t *dst);
/* Row o of any view (every dtype and R16) as floats; the same values moe_dtype_dequant_row gives
 * for the original row. */
void moe_kern_dequant_wrow(const moe_wview *w, int64_t o, float *dst);

/* 1 when the weight type has a W8A8 path (Q8_0, Q4_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K and the R16 forms). */
int moe_kern_mmq_supported(int type);
/* Q4_K: one row (nsb 256-value blocks) against its activation blocks, the order every form
 * follows (kern_ref.c): per sub-block position an integer dot of the 4-bit values, then
 * fmaf(idot, (d·sc)·dx) and fmaf(Σq, −((dmin·m)·dx)) into that position's sum. */
float moe_kern_q4k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb);
/* Q6_K: the same for Q6_K rows (spec gguf.md: 256 values as ql, qh, 16 int8 scales, d). Activation
 * block j = 4n + m of a 256-value block covers values 128n + 32m + l (l < 32), u = 6-bit value:
 * isum = sc[8n+2m]·Σ_{l<16}(u−32)·x + sc[8n+2m+1]·Σ_{l≥16}(u−32)·x (exact in int32), then
 * acc[j] = fmaf(isum, d·dx, acc[j]) and the tree ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
float moe_kern_q6k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb);
/* The refs' float part of one 256-value block given its integer dots (for forms that compute
 * only those, e.g. NEON): Q4_K / Q5_K idot[j] per sub-block (the block's d, dmin and 6-bit scales
 * read from blk), Q6_K isum[j] (the block's d); into the 8 running sums in the refs' order. */
void moe_kern_qk_block_fma(const uint8_t *blk, const moe_q8a *a, const int32_t idot[8], float acc[8]);
void moe_kern_q6k_block_fma(const uint8_t *blk, const moe_q8a *a, const int32_t isum[8], float acc[8]);
/* The refs' final tree over the 8 running sums: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
float moe_kern_ksum_tree(const float acc[8]);
/* Q5_K: Q4_K's order on 5-bit values (the nibble plus bit j of qh[l] worth 16; 176-byte blocks). */
float moe_kern_q5k_dot_ref(const uint8_t *row, const moe_q8a *a, int64_t nsb);
/* W8A8 on (default) unless MOE_INT8=0 in the environment; moe_kern_set_int8 overrides. */
int moe_kern_int8_enabled(void);
void moe_kern_set_int8(int on);

/* Measured int8 peak of this machine: int8 ops/s (multiply-add = 2) of the dot-product
 * instruction the W8A8 kernels use, run on every pool thread for `seconds` (kern_q8.c). */
double moe_kern_int8_peak(moe_pool *pool, double seconds);
/* Core clock while busy, measured: a chain of dependent 1-cycle integer adds on every pool
 * thread for `seconds`; returns the mean over threads of each one's best 20 ms slice, in Hz
 * (0 where the chain is not implemented). Used to state the int8 peak in ops per cycle. */
double moe_kern_clock_hz(moe_pool *pool, double seconds);

/* Dot product of n floats (SIMD where available; fixed summation order per n). */
float moe_kern_dot(const float *a, const float *b, int64_t n);
float moe_kern_dot_ref(const float *a, const float *b, int64_t n);
/* y += a·x (one fmaf per element; SIMD and ref bit-identical) */
void moe_kern_axpy(float *y, float a, const float *x, int64_t n);
void moe_kern_axpy_ref(float *y, float a, const float *x, int64_t n);
/* Dequantize a row (SIMD where available); same results as moe_dtype_dequant_row. */
void moe_kern_dequant_row(int type, const void *src, float *dst, int64_t n);

/* The latent cache's rows come in blocks of MOE_KV_BLOCK: row k at cache + (k / MOE_KV_BLOCK)·bs
 * + (k % MOE_KV_BLOCK)·ldc. A plain (n, ldc) array has bs = MOE_KV_BLOCK·ldc; the engine keeps
 * a block of every layer side by side (batch.c), so the rows in use are one prefix. */
#define MOE_KV_BLOCK 64
static inline const float *moe_kv_row(const float *cache, int64_t ldc, int64_t bs, int64_t k) {
    return cache + (k / MOE_KV_BLOCK) * bs + (k % MOE_KV_BLOCK) * ldc;
}
/* MLA attention of one query token for hn ≤ 16 heads at once over n keys of a latent cache
 * (rows of W floats: [c_kv (Lkv), k_pe], ldc ≥ W, laid out as above). Head h's query is q + h·ldq (W floats); its output
 * u + h·ldu (Lkv floats). For every head, in this order (the ref's, bit for bit at every level):
 *   s_k = (fma chain over w = 0..W−1 of cache[k][w]·q[w], from 0) · scale
 *   m = max_k s_k;  e_k = exp(s_k − m) by core/vexp.h (vexp_ref; 0 below VEXP_MIN = −87);
 *   Σ = Σ_k e_k in double;  inv = (float)(1/Σ)
 *   u = fma chain over k = 0..n−1 of (e_k·inv)·cache[k][0..Lkv), from 0.
 * The result of a head does not depend on the other heads of the call. The SIMD forms keep the
 * heads in the lanes of a vector: each cache element is loaded once for all heads (the keys are
 * shared in MLA's latent space), instead of once per head. scratch: moe_kern_mla_scratch(W, n). */
static inline size_t moe_kern_mla_scratch(int64_t W, int64_t n) { return (size_t)16 * (size_t)(W + n) + 16; }
void moe_kern_mla_attn(const float *q, int64_t ldq, int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W,
                       int64_t n, int64_t Lkv, float scale, float *scratch, float *u, int64_t ldu);
void moe_kern_mla_attn_ref(const float *q, int64_t ldq, int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W,
                           int64_t n, int64_t Lkv, float scale, float *scratch, float *u, int64_t ldu);
/* moe_kern_mla_attn in phases, so one call can be spread over threads (a single long sequence
 * decoding): prep (serial), scores of keys [k0, k1) (disjoint ranges on any threads), softmax
 * (serial), values of columns [c0, c1) (disjoint ranges; multiples of 64 keep the fast passes).
 * Every phase computes each element with the same chain as the whole call: bit-identical. */
void moe_kern_mla_prep(const float *q, int64_t ldq, int hn, int64_t W, float *scratch);
void moe_kern_mla_scores(const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t k0, int64_t k1, float scale, float *scratch);
void moe_kern_mla_softmax(int hn, int64_t W, int64_t n, float *scratch);
/* The softmax itself in three steps: max (serial), exp of keys [k0, k1) (disjoint ranges on any
 * threads), then the sums in key order and p = e·inv (lane-parallel). */
void moe_kern_mla_max(int hn, int64_t W, int64_t n, const float *scratch, float m[16]);
void moe_kern_mla_exp(int hn, int64_t W, int64_t k0, int64_t k1, const float m[16], float *scratch);
void moe_kern_mla_norm(int hn, int64_t W, int64_t n, float *scratch);
void moe_kern_mla_values(int hn, const float *cache, int64_t ldc, int64_t bs, int64_t W, int64_t n, int64_t c0, int64_t c1,
                         const float *scratch, float *u, int64_t ldu);

/* RMSNorm (spec deepseek2.md §4.2): sum of squares in double, y = (x·scale)·w. */
void moe_kern_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* Numerically stable in-place softmax. */
void moe_kern_softmax(float *x, int64_t n);
/* x[i] = silu(x[i]) · u[i], silu(g) = g·σ(g) from e = exp(−|g|) (core/vexp.h): g/(1+e) for
 * g ≥ 0, g·e/(1+e) below; every SIMD form equals the ref bit for bit. */
void moe_kern_swiglu(float *x, const float *u, int64_t n);
void moe_kern_swiglu_ref(float *x, const float *u, int64_t n);

/* Name of the SIMD level in use ("avx512vnni", "avx2", "neon", "scalar"). MOE_FORCE_REF=1 in
 * the environment selects the scalar reference forms everywhere. */
const char *moe_kern_simd_name(void);
/* SIMD level: 0 scalar, 1 avx2+fma+f16c, 2 + avx512 vnni/vl/bw, 3 neon; moe_kern_set_level
 * lowers it (tests compare every level against the ref). Returns the previous level. */
int moe_kern_level(void);
int moe_kern_set_level(int level);

#endif
