/* moekit tools: requantize a GGUF model (`moe quantize IN OUT TYPE`).
 *
 * Every key is copied (general.file_type set to the llama_ftype of TYPE); every tensor is either
 * passed through unchanged (borrowed from the input mapping: norms, router, biases, 1-D tensors,
 * tensors already of the output type) or dequantized row by row and requantized with the
 * reference quantizers of core/dtype.c (Q8_0/Q4_0 bit-identical to ggml, Q4_K = ggml's
 * quantize_row_q4_K_ref / q5_K_ref without importance matrix, Q5_0 / Q5_1 for their fallbacks). Rows are split
 * across a thread pool; each thread also measures the squared error of its rows, so the report
 * gives the RMS error of every tensor. Memory: one output tensor at a time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"
#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/tools.h"

moe_quantize_params moe_quantize_default_params(void) {
    moe_quantize_params p = {0};
    p.type = MOE_DTYPE_Q8_0;
    return p;
}

static int keep_type(const char *name, int n_dims) {
    return n_dims <= 1 || strstr(name, "_norm.weight") || strstr(name, "ffn_gate_inp.weight") ||
           strstr(name, "exp_probs_b") || !strstr(name, ".weight");
}

int moe_quantize_tensor_type(const char *name, int n_dims, const int64_t *ne, int type_in, int type) {
    int nd = n_dims;
    for (int i = n_dims; i > 1 && ne[i - 1] == 1; i--) nd = i - 1; /* trailing 1s do not make a matrix */
    if (keep_type(name, nd)) return type_in;
    int t = type;
    if (ne[0] % moe_dtype_block_size(t)) {
        if (t == MOE_DTYPE_Q4_K) t = MOE_DTYPE_Q5_0; /* llama.cpp's fallbacks for K-quants */
        if (t == MOE_DTYPE_Q5_K) t = MOE_DTYPE_Q5_1;
        if (t == MOE_DTYPE_Q6_K) t = MOE_DTYPE_Q8_0;
        if (ne[0] % moe_dtype_block_size(t)) t = MOE_DTYPE_F16;
    }
    return t;
}

static int ftype_of(int type) {
    switch (type) {
    case MOE_DTYPE_F32: return 0;
    case MOE_DTYPE_F16: return 1;
    case MOE_DTYPE_Q4_0: return 2;
    case MOE_DTYPE_Q8_0: return 7;
    case MOE_DTYPE_Q4_K: return 14; /* LLAMA_FTYPE_MOSTLY_Q4_K_S: uniform Q4_K */
    case MOE_DTYPE_Q5_K: return 16; /* LLAMA_FTYPE_MOSTLY_Q5_K_S: uniform Q5_K */
    case MOE_DTYPE_Q6_K: return 18; /* LLAMA_FTYPE_MOSTLY_Q6_K */
    case MOE_DTYPE_BF16: return 32;
    default: return 0;
    }
}

typedef struct {
    const moe_gguf *g;
    const moe_gguf_tensor **src; /* per output tensor */
    int *type;
    moe_pool *pool;
    const moe_quantize_params *p;
    int64_t n;
    uint64_t done, total;
    /* current job */
    const moe_gguf_tensor *t;
    int out_type;
    uint8_t *out;
    int64_t rows, in;
    float *scratch;    /* nth × 2 × in floats */
    double *sq_err, *sq_val; /* per thread */
    int *fail;
} qctx;

static void job(void *arg, int ith, int nth) {
    qctx *q = arg;
    const int64_t in = q->in;
    const size_t rb_in = moe_dtype_row_bytes(q->t->type, in), rb_out = moe_dtype_row_bytes(q->out_type, in);
    float *x = q->scratch + (size_t)ith * 2 * (size_t)in, *y = x + in;
    double se = 0, sv = 0;
    for (int64_t r = ith; r < q->rows; r += nth) {
        uint8_t *o = q->out + (size_t)r * rb_out;
        if (moe_dtype_dequant_row(q->t->type, (const uint8_t *)q->t->data + (size_t)r * rb_in, x, in) ||
            moe_dtype_quant_row(q->out_type, x, o, in) || moe_dtype_dequant_row(q->out_type, o, y, in)) {
            q->fail[ith] = 1;
            return;
        }
        for (int64_t k = 0; k < in; k++) {
            double e = (double)y[k] - x[k];
            se += e * e;
            sv += (double)x[k] * x[k];
        }
    }
    q->sq_err[ith] = se;
    q->sq_val[ith] = sv;
}

