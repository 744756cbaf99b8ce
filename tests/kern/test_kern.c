/* Kernels: every SIMD form against its scalar _ref (bit-identical where the order of
 * operations is the same by construction), matmul against a float64 naive product, vector ops
 * against their formulas, and the thread pool's split. */
#include <math.h>

#include "core/pool.h"
#include "core/vexp.h"
#include "kern/kern.h"
#include "moe/dtype.h"
#include "testutil.h"

static uint64_t g_s = 88172645463325252ull;
static float frand(void) {
    g_s ^= g_s << 13;
    g_s ^= g_s >> 7;
    g_s ^= g_s << 17;
    return (float)((double)(g_s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

/* Makes level l the current one; 0 when this machine does not run it (aarch64 runs only NEON, 3,
 * and the ref, 0: the level loops skip 2 and 1 there instead of repeating level 3). */
static int use_level(int l) {
    moe_kern_set_level(l);
    return moe_kern_level() == l;
}

/* float64 product of dequantized weight rows and dequantized activation blocks */
static double ref_dot_q(const moe_wview *w, int64_t o, const moe_q8a *a) {
    float row[4096];
    moe_dtype_dequant_row(w->type, w->data + (size_t)o * w->row_bytes, row, w->in);
    double e = 0;
    for (int64_t i = 0; i < w->in; i++) e += (double)row[i] * ((double)a[i / 32].d * a[i / 32].q[i % 32]);
    return e;
}

/* moe_kern_mmq_rows at every level from the top down to lmin against the ref's y0 (T × out, ldy = out),
 * bit for bit: all rows, then rows [o0, o1) only, the others left untouched (y1: scratch). */
static void check_mmq_levels(const moe_wview *w, const moe_q8a *r, int T, const float *y0, float *y1, int64_t o0,
                             int64_t o1, int lmin, const char *what) {
    const int top = moe_kern_level();
    const int64_t out = w->out;
    for (int l = top; l >= lmin; l--) {
        if (!use_level(l)) continue;
        memset(y1, 0, sizeof(float) * (size_t)T * (size_t)out);
        moe_kern_mmq_rows(w, r, T, y1, out, 0, out);
        CHECK(memcmp(y0, y1, sizeof(float) * (size_t)T * (size_t)out) == 0, "%s in=%lld T=%d: level %d differs from the ref",
              what, (long long)w->in, T, l);
        memset(y1, 0, sizeof(float) * (size_t)T * (size_t)out);
        moe_kern_mmq_rows(w, r, T, y1, out, o0, o1);
        int ok = 1;
        for (int tt = 0; tt < T; tt++)
            for (int64_t o = 0; o < out; o++) /* bits, so inf/NaN compare too */
                ok &= (o >= o0 && o < o1) ? !memcmp(&y1[tt * out + o], &y0[tt * out + o], 4) : y1[tt * out + o] == 0;
        CHECK(ok, "%s in=%lld T=%d level %d: rows %lld..%lld", what, (long long)w->in, T, l, (long long)o0, (long long)o1);
    }
    moe_kern_set_level(top);
}

static void fill_x(float *x, int64_t n, int kind) {
    for (int64_t i = 0; i < n; i++) {
        float v = frand();
        switch (kind) {
        case 1: v *= 1e-40f; break;           /* denormals */
        case 2: v *= 3e37f; break;            /* near the top of binary32 */
        case 3: v = (i % 32 < 16) ? 0.0f : v; break; /* half-zero blocks */
        case 4: v = (float)((int)(v * 8)) * 0.5f; break; /* many exact ties at 127/amax steps */
        default: break;
        }
        x[i] = v;
    }
    if (kind == 3)
        for (int64_t i = 0; i < 32 && i < n; i++) x[i] = 0.0f; /* an all-zero block */
}

static void test_w8a8(void) {
    const int top = moe_kern_level();
    static float x[9 * 2048];
    static moe_q8a r[9 * 64], s[9 * 64];
    /* activation quantization: every level vs ref, bit for bit */
    int same = 1;
    for (int kind = 0; kind < 5; kind++) {
        fill_x(x, 9 * 2048, kind);
        moe_kern_quant_act_ref(x, r, 9 * 2048);
        for (int l = top; l >= 1; l--) {
            if (!use_level(l)) continue;
            moe_kern_quant_act(x, s, 9 * 2048);
            same &= memcmp(r, s, sizeof(moe_q8a) * 9 * 64) == 0;
        }
        moe_kern_set_level(top);
        /* the ref against its definition: |x - d·q| <= d/2 */
        double worst = 0;
        for (int64_t i = 0; i < 9 * 2048; i++) {
            const moe_q8a *b = &r[i / 32];
            double err = fabs((double)x[i] - (double)b->d * b->q[i % 32]);
            if (b->d > 0) worst = fmax(worst, err / b->d);
        }
        CHECK(worst <= 0.5 + 1e-3, "quant_act kind %d: error %.3f steps", kind, worst);
    }
    CHECK(same, "quant_act: SIMD differs from ref");
    printf("quant_act: all levels bit-identical to ref (random, denormal, huge, zero blocks, ties)\n");
    /* integer products: every level vs ref bit for bit, and vs float64 */
    int types[] = {MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_Q5_0, MOE_DTYPE_Q5_1};
    int64_t ins[] = {32, 96, 1056, 2048}; /* 1056: 33 blocks, a partial chunk of the GEMM form */
    int Ts[] = {1, 2, 3, 5, 9}; /* 1-2: the 16-row decode form, 3+: the transposed GEMM form */
    static uint8_t wq[45 * 2176];
    static float y0[9 * 45], y1[9 * 45];
    for (size_t k = 0; k < 4; k++)
        for (size_t ii = 0; ii < 4; ii++) {
            int t = types[k];
            int64_t in = ins[ii], OUT = 45;
            size_t rb = moe_dtype_row_bytes(t, in);
            /* raw random blocks (Q8_0 includes -128, which the quantizer never writes) with sane scales */
            for (size_t i = 0; i < rb * (size_t)OUT; i++) {
                g_s = g_s * 6364136223846793005ull + 1442695040888963407ull;
                wq[i] = (uint8_t)(g_s >> 56);
            }
            for (int64_t o = 0; o < OUT; o++)
                for (int64_t b = 0; b < in / 32; b++) {
                    uint16_t h = moe_f32_to_f16((frand() + 1.5f) * (o == 3 ? 1e-7f : 0.01f)); /* row 3: denormal f16 scales */
                    memcpy(wq + (size_t)o * rb + (size_t)b * moe_dtype_row_bytes(t, 32), &h, 2);
                    if (t == MOE_DTYPE_Q5_1) { /* the min: either sign, row 7 zero */
                        h = moe_f32_to_f16(o == 7 ? 0.0f : (frand() - 0.5f) * 0.3f);
                        memcpy(wq + (size_t)o * rb + (size_t)b * 24 + 2, &h, 2);
                    }
                }
            if (t == MOE_DTYPE_Q8_0)
                for (int64_t b = 0; b < in / 32; b++) memset(wq + 5 * rb + (size_t)b * 34 + 2, 0x80, 32); /* row 5: all -128 */
            moe_wview w = {wq, t, in, OUT, rb};
            for (size_t q = 0; q < 5; q++) {
                int T = Ts[q];
                fill_x(x, T * in, (int)(q + ii) % 5 == 2 ? 0 : (int)(q + ii) % 5);
                for (int tt = 0; tt < T; tt++) moe_kern_quant_act_ref(x + tt * in, r + tt * (in / 32), in);
                moe_kern_mmq_rows_ref(&w, r, T, y0, OUT, 0, OUT);
                double md = 0, scale = 0;
                for (int tt = 0; tt < T; tt++)
                    for (int64_t o = 0; o < OUT; o++) {
                        double e = ref_dot_q(&w, o, r + tt * (in / 32));
                        md = fmax(md, fabs(e - y0[tt * OUT + o]));
                        scale = fmax(scale, fabs(e));
                    }
                CHECK(md <= 1e-5 * (scale + 1e-30), "mmq %s in=%lld T=%d: ref vs float64 %.3e (scale %.3e)",
                      moe_dtype_name(t), (long long)in, T, md, scale);
                check_mmq_levels(&w, r, T, y0, y1, 3, 40, 1, moe_dtype_name(t)); /* rows from a non-multiple of 8 */
            }
        }
    printf("mmq q8_0/q4_0/q5_0/q5_1: levels 1..%d bit-identical to ref (in 32/96/1056/2048, T 1/2/3/5/9, 45 rows, -128, denormal scales)\n", top);
    /* Q4_K, Q5_K and Q6_K: random 256-value blocks (every nibble, high bit, 6-bit scale and min,
     * Q6_K int8 scales including -128 and 127), each level bit for bit against the ref, and the
     * ref against float64 on the dequantized row */
    for (int kt = 0; kt < 3; kt++) {
        const int type = kt == 0 ? MOE_DTYPE_Q4_K : kt == 1 ? MOE_DTYPE_Q5_K : MOE_DTYPE_Q6_K;
        const size_t bb = moe_dtype_row_bytes(type, 256);
        const char *tn = kt == 0 ? "q4_k" : kt == 1 ? "q5_k" : "q6_k";
        const int64_t kins[] = {256, 512, 2048}, OUT = 45;
        double worst = 0;
        for (size_t ii = 0; ii < 3; ii++) {
            const int64_t in = kins[ii];
            const size_t rb = moe_dtype_row_bytes(type, in);
            for (size_t i = 0; i < rb * (size_t)OUT; i++) {
                g_s = g_s * 6364136223846793005ull + 1442695040888963407ull;
                wq[i] = (uint8_t)(g_s >> 56);
            }
            for (int64_t o = 0; o < OUT; o++)
                for (int64_t b = 0; b < in / 256; b++) {
                    uint8_t *blk = wq + (size_t)o * rb + (size_t)b * bb;
                    for (int f = 0; f < (kt == 2 ? 1 : 2); f++) { /* d (and dmin); row 3 denormal */
                        uint16_t h = moe_f32_to_f16((frand() + 1.5f) * (o == 3 ? 1e-7f : 0.001f));
                        memcpy(kt == 2 ? blk + 208 : blk + 2 * f, &h, 2);
                    }
                    if (kt == 2 && (o == 7 || o == 8)) memset(blk + 192, o == 7 ? 0x80 : 0x7F, 16); /* extreme scales */
                    if (kt == 2 && o == 8) memset(blk, 0xFF, 192);                                /* every value 63 */
                }
            moe_wview w = {wq, type, in, OUT, rb};
            static float row[2048];
            for (size_t q = 0; q < 5; q++) {
                const int T = Ts[q];
                fill_x(x, T * in, (int)(q + ii) % 5 == 2 ? 0 : (int)(q + ii) % 5);
                for (int tt = 0; tt < T; tt++) moe_kern_quant_act_ref(x + tt * in, r + tt * (in / 32), in);
                moe_kern_mmq_rows_ref(&w, r, T, y0, OUT, 0, OUT);
                for (int64_t o = 0; o < OUT; o++) {
                    moe_dtype_dequant_row(type, wq + (size_t)o * rb, row, in);
                    for (int tt = 0; tt < T; tt++) {
                        double e = 0, sc = 0;
                        for (int64_t i = 0; i < in; i++) {
                            const moe_q8a *b = r + tt * (in / 32) + i / 32;
                            const double v = (double)row[i] * (double)b->d * b->q[i % 32];
                            e += v;
                            sc += fabs(v);
                        }
                        if (sc > 0) worst = fmax(worst, fabs(e - y0[tt * OUT + o]) / sc);
                    }
                }
                check_mmq_levels(&w, r, T, y0, y1, 3, 40, 1, tn);
            }
        }
        printf("mmq %s: levels 1..%d bit-identical to ref (in 256/512/2048, T 1/2/3/5/9); ref vs float64 %.2e of sum|terms|\n",
               tn, top, worst);
        CHECK(worst < 1e-5, "mmq %s ref vs float64: %.3e", tn, worst);
    }
    /* matmul with W8A8: threads do not change results, and it equals quant_act + mmq_rows */
    moe_pool *pool = moe_pool_init(3);
    const int64_t IN = 256, OUT = 100, T = 7;
    static float W[100 * 256], X[7 * 300], Y[7 * 100], Y1[7 * 100], Y2[7 * 100];
    static uint8_t Q[100 * 272];
    static moe_q8a XQ[7 * 8];
    for (int i = 0; i < OUT * IN; i++) W[i] = frand();
    for (int i = 0; i < T * 300; i++) X[i] = frand();
    for (size_t k = 0; k < 2; k++) {
        int t = types[k];
        size_t rb = moe_dtype_row_bytes(t, IN);
        for (int o = 0; o < OUT; o++) moe_dtype_quant_row(t, W + o * IN, Q + o * rb, IN);
        moe_wview w = {Q, t, IN, OUT, rb};
        float *scratch = malloc(sizeof(float) * 3 * moe_kern_scratch_floats(IN));
        moe_kern_ws ws = {scratch, moe_kern_scratch_floats(IN), XQ, 7 * 8};
        moe_kern_matmul(pool, &w, X, 300, Y, OUT, T, &ws);
        moe_kern_matmul(NULL, &w, X, 300, Y1, OUT, T, &ws);
        for (int tt = 0; tt < T; tt++) moe_kern_quant_act_ref(X + tt * 300, XQ + tt * 8, IN);
        moe_kern_mmq_rows_ref(&w, XQ, T, Y2, OUT, 0, OUT);
        CHECK(memcmp(Y, Y1, sizeof Y) == 0, "w8a8 matmul %s: threads change results", moe_dtype_name(t));
        CHECK(memcmp(Y, Y2, sizeof Y) == 0, "w8a8 matmul %s: differs from quant_act_ref + mmq_rows_ref", moe_dtype_name(t));
        /* accuracy of W8A8 against the exact product of the stored weights: activation rounding only */
        double md = 0, mx = 0;
        float row[256];
        for (int tt = 0; tt < T; tt++)
            for (int o = 0; o < OUT; o++) {
                moe_dtype_dequant_row(t, Q + o * rb, row, IN);
                double e = 0;
                for (int i = 0; i < IN; i++) e += (double)row[i] * X[tt * 300 + i];
                md = fmax(md, fabs(e - Y[tt * OUT + o]));
                mx = fmax(mx, fabs(e));
            }
        printf("w8a8 matmul %-5s max |err| vs exact %.2e (max |y| %.2f; activation rounding)\n", moe_dtype_name(t), md, mx);
        CHECK(md < 0.02 * mx, "w8a8 %s error %.3e", moe_dtype_name(t), md);
        free(scratch);
    }
    moe_pool_free(pool);
}

/* MLA attention (moe_kern_mla_attn): every level equals the ref bit for bit (1..16 heads, key
 * counts around the 8-key pass and past the 64-key chunks of the values, latent widths with and
 * without a partial column pass, exponents below VEXP_MIN, caches as one (n, W) array, in
 * blocks of MOE_KV_BLOCK rows 3 blocks apart (the engine's layers side by side) and with rows
 * of W + 5 floats in blocks 77 floats apart (unaligned), every gap holding NaN; key ranges of
 * the phases cut inside blocks), and the
 * ref is a softmax-weighted sum within float rounding of a float64 evaluation. */
static void test_mla_attn(void) {
    enum { NMAX = 300, WMAX = 576 };
    static float q[16 * WMAX], cache[2 * NMAX * WMAX], u0[16 * 512], u1[16 * 512], sc[16 * (WMAX + NMAX) + 16];
    const int hns[] = {1, 3, 4, 8, 12, 16};
    const int64_t shapes[][2] = {{512, 64}, {80, 16}, {64, 32}}; /* Lkv, rope dims */
    const int64_t ns[] = {1, 7, 8, 9, 64, 300};
    const int top = moe_kern_level();
    double worst = 0;
    for (size_t si = 0; si < 3; si++)
        for (size_t hi = 0; hi < 6; hi++)
            for (size_t ni = 0; ni < 6; ni++) {
                const int64_t Lkv = shapes[si][0], W = Lkv + shapes[si][1], n = ns[ni];
                const int64_t ldc = si == 2 ? W + 5 : W,
                              bs = si == 1 ? 3 * MOE_KV_BLOCK * W : si == 2 ? MOE_KV_BLOCK * ldc + 77 : MOE_KV_BLOCK * W;
                const int hn = hns[hi];
                /* n = 64: a peaked softmax; n = 300: scores hundreds apart, so most exponents fall below
                 * VEXP_MIN (0 there) */
                for (int64_t i = 0; i < 16 * W; i++) q[i] = frand() * (ni == 4 ? 8.0f : ni == 5 ? 200.0f : 1.0f);
                for (size_t i = 0; i < sizeof cache / sizeof cache[0]; i++) cache[i] = NAN;
                for (int64_t k = 0; k < n; k++)
                    for (int64_t w = 0; w < W; w++) ((float *)moe_kv_row(cache, ldc, bs, k))[w] = frand();
                const float scale = 1.0f / sqrtf((float)W);
                moe_kern_mla_attn_ref(q, W, hn, cache, ldc, bs, W, n, Lkv, scale, sc, u0, Lkv);
                for (int l = top; l >= 0; l--) {
                    if (!use_level(l)) continue;
                    memset(u1, 0, sizeof u1);
                    moe_kern_mla_attn(q, W, hn, cache, ldc, bs, W, n, Lkv, scale, sc, u1, Lkv);
                    CHECK(memcmp(u0, u1, sizeof(float) * (size_t)(hn * Lkv)) == 0,
                          "mla_attn level %d (hn %d, Lkv %lld, n %lld) differs from ref", l, hn, (long long)Lkv, (long long)n);
                    /* the same call in phases over split ranges (keys cut at 5 and n/2, columns at 64) */
                    memset(u1, 0, sizeof u1);
                    moe_kern_mla_prep(q, W, hn, W, sc);
                    const int64_t ka = n < 5 ? n : 5, kb = n / 2 > ka ? n / 2 : ka, cm = Lkv < 64 ? Lkv : 64;
                    moe_kern_mla_scores(cache, ldc, bs, W, kb, n, scale, sc);
                    moe_kern_mla_scores(cache, ldc, bs, W, 0, ka, scale, sc);
                    moe_kern_mla_scores(cache, ldc, bs, W, ka, kb, scale, sc);
                    float m16[16];
                    static float pre[16 * NMAX];
                    moe_kern_mla_max(hn, W, n, sc, m16);
                    memcpy(pre, sc + 16 * W, sizeof(float) * 16 * (size_t)n);
                    moe_kern_mla_exp(hn, W, ka, n, m16, sc);
                    moe_kern_mla_exp(hn, W, 0, ka, m16, sc);
                    int same_e = 1; /* every exponential: the scalar vexp's bits, 0 below VEXP_MIN */
                    for (int64_t k = 0; k < n; k++)
                        for (int h = 0; h < 16; h++) {
                            const float x = pre[16 * k + h] - m16[h],
                                        want = h >= hn ? pre[16 * k + h] : x >= VEXP_MIN ? vexp_ref(x) : 0.0f;
                            same_e &= memcmp(&want, &sc[16 * W + 16 * k + h], sizeof want) == 0;
                        }
                    CHECK(same_e, "mla exp level %d (hn %d, n %lld) differs from vexp_ref", l, hn, (long long)n);
                    moe_kern_mla_norm(hn, W, n, sc);
                    moe_kern_mla_values(hn, cache, ldc, bs, W, n, cm, Lkv, sc, u1, Lkv);
                    moe_kern_mla_values(hn, cache, ldc, bs, W, n, 0, cm, sc, u1, Lkv);
                    CHECK(memcmp(u0, u1, sizeof(float) * (size_t)(hn * Lkv)) == 0,
                          "mla phases level %d (hn %d, Lkv %lld, n %lld) differ from ref", l, hn, (long long)Lkv, (long long)n);
                }
                moe_kern_set_level(top);
                if (ni == 5) { /* scores hundreds apart: float rounding of s alone moves the weights by
                                * ~1e-4, so only check a convex combination of the cache rows */
                    int bounded = 1;
                    for (int64_t i = 0; i < hn * Lkv; i++) bounded &= isfinite(u0[i]) && fabsf(u0[i]) <= 1.0f;
                    CHECK(bounded, "mla_attn ref with spread scores: outputs outside the cache's range (hn %d)", hn);
                    continue;
                }
                for (int h = 0; h < hn; h++) { /* float64 softmax-weighted sum */
                    double s[NMAX], m = -1e300, z = 0;
                    for (int64_t k = 0; k < n; k++) {
                        double a = 0;
                        for (int64_t w = 0; w < W; w++) a += (double)moe_kv_row(cache, ldc, bs, k)[w] * q[h * W + w];
                        s[k] = a * scale;
                        m = fmax(m, s[k]);
                    }
                    for (int64_t k = 0; k < n; k++) z += (s[k] = exp(s[k] - m));
                    for (int64_t c = 0; c < Lkv; c++) {
                        double e = 0;
                        for (int64_t k = 0; k < n; k++) e += s[k] / z * moe_kv_row(cache, ldc, bs, k)[c];
                        worst = fmax(worst, fabs(e - u0[h * Lkv + c]));
                    }
                }
            }
    CHECK(worst < 1e-5, "mla_attn ref vs float64: %.3e", worst);
    printf("mla_attn: levels %d..0, whole and in split phases, bit-identical to ref (1-16 heads, 1-300 keys, Lkv 512/80/64, plain and blocked caches); "
           "ref vs float64 %.2e\n", top,
           worst);
}

/* A repacked layout (kern.h: Q8_0, Q5_0 and Q4_K R16) against its file type: random rows of 112
 * (7 groups), `fix` shaping some rows (extreme scales and values), the matrix repacked in two
 * calls (groups are independent); every row's moe_kern_dequant_wrow equals the file row's
 * dequantization, every level's product on the repacked copy equals the ref on the original bit
 * for bit for every T and row range (ranges cut groups and leave quads, pairs and single groups),
 * and so does a matmul on a pool with W8A8 on and off. */
typedef void (*repack_fn)(const uint8_t *src, size_t rb, int64_t in, int64_t g0, int64_t g1, uint8_t *dst);
typedef void (*row_fix_fn)(uint8_t *row, int64_t o, int64_t in);
typedef struct {
    const char *what;
    int type, rtype;
    repack_fn repack;
    row_fix_fn fix;
    const int64_t *ins;
    int n_ins;
    const int *Ts;
    int n_T;
    const int64_t (*cuts)[2];
    int n_cuts;
    int no_huge_x; /* skip fill_x kind 2 (values near FLT_MAX overflow the K-quants' min terms) */
} layout_case;

static void check_layout(const layout_case *lc) {
    enum { OUT = 304, MAXT = 31 };
    static uint8_t wq[OUT * 2176], rp[OUT * 2176];
    static float x[MAXT * 2048], y0[MAXT * OUT], y1[MAXT * OUT], d0[2048], d1[2048];
    static moe_q8a r[MAXT * 64];
    int64_t in = 0;
    size_t rb = 0;
    for (int ii = 0; ii < lc->n_ins; ii++) {
        in = lc->ins[ii];
        rb = moe_dtype_row_bytes(lc->type, in);
        for (size_t i = 0; i < rb * OUT; i++) {
            g_s = g_s * 6364136223846793005ull + 1442695040888963407ull;
            wq[i] = (uint8_t)(g_s >> 56);
        }
        for (int64_t o = 0; o < OUT; o++) lc->fix(wq + (size_t)o * rb, o, in);
        memset(rp, 0xA5, sizeof rp);
        lc->repack(wq, rb, in, 0, 2, rp);
        lc->repack(wq, rb, in, 2, OUT / 16, rp);
        moe_wview w = {wq, lc->type, in, OUT, rb}, wr = {rp, lc->rtype, in, OUT, rb};
        int same = 1;
        for (int64_t o = 0; o < OUT; o++) {
            moe_dtype_dequant_row(lc->type, wq + (size_t)o * rb, d0, in);
            moe_kern_dequant_wrow(&wr, o, d1);
            same &= memcmp(d0, d1, sizeof(float) * (size_t)in) == 0;
        }
        CHECK(same, "%s in=%lld: dequant_wrow differs from the file row", lc->what, (long long)in);
        for (int q = 0; q < lc->n_T; q++) {
            const int T = lc->Ts[q], kind = (q + ii) % 5;
            fill_x(x, T * in, lc->no_huge_x && kind == 2 ? 0 : kind);
            for (int tt = 0; tt < T; tt++) moe_kern_quant_act_ref(x + tt * in, r + tt * (in / 32), in);
            moe_kern_mmq_rows_ref(&w, r, T, y0, OUT, 0, OUT);
            for (int c = 0; c < lc->n_cuts; c++) check_mmq_levels(&wr, r, T, y0, y1, lc->cuts[c][0], lc->cuts[c][1], 0, lc->what);
        }
    }
    /* through moe_kern_matmul on a pool, W8A8 on and off (wq and rp hold the last matrix) */
    moe_pool *pool = moe_pool_init(3);
    moe_wview w = {wq, lc->type, in, OUT, rb}, wr = {rp, lc->rtype, in, OUT, rb};
    float *scratch = malloc(sizeof(float) * 3 * moe_kern_scratch_floats(in));
    moe_kern_ws ws = {scratch, moe_kern_scratch_floats(in), r, MAXT * 64};
    fill_x(x, 5 * in, 0);
    for (int int8 = 1; int8 >= 0; int8--) {
        moe_kern_set_int8(int8);
        moe_kern_matmul(pool, &w, x, in, y0, OUT, 5, &ws);
        moe_kern_matmul(pool, &wr, x, in, y1, OUT, 5, &ws);
        CHECK(memcmp(y0, y1, sizeof(float) * 5 * OUT) == 0, "%s matmul (int8 %d) differs from the file type", lc->what, int8);
    }
    moe_kern_set_int8(1);
    free(scratch);
    moe_pool_free(pool);
    printf("%s: repacked rows bit-identical to the file type's ref at levels %d..0 (%d shapes, %d token counts, %d row "
           "ranges, dequant, matmul)\n",
           lc->what, moe_kern_level(), lc->n_ins, lc->n_T, lc->n_cuts + 1);
}

static void put_f16(uint8_t *p, float v) {
    uint16_t h = moe_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* Q8_0: rows 19/83 denormal scales, 33/99 near the F16 maximum, 5/70 all −128, 21/91 all +127 */
static void fix_q8_0(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 32; b++) {
        uint8_t *blk = row + (size_t)b * 34;
        put_f16(blk, (frand() + 1.5f) * (o == 19 || o == 83 ? 1e-7f : o == 33 || o == 99 ? 2e4f : 0.01f));
        if (o == 5 || o == 70) memset(blk + 2, 0x80, 32);
        if (o == 21 || o == 91) memset(blk + 2, 0x7f, 32);
    }
}

/* Q5_0: row 19 denormal d, 90 large; 5/70 every value +15, 21/101 every value −16 */
static void fix_q5_0(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 32; b++) {
        uint8_t *blk = row + (size_t)b * 22;
        put_f16(blk, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 2e4f : 0.01f));
        if (o == 5 || o == 70) memset(blk + 2, 0xFF, 20);
        if (o == 21 || o == 101) memset(blk + 2, 0x00, 20);
    }
}

/* Q4_K: d and dmin, row 19 denormal, 90 large; 41/77 every nibble 15 and every 6-bit scale/min 63 */
static void fix_q4_k(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 256; b++) {
        uint8_t *blk = row + (size_t)b * 144;
        for (int f = 0; f < 2; f++) put_f16(blk + 2 * f, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 30.0f : 0.001f));
        if (o == 41 || o == 77) {
            memset(blk + 4, 0xFF, 12);
            memset(blk + 16, 0xFF, 128);
        }
    }
}

