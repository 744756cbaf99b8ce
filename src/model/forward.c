/* moekit model: the deepseek2 forward pass over one engine step (spec deepseek2.md §4).
 *
 * A step takes B ≤ n_batch tokens from one or more sequences; token t sits at position
 * tok_pos[t] of its own sequence and attends to that sequence's cache only:
 *   x = embed(tokens)                                              (B, D)
 *   per layer: h = rmsnorm(x); MLA attention (absorbed: the cache holds [c_kv, k_pe] per token,
 *   queries are mapped into the latent space by k_b, values come out through v_b); x += attn;
 *   h = rmsnorm(x); x += dense FFN(h) or shared experts(h) + Σ_j w_j·expert_j(h)
 *   logits = output · rmsnorm(x)
 * MoE tokens are grouped by expert so each selected expert's weights are read once per step;
 * experts nobody selected are never touched. Every matrix product runs once over all B tokens,
 * whatever sequence they come from, so a batch of decoding sequences reads each weight (and
 * each selected expert) once per step. All buffers belong to the engine (batch.c) and are
 * carved at its creation; a step allocates nothing. The result for a token does not depend on
 * which other tokens share its step (every product is computed per (row, token)). */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/clock.h"
#include "model/model_impl.h"
#include "moe/dtype.h"

/* ---- step profile (moe_engine_profile): wall time and weight bytes per phase ---- */

/* a phase starts: its clock when profiling, and its tag for a weight-read trace (moe bench --ceiling) */
static inline double ph_begin_tag(const moe_engine *c, moe_phase ph) {
    moe_kern_trace_tag((int)ph);
    return c->prof ? moe_now() : 0.0;
}
static inline double ph_begin(const moe_engine *c) { return c->prof ? moe_now() : 0.0; }
static inline void ph_end(moe_engine *c, moe_phase ph, double t0, double bytes) {
    if (!c->prof) return;
    c->prof_s[ph] += moe_now() - t0;
    c->prof_b[ph] += bytes;
    c->prof_n[ph]++;
}
static double w_bytes(const moe_wview *w) { return (double)w->out * (double)w->row_bytes; }
static double set_bytes(const moe_kern_prod *p, int n) {
    double b = 0;
    for (int i = 0; i < n; i++) b += w_bytes(p[i].w);
    return b;
}
/* a profiled product set / product */
#define SET(ph, p, n)                                                                                                 \
    do {                                                                                                              \
        double t0_ = ph_begin_tag(c, (ph));                                                                           \
        moe_kern_matmul_set(c->pool, (p), (n), &c->ws);                                                               \
        ph_end(c, (ph), t0_, c->prof ? set_bytes((p), (n)) : 0);                                                      \
    } while (0)

/* ---- per-token work over the pool (prefill, large batches) ----
 * The element-wise steps between products (norms, residual adds, SwiGLU, the experts' weighted
 * sums) ran on the calling thread while the others waited: ~9 % of a 512-token prefill. With
 * many rows each thread takes a contiguous range of them; every row's arithmetic is the serial
 * loop's, in the same order, so results do not change. */
#define TOK_PAR_MIN 8 /* rows below which the hand-off costs more than it saves */
typedef void (*rows_fn)(moe_engine *c, const void *ctx, int64_t r0, int64_t r1);
typedef struct {
    moe_engine *c;
    rows_fn fn;
    const void *ctx;
    int64_t n;
} rows_job;

static void rows_worker(void *arg, int ith, int nth) {
    const rows_job *j = arg;
    const int64_t r0 = j->n * ith / nth, r1 = j->n * (ith + 1) / nth;
    if (r0 < r1) j->fn(j->c, j->ctx, r0, r1);
}

static void rows_par(moe_engine *c, int64_t n, rows_fn fn, const void *ctx) {
    if (n < TOK_PAR_MIN || moe_pool_n_threads(c->pool) < 2) {
        fn(c, ctx, 0, n);
        return;
    }
    rows_job j = {c, fn, ctx, n};
    moe_pool_run(c->pool, rows_worker, &j);
}

/* h[t] = rmsnorm(x[t]) · w */
static void rows_norm(moe_engine *c, const void *w, int64_t t0, int64_t t1) {
    const int64_t D = c->m->hp.n_embd;
    for (int64_t t = t0; t < t1; t++) moe_kern_rmsnorm(c->h + t * D, c->x + t * D, w, D, c->m->hp.rms_eps);
}

