/* moekit model: random-weight deepseek2 GGUF writer (`moe init`).
 *
 * Weights are drawn from a uniform distribution scaled like a trained model's (std 1/sqrt(in)
 * for matrices, norms near 1, small router bias), from a xoshiro256** stream seeded by
 * (seed, tensor index), so every tensor is reproducible on its own and files are identical
 * for the same seed. Tensors are produced one at a time by the writer's fill callback. */
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/tok.h"

static const moe_init_config k_tiny = {
    .name = "moekit-tiny", .n_layer = 3, .n_layer_dense = 1, .n_embd = 128, .n_head = 4, .q_lora_rank = 64,
    .kv_lora_rank = 64, .qk_nope = 32, .qk_rope = 16, .v_head = 32, .n_ff = 256, .n_ff_exp = 64, .n_expert = 8,
    .n_expert_used = 2, .n_expert_shared = 1, .gating = 2, .exp_probs_b = 1, .norm_topk = 1, .scale = 2.5f,
    .n_ctx = 4096, .rope_theta = 10000.0f, .yarn_orig_ctx = 4096, .rms_eps = 1e-6f, .dtype = MOE_DTYPE_F32,
    .seed = 1};

/* DeepSeek-V2-Lite: 27 layers, no q-LoRA, YaRN ×40 with mscale_all_dim 0.707 */
static const moe_init_config k_v2lite = {
    .name = "moekit-v2-lite", .n_layer = 27, .n_layer_dense = 1, .n_embd = 2048, .n_head = 16, .q_lora_rank = 0,
    .kv_lora_rank = 512, .qk_nope = 128, .qk_rope = 64, .v_head = 128, .n_ff = 10944, .n_ff_exp = 1408,
    .n_expert = 64, .n_expert_used = 6, .n_expert_shared = 2, .gating = 1, .scale = 1.0f, .n_vocab = 102400,
    .n_ctx = 163840, .rope_theta = 10000.0f, .yarn_factor = 40.0f, .yarn_orig_ctx = 4096, .mscale_all_dim = 0.707f,
    .rms_eps = 1e-6f, .dtype = MOE_DTYPE_F16, .seed = 1};

static const moe_init_config k_v3mini = {
    .name = "moekit-v3-mini", .n_layer = 6, .n_layer_dense = 1, .n_embd = 1024, .n_head = 8, .q_lora_rank = 384,
    .kv_lora_rank = 256, .qk_nope = 64, .qk_rope = 32, .v_head = 64, .n_ff = 4096, .n_ff_exp = 512, .n_expert = 64,
    .n_expert_used = 8, .n_expert_shared = 1, .n_group = 8, .n_group_used = 4, .gating = 2, .exp_probs_b = 1,
    .norm_topk = 1, .scale = 2.5f, .n_vocab = 129280, .n_ctx = 163840, .rope_theta = 10000.0f, .yarn_factor = 40.0f,
    .yarn_orig_ctx = 4096, .mscale_all_dim = 1.0f, .rms_eps = 1e-6f, .dtype = MOE_DTYPE_F16, .seed = 1};

static const char *const k_names[] = {"tiny", "bench-v2lite-4L", "v2-lite", "v3-mini", NULL};

const char *const *moe_init_preset_names(void) { return k_names; }

moe_status moe_init_preset(const char *name, moe_init_config *out) {
    if (!strcmp(name, "tiny")) {
        *out = k_tiny;
    } else if (!strcmp(name, "v2-lite")) {
        *out = k_v2lite;
    } else if (!strcmp(name, "bench-v2lite-4L")) {
        *out = k_v2lite;
        out->n_layer = 4;
        snprintf(out->name, sizeof out->name, "moekit-bench-v2lite-4L");
    } else if (!strcmp(name, "v3-mini")) {
        *out = k_v3mini;
    } else {
        return MOE_ERR_NOTFOUND;
    }
    return MOE_OK;
}

/* ---- JSON overrides ---- */
typedef struct {
    const char *key;
    char kind; /* i int32, f float, b bool, s string, d dtype, g gating, u uint64 */
    size_t off;
    size_t len;
} field;