/* Q4_0: row 19 denormal d, 90 large; 5/70 every value +7, 21/101 every value −8 */
static void fix_q4_0(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 32; b++) {
        uint8_t *blk = row + (size_t)b * 18;
        put_f16(blk, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 2e4f : 0.01f));
        if (o == 5 || o == 70) memset(blk + 2, 0xFF, 16);
        if (o == 21 || o == 101) memset(blk + 2, 0x00, 16);
    }
}

/* Q5_1: row 19 denormal d, 90 large; 5/70 every value 31, 21/101 every value 0; mins of either sign */
static void fix_q5_1(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 32; b++) {
        uint8_t *blk = row + (size_t)b * 24;
        put_f16(blk, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 2e4f : 0.01f));
        put_f16(blk + 2, (frand() - 0.5f) * (o == 90 ? 1e4f : 0.3f));
        if (o == 5 || o == 70) memset(blk + 4, 0xFF, 20);
        if (o == 21 || o == 101) memset(blk + 4, 0x00, 20);
    }
}

/* Q5_K: as Q4_K; rows 41/77 every value 31 (nibbles and fifth bits all set), 23/88 every fifth bit set */
static void fix_q5_k(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 256; b++) {
        uint8_t *blk = row + (size_t)b * 176;
        for (int f = 0; f < 2; f++) put_f16(blk + 2 * f, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 30.0f : 0.001f));
        if (o == 41 || o == 77) {
            memset(blk + 4, 0xFF, 12);
            memset(blk + 16, 0xFF, 160);
        }
        if (o == 23 || o == 88) memset(blk + 16, 0xFF, 32);
    }
}