/* x[t] += t0[t] */
static void rows_resid(moe_engine *c, const void *unused, int64_t t0, int64_t t1) {
    const int64_t D = c->m->hp.n_embd;
    (void)unused;
    for (int64_t i = t0 * D; i < t1 * D; i++) c->x[i] += c->t0[i];
}

/* SwiGLU of rows [r0, r1) of (a, b, width) */
typedef struct {
    float *a;
    const float *b;
    int64_t w;
} swiglu_rows;
/* hq[t] = h[t] as activation blocks (moe_kern_quant_act) */
static void rows_quant(moe_engine *c, const void *ctx, int64_t t0, int64_t t1) {
    const int64_t D = c->m->hp.n_embd;
    (void)ctx;
    for (int64_t t = t0; t < t1; t++) moe_kern_quant_act(c->h + t * D, c->hq + t * (D / 32), D);
}

static void rows_swiglu(moe_engine *c, const void *ctx, int64_t r0, int64_t r1) {
    const swiglu_rows *s = ctx;
    (void)c;
    for (int64_t r = r0; r < r1; r++) moe_kern_swiglu(s->a + r * s->w, s->b + r * s->w, s->w);
}

/* ---- RoPE (spec §4.5): cos/sin per token and pair, llama.cpp's float arithmetic ---- */

static float yarn_corr(int R, int n_ctx_orig, float nrot, float base) {
    return (float)R * logf((float)n_ctx_orig / (nrot * 2.0f * (float)M_PI)) / (2.0f * logf(base));
}

static void rope_table(const moe_hparams *hp, const int32_t *pos, int64_t B, float *cs /* (B, R) */) {
    const int R = hp->n_rot;
    const float theta_scale = powf(hp->rope_freq_base, -2.0f / (float)R);
    const float fs = hp->rope_freq_scale, ext = hp->rope_ext_factor;
    float lo = floorf(yarn_corr(R, hp->n_ctx_orig_yarn, 32.0f, hp->rope_freq_base));
    float hi = ceilf(yarn_corr(R, hp->n_ctx_orig_yarn, 1.0f, hp->rope_freq_base));
    lo = lo > 0.0f ? lo : 0.0f;
    hi = hi < (float)(R - 1) ? hi : (float)(R - 1);
    float mag = hp->rope_attn_factor;
    if (ext != 0.0f) mag *= 1.0f + 0.1f * logf(1.0f / fs);
    for (int64_t t = 0; t < B; t++) {
        float theta_extrap = (float)pos[t];
        for (int j = 0; j < R / 2; j++) {
            float theta_interp = fs * theta_extrap, theta = theta_interp;
            if (ext != 0.0f) {
                float y = ((float)j - lo) / fmaxf(0.001f, hi - lo);
                float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, y));
                float mix = ramp * ext;
                theta = theta_interp * (1.0f - mix) + theta_extrap * mix;
            }
            cs[t * R + 2 * j] = cosf(theta) * mag;
            cs[t * R + 2 * j + 1] = sinf(theta) * mag;
            theta_extrap *= theta_scale;
        }
    }
}

static void rope_apply(float *z, const float *cs, int R) {
    for (int j = 0; j < R / 2; j++) {
        float c = cs[2 * j], s = cs[2 * j + 1], a = z[2 * j], b = z[2 * j + 1];
        z[2 * j] = a * c - b * s;
        z[2 * j + 1] = a * s + b * c;
    }
}

/* The cache of token t's sequence at layer il, rows of W = Lkv+R floats in blocks of
 * MOE_KV_BLOCK (kern.h's moe_kv_row with ldc = W and bs = kv_bs(c)): a sequence's cache holds
 * a block of every layer side by side, block after block (batch.c) */
static inline float *tok_layer_cache(const moe_engine *c, int64_t t, int il) {
    const moe_hparams *hp = &c->m->hp;
    return c->tok_cache[t] + (size_t)il * MOE_KV_BLOCK * (size_t)(hp->kv_lora_rank + hp->n_rot);
}
static inline int64_t kv_bs(const moe_engine *c) { return moe_kv_block_floats(&c->m->hp); }

