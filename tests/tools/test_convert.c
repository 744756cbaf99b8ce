/* moe convert acceptance: a random deepseek2 model (moe_init_write, BF16, DeepSeek-V3's real
 * vocabulary) is turned into a Hugging Face checkpoint directory (config.json, the real
 * tokenizer.json/tokenizer_config.json, 3 BF16 shards + model.safetensors.index.json, a fake MTP
 * layer), converted back, and checked:
 *   - --dtype bf16: every tensor byte-identical to the original, logits max|Δ| == 0;
 *   - --dtype f32 / f16 / q8_0: logits within the dtype's tolerance (max|Δ| printed);
 *   - tokenizer keys equal deepseek-v3-vocab.gguf's (tokens, types, merges, bos/eos/pad, add_bos,
 *     chat template, model, pre);
 *   - minimal-model.md rules: key types exact, exact tensor set (the loader refuses extras);
 *   - FP8 variant (e4m3 weights + 128×128 weight_scale_inv, single model.safetensors): tensors
 *     equal an independent dequantization exactly, logits close to the original's;
 *   - unknown architecture and missing tensors are refused with a message. */
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"
#include "hf_build.h"
#include "moe/model.h"
#include "moe/tools.h"

static char g_dir[512], g_hf[1024];

static moe_init_config cfg(void) {
    moe_init_config c;
    moe_init_preset("tiny", &c);
    snprintf(c.name, sizeof c.name, "convert-test");
    c.n_layer = 3;
    c.n_layer_dense = 1;
    c.n_embd = 64;
    c.n_head = 2;
    c.q_lora_rank = 32;
    c.kv_lora_rank = 64;
    c.qk_nope = 32;
    c.qk_rope = 16;
    c.v_head = 32;
    c.n_ff = 256; /* 2 FP8 row blocks */
    c.n_ff_exp = 32;
    c.n_expert = 4;
    c.n_expert_used = 2;
    c.n_expert_shared = 1;
    c.n_group = 2;
    c.n_group_used = 1;
    c.gating = 2;
    c.exp_probs_b = 1;
    c.norm_topk = 1;
    c.scale = 2.5f;
    c.n_vocab = 129280;
    c.n_ctx = 4096;
    c.yarn_factor = 40.0f;
    c.yarn_orig_ctx = 4096;
    c.mscale_all_dim = 1.0f;
    c.dtype = MOE_DTYPE_BF16;
    c.seed = 7;
    return c;
}

static const int32_t k_tok[] = {0, 671, 6102, 14986, 13555, 33926, 1060, 270, 24217, 6246, 16, 128803, 3085, 128804, 5};
#define NT ((int)(sizeof k_tok / sizeof k_tok[0]))

static float *logits_of(const char *path, int32_t *V) {
    char err[512];
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) {
        fprintf(stderr, "open %s: %s\n", path, err);
        return NULL;
    }
    *V = moe_model_hparams(m)->n_vocab;
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    moe_ctx *c;
    float *l = malloc(sizeof(float) * (size_t)NT * (size_t)*V);
    if (moe_ctx_init(m, &p, &c, err, sizeof err) || moe_ctx_eval(c, k_tok, NT, l)) {
        fprintf(stderr, "eval %s failed\n", path);
        free(l);
        l = NULL;
    }
    moe_ctx_free(c);
    moe_model_close(m);
    return l;
}

/* tol bounds max|d| when rms_tol < 0 (lossless paths), else the RMS difference (lossy paths, where
 * one flipped expert choice in a random model moves a few logits a lot) */
static void compare_logits(const char *label, const float *a, const float *b, int32_t V, double tol, double min_agree) {
    double mx = 0, ref = 0, ss = 0;
    int agree = 0;
    for (int t = 0; t < NT; t++) {
        const float *x = a + (size_t)t * V, *y = b + (size_t)t * V;
        int ax = 0, ay = 0;
        for (int32_t i = 0; i < V; i++) {
            mx = fmax(mx, fabs((double)x[i] - y[i]));
            ss += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
            ref = fmax(ref, fabs((double)x[i]));
            if (x[i] > x[ax]) ax = i;
            if (y[i] > y[ay]) ay = i;
        }
        agree += ax == ay;
    }
    double rms = sqrt(ss / ((double)NT * V));
    printf("%-28s logits max|d| %.3e rms|d| %.3e (max|logit| %.2f), argmax agreement %d/%d\n", label, mx, rms, ref, agree, NT);
    if (min_agree >= 1.0) CHECK(mx <= tol, "%s: logits max|d| %.3e > %.3e", label, mx, tol);
    else CHECK(rms <= tol, "%s: logits rms|d| %.3e > %.3e", label, rms, tol);
    CHECK(agree >= min_agree * NT, "%s: argmax agreement %d/%d", label, agree, NT);
}

