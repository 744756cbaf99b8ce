/* The engine against ../shared/vectors/models (criteria from its README):
 *  - F32 weights: KL mean vs ref64 < 1e-9 and 100% argmax agreement;
 *  - F16, BF16, Q8_0: KL mean vs ref64 no larger than llama.cpp's own KL vs ref64 (computed
 *    here from the llama.logits.f32 files, not copied from the table);
 *  - tiny-v3-realvocab-f16, prompts 1–3: KL mean vs llama.cpp's logits < 1e-4, same argmax.
 * KL = mean over positions of KL(softmax(ref) || softmax(x)), computed in double.
 * Each case is also run with 1 and 2 threads and prefill vs token-by-token decode. */
#include <jansson.h>
#include <math.h>

#include "moe/model.h"
#include "moe/tok.h"
#include "testutil.h"

static int32_t *read_tokens(const char *path, int *n) {
    json_error_t je;
    json_t *a = json_load_file(path, 0, &je);
    if (!a || !json_is_array(a)) return NULL;
    *n = (int)json_array_size(a);
    int32_t *t = malloc(sizeof(int32_t) * (size_t)*n);
    for (int i = 0; i < *n; i++) t[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    json_decref(a);
    return t;
}

static double *read_ref(const char *path, size_t count, int is_f64) {
    size_t len;
    char *b = tu_read_file(path, &len);
    if (!b || len != count * (is_f64 ? 8 : 4)) {
        free(b);
        return NULL;
    }
    double *r = malloc(sizeof(double) * count);
    for (size_t i = 0; i < count; i++) {
        if (is_f64) {
            memcpy(&r[i], b + 8 * i, 8);
        } else {
            float f;
            memcpy(&f, b + 4 * i, 4);
            r[i] = f;
        }
    }
    free(b);
    return r;
}

/* KL(softmax(p) || softmax(q)) for one row */
static double kl_row(const double *p, const double *q, int V) {
    double mp = -INFINITY, mq = -INFINITY, sp = 0, sq = 0, kl = 0;
    for (int i = 0; i < V; i++) {
        mp = fmax(mp, p[i]);
        mq = fmax(mq, q[i]);
    }
    for (int i = 0; i < V; i++) {
        sp += exp(p[i] - mp);
        sq += exp(q[i] - mq);
    }
    double lsp = log(sp), lsq = log(sq);
    for (int i = 0; i < V; i++) {
        double lp = p[i] - mp - lsp, lq = q[i] - mq - lsq;
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

static int argmax(const double *x, int V) {
    int b = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static void compare(const double *ref, const double *x, int T, int V, double *kl_mean, double *agree, double *maxdiff) {
    double kl = 0, md = 0;
    int ag = 0;
    for (int t = 0; t < T; t++) {
        kl += kl_row(ref + (size_t)t * V, x + (size_t)t * V, V);
        ag += argmax(ref + (size_t)t * V, V) == argmax(x + (size_t)t * V, V);
        for (int i = 0; i < V; i++) md = fmax(md, fabs(ref[(size_t)t * V + i] - x[(size_t)t * V + i]));
    }
    *kl_mean = kl / T;
    *agree = (double)ag / T;
    *maxdiff = md;
}

/* Evaluate tokens; returns logits as doubles (T × V). mode 0 = one prefill, 1 = one token at a time. */
static double *run_model(moe_model *m, const int32_t *tok, int T, int threads, int mode) {
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = threads;
    p.n_ctx = 256;
    moe_ctx *c;
    char err[256];
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        fprintf(stderr, "ctx: %s\n", err);
        return NULL;
    }
    int V = moe_model_hparams(m)->n_vocab;
    float *lf = malloc(sizeof(float) * (size_t)T * V);
    moe_status st = MOE_OK;
    if (mode == 0) {
        st = moe_ctx_eval(c, tok, T, lf);
    } else {
        for (int t = 0; t < T && !st; t++) {
            st = moe_ctx_eval(c, tok + t, 1, NULL);
            memcpy(lf + (size_t)t * V, moe_ctx_logits(c), sizeof(float) * V);
        }
    }
    double *out = NULL;
    if (!st) {
        out = malloc(sizeof(double) * (size_t)T * V);
        for (size_t i = 0; i < (size_t)T * V; i++) out[i] = lf[i];
    } else {
        fprintf(stderr, "eval: %s\n", moe_ctx_errmsg(c));
    }
    free(lf);
    moe_ctx_free(c);
    return out;
}

static void case_ref64(const char *name, int exact) {
    char p[1024], path[1024], err[256];
    snprintf(p, sizeof p, "vectors/models/%s.gguf", name);
    moe_model *m;
    moe_status st = moe_model_open(tu_shared(p, path, sizeof path), &m, err, sizeof err);
    CHECK(st == MOE_OK, "%s: open: %s", name, err);
    if (st) return;
    int T;
    snprintf(p, sizeof p, "vectors/models/%s.tokens.json", name);
    int32_t *tok = read_tokens(tu_shared(p, path, sizeof path), &T);
    int V = moe_model_hparams(m)->n_vocab;
    snprintf(p, sizeof p, "vectors/models/%s.ref64.logits.f64", name);
    double *ref = tok ? read_ref(tu_shared(p, path, sizeof path), (size_t)T * V, 1) : NULL;
    snprintf(p, sizeof p, "vectors/models/%s.llama.logits.f32", name);
    double *lla = tok ? read_ref(tu_shared(p, path, sizeof path), (size_t)T * V, 0) : NULL;
    CHECK(tok && ref && lla, "%s: reading tokens and reference logits", name);
    if (!tok || !ref || !lla) goto out;
    double *x = run_model(m, tok, T, 2, 0);
    CHECK(x != NULL, "%s: eval", name);
    if (x) {
        double kl, ag, md, lkl, lag, lmd;
        compare(ref, x, T, V, &kl, &ag, &md);
        compare(ref, lla, T, V, &lkl, &lag, &lmd);
        printf("%-16s KL vs ref64 %.3e (llama.cpp %.3e)  argmax %5.1f%% (llama.cpp %5.1f%%)  max|dlogit| %.2e\n", name,
               kl, lkl, 100 * ag, 100 * lag, md);
        if (exact) {
            CHECK(kl < 1e-9, "%s: KL %.3e >= 1e-9", name, kl);
            CHECK(ag == 1.0, "%s: argmax agreement %.3f", name, ag);
        } else {
            CHECK(kl <= lkl, "%s: KL %.3e worse than llama.cpp's %.3e", name, kl, lkl);
        }
        /* other ways of computing the same logits */
        double *y1 = run_model(m, tok, T, 1, 0), *yd = run_model(m, tok, T, 2, 1);
        CHECK(y1 && yd, "%s: alternate runs", name);
        if (y1 && yd) {
            double d1 = 0, dd = 0;
            for (size_t i = 0; i < (size_t)T * V; i++) {
                d1 = fmax(d1, fabs(y1[i] - x[i]));
                dd = fmax(dd, fabs(yd[i] - x[i]));
            }
            printf("%-16s 1 vs 2 threads max|d| %.2e, prefill vs decode max|d| %.2e\n", name, d1, dd);
            CHECK(d1 == 0.0, "%s: thread count changed logits by %.3e", name, d1);
            CHECK(dd < 1e-5, "%s: prefill vs decode differ by %.3e", name, dd);
        }
        free(y1);
        free(yd);
        free(x);
    }
out:
    free(tok);
    free(ref);
    free(lla);
    moe_model_close(m);
}

/* End to end from text: the prompt file is tokenized with the model's own tokenizer (the ids must
 * equal the reference ids), then evaluated and compared with llama.cpp's logits. */
static void case_realvocab(void) {
    char p[1024], path[1024], err[256];
    moe_model *m;
    moe_tok *tk = NULL;
    moe_status st = moe_model_open(tu_shared("vectors/models/tiny-v3-realvocab-f16.gguf", path, sizeof path), &m, err, sizeof err);
    CHECK(st == MOE_OK, "realvocab: open: %s", err);
    if (st) return;
    CHECK(moe_tok_init_from_gguf(moe_model_gguf(m), &tk, err, sizeof err) == MOE_OK, "realvocab: tokenizer: %s", err);
    int V = moe_model_hparams(m)->n_vocab;
    for (int k = 1; k <= 3 && tk; k++) {
        int T;
        snprintf(p, sizeof p, "vectors/models/tiny-v3-realvocab-f16.ref%d.tokens.json", k);
        int32_t *ref_tok = read_tokens(tu_shared(p, path, sizeof path), &T);
        snprintf(p, sizeof p, "vectors/models/tiny-v3-realvocab-f16.ref%d.prompt.txt", k);
        size_t plen = 0, n_ids = 0;
        char *text = tu_read_file(tu_shared(p, path, sizeof path), &plen);
        int32_t *tok = NULL;
        CHECK(text && moe_tok_encode(tk, text, plen, 1, 1, &tok, &n_ids) == MOE_OK, "realvocab ref%d: tokenize", k);
        CHECK(ref_tok && tok && (int)n_ids == T && !memcmp(tok, ref_tok, sizeof(int32_t) * (size_t)T),
              "realvocab ref%d: text tokenizes to the reference ids", k);
        free(text);
        free(ref_tok);
        if (tok && (int)n_ids != T) {
            free(tok);
            tok = NULL;
        }
        snprintf(p, sizeof p, "vectors/models/tiny-v3-realvocab-f16.ref%d.logits.f32", k);
        double *lla = tok ? read_ref(tu_shared(p, path, sizeof path), (size_t)T * V, 0) : NULL;
        CHECK(tok && lla, "realvocab ref%d: reading", k);
        if (tok && lla) {
            double *x = run_model(m, tok, T, 2, 0);
            CHECK(x != NULL, "realvocab ref%d: eval", k);
            if (x) {
                double kl, ag, md;
                compare(lla, x, T, V, &kl, &ag, &md);
                printf("realvocab ref%d   KL vs llama.cpp %.3e  argmax %5.1f%%  max|dlogit| %.2e\n", k, kl, 100 * ag, md);
                CHECK(kl < 1e-4, "realvocab ref%d: KL %.3e", k, kl);
                CHECK(ag == 1.0, "realvocab ref%d: argmax agreement %.3f", k, ag);
            }
            free(x);
        }
        free(tok);
        free(lla);
    }
    moe_tok_free(tk);
    moe_model_close(m);
}

int main(void) {
    const char *exact[] = {"v3-f32", "v2lite-f32", "v3grp-f32", "yarn-f32", "legacykvb-f32"};
    const char *quant[] = {"v3-f16", "v3tied-bf16", "v3-q8_0", "v2lite-q8_0"};
    for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) case_ref64(exact[i], 1);
    for (size_t i = 0; i < sizeof quant / sizeof quant[0]; i++) case_ref64(quant[i], 0);
    case_realvocab();
    return test_done();
}