/* Q6_K: row 19 denormal d, 90 large; 7/77 scales all -128, 8/101 all 127 with every value 63 */
static void fix_q6_k(uint8_t *row, int64_t o, int64_t in) {
    for (int64_t b = 0; b < in / 256; b++) {
        uint8_t *blk = row + (size_t)b * 210;
        put_f16(blk + 208, (frand() + 1.5f) * (o == 19 ? 1e-7f : o == 90 ? 30.0f : 0.001f));
        if (o == 7 || o == 77) memset(blk + 192, 0x80, 16);
        if (o == 8 || o == 101) {
            memset(blk + 192, 0x7F, 16);
            memset(blk, 0xFF, 192);
        }
    }
}

static void test_layouts(void) {
    CHECK(moe_kern_can_repack(MOE_DTYPE_Q8_0, 2048, 48) && !moe_kern_can_repack(MOE_DTYPE_Q8_0, 2048, 40) &&
              moe_kern_can_repack(MOE_DTYPE_Q4_0, 2048, 48) && !moe_kern_can_repack(MOE_DTYPE_Q4_1, 2048, 48) &&
              moe_kern_can_repack(MOE_DTYPE_Q5_0, 1408, 48) && moe_kern_can_repack(MOE_DTYPE_Q5_1, 1408, 48) &&
              moe_kern_can_repack(MOE_DTYPE_Q5_K, 2048, 48) && !moe_kern_can_repack(MOE_DTYPE_Q5_K, 1408, 48) &&
              moe_kern_can_repack(MOE_DTYPE_Q4_K, 2048, 48) && !moe_kern_can_repack(MOE_DTYPE_Q4_K, 224, 48) &&
              moe_kern_can_repack(MOE_DTYPE_Q6_K, 2048, 48) && !moe_kern_can_repack(MOE_DTYPE_Q6_K, 1408, 48),
          "can_repack: Q8_0, Q4_0, Q5_0 and Q5_1 with in a multiple of 32, Q4_K, Q5_K and Q6_K of 256, out a multiple of 16");
    uint32_t seen = 0;
    for (int q = 0; q < 32; q++) seen |= 1u << moe_q5r_qh_bit(q);
    CHECK(seen == 0xFFFFFFFFu, "q5_0 r16: the qh permutation misses bits (%08x)", seen);
    static const int64_t in_q8[] = {32, 96, 1056, 2048}, in_q5[] = {32, 96, 1408, 2048}, in_q4k[] = {256, 512, 2048};
    static const int t_q8[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 16, 17, 31}, t_q5[] = {1, 2, 3, 4, 5, 6, 7, 9, 13},
                     t_q4k[] = {1, 2, 3, 4, 5, 9, 27};
    /* 7..73: 3 whole groups (pair + single) cut at both ends; 3..106: 5 (quad + single or two pairs +
     * single); 9..57: 2 (one pair); 16..96: 5 whole groups exactly; 5..300: 17 (4 quads of groups
     * from 4 slices + single, or 8 pairs from 2 slices + single) */
    static const int64_t cuts[][2] = {{7, 73}, {3, 106}, {9, 57}, {16, 96}, {5, 300}};
    const layout_case cases[] = {
        {"r16 (q8_0)", MOE_DTYPE_Q8_0, MOE_KTYPE_Q8_0_R16, moe_kern_repack_q8_0_r16, fix_q8_0, in_q8, 4, t_q8, 16, cuts, 5, 0},
        {"q5_0 r16", MOE_DTYPE_Q5_0, MOE_KTYPE_Q5_0_R16, moe_kern_repack_q5_0_r16, fix_q5_0, in_q5, 4, t_q5, 9, cuts, 5, 0},
        {"q4_0 r16", MOE_DTYPE_Q4_0, MOE_KTYPE_Q4_0_R16, moe_kern_repack_q4_0_r16, fix_q4_0, in_q5, 4, t_q5, 9, cuts, 5, 0},
        {"q5_1 r16", MOE_DTYPE_Q5_1, MOE_KTYPE_Q5_1_R16, moe_kern_repack_q5_1_r16, fix_q5_1, in_q5, 4, t_q5, 9, cuts, 5, 1},
        {"q4_k r16", MOE_DTYPE_Q4_K, MOE_KTYPE_Q4_K_R16, moe_kern_repack_q4_k_r16, fix_q4_k, in_q4k, 3, t_q4k, 7, cuts, 5, 1},
        {"q5_k r16", MOE_DTYPE_Q5_K, MOE_KTYPE_Q5_K_R16, moe_kern_repack_q5_k_r16, fix_q5_k, in_q4k, 3, t_q4k, 7, cuts, 5, 1},
        {"q6_k r16", MOE_DTYPE_Q6_K, MOE_KTYPE_Q6_K_R16, moe_kern_repack_q6_k_r16, fix_q6_k, in_q4k, 3, t_q4k, 7, cuts, 5, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_layout(&cases[i]);
}

/* moe_kern_matmul_set: a set of products (mixed types, shared and distinct inputs, tiny and
 * large) in one job equals each product run alone, bit for bit, for 1..4 threads and for a
 * workspace so small that the set runs in pieces. */
static void test_set(void) {
    enum { NP = 7, IN = 256, OUTMAX = 100, T = 3 };
    static float W[OUTMAX * IN], X[3][T * IN], Y[NP][T * OUTMAX], R[NP][T * OUTMAX];
    static uint8_t Q[NP][OUTMAX * IN * 4];
    static moe_q8a XQ[NP * T * (IN / 32)], PQ[NP][T * (IN / 32)];
    const int types[NP] = {MOE_DTYPE_Q8_0, MOE_DTYPE_Q8_0, MOE_DTYPE_F32, MOE_DTYPE_Q4_0, MOE_DTYPE_F16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0};
    const int outs[NP] = {100, 64, 40, 8, 33, 100, 16};
    const int xs[NP] = {0, 0, 0, 1, 1, 2, 1}; /* products 0-2 share input 0, 3/4/6 input 1 */
    for (int i = 0; i < OUTMAX * IN; i++) W[i] = frand();
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < T * IN; i++) X[k][i] = frand() * (float)(k + 1);
    moe_wview w[NP];
    moe_kern_prod p[NP];
    float *scratch = malloc(sizeof(float) * 4 * moe_kern_scratch_floats(IN));
    moe_kern_ws ws = {scratch, moe_kern_scratch_floats(IN), XQ, NP * T * (IN / 32)};
    for (int k = 0; k < NP; k++) {
        size_t rb = moe_dtype_row_bytes(types[k], IN);
        for (int o = 0; o < outs[k]; o++) moe_dtype_quant_row(types[k], W + ((o * 7 + k) % OUTMAX) * IN, Q[k] + o * rb, IN);
        w[k] = (moe_wview){Q[k], types[k], IN, outs[k], rb};
        p[k] = (moe_kern_prod){&w[k], X[xs[k]], IN, Y[k], outs[k], T, NULL};
        moe_kern_matmul(NULL, &w[k], X[xs[k]], IN, R[k], outs[k], T, &ws);
    }
    int ok = 1;
    for (int nth = 1; nth <= 4; nth++) {
        moe_pool *pool = moe_pool_init(nth);
        for (int cap = 0; cap < 4; cap++) {
            /* cap 1: room for one input at a time, so the set is split into pieces; cap 2 and 3:
             * the W8A8 products take their input already quantized (moe_kern_prod.xq, x not
             * read), with the full and with a one-input workspace */
            moe_kern_ws w2 = ws;
            if (cap & 1) w2.xq_cap = T * (IN / 32);
            moe_kern_prod p2[NP];
            memcpy(p2, p, sizeof p2);
            if (cap >= 2) {
                if (!moe_kern_int8_enabled()) continue;
                for (int k = 0; k < NP; k++)
                    if (moe_kern_mmq_supported(types[k])) {
                        for (int t = 0; t < T; t++) moe_kern_quant_act(X[xs[k]] + t * IN, PQ[k] + t * (IN / 32), IN);
                        p2[k].xq = PQ[k];
                        p2[k].x = NULL;
                    }
            }
            memset(Y, 0, sizeof Y);
            moe_kern_matmul_set(pool, p2, NP, &w2);
            for (int k = 0; k < NP; k++) {
                int same = memcmp(Y[k], R[k], sizeof(float) * T * (size_t)outs[k]) == 0;
                CHECK(same, "set: product %d (%s) differs from alone, %d threads, small ws %d, quantized input %d", k,
                      moe_dtype_name(types[k]), nth, cap & 1, cap >= 2);
                ok &= same;
            }
        }
        moe_pool_free(pool);
    }
    free(scratch);
    if (ok) printf("matmul_set: 7 products (q8_0/q4_0/f32/f16, shared inputs) == alone, 1-4 threads, split workspace, inputs quantized by the caller\n");
}

/* F16 / BF16 products (converted in registers at the top level) equal the ref's bit for bit at
 * every level: row counts around the 4-row blocks, lengths with and without a tail, 1-5 tokens,
 * strided inputs and outputs, and weights that include denormals, zeros of both signs and the
 * largest finite values. */
static void test_half(void) {
    enum { INMAX = 2053, OUTMAX = 9, TMAX = 5, LDX = 2060, LDY = 11 };
    static uint16_t Wt[OUTMAX * INMAX];
    static float X[TMAX * LDX], Y[TMAX * LDY], R[TMAX * LDY];
    float *scratch = malloc(sizeof(float) * moe_kern_scratch_floats(INMAX));
    const int64_t ins[] = {32, 37, 96, 100, INMAX};
    const int64_t outs[] = {1, 3, 4, 9};
    const int64_t ts[] = {1, 2, 3, 5};
    const int top = moe_kern_level();
    int ok = 1, cases = 0;
    for (int bf = 0; bf < 2; bf++) {
        for (int i = 0; i < OUTMAX * INMAX; i++) {
            const uint16_t sign = frand() < 0 ? 0x8000 : 0, mant = (uint16_t)((frand() + 1.0f) * 511.0f);
            uint16_t v;
            if (i % 97 == 5)
                v = sign | (uint16_t)(mant & (bf ? 0x7f : 0x3ff)); /* denormal (or zero) */
            else if (i % 89 == 7)
                v = sign | (bf ? 0x7f7f : 0x7bff); /* largest finite */
            else if (bf)
                v = sign | (uint16_t)((0x60 + (int)((frand() + 1.0f) * 23.0f)) << 7) | (mant & 0x7f);
            else
                v = sign | (uint16_t)((1 + (int)((frand() + 1.0f) * 14.0f)) << 10) | (mant & 0x3ff);
            Wt[i] = v;
        }
        for (int i = 0; i < TMAX * LDX; i++) X[i] = frand() * (i % 13 == 0 ? 1e-3f : 1.0f);
        for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++)
            for (size_t b = 0; b < sizeof outs / sizeof outs[0]; b++)
                for (size_t c = 0; c < sizeof ts / sizeof ts[0]; c++) {
                    const int64_t in = ins[a], out = outs[b], T = ts[c];
                    const moe_wview w = {(const uint8_t *)Wt, bf ? MOE_DTYPE_BF16 : MOE_DTYPE_F16, in, out, (size_t)in * 2};
                    moe_kern_set_level(0);
                    for (int i = 0; i < TMAX * LDY; i++) R[i] = Y[i] = -3.0f;
                    moe_kern_matmul_rows(&w, X, LDX, R, LDY, T, 0, out, scratch);
                    for (int l = top; l >= 1; l--) {
                        if (!use_level(l)) continue;
                        for (int i = 0; i < TMAX * LDY; i++) Y[i] = -3.0f;
                        moe_kern_matmul_rows(&w, X, LDX, Y, LDY, T, 0, out, scratch);
                        const int same = memcmp(Y, R, sizeof Y) == 0;
                        CHECK(same, "%s product, in %lld, out %lld, T %lld, level %d: differs from the ref", bf ? "bf16" : "f16",
                              (long long)in, (long long)out, (long long)T, l);
                        ok &= same;
                        cases++;
                    }
                }
    }
    moe_kern_set_level(top);
    free(scratch);
    if (ok) printf("f16/bf16 products: %d cases bit-identical to the ref (denormals, tails, 1-5 tokens)\n", cases);
}

