/* moekit tools: Hugging Face DeepSeek-V2/V3 checkpoint -> deepseek2 GGUF (`moe convert`).
 *
 * What llama.cpp's converter (conversion/deepseek.py, gguf-py vocab.py) does, in C:
 *   config.json          -> deepseek2.* keys (spec deepseek2.md §2; head_count_kv forced to 1,
 *                           key_length = kv_lora_rank + rope, YaRN log multiplier = 0.1·mscale_all_dim)
 *   tokenizer.json       -> tokenizer.* keys (spec §5.1): vocabulary in the byte-level alphabet,
 *   tokenizer_config.json   merges "a b", added tokens CONTROL (special or <|…|>/<｜…｜>) or
 *                           USER_DEFINED, ids missing up to config vocab_size as [PAD<id>] UNUSED,
 *                           bos/eos/pad from tokenizer_config, add_bos/add_eos, chat template
 *   safetensors          -> tensors renamed (spec §3); experts stacked; kv_b_proj split into
 *                           attn_k_b (transposed per head) and attn_v_b; FP8 weights multiplied by
 *                           their 128×128 block scales; MTP layers (>= num_hidden_layers) skipped.
 * The output tensor set is derived from config.json, exactly the set the loader expects; every
 * checkpoint tensor must be consumed (or be an MTP/scale/rotary tensor), else the conversion
 * stops naming it. Tensors are produced one at a time by the GGUF writer's fill callback, rows
 * read in bounded chunks, so memory is one output tensor plus a ~64 MB row buffer. */
#include <jansson.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/safetensors.h"
#include "moe/tools.h"

moe_convert_params moe_convert_default_params(void) {
    moe_convert_params p = {0};
    p.dtype = MOE_DTYPE_F16;
    return p;
}

/* how an output tensor is produced from the checkpoint */
enum { SRC_PLAIN, SRC_EXPS, SRC_KB, SRC_VB };

typedef struct {
    char name[64];      /* GGUF name */
    char src[160];      /* HF name (for SRC_EXPS: printf pattern with %d for the expert) */
    int kind, type, n_dims;
    int64_t ne[3];
} otensor;

typedef struct {
    int32_t L, L_all, D, H, Lq, Lkv, R, Dn, Dv, F, Fe, E, K, S, G, Gu, Ld, V_cfg;
    int gating, norm_topk, has_bias, tied;
    double scale, eps, theta;
    int64_t n_ctx;
    int yarn;
    double yarn_factor, mscale_all_dim, beta_fast, beta_slow;
    int64_t yarn_orig;
} hf_cfg;

typedef struct {
    const moe_st_dir *d;
    otensor *t;
    int64_t n;
    const hf_cfg *c;
    float *rows;        /* row buffer, rows_n floats */
    size_t rows_n;
    char *err;
    size_t errlen;
    const moe_convert_params *p;
    uint64_t done, total;
} conv;

static void note(const moe_convert_params *p, const char *fmt, ...) {
    if (!p->note) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    p->note(p->ud, buf);
}

/* ---- config.json ---- */

static int jint(json_t *o, const char *k, int64_t dflt, int64_t *out) {
    json_t *v = json_object_get(o, k);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return dflt >= 0 ? 0 : -1;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff) return -1;
    *out = json_integer_value(v);
    return 0;
}

static moe_status read_config(const char *dir, hf_cfg *c, int *is_fp8, int64_t *blk, char *err, size_t errlen) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_error_t je;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return MOE_ERR_FORMAT;
    }
    moe_status st = MOE_OK;
    json_t *ar = json_object_get(j, "architectures");
    const char *arch = json_is_array(ar) && json_is_string(json_array_get(ar, 0)) ? json_string_value(json_array_get(ar, 0)) : NULL;
    if (!arch || (strcmp(arch, "DeepseekV2ForCausalLM") && strcmp(arch, "DeepseekV3ForCausalLM"))) {
        snprintf(err, errlen, "%s: architecture '%s' is not supported (moe convert handles DeepseekV2ForCausalLM and DeepseekV3ForCausalLM)",
                 path, arch ? arch : "(none)");
        st = MOE_ERR_UNSUPPORTED;
        goto out;
    }
    int64_t v[24];
    const char *bad = NULL;
#define I(idx, key, dflt) if (!bad && jint(j, key, dflt, &v[idx])) bad = key
    I(0, "num_hidden_layers", -1);
    I(1, "hidden_size", -1);
    I(2, "num_attention_heads", -1);
    I(3, "q_lora_rank", 0);
    I(4, "kv_lora_rank", 512);
    I(5, "qk_rope_head_dim", -1);
    I(6, "qk_nope_head_dim", -1);
    I(7, "v_head_dim", -1);
    I(8, "intermediate_size", 0);
    I(9, "moe_intermediate_size", -1);
    I(10, "n_routed_experts", 0);
    I(11, "num_experts_per_tok", 0);
    I(12, "n_shared_experts", 0);
    I(13, "n_group", 0);
    I(14, "topk_group", 0);
    I(15, "first_k_dense_replace", 0);
    I(16, "vocab_size", 0);
    I(17, "max_position_embeddings", 4096);
