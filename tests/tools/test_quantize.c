/* moe quantize: Q8_0 and Q4_0 outputs are bit-identical to independent re-implementations of
 * ggml's reference quantizers (spec gguf.md §9.1–9.2); Q4_K blocks dequantize with a small RMS
 * error and beat Q4_0; the type rules (norms/router/bias kept, Q4_K -> Q5_0 fallback when
 * ne[0] % 256 != 0) hold; the quantized models load and run, with logits close to the original;
 * the report's RMS error matches a recomputation. */
#include <math.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/model.h"
#include "moe/tools.h"
#include "testutil.h"

/* independent Q8_0 reference (spec §9.1) */
static void ref_q8_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, y += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        uint16_t h = moe_f32_to_f16(d);
        memcpy(y, &h, 2);
        for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)(int8_t)roundf(x[b * 32 + j] * id);
    }
}

/* independent Q4_0 reference (spec §9.2) */
static void ref_q4_0(const float *x, uint8_t *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, y += 18) {
        const float *v = x + b * 32;
        float amax = 0, mx = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(v[j]) > amax) amax = fabsf(v[j]), mx = v[j];
        float d = mx / -8, id = d ? 1.0f / d : 0.0f;
        uint16_t h = moe_f32_to_f16(d);
        memcpy(y, &h, 2);
        for (int j = 0; j < 16; j++) {
            int a = (int8_t)(v[j] * id + 8.5f), c = (int8_t)(v[j + 16] * id + 8.5f);
            y[2 + j] = (uint8_t)((a > 15 ? 15 : a) | ((c > 15 ? 15 : c) << 4));
        }
    }
}

static double rms_rel(int type, const float *x, int64_t n) {
    uint8_t *q = malloc(moe_dtype_row_bytes(type, n));
    float *y = malloc(sizeof(float) * (size_t)n);
    moe_dtype_quant_row(type, x, q, n);
    moe_dtype_dequant_row(type, q, y, n);
    double se = 0, sv = 0;
    for (int64_t i = 0; i < n; i++) se += ((double)y[i] - x[i]) * ((double)y[i] - x[i]), sv += (double)x[i] * x[i];
    free(q);
    free(y);
    return sqrt(se / sv);
}

typedef struct {
    double worst_diff;
} rep_state;

static void on_report(void *ud, const moe_quant_report *r) {
    (void)ud;
    (void)r;
}

/* an all-zero 256-value block quantizes and dequantizes to zeros */
static void check_zeros(int type) {
    float z[256] = {0}, y[256];
    uint8_t q[256];
    CHECK(moe_dtype_quant_row(type, z, q, 256) == 0, "%s zeros", moe_dtype_name(type));
    moe_dtype_dequant_row(type, q, y, 256);
    int nz = 0;
    for (int i = 0; i < 256; i++) nz += y[i] != 0;
    CHECK(nz == 0, "%s of zeros dequantizes to %d non-zeros", moe_dtype_name(type), nz);
}

/* A ramp through every code of each `period`-value sub-block ((k − off) / div, k < period, scaled
 * by 1 + the sub-block's index), quantized and back: the largest error relative to that scale */
static double ramp_max_err(int type, int period, int off, float div) {
    float r[256], y[256];
    uint8_t q[256];
    for (int i = 0; i < 256; i++) r[i] = (float)(i % period - off) / div * (1.0f + (float)(i / period));
    moe_dtype_quant_row(type, r, q, 256);
    moe_dtype_dequant_row(type, q, y, 256);
    double me = 0;
    for (int i = 0; i < 256; i++) me = fmax(me, fabs(y[i] - r[i]) / (1.0 + (double)(i / period)));
    return me;
}