/* K-quants compute through the row dequantizer: the product equals float64 over dtype.c's rows */
static void test_kquants(void) {
    int types[] = {MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_K, MOE_DTYPE_Q6_K};
    const int64_t IN = 512, OUT = 40, T = 3;
    static uint8_t Q[40 * 512];
    static float X[3 * 512], Y[3 * 40], row[512];
    for (int i = 0; i < T * IN; i++) X[i] = frand();
    moe_pool *pool = moe_pool_init(2);
    float *scratch = malloc(sizeof(float) * 2 * moe_kern_scratch_floats(IN));
    moe_kern_ws ws = {scratch, moe_kern_scratch_floats(IN), NULL, 0};
    for (size_t k = 0; k < 3; k++) {
        int t = types[k];
        size_t rb = moe_dtype_row_bytes(t, IN), bb = moe_dtype_block_bytes(t);
        for (size_t i = 0; i < rb * OUT; i++) Q[i] = (uint8_t)(frand() * 128 + 128);
        for (size_t b = 0; b < rb * OUT / bb; b++) {
            uint16_t d = moe_f32_to_f16(0.01f * (frand() + 1.5f)), dm = moe_f32_to_f16(0.003f * (frand() + 1.5f));
            uint8_t *blk = Q + b * bb;
            if (t == MOE_DTYPE_Q6_K) {
                memcpy(blk + 208, &d, 2);
            } else {
                memcpy(blk, &d, 2);
                memcpy(blk + 2, &dm, 2);
            }
        }
        moe_wview w = {Q, t, IN, OUT, rb};
        moe_kern_matmul(pool, &w, X, IN, Y, OUT, T, &ws);
        double md = 0, mx = 0;
        for (int o = 0; o < OUT; o++) {
            moe_dtype_dequant_row(t, Q + o * rb, row, IN);
            for (int tt = 0; tt < T; tt++) {
                double e = 0;
                for (int i = 0; i < IN; i++) e += (double)row[i] * X[tt * IN + i];
                md = fmax(md, fabs(e - Y[tt * OUT + o]));
                mx = fmax(mx, fabs(e));
            }
        }
        printf("matmul %-5s max |err| vs float64 over dtype.c rows %.2e (max |y| %.2f)\n", moe_dtype_name(t), md, mx);
        CHECK(md < 1e-5 * (mx + 1), "matmul %s error %.3e", moe_dtype_name(t), md);
    }
    free(scratch);
    moe_pool_free(pool);
}

