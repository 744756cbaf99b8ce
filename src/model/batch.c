/* moekit model: the multi-sequence engine (include/moe/batch.h) and moe_ctx over it.
 *
 * moe_engine owns everything a step needs: one allocation carved into the step buffers for
 * n_batch tokens (model_impl.h lists them), the thread pool, the routing counters and the
 * attention score rows (n_threads × the largest n_ctx of any sequence; grown by moe_seq_init,
 * never inside a step). A moe_seq owns only its latent KV cache, an anonymous mapping reserved
 * for n_ctx tokens (MAP_NORESERVE) whose pages are committed ahead of the positions that fill
 * them (moe_seq_kv_ready).
 *
 * moe_engine_step checks the whole batch before touching anything (sequence ownership, at most
 * once per step, token counts, context room, vocabulary), so an error appends nothing anywhere.
 * moe_ctx is one engine + one sequence; moe_ctx_eval chunks its input into n_batch-token steps
 * and may ask for every position's logits, which the public step does not offer. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model/model_impl.h"

#define MAX_TOPK 64

static size_t zmax(size_t a, size_t b) { return a > b ? a : b; }

moe_engine_params moe_engine_default_params(void) {
    moe_engine_params p = {512, 64, 0};
    return p;
}

moe_status moe_engine_init(moe_model *m, const moe_engine_params *pp, moe_engine **out, char *err, size_t errlen) {
    moe_engine_params p = pp ? *pp : moe_engine_default_params();
    const moe_hparams *hp = &m->hp;
    *out = NULL;
    if (p.n_batch < 0 || p.n_seq_max < 0) {
        if (err) snprintf(err, errlen, "engine: n_batch and n_seq_max must not be negative");
        return MOE_ERR_INVAL;
    }
    if (hp->n_expert_used > MAX_TOPK || hp->n_expert > 1024) {
        if (err)
            snprintf(err, errlen, "engine: %d of %d experts per token is more than this build supports (%d of 1024)",
                     hp->n_expert_used, hp->n_expert, MAX_TOPK);
        return MOE_ERR_UNSUPPORTED;
    }
    moe_engine *c = calloc(1, sizeof *c);
    if (!c) return MOE_ERR_NOMEM;
    c->m = m;
    c->n_batch = p.n_batch ? p.n_batch : 512;
    c->n_seq_max = p.n_seq_max ? p.n_seq_max : 64;
    c->n_out = c->n_seq_max < c->n_batch ? c->n_seq_max : c->n_batch;
    if (c->n_out > 16) c->n_out = 16; /* head rows per product: 16 × V floats is plenty to share the weights */
    c->pool = moe_pool_init(p.n_threads);
    if (!c->pool) goto nomem;
    const size_t B = (size_t)c->n_batch, D = (size_t)hp->n_embd, H = (size_t)hp->n_head,
                 Lq = (size_t)hp->q_lora_rank, Lkv = (size_t)hp->kv_lora_rank, R = (size_t)hp->n_rot,
                 Dk = (size_t)hp->n_embd_head_k, Dv = (size_t)hp->n_embd_head_v, E = (size_t)hp->n_expert,
                 K = (size_t)hp->n_expert_used, V = (size_t)hp->n_vocab, L = (size_t)hp->n_layer,
                 nth = (size_t)moe_pool_n_threads(c->pool), NO = (size_t)c->n_out;
    const size_t Fe = (size_t)hp->n_ff_exp, S = (size_t)hp->n_expert_shared, Dn = (size_t)m->dn;
    size_t ffw = zmax((size_t)hp->n_ff, Fe * (S + K));
    size_t max_in = zmax(zmax(zmax(D, Lq), zmax(Lkv, Dn)), zmax(H * Dv, zmax((size_t)hp->n_ff, Fe * zmax(S, 1))));
    /* activation blocks per token of the largest product set (moe_kern_matmul_set): q_b or
     * q+kv_a, all heads' k_b or v_b, the shared experts' and the routed experts' inputs,
     * shared + experts' down */
    size_t xq_tok = zmax(zmax(max_in, D + Lq), zmax(H * zmax(Dn, Lkv), zmax((K + 1) * D, Fe * (S + K)))) / 32 + 1;
    const size_t NW = zmax(3 * E, H) + 1, NP = zmax(2 * E + 3, H) + 1;
    c->scratch_per_thread = moe_kern_scratch_floats((int64_t)max_in);
    size_t wide = zmax(D, zmax(H * Dk, H * (Lkv + R)));
    struct {
        void **p;
        size_t n, es;
    } parts[] = {
        {(void **)&c->x, B * D, 4},          {(void **)&c->h, B * D, 4},
        {(void **)&c->t0, B * wide, 4},      {(void **)&c->qa, B * zmax(Lq, 1), 4},
        {(void **)&c->q, B * H * Dk, 4},     {(void **)&c->kvb, B * (Lkv + R), 4},
        {(void **)&c->qt, B * H * (Lkv + R), 4}, {(void **)&c->u, B * H * Lkv, 4},
        {(void **)&c->o, B * H * Dv, 4},     {(void **)&c->fa, B * ffw, 4},
        {(void **)&c->fb, B * ffw, 4},       {(void **)&c->xe, B * zmax(K, 1) * D, 4},
        {(void **)&c->ye, B * zmax(K, 1) * D, 4}, {(void **)&c->router, B * zmax(E, 1), 4},
        {(void **)&c->wv, NW, sizeof(moe_wview)}, {(void **)&c->prods, NP, sizeof(moe_kern_prod)},
        {(void **)&c->prods2, E + 2, sizeof(moe_kern_prod)},
        {(void **)&c->sel, B * zmax(K, 1), 4}, {(void **)&c->selw, B * zmax(K, 1), 4},
        {(void **)&c->ex_tok, B * zmax(K, 1), 4}, {(void **)&c->ex_w, B * zmax(K, 1), 4},
        {(void **)&c->ex_off, E + 1, 4},     {(void **)&c->rope, B * R, 4},
        {(void **)&c->tok_pos, B, 4},        {(void **)&c->tok_cache, B, sizeof(float *)},
        {(void **)&c->hl, NO * D, 4},
        {(void **)&c->lo, NO * V, 4},        {(void **)&c->scratch, nth * c->scratch_per_thread, 4},
        {(void **)&c->counts, L * zmax(E, 1), 8}, {(void **)&c->xq, B * xq_tok, sizeof(moe_q8a)},
        {(void **)&c->hq, B * (D / 32 + 1), sizeof(moe_q8a)},
    };
    size_t total = 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) total += (parts[i].n * parts[i].es + 63) & ~(size_t)63;
    c->mem = aligned_alloc(64, total);
    if (!c->mem) goto nomem;
    memset(c->mem, 0, total);
    char *cur = c->mem;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        *parts[i].p = cur;
        cur += (parts[i].n * parts[i].es + 63) & ~(size_t)63;
    }
    c->ws = (moe_kern_ws){c->scratch, c->scratch_per_thread, c->xq, B * xq_tok};
    *out = c;
    return MOE_OK;