/* ---- attention over the latent cache: one (token, group of up to 16 heads) per work item ----
 * moe_kern_mla_attn keeps the group's heads in vector lanes, so every cache row is read once
 * per group instead of once per head. Items are taken from a shared counter: under causal
 * prefill a token's cost grows with its position, and a fixed split would leave one thread
 * the long tail. Results do not depend on who takes an item. */

typedef struct {
    moe_engine *c;
    int il;
    int64_t B;
    _Alignas(64) _Atomic int64_t next;
} attn_job;

/* the rope parts of token t's absorbed queries, heads h0.. (16 or what is left): q_pe copied
 * after q̃ and rotated (on the workers, item by item: serially it took ~40 µs per layer at
 * batch 16 and ~0.8 ms in a 512-token prefill) */
static void q_pe_rope(moe_engine *c, int64_t t, int64_t h0) {
    const moe_hparams *hp = &c->m->hp;
    const int64_t H = hp->n_head, Lkv = hp->kv_lora_rank, R = hp->n_rot, W = Lkv + R, Dk = hp->n_embd_head_k,
                  Dn = c->m->dn, h1 = h0 + 16 < H ? h0 + 16 : H;
    for (int64_t hh = h0; hh < h1; hh++) {
        float *qpe = c->qt + (t * H + hh) * W + Lkv;
        memcpy(qpe, c->q + t * H * Dk + hh * Dk + Dn, (size_t)R * sizeof(float));
        rope_apply(qpe, c->rope + t * R, (int)R);
    }
}

static void attn_worker(void *arg, int ith, int nth) {
    attn_job *j = arg;
    moe_engine *c = j->c;
    const moe_hparams *hp = &c->m->hp;
    const int64_t H = hp->n_head, Lkv = hp->kv_lora_rank, W = Lkv + hp->n_rot, G = (H + 15) / 16;
    float *sc = c->scores + (size_t)ith * c->scores_cap;
    (void)nth;
    for (;;) {
        int64_t it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (it >= j->B * G) break;
        int64_t t = it / G, h0 = (it % G) * 16;
        int hn = (int)(H - h0 < 16 ? H - h0 : 16);
        q_pe_rope(c, t, h0);
        /* queries [q̃ (Lkv), q_pe (R)] of heads h0.., keys at positions <= pos of t (causal) */
        moe_kern_mla_attn(c->qt + (t * H + h0) * W, W, hn, tok_layer_cache(c, t, j->il), W, kv_bs(c), W, c->tok_pos[t] + 1, Lkv,
                          hp->kq_scale, sc, c->u + (t * H + h0) * Lkv, Lkv);
    }
}

/* One long (token, heads) item spread over all threads: keys split for the scores and the exps,
 * columns for the values (moe_kern_mla_* phases, bit-identical to the whole call). Used when a step has fewer
 * items than threads (one sequence decoding), where one item would otherwise run on one thread
 * while the others wait: at 2,048 tokens of context that is most of a decode step's attention. */
typedef struct {
    const float *cache;
    float *sc, *u;
    int64_t ldc, bs, W, n, Lkv;
    int hn;
    float scale, m[16];
} split_job;

static void split_scores(void *arg, int ith, int nth) {
    split_job *j = arg;
    int64_t k0 = j->n * ith / nth / 8 * 8, k1 = ith == nth - 1 ? j->n : j->n * (ith + 1) / nth / 8 * 8;
    if (k0 < k1) moe_kern_mla_scores(j->cache, j->ldc, j->bs, j->W, k0, k1, j->scale, j->sc);
}

static void split_exp(void *arg, int ith, int nth) {
    split_job *j = arg;
    int64_t k0 = j->n * ith / nth, k1 = j->n * (ith + 1) / nth;
    if (k0 < k1) moe_kern_mla_exp(j->hn, j->W, k0, k1, j->m, j->sc);
}

static void split_values(void *arg, int ith, int nth) {
    split_job *j = arg;
    int64_t p = j->Lkv / 64, c0 = p * ith / nth * 64, c1 = ith == nth - 1 ? j->Lkv : p * (ith + 1) / nth * 64;
    if (c0 < c1) moe_kern_mla_values(j->hn, j->cache, j->ldc, j->bs, j->W, j->n, c0, c1, j->sc, j->u, j->Lkv);
}