int main(void) {
    /* ---- row quantizers ---- */
    enum { N = 4096 };
    float *x = malloc(sizeof(float) * N);
    uint64_t s = 99;
    for (int i = 0; i < N; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(s >> 11) * 0x1p-53;
        x[i] = (float)((u - 0.5) * (i % 7 == 0 ? 8.0 : 1.0)); /* some outliers */
    }
    x[5] = 0; /* exact zero, ties */
    double e8 = rms_rel(MOE_DTYPE_Q8_0, x, N), e40 = rms_rel(MOE_DTYPE_Q4_0, x, N), e4k = rms_rel(MOE_DTYPE_Q4_K, x, N),
           e50 = rms_rel(MOE_DTYPE_Q5_0, x, N);
    printf("relative RMS error on %d values: q8_0 %.4f  q5_0 %.4f  q4_k %.4f  q4_0 %.4f\n", N, e8, e50, e4k, e40);
    CHECK(e8 < 0.01, "q8_0 error %.4f", e8);
    CHECK(e4k < 0.12 && e4k < e40, "q4_k error %.4f (q4_0 %.4f)", e4k, e40);
    CHECK(e50 < e40 && e50 < 0.08, "q5_0 error %.4f", e50);
    /* Q6_K: 6-bit values and int8 sub-block scales: between Q4_K and Q8_0 */
    const double e6k = rms_rel(MOE_DTYPE_Q6_K, x, N);
    printf("relative RMS error: q6_k %.4f\n", e6k);
    CHECK(e6k < e4k && e6k < e50 && e6k < 0.03 && e6k > e8 / 4, "q6_k error %.4f (q4_k %.4f, q8_0 %.4f)", e6k, e4k, e8);
    {
        uint8_t q6[210];
        check_zeros(MOE_DTYPE_Q6_K);
        /* every 6-bit code reachable: a ramp over [-1, 1) in each 16-value sub-block */
        const double me6 = ramp_max_err(MOE_DTYPE_Q6_K, 16, 8, 8.0f);
        CHECK(me6 < 0.04, "q6_k ramp max error %.4f of the sub-block's range", me6);
        CHECK(moe_dtype_quant_row(MOE_DTYPE_Q6_K, x, q6, 100) == MOE_ERR_INVAL, "q6_k needs whole blocks");
    }
    /* Q5_1 (the Q5_K fallback): min and step per block, better than Q5_0 on this noise; bytes
     * equal llama.cpp's (interop test) */
    const double e51 = rms_rel(MOE_DTYPE_Q5_1, x, N);
    printf("relative RMS error: q5_1 %.4f\n", e51);
    CHECK(e51 < e50 && e51 > e8, "q5_1 error %.4f (q5_0 %.4f, q8_0 %.4f)", e51, e50, e8);
    check_zeros(MOE_DTYPE_Q5_1);
    {
        uint8_t q51[24];
        CHECK(moe_dtype_quant_row(MOE_DTYPE_Q5_1, x, q51, 20) == MOE_ERR_INVAL, "q5_1 needs whole blocks");
    }
    /* Q5_K: Q4_K's scheme with 5-bit values: between Q4_K and Q6_K (bytes equal llama.cpp's:
     * tests/interop/test_llama_quantize.c) */
    const double e5k = rms_rel(MOE_DTYPE_Q5_K, x, N);
    printf("relative RMS error: q5_k %.4f\n", e5k);
    CHECK(e5k < e4k * 0.7 && e5k > e6k * 0.8, "q5_k error %.4f (q4_k %.4f, q6_k %.4f)", e5k, e4k, e6k);
    {
        check_zeros(MOE_DTYPE_Q5_K);
        /* a ramp per 32-value sub-block uses all 32 codes: the fifth bits must come back */
        uint8_t q5[176];
        const double me5 = ramp_max_err(MOE_DTYPE_Q5_K, 32, 0, 31.0f);
        CHECK(me5 < 0.03, "q5_k ramp max error %.4f of the sub-block's range", me5);
        CHECK(moe_dtype_quant_row(MOE_DTYPE_Q5_K, x, q5, 100) == MOE_ERR_INVAL, "q5_k needs whole blocks");
    }
    /* Q4_K edge cases: all-zero block -> zeros; constant block; all negative */
    float z[256] = {0}, yz[256];
    uint8_t qz[144];
    check_zeros(MOE_DTYPE_Q4_K);
    for (int i = 0; i < 256; i++) z[i] = -0.5f - 0.001f * i;
    moe_dtype_quant_row(MOE_DTYPE_Q4_K, z, qz, 256);
    moe_dtype_dequant_row(MOE_DTYPE_Q4_K, qz, yz, 256);
    double me = 0;
    for (int i = 0; i < 256; i++) me = fmax(me, fabs(yz[i] - z[i]));
    CHECK(me < 0.02, "q4_k negative ramp max error %.4f", me);
    CHECK(moe_dtype_quant_row(MOE_DTYPE_Q4_K, x, qz, 100) == MOE_ERR_INVAL, "q4_k needs whole blocks");
    /* hostile floats must not crash the quantizers */
    float h[256];
    for (int i = 0; i < 256; i++) h[i] = i % 3 == 0 ? INFINITY : i % 3 == 1 ? 1e30f : -1e-30f;
    moe_dtype_quant_row(MOE_DTYPE_Q4_K, h, qz, 256);

    /* ---- type rules ---- */
    int64_t ne_kb[4] = {128, 512, 16, 1}, ne_mat[4] = {2048, 1408, 1, 1}, ne_odd[4] = {100, 8, 1, 1}, ne1[4] = {2048, 1, 1, 1};
    CHECK(moe_quantize_tensor_type("blk.0.attn_k_b.weight", 3, ne_kb, MOE_DTYPE_F16, MOE_DTYPE_Q4_K) == MOE_DTYPE_Q5_0, "k_b -> q5_0");
    CHECK(moe_quantize_tensor_type("blk.1.ffn_up_exps.weight", 3, ne_mat, MOE_DTYPE_F16, MOE_DTYPE_Q4_K) == MOE_DTYPE_Q4_K, "q4_k");
    CHECK(moe_quantize_tensor_type("blk.0.attn_k_b.weight", 3, ne_kb, MOE_DTYPE_F16, MOE_DTYPE_Q6_K) == MOE_DTYPE_Q8_0, "k_b -> q8_0");
    CHECK(moe_quantize_tensor_type("output.weight", 2, ne_mat, MOE_DTYPE_F16, MOE_DTYPE_Q6_K) == MOE_DTYPE_Q6_K, "q6_k");
    CHECK(moe_quantize_tensor_type("blk.0.attn_k_b.weight", 3, ne_kb, MOE_DTYPE_F16, MOE_DTYPE_Q5_K) == MOE_DTYPE_Q5_1, "k_b -> q5_1");
    CHECK(moe_quantize_tensor_type("output.weight", 2, ne_mat, MOE_DTYPE_F16, MOE_DTYPE_Q5_K) == MOE_DTYPE_Q5_K, "q5_k");
    CHECK(moe_quantize_tensor_type("blk.1.ffn_gate_inp.weight", 2, ne_mat, MOE_DTYPE_F32, MOE_DTYPE_Q4_K) == MOE_DTYPE_F32, "router");
    CHECK(moe_quantize_tensor_type("blk.1.attn_norm.weight", 1, ne1, MOE_DTYPE_F32, MOE_DTYPE_Q8_0) == MOE_DTYPE_F32, "norm");
    CHECK(moe_quantize_tensor_type("blk.1.exp_probs_b.bias", 1, ne1, MOE_DTYPE_F32, MOE_DTYPE_Q8_0) == MOE_DTYPE_F32, "bias");
    CHECK(moe_quantize_tensor_type("x.weight", 2, ne_odd, MOE_DTYPE_F32, MOE_DTYPE_Q8_0) == MOE_DTYPE_F16, "odd rows -> f16");

    /* ---- whole models: a shape where Q4_K applies (rows of 256) ---- */
    char dir[512], src[1024], out[1024], err[512];
    tu_tmpdir(dir, sizeof dir);
    moe_init_config c;
    moe_init_preset("tiny", &c);
    c.n_embd = 256;
    c.q_lora_rank = 256;
    c.kv_lora_rank = 256;
    c.n_ff = 512;
    c.n_ff_exp = 256;
    c.dtype = MOE_DTYPE_F32;
    snprintf(src, sizeof src, "%s/f32.gguf", dir);
    CHECK(moe_init_write(&c, NULL, src, NULL, NULL, err, sizeof err) == MOE_OK, "init: %s", err);
    moe_gguf *gi;
    CHECK(moe_gguf_open(src, &gi, err, sizeof err) == MOE_OK, "open src");
    const int32_t tok[] = {1, 300, 301, 5, 77, 260, 499, 12, 13, 400, 401, 3};
    const int T = (int)(sizeof tok / sizeof tok[0]);
    float *ref = NULL;
    int32_t V = 0;
    static const int types[] = {MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_K, MOE_DTYPE_Q6_K, MOE_DTYPE_Q5_K};
    for (int k = 0; k <= 5; k++) {
        const char *path = src;
        if (k > 0) {
            int ty = types[k - 1];
            snprintf(out, sizeof out, "%s/%s.gguf", dir, moe_dtype_name(ty));
            moe_quantize_params qp = moe_quantize_default_params();
            qp.type = ty;
            qp.n_threads = 2;
            qp.report = on_report;
            CHECK(moe_quantize(src, out, &qp, err, sizeof err) == MOE_OK, "quantize %s: %s", moe_dtype_name(ty), err);
            path = out;
            /* bit-identical to the references (Q8_0/Q4_0), type rules in the file */
            moe_gguf *go;
            if (moe_gguf_open(out, &go, err, sizeof err)) {
                CHECK(0, "%s", err);
                continue;
            }
            int64_t n_q = 0, n_ident = 0, n_q4k = 0, n_q50 = 0, n_q51 = 0, n_q6k = 0, n_q80 = 0, n_q5k = 0, n_kept = 0;
            for (int64_t i = 0; i < moe_gguf_n_tensors(gi); i++) {
                const moe_gguf_tensor *a = moe_gguf_tensor_at(gi, i);
                char nm[128];
                snprintf(nm, sizeof nm, "%.*s", (int)a->name.len, a->name.ptr);
                const moe_gguf_tensor *b = moe_gguf_find_tensor(go, nm);
                if (!b) {
                    CHECK(0, "%s missing", nm);
                    continue;
                }
                if (b->type == a->type) {
                    n_kept++;
                    CHECK(!memcmp(a->data, b->data, a->nbytes), "%s kept but changed", nm);
                    CHECK(a->n_dims == 1 || strstr(nm, "gate_inp"), "%s kept unexpectedly", nm);
                    continue;
                }
                n_q4k += b->type == MOE_DTYPE_Q4_K;
                n_q50 += b->type == MOE_DTYPE_Q5_0;
                n_q6k += b->type == MOE_DTYPE_Q6_K;
                n_q80 += b->type == MOE_DTYPE_Q8_0;
                n_q5k += b->type == MOE_DTYPE_Q5_K;
                n_q51 += b->type == MOE_DTYPE_Q5_1;
                if (ty == MOE_DTYPE_Q4_K) {
                    CHECK(b->type == (a->ne[0] % 256 ? MOE_DTYPE_Q5_0 : ty), "%s: q4_k/q5_0 rule", nm);
                    continue;
                }
                if (ty == MOE_DTYPE_Q5_K) {
                    CHECK(b->type == (a->ne[0] % 256 ? MOE_DTYPE_Q5_1 : ty), "%s: q5_k/q5_1 rule", nm);
                    continue;
                }
                if (ty == MOE_DTYPE_Q6_K) {
                    CHECK(b->type == (a->ne[0] % 256 ? MOE_DTYPE_Q8_0 : MOE_DTYPE_Q6_K), "%s: q6_k/q8_0 rule", nm);
                    continue;
                }
                CHECK(b->type == ty, "%s type %d", nm, b->type);
                int64_t in = a->ne[0], rows = a->nbytes / (uint64_t)in / 4;
                uint8_t *rq = malloc(moe_dtype_row_bytes(ty, in) * (size_t)rows);
                for (int64_t r = 0; r < rows; r++) {
                    const float *xr = (const float *)a->data + r * in;
                    uint8_t *yr = rq + moe_dtype_row_bytes(ty, in) * (size_t)r;
                    if (ty == MOE_DTYPE_Q8_0) ref_q8_0(xr, yr, in);
                    else ref_q4_0(xr, yr, in);
                }
                n_q++;
                n_ident += b->nbytes == moe_dtype_row_bytes(ty, in) * (size_t)rows && !memcmp(rq, b->data, b->nbytes);
                free(rq);
            }
            if (ty == MOE_DTYPE_Q4_K) {
                printf("q4_k model: %lld tensors q4_k, %lld q5_0 (rows not a multiple of 256), %lld kept f32\n",
                       (long long)n_q4k, (long long)n_q50, (long long)n_kept);
                CHECK(n_q4k > 10 && n_q50 > 0, "q4_k and q5_0 tensors present");
            } else if (ty == MOE_DTYPE_Q5_K) {
                printf("q5_k model: %lld tensors q5_k, %lld q5_1 (rows not a multiple of 256), %lld kept f32\n",
                       (long long)n_q5k, (long long)n_q51, (long long)n_kept);
                CHECK(n_q5k > 10 && n_q51 > 0, "q5_k and q5_1 tensors present");
            } else if (ty == MOE_DTYPE_Q6_K) {
                printf("q6_k model: %lld tensors q6_k, %lld q8_0 (rows not a multiple of 256), %lld kept f32\n",
                       (long long)n_q6k, (long long)n_q80, (long long)n_kept);
                CHECK(n_q6k > 10 && n_q80 > 0, "q6_k and q8_0 tensors present");
            } else {
                printf("%s model: %lld/%lld tensors bit-identical to the reference quantizer, %lld kept\n", moe_dtype_name(ty),
                       (long long)n_ident, (long long)n_q, (long long)n_kept);
                CHECK(n_q > 10 && n_ident == n_q, "%s: %lld of %lld tensors identical", moe_dtype_name(ty), (long long)n_ident, (long long)n_q);
            }
            uint32_t ft = 0;
            moe_gguf_get_u32(go, "general.file_type", &ft);
            CHECK(ft == (ty == MOE_DTYPE_Q8_0   ? 7u
                         : ty == MOE_DTYPE_Q4_0 ? 2u
                         : ty == MOE_DTYPE_Q4_K ? 14u
                         : ty == MOE_DTYPE_Q5_K ? 16u
                                                : 18u),
                  "file_type %u", ft);
            moe_gguf_close(go);
        }
        /* the model runs */
        moe_model *m;
        if (moe_model_open(path, &m, err, sizeof err)) {
            CHECK(0, "open %s: %s", path, err);
            continue;
        }
        V = moe_model_hparams(m)->n_vocab;
        moe_ctx_params p = moe_ctx_default_params();
        p.n_ctx = 32;
        p.n_threads = 2;
        moe_ctx *cx;
        float *l = malloc(sizeof(float) * (size_t)T * (size_t)V);
        CHECK(moe_ctx_init(m, &p, &cx, err, sizeof err) == MOE_OK && moe_ctx_eval(cx, tok, T, l) == MOE_OK, "eval %s", path);
        int finite = 1;
        for (size_t i = 0; i < (size_t)T * V; i++) finite &= isfinite(l[i]);
        CHECK(finite, "%s: finite logits", path);
        if (k == 0) {
            ref = l;
        } else {
            double se = 0, sv = 0;
            for (size_t i = 0; i < (size_t)T * V; i++) se += ((double)l[i] - ref[i]) * ((double)l[i] - ref[i]), sv += (double)ref[i] * ref[i];
            double rel = sqrt(se / sv);
            printf("%-5s logits: relative RMS difference to f32 %.4f\n", moe_dtype_name(types[k - 1]), rel);
            /* this random 3-layer model amplifies weight error (expert choices flip): Q6_K weights
             * 3.5x Q8_0's RMS error gave ~0.4-0.5 here, with F32 activations too */
            CHECK(rel < (types[k - 1] == MOE_DTYPE_Q8_0 ? 0.1 : 1.0), "%s logits rel diff %.4f", moe_dtype_name(types[k - 1]), rel);
            free(l);
        }
        moe_ctx_free(cx);
        moe_model_close(m);
    }
    free(ref);
    moe_gguf_close(gi);
    free(x);
    /* refusals */
    moe_quantize_params qp = moe_quantize_default_params();
    qp.type = MOE_DTYPE_Q5_1;
    CHECK(moe_quantize(src, out, &qp, err, sizeof err) == MOE_ERR_INVAL, "q5_1 target refused");
    qp.type = MOE_DTYPE_Q8_0;
    CHECK(moe_quantize("/nonexistent.gguf", out, &qp, err, sizeof err) == MOE_ERR_IO, "missing input: %s", err);
    if (!tu_fail) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    }
    return test_done();
}