nomem:
    if (err) snprintf(err, errlen, "engine: out of memory for step buffers");
    moe_engine_free(c);
    return MOE_ERR_NOMEM;
}

void moe_engine_free(moe_engine *e) {
    if (!e) return;
    free(e->scores);
    free(e->mem);
    moe_pool_free(e->pool);
    free(e);
}

const char *moe_engine_errmsg(const moe_engine *e) { return e->err; }
int moe_engine_n_threads(const moe_engine *e) { return moe_pool_n_threads(e->pool); }
void moe_engine_parallel(moe_engine *e, void (*fn)(void *arg, int ith, int nth), void *arg) { moe_pool_run(e->pool, fn, arg); }

/* A sequence's cache: blocks of MOE_KV_BLOCK positions, each holding that many rows (Lkv+R
 * floats) of layer 0, then of layer 1, ... (kern.h's moe_kv_row: row p of layer l at
 * kv + l·MOE_KV_BLOCK·W, then ldc = W, bs = n_layer·MOE_KV_BLOCK·W). So the part in use is one
 * prefix of the mapping that grows with the position, while attention still reads a layer's
 * rows in runs of 64 (147 KB at W 576). Rows of every layer side by side, position by position,
 * made attention over 4,096 keys 16 % (4 layers) to 48 % (27 layers) slower (rows 9-62 KB
 * apart); layer after layer, each layer's first rows take their own memory. The mapping is
 * 2 MB-aligned with transparent huge pages: memory is committed a 2 MB page at a time, less
 * than two blocks (moe_seq_kv_ready populates one ahead) and a page per sequence past the rows
 * in use, and the first use of a page costs this VM ~20 µs once per 2 MB instead of once per
 * 4 KB. */