static void attn_split(moe_engine *c, int il, int64_t t, int64_t h0) {
    const moe_hparams *hp = &c->m->hp;
    const int64_t H = hp->n_head, Lkv = hp->kv_lora_rank, W = Lkv + hp->n_rot;
    split_job j = {tok_layer_cache(c, t, il), c->scores, c->u + (t * H + h0) * Lkv, W, kv_bs(c), W, c->tok_pos[t] + 1, Lkv,
                   (int)(H - h0 < 16 ? H - h0 : 16), hp->kq_scale, {0}};
    moe_kern_mla_prep(c->qt + (t * H + h0) * W, W, j.hn, W, j.sc);
    moe_pool_run(c->pool, split_scores, &j);
    moe_kern_mla_max(j.hn, W, j.n, j.sc, j.m);
    moe_pool_run(c->pool, split_exp, &j);
    moe_kern_mla_norm(j.hn, W, j.n, j.sc);
    moe_pool_run(c->pool, split_values, &j);
}

/* y = W·x for per-head (or per-expert) slice k */
static moe_wview slice(const sliced_w *s, int64_t k) {
    moe_wview w = s->w;
    w.data += (size_t)k * s->stride;
    return w;
}

#define MM(ph, w, x, ldx, y, ldy, T)                                                                                  \
    do {                                                                                                              \
        double t0_ = ph_begin_tag(c, (ph));                                                                           \
        moe_kern_matmul(c->pool, (w), (x), (ldx), (y), (ldy), (T), &c->ws);                                           \
        ph_end(c, (ph), t0_, w_bytes(w));                                                                             \
    } while (0)

/* token t's cache row at layer il: [rmsnorm(c_kv), rope(k_pe)] from kv_a's output */
typedef struct {
    const layer_w *ly;
    int il;
} kv_rows;
static void rows_kv(moe_engine *c, const void *ctx, int64_t t0, int64_t t1) {
    const kv_rows *k = ctx;
    const moe_hparams *hp = &c->m->hp;
    const int64_t Lkv = hp->kv_lora_rank, R = hp->n_rot, W = Lkv + R;
    for (int64_t t = t0; t < t1; t++) {
        float *row = (float *)moe_kv_row(tok_layer_cache(c, t, k->il), W, kv_bs(c), c->tok_pos[t]);
        moe_kern_rmsnorm(row, c->kvb + t * W, k->ly->kv_a_norm, Lkv, hp->rms_eps);
        memcpy(row + Lkv, c->kvb + t * W + Lkv, (size_t)R * sizeof(float));
        rope_apply(row + Lkv, c->rope + t * R, (int)R);
    }
}