#undef I
    if (bad) {
        snprintf(err, errlen, "%s: \"%s\" is missing or not a non-negative integer", path, bad);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    c->L = c->L_all = (int32_t)v[0];
    c->D = (int32_t)v[1];
    c->H = (int32_t)v[2];
    c->Lq = (int32_t)v[3];
    c->Lkv = (int32_t)v[4];
    c->R = (int32_t)v[5];
    c->Dn = (int32_t)v[6];
    c->Dv = (int32_t)v[7];
    c->F = (int32_t)v[8];
    c->Fe = (int32_t)v[9];
    c->E = (int32_t)v[10];
    c->K = (int32_t)v[11];
    c->S = (int32_t)v[12];
    c->G = (int32_t)v[13];
    c->Gu = (int32_t)v[14];
    c->Ld = (int32_t)v[15];
    c->V_cfg = (int32_t)v[16];
    c->n_ctx = v[17];
    if (c->Ld > c->L) c->Ld = c->L;
    if (c->L < 1 || c->D < 1 || c->H < 1 || c->Lkv < 1 || c->R < 2 || c->R % 2 || c->Dn < 1 || c->Dv < 1 || c->Fe < 1) {
        snprintf(err, errlen, "%s: layer/width fields out of range (num_hidden_layers, hidden_size, heads, kv_lora_rank, head dims)", path);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    if (c->Ld < c->L && (c->E < 1 || c->K < 1 || c->K > c->E || c->S < 1)) {
        snprintf(err, errlen, "%s: MoE layers need n_routed_experts >= 1, 1 <= num_experts_per_tok <= n_routed_experts and n_shared_experts >= 1", path);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    json_t *x;
    c->scale = json_is_number(x = json_object_get(j, "routed_scaling_factor")) ? json_number_value(x) : 1.0;
    c->norm_topk = json_is_true(json_object_get(j, "norm_topk_prob"));
    c->eps = json_is_number(x = json_object_get(j, "rms_norm_eps")) ? json_number_value(x) : 1e-6;
    c->theta = json_is_number(x = json_object_get(j, "rope_theta")) ? json_number_value(x) : 10000.0;
    c->tied = json_is_true(json_object_get(j, "tie_word_embeddings"));
    const char *sf = json_string_value(json_object_get(j, "scoring_func"));
    if (!sf || !strcmp(sf, "softmax")) c->gating = 1;
    else if (!strcmp(sf, "sigmoid")) c->gating = 2;
    else {
        snprintf(err, errlen, "%s: scoring_func \"%s\" is not supported (softmax, sigmoid)", path, sf);
        st = MOE_ERR_UNSUPPORTED;
        goto out;
    }
    json_t *rs = json_object_get(j, "rope_scaling");
    if (json_is_object(rs)) {
        const char *ty = json_string_value(json_object_get(rs, "rope_type"));
        if (!ty) ty = json_string_value(json_object_get(rs, "type"));
        if (ty && !strcmp(ty, "yarn") && json_is_number(json_object_get(rs, "factor"))) {
            c->yarn = 1;
            c->yarn_factor = json_number_value(json_object_get(rs, "factor"));
            c->yarn_orig = json_is_integer(x = json_object_get(rs, "original_max_position_embeddings")) ? json_integer_value(x) : 4096;
            c->mscale_all_dim = json_is_number(x = json_object_get(rs, "mscale_all_dim")) ? json_number_value(x) : 0.0;
            c->beta_fast = json_is_number(x = json_object_get(rs, "beta_fast")) ? json_number_value(x) : 32.0;
            c->beta_slow = json_is_number(x = json_object_get(rs, "beta_slow")) ? json_number_value(x) : 1.0;
        }
    }
    json_t *qc = json_object_get(j, "quantization_config");
    *is_fp8 = 0;
    blk[0] = blk[1] = 128;
    if (json_is_object(qc)) {
        const char *qm = json_string_value(json_object_get(qc, "quant_method"));
        if (!qm || strcmp(qm, "fp8")) {
            snprintf(err, errlen, "%s: quantization_config.quant_method \"%s\" is not supported (fp8 only)", path, qm ? qm : "?");
            st = MOE_ERR_UNSUPPORTED;
            goto out;
        }
        *is_fp8 = 1;
        json_t *wb = json_object_get(qc, "weight_block_size");
        if (json_is_array(wb) && json_array_size(wb) == 2 && json_is_integer(json_array_get(wb, 0)) &&
            json_is_integer(json_array_get(wb, 1)) && json_integer_value(json_array_get(wb, 0)) > 0 &&
            json_integer_value(json_array_get(wb, 1)) > 0) {
            blk[0] = json_integer_value(json_array_get(wb, 0));
            blk[1] = json_integer_value(json_array_get(wb, 1));
        }
    }
out:
    json_decref(j);
    return st;
}

/* ---- tokenizer ---- */

static int looks_special(const char *s) {
    size_t n = strlen(s);
    if (!strcmp(s, "<pad>") || !strcmp(s, "<mask>") || !strcmp(s, "<2mass>") || !strcmp(s, "[@BOS@]")) return 1;
    if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) return 1;
    /* <｜ … ｜> with U+FF5C (EF BD 9C) */
    if (n >= 8 && !strncmp(s, "<\xEF\xBD\x9C", 4) && !strcmp(s + n - 4, "\xEF\xBD\x9C>")) return 1;
    if (n >= 8 && !strncmp(s, "<unused", 7) && s[n - 1] == '>') return 1;
    return 0;
}

/* "▁" (U+2581) -> " " for USER_DEFINED tokens, as the converter pre-normalizes them */
static char *replace_lower_block(const char *s) {
    size_t n = strlen(s);
    char *o = malloc(n + 1), *q = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n;) {
        if (i + 3 <= n && !memcmp(s + i, "\xE2\x96\x81", 3)) {
            *q++ = ' ';
            i += 3;
        } else {
            *q++ = s[i++];
        }
    }
    *q = 0;
    return o;
}

