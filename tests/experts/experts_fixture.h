/* Models for the expert tests.
 *
 * fx_routed_model: a model whose routing is known by construction. Starting from
 * moe_init_write's random weights it is rewritten so that
 *   - token v's embedding is the one-hot vector at dimension c = v mod E,
 *   - every attention output, dense down-projection, shared and routed expert down-projection
 *     is zero, so the residual stream stays the embedding through every layer and the MoE input
 *     is g = rmsnorm(e_c) ∘ ffn_norm = sqrt(D) · ffn_norm[c] · e_c (ffn_norm > 0),
 *   - the router of MoE layer l (offset o = 2·(l − Ld)) has W[e][c] = 0.2 if e = (c+o) mod E,
 *     0.1 if e = (c+o+1) mod E, else 0, and exp_probs_b = 0,
 * so with top-2 routing token v selects exactly experts (c+o) mod E and (c+o+1) mod E in
 * layer l (logits 0.2a and 0.1a against 0 for all others, a > 0).
 *
 * fx_bias_model: random weights, but exp_probs_b of the listed experts is −100, so sigmoid
 * routing (scores in (0, 1)) never selects them. */
#ifndef EXPERTS_FIXTURE_H
#define EXPERTS_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "moe/gguf.h"
#include "moe/init.h"

static int fx_layer_of(const char *name, const char *suffix) {
    int l, n = 0;
    if (sscanf(name, "blk.%d.%n", &l, &n) != 1 || !n) return -1;
    return strcmp(name + n, suffix) ? -1 : l;
}

typedef struct {
    const moe_gguf *g;
    int32_t D, E, Ld;
    const int *bias_experts; /* fx_bias_model: experts to push away, -1 terminated */
    int routed;
} fx_ctx;

static int fx_fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    fx_ctx *c = ud;
    const moe_gguf_tensor *t = moe_gguf_tensor_at(c->g, i);
    char name[128];
    snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
    float *f = buf;
    const int32_t D = c->D, E = c->E;
    int l;
    if (!c->routed) {
        memcpy(buf, t->data, nbytes);
        if (fx_layer_of(name, "exp_probs_b.bias") >= 0)
            for (const int *e = c->bias_experts; *e >= 0; e++) f[*e] = -100.0f;
        return 0;
    }
    if (!strcmp(name, "token_embd.weight")) {
        memset(buf, 0, nbytes);
        for (int64_t v = 0; v < t->ne[1]; v++) f[v * D + v % E] = 1.0f;
    } else if (strstr(name, "attn_output.weight") || strstr(name, "ffn_down") || strstr(name, "exp_probs_b")) {
        memset(buf, 0, nbytes);
    } else if ((l = fx_layer_of(name, "ffn_gate_inp.weight")) >= 0) {
        memset(buf, 0, nbytes);
        int o = 2 * (l - c->Ld);
        for (int32_t cl = 0; cl < E; cl++) {
            f[(size_t)((cl + o) % E) * D + cl] = 0.2f;
            f[(size_t)((cl + o + 1) % E) * D + cl] = 0.1f;
        }
    } else {
        memcpy(buf, t->data, nbytes);
    }
    return 0;
}

/* Rewrite src into dst (routed = 1: routing by construction; else bias the listed experts away). */
static int fx_rewrite(const char *src, const char *dst, int routed, const int *bias_experts) {
    char err[512];
    moe_gguf *g;
    if (moe_gguf_open(src, &g, err, sizeof err)) {
        fprintf(stderr, "fixture: %s\n", err);
        return -1;
    }
    uint32_t D = 0, E = 0, Ld = 0;
    moe_gguf_get_u32(g, "deepseek2.embedding_length", &D);
    moe_gguf_get_u32(g, "deepseek2.expert_count", &E);
    moe_gguf_get_u32(g, "deepseek2.leading_dense_block_count", &Ld);
    moe_gguf_writer *w;
    int rc = moe_gguf_writer_init(&w) || moe_gguf_writer_copy_kv(w, g, NULL, NULL);
    for (int64_t i = 0; i < moe_gguf_n_tensors(g) && !rc; i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        if (routed && t->type != 0 /* F32 */) rc = -1;
        else rc = moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, t->ne, NULL);
    }
    fx_ctx c = {g, (int32_t)D, (int32_t)E, (int32_t)Ld, bias_experts, routed};
    if (!rc && moe_gguf_writer_write(w, dst, fx_fill, &c, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "fixture: %s\n", err);
        rc = -1;
    }
    moe_gguf_writer_free(w);
    moe_gguf_close(g);
    return rc;
}

/* tiny-shaped config: 3 layers (1 dense), 8 experts top-2, sigmoid + bias, f32 */
static moe_init_config fx_config(void) {
    moe_init_config cfg;
    moe_init_preset("tiny", &cfg);
    cfg.dtype = 0;
    cfg.seed = 7;
    cfg.n_ctx = 1024;
    return cfg;
}

/* moe_init_write + optional rewrite into dir/name.gguf; returns 0 on success */
static int fx_make(const char *dir, const char *name, const moe_init_config *cfg, int routed, const int *bias,
                   char *path, size_t n) {
    char raw[1024], err[512];
    snprintf(raw, sizeof raw, "%s/%s.raw.gguf", dir, name);
    snprintf(path, n, "%s/%s.gguf", dir, name);
    if (moe_init_write(cfg, NULL, raw, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "fixture: init: %s\n", err);
        return -1;
    }
    if (!routed && !bias) return rename(raw, path);
    return fx_rewrite(raw, path, routed, bias);
}

/* Run a shell command, return its exit status (or -1). */
static int fx_sh(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#endif