#define F(k, kind, m) {k, kind, offsetof(moe_init_config, m), sizeof(((moe_init_config *)0)->m)}
static const field k_fields[] = {
    F("name", 's', name),          F("n_layer", 'i', n_layer),         F("n_layer_dense", 'i', n_layer_dense),
    F("n_embd", 'i', n_embd),      F("n_head", 'i', n_head),           F("q_lora_rank", 'i', q_lora_rank),
    F("kv_lora_rank", 'i', kv_lora_rank), F("qk_nope", 'i', qk_nope), F("qk_rope", 'i', qk_rope),
    F("v_head", 'i', v_head),      F("n_ff", 'i', n_ff),               F("n_ff_exp", 'i', n_ff_exp),
    F("n_expert", 'i', n_expert),  F("n_expert_used", 'i', n_expert_used), F("n_expert_shared", 'i', n_expert_shared),
    F("n_group", 'i', n_group),    F("n_group_used", 'i', n_group_used), F("gating", 'g', gating),
    F("exp_probs_b", 'b', exp_probs_b), F("norm_topk", 'b', norm_topk), F("scale", 'f', scale),
    F("n_vocab", 'i', n_vocab),    F("n_ctx", 'i', n_ctx),             F("rope_theta", 'f', rope_theta),
    F("yarn_factor", 'f', yarn_factor), F("yarn_orig_ctx", 'i', yarn_orig_ctx), F("mscale_all_dim", 'f', mscale_all_dim),
    F("tied", 'b', tied),          F("legacy_kv_b", 'b', legacy_kv_b), F("rms_eps", 'f', rms_eps),
    F("dtype", 'd', dtype),        F("seed", 'u', seed),
};
#undef F

moe_status moe_init_from_json(const char *path, moe_init_config *cfg, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return MOE_ERR_FORMAT;
    }
    moe_status st = MOE_OK;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "%s: expected a JSON object of model fields", path);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    json_t *pre = json_object_get(root, "preset");
    if (pre) {
        if (!json_is_string(pre) || moe_init_preset(json_string_value(pre), cfg)) {
            snprintf(err, errlen, "%s: \"preset\" must be one of tiny, bench-v2lite-4L, v2-lite, v3-mini", path);
            st = MOE_ERR_FORMAT;
            goto out;
        }
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "preset")) continue;
        const field *f = NULL;
        for (size_t i = 0; i < sizeof k_fields / sizeof k_fields[0]; i++)
            if (!strcmp(k_fields[i].key, key)) f = &k_fields[i];
        if (!f) {
            snprintf(err, errlen, "%s: unknown field \"%s\"", path, key);
            st = MOE_ERR_FORMAT;
            goto out;
        }
        char *dst = (char *)cfg + f->off;
        int ok = 1;
        switch (f->kind) {
        case 'i':
            ok = json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= 0x7fffffff;
            if (ok) *(int32_t *)dst = (int32_t)json_integer_value(v);
            break;
        case 'u':
            ok = json_is_integer(v) && json_integer_value(v) >= 0;
            if (ok) *(uint64_t *)dst = (uint64_t)json_integer_value(v);
            break;
        case 'f':
            ok = json_is_number(v);
            if (ok) *(float *)dst = (float)json_number_value(v);
            break;
        case 'b':
            ok = json_is_boolean(v);
            if (ok) *(int32_t *)dst = json_is_true(v);
            break;
        case 's':
            ok = json_is_string(v) && strlen(json_string_value(v)) < f->len;
            if (ok) snprintf(dst, f->len, "%s", json_string_value(v));
            break;
        case 'd':
            ok = json_is_string(v) && moe_dtype_from_name(json_string_value(v)) >= 0;
            if (ok) *(int32_t *)dst = moe_dtype_from_name(json_string_value(v));
            break;
        case 'g':
            ok = json_is_string(v) && (!strcmp(json_string_value(v), "softmax") || !strcmp(json_string_value(v), "sigmoid"));
            if (ok) *(int32_t *)dst = !strcmp(json_string_value(v), "sigmoid") ? 2 : 1;
            break;
        }
        if (!ok) {
            snprintf(err, errlen, "%s: field \"%s\" has a wrong type or value", path, key);
            st = MOE_ERR_FORMAT;
            goto out;
        }
    }
out:
    json_decref(root);
    return st;
}