static const char *token_content(json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return json_string_value(json_object_get(v, "content"));
    return NULL;
}

typedef struct {
    char **tok;       /* V owned strings */
    int32_t *type;
    int64_t V;
    char **merges;    /* owned */
    int64_t n_merges;
    json_t *tj, *tc;  /* tokenizer.json, tokenizer_config.json */
} vocab;

static void vocab_free(vocab *v) {
    for (int64_t i = 0; i < v->V; i++) free(v->tok[i]);
    for (int64_t i = 0; i < v->n_merges; i++) free(v->merges[i]);
    free(v->tok);
    free(v->type);
    free(v->merges);
    json_decref(v->tj);
    json_decref(v->tc);
}

static int64_t find_token(const vocab *v, json_t *added, json_t *model_vocab, const char *text) {
    if (!text) return -1;
    size_t i;
    json_t *a;
    json_array_foreach(added, i, a) {
        const char *c = json_string_value(json_object_get(a, "content"));
        if (c && !strcmp(c, text) && json_is_integer(json_object_get(a, "id"))) return json_integer_value(json_object_get(a, "id"));
    }
    json_t *x = json_object_get(model_vocab, text);
    return json_is_integer(x) ? json_integer_value(x) : -1;
}

static moe_status write_tokenizer(const char *dir, moe_gguf_writer *w, const hf_cfg *c, const moe_convert_params *p,
                                  int64_t *n_vocab, char *err, size_t errlen) {
    vocab v = {0};
    moe_status st = MOE_OK;
    char path[4096];
    json_error_t je;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    v.tj = json_load_file(path, 0, &je);
    if (!v.tj) {
        snprintf(err, errlen, "%s:%d:%d: %s", path, je.line, je.column, je.text);
        return MOE_ERR_FORMAT;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    v.tc = json_load_file(path, 0, &je);
    if (!v.tc) v.tc = json_object(); /* optional */
    json_t *model = json_object_get(v.tj, "model"), *mv = json_object_get(model, "vocab"),
           *mm = json_object_get(model, "merges"), *added = json_object_get(v.tj, "added_tokens");
    const char *mt = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model) || !mt || strcmp(mt, "BPE") || !json_is_object(mv) || !json_is_array(mm)) {
        snprintf(err, errlen, "%s/tokenizer.json: expected a BPE model with \"vocab\" and \"merges\"", dir);
        st = MOE_ERR_UNSUPPORTED;
        goto out;
    }
    if (!json_is_array(added)) added = NULL;
    /* the id space: max id + 1, padded to config vocab_size */
    int64_t max_id = -1;
    const char *k;
    json_t *x;
    json_object_foreach(mv, k, x) {
        if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= (1 << 24)) {
            snprintf(err, errlen, "%s/tokenizer.json: vocab entry has a bad id", dir);
            st = MOE_ERR_FORMAT;
            goto out;
        }
        if (json_integer_value(x) > max_id) max_id = json_integer_value(x);
    }
    size_t i;
    json_t *a;
    if (added) json_array_foreach(added, i, a) {
        json_t *id = json_object_get(a, "id");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) ||
            !json_is_string(json_object_get(a, "content"))) {
            snprintf(err, errlen, "%s/tokenizer.json: added_tokens[%zu] needs an id and a content", dir, i);
            st = MOE_ERR_FORMAT;
            goto out;
        }
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    v.V = c->V_cfg > 0 ? c->V_cfg : max_id + 1;
    if (max_id >= v.V) {
        snprintf(err, errlen, "tokenizer has id %lld but config.json vocab_size is %lld", (long long)max_id, (long long)v.V);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    v.tok = calloc((size_t)v.V, sizeof *v.tok);
    v.type = calloc((size_t)v.V, sizeof *v.type);
    if (!v.tok || !v.type) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    json_object_foreach(mv, k, x) {
        int64_t id = json_integer_value(x);
        free(v.tok[id]);
        v.tok[id] = strdup(k);
        v.type[id] = 1; /* NORMAL */
    }
    if (added) json_array_foreach(added, i, a) {
        int64_t id = json_integer_value(json_object_get(a, "id"));
        const char *ct = json_string_value(json_object_get(a, "content"));
        free(v.tok[id]);
        if (json_is_true(json_object_get(a, "special")) || looks_special(ct)) {
            v.tok[id] = strdup(ct);
            v.type[id] = 3; /* CONTROL */
        } else {
            v.tok[id] = replace_lower_block(ct);
            v.type[id] = 4; /* USER_DEFINED */
        }
    }
    int n_pad = 0;
    for (int64_t id = 0; id < v.V; id++) {
        if (!v.tok[id]) {
            char b[32];
            snprintf(b, sizeof b, "[PAD%lld]", (long long)id);
            v.tok[id] = strdup(b);
            v.type[id] = 5; /* UNUSED */
            n_pad++;
        }
        if (!v.tok[id]) {
            st = MOE_ERR_NOMEM;
            goto out;
        }
    }
    /* merges: "a b" strings, or [a, b] pairs (tokenizers >= 0.20) with spaces encoded as U+0120 */
    v.merges = calloc(json_array_size(mm) + 1, sizeof *v.merges);
    if (!v.merges) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    json_array_foreach(mm, i, a) {
        if (json_is_string(a)) {
            v.merges[v.n_merges++] = strdup(json_string_value(a));
        } else if (json_is_array(a) && json_array_size(a) == 2 && json_is_string(json_array_get(a, 0)) &&
                   json_is_string(json_array_get(a, 1))) {
            const char *l = json_string_value(json_array_get(a, 0)), *r = json_string_value(json_array_get(a, 1));
            char *m = malloc(2 * (strlen(l) + strlen(r)) + 2), *q = m;
            if (!m) {
                st = MOE_ERR_NOMEM;
                goto out;
            }
            for (int side = 0; side < 2; side++) {
                for (const char *s = side ? r : l; *s; s++) {
                    if (*s == ' ') {
                        *q++ = (char)0xC4;
                        *q++ = (char)0xA0;
                    } else {
                        *q++ = *s;
                    }
                }
                if (!side) *q++ = ' ';
            }
            *q = 0;
            v.merges[v.n_merges++] = m;
        } else {
            snprintf(err, errlen, "%s/tokenizer.json: merges[%zu] is neither \"a b\" nor [a, b]", dir, i);
            st = MOE_ERR_FORMAT;
            goto out;
        }
        if (!v.merges[v.n_merges - 1]) {
            st = MOE_ERR_NOMEM;
            goto out;
        }
    }
    if (v.n_merges == 0) {
        snprintf(err, errlen, "%s/tokenizer.json: no merges (a gpt2 vocabulary needs at least one)", dir);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    /* pre-tokenizer: identify the regex sequence (llama.cpp hashes the tokenizer's output on a
     * check text; the DeepSeek regex lists identify the same two families) */
    const char *pre = p->pre;
    if (!pre) {
        json_t *pt = json_object_get(v.tj, "pre_tokenizer"), *seq = json_object_get(pt, "pretokenizers");
        json_t *first = json_array_get(seq, 0);
        const char *rx = json_string_value(json_object_get(json_object_get(first, "pattern"), "Regex"));
        if (rx && !strcmp(rx, "\\p{N}{1,3}")) pre = "deepseek-v3";
        else if (rx && !strcmp(rx, "[\r\n]")) pre = "deepseek-llm";
        else {
            snprintf(err, errlen, "%s/tokenizer.json: pre-tokenizer not recognised as deepseek-v3 or deepseek-llm (give --pre NAME)", dir);
            st = MOE_ERR_UNSUPPORTED;
            goto out;
        }
    }
    st = moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (!st) st = moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    if (!st) st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tok, NULL, (uint64_t)v.V);
    if (!st) st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, v.type, (uint64_t)v.V);
    if (!st) st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges, NULL, (uint64_t)v.n_merges);
    /* special ids: tokenizer_config.json first, then config.json's *_token_id (gguf-py SpecialVocab) */
    static const char *const kinds[] = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
    static const char *const keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                       "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.seperator_token_id",
                                       "tokenizer.ggml.padding_token_id", "tokenizer.ggml.cls_token_id",
                                       "tokenizer.ggml.mask_token_id"};
    for (int s = 0; s < 7 && !st; s++) {
        char kk[32];
        snprintf(kk, sizeof kk, "%s_token", kinds[s]);
        int64_t id = find_token(&v, added, mv, token_content(json_object_get(v.tc, kk)));
        if (id >= 0 && id < v.V) st = moe_gguf_writer_set_u32(w, keys[s], (uint32_t)id);
        else if (s <= 1) note(p, "tokenizer_config.json has no %s_token", kinds[s]);
    }
    for (int s = 0; s < 2 && !st; s++) {
        char kk[32];
        snprintf(kk, sizeof kk, "add_%s_token", kinds[s]);
        json_t *b = json_object_get(v.tc, kk);
        if (json_is_boolean(b))
            st = moe_gguf_writer_set_bool(w, s ? "tokenizer.ggml.add_eos_token" : "tokenizer.ggml.add_bos_token", json_is_true(b));
    }
    json_t *ct = json_object_get(v.tc, "chat_template");
    const char *tmpl = json_string_value(ct);
    if (json_is_array(ct)) { /* [{name, template}, ...]: the "default" one */
        json_array_foreach(ct, i, a) if (!tmpl || !strcmp(json_string_value(json_object_get(a, "name")) ? json_string_value(json_object_get(a, "name")) : "", "default"))
            tmpl = json_string_value(json_object_get(a, "template"));
    }
    if (tmpl && !st) st = moe_gguf_writer_set_str(w, "tokenizer.chat_template", tmpl);
    if (st) {
        snprintf(err, errlen, "writing tokenizer keys failed (%s)", moe_status_str(st));
        goto out;
    }
    note(p, "tokenizer: %lld ids (%s), %lld merges, %d padding ids", (long long)v.V, pre, (long long)v.n_merges, n_pad);
    *n_vocab = v.V;