static void attention(moe_engine *c, const layer_w *ly, int il, int64_t B) {
    const moe_model *m = c->m;
    const moe_hparams *hp = &m->hp;
    const int64_t D = hp->n_embd, H = hp->n_head, Lq = hp->q_lora_rank, Lkv = hp->kv_lora_rank, R = hp->n_rot,
                  Dk = hp->n_embd_head_k, Dv = hp->n_embd_head_v, W = Lkv + R;
    /* h: (B, D) normed input; q (or q_a) and kv_a share one quantization of h and one job */
    if (Lq > 0) {
        moe_kern_prod p[2] = {{&ly->q_a, c->h, D, c->qa, Lq, B, NULL}, {&ly->kv_a, c->h, D, c->kvb, W, B, NULL}}; /* (B, Lq), (B, W) */
        SET(MOE_PHASE_ATTN_IN, p, 2);
        for (int64_t t = 0; t < B; t++) moe_kern_rmsnorm(c->qa + t * Lq, c->qa + t * Lq, ly->q_a_norm, Lq, hp->rms_eps);
        MM(MOE_PHASE_ATTN_QB, &ly->q_b, c->qa, Lq, c->q, H * Dk, B); /* (B, H·Dk) */
    } else {
        moe_kern_prod p[2] = {{&ly->q, c->h, D, c->q, H * Dk, B, NULL}, {&ly->kv_a, c->h, D, c->kvb, W, B, NULL}}; /* (B, H·Dk), (B, W) */
        SET(MOE_PHASE_ATTN_IN, p, 2);
    }
    const kv_rows kr = {ly, il};
    rows_par(c, B, rows_kv, &kr);
    /* absorbed queries: qt[t][h] = [k_b_h · q_nope (Lkv), rope(q_pe) (R)] */
    /* all heads' k_b products as one job */
    for (int64_t hh = 0; hh < H; hh++) {
        c->wv[hh] = slice(&ly->k_b, hh);
        c->prods[hh] = (moe_kern_prod){&c->wv[hh], c->q + hh * Dk, H * Dk, c->qt + hh * W, H * W, B, NULL};
    }
    SET(MOE_PHASE_ATTN_KB, c->prods, (int)H);
    const int64_t G = (H + 15) / 16, nth = moe_pool_n_threads(c->pool);
    int64_t longest = 0;
    double keys = 0, t0 = ph_begin(c);
    for (int64_t t = 0; t < B; t++) {
        longest = c->tok_pos[t] + 1 > longest ? c->tok_pos[t] + 1 : longest;
        keys += (double)c->tok_pos[t] + 1;
    }
    if (nth > 1 && B * G < nth && longest >= 256 && moe_kern_level() > 0) {
        for (int64_t it = 0; it < B * G; it++) {
            q_pe_rope(c, it / G, (it % G) * 16);
            attn_split(c, il, it / G, (it % G) * 16);
        }
    } else { /* the workers rope their items' q_pe */
        attn_job aj = {c, il, B, 0};
        atomic_init(&aj.next, 0);
        moe_pool_run(c->pool, attn_worker, &aj);
    }
    ph_end(c, MOE_PHASE_ATTN_CORE, t0, keys * (double)W * sizeof(float));
    /* values out of the latent: o[t][h] = v_b_h · u[t][h] */
    for (int64_t hh = 0; hh < H; hh++) {
        c->wv[hh] = slice(&ly->v_b, hh);
        c->prods[hh] = (moe_kern_prod){&c->wv[hh], c->u + hh * Lkv, H * Lkv, c->o + hh * Dv, H * Dv, B, NULL};
    }
    SET(MOE_PHASE_ATTN_VB, c->prods, (int)H);
    MM(MOE_PHASE_ATTN_OUT, &ly->attn_out, c->o, H * Dv, c->t0, D, B); /* (B, D) */
    rows_par(c, B, rows_resid, NULL);
}

/* SwiGLU MLP on T rows: out = down · (silu(gate · in) ⊙ (up · in)) */
static void mlp(moe_engine *c, const moe_wview *gate, const moe_wview *up, const moe_wview *down, const float *in,
                float *out, int64_t T) {
    const int64_t D = c->m->hp.n_embd, F = gate->out;
    moe_kern_prod p[2] = {{gate, in, D, c->fa, F, T, NULL}, {up, in, D, c->fb, F, T, NULL}}; /* one job, one quantization */
    SET(MOE_PHASE_DENSE_UP, p, 2);
    const swiglu_rows sw = {c->fa, c->fb, F};
    rows_par(c, T, rows_swiglu, &sw);
    MM(MOE_PHASE_DENSE_DOWN, down, c->fa, F, out, D, T);
}

/* Routing of one token (spec §4.11 steps 2–6): selected experts and their weights. */
static void route(const moe_hparams *hp, const float *bias, float *logit /* (E), clobbered */, int32_t *sel,
                  float *w) {
    const int E = hp->n_expert, K = hp->n_expert_used;
    float s[1024], sigma[1024];
    switch (hp->gating_func) {
    case 2:
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
        break;
    case 3:
        for (int e = 0; e < E; e++) s[e] = logit[e];
        break;
    case 4:
        for (int e = 0; e < E; e++) s[e] = sqrtf(logit[e] > 20.0f ? logit[e] : log1pf(expf(logit[e])));
        break;
    default:
        memcpy(s, logit, (size_t)E * sizeof(float));
        moe_kern_softmax(s, E);
        break;
    }
    for (int e = 0; e < E; e++) sigma[e] = bias ? s[e] + bias[e] : s[e];
    const int G = hp->n_expert_groups;
    if (G > 1) {
        const int per = E / G;
        float gscore[1024];
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b = -INFINITY; /* two largest */
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sigma[e] > a) {
                    b = a;
                    a = sigma[e];
                } else if (sigma[e] > b) {
                    b = sigma[e];
                }
            }
            gscore[g] = per > 1 ? a + b : a;
        }
        int keep[1024] = {0};
        for (int k = 0; k < hp->n_group_used; k++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < G; g++)
            if (!keep[g])
                for (int e = g * per; e < (g + 1) * per; e++) sigma[e] = -INFINITY;
    }
    /* top-K by sigma, descending; ties keep the lower index */
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int q = 0; q < k; q++) taken |= sel[q] == e;
            if (!taken && (best < 0 || sigma[e] > sigma[best])) best = e;
        }
        sel[k] = best;
        w[k] = s[best];
    }
    if (hp->gating_func == 3) moe_kern_softmax(w, K);
    if (hp->expert_weights_norm) {
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += w[k];
        sum = sum > 6.103515625e-5f ? sum : 6.103515625e-5f;
        for (int k = 0; k < K; k++) w[k] /= sum;
    }
    if (hp->expert_weights_scale != 0.0f && hp->expert_weights_scale != 1.0f)
        for (int k = 0; k < K; k++) w[k] *= hp->expert_weights_scale;
}