/* SwiGLU: every level equals the ref bit for bit (edge values included), and the ref is within
 * a few ulp of g·u/(1+e^−g) in double */
/* F32 products (F32 weights, and F16 rows dequantized per tile, MOE_INT8 or not): every level
 * gives, per (row, token), moe_kern_dot_ref of the (dequantized) row and the token, bit for bit,
 * for lengths with and without a 32-element tail, rows not a multiple of the 4-row blocks, odd
 * token counts, strided inputs and outputs, denormal and large values; nothing is written
 * outside the rows. */
static void test_f32_matmul(void) {
    const int64_t ins[] = {1, 31, 32, 33, 128, 519}, OUT = 23, LDY = 29, Ts[] = {1, 2, 3, 5};
    const int kt[] = {MOE_DTYPE_F32, MOE_DTYPE_F16};
    static float W[23 * 519], X[5 * 530], Y[5 * 29], row[519];
    static uint8_t Q[23 * 519 * 4];
    const int top = moe_kern_level();
    float *scratch = malloc(sizeof(float) * moe_kern_scratch_floats(519));
    moe_kern_ws ws = {scratch, moe_kern_scratch_floats(519), NULL, 0};
    int checks = 0;
    for (size_t ii = 0; ii < 6; ii++) {
        const int64_t in = ins[ii], ldx = in + 11;
        for (int64_t i = 0; i < OUT * in; i++) W[i] = frand() * (i % 97 == 0 ? 3e4f : 1.0f);
        for (int64_t i = 0; i < 5 * ldx; i++) X[i] = i % 13 == 0 ? 1e-39f : frand(); /* denormals */
        for (size_t k = 0; k < 2; k++) {
            const size_t rb = moe_dtype_row_bytes(kt[k], in);
            for (int64_t o = 0; o < OUT; o++) moe_dtype_quant_row(kt[k], W + o * in, Q + (size_t)o * rb, in);
            moe_wview w = {Q, kt[k], in, OUT, rb};
            for (size_t ti = 0; ti < 4; ti++) {
                const int64_t T = Ts[ti];
                for (int l = top; l >= 0; l--) {
                    if (!use_level(l)) continue;
                    for (int i = 0; i < 5 * LDY; i++) Y[i] = -7.0f;
                    moe_kern_matmul(NULL, &w, X, ldx, Y, LDY, T, &ws);
                    int same = 1, untouched = 1;
                    for (int64_t o = 0; o < OUT; o++) {
                        moe_dtype_dequant_row(kt[k], Q + (size_t)o * rb, row, in);
                        for (int64_t t = 0; t < T; t++) {
                            const float want = moe_kern_dot_ref(row, X + t * ldx, in);
                            same &= memcmp(&want, &Y[t * LDY + o], 4) == 0;
                        }
                    }
                    for (int64_t t = 0; t < 5; t++)
                        for (int64_t o = 0; o < LDY; o++) untouched &= (t < T && o < OUT) || Y[t * LDY + o] == -7.0f;
                    CHECK(same, "f32 matmul %s in=%lld T=%lld level %d differs from dot_ref", moe_dtype_name(kt[k]),
                          (long long)in, (long long)T, l);
                    CHECK(untouched, "f32 matmul %s in=%lld T=%lld level %d wrote outside its rows", moe_dtype_name(kt[k]),
                          (long long)in, (long long)T, l);
                    checks++;
                }
                moe_kern_set_level(top);
            }
        }
    }
    printf("f32/f16 matmul: %d cases (in 1..519, T 1/2/3/5, 23 rows) equal dot_ref per (row, token) at every level\n", checks);
    free(scratch);
}