static int run_convert(const char *hf, const char *out, int dtype, char *err, size_t n) {
    moe_convert_params p = moe_convert_default_params();
    p.dtype = dtype;
    return moe_convert(hf, out, &p, err, n);
}

static void check_tokenizer(const char *path) {
    char ref_path[1024], err[512];
    moe_gguf *a, *b;
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", ref_path, sizeof ref_path);
    if (moe_gguf_open(path, &a, err, sizeof err) || moe_gguf_open(ref_path, &b, err, sizeof err)) {
        CHECK(0, "open: %s", err);
        return;
    }
    int n_keys = 0;
    for (int64_t i = 0; i < moe_gguf_n_kv(b); i++) {
        moe_str k = moe_gguf_kv_key(b, i);
        if (k.len < 10 || memcmp(k.ptr, "tokenizer.", 10)) continue;
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
        int64_t j = moe_gguf_find_key(a, key);
        CHECK(j >= 0, "converted file lacks %s", key);
        if (j < 0) continue;
        n_keys++;
        int ty = moe_gguf_kv_type(b, i);
        CHECK(moe_gguf_kv_type(a, j) == ty, "%s: type %d vs %d", key, moe_gguf_kv_type(a, j), ty);
        if (ty == MOE_GGUF_TYPE_ARRAY) {
            uint64_t n = moe_gguf_arr_n(b, i);
            CHECK(moe_gguf_arr_n(a, j) == n && moe_gguf_arr_type(a, j) == moe_gguf_arr_type(b, i), "%s: %llu vs %llu elements",
                  key, (unsigned long long)moe_gguf_arr_n(a, j), (unsigned long long)n);
            if (moe_gguf_arr_n(a, j) != n) continue;
            uint64_t bad = 0, first = 0;
            if (moe_gguf_arr_type(b, i) == MOE_GGUF_TYPE_STRING) {
                for (uint64_t e = 0; e < n; e++) {
                    moe_str x = moe_gguf_arr_str(a, j, e), y = moe_gguf_arr_str(b, i, e);
                    if (x.len != y.len || memcmp(x.ptr, y.ptr, x.len)) {
                        if (!bad++) first = e;
                    }
                }
            } else {
                size_t es = moe_gguf_type_size(moe_gguf_arr_type(b, i));
                const uint8_t *x = moe_gguf_arr_data(a, j), *y = moe_gguf_arr_data(b, i);
                for (uint64_t e = 0; e < n; e++)
                    if (memcmp(x + e * es, y + e * es, es) && !bad++) first = e;
            }
            printf("  %-32s %8llu elements, %llu differ\n", key, (unsigned long long)n, (unsigned long long)bad);
            CHECK(bad == 0, "%s: %llu of %llu elements differ (first at %llu)", key, (unsigned long long)bad,
                  (unsigned long long)n, (unsigned long long)first);
        } else if (ty == MOE_GGUF_TYPE_STRING) {
            moe_str x, y;
            moe_gguf_get_str(a, key, &x);
            moe_gguf_get_str(b, key, &y);
            CHECK(x.len == y.len && !memcmp(x.ptr, y.ptr, x.len), "%s differs", key);
        } else {
            uint8_t x[8] = {0}, y[8] = {0};
            moe_gguf_get_scalar(a, key, ty, x);
            moe_gguf_get_scalar(b, key, ty, y);
            CHECK(!memcmp(x, y, 8), "%s differs", key);
        }
    }
    printf("tokenizer: %d tokenizer.* keys compared with deepseek-v3-vocab.gguf\n", n_keys);
    CHECK(n_keys >= 11, "only %d tokenizer keys compared", n_keys);
    moe_gguf_close(a);
    moe_gguf_close(b);
}