/* x[t] += shared output (if any), then Σ_j w_j · expert_j output in ascending expert order, for
 * tokens [t0, t1) (each token's additions in the serial loop's order) */
static void rows_moe_out(moe_engine *c, const void *shared, int64_t t0, int64_t t1) {
    const int64_t D = c->m->hp.n_embd, E = c->m->hp.n_expert;
    if (*(const int *)shared) rows_resid(c, NULL, t0, t1);
    for (int64_t e = 0; e < E; e++) {
        const int32_t off = c->ex_off[e], n = c->ex_off[e + 1] - off;
        for (int32_t j = 0; j < n; j++) {
            const int64_t t = c->ex_tok[off + j];
            if (t >= t0 && t < t1) moe_kern_axpy(c->x + (size_t)t * D, c->ex_w[off + j], c->ye + (size_t)(off + j) * D, D);
        }
    }
}

/* Routed and shared experts in three pool jobs whatever the number of experts selected:
 *   1. the router
 *   2. shared gate+up and the gate+up of every selected expert (the rows of all of them split
 *      across the threads: in a batch the shared products are compute-bound and the routed
 *      ones stream, so one thread computes while the other streams)
 *   3. shared down and every selected expert's down
 * Expert e's tokens take slots [ex_off[e], ex_off[e+1]) of the (B·K)-row buffers xe (its
 * gathered inputs; not needed when its tokens are consecutive, e.g. any expert at B = 1), the
 * expert part of fa/fb (B·Fe·S floats in) and ye. x gets the shared output, then the experts'
 * weighted outputs in ascending expert order (the order of one expert at a time). */