static void test_swiglu(void) {
    enum { N = 1000 };
    static float g[N], u[N], y0[N], y1[N];
    const float edge[] = {0.0f, -0.0f, 1e-40f, -1e-40f, 87.0f, -87.0f, 87.5f, -87.5f, 88.7f, -88.7f, 100.0f, -100.0f,
                          1e30f, -1e30f, INFINITY, NAN, 0.5f, -0.5f, 20.0f, -20.0f, 3.4e38f, -3.4e38f};
    const int ne = (int)(sizeof edge / sizeof edge[0]);
    for (int i = 0; i < N; i++) {
        g[i] = i < ne ? edge[i] : frand() * (i % 3 == 0 ? 100.0f : 8.0f);
        u[i] = i < ne ? 1.0f : frand() * 2.0f;
    }
    const int top = moe_kern_level();
    const int lens[] = {1, 7, 15, 16, 17, 33, N};
    double worst = 0;
    for (size_t q = 0; q < sizeof lens / sizeof lens[0]; q++) {
        const int n = lens[q];
        memcpy(y0, g, sizeof g);
        moe_kern_swiglu_ref(y0, u, n);
        for (int l = top; l >= 0; l--) {
            if (!use_level(l)) continue;
            memcpy(y1, g, sizeof g);
            moe_kern_swiglu(y1, u, n);
            CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)n), "swiglu n=%d level %d differs from the ref", n, l);
        }
        moe_kern_set_level(top);
    }
    for (int i = 0; i < N; i++) {
        const double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * (double)u[i];
        if (isnan(g[i])) {
            CHECK(isnan(y0[i]), "swiglu(NaN) = %g, want NaN", y0[i]);
        } else if (isinf(want) || fabs(want) < 1e-30) {
            CHECK(want == y0[i] || fabs(want - y0[i]) < 1e-30, "swiglu(%g) = %g, want %g", g[i], y0[i], want);
        } else {
            const double rel = fabs(y0[i] - want) / fabs(want);
            worst = rel > worst ? rel : worst;
        }
    }
    printf("swiglu ref vs double: largest relative error %.3g\n", worst);
    CHECK(worst < 1e-6, "swiglu relative error %.3g", worst);
}

