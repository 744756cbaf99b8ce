/* The deepseek2 engine on models made by moe_init_write, one per variant of the spec:
 * every variant loads, evaluates, gives the same logits by prefill and by token-by-token decode
 * (within 1e-5) and with 1 or 2 threads (bit-identical), counts routing per expert, refuses
 * tokens past the context and ids outside the vocabulary. Broken model files (missing tensors,
 * wrong shapes, wrong key types, extra tensors, unknown architecture) are refused with a
 * message naming the problem. Loading maps every page of the embedding table (rows read in
 * place from the file). */
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/model.h"
#include "model/model_impl.h" /* tok_embd: where the embedding table's rows are read */
#include "testutil.h"

static char g_dir[512];

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

static void check_variant(const char *label, const moe_init_config *cfg) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    moe_status st = moe_init_write(cfg, NULL, path, NULL, NULL, err, sizeof err);
    CHECK(st == MOE_OK, "%s: init: %s", label, err);
    if (st) return;
    moe_model *m;
    st = moe_model_open(path, &m, err, sizeof err);
    CHECK(st == MOE_OK, "%s: open: %s", label, err);
    if (st) return;
    const moe_hparams *hp = moe_model_hparams(m);
    const int T = 24, V = hp->n_vocab;
    int32_t tok[24];
    for (int i = 0; i < T; i++) tok[i] = (i * 37 + 11) % V;
    float *a = malloc(sizeof(float) * T * V), *b = malloc(sizeof(float) * T * V), *c1 = malloc(sizeof(float) * T * V);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    p.n_batch = 7; /* chunked prefill */
    moe_ctx *c;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "%s: ctx: %s", label, err);
    CHECK(moe_ctx_eval(c, tok, T, a) == MOE_OK, "%s: prefill: %s", label, moe_ctx_errmsg(c));
    /* routing counters: every MoE layer saw T tokens × K choices */
    for (int il = 0; il < hp->n_layer; il++) {
        const uint64_t *cnt = moe_ctx_expert_counts(c, il);
        if (il < hp->n_layer_dense_lead) {
            CHECK(cnt == NULL, "%s: dense layer %d has no counters", label, il);
            continue;
        }
        uint64_t sum = 0;
        for (int e = 0; e < hp->n_expert; e++) sum += cnt ? cnt[e] : 0;
        CHECK(sum == (uint64_t)T * (uint64_t)hp->n_expert_used, "%s: layer %d counted %llu choices", label, il,
              (unsigned long long)sum);
    }
    CHECK(moe_ctx_truncate(c, 0) == MOE_OK, "truncate");
    for (int t = 0; t < T; t++) {
        CHECK(moe_ctx_eval(c, &tok[t], 1, NULL) == MOE_OK, "%s: decode", label);
        memcpy(b + (size_t)t * V, moe_ctx_logits(c), sizeof(float) * V);
    }
    double d = max_abs_diff(a, b, (size_t)T * V);
    printf("%-14s %s: prefill vs decode max|d| %.2e\n", label, moe_dtype_name(cfg->dtype), d);
    CHECK(d < 1e-5, "%s: prefill vs decode %.3e", label, d);
    moe_ctx_free(c);
    p.n_threads = 1;
    p.n_batch = 0;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "ctx1");
    CHECK(moe_ctx_eval(c, tok, T, c1) == MOE_OK, "1 thread");
    CHECK(max_abs_diff(a, c1, (size_t)T * V) == 0.0, "%s: 1 vs 2 threads differ", label);
    int finite = 1;
    for (size_t i = 0; i < (size_t)T * V; i++) finite &= isfinite(a[i]);
    CHECK(finite, "%s: logits are finite", label);
    moe_ctx_free(c);
    free(a);
    free(b);
    free(c1);
    moe_model_close(m);
}

/* The routing observer sees every selection the counters count, and the weights obey the
 * configuration: with normalised top-k and scale s, each token's weights sum to s. */
typedef struct {
    uint64_t counts[8][64];
    double max_sum_err;
    int calls;
} obs_state;

static void observe(void *ud, int32_t layer, int32_t n_tokens, int32_t n_used, const int32_t *experts,
                    const float *weights) {
    obs_state *o = ud;
    o->calls++;
    for (int32_t t = 0; t < n_tokens; t++) {
        double sum = 0;
        for (int32_t k = 0; k < n_used; k++) {
            o->counts[layer][experts[t * n_used + k]]++;
            sum += weights[t * n_used + k];
        }
        o->max_sum_err = fmax(o->max_sum_err, fabs(sum - 2.5));
    }
}