static void moe_ffn(moe_engine *c, const layer_w *ly, int il, int64_t B) {
    const moe_hparams *hp = &c->m->hp;
    const int64_t D = hp->n_embd, E = hp->n_expert, K = hp->n_expert_used;
    const int64_t Fe = ly->gate_exps.w.out, FS = hp->n_expert_shared > 0 ? ly->gate_sh.out : 0;
    float *fa_e = c->fa + B * FS, *fb_e = c->fb + B * FS; /* (B·K, Fe) expert slots */
    moe_kern_prod *p = c->prods;
    int np = 0;
    p[np++] = (moe_kern_prod){&ly->gate_inp, c->h, D, c->router, E, B, NULL}; /* (B, E) */
    SET(MOE_PHASE_ROUTER, p, np);
    uint64_t *cnt = c->counts + (size_t)il * (size_t)E;
    for (int64_t e = 0; e <= E; e++) c->ex_off[e] = 0;
    for (int64_t t = 0; t < B; t++) {
        route(hp, ly->exp_probs_b, c->router + t * E, c->sel + t * K, c->selw + t * K);
        for (int64_t k = 0; k < K; k++) {
            c->ex_off[c->sel[t * K + k] + 1]++;
            cnt[c->sel[t * K + k]]++;
        }
    }
    if (c->route_fn) c->route_fn(c->route_ud, il, (int32_t)B, (int32_t)K, c->sel, c->selw);
    for (int64_t e = 0; e < E; e++) c->ex_off[e + 1] += c->ex_off[e];
    /* bucket (token, weight) pairs by expert, tokens in ascending order */
    int32_t fill[1024];
    for (int64_t e = 0; e < E; e++) fill[e] = c->ex_off[e];
    for (int64_t t = 0; t < B; t++)
        for (int64_t k = 0; k < K; k++) {
            int32_t e = c->sel[t * K + k], at = fill[e]++;
            c->ex_tok[at] = (int32_t)t;
            c->ex_w[at] = c->selw[t * K + k];
        }
    /* 2: shared gate+up, then the gate+up of every selected expert; consecutive tokens are
     * read in place. With W8A8 weights the B rows of h are quantized once (hq) and experts
     * take their tokens' blocks: in place when consecutive, else gathered into xe, which then
     * holds blocks, not floats (the set would otherwise quantize every expert's rows again:
     * B·(K+1) rows instead of B). */
    const int pre = D % 32 == 0 && moe_kern_int8_enabled() && moe_kern_mmq_supported(ly->gate_exps.w.type) &&
                    moe_kern_mmq_supported(ly->up_exps.w.type);
    /* a token's input: nb blocks of hq (40 bytes per 32 values, so B·K of them fit in xe) or D floats of h */
    const size_t nb = (size_t)D / 32, rsz = pre ? nb * sizeof(moe_q8a) : (size_t)D * sizeof(float);
    const char *src = pre ? (const char *)c->hq : (const char *)c->h;
    if (pre) rows_par(c, B, rows_quant, NULL);
    np = 0;
    if (FS > 0) {
        const int sq = pre && moe_kern_mmq_supported(ly->gate_sh.type) && moe_kern_mmq_supported(ly->up_sh.type);
        p[np++] = (moe_kern_prod){&ly->gate_sh, c->h, D, c->fa, FS, B, sq ? c->hq : NULL}; /* (B, FS) */
        p[np++] = (moe_kern_prod){&ly->up_sh, c->h, D, c->fb, FS, B, sq ? c->hq : NULL};
    }
    const int sh0 = np;
    for (int64_t e = 0; e < E; e++) {
        const int32_t off = c->ex_off[e], n = c->ex_off[e + 1] - off;
        if (!n) continue; /* only selected experts are computed */
        const int32_t *toks = c->ex_tok + off;
        const char *rows = src + (size_t)toks[0] * rsz;
        if (toks[n - 1] - toks[0] != n - 1) {
            char *xe = (char *)(void *)c->xe;
            for (int32_t j = 0; j < n; j++) memcpy(xe + (size_t)(off + j) * rsz, src + (size_t)toks[j] * rsz, rsz);
            rows = xe + (size_t)off * rsz;
        }
        const float *in = pre ? NULL : (const float *)(const void *)rows;
        const moe_q8a *inq = pre ? (const moe_q8a *)(const void *)rows : NULL;
        moe_wview *w = c->wv + 3 * (np - sh0) / 2;
        w[0] = slice(&ly->gate_exps, e);
        w[1] = slice(&ly->up_exps, e);
        w[2] = slice(&ly->down_exps, e);
        p[np++] = (moe_kern_prod){&w[0], in, D, fa_e + (size_t)off * Fe, Fe, n, inq}; /* (n, Fe) */
        p[np++] = (moe_kern_prod){&w[1], in, D, fb_e + (size_t)off * Fe, Fe, n, inq};
    }
    SET(MOE_PHASE_EXPERTS_UP, p, np);
    if (FS > 0) {
        const swiglu_rows sh = {c->fa, c->fb, FS};
        rows_par(c, B, rows_swiglu, &sh);
    }
    const swiglu_rows ex = {fa_e, fb_e, Fe};
    rows_par(c, B * K, rows_swiglu, &ex);
    /* 3: shared down and every expert's down (the experts' views were set in step 2) */
    const int n_ex = (np - sh0) / 2;
    np = 0;
    if (FS > 0) c->prods2[np++] = (moe_kern_prod){&ly->down_sh, c->fa, FS, c->t0, D, B, NULL}; /* (B, D) */
    for (int k = 0; k < n_ex; k++) {
        const moe_kern_prod *g = &p[sh0 + 2 * k];
        const int64_t off = (g->y - fa_e) / Fe;
        c->prods2[np++] = (moe_kern_prod){&c->wv[3 * k + 2], g->y, Fe, c->ye + off * D, D, g->T, NULL}; /* (n, D) */
    }
    SET(MOE_PHASE_EXPERTS_DOWN, c->prods2, np);
    const int shared = FS > 0;
    rows_par(c, B, rows_moe_out, &shared);
}