#define KV_HUGE ((size_t)2 << 20)
static size_t kv_block_bytes(const moe_hparams *hp) { return (size_t)moe_kv_block_floats(hp) * sizeof(float); }

moe_status moe_seq_init(moe_engine *e, int32_t n_ctx, moe_seq **out) {
    const moe_hparams *hp = &e->m->hp;
    *out = NULL;
    if (n_ctx < 0) {
        snprintf(e->err, sizeof e->err, "sequence: n_ctx %d is negative", n_ctx);
        return MOE_ERR_INVAL;
    }
    if (n_ctx == 0) n_ctx = hp->n_ctx_train > 0 ? hp->n_ctx_train : 4096;
    size_t nth = (size_t)moe_pool_n_threads(e->pool);
    size_t need = moe_kern_mla_scratch(hp->kv_lora_rank + hp->n_rot, n_ctx); /* floats per thread */
    if (need > e->scores_cap) {
        float *sc = malloc(sizeof(float) * nth * need);
        if (!sc) {
            snprintf(e->err, sizeof e->err, "sequence: out of memory for attention rows of %d tokens", n_ctx);
            return MOE_ERR_NOMEM;
        }
        free(e->scores);
        e->scores = sc;
        e->scores_cap = need;
    }
    moe_seq *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(e->err, sizeof e->err, "sequence: out of memory");
        return MOE_ERR_NOMEM;
    }
    s->e = e;
    s->n_ctx = n_ctx;
    s->kv_bytes = (size_t)hp->n_layer * (size_t)n_ctx * (size_t)(hp->kv_lora_rank + hp->n_rot) * sizeof(float);
    s->kv_map = (moe_kv_blocks(n_ctx) * kv_block_bytes(hp) + KV_HUGE - 1) & ~(KV_HUGE - 1);
    /* reserve a huge page more, then trim the mapping to KV_HUGE-aligned bounds */
    char *r = mmap(NULL, s->kv_map + KV_HUGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        snprintf(e->err, sizeof e->err, "sequence: cannot reserve %.1f MB for a KV cache of %d tokens (lower --ctx)",
                 (double)s->kv_bytes / 1e6, n_ctx);
        free(s);
        return MOE_ERR_NOMEM;
    }
    char *a = (char *)(((uintptr_t)r + KV_HUGE - 1) & ~(uintptr_t)(KV_HUGE - 1));
    if (a > r) munmap(r, (size_t)(a - r));
    if (r + KV_HUGE > a) munmap(a + s->kv_map, (size_t)(r + KV_HUGE - a));
#ifdef MADV_HUGEPAGE
    madvise(a, s->kv_map, MADV_HUGEPAGE); /* where refused, 4 KB pages */
#endif
    s->kv = (float *)(void *)a;
    e->n_seq_live++;
    *out = s;
    return MOE_OK;
}

/* Populating the rows ahead (the layout is described at moe_seq_init). The cache is reserved,
 * not committed (MAP_NORESERVE: a long context costs nothing until used). Its 4 KB pages used
 * to fault in one at a time as positions advanced (~36 per step for a batch of 16 on the
 * 4-layer bench model, ~1,150 for a fresh 512-token prefill). On the VM we measure on, the
 * first write to a page that faulted took 36-135 µs with cold caches; to a page populated
 * beforehand with MADV_POPULATE_WRITE (Linux 5.14; ~0.8 µs a page) ~20 µs (the VM's cost of a
 * page's first use), 2 µs after; a 2 MB huge page populated beforehand costs those ~20 µs
 * once. So each step first populates the blocks its positions fall in and one block more: one
 * call every MOE_KV_BLOCK positions. */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static int g_no_populate; /* the kernel refused (older than 5.14): fault rows in as written */