static void check_observer(void) {
    moe_init_config cfg;
    char path[1024], err[512];
    moe_init_preset("tiny", &cfg); /* sigmoid, normalised top-k, scale 2.5 */
    snprintf(path, sizeof path, "%s/observer.gguf", g_dir);
    CHECK(moe_init_write(&cfg, NULL, path, NULL, NULL, err, sizeof err) == MOE_OK, "init: %s", err);
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) return;
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 64;
    p.n_batch = 5;
    moe_ctx *c;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "ctx");
    obs_state o = {0};
    moe_ctx_set_route_observer(c, observe, &o);
    int32_t tok[17];
    for (int i = 0; i < 17; i++) tok[i] = (i * 53 + 7) % 500;
    CHECK(moe_ctx_eval(c, tok, 17, NULL) == MOE_OK, "eval");
    const moe_hparams *hp = moe_model_hparams(m);
    int same = 1;
    for (int il = hp->n_layer_dense_lead; il < hp->n_layer; il++)
        for (int e = 0; e < hp->n_expert; e++) same &= o.counts[il][e] == moe_ctx_expert_counts(c, il)[e];
    CHECK(same, "observer selections equal the routing counters");
    CHECK(o.calls == 4 * (hp->n_layer - hp->n_layer_dense_lead), "one call per MoE layer per step (%d)", o.calls);
    CHECK(o.max_sum_err < 1e-5, "weights sum to the scale 2.5 (err %.2e)", o.max_sum_err);
    moe_ctx_set_route_observer(c, NULL, NULL);
    o.calls = 0;
    CHECK(moe_ctx_eval(c, tok, 1, NULL) == MOE_OK && o.calls == 0, "removed observer is not called");
    moe_ctx_free(c);
    moe_model_close(m);
}

static void check_limits(void) {
    moe_init_config cfg;
    char path[1024], err[512];
    moe_init_preset("tiny", &cfg);
    snprintf(path, sizeof path, "%s/limits.gguf", g_dir);
    CHECK(moe_init_write(&cfg, NULL, path, NULL, NULL, err, sizeof err) == MOE_OK, "init: %s", err);
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) {
        CHECK(0, "open: %s", err);
        return;
    }
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 8;
    p.n_threads = 1;
    moe_ctx *c;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "ctx");
    int32_t tok[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    CHECK(moe_ctx_eval(c, tok, 9, NULL) == MOE_ERR_RANGE, "9 tokens in a context of 8");
    CHECK(strstr(moe_ctx_errmsg(c), "exceed the context") != NULL, "message: %s", moe_ctx_errmsg(c));
    CHECK(moe_ctx_pos(c) == 0, "nothing appended");
    CHECK(moe_ctx_eval(c, tok, 8, NULL) == MOE_OK, "8 fit");
    CHECK(moe_ctx_eval(c, tok, 1, NULL) == MOE_ERR_RANGE, "the 9th does not");
    moe_ctx_truncate(c, 0);
    int32_t bad = moe_model_hparams(m)->n_vocab;
    CHECK(moe_ctx_eval(c, &bad, 1, NULL) == MOE_ERR_INVAL, "id == V refused");
    bad = -1;
    CHECK(moe_ctx_eval(c, &bad, 1, NULL) == MOE_ERR_INVAL, "id -1 refused");
    moe_ctx_free(c);
    moe_model_close(m);
}

/* Rewrite a valid model with one change; expect open to fail with `want` in the message. */
typedef struct {
    const char *drop_tensor;   /* omit this tensor */
    const char *shape_tensor;  /* give this tensor a wrong ne[0] */
    const char *retype_key;    /* write this u32 key as int32 */
    const char *drop_key;      /* omit this key */
    int extra_tensor;          /* add an unknown tensor */
    const char *arch;          /* replace general.architecture */
} mutation;

typedef struct {
    const mutation *mu;
} skip_ud;

static int skip_key(const char *key, void *ud) {
    const mutation *mu = ((skip_ud *)ud)->mu;
    if (mu->drop_key && !strcmp(key, mu->drop_key)) return 1;
    if (mu->retype_key && !strcmp(key, mu->retype_key)) return 1;
    if (mu->arch && !strcmp(key, "general.architecture")) return 1;
    return 0;
}

static void check_broken(const char *src_path, const mutation *mu, const char *want) {
    char path[1024], err[512];
    moe_gguf *g;
    if (moe_gguf_open(src_path, &g, err, sizeof err)) {
        CHECK(0, "open source: %s", err);
        return;
    }
    moe_gguf_writer *w;
    moe_gguf_writer_init(&w);
    skip_ud ud = {mu};
    moe_gguf_writer_copy_kv(w, g, skip_key, &ud);
    if (mu->retype_key) {
        uint32_t v = 0;
        moe_gguf_get_u32(g, mu->retype_key, &v);
        moe_gguf_writer_set_i32(w, mu->retype_key, (int32_t)v);
    }
    if (mu->arch) moe_gguf_writer_set_str(w, "general.architecture", mu->arch);
    for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char name[80];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (mu->drop_tensor && !strcmp(name, mu->drop_tensor)) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        const void *data = t->data;
        if (mu->shape_tensor && !strcmp(name, mu->shape_tensor)) {
            ne[0] /= 2; /* smaller, so the data pointer still covers it */
        }
        moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, ne, data);
    }
    static const float junk[4] = {0};
    if (mu->extra_tensor) {
        int64_t ne[1] = {4};
        moe_gguf_writer_add_tensor(w, "blk.0.mystery.weight", MOE_DTYPE_F32, 1, ne, junk);
    }
    snprintf(path, sizeof path, "%s/broken.gguf", g_dir);
    moe_status st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, err, sizeof err);
    moe_gguf_writer_free(w);
    moe_gguf_close(g);
    CHECK(st == MOE_OK, "write broken: %s", err);
    moe_model *m = NULL;
    err[0] = 0;
    st = moe_model_open(path, &m, err, sizeof err);
    CHECK(st != MOE_OK && m == NULL, "broken model (%s) was accepted", want);
    CHECK(strstr(err, want) != NULL, "message '%s' should contain '%s'", err, want);
    printf("refused: %s\n", err);
    moe_model_close(m);
}