int main(void) {
    printf("simd: %s\n", moe_kern_simd_name());
#if defined(__aarch64__)
    { /* aarch64 (scripts/test-aarch64.sh, under qemu): NEON must be the level in use, not a silent
       * fallback to the ref; the x86 levels must be refused */
        const char *fr = getenv("MOE_FORCE_REF");
        const int top = moe_kern_level();
        CHECK(top == 3 || (fr && *fr && strcmp(fr, "0") != 0), "aarch64: level %d (%s), want 3 (neon)", top,
              moe_kern_simd_name());
        CHECK(!use_level(2) && !use_level(1), "aarch64: an x86 level was accepted");
        moe_kern_set_level(top);
        printf("levels run: %d (%s) and 0 (scalar ref)\n", top, moe_kern_simd_name());
    }
#endif
    test_f32_matmul();
    /* dot: SIMD vs ref, all lengths 0..300 (tails) */
    float a[4096], b[4096];
    for (int i = 0; i < 4096; i++) {
        a[i] = frand();
        b[i] = frand();
    }
    int same = 1;
    double worst = 0;
    for (int n = 0; n <= 300; n++) {
        float x = moe_kern_dot(a, b, n), y = moe_kern_dot_ref(a, b, n);
        same &= memcmp(&x, &y, 4) == 0;
        double exact = 0;
        for (int i = 0; i < n; i++) exact += (double)a[i] * b[i];
        worst = fmax(worst, fabs(exact - x));
    }
    CHECK(same, "SIMD dot differs from ref");
    CHECK(worst < 1e-4, "dot vs float64: %.3e", worst);
    printf("dot: bit-identical to ref for n = 0..300, max |err| vs float64 %.2e\n", worst);

    /* dequant rows: SIMD vs dtype reference for F16, BF16, Q8_0 */
    int types[] = {MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_F32};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k];
        uint8_t q[4096 * 4];
        float r1[4096], r2[4096];
        CHECK(moe_dtype_quant_row(t, a, q, 4096) == 0, "quant %s", moe_dtype_name(t));
        moe_dtype_dequant_row(t, q, r1, 4096);
        moe_kern_dequant_row(t, q, r2, 4096);
        CHECK(memcmp(r1, r2, sizeof r1) == 0, "dequant %s: SIMD differs from reference", moe_dtype_name(t));
    }

    /* Q4_K and Q5_0 (the 4-bit files' types): SIMD dequant vs the dtype reference on random
     * bytes (every nibble, 5th bit and 6-bit scale pattern; F16 scales kept finite) */
    {
        static uint8_t raw[16 * 144];
        static float r1[16 * 256], r2[16 * 256];
        const int kt[] = {MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_0};
        const size_t bbytes[] = {144, 22}, bvals[] = {256, 32};
        for (int k = 0; k < 2; k++) {
            const int64_t nbk = (int64_t)(sizeof raw / bbytes[k]), n = nbk * (int64_t)bvals[k];
            for (size_t i = 0; i < sizeof raw; i++) raw[i] = (uint8_t)(frand() * 256.0f);
            for (int64_t bk = 0; bk < nbk; bk++) { /* d (and dmin) in [2^-14, 2) or a denormal */
                for (int f = 0; f < (k == 0 ? 2 : 1); f++) {
                    uint16_t hv = bk == 3 ? (uint16_t)0x0005 : moe_f32_to_f16(0.001f + fabsf(frand()));
                    memcpy(raw + (size_t)bk * bbytes[k] + 2 * f, &hv, 2);
                }
            }
            const int top = moe_kern_level();
            moe_dtype_dequant_row(kt[k], raw, r1, n);
            for (int l = top; l >= 0; l--) {
                if (!use_level(l)) continue;
                memset(r2, 0, sizeof r2);
                moe_kern_dequant_row(kt[k], raw, r2, n);
                CHECK(memcmp(r1, r2, sizeof(float) * (size_t)n) == 0, "dequant %s level %d differs from the reference",
                      moe_dtype_name(kt[k]), l);
            }
            moe_kern_set_level(top);
        }
    }

    /* matmul: threaded, tiled, strided vs float64 naive, for each weight type */
    moe_pool *pool = moe_pool_init(3);
    const int IN = 96, OUT = 70, T = 5, LDX = 100, LDY = 75;
    static float W[70 * 96], X[5 * 100], Y[5 * 75], Y1[5 * 75];
    static uint8_t Q[70 * 96 * 4];
    for (int i = 0; i < OUT * IN; i++) W[i] = frand();
    for (int i = 0; i < T * LDX; i++) X[i] = frand();
    float *scratch = malloc(sizeof(float) * 3 * moe_kern_scratch_floats(IN));
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k];
        size_t rb = moe_dtype_row_bytes(t, IN);
        for (int o = 0; o < OUT; o++) moe_dtype_quant_row(t, W + o * IN, Q + o * rb, IN);
        moe_wview w = {Q, t, IN, OUT, rb};
        for (int i = 0; i < T * LDY; i++) Y[i] = Y1[i] = -7.0f;
        moe_kern_ws ws = {scratch, moe_kern_scratch_floats(IN), NULL, 0};
        moe_kern_matmul(pool, &w, X, LDX, Y, LDY, T, &ws);
        moe_kern_matmul(NULL, &w, X, LDX, Y1, LDY, T, &ws);
        double md = 0;
        float row[96];
        for (int tt = 0; tt < T; tt++)
            for (int o = 0; o < OUT; o++) {
                moe_dtype_dequant_row(t, Q + o * rb, row, IN);
                double e = 0;
                for (int i = 0; i < IN; i++) e += (double)row[i] * X[tt * LDX + i];
                md = fmax(md, fabs(e - Y[tt * LDY + o]));
            }
        int untouched = 1;
        for (int tt = 0; tt < T; tt++)
            for (int o = OUT; o < LDY; o++) untouched &= Y[tt * LDY + o] == -7.0f;
        printf("matmul %-5s max |err| vs float64 %.2e\n", moe_dtype_name(t), md);
        CHECK(md < 1e-4, "matmul %s error %.3e", moe_dtype_name(t), md);
        CHECK(untouched, "matmul %s wrote outside its rows", moe_dtype_name(t));
        CHECK(memcmp(Y, Y1, sizeof Y) == 0, "matmul %s: threaded differs from single-threaded", moe_dtype_name(t));
    }
    free(scratch);
    moe_pool_free(pool);

    test_w8a8();
    test_layouts();
    test_mla_attn();
    test_set();
    test_half();
    test_kquants();
    test_swiglu();

    /* rmsnorm, softmax, swiglu against their formulas */
    float x[37], w[37], y[37];
    for (int i = 0; i < 37; i++) {
        x[i] = frand() * 3;
        w[i] = frand();
    }
    moe_kern_rmsnorm(y, x, w, 37, 1e-6f);
    double ss = 0;
    for (int i = 0; i < 37; i++) ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / 37 + 1e-6), me = 0;
    for (int i = 0; i < 37; i++) me = fmax(me, fabs(x[i] * sc * w[i] - y[i]));
    CHECK(me < 1e-6, "rmsnorm error %.3e", me);
    memcpy(y, x, sizeof y);
    moe_kern_softmax(y, 37);
    double sum = 0, mx = -1e9, se = 0;
    for (int i = 0; i < 37; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < 37; i++) sum += exp(x[i] - mx);
    for (int i = 0; i < 37; i++) se = fmax(se, fabs(exp(x[i] - mx) / sum - y[i]));
    CHECK(se < 1e-7, "softmax error %.3e", se);
    memcpy(y, x, sizeof y);
    moe_kern_swiglu(y, w, 37);
    double ge = 0;
    for (int i = 0; i < 37; i++) ge = fmax(ge, fabs(x[i] / (1 + exp(-x[i])) * w[i] - y[i]));
    CHECK(ge < 1e-6, "swiglu error %.3e", ge);
    return test_done();
}