moe_status moe_init_validate(const moe_init_config *c, char *err, size_t errlen) {
#define REQ(cond, ...)                                                                                            \
    do {                                                                                                          \
        if (!(cond)) {                                                                                            \
            snprintf(err, errlen, __VA_ARGS__);                                                                   \
            return MOE_ERR_INVAL;                                                                                 \
        }                                                                                                         \
    } while (0)
    REQ(c->n_layer >= 1 && c->n_layer <= 512, "n_layer must be in 1..512");
    REQ(c->n_layer_dense >= 0 && c->n_layer_dense <= c->n_layer, "n_layer_dense must be in 0..n_layer");
    REQ(c->n_embd > 0 && c->n_head > 0, "n_embd and n_head must be > 0");
    REQ(c->kv_lora_rank > 0 && c->qk_nope > 0 && c->v_head > 0, "kv_lora_rank, qk_nope and v_head must be > 0");
    REQ(c->qk_rope > 0 && c->qk_rope % 2 == 0, "qk_rope must be even and > 0");
    REQ(c->n_layer_dense == 0 || c->n_ff > 0, "n_ff must be > 0 with dense layers");
    REQ(c->n_ff_exp > 0, "n_ff_exp must be > 0");
    if (c->n_layer_dense < c->n_layer) {
        REQ(c->n_expert >= 1 && c->n_expert <= 1024, "n_expert must be in 1..1024");
        REQ(c->n_expert_used >= 1 && c->n_expert_used <= c->n_expert && c->n_expert_used <= 64,
            "n_expert_used must be in 1..min(n_expert, 64)");
        REQ(c->n_expert_shared >= 1, "n_expert_shared must be >= 1 (llama.cpp requires shared experts)");
        if (c->n_group > 1) {
            REQ(c->n_group < c->n_expert && c->n_expert % c->n_group == 0, "n_group must divide n_expert");
            REQ(c->n_group_used >= 1 && c->n_group_used < c->n_group, "n_group_used must be in 1..n_group-1");
            REQ(c->n_expert_used <= c->n_group_used * (c->n_expert / c->n_group), "n_expert_used exceeds what the used groups hold");
        }
    }
    REQ(c->gating == 1 || c->gating == 2, "gating must be softmax or sigmoid");
    REQ(c->n_ctx > 0, "n_ctx must be > 0");
    REQ(c->dtype == MOE_DTYPE_F32 || c->dtype == MOE_DTYPE_F16 || c->dtype == MOE_DTYPE_BF16 || c->dtype == MOE_DTYPE_Q8_0 ||
            c->dtype == MOE_DTYPE_Q4_0,
        "dtype must be f32, f16, bf16, q8_0 or q4_0");
    REQ(c->n_vocab >= 0 && c->n_vocab <= (1 << 24), "n_vocab out of range");
#undef REQ
    return MOE_OK;
}

/* ---- tensors ---- */

typedef struct {
    char name[64];
    int n_dims;
    int64_t ne[3];
    int type;      /* stored type */
    int kind;      /* 0 matrix, 1 norm (≈1), 2 bias (small), 3 router */
} tdesc;

typedef struct {
    tdesc *t;
    int n, cap;
    const moe_init_config *cfg;
} tlist;