out:
    vocab_free(&v);
    return st;
}

/* ---- tensors ---- */

static int is_f32_tensor(const char *name, int n_dims) {
    return n_dims <= 1 || strstr(name, "_norm.weight") || strstr(name, "ffn_gate_inp.weight") || strstr(name, ".bias");
}

static int add_t(otensor **t, int64_t *n, int64_t *cap, const char *name, const char *src, int kind, int n_dims,
                 int64_t a, int64_t b, int64_t c3, int dtype) {
    if (*n == *cap) {
        int64_t nc = *cap ? 2 * *cap : 64;
        otensor *nt = realloc(*t, sizeof **t * (size_t)nc);
        if (!nt) return -1;
        *t = nt;
        *cap = nc;
    }
    otensor *o = &(*t)[(*n)++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", name);
    snprintf(o->src, sizeof o->src, "%s", src);
    o->kind = kind;
    o->n_dims = n_dims;
    o->ne[0] = a;
    o->ne[1] = b;
    o->ne[2] = c3;
    int ty = is_f32_tensor(name, n_dims) ? MOE_DTYPE_F32 : dtype;
    if (a % moe_dtype_block_size(ty)) ty = MOE_DTYPE_F16; /* llama.cpp: Q8_0 needs ne[0] % 32 == 0 */
    o->type = ty;
    return 0;
}

/* Expected torch shape of an HF source; returns 0 if it matches. */
static int check_shape(const moe_st_dir *d, const char *name, int n_dims, int64_t s0, int64_t s1, char *err, size_t errlen) {
    const moe_st_tensor *t = moe_st_dir_find(d, name);
    if (!t) {
        snprintf(err, errlen, "tensor '%s' is missing from the checkpoint", name);
        return -1;
    }
    int ok = t->n_dims == n_dims && t->shape[0] == s0 && (n_dims < 2 || t->shape[1] == s1);
    if (!ok) {
        snprintf(err, errlen, "tensor '%s' has shape [%lld%s%lld], expected [%lld%s%lld] from config.json", name,
                 (long long)t->shape[0], t->n_dims > 1 ? ", " : "", t->n_dims > 1 ? (long long)t->shape[1] : 0LL,
                 (long long)s0, n_dims > 1 ? ", " : "", n_dims > 1 ? (long long)s1 : 0LL);
        return -1;
    }
    return 0;
}

static int fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    conv *cv = ud;
    const otensor *o = &cv->t[i];
    const hf_cfg *c = cv->c;
    const int64_t in = o->ne[0];
    const size_t rb = moe_dtype_row_bytes(o->type, in);
    uint8_t *out = buf;
    int64_t max_rows = (int64_t)(cv->rows_n / (size_t)in);
    char src[192];
    moe_status st = MOE_OK;
#define QROW(k, x) (moe_dtype_quant_row(o->type, (x), out + (size_t)(k) * rb, in))
    if (o->kind == SRC_PLAIN || o->kind == SRC_EXPS) {
        int64_t rows = o->ne[1] * o->ne[2], per = o->kind == SRC_EXPS ? o->ne[1] : rows;
        for (int64_t base = 0; base < rows && !st; base += per) {
            if (o->kind == SRC_EXPS) snprintf(src, sizeof src, o->src, (int)(base / per));
            else snprintf(src, sizeof src, "%s", o->src);
            for (int64_t r0 = 0; r0 < per && !st; r0 += max_rows) {
                int64_t nr = per - r0 < max_rows ? per - r0 : max_rows;
                if (o->n_dims == 1) nr = 1;
                st = moe_st_dir_read_rows(cv->d, src, o->n_dims == 1 ? 0 : r0, nr, cv->rows, cv->err, cv->errlen);
                for (int64_t r = 0; r < nr && !st; r++)
                    if (QROW(base + r0 + r, cv->rows + r * in)) st = MOE_ERR_INTERNAL;
            }
        }
    } else {
        /* kv_b_proj [H·(Dn+Dv), Lkv]: head h rows h·(Dn+Dv) .. +Dn are k_nope, the next Dv are v */
        const int64_t Dn = c->Dn, Dv = c->Dv, Lkv = c->Lkv;
        float *t = cv->rows + (size_t)(Dn > Dv ? Dn : Dv) * (size_t)Lkv; /* second half of the buffer */
        for (int64_t h = 0; h < c->H && !st; h++) {
            if (o->kind == SRC_VB) {
                st = moe_st_dir_read_rows(cv->d, o->src, h * (Dn + Dv) + Dn, Dv, cv->rows, cv->err, cv->errlen);
                for (int64_t e = 0; e < Dv && !st; e++)
                    if (QROW(h * Dv + e, cv->rows + e * Lkv)) st = MOE_ERR_INTERNAL;
            } else {
                st = moe_st_dir_read_rows(cv->d, o->src, h * (Dn + Dv), Dn, cv->rows, cv->err, cv->errlen);
                /* transpose (Dn, Lkv) -> (Lkv, Dn): attn_k_b (d, r, h) = W[h·(Dn+Dv) + d, r] */
                for (int64_t r = 0; r < Lkv && !st; r++) {
                    for (int64_t dd = 0; dd < Dn; dd++) t[dd] = cv->rows[dd * Lkv + r];
                    if (QROW(h * Lkv + r, t)) st = MOE_ERR_INTERNAL;
                }
            }
        }
    }
#undef QROW
    if (st == MOE_ERR_INTERNAL) snprintf(cv->err, cv->errlen, "quantizing '%s' to %s failed", o->name, moe_dtype_name(o->type));
    cv->done += nbytes;
    if (!st && cv->p->progress) cv->p->progress(cv->p->ud, i, cv->n, o->name, cv->done, cv->total);
    return st ? -1 : 0;
}