void moe_seq_kv_ready(moe_seq *s, int32_t upto) {
    if (upto <= s->kv_ready || g_no_populate) return;
    const moe_hparams *hp = &s->e->m->hp;
    /* whole blocks: those holding [kv_ready, upto) and the next one */
    const size_t bb = kv_block_bytes(hp), nblk = moe_kv_blocks(s->n_ctx), b0 = (size_t)s->kv_ready / MOE_KV_BLOCK,
                 want = moe_kv_blocks(upto) + 1, b1 = want < nblk ? want : nblk;
    const uintptr_t a = (uintptr_t)s->kv + b0 * bb, b = (uintptr_t)s->kv + b1 * bb;
    if (madvise((void *)(a & ~(uintptr_t)4095), ((b + 4095) & ~(uintptr_t)4095) - (a & ~(uintptr_t)4095),
                MADV_POPULATE_WRITE) != 0) {
        if (errno == EINVAL || errno == ENOSYS) g_no_populate = 1;
        return; /* out of memory here faults as before when written; nothing is lost */
    }
    s->kv_ready = b1 * MOE_KV_BLOCK < (size_t)s->n_ctx ? (int32_t)(b1 * MOE_KV_BLOCK) : s->n_ctx;
}

void moe_seq_free(moe_seq *s) {
    if (!s) return;
    munmap(s->kv, s->kv_map);
    s->e->n_seq_live--;
    free(s);
}

int32_t moe_seq_pos(const moe_seq *s) { return s->pos; }
int32_t moe_seq_n_ctx(const moe_seq *s) { return s->n_ctx; }
size_t moe_seq_bytes(const moe_seq *s) { return s->kv_bytes; }

moe_status moe_seq_truncate(moe_seq *s, int32_t pos) {
    if (pos < 0 || pos > s->pos) {
        snprintf(s->e->err, sizeof s->e->err, "truncate: position %d outside [0, %d]", pos, s->pos);
        return MOE_ERR_INVAL;
    }
    s->pos = pos;
    return MOE_OK;
}

const uint64_t *moe_engine_expert_counts(const moe_engine *e, int32_t layer) {
    if (layer < 0 || layer >= e->m->hp.n_layer || !e->m->layers[layer].is_moe) return NULL;
    return e->counts + (size_t)layer * (size_t)e->m->hp.n_expert;
}

void moe_engine_reset_expert_counts(moe_engine *e) {
    memset(e->counts, 0, sizeof(uint64_t) * (size_t)e->m->hp.n_layer * (size_t)(e->m->hp.n_expert > 0 ? e->m->hp.n_expert : 1));
}

void moe_engine_set_route_observer(moe_engine *e, moe_route_observer_fn fn, void *ud) {
    e->route_fn = fn;
    e->route_ud = ud;
}

/* Checks a whole batch; on error the message is in e->err and nothing has changed. */
static moe_status check_items(moe_engine *e, const moe_batch_item *items, int32_t n_items) {
    const int32_t V = e->m->hp.n_vocab;
    if (n_items <= 0 || !items) {
        snprintf(e->err, sizeof e->err, "step: no items");
        return MOE_ERR_INVAL;
    }
    if (n_items > e->n_seq_max) {
        snprintf(e->err, sizeof e->err, "step: %d sequences exceed n_seq_max %d", n_items, e->n_seq_max);
        return MOE_ERR_RANGE;
    }
    int64_t total = 0;
    for (int32_t i = 0; i < n_items; i++) {
        const moe_batch_item *it = &items[i];
        if (!it->seq || it->seq->e != e) {
            snprintf(e->err, sizeof e->err, "step: item %d has no sequence of this engine", i);
            return MOE_ERR_INVAL;
        }
        if (it->n_tokens <= 0 || !it->tokens) {
            snprintf(e->err, sizeof e->err, "step: item %d has no tokens", i);
            return MOE_ERR_INVAL;
        }
        total += it->n_tokens;
        if ((int64_t)it->seq->pos + it->n_tokens > it->seq->n_ctx) {
            snprintf(e->err, sizeof e->err,
                     "step: item %d: %d tokens at position %d exceed the context of %d tokens (raise --ctx, up to the model's %d)",
                     i, it->n_tokens, it->seq->pos, it->seq->n_ctx, e->m->hp.n_ctx_train);
            return MOE_ERR_RANGE;
        }
        for (int32_t k = 0; k < it->n_tokens; k++)
            if (it->tokens[k] < 0 || it->tokens[k] >= V) {
                snprintf(e->err, sizeof e->err, "step: item %d: token id %d at index %d is outside the vocabulary [0, %d)",
                         i, it->tokens[k], k, V);
                return MOE_ERR_INVAL;
            }
    }
    if (total > e->n_batch) {
        snprintf(e->err, sizeof e->err, "step: %lld tokens exceed n_batch %d", (long long)total, e->n_batch);
        return MOE_ERR_RANGE;
    }
    /* each sequence at most once: mark, check, unmark */
    moe_status st = MOE_OK;
    int32_t i = 0;
    for (; i < n_items; i++) {
        if (items[i].seq->step_mark) {
            snprintf(e->err, sizeof e->err, "step: item %d repeats a sequence of an earlier item", i);
            st = MOE_ERR_INVAL;
            break;
        }
        items[i].seq->step_mark = 1;
    }
    for (int32_t k = 0; k < i; k++) items[k].seq->step_mark = 0;
    return st;
}