/* minimal-model.md §1: exact key types; plus the architecture keys this converter maps */
static void check_keys(const char *path, const moe_init_config *c) {
    char err[512];
    moe_gguf *g;
    if (moe_gguf_open(path, &g, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    static const struct {
        const char *key;
        int type;
    } req[] = {
        {"general.architecture", MOE_GGUF_TYPE_STRING}, {"deepseek2.block_count", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.context_length", MOE_GGUF_TYPE_UINT32}, {"deepseek2.embedding_length", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.attention.head_count", MOE_GGUF_TYPE_UINT32}, {"deepseek2.attention.head_count_kv", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.attention.layer_norm_rms_epsilon", MOE_GGUF_TYPE_FLOAT32},
        {"deepseek2.attention.q_lora_rank", MOE_GGUF_TYPE_UINT32}, {"deepseek2.attention.kv_lora_rank", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.attention.key_length", MOE_GGUF_TYPE_UINT32}, {"deepseek2.attention.value_length", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.attention.key_length_mla", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.attention.value_length_mla", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.rope.dimension_count", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.expert_feed_forward_length", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.expert_shared_count", MOE_GGUF_TYPE_UINT32}, {"deepseek2.expert_count", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.expert_used_count", MOE_GGUF_TYPE_UINT32}, {"deepseek2.feed_forward_length", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.leading_dense_block_count", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.expert_gating_func", MOE_GGUF_TYPE_UINT32}, {"deepseek2.expert_weights_norm", MOE_GGUF_TYPE_BOOL},
        {"deepseek2.expert_weights_scale", MOE_GGUF_TYPE_FLOAT32}, {"deepseek2.rope.freq_base", MOE_GGUF_TYPE_FLOAT32},
        {"deepseek2.expert_group_count", MOE_GGUF_TYPE_UINT32}, {"deepseek2.expert_group_used_count", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.rope.scaling.type", MOE_GGUF_TYPE_STRING}, {"deepseek2.rope.scaling.factor", MOE_GGUF_TYPE_FLOAT32},
        {"deepseek2.rope.scaling.original_context_length", MOE_GGUF_TYPE_UINT32},
        {"deepseek2.rope.scaling.yarn_log_multiplier", MOE_GGUF_TYPE_FLOAT32},
        {"tokenizer.ggml.model", MOE_GGUF_TYPE_STRING}, {"tokenizer.ggml.tokens", MOE_GGUF_TYPE_ARRAY},
        {"tokenizer.ggml.merges", MOE_GGUF_TYPE_ARRAY},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) {
        int64_t k = moe_gguf_find_key(g, req[i].key);
        CHECK(k >= 0 && moe_gguf_kv_type(g, k) == req[i].type, "%s missing or of type %d (want %d)", req[i].key,
              k >= 0 ? moe_gguf_kv_type(g, k) : -1, req[i].type);
    }
    uint32_t u = 0;
    float f = 0;
    moe_gguf_get_u32(g, "deepseek2.attention.head_count_kv", &u);
    CHECK(u == 1, "head_count_kv %u", u);
    moe_gguf_get_u32(g, "deepseek2.attention.key_length", &u);
    CHECK(u == (uint32_t)(c->kv_lora_rank + c->qk_rope), "key_length %u", u);
    moe_gguf_get_u32(g, "deepseek2.block_count", &u);
    CHECK(u == (uint32_t)c->n_layer, "block_count %u (the MTP layer must not count)", u);
    moe_gguf_get_f32(g, "deepseek2.rope.scaling.yarn_log_multiplier", &f);
    CHECK(f == 0.1f * c->mscale_all_dim, "yarn_log_multiplier %g", f);
    /* exact tensor set: the original's names and shapes (the original is the loader's set) */
    char orig[1024];
    snprintf(orig, sizeof orig, "%s/orig.gguf", g_dir);
    moe_gguf *o;
    if (!moe_gguf_open(orig, &o, err, sizeof err)) {
        CHECK(moe_gguf_n_tensors(o) == moe_gguf_n_tensors(g), "%lld tensors vs original %lld", (long long)moe_gguf_n_tensors(g),
              (long long)moe_gguf_n_tensors(o));
        for (int64_t i = 0; i < moe_gguf_n_tensors(o); i++) {
            const moe_gguf_tensor *t = moe_gguf_tensor_at(o, i);
            char nm[128];
            snprintf(nm, sizeof nm, "%.*s", (int)t->name.len, t->name.ptr);
            const moe_gguf_tensor *u2 = moe_gguf_find_tensor(g, nm);
            CHECK(u2 && !memcmp(u2->ne, t->ne, sizeof t->ne), "tensor %s missing or of another shape", nm);
        }
        moe_gguf_close(o);
    }
    moe_gguf_close(g);
}

/* every tensor of a and b byte-identical (same type) */
static void check_identical(const char *pa, const char *pb) {
    char err[512];
    moe_gguf *a, *b;
    if (moe_gguf_open(pa, &a, err, sizeof err) || moe_gguf_open(pb, &b, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    int diff = 0;
    for (int64_t i = 0; i < moe_gguf_n_tensors(a); i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(a, i);
        char nm[128];
        snprintf(nm, sizeof nm, "%.*s", (int)t->name.len, t->name.ptr);
        const moe_gguf_tensor *u = moe_gguf_find_tensor(b, nm);
        int same = u && u->type == t->type && u->nbytes == t->nbytes && !memcmp(u->data, t->data, t->nbytes);
        if (!same && diff++ < 5) fprintf(stderr, "tensor %s differs\n", nm);
    }
    printf("bf16 round trip: %lld tensors, %d differ\n", (long long)moe_gguf_n_tensors(a), diff);
    CHECK(diff == 0, "%d tensors differ after HF round trip", diff);
    moe_gguf_close(a);
    moe_gguf_close(b);
}

/* FP8: converted f32 tensors == fp8 × scale_inv computed here from the safetensors bytes */
static void check_fp8_tensor(const char *gg, const char *hfdir, const char *hf_name, const char *gguf_name, int kb, int64_t Dn,
                             int64_t Dv, int64_t H) {
    char err[512], path[1200], sn[256];
    moe_st *st;
    moe_gguf *g;
    snprintf(path, sizeof path, "%s/model.safetensors", hfdir);
    if (moe_st_open(path, &st, err, sizeof err) || moe_gguf_open(gg, &g, err, sizeof err)) {
        CHECK(0, "%s", err);
        return;
    }
    const moe_st_tensor *w = moe_st_find(st, hf_name);
    snprintf(sn, sizeof sn, "%s_scale_inv", hf_name);
    const moe_st_tensor *s = moe_st_find(st, sn);
    const moe_gguf_tensor *o = moe_gguf_find_tensor(g, gguf_name);
    CHECK(w && s && o && w->dtype == MOE_ST_F8_E4M3 && o->type == MOE_DTYPE_F32, "%s: fp8 source / f32 output", hf_name);
    if (w && s && o) {
        const int64_t R = w->shape[0], C = w->shape[1], sc = s->shape[1];
        const float *sv = s->data, *y = o->data;
        int64_t bad = 0;
        for (int64_t r = 0; r < R; r++)
            for (int64_t c = 0; c < C; c++) {
                float v = moe_st_f8e4m3_to_f32(((const uint8_t *)w->data)[r * C + c]) * sv[(r / 128) * sc + c / 128];
                int64_t at = r * C + c;
                if (kb) { /* attn_k_b (d, r', h) = W[h(Dn+Dv) + d, r'] */
                    int64_t h = r / (Dn + Dv), d = r % (Dn + Dv);
                    if (d >= Dn) continue;
                    at = (h * C + c) * Dn + d;
                }
                bad += y[at] != v;
            }
        printf("fp8 %-44s -> %-24s %lld values differ\n", hf_name, gguf_name, (long long)bad);
        CHECK(bad == 0, "%s: %lld values differ from fp8 × scale_inv", hf_name, (long long)bad);
        (void)H;
    }
    moe_st_close(st);
    moe_gguf_close(g);
}

int main(void) {
    char shared_hf[1024], vocab[1024], orig[1024], out[1024], err[1024];
    tu_tmpdir(g_dir, sizeof g_dir);
    tu_shared("vectors/tokenizer/hf", shared_hf, sizeof shared_hf);
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", vocab, sizeof vocab);
    moe_init_config c = cfg();
    snprintf(orig, sizeof orig, "%s/orig.gguf", g_dir);
    CHECK(moe_init_write(&c, vocab, orig, NULL, NULL, err, sizeof err) == MOE_OK, "init: %s", err);
    snprintf(g_hf, sizeof g_hf, "%s/hf-bf16", g_dir);
    mkdir(g_hf, 0755);
    CHECK(hf_build(orig, &c, g_hf, 0, shared_hf) == 0, "building the BF16 HF directory");

    int32_t V = 0, V2 = 0;
    float *ref = logits_of(orig, &V);
    CHECK(ref != NULL, "original logits");
    if (!ref) return test_done();

    /* bf16: bit-identical */
    snprintf(out, sizeof out, "%s/conv-bf16.gguf", g_dir);
    int st = run_convert(g_hf, out, MOE_DTYPE_BF16, err, sizeof err);
    CHECK(st == MOE_OK, "convert bf16: %s", err);
    if (!st) {
        check_identical(orig, out);
        float *l = logits_of(out, &V2);
        CHECK(l && V2 == V, "converted bf16 model evaluates");
        if (l) compare_logits("bf16 (HF bf16 shards)", ref, l, V, 0.0, 1.0);
        free(l);
        check_tokenizer(out);
        check_keys(out, &c);
    }
    /* f32, f16, q8_0: tolerance of the dtype (activations are rounded to the weight's dot type) */
    static const struct {
        int dtype;
        double tol, agree;
    } dt[] = {{MOE_DTYPE_F32, 0.05, 1.0}, {MOE_DTYPE_F16, 0.05, 1.0}, {MOE_DTYPE_Q8_0, 0.4, 0.8}};
    for (size_t k = 0; k < sizeof dt / sizeof dt[0]; k++) {
        snprintf(out, sizeof out, "%s/conv-%s.gguf", g_dir, moe_dtype_name(dt[k].dtype));
        st = run_convert(g_hf, out, dt[k].dtype, err, sizeof err);
        CHECK(st == MOE_OK, "convert %s: %s", moe_dtype_name(dt[k].dtype), err);
        if (st) continue;
        float *l = logits_of(out, &V2);
        CHECK(l != NULL, "%s evaluates", moe_dtype_name(dt[k].dtype));
        char label[64];
        snprintf(label, sizeof label, "%s (HF bf16 shards)", moe_dtype_name(dt[k].dtype));
        if (l) compare_logits(label, ref, l, V, dt[k].tol, dt[k].agree);
        free(l);
        unlink(out);
    }

    /* FP8 variant */
    char hf8[1100];
    snprintf(hf8, sizeof hf8, "%s/hf-fp8", g_dir);
    mkdir(hf8, 0755);
    CHECK(hf_build(orig, &c, hf8, 1, shared_hf) == 0, "building the FP8 HF directory");
    snprintf(out, sizeof out, "%s/conv-fp8.gguf", g_dir);
    st = run_convert(hf8, out, MOE_DTYPE_F32, err, sizeof err);
    CHECK(st == MOE_OK, "convert fp8: %s", err);
    if (!st) {
        check_fp8_tensor(out, hf8, "model.layers.0.mlp.gate_proj.weight", "blk.0.ffn_gate.weight", 0, 0, 0, 0);
        check_fp8_tensor(out, hf8, "model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight", 0, 0, 0, 0);
        check_fp8_tensor(out, hf8, "model.layers.1.self_attn.kv_b_proj.weight", "blk.1.attn_k_b.weight", 1, c.qk_nope,
                         c.v_head, c.n_head);
        float *l = logits_of(out, &V2);
        CHECK(l != NULL, "fp8 model evaluates");
        /* e4m3 keeps 3 mantissa bits: ~3% relative weight error */
        if (l) compare_logits("f32 (HF fp8 + scale_inv)", ref, l, V, 0.4, 0.3);
        free(l);
    }

    /* refusals */
    char bad_dir[1100], path[1200];
    snprintf(bad_dir, sizeof bad_dir, "%s/hf-bad", g_dir);
    mkdir(bad_dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", bad_dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}\n");
    fclose(f);
    st = run_convert(bad_dir, out, MOE_DTYPE_F16, err, sizeof err);
    CHECK(st == MOE_ERR_UNSUPPORTED && strstr(err, "LlamaForCausalLM"), "unknown architecture refused: %s", err);
    printf("unknown architecture: %s\n", err);
    /* a checkpoint missing one tensor: remove shard 3 from the index's reach by renaming it */
    char s3[1200], s3b[1200];
    snprintf(s3, sizeof s3, "%s/model-00003-of-00003.safetensors", g_hf);
    snprintf(s3b, sizeof s3b, "%s/moved.safetensors", g_hf);
    rename(s3, s3b);
    st = run_convert(g_hf, out, MOE_DTYPE_F16, err, sizeof err);
    CHECK(st != MOE_OK && strstr(err, "model-00003-of-00003"), "missing shard refused: %s", err);
    printf("missing shard: %s\n", err);

    free(ref);
    if (!tu_fail) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd)) fprintf(stderr, "could not remove %s\n", g_dir);
    }
    return test_done();
}