/* Every page of the embedding table is in this process's page tables after loading
 * (/proc/self/pagemap's present bit), so a token's first row costs no page fault. The table
 * is 2 MB here (8,192 rows of 128 floats), far more than the kernel maps around the pages the
 * loader itself reads. */
static void check_embedding_mapped(const moe_init_config *base) {
    moe_init_config c = *base;
    c.n_vocab = 8192;
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/embd.gguf", g_dir);
    moe_status st = moe_init_write(&c, NULL, path, NULL, NULL, err, sizeof err);
    CHECK(st == MOE_OK, "embd: init: %s", err);
    if (st) return;
    moe_model *m;
    st = moe_model_open(path, &m, err, sizeof err);
    CHECK(st == MOE_OK, "embd: open: %s", err);
    if (st) return;
    const uintptr_t a = (uintptr_t)m->tok_embd.data & ~(uintptr_t)4095,
                    b = (uintptr_t)m->tok_embd.data + m->tok_embd.row_bytes * (size_t)m->hp.n_vocab;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    CHECK(fd >= 0, "embd: /proc/self/pagemap");
    size_t pages = 0, present = 0;
    for (uintptr_t p = a; fd >= 0 && p < b; p += 4096, pages++) {
        uint64_t e = 0;
        if (pread(fd, &e, sizeof e, (off_t)(p / 4096 * sizeof e)) == (ssize_t)sizeof e && (e >> 63)) present++;
    }
    if (fd >= 0) close(fd);
    CHECK(pages >= 512 && present == pages, "embd: %zu of the table's %zu pages mapped after loading", present, pages);
    moe_model_close(m);
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    moe_init_config base, c;
    moe_init_preset("tiny", &base);
    check_variant("tiny", &base);
    c = base; c.dtype = MOE_DTYPE_Q8_0; check_variant("tiny-q8", &c);
    c = base; c.dtype = MOE_DTYPE_F16; check_variant("tiny-f16", &c);
    c = base; c.dtype = MOE_DTYPE_BF16; check_variant("tiny-bf16", &c);
    c = base; c.dtype = MOE_DTYPE_Q4_0; check_variant("tiny-q4_0", &c);
    c = base; c.q_lora_rank = 0; c.gating = 1; c.exp_probs_b = 0; c.norm_topk = 0; c.scale = 1.0f; c.n_expert_shared = 2;
    check_variant("v2like", &c);
    c = base; c.n_expert = 16; c.n_expert_used = 4; c.n_group = 4; c.n_group_used = 2; check_variant("grouped", &c);
    c = base; c.legacy_kv_b = 1; c.tied = 1; check_variant("legacy-tied", &c);
    c = base; c.yarn_factor = 40.0f; c.mscale_all_dim = 0.707f; c.n_ctx = 163840; check_variant("yarn", &c);
    c = base; c.n_layer_dense = 0; check_variant("all-moe", &c);
    c = base; c.n_layer_dense = c.n_layer; check_variant("all-dense", &c);
    check_limits();
    check_observer();
    check_embedding_mapped(&base);

    char src[1024];
    snprintf(src, sizeof src, "%s/tiny.gguf", g_dir);
    check_broken(src, &(mutation){.drop_tensor = "blk.1.ffn_up_exps.weight"}, "'blk.1.ffn_up_exps.weight' is missing");
    check_broken(src, &(mutation){.shape_tensor = "blk.0.attn_kv_a_mqa.weight"}, "has shape [64, 80");
    check_broken(src, &(mutation){.retype_key = "deepseek2.expert_count"}, "expected uint32");
    check_broken(src, &(mutation){.drop_key = "deepseek2.attention.kv_lora_rank"}, "kv_lora_rank' is missing");
    check_broken(src, &(mutation){.extra_tensor = 1}, "unexpected tensor 'blk.0.mystery.weight'");
    check_broken(src, &(mutation){.arch = "llama"}, "architecture 'llama' is not supported");
    char err[256];
    moe_model *m;
    CHECK(moe_model_open("/nonexistent/x.gguf", &m, err, sizeof err) == MOE_ERR_IO && strstr(err, "cannot open"),
          "missing file: %s", err);
    return test_done();
}