/* copy rows [r0, r1) of c->lo to the logits of the items that want them, in item order */
typedef struct {
    const moe_batch_item *items;
    int32_t n;
} logits_out;
static void rows_logits(moe_engine *c, const void *ctx, int64_t r0, int64_t r1) {
    const logits_out *o = ctx;
    const int64_t V = c->m->hp.n_vocab;
    int64_t r = 0;
    for (int32_t k = 0; k < o->n && r < r1; k++)
        if (o->items[k].logits) {
            if (r >= r0) memcpy(o->items[k].logits, c->lo + r * V, (size_t)V * sizeof(float));
            r++;
        }
}

void moe_engine_forward(moe_engine *c, const moe_batch_item *items, int32_t n_items, float *logits_all) {
    const moe_model *m = c->m;
    const moe_hparams *hp = &m->hp;
    const int64_t D = hp->n_embd, V = hp->n_vocab;
    const double step_t0 = ph_begin(c);
    int64_t B = 0;
    for (int32_t i = 0; i < n_items; i++) {
        moe_seq *s = items[i].seq;
        moe_seq_kv_ready(s, s->pos + items[i].n_tokens);
        for (int32_t k = 0; k < items[i].n_tokens; k++, B++) {
            c->tok_pos[B] = s->pos + k;
            c->tok_cache[B] = s->kv;
            const int32_t tok = items[i].tokens[k];
            moe_kern_dequant_row(m->tok_embd.type, m->tok_embd.data + (size_t)tok * m->tok_embd.row_bytes, c->x + B * D, D);
        }
    }
    rope_table(hp, c->tok_pos, B, c->rope);
    for (int il = 0; il < hp->n_layer; il++) {
        const layer_w *ly = &m->layers[il];
        rows_par(c, B, rows_norm, ly->attn_norm);
        attention(c, ly, il, B);
        rows_par(c, B, rows_norm, ly->ffn_norm);
        if (ly->is_moe) {
            moe_ffn(c, ly, il, B);
        } else {
            mlp(c, &ly->gate, &ly->up, &ly->down, c->h, c->t0, B);
            rows_par(c, B, rows_resid, NULL);
        }
    }
    if (logits_all) {
        rows_par(c, B, rows_norm, m->output_norm);
        MM(MOE_PHASE_HEAD, &m->output, c->h, D, logits_all, V, B);
        int64_t end = 0;
        for (int32_t i = 0; i < n_items; i++) {
            end += items[i].n_tokens;
            if (items[i].logits) memcpy(items[i].logits, logits_all + (end - 1) * V, (size_t)V * sizeof(float));
        }
    } else {
        /* the head only for the last token of each item that wants logits, n_out rows at a time */
        int64_t end = 0, n = 0;
        int32_t first = 0;
        for (int32_t i = 0; i < n_items; i++) {
            end += items[i].n_tokens;
            if (items[i].logits) {
                moe_kern_rmsnorm(c->hl + n * D, c->x + (end - 1) * D, m->output_norm, D, hp->rms_eps);
                n++;
            }
            if (n == c->n_out || (i == n_items - 1 && n > 0)) {
                /* the items' logits rows at one stride (a caller's (n, V) array) take the head's
                 * output directly; otherwise it goes through c->lo and is copied out in parallel */
                float *base = NULL;
                int64_t stride = 0, r = 0;
                int direct = 1;
                for (int32_t k = first; k <= i && direct; k++) {
                    if (!items[k].logits) continue;
                    if (!base) {
                        base = items[k].logits;
                    } else if (r == 1) {
                        stride = items[k].logits - base;
                        direct = stride >= V;
                    } else {
                        direct = items[k].logits == base + r * stride;
                    }
                    r++;
                }
                if (direct) {
                    MM(MOE_PHASE_HEAD, &m->output, c->hl, D, base, n > 1 ? stride : V, n);
                } else {
                    MM(MOE_PHASE_HEAD, &m->output, c->hl, D, c->lo, V, n);
                    const logits_out lo = {items + first, i - first + 1};
                    rows_par(c, n, rows_logits, &lo);
                }
                n = 0;
                first = i + 1;
            }
        }
    }
    for (int32_t i = 0; i < n_items; i++) items[i].seq->pos += items[i].n_tokens;
    if (c->prof) c->prof_total += moe_now() - step_t0;
}
