/* moekit tests: turn a deepseek2 GGUF (from moe_init_write) back into a Hugging Face checkpoint
 * directory: config.json, the real DeepSeek-V3 tokenizer files, safetensors (BF16, sharded with
 * an index, or FP8 e4m3 with 128×128 block scales), plus a fake MTP layer that the converter
 * must skip. The inverse of spec deepseek2.md §3: experts unstacked, attn_k_b/attn_v_b merged
 * back into kv_b_proj. */
#ifndef MOE_TEST_HF_BUILD_H
#define MOE_TEST_HF_BUILD_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/safetensors.h"

typedef struct {
    char name[160];
    int64_t rows, cols; /* torch shape [rows, cols]; cols 0 = 1-D */
    float *data;        /* owned */
    int fp8;            /* store as F8_E4M3 + weight_scale_inv */
    int f32;            /* store as F32 (the GGUF tensor is F32: norms, router, bias) */
} hf_t;

typedef struct {
    hf_t *t;
    int n, cap;
} hf_list;

static hf_t *hf_add(hf_list *l, const char *name, int64_t rows, int64_t cols) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->t = realloc(l->t, sizeof *l->t * (size_t)l->cap);
    }
    hf_t *t = &l->t[l->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->rows = rows;
    t->cols = cols;
    t->data = calloc((size_t)(rows * (cols ? cols : 1)), sizeof(float));
    return t;
}

static void hf_free(hf_list *l) {
    for (int i = 0; i < l->n; i++) free(l->t[i].data);
    free(l->t);
}

static float *gguf_floats_t(const moe_gguf *g, const char *name, int64_t *ne, int *type) {
    const moe_gguf_tensor *t = moe_gguf_find_tensor(g, name);
    if (!t) return NULL;
    if (type) *type = t->type;
    int64_t n = t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    float *f = malloc(sizeof(float) * (size_t)n);
    size_t rb = moe_dtype_row_bytes(t->type, t->ne[0]);
    for (int64_t r = 0; r < n / t->ne[0]; r++)
        moe_dtype_dequant_row(t->type, (const uint8_t *)t->data + (size_t)r * rb, f + r * t->ne[0], t->ne[0]);
    if (ne) memcpy(ne, t->ne, sizeof t->ne);
    return f;
}

static float *gguf_floats(const moe_gguf *g, const char *name, int64_t *ne) {
    return gguf_floats_t(g, name, ne, NULL);
}

/* copy a GGUF tensor [ne0, ne1] as torch [ne1, ne0] */
static void hf_plain(hf_list *l, const moe_gguf *g, const char *gname, const char *hname, int fp8) {
    int64_t ne[4];
    int type = 0;
    float *f = gguf_floats_t(g, gname, ne, &type);
    if (!f) return;
    hf_t *t = hf_add(l, hname, ne[1] > 1 ? ne[1] : ne[0], ne[1] > 1 ? ne[0] : 0);
    memcpy(t->data, f, sizeof(float) * (size_t)(ne[0] * ne[1]));
    t->f32 = type == MOE_DTYPE_F32;
    t->fp8 = fp8 && ne[1] > 1 && !t->f32;
    free(f);
}

/* FP8 e4m3fn: nearest code (ties to even code), |x| <= 448 */
static uint8_t f8_encode(float x) {
    float a = fabsf(x);
    int best = 0;
    float bd = INFINITY;
    for (int c = 0; c < 127; c++) {
        float v = moe_st_f8e4m3_to_f32((uint8_t)c), dd = fabsf(v - a);
        if (dd < bd || (dd == bd && !(c & 1))) {
            bd = dd;
            best = c;
        }
    }
    return (uint8_t)(best | (x < 0 ? 0x80 : 0));
}

/* Write the HF directory. mode 0: BF16 in 3 shards + index; mode 1: FP8 weights (+ scale_inv),
 * one model.safetensors. Returns 0 on success. */