moe_status moe_engine_step(moe_engine *e, moe_batch_item *items, int32_t n_items) {
    moe_status st = check_items(e, items, n_items);
    if (st) return st;
    moe_engine_forward(e, items, n_items, NULL);
    return MOE_OK;
}

void moe_engine_profile(moe_engine *e, int on) {
    memset(e->prof_s, 0, sizeof e->prof_s);
    memset(e->prof_b, 0, sizeof e->prof_b);
    memset(e->prof_n, 0, sizeof e->prof_n);
    e->prof_total = 0;
    e->prof = on != 0;
}

double moe_engine_profile_read(const moe_engine *e, moe_phase_stat *out) {
    static const char *const names[MOE_PHASE_COUNT] = {"attn.in",      "attn.q_b",  "attn.k_b",    "attn.core",
                                                       "attn.v_b",     "attn.out",  "dense.up",    "dense.down",
                                                       "router",       "experts.up", "experts.down", "head",
                                                       "other"};
    double named = 0;
    for (int i = 0; i < MOE_PHASE_COUNT; i++) {
        out[i] = (moe_phase_stat){names[i], e->prof_s[i], e->prof_b[i], e->prof_n[i]};
        if (i != MOE_PHASE_OTHER) named += e->prof_s[i];
    }
    out[MOE_PHASE_OTHER].seconds = e->prof_total > named ? e->prof_total - named : 0;
    return e->prof_total;
}

/* ---- moe_ctx: one engine and one sequence ---- */

moe_ctx_params moe_ctx_default_params(void) {
    moe_ctx_params p = {0, 512, 0};
    return p;
}

moe_status moe_ctx_init(moe_model *m, const moe_ctx_params *pp, moe_ctx **out, char *err, size_t errlen) {
    moe_ctx_params p = pp ? *pp : moe_ctx_default_params();
    const moe_hparams *hp = &m->hp;
    *out = NULL;
    if (p.n_ctx < 0 || p.n_batch < 0) {
        if (err) snprintf(err, errlen, "context: n_ctx and n_batch must not be negative");
        return MOE_ERR_INVAL;
    }
    moe_ctx *c = calloc(1, sizeof *c);
    if (!c) return MOE_ERR_NOMEM;
    int32_t n_ctx = p.n_ctx ? p.n_ctx : hp->n_ctx_train;
    if (n_ctx <= 0) n_ctx = 4096;
    c->n_batch = p.n_batch ? p.n_batch : 512;
    if (c->n_batch > n_ctx) c->n_batch = n_ctx;
    moe_engine_params ep = {c->n_batch, 1, p.n_threads};
    char eerr[256] = "";
    moe_status st = moe_engine_init(m, &ep, &c->e, eerr, sizeof eerr);
    if (st) {
        if (err) snprintf(err, errlen, "context: %s", strncmp(eerr, "engine: ", 8) ? eerr : eerr + 8);
        free(c);
        return st;
    }
    c->logits = calloc((size_t)hp->n_vocab, sizeof(float));
    if (!c->logits) {
        if (err) snprintf(err, errlen, "context: out of memory for step buffers");
        moe_ctx_free(c);
        return MOE_ERR_NOMEM;
    }
    st = moe_seq_init(c->e, n_ctx, &c->s);
    if (st) {
        if (err) snprintf(err, errlen, "context: %s", moe_engine_errmsg(c->e) + strlen("sequence: "));
        moe_ctx_free(c);
        return st;
    }
    *out = c;
    return MOE_OK;
}

void moe_ctx_free(moe_ctx *c) {
    if (!c) return;
    moe_seq_free(c->s);
    moe_engine_free(c->e);
    free(c->logits);
    free(c);
}