/* does the name belong to a layer index >= L (MTP/NextN layers)? */
static int layer_of(const char *name) {
    if (strncmp(name, "model.layers.", 13)) return -1;
    return atoi(name + 13);
}

moe_status moe_convert(const char *hf_dir, const char *out_path, const moe_convert_params *pp, char *err, size_t errlen) {
    moe_convert_params p = pp ? *pp : moe_convert_default_params();
    hf_cfg c = {0};
    moe_st_dir *d = NULL;
    moe_gguf_writer *w = NULL;
    otensor *t = NULL;
    int64_t n = 0, cap = 0;
    conv cv = {0};
    char *used = NULL;
    int is_fp8 = 0;
    int64_t blk[2];
    char e2[768];
    moe_status st;
    if (p.dtype != MOE_DTYPE_F32 && p.dtype != MOE_DTYPE_F16 && p.dtype != MOE_DTYPE_BF16 && p.dtype != MOE_DTYPE_Q8_0) {
        snprintf(err, errlen, "convert: --dtype must be f32, f16, bf16 or q8_0");
        return MOE_ERR_INVAL;
    }
    if ((st = read_config(hf_dir, &c, &is_fp8, blk, err, errlen))) return st;
    if ((st = moe_st_dir_open(hf_dir, &d, err, errlen))) goto out;
    moe_st_dir_set_fp8_block(d, blk[0], blk[1]);
    if ((st = moe_gguf_writer_init(&w))) goto out;

    /* ---- metadata (key order as llama.cpp's converter writes it) ---- */
    char namebuf[4096];
    snprintf(namebuf, sizeof namebuf, "%s", hf_dir);
    size_t nl = strlen(namebuf);
    while (nl > 1 && namebuf[nl - 1] == '/') namebuf[--nl] = 0;
    const char *gname = p.name ? p.name : basename(namebuf);
#define KU(k, v) (st = st ? st : moe_gguf_writer_set_u32(w, "deepseek2." k, (uint32_t)(v)))
#define KF(k, v) (st = st ? st : moe_gguf_writer_set_f32(w, "deepseek2." k, (float)(v)))
    st = moe_gguf_writer_set_str(w, "general.architecture", "deepseek2");
    if (!st) st = moe_gguf_writer_set_str(w, "general.type", "model");
    if (!st) st = moe_gguf_writer_set_str(w, "general.name", gname);
    KU("block_count", c.L);
    KU("context_length", c.n_ctx);
    KU("embedding_length", c.D);
    KU("feed_forward_length", c.F);
    KU("attention.head_count", c.H);
    KU("attention.head_count_kv", 1);
    if (c.yarn) {
        if (!st) st = moe_gguf_writer_set_str(w, "deepseek2.rope.scaling.type", "yarn");
        KF("rope.scaling.factor", c.yarn_factor);
        KU("rope.scaling.original_context_length", c.yarn_orig);
        KF("rope.scaling.yarn_beta_fast", c.beta_fast);
        KF("rope.scaling.yarn_beta_slow", c.beta_slow);
    }
    KF("rope.freq_base", c.theta);
    KF("attention.layer_norm_rms_epsilon", c.eps);
    if (c.E > 0) {
        KU("expert_count", c.E);
        KU("expert_used_count", c.K);
    }
    if (c.G > 0) {
        KU("expert_group_count", c.G);
        KU("expert_group_used_count", c.Gu);
    }
    KU("expert_gating_func", c.gating);
    int ftype = p.dtype == MOE_DTYPE_F32 ? 0 : p.dtype == MOE_DTYPE_F16 ? 1 : p.dtype == MOE_DTYPE_BF16 ? 32 : 7;
    if (!st) st = moe_gguf_writer_set_u32(w, "general.file_type", (uint32_t)ftype);
    KU("leading_dense_block_count", c.Ld);
    if (c.V_cfg > 0) KU("vocab_size", c.V_cfg);
    /* "lite" layer counts (26/27): llama.cpp does not read q_lora_rank; the converter writes it only
     * when config.json has one, as here */
    if (c.Lq > 0 || !(c.L == 26 || c.L == 27)) KU("attention.q_lora_rank", c.Lq);
    KU("attention.kv_lora_rank", c.Lkv);
    KU("attention.key_length", c.Lkv + c.R);
    KU("attention.value_length", c.Lkv);
    KU("attention.key_length_mla", c.Dn + c.R);
    KU("attention.value_length_mla", c.Dv);
    KU("expert_feed_forward_length", c.Fe);
    KU("expert_shared_count", c.S);
    KF("expert_weights_scale", c.scale);
    if (c.norm_topk && !st) st = moe_gguf_writer_set_bool(w, "deepseek2.expert_weights_norm", 1);
    KU("rope.dimension_count", c.R);
    if (c.yarn && c.mscale_all_dim != 0.0) KF("rope.scaling.yarn_log_multiplier", (float)(0.1 * c.mscale_all_dim));
    if (!st) st = moe_gguf_writer_set_u32(w, "general.quantization_version", 2);
#undef KU
#undef KF
    if (st) {
        snprintf(err, errlen, "convert: writing metadata failed (%s)", moe_status_str(st));
        goto out;
    }
    int64_t V = 0;
    if ((st = write_tokenizer(hf_dir, w, &c, &p, &V, err, errlen))) goto out;

    /* ---- the tensor set, from config.json ---- */
    const int64_t D = c.D, H = c.H, Lq = c.Lq, Lkv = c.Lkv, R = c.R, Dn = c.Dn, Dv = c.Dv, F = c.F, Fe = c.Fe, E = c.E,
                  S = c.S, Dk = Dn + R;
    int has_head = moe_st_dir_find(d, "lm_head.weight") != NULL;
    int bad = 0;
    char nm[64], sn[160];
    e2[0] = 0;
#define T(gg, hf, kind, nd, a, b, c3) (bad |= add_t(&t, &n, &cap, gg, hf, kind, nd, a, b, c3, p.dtype))
#define SHAPE(hf, nd, s0, s1) (bad |= check_shape(d, hf, nd, s0, s1, e2, sizeof e2))
    T("token_embd.weight", "model.embed_tokens.weight", SRC_PLAIN, 2, D, V, 1);
    SHAPE("model.embed_tokens.weight", 2, V, D);
    T("output_norm.weight", "model.norm.weight", SRC_PLAIN, 1, D, 1, 1);
    SHAPE("model.norm.weight", 1, D, 0);
    if (has_head) {
        T("output.weight", "lm_head.weight", SRC_PLAIN, 2, D, V, 1);
        SHAPE("lm_head.weight", 2, V, D);
    }
    for (int il = 0; il < c.L && !bad; il++) {
#define LT(gg, hf, kind, nd, a, b, c3)                                                                               \
    (snprintf(nm, sizeof nm, "blk.%d.%s", il, gg), snprintf(sn, sizeof sn, "model.layers.%d.%s", il, hf),           \
     T(nm, sn, kind, nd, a, b, c3))
#define LS(hf, nd, s0, s1) (snprintf(sn, sizeof sn, "model.layers.%d.%s", il, hf), bad |= bad ? 0 : check_shape(d, sn, nd, s0, s1, e2, sizeof e2))
        LT("attn_norm.weight", "input_layernorm.weight", SRC_PLAIN, 1, D, 1, 1);
        LS("input_layernorm.weight", 1, D, 0);
        if (Lq > 0) {
            LT("attn_q_a.weight", "self_attn.q_a_proj.weight", SRC_PLAIN, 2, D, Lq, 1);
            LS("self_attn.q_a_proj.weight", 2, Lq, D);
            LT("attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight", SRC_PLAIN, 1, Lq, 1, 1);
            LS("self_attn.q_a_layernorm.weight", 1, Lq, 0);
            LT("attn_q_b.weight", "self_attn.q_b_proj.weight", SRC_PLAIN, 2, Lq, H * Dk, 1);
            LS("self_attn.q_b_proj.weight", 2, H * Dk, Lq);
        } else {
            LT("attn_q.weight", "self_attn.q_proj.weight", SRC_PLAIN, 2, D, H * Dk, 1);
            LS("self_attn.q_proj.weight", 2, H * Dk, D);
        }
        LT("attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight", SRC_PLAIN, 2, D, Lkv + R, 1);
        LS("self_attn.kv_a_proj_with_mqa.weight", 2, Lkv + R, D);
        LT("attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight", SRC_PLAIN, 1, Lkv, 1, 1);
        LS("self_attn.kv_a_layernorm.weight", 1, Lkv, 0);
        LT("attn_k_b.weight", "self_attn.kv_b_proj.weight", SRC_KB, 3, Dn, Lkv, H);
        LT("attn_v_b.weight", "self_attn.kv_b_proj.weight", SRC_VB, 3, Lkv, Dv, H);
        LS("self_attn.kv_b_proj.weight", 2, H * (Dn + Dv), Lkv);
        LT("attn_output.weight", "self_attn.o_proj.weight", SRC_PLAIN, 2, H * Dv, D, 1);
        LS("self_attn.o_proj.weight", 2, D, H * Dv);
        LT("ffn_norm.weight", "post_attention_layernorm.weight", SRC_PLAIN, 1, D, 1, 1);
        LS("post_attention_layernorm.weight", 1, D, 0);
        if (il < c.Ld) {
            LT("ffn_gate.weight", "mlp.gate_proj.weight", SRC_PLAIN, 2, D, F, 1);
            LS("mlp.gate_proj.weight", 2, F, D);
            LT("ffn_up.weight", "mlp.up_proj.weight", SRC_PLAIN, 2, D, F, 1);
            LS("mlp.up_proj.weight", 2, F, D);
            LT("ffn_down.weight", "mlp.down_proj.weight", SRC_PLAIN, 2, F, D, 1);
            LS("mlp.down_proj.weight", 2, D, F);
        } else {
            LT("ffn_gate_inp.weight", "mlp.gate.weight", SRC_PLAIN, 2, D, E, 1);
            LS("mlp.gate.weight", 2, E, D);
            snprintf(sn, sizeof sn, "model.layers.%d.mlp.gate.e_score_correction_bias", il);
            if (moe_st_dir_find(d, sn)) {
                LT("exp_probs_b.bias", "mlp.gate.e_score_correction_bias", SRC_PLAIN, 1, E, 1, 1);
                LS("mlp.gate.e_score_correction_bias", 1, E, 0);
            }
            static const char *const pr[3] = {"gate_proj", "up_proj", "down_proj"};
            static const char *const gn[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
            static const char *const sh[3] = {"ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"};
            for (int k = 0; k < 3; k++) {
                char pat[96];
                snprintf(pat, sizeof pat, "mlp.experts.%%d.%s.weight", pr[k]);
                LT(gn[k], pat, SRC_EXPS, 3, k < 2 ? D : Fe, k < 2 ? Fe : D, E);
                for (int64_t e = 0; e < E && !bad; e++) {
                    char one[96];
                    snprintf(one, sizeof one, "mlp.experts.%lld.%s.weight", (long long)e, pr[k]);
                    LS(one, 2, k < 2 ? Fe : D, k < 2 ? D : Fe);
                }
                char one[96];
                snprintf(one, sizeof one, "mlp.shared_experts.%s.weight", pr[k]);
                LT(sh[k], one, SRC_PLAIN, 2, k < 2 ? D : Fe * S, k < 2 ? Fe * S : D, 1);
                LS(one, 2, k < 2 ? Fe * S : D, k < 2 ? D : Fe * S);
            }
        }
#undef LT
#undef LS
    }
#undef T
#undef SHAPE
    if (bad) {
        st = e2[0] ? MOE_ERR_FORMAT : MOE_ERR_NOMEM;
        snprintf(err, errlen, "convert: %s", e2[0] ? e2 : "out of memory");
        goto out;
    }
    /* every checkpoint tensor must be used: mark sources, skip MTP layers and FP8 scales */
    const int64_t n_src = moe_st_dir_n_tensors(d);
    used = calloc((size_t)n_src + 1, 1);
    if (!used) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    /* tensors are sorted by name: the bsearch position is the index */
    for (int64_t i = 0; i < n; i++) {
        for (int64_t e = 0; e < (t[i].kind == SRC_EXPS ? E : 1); e++) {
            char one[192];
            if (t[i].kind == SRC_EXPS) snprintf(one, sizeof one, t[i].src, (int)e);
            else snprintf(one, sizeof one, "%s", t[i].src);
            for (int k = 0; k < 2; k++) {
                if (k) strncat(one, "_scale_inv", sizeof one - strlen(one) - 1);
                int64_t lo = 0, hi = n_src;
                while (lo < hi) {
                    int64_t mid = lo + (hi - lo) / 2;
                    int cmp = strcmp(moe_st_dir_tensor_at(d, mid)->name, one);
                    if (!cmp) {
                        used[mid] = 1;
                        break;
                    }
                    if (cmp < 0) lo = mid + 1;
                    else hi = mid;
                }
            }
        }
    }
    int64_t n_mtp = 0, mtp_first = -1;
    for (int64_t i = 0; i < n_src; i++) {
        const char *sname = moe_st_dir_tensor_at(d, i)->name;
        if (used[i]) continue;
        int il = layer_of(sname);
        if (il >= c.L) {
            n_mtp++;
            if (mtp_first < 0 || il < mtp_first) mtp_first = il;
            continue;
        }
        if (strstr(sname, "rotary_emb.inv_freq")) continue;
        st = MOE_ERR_UNSUPPORTED;
        snprintf(err, errlen, "convert: checkpoint tensor '%.150s' has no place in a deepseek2 GGUF", sname);
        goto out;
    }
    if (n_mtp)
        note(&p, "skipping %lld tensors of MTP layer(s) from %lld on (num_hidden_layers = %d; llama.cpp drops them too)",
             (long long)n_mtp, (long long)mtp_first, c.L);
    if (is_fp8) note(&p, "FP8 weights: dequantized with their %lldx%lld block scales (weight_scale_inv)", (long long)blk[0], (long long)blk[1]);

    int64_t max_in = 1;
    uint64_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if ((st = moe_gguf_writer_add_tensor(w, t[i].name, t[i].type, t[i].n_dims, t[i].ne, NULL))) {
            snprintf(err, errlen, "convert: tensor '%s' rejected by the writer", t[i].name);
            goto out;
        }
        if (t[i].ne[0] > max_in) max_in = t[i].ne[0];
        total += moe_dtype_row_bytes(t[i].type, t[i].ne[0]) * (uint64_t)(t[i].ne[1] * t[i].ne[2]);
    }
    /* row buffer: ~16M floats, at least two kv_b heads' worth (for the k_b transpose) and one row */
    size_t want = (size_t)1 << 24, need = 2 * (size_t)(Dn > Dv ? Dn : Dv) * (size_t)Lkv + (size_t)Dn;
    if (want < need) want = need;
    if (want < (size_t)max_in) want = (size_t)max_in;
    cv = (conv){d, t, n, &c, malloc(sizeof(float) * want), want, e2, sizeof e2, &p, 0, total};
    if (!cv.rows) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    e2[0] = 0;
    char e3[512];
    st = moe_gguf_writer_write(w, out_path, fill, &cv, NULL, NULL, e3, sizeof e3);
    if (st) snprintf(err, errlen, "convert: %s", e2[0] ? e2 : e3);
out:
    free(cv.rows);
    free(used);
    free(t);
    moe_gguf_writer_free(w);
    moe_st_dir_close(d);
    return st;
}