static int hf_build(const char *gguf_path, const moe_init_config *c, const char *dir, int mode, const char *shared_hf) {
    moe_gguf *g;
    char err[512], path[1024], nm[160], hn[160];
    if (moe_gguf_open(gguf_path, &g, err, sizeof err)) {
        fprintf(stderr, "hf_build: %s\n", err);
        return -1;
    }
    const int fp8 = mode == 1;
    hf_list l = {0};
    hf_plain(&l, g, "token_embd.weight", "model.embed_tokens.weight", 0);
    hf_plain(&l, g, "output_norm.weight", "model.norm.weight", 0);
    if (!c->tied) hf_plain(&l, g, "output.weight", "lm_head.weight", 0);
    const int64_t H = c->n_head, Dn = c->qk_nope, Dv = c->v_head, Lkv = c->kv_lora_rank, E = c->n_expert, Fe = c->n_ff_exp;
    static const char *const map[][2] = {
        {"attn_norm.weight", "input_layernorm.weight"},
        {"attn_q_a.weight", "self_attn.q_a_proj.weight"},
        {"attn_q_a_norm.weight", "self_attn.q_a_layernorm.weight"},
        {"attn_q_b.weight", "self_attn.q_b_proj.weight"},
        {"attn_q.weight", "self_attn.q_proj.weight"},
        {"attn_kv_a_mqa.weight", "self_attn.kv_a_proj_with_mqa.weight"},
        {"attn_kv_a_norm.weight", "self_attn.kv_a_layernorm.weight"},
        {"attn_output.weight", "self_attn.o_proj.weight"},
        {"ffn_norm.weight", "post_attention_layernorm.weight"},
        {"ffn_gate.weight", "mlp.gate_proj.weight"},
        {"ffn_up.weight", "mlp.up_proj.weight"},
        {"ffn_down.weight", "mlp.down_proj.weight"},
        {"ffn_gate_inp.weight", "mlp.gate.weight"},
        {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias"},
        {"ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight"},
        {"ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight"},
        {"ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight"},
    };
    for (int il = 0; il < c->n_layer; il++) {
        for (size_t k = 0; k < sizeof map / sizeof map[0]; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s", il, map[k][0]);
            snprintf(hn, sizeof hn, "model.layers.%d.%s", il, map[k][1]);
            int is_router = strstr(map[k][0], "gate_inp") != NULL;
            hf_plain(&l, g, nm, hn, fp8 && !is_router);
        }
        /* kv_b_proj [H·(Dn+Dv), Lkv] from attn_k_b (Dn, Lkv, H) and attn_v_b (Lkv, Dv, H) */
        snprintf(nm, sizeof nm, "blk.%d.attn_k_b.weight", il);
        float *kb = gguf_floats(g, nm, NULL);
        snprintf(nm, sizeof nm, "blk.%d.attn_v_b.weight", il);
        float *vb = gguf_floats(g, nm, NULL);
        snprintf(hn, sizeof hn, "model.layers.%d.self_attn.kv_b_proj.weight", il);
        hf_t *kv = hf_add(&l, hn, H * (Dn + Dv), Lkv);
        kv->fp8 = fp8;
        for (int64_t h = 0; h < H; h++)
            for (int64_t r = 0; r < Lkv; r++) {
                for (int64_t d = 0; d < Dn; d++) kv->data[(h * (Dn + Dv) + d) * Lkv + r] = kb[(h * Lkv + r) * Dn + d];
                for (int64_t e = 0; e < Dv; e++) kv->data[(h * (Dn + Dv) + Dn + e) * Lkv + r] = vb[(h * Dv + e) * Lkv + r];
            }
        free(kb);
        free(vb);
        if (il >= c->n_layer_dense) {
            static const char *const ex[3][2] = {{"ffn_gate_exps.weight", "gate_proj"}, {"ffn_up_exps.weight", "up_proj"},
                                                 {"ffn_down_exps.weight", "down_proj"}};
            for (int k = 0; k < 3; k++) {
                int64_t ne[4];
                snprintf(nm, sizeof nm, "blk.%d.%s", il, ex[k][0]);
                float *f = gguf_floats(g, nm, ne);
                for (int64_t e = 0; e < E; e++) {
                    snprintf(hn, sizeof hn, "model.layers.%d.mlp.experts.%lld.%s.weight", il, (long long)e, ex[k][1]);
                    hf_t *t = hf_add(&l, hn, ne[1], ne[0]);
                    t->fp8 = fp8;
                    memcpy(t->data, f + e * ne[0] * ne[1], sizeof(float) * (size_t)(ne[0] * ne[1]));
                }
                (void)Fe;
                free(f);
            }
        }
    }
    /* a fake MTP layer (index n_layer) the converter must skip */
    snprintf(hn, sizeof hn, "model.layers.%d.eh_proj.weight", c->n_layer);
    hf_add(&l, hn, c->n_embd, 2 * c->n_embd);
    snprintf(hn, sizeof hn, "model.layers.%d.enorm.weight", c->n_layer);
    hf_add(&l, hn, c->n_embd, 0);
    moe_gguf_close(g);

    /* tensors -> safetensors records */
    int n_rec = 0;
    moe_st_wtensor *rec = calloc((size_t)l.n * 2, sizeof *rec);
    int64_t(*shapes)[2] = calloc((size_t)l.n * 2, sizeof *shapes);
    void **bufs = calloc((size_t)l.n * 2, sizeof *bufs);
    char(*names)[192] = calloc((size_t)l.n * 2, sizeof *names);
    for (int i = 0; i < l.n; i++) {
        hf_t *t = &l.t[i];
        int64_t n = t->rows * (t->cols ? t->cols : 1);
        shapes[n_rec][0] = t->rows;
        shapes[n_rec][1] = t->cols;
        snprintf(names[n_rec], sizeof names[0], "%s", t->name);
        if (t->f32) {
            float *b = malloc(4 * (size_t)n);
            memcpy(b, t->data, 4 * (size_t)n);
            bufs[n_rec] = b;
            rec[n_rec] = (moe_st_wtensor){names[n_rec], MOE_ST_F32, t->cols ? 2 : 1, shapes[n_rec], b};
            n_rec++;
            continue;
        }
        if (!t->fp8) {
            uint16_t *b = malloc(2 * (size_t)n);
            for (int64_t k = 0; k < n; k++) b[k] = moe_f32_to_bf16(t->data[k]);
            bufs[n_rec] = b;
            rec[n_rec] = (moe_st_wtensor){names[n_rec], MOE_ST_BF16, t->cols ? 2 : 1, shapes[n_rec], b};
            n_rec++;
            continue;
        }
        const int64_t R = t->rows, C = t->cols, sr = (R + 127) / 128, sc = (C + 127) / 128;
        uint8_t *q = malloc((size_t)n);
        float *s = malloc(sizeof(float) * (size_t)(sr * sc));
        for (int64_t bi = 0; bi < sr; bi++)
            for (int64_t bj = 0; bj < sc; bj++) {
                float amax = 0;
                for (int64_t r = bi * 128; r < R && r < bi * 128 + 128; r++)
                    for (int64_t cc = bj * 128; cc < C && cc < bj * 128 + 128; cc++) amax = fmaxf(amax, fabsf(t->data[r * C + cc]));
                float scale = amax > 0 ? amax / 448.0f : 1.0f;
                s[bi * sc + bj] = scale;
                for (int64_t r = bi * 128; r < R && r < bi * 128 + 128; r++)
                    for (int64_t cc = bj * 128; cc < C && cc < bj * 128 + 128; cc++) q[r * C + cc] = f8_encode(t->data[r * C + cc] / scale);
            }
        bufs[n_rec] = q;
        rec[n_rec] = (moe_st_wtensor){names[n_rec], MOE_ST_F8_E4M3, 2, shapes[n_rec], q};
        n_rec++;
        shapes[n_rec][0] = sr;
        shapes[n_rec][1] = sc;
        snprintf(names[n_rec], sizeof names[0], "%s_scale_inv", t->name);
        bufs[n_rec] = s;
        rec[n_rec] = (moe_st_wtensor){names[n_rec], MOE_ST_F32, 2, shapes[n_rec], s};
        n_rec++;
    }
    int rc = 0;
    static const char *const meta[] = {"format", "pt", NULL};
    if (mode == 0) {
        /* 3 shards, tensors dealt round-robin-ish in contiguous runs, plus the index */
        FILE *ix;
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        ix = fopen(path, "w");
        fprintf(ix, "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {");
        int per = (n_rec + 2) / 3;
        for (int s = 0; s < 3 && !rc; s++) {
            int a = s * per, b = a + per < n_rec ? a + per : n_rec;
            char fn[64];
            snprintf(fn, sizeof fn, "model-%05d-of-00003.safetensors", s + 1);
            snprintf(path, sizeof path, "%s/%s", dir, fn);
            if (b > a && moe_st_write(path, rec + a, (size_t)(b - a), meta, err, sizeof err)) {
                fprintf(stderr, "hf_build: %s\n", err);
                rc = -1;
            }
            for (int i = a; i < b; i++) fprintf(ix, "%s\"%s\": \"%s\"", i ? ", " : "", rec[i].name, fn);
        }
        fprintf(ix, "}}\n");
        fclose(ix);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (moe_st_write(path, rec, (size_t)n_rec, meta, err, sizeof err)) {
            fprintf(stderr, "hf_build: %s\n", err);
            rc = -1;
        }
    }
    for (int i = 0; i < n_rec; i++) free(bufs[i]);
    free(bufs);
    free(rec);
    free(shapes);
    free(names);
    hf_free(&l);

    /* config.json */
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fprintf(f,
            "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n"
            "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"moe_intermediate_size\": %d,\n"
            "  \"num_hidden_layers\": %d,\n  \"num_nextn_predict_layers\": 1,\n  \"num_attention_heads\": %d,\n"
            "  \"num_key_value_heads\": %d,\n  \"n_shared_experts\": %d,\n  \"n_routed_experts\": %d,\n"
            "  \"routed_scaling_factor\": %g,\n  \"kv_lora_rank\": %d,\n  \"q_lora_rank\": %d,\n  \"qk_rope_head_dim\": %d,\n"
            "  \"v_head_dim\": %d,\n  \"qk_nope_head_dim\": %d,\n  \"topk_method\": \"noaux_tc\",\n  \"n_group\": %d,\n"
            "  \"topk_group\": %d,\n  \"num_experts_per_tok\": %d,\n  \"first_k_dense_replace\": %d,\n"
            "  \"norm_topk_prob\": %s,\n  \"scoring_func\": \"%s\",\n  \"hidden_act\": \"silu\",\n"
            "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %g,\n  \"rope_theta\": %g,\n"
            "  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\",\n",
            c->n_vocab, c->n_embd, c->n_ff, c->n_ff_exp, c->n_layer, c->n_head, c->n_head, c->n_expert_shared, c->n_expert,
            c->scale, c->kv_lora_rank, c->q_lora_rank, c->qk_rope, c->v_head, c->qk_nope, c->n_group, c->n_group_used,
            c->n_expert_used, c->n_layer_dense, c->norm_topk ? "true" : "false", c->gating == 2 ? "sigmoid" : "softmax",
            c->n_ctx, c->rms_eps, c->rope_theta);
    if (fp8)
        fprintf(f, "  \"quantization_config\": {\"activation_scheme\": \"dynamic\", \"fmt\": \"e4m3\", \"quant_method\": \"fp8\", "
                   "\"weight_block_size\": [128, 128]},\n");
    fprintf(f,
            "  \"rope_scaling\": {\"beta_fast\": 32, \"beta_slow\": 1, \"factor\": %g, \"mscale\": %g, \"mscale_all_dim\": %g, "
            "\"original_max_position_embeddings\": %d, \"type\": \"yarn\"}\n}\n",
            c->yarn_factor, c->mscale_all_dim, c->mscale_all_dim, c->yarn_orig_ctx);
    fclose(f);
    /* the real tokenizer files */
    static const char *const tf[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int k = 0; k < 2; k++) {
        char src[1024];
        snprintf(src, sizeof src, "%s/%s", shared_hf, tf[k]);
        size_t len;
        char *b = tu_read_file(src, &len);
        if (!b) {
            fprintf(stderr, "hf_build: cannot read %s\n", src);
            return -1;
        }
        snprintf(path, sizeof path, "%s/%s", dir, tf[k]);
        FILE *o = fopen(path, "wb");
        fwrite(b, 1, len, o);
        fclose(o);
        free(b);
    }
    return rc;
}

#endif