static int add(tlist *l, const char *name, int n_dims, int64_t a, int64_t b, int64_t c3, int kind) {
    if (l->n == l->cap) {
        int nc = l->cap ? 2 * l->cap : 64;
        tdesc *nt = realloc(l->t, sizeof(tdesc) * (size_t)nc);
        if (!nt) return -1;
        l->t = nt;
        l->cap = nc;
    }
    tdesc *t = &l->t[l->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = a;
    t->ne[1] = b;
    t->ne[2] = c3;
    t->kind = kind;
    int ty = kind == 0 ? l->cfg->dtype : MOE_DTYPE_F32;
    /* block types need whole blocks per row; fall back to F16 like llama.cpp's converter */
    if (a % moe_dtype_block_size(ty)) ty = MOE_DTYPE_F16;
    t->type = ty;
    return 0;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct {
    uint64_t s[4];
} rng;

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
static inline uint64_t rng_next(rng *r) {
    uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}
/* uniform in [-1, 1) */
static inline float rng_uni(rng *r) { return (float)((double)(rng_next(r) >> 11) * 0x1.0p-52 - 1.0); }

typedef struct {
    tlist *l;
    uint64_t seed;
    float *row;
} fill_ctx;

static int fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    fill_ctx *f = ud;
    const tdesc *t = &f->l->t[i];
    uint64_t s = f->seed * 0x100000001b3ull + (uint64_t)i;
    rng r;
    for (int k = 0; k < 4; k++) r.s[k] = splitmix(&s);
    int64_t in = t->ne[0], rows = t->ne[1] * t->ne[2];
    size_t rb = moe_dtype_row_bytes(t->type, in);
    if ((uint64_t)rb * (uint64_t)rows != nbytes) return -1;
    /* uniform(-a, a) has std a/sqrt(3): a = sqrt(3/in) gives std 1/sqrt(in) */
    float a = sqrtf(3.0f / (float)in);
    for (int64_t ro = 0; ro < rows; ro++) {
        for (int64_t k = 0; k < in; k++) {
            float u = rng_uni(&r);
            switch (t->kind) {
            case 1: f->row[k] = 1.0f + 0.1f * u; break;
            case 2: f->row[k] = 0.05f * u; break;
            case 3: f->row[k] = 2.0f * a * u; break;
            default: f->row[k] = a * u; break;
            }
        }
        if (moe_dtype_quant_row(t->type, f->row, (uint8_t *)buf + (size_t)ro * rb, in)) return -1;
    }
    return 0;
}

moe_status moe_init_write(const moe_init_config *c, const char *vocab_from, const char *path,
                          moe_init_progress_fn progress, void *ud, char *err, size_t errlen) {
    moe_status st = moe_init_validate(c, err, errlen);
    if (st) return st;
    moe_gguf_writer *w = NULL;
    moe_gguf *src = NULL;
    tlist l = {NULL, 0, 0, c};
    fill_ctx fc = {&l, c->seed, NULL};
    if ((st = moe_gguf_writer_init(&w))) goto out;
    const uint32_t H = (uint32_t)c->n_head, Lkv = (uint32_t)c->kv_lora_rank, R = (uint32_t)c->qk_rope,
                   Dn = (uint32_t)c->qk_nope, Dv = (uint32_t)c->v_head;
#define KU(k, v) (st = st ? st : moe_gguf_writer_set_u32(w, "deepseek2." k, (uint32_t)(v)))
#define KF(k, v) (st = st ? st : moe_gguf_writer_set_f32(w, "deepseek2." k, (float)(v)))
    st = moe_gguf_writer_set_str(w, "general.architecture", "deepseek2");
    if (!st) st = moe_gguf_writer_set_str(w, "general.name", c->name[0] ? c->name : "moekit-random");
    if (!st) st = moe_gguf_writer_set_u32(w, "general.file_type", c->dtype == MOE_DTYPE_F32 ? 0 : c->dtype == MOE_DTYPE_F16 ? 1 : c->dtype == MOE_DTYPE_BF16 ? 32 : c->dtype == MOE_DTYPE_Q8_0 ? 7 : 2);
    KU("block_count", c->n_layer);
    KU("context_length", c->n_ctx);
    KU("embedding_length", c->n_embd);
    KU("feed_forward_length", c->n_ff);
    KU("attention.head_count", H);
    KU("attention.head_count_kv", c->legacy_kv_b ? H : 1);
    KF("attention.layer_norm_rms_epsilon", c->rms_eps);
    KU("attention.q_lora_rank", c->q_lora_rank);
    KU("attention.kv_lora_rank", Lkv);
    if (c->legacy_kv_b) {
        KU("attention.key_length", Dn + R);
        KU("attention.value_length", Dv);
    } else {
        KU("attention.key_length", Lkv + R);
        KU("attention.value_length", Lkv);
        KU("attention.key_length_mla", Dn + R);
        KU("attention.value_length_mla", Dv);
    }
    KU("rope.dimension_count", R);
    KF("rope.freq_base", c->rope_theta);
    KU("leading_dense_block_count", c->n_layer_dense);
    KU("expert_feed_forward_length", c->n_ff_exp);
    KU("expert_shared_count", c->n_expert_shared);
    KU("expert_count", c->n_expert);
    KU("expert_used_count", c->n_expert_used);
    KU("expert_gating_func", c->gating);
    KF("expert_weights_scale", c->scale);
    if (c->norm_topk && !st) st = moe_gguf_writer_set_bool(w, "deepseek2.expert_weights_norm", 1);
    if (c->n_group > 1) {
        KU("expert_group_count", c->n_group);
        KU("expert_group_used_count", c->n_group_used);
    }
    if (c->yarn_factor > 0.0f) {
        if (!st) st = moe_gguf_writer_set_str(w, "deepseek2.rope.scaling.type", "yarn");
        KF("rope.scaling.factor", c->yarn_factor);
        KU("rope.scaling.original_context_length", c->yarn_orig_ctx);
        KF("rope.scaling.yarn_log_multiplier", 0.1f * c->mscale_all_dim);
    }
#undef KU
#undef KF
    if (st) {
        snprintf(err, errlen, "init: writing metadata failed (%s)", moe_status_str(st));
        goto out;
    }
    uint32_t V = 0;
    if (vocab_from) {
        if ((st = moe_gguf_open(vocab_from, &src, err, errlen))) goto out;
        st = moe_tok_copy_vocab(w, src, (uint32_t)c->n_vocab, &V);
    } else {
        st = moe_tok_write_builtin_vocab(w, (uint32_t)c->n_vocab, &V);
    }
    if (st) {
        snprintf(err, errlen, "init: writing the vocabulary failed (%s)", moe_status_str(st));
        goto out;
    }
    const int64_t D = c->n_embd, Lq = c->q_lora_rank, F = c->n_ff, Fe = c->n_ff_exp, E = c->n_expert,
                  S = c->n_expert_shared;
    char nm[64];
    int bad = add(&l, "token_embd.weight", 2, D, V, 1, 0) | add(&l, "output_norm.weight", 1, D, 1, 1, 1);
    if (!c->tied) bad |= add(&l, "output.weight", 2, D, V, 1, 0);
    for (int il = 0; il < c->n_layer && !bad; il++) {
#define A(s, nd, a, b, c3, kind) (snprintf(nm, sizeof nm, "blk.%d.%s", il, s), bad |= add(&l, nm, nd, a, b, c3, kind))
        A("attn_norm.weight", 1, D, 1, 1, 1);
        if (Lq > 0) {
            A("attn_q_a.weight", 2, D, Lq, 1, 0);
            A("attn_q_a_norm.weight", 1, Lq, 1, 1, 1);
            A("attn_q_b.weight", 2, Lq, H * (Dn + R), 1, 0);
        } else {
            A("attn_q.weight", 2, D, H * (Dn + R), 1, 0);
        }
        A("attn_kv_a_mqa.weight", 2, D, Lkv + R, 1, 0);
        A("attn_kv_a_norm.weight", 1, Lkv, 1, 1, 1);
        if (c->legacy_kv_b) {
            A("attn_kv_b.weight", 2, Lkv, H * (Dn + Dv), 1, 0);
        } else {
            A("attn_k_b.weight", 3, Dn, Lkv, H, 0);
            A("attn_v_b.weight", 3, Lkv, Dv, H, 0);
        }
        A("attn_output.weight", 2, H * Dv, D, 1, 0);
        A("ffn_norm.weight", 1, D, 1, 1, 1);
        if (il < c->n_layer_dense) {
            A("ffn_gate.weight", 2, D, F, 1, 0);
            A("ffn_up.weight", 2, D, F, 1, 0);
            A("ffn_down.weight", 2, F, D, 1, 0);
        } else {
            A("ffn_gate_inp.weight", 2, D, E, 1, 3);
            if (c->exp_probs_b) A("exp_probs_b.bias", 1, E, 1, 1, 2);
            A("ffn_gate_exps.weight", 3, D, Fe, E, 0);
            A("ffn_up_exps.weight", 3, D, Fe, E, 0);
            A("ffn_down_exps.weight", 3, Fe, D, E, 0);
            A("ffn_gate_shexp.weight", 2, D, Fe * S, 1, 0);
            A("ffn_up_shexp.weight", 2, D, Fe * S, 1, 0);
            A("ffn_down_shexp.weight", 2, Fe * S, D, 1, 0);
        }
#undef A
    }
    if (bad) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "init: out of memory");
        goto out;
    }
    int64_t max_in = 0;
    for (int i = 0; i < l.n; i++) {
        if (l.t[i].ne[0] > max_in) max_in = l.t[i].ne[0];
        st = moe_gguf_writer_add_tensor(w, l.t[i].name, l.t[i].type, l.t[i].n_dims, l.t[i].ne, NULL);
        if (st) {
            snprintf(err, errlen, "init: tensor '%s' rejected by the writer", l.t[i].name);
            goto out;
        }
    }
    fc.row = malloc(sizeof(float) * (size_t)max_in);
    if (!fc.row) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    st = moe_gguf_writer_write(w, path, fill, &fc, progress, ud, err, errlen);
out:
    free(fc.row);
    free(l.t);
    moe_gguf_close(src);
    moe_gguf_writer_free(w);
    return st;
}