static int fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    qctx *q = ud;
    const moe_gguf_tensor *t = q->src[i];
    int nth = moe_pool_n_threads(q->pool);
    q->t = t;
    q->out_type = q->type[i];
    q->out = buf;
    q->in = t->ne[0];
    q->rows = t->ne[1] * t->ne[2] * t->ne[3];
    for (int k = 0; k < nth; k++) q->sq_err[k] = q->sq_val[k] = 0, q->fail[k] = 0;
    moe_pool_run(q->pool, job, q);
    double se = 0, sv = 0;
    for (int k = 0; k < nth; k++) {
        if (q->fail[k]) return -1;
        se += q->sq_err[k];
        sv += q->sq_val[k];
    }
    q->done += nbytes;
    int64_t ne = q->in * q->rows;
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
    if (q->p->report) {
        moe_quant_report r = {name, t->type, q->out_type, ne, t->nbytes, nbytes, ne ? sqrt(se / ne) : 0, ne ? sqrt(sv / ne) : 0};
        q->p->report(q->p->ud, &r);
    }
    if (q->p->progress) q->p->progress(q->p->ud, i, q->n, name, q->done, q->total);
    return 0;
}

static int skip_ftype(const char *key, void *ud) { return !strcmp(key, "general.file_type"); }

moe_status moe_quantize(const char *in_path, const char *out_path, const moe_quantize_params *pp, char *err,
                        size_t errlen) {
    moe_quantize_params p = pp ? *pp : moe_quantize_default_params();
    if (p.type != MOE_DTYPE_Q8_0 && p.type != MOE_DTYPE_Q4_0 && p.type != MOE_DTYPE_Q4_K && p.type != MOE_DTYPE_Q5_K &&
        p.type != MOE_DTYPE_Q6_K && p.type != MOE_DTYPE_F16 && p.type != MOE_DTYPE_BF16 && p.type != MOE_DTYPE_F32) {
        snprintf(err, errlen, "quantize: type must be q8_0, q4_0, q4_k, q5_k, q6_k, f16, bf16 or f32");
        return MOE_ERR_INVAL;
    }
    moe_gguf *g = NULL;
    moe_gguf_writer *w = NULL;
    qctx q = {0};
    moe_status st = moe_gguf_open(in_path, &g, err, errlen);
    if (st) return st;
    const int64_t n = moe_gguf_n_tensors(g);
    q.g = g;
    q.p = &p;
    q.n = n;
    q.src = calloc((size_t)n + 1, sizeof *q.src);
    q.type = calloc((size_t)n + 1, sizeof *q.type);
    q.pool = moe_pool_init(p.n_threads);
    int nth = q.pool ? moe_pool_n_threads(q.pool) : 1;
    q.sq_err = calloc((size_t)nth, sizeof(double));
    q.sq_val = calloc((size_t)nth, sizeof(double));
    q.fail = calloc((size_t)nth, sizeof(int));
    if (!q.src || !q.type || !q.pool || !q.sq_err || !q.sq_val || !q.fail || (st = moe_gguf_writer_init(&w))) {
        if (!st) st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "quantize: out of memory");
        goto out;
    }
    if ((st = moe_gguf_writer_copy_kv(w, g, skip_ftype, NULL)) ||
        (st = moe_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype_of(p.type)))) {
        snprintf(err, errlen, "quantize: copying the metadata failed (%s)", moe_status_str(st));
        goto out;
    }
    int64_t max_in = 1;
    for (int64_t i = 0; i < n; i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (!moe_dtype_supported(t->type)) {
            snprintf(err, errlen, "quantize: tensor '%s' has type %s, which this build cannot read", name,
                     moe_dtype_name(t->type) ? moe_dtype_name(t->type) : "?");
            st = MOE_ERR_UNSUPPORTED;
            goto out;
        }
        int ty = moe_quantize_tensor_type(name, t->n_dims, t->ne, t->type, p.type);
        q.src[i] = t;
        q.type[i] = ty;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        /* unchanged type: borrow the input bytes (no copy, no error) */
        st = moe_gguf_writer_add_tensor(w, name, ty, t->n_dims, ne, ty == t->type ? t->data : NULL);
        if (st) {
            snprintf(err, errlen, "quantize: tensor '%s' rejected by the writer", name);
            goto out;
        }
        if (ty == t->type && p.report) {
            moe_quant_report r = {name, t->type, ty, ne[0] * ne[1] * ne[2] * ne[3], t->nbytes, t->nbytes, 0, 0};
            p.report(p.ud, &r);
        }
        if (t->ne[0] > max_in) max_in = t->ne[0];
        if (ty != t->type) q.total += moe_dtype_row_bytes(ty, ne[0]) * (uint64_t)(ne[1] * ne[2] * ne[3]);
    }
    q.scratch = malloc(sizeof(float) * 2 * (size_t)max_in * (size_t)nth);
    if (!q.scratch) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "quantize: out of memory");
        goto out;
    }
    st = moe_gguf_writer_write(w, out_path, fill, &q, NULL, NULL, err, errlen);
out:
    free(q.scratch);
    free(q.sq_err);
    free(q.sq_val);
    free(q.fail);
    free(q.src);
    free(q.type);
    if (q.pool) moe_pool_free(q.pool);
    moe_gguf_writer_free(w);
    moe_gguf_close(g);
    return st;
}