const char *moe_ctx_errmsg(const moe_ctx *c) { return c->err; }
moe_engine *moe_ctx_engine(moe_ctx *c) { return c->e; }
const float *moe_ctx_logits(const moe_ctx *c) { return c->logits; }
int32_t moe_ctx_pos(const moe_ctx *c) { return c->s->pos; }
int32_t moe_ctx_n_ctx(const moe_ctx *c) { return c->s->n_ctx; }
int moe_ctx_n_threads(const moe_ctx *c) { return moe_engine_n_threads(c->e); }

moe_status moe_ctx_truncate(moe_ctx *c, int32_t pos) {
    if (pos < 0 || pos > c->s->pos) {
        snprintf(c->err, sizeof c->err, "truncate: position %d outside [0, %d]", pos, c->s->pos);
        return MOE_ERR_INVAL;
    }
    c->s->pos = pos;
    return MOE_OK;
}

const uint64_t *moe_ctx_expert_counts(const moe_ctx *c, int32_t layer) { return moe_engine_expert_counts(c->e, layer); }
void moe_ctx_reset_expert_counts(moe_ctx *c) { moe_engine_reset_expert_counts(c->e); }
void moe_ctx_set_route_observer(moe_ctx *c, moe_route_observer_fn fn, void *ud) {
    moe_engine_set_route_observer(c->e, fn, ud);
}

moe_status moe_ctx_eval(moe_ctx *c, const int32_t *tokens, int32_t n, float *logits) {
    const int32_t V = c->e->m->hp.n_vocab;
    const int32_t pos = c->s->pos, n_ctx = c->s->n_ctx;
    if (n <= 0) {
        snprintf(c->err, sizeof c->err, "eval: no tokens");
        return MOE_ERR_INVAL;
    }
    if ((int64_t)pos + n > n_ctx) {
        snprintf(c->err, sizeof c->err,
                 "eval: %d tokens at position %d exceed the context of %d tokens (raise --ctx, up to the model's %d)", n,
                 pos, n_ctx, c->e->m->hp.n_ctx_train);
        return MOE_ERR_RANGE;
    }
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= V) {
            snprintf(c->err, sizeof c->err, "eval: token id %d at index %d is outside the vocabulary [0, %d)", tokens[i], i, V);
            return MOE_ERR_INVAL;
        }
    for (int32_t done = 0; done < n;) {
        int32_t b = n - done < c->n_batch ? n - done : c->n_batch;
        /* the head runs for the final chunk only (or for every row when all logits are wanted) */
        moe_batch_item it = {c->s, tokens + done, b, done + b == n || logits ? c->logits : NULL};
        moe_engine_forward(c->e, &it, 1, logits ? logits + (size_t)done * (size_t)V : NULL);
        done += b;
    }
    return MOE_OK;
}

/* ---- model figures for budgeting and the roofline (declared in model.h) ---- */

int32_t moe_model_n_moe_layers(const moe_model *m) {
    int32_t n = 0;
    for (int il = 0; il < m->hp.n_layer; il++) n += m->layers[il].is_moe;
    return n;
}

uint64_t moe_model_expert_bytes(const moe_model *m) {
    for (int il = 0; il < m->hp.n_layer; il++) {
        const layer_w *ly = &m->layers[il];
        if (ly->is_moe)
            return ly->gate_exps.w.row_bytes * (uint64_t)ly->gate_exps.w.out * 2 +
                   ly->down_exps.w.row_bytes * (uint64_t)ly->down_exps.w.out;
    }
    return 0;
}

uint64_t moe_model_matmul_macs(const moe_model *m) {
    const moe_hparams *hp = &m->hp;
    uint64_t macs = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const layer_w *ly = &m->layers[il];
        const moe_wview *ws[] = {&ly->q_a, &ly->q_b, &ly->q, &ly->kv_a, &ly->attn_out, &ly->gate, &ly->up, &ly->down,
                                 &ly->gate_sh, &ly->up_sh, &ly->down_sh};
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++)
            if (ws[k]->data) macs += (uint64_t)ws[k]->in * (uint64_t)ws[k]->out;
        macs += (uint64_t)hp->n_head * ((uint64_t)ly->k_b.w.in * (uint64_t)ly->k_b.w.out + (uint64_t)ly->v_b.w.in * (uint64_t)ly->v_b.w.out);
        if (ly->is_moe)
            macs += (uint64_t)hp->n_expert_used * (uint64_t)hp->n_embd * (uint64_t)hp->n_ff_exp * 3;
    }
    return macs;
}
