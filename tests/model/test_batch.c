/* The multi-sequence engine (include/moe/batch.h) on `moe init` models:
 *  - N sequences stepped together (prefill chunks of different lengths and single-token decodes
 *    mixed in one step) give the same logits as each sequence stepped alone (max |d| printed;
 *    required < 1e-5, expected 0: every product is computed per (row, token));
 *  - the same against moe_ctx (the one-sequence wrapper) evaluating the whole input at once;
 *  - errors leave every sequence unchanged: too many tokens, too many items, context full, bad
 *    token ids, a sequence twice, a sequence of another engine, an empty item;
 *  - routing counters sum to tokens × K per MoE layer and reset to zero;
 *  - Q8_0 models repacked to R16 at load (VNNI machines) give the logits of the file's layout
 *    (MOE_REPACK=0) bit for bit, prefill and decode;
 *  - the step profile (moe_engine_profile) of decode steps counts exactly the weight bytes the
 *    roofline counts (moe_model_active_bytes), the cache rows attended to, one call per phase
 *    and layer, phase times that add up to the step time, and nothing once it is off;
 *  - the weight-read trace of those steps (moe_kern_set_trace, `moe bench --ceiling`) holds the
 *    same bytes, and its replay (moe_membw_replay) reads every byte once, for 1, 3 and 8 streams
 *    per thread, in equal slices and in tiles, in every read form the machine runs. */
#include <math.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <string.h>

#include "moe/batch.h"
#include "moe/dtype.h"
#include "moe/init.h"
#include "moe/model.h"
#include "moe/tools.h"
#include "core/membw.h"
#include "kern/kern.h"
#include "model/model_impl.h" /* n_packed: how many tensors the loader repacked */
#include "testutil.h"

#define NSEQ 4
#define TOTAL 20 /* tokens per sequence */

static char g_dir[512];

static double maxdiff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

/* Chunk schedule: at step k sequence s feeds sched[s][k] tokens (0 = sits out). Prefill chunks
 * of different lengths overlap with single-token decodes of other sequences. */
static const int sched[NSEQ][12] = {
    {7, 5, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {1, 1, 1, 9, 2, 1, 1, 1, 1, 1, 1, 0},
    {0, 12, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0},
    {3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 0, 0},
};

static void mark(void *arg, int ith, int nth) {
    int *seen = arg;
    seen[ith] += 1 + nth; /* each thread writes only its own slot */
}

static void check_profile(const char *label, moe_model *m) {
    const moe_hparams *hp = moe_model_hparams(m);
    char err[512];
    moe_ctx_params cp = moe_ctx_default_params();
    cp.n_threads = 2;
    cp.n_ctx = 64;
    moe_ctx *c = NULL;
    CHECK(moe_ctx_init(m, &cp, &c, err, sizeof err) == MOE_OK, "%s: profile ctx: %s", label, err);
    if (!c) return;
    const int32_t prompt[5] = {1, 2, 3, 4, 5}, next[2] = {6, 7};
    CHECK(moe_ctx_eval(c, prompt, 5, NULL) == MOE_OK, "%s: profile prompt", label);
    moe_engine *e = moe_ctx_engine(c);
    moe_phase_stat st[MOE_PHASE_COUNT];
    moe_engine_profile(e, 1);
    moe_kern_span spans[512];
    int64_t ends[256];
    int tags[256];
    moe_kern_trace tr = {spans, 0, 512, ends, 0, 256, 0, tags};
    moe_kern_set_trace(&tr);
    for (int i = 0; i < 2; i++) CHECK(moe_ctx_eval(c, &next[i], 1, NULL) == MOE_OK, "%s: profiled decode", label);
    moe_kern_set_trace(NULL);
    const double total = moe_engine_profile_read(e, st);
    double named = 0, wbytes = 0;
    for (int i = 0; i < MOE_PHASE_COUNT; i++) {
        CHECK(st[i].name && st[i].seconds >= 0, "%s: phase %d", label, i);
        if (i != MOE_PHASE_OTHER) named += st[i].seconds;
        if (i != MOE_PHASE_ATTN_CORE) wbytes += st[i].bytes;
    }
    const int moe_l = moe_model_n_moe_layers(m), dense_l = hp->n_layer - moe_l;
    /* the roofline also counts the token's embedding row, which no product reads */
    const double want = 2.0 * ((double)moe_model_active_bytes(m) - (double)moe_dtype_row_bytes(m->tok_embd.type, hp->n_embd));
    printf("%-10s profile of 2 decode steps: %.0f weight bytes (roofline: %.0f), %.1f us\n", label, wbytes, want, 1e6 * total);
    CHECK(fabs(wbytes - want) <= 1e-9 * want, "%s: profiled weight bytes %.0f, the roofline counts %.0f", label, wbytes, want);
    /* the trace: the same bytes, in sets that end in order; its replay reads each byte once */
    double tbytes = 0;
    uint64_t want_sum = 0;
    for (int64_t i = 0; i < tr.n_span; i++) {
        tbytes += (double)spans[i].n;
        for (size_t k = 0; k < spans[i].n; k++) want_sum += spans[i].p[k];
    }
    int ordered = tr.n_set > 0 && ends[tr.n_set - 1] == tr.n_span;
    for (int64_t k = 1; k < tr.n_set; k++) ordered &= ends[k] > ends[k - 1];
    CHECK(!tr.overflow && ordered && tbytes == wbytes, "%s: trace of %lld sets, %lld spans, %.0f bytes (profile %.0f)", label,
          (long long)tr.n_set, (long long)tr.n_span, tbytes, wbytes);
    /* each set carries its phase: as many sets per phase as the profile counted calls */
    for (int ph = 0; ph < MOE_PHASE_COUNT; ph++) {
        if (ph == MOE_PHASE_ATTN_CORE || ph == MOE_PHASE_OTHER) continue;
        uint64_t n = 0;
        for (int64_t k = 0; k < tr.n_set; k++) n += tags[k] == ph;
        CHECK(n == st[ph].calls, "%s: %llu traced sets tagged %s, the profile counted %llu calls", label, (unsigned long long)n,
              st[ph].name, (unsigned long long)st[ph].calls);
    }
    moe_pool *pool = moe_pool_init(2);
    /* every read form this machine runs (AVX-512, AVX2, plain; moe_kern_set_level refuses the others) */
    const int top = moe_kern_level();
    for (int lv = top; lv >= 0; lv--) {
        moe_kern_set_level(lv);
        if (moe_kern_level() != lv) continue;
        for (int streams = 1; pool && streams <= 8; streams = streams == 1 ? 3 : streams + 5)
            for (size_t tile = 0; tile <= 8192; tile = tile ? tile * 8 : 128) { /* equal slices; tiles of 128 B, 1 KB, 8 KB */
                uint64_t got = 0;
                double per_set[256], sum_sets = 0;
                const double dt = moe_membw_replay(pool, &tr, streams, tile, &got, per_set);
                for (int64_t k = 0; k < tr.n_set; k++) sum_sets += per_set[k];
                CHECK(dt > 0 && got == want_sum && sum_sets > 0 && sum_sets <= dt,
                      "%s: replay at level %d, %d streams, tile %zu summed %llu, the spans hold %llu (sets %.6f of %.6f s)",
                      label, lv, streams, tile, (unsigned long long)got, (unsigned long long)want_sum, sum_sets, dt);
            }
    }
    moe_kern_set_level(top);
    moe_pool_free(pool);
    /* a trace too small for the steps says so */
    moe_kern_trace small = {spans, 0, 4, ends, 0, 256, 0, NULL};
    moe_kern_set_trace(&small);
    CHECK(moe_ctx_eval(c, &next[0], 1, NULL) == MOE_OK, "%s: traced decode", label);
    moe_kern_set_trace(NULL);
    CHECK(small.overflow && small.n_span <= 4, "%s: a full trace sets overflow (%lld spans)", label, (long long)small.n_span);
    /* positions 5 and 6 attend to 6 and 7 cache rows in every layer */
    const double kv = (double)hp->n_layer * (6 + 7) * (double)(hp->kv_lora_rank + hp->n_rot) * 4;
    CHECK(st[MOE_PHASE_ATTN_CORE].bytes == kv, "%s: attention bytes %.0f, want %.0f", label, st[MOE_PHASE_ATTN_CORE].bytes, kv);
    CHECK(total > 0 && fabs(named + st[MOE_PHASE_OTHER].seconds - total) <= 1e-9 + 1e-9 * total, "%s: phases add to %.9f, steps %.9f",
          label, named + st[MOE_PHASE_OTHER].seconds, total);
    CHECK(st[MOE_PHASE_HEAD].calls == 2 && st[MOE_PHASE_ATTN_IN].calls == 2u * (uint64_t)hp->n_layer &&
              st[MOE_PHASE_EXPERTS_UP].calls == 2u * (uint64_t)moe_l && st[MOE_PHASE_DENSE_UP].calls == 2u * (uint64_t)dense_l &&
              st[MOE_PHASE_ATTN_QB].calls == (hp->q_lora_rank > 0 ? 2u * (uint64_t)hp->n_layer : 0u),
          "%s: calls head %llu attn.in %llu experts.up %llu dense.up %llu", label, (unsigned long long)st[MOE_PHASE_HEAD].calls,
          (unsigned long long)st[MOE_PHASE_ATTN_IN].calls, (unsigned long long)st[MOE_PHASE_EXPERTS_UP].calls,
          (unsigned long long)st[MOE_PHASE_DENSE_UP].calls);
    CHECK(!strcmp(st[MOE_PHASE_HEAD].name, "head") && !strcmp(st[MOE_PHASE_OTHER].name, "other"), "%s: phase names", label);
    /* off: the figures are cleared and nothing more is added */
    moe_engine_profile(e, 0);
    const int32_t more = 8;
    CHECK(moe_ctx_eval(c, &more, 1, NULL) == MOE_OK, "%s: unprofiled decode", label);
    CHECK(moe_engine_profile_read(e, st) == 0 && st[MOE_PHASE_HEAD].calls == 0, "%s: profile off still counts", label);
    moe_ctx_free(c);
}

/* Logits rows at one stride (a caller's (n, V) array) take the head's output directly; rows at
 * irregular places get it through the engine's buffer, copied over the threads from 8 rows on:
 * both give the same bits. */
static void check_logits_out(const char *label, moe_model *m) {
    enum { NS = 10 };
    const int V = moe_model_hparams(m)->n_vocab;
    moe_engine_params ep = moe_engine_default_params();
    ep.n_batch = 3 * NS;
    ep.n_seq_max = NS;
    ep.n_threads = 2;
    moe_engine *e;
    char err[256];
    CHECK(moe_engine_init(m, &ep, &e, err, sizeof err) == MOE_OK, "%s: engine: %s", label, err);
    const size_t W = (size_t)V + 8; /* pass 0: rows W floats apart */
    float *flat = calloc((size_t)NS * W, sizeof(float)), *odd = calloc((size_t)NS * V + NS * NS, sizeof(float));
    int32_t tok[NS][3];
    for (int pass = 0; pass < 2; pass++) {
        moe_seq *sq[NS];
        moe_batch_item it[NS];
        for (int s = 0; s < NS; s++) {
            for (int i = 0; i < 3; i++) tok[s][i] = (s * 31 + i * 7 + 3) % V;
            CHECK(moe_seq_init(e, 16, &sq[s]) == MOE_OK, "seq");
            /* pass 1: row s at s·V + s², no common stride */
            it[s] = (moe_batch_item){sq[s], tok[s], 3, pass ? odd + (size_t)s * V + (size_t)s * s : flat + (size_t)s * W};
        }
        it[4].logits = pass ? NULL : it[4].logits; /* an item without logits in the second pass */
        CHECK(moe_engine_step(e, it, NS) == MOE_OK, "%s: step: %s", label, moe_engine_errmsg(e));
        for (int s = 0; s < NS; s++) moe_seq_free(sq[s]);
    }
    int same = 1;
    for (int s = 0; s < NS; s++)
        if (s != 4) same &= !memcmp(flat + (size_t)s * W, odd + (size_t)s * V + (size_t)s * s, sizeof(float) * (size_t)V);
    CHECK(same, "%s: logits written in place differ from the copied ones", label);
    int untouched = 1;
    for (int k = 0; k < V; k++) untouched &= odd[(size_t)4 * V + 16 + k] == 0.0f;
    CHECK(untouched, "%s: an item without logits got some", label);
    printf("%-10s head output in place (one stride) and copied (%d irregular rows): same bits\n", label, NS - 1);
    free(flat);
    free(odd);
    moe_engine_free(e);
}

static void check_model(const char *label, const moe_init_config *cfg) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    if (cfg->dtype == MOE_DTYPE_Q4_K || cfg->dtype == MOE_DTYPE_Q5_K || cfg->dtype == MOE_DTYPE_Q6_K) {
        /* moe init writes F32; moe quantize the K-quants */
        char f32[1040];
        moe_init_config c32 = *cfg;
        c32.dtype = MOE_DTYPE_F32;
        snprintf(f32, sizeof f32, "%s.f32", path);
        CHECK(moe_init_write(&c32, NULL, f32, NULL, NULL, err, sizeof err) == MOE_OK, "%s: init: %s", label, err);
        moe_quantize_params qp = moe_quantize_default_params();
        qp.type = cfg->dtype;
        qp.n_threads = 2;
        CHECK(moe_quantize(f32, path, &qp, err, sizeof err) == MOE_OK, "%s: quantize: %s", label, err);
    } else {
        CHECK(moe_init_write(cfg, NULL, path, NULL, NULL, err, sizeof err) == MOE_OK, "%s: init: %s", label, err);
    }
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) {
        CHECK(0, "%s: open: %s", label, err);
        return;
    }
    const moe_hparams *hp = moe_model_hparams(m);
    const int V = hp->n_vocab;
    int32_t tok[NSEQ][TOTAL];
    for (int s = 0; s < NSEQ; s++)
        for (int i = 0; i < TOTAL; i++) tok[s][i] = (i * 37 + s * 101 + 11) % V;
    for (int s = 0; s < NSEQ; s++) {
        int sum = 0;
        for (int k = 0; k < 12; k++) sum += sched[s][k];
        CHECK(sum <= TOTAL, "schedule of seq %d", s);
    }
    /* logits of the last token of each (seq, step) */
    float *together = calloc((size_t)NSEQ * 12 * V, sizeof(float)), *alone = calloc((size_t)NSEQ * 12 * V, sizeof(float));
    moe_engine_params ep = moe_engine_default_params();
    ep.n_batch = 32;
    ep.n_seq_max = NSEQ;
    ep.n_threads = 2;
    moe_engine *e;
    CHECK(moe_engine_init(m, &ep, &e, err, sizeof err) == MOE_OK, "%s: engine: %s", label, err);
    int seen[4] = {0};
    moe_engine_parallel(e, mark, seen);
    CHECK(seen[0] == 3 && seen[1] == 3 && seen[2] == 0, "%s: moe_engine_parallel ran every pool thread once", label);
    moe_seq *seq[NSEQ];
    for (int s = 0; s < NSEQ; s++) CHECK(moe_seq_init(e, s == 2 ? 24 : 64, &seq[s]) == MOE_OK, "seq init");
    int fed[NSEQ] = {0};
    uint64_t n_tok = 0;
    for (int k = 0; k < 12; k++) {
        moe_batch_item items[NSEQ];
        int n = 0;
        for (int s = 0; s < NSEQ; s++) {
            if (!sched[s][k]) continue;
            items[n++] = (moe_batch_item){seq[s], tok[s] + fed[s], sched[s][k], together + ((size_t)s * 12 + k) * V};
            fed[s] += sched[s][k];
            n_tok += (uint64_t)sched[s][k];
        }
        if (!n) continue;
        moe_status st = moe_engine_step(e, items, n);
        CHECK(st == MOE_OK, "%s: step %d: %s", label, k, moe_engine_errmsg(e));
    }
    for (int s = 0; s < NSEQ; s++) CHECK(moe_seq_pos(seq[s]) == fed[s], "seq %d at %d, fed %d", s, moe_seq_pos(seq[s]), fed[s]);
    /* counters: every MoE layer saw n_tok tokens × K */
    for (int il = 0; il < hp->n_layer; il++) {
        const uint64_t *cnt = moe_engine_expert_counts(e, il);
        if (il < hp->n_layer_dense_lead) {
            CHECK(cnt == NULL, "dense layer %d has no counters", il);
            continue;
        }
        uint64_t sum = 0;
        for (int x = 0; x < hp->n_expert; x++) sum += cnt ? cnt[x] : 0;
        CHECK(sum == n_tok * (uint64_t)hp->n_expert_used, "%s: layer %d counted %llu, want %llu", label, il,
              (unsigned long long)sum, (unsigned long long)(n_tok * (uint64_t)hp->n_expert_used));
    }
    moe_engine_reset_expert_counts(e);
    for (int il = hp->n_layer_dense_lead; il < hp->n_layer; il++) {
        const uint64_t *cnt = moe_engine_expert_counts(e, il);
        uint64_t sum = 0;
        for (int x = 0; x < hp->n_expert; x++) sum += cnt[x];
        CHECK(sum == 0, "reset layer %d", il);
    }
    /* each sequence alone, same chunks, in a fresh engine of one thread */
    ep.n_threads = 1;
    moe_engine *e1;
    CHECK(moe_engine_init(m, &ep, &e1, err, sizeof err) == MOE_OK, "engine 1");
    for (int s = 0; s < NSEQ; s++) {
        moe_seq *q;
        CHECK(moe_seq_init(e1, 64, &q) == MOE_OK, "alone seq");
        int at = 0;
        for (int k = 0; k < 12; k++) {
            if (!sched[s][k]) continue;
            moe_batch_item it = {q, tok[s] + at, sched[s][k], alone + ((size_t)s * 12 + k) * V};
            CHECK(moe_engine_step(e1, &it, 1) == MOE_OK, "alone step");
            at += sched[s][k];
        }
        moe_seq_free(q);
    }
    double d = maxdiff(together, alone, (size_t)NSEQ * 12 * V);
    printf("%-10s %d sequences together vs alone: max|d| %.3e\n", label, NSEQ, d);
    CHECK(d < 1e-5, "%s: together vs alone %.3e", label, d);
    /* against moe_ctx on the whole input: each sequence's final logits */
    double dc = 0;
    for (int s = 0; s < NSEQ; s++) {
        moe_ctx_params cp = moe_ctx_default_params();
        cp.n_ctx = 64;
        cp.n_threads = 2;
        moe_ctx *c;
        CHECK(moe_ctx_init(m, &cp, &c, err, sizeof err) == MOE_OK, "ctx");
        CHECK(moe_ctx_eval(c, tok[s], fed[s], NULL) == MOE_OK, "ctx eval");
        int last = 11;
        while (!sched[s][last]) last--;
        dc = fmax(dc, maxdiff(moe_ctx_logits(c), together + ((size_t)s * 12 + last) * V, (size_t)V));
        moe_ctx_free(c);
    }
    printf("%-10s batched vs moe_ctx prefill: max|d| %.3e\n", label, dc);
    CHECK(dc < 1e-5, "%s: batched vs moe_ctx %.3e", label, dc);

    /* errors: nothing appended anywhere */
    int32_t pos0[NSEQ];
    for (int s = 0; s < NSEQ; s++) pos0[s] = moe_seq_pos(seq[s]);
    int32_t big[40] = {0}, bad = V, neg = -1;
    float *lg = malloc(sizeof(float) * V);
    moe_batch_item two[2] = {{seq[0], big, 20, lg}, {seq[1], big, 13, NULL}};
    CHECK(moe_engine_step(e, two, 2) == MOE_ERR_RANGE, "33 tokens > n_batch 32");
    printf("error: %s\n", moe_engine_errmsg(e));
    moe_batch_item five[NSEQ + 1];
    for (int s = 0; s < NSEQ + 1; s++) five[s] = (moe_batch_item){seq[s % NSEQ], big, 1, NULL};
    CHECK(moe_engine_step(e, five, NSEQ + 1) == MOE_ERR_RANGE, "more items than n_seq_max");
    moe_batch_item dup[2] = {{seq[0], big, 1, NULL}, {seq[0], big, 1, NULL}};
    CHECK(moe_engine_step(e, dup, 2) == MOE_ERR_INVAL, "a sequence twice");
    printf("error: %s\n", moe_engine_errmsg(e));
    moe_batch_item badid[2] = {{seq[0], big, 1, NULL}, {seq[1], &bad, 1, NULL}};
    CHECK(moe_engine_step(e, badid, 2) == MOE_ERR_INVAL, "id == V");
    printf("error: %s\n", moe_engine_errmsg(e));
    badid[1].tokens = &neg;
    CHECK(moe_engine_step(e, badid, 2) == MOE_ERR_INVAL, "id -1");
    moe_batch_item empty[2] = {{seq[0], big, 1, NULL}, {seq[1], big, 0, NULL}};
    CHECK(moe_engine_step(e, empty, 2) == MOE_ERR_INVAL, "an empty item");
    moe_seq *other;
    CHECK(moe_seq_init(e1, 8, &other) == MOE_OK, "other engine's seq");
    moe_batch_item foreign[2] = {{seq[0], big, 1, NULL}, {other, big, 1, NULL}};
    CHECK(moe_engine_step(e, foreign, 2) == MOE_ERR_INVAL, "a sequence of another engine");
    CHECK(moe_engine_step(e, NULL, 0) == MOE_ERR_INVAL, "no items");
    /* context full: seq[2] holds 24 tokens */
    int room = 24 - moe_seq_pos(seq[2]);
    moe_batch_item full[2] = {{seq[0], big, 1, NULL}, {seq[2], big, room + 1, NULL}};
    CHECK(room >= 0 && room < 20, "room %d", room);
    CHECK(moe_engine_step(e, full, 2) == MOE_ERR_RANGE, "context full");
    printf("error: %s\n", moe_engine_errmsg(e));
    for (int s = 0; s < NSEQ; s++) CHECK(moe_seq_pos(seq[s]) == pos0[s], "seq %d moved on an error", s);
    /* the state still works after errors: one more decode step equals its alone run */
    moe_seq_free(other);
    CHECK(moe_seq_truncate(seq[3], 5) == MOE_OK && moe_seq_pos(seq[3]) == 5, "truncate");
    CHECK(moe_seq_truncate(seq[3], 6) == MOE_ERR_INVAL, "truncate past the end");
    CHECK(moe_seq_n_ctx(seq[3]) == 64, "n_ctx");
    CHECK(moe_seq_bytes(seq[3]) == (size_t)hp->n_layer * 64 * (size_t)(hp->kv_lora_rank + hp->n_rot) * 4, "bytes");
    moe_batch_item one = {seq[3], tok[3] + 5, 1, lg};
    CHECK(moe_engine_step(e, &one, 1) == MOE_OK, "after errors");
    moe_seq *q;
    CHECK(moe_seq_init(e1, 64, &q) == MOE_OK, "q");
    float *lg2 = malloc(sizeof(float) * V);
    moe_batch_item qa = {q, tok[3], 6, lg2};
    CHECK(moe_engine_step(e1, &qa, 1) == MOE_OK, "q step");
    double dt = maxdiff(lg, lg2, (size_t)V);
    printf("%-10s truncate + decode vs fresh prefill: max|d| %.3e\n", label, dt);
    CHECK(dt < 1e-5, "%s: truncate + decode %.3e", label, dt);
    moe_seq_free(q);
    free(lg);
    free(lg2);
    for (int s = 0; s < NSEQ; s++) moe_seq_free(seq[s]);
    moe_engine_free(e);
    moe_engine_free(e1);
    free(together);
    free(alone);
    /* the R16 repacking changes no bit: the same tokens on the file's own layout */
    setenv("MOE_REPACK", "0", 1);
    moe_model *m0 = NULL;
    CHECK(moe_model_open(path, &m0, err, sizeof err) == MOE_OK, "%s: open without repacking: %s", label, err);
    unsetenv("MOE_REPACK");
    if (m0) {
        CHECK(m0->n_packed == 0, "%s: MOE_REPACK=0 still repacked %d tensors", label, m0->n_packed);
        moe_ctx_params cp = moe_ctx_default_params();
        cp.n_threads = 2;
        cp.n_ctx = 64;
        moe_ctx *c1 = NULL, *c0 = NULL;
        CHECK(moe_ctx_init(m, &cp, &c1, err, sizeof err) == MOE_OK && moe_ctx_init(m0, &cp, &c0, err, sizeof err) == MOE_OK,
              "%s: ctx: %s", label, err);
        int same = 1;
        if (c1 && c0) {
            same &= moe_ctx_eval(c1, tok[1], TOTAL - 2, NULL) == MOE_OK && moe_ctx_eval(c0, tok[1], TOTAL - 2, NULL) == MOE_OK;
            same &= !memcmp(moe_ctx_logits(c1), moe_ctx_logits(c0), sizeof(float) * (size_t)V);
            for (int i = TOTAL - 2; i < TOTAL; i++) { /* decode steps */
                same &= moe_ctx_eval(c1, &tok[1][i], 1, NULL) == MOE_OK && moe_ctx_eval(c0, &tok[1][i], 1, NULL) == MOE_OK;
                same &= !memcmp(moe_ctx_logits(c1), moe_ctx_logits(c0), sizeof(float) * (size_t)V);
            }
        }
        /* a long single sequence decoding takes the split attention (keys and columns over the
         * threads): its logits equal the last row of one prefill of the same tokens, bit for bit */
        moe_ctx_params lp = cp;
        lp.n_ctx = 320;
        lp.n_batch = 300;
        moe_ctx *la = NULL, *lb = NULL;
        int32_t *lt = malloc(sizeof(int32_t) * 300);
        for (int i = 0; i < 300; i++) lt[i] = (i * 53 + 7) % V;
        if (moe_ctx_init(m, &lp, &la, err, sizeof err) == MOE_OK && moe_ctx_init(m, &lp, &lb, err, sizeof err) == MOE_OK) {
            int ok = moe_ctx_eval(la, lt, 300, NULL) == MOE_OK;                                    /* one step of 300 */
            ok &= moe_ctx_eval(lb, lt, 297, NULL) == MOE_OK;                                      /* 297 ... */
            for (int i = 297; i < 300; i++) ok &= moe_ctx_eval(lb, &lt[i], 1, NULL) == MOE_OK; /* ... then 3 decodes */
            ok &= !memcmp(moe_ctx_logits(la), moe_ctx_logits(lb), sizeof(float) * (size_t)V);
            printf("%-10s 300-token prefill vs 297 + 3 decode steps (split attention): %s\n", label, ok ? "bit-identical" : "DIFFER");
            CHECK(ok, "%s: long-context decode differs from prefill", label);
        } else {
            CHECK(0, "%s: long ctx: %s", label, err);
        }
        moe_ctx_free(la);
        moe_ctx_free(lb);
        free(lt);
        printf("%-10s %d tensors repacked to R16: logits %s the file layout's\n", label, m->n_packed,
               same ? "bit-identical to" : "DIFFER from");
        CHECK(same, "%s: repacked logits differ from the file layout's", label);
        if ((cfg->dtype == MOE_DTYPE_Q8_0 || cfg->dtype == MOE_DTYPE_Q4_0 || cfg->dtype == MOE_DTYPE_Q4_K || cfg->dtype == MOE_DTYPE_Q5_K ||
             cfg->dtype == MOE_DTYPE_Q6_K) &&
            moe_kern_level() == 2 && moe_kern_int8_enabled())
            CHECK(m->n_packed > 0, "%s: a Q8_0 / Q4_0 / Q4_K / Q5_K / Q6_K model on a VNNI machine was not repacked", label);
        moe_ctx_free(c1);
        moe_ctx_free(c0);
        moe_model_close(m0);
    }
    check_profile(label, m);
    check_logits_out(label, m);
    moe_model_close(m);
}

/* Without VNNI (the AVX2 forms; forced here with moe_kern_set_level) the product weights are
 * copied into huge pages in the file's layout: same types, same logits as the file's pages */
static void check_copy(const char *label) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    const int old = moe_kern_level();
    if (moe_kern_set_level(1) != old || moe_kern_level() != 1) { /* not an AVX2 machine */
        moe_kern_set_level(old);
        printf("%-10s copy into huge pages: no AVX2 level on this machine\n", label);
        return;
    }
    moe_model *mc = NULL, *m0 = NULL;
    CHECK(moe_model_open(path, &mc, err, sizeof err) == MOE_OK, "%s: open (copy): %s", label, err);
    setenv("MOE_REPACK", "0", 1);
    CHECK(moe_model_open(path, &m0, err, sizeof err) == MOE_OK, "%s: open (file pages): %s", label, err);
    unsetenv("MOE_REPACK");
    if (mc && m0) {
        CHECK(mc->n_packed > 0 && m0->n_packed == 0, "%s: %d tensors copied (MOE_REPACK=0: %d)", label, mc->n_packed, m0->n_packed);
        CHECK(mc->output.type == m0->output.type && mc->output.data != m0->output.data,
              "%s: the head keeps its type (%d, file %d) and moves to the copy", label, mc->output.type, m0->output.type);
        moe_ctx_params cp = moe_ctx_default_params();
        cp.n_threads = 2;
        cp.n_ctx = 64;
        moe_ctx *c1 = NULL, *c0 = NULL;
        const int32_t tk[] = {1, 17, 5, 99, 42, 7, 3, 64, 11};
        const int V = mc->hp.n_vocab;
        int same = moe_ctx_init(mc, &cp, &c1, err, sizeof err) == MOE_OK && moe_ctx_init(m0, &cp, &c0, err, sizeof err) == MOE_OK;
        if (same) {
            same &= moe_ctx_eval(c1, tk, 7, NULL) == MOE_OK && moe_ctx_eval(c0, tk, 7, NULL) == MOE_OK;
            same &= !memcmp(moe_ctx_logits(c1), moe_ctx_logits(c0), sizeof(float) * (size_t)V);
            for (int i = 7; i < 9; i++) {
                same &= moe_ctx_eval(c1, &tk[i], 1, NULL) == MOE_OK && moe_ctx_eval(c0, &tk[i], 1, NULL) == MOE_OK;
                same &= !memcmp(moe_ctx_logits(c1), moe_ctx_logits(c0), sizeof(float) * (size_t)V);
            }
        }
        printf("%-10s AVX2 level: %d tensors copied into huge pages, logits %s the file pages'\n", label, mc->n_packed,
               same ? "bit-identical to" : "DIFFER from");
        CHECK(same, "%s: logits of the copy differ", label);
        moe_ctx_free(c1);
        moe_ctx_free(c0);
    }
    moe_model_close(mc);
    moe_model_close(m0);
    moe_kern_set_level(old);
}

/* the load progress hook: monotonic, ends at done == total, total = the repacked bytes */
typedef struct {
    int calls, monotonic;
    uint64_t last, total;
} load_seen;
static void on_load(void *ud, uint64_t done, uint64_t total) {
    load_seen *l = ud;
    l->monotonic &= done >= l->last && (l->calls == 0 || total == l->total);
    l->calls++;
    l->last = done;
    l->total = total;
}

static void check_load_progress(const char *label) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    load_seen l = {0, 1, 0, 0};
    moe_model_set_load_progress(on_load, &l);
    moe_model *m = NULL;
    CHECK(moe_model_open(path, &m, err, sizeof err) == MOE_OK, "%s: open: %s", label, err);
    moe_model_set_load_progress(NULL, NULL);
    if (!m) return;
    if (m->n_packed > 0) {
        CHECK(l.calls >= 1 && l.monotonic && l.last == l.total && l.total > 0 && l.total <= moe_model_weight_bytes(m),
              "%s: load progress: %d calls, %llu of %llu bytes, monotonic %d", label, l.calls, (unsigned long long)l.last,
              (unsigned long long)l.total, l.monotonic);
        printf("%-10s load progress: %d call(s), ends at %llu of %llu bytes\n", label, l.calls, (unsigned long long)l.last,
               (unsigned long long)l.total);
    } else {
        CHECK(l.calls == 0, "%s: progress without repacking (%d calls)", label, l.calls);
    }
    moe_model_close(m);
}

/* Cache rows are populated ahead of the positions a step writes (moe_seq_kv_ready): the cache
 * is a 2 MB-aligned run of blocks of MOE_KV_BLOCK positions (every layer's rows of them), asking
 * for huge pages; after a one-token step the first two blocks are resident (the one written
 * and the next), the blocks past them are not (only the prefix in use, not the whole
 * reservation), and a prefill past them populates the blocks it writes and one more. Where
 * the kernel has no MADV_POPULATE_WRITE (before Linux 5.14) rows still fault in as written,
 * which the test accepts after checking that the kernel refuses the call. */
static int resident(const void *p, size_t n) { /* every page of [p, p + n) */
    const uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095, e = ((uintptr_t)p + n + 4095) & ~(uintptr_t)4095;
    unsigned char *v = malloc((e - a) / 4096);
    int all = v && !mincore((void *)a, e - a, v) ? 1 : -1;
    for (size_t i = 0; all == 1 && i < (e - a) / 4096; i++)
        if (!(v[i] & 1)) all = 0;
    free(v);
    return all;
}
static void check_kv_ready(const char *label) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    moe_model *m = NULL;
    CHECK(moe_model_open(path, &m, err, sizeof err) == MOE_OK, "%s: open (kv): %s", label, err);
    if (!m) return;
    const moe_hparams *hp = moe_model_hparams(m);
    void *probe = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const int can = probe != MAP_FAILED && madvise(probe, 8192, 23 /* MADV_POPULATE_WRITE */) == 0;
    if (probe != MAP_FAILED) munmap(probe, 8192);
    moe_engine_params ep = moe_engine_default_params();
    ep.n_threads = 2;
    moe_engine *e = NULL;
    CHECK(moe_engine_init(m, &ep, &e, err, sizeof err) == MOE_OK, "%s: engine (kv): %s", label, err);
    moe_seq *s = NULL;
    const int32_t n_ctx = 4096;
    if (e) CHECK(moe_seq_init(e, n_ctx, &s) == MOE_OK, "%s: seq (kv): %s", label, moe_engine_errmsg(e));
    if (s) {
        const size_t bb = (size_t)hp->n_layer * MOE_KV_BLOCK * (size_t)(hp->kv_lora_rank + hp->n_rot) * sizeof(float);
        /* the first whole page of block k */
#define BLOCK_PAGE(k) ((const char *)s->kv + (((k) * bb + 4095) & ~(size_t)4095))
        CHECK(((uintptr_t)s->kv & ((2u << 20) - 1)) == 0, "%s: cache at %p, want 2 MB alignment", label, (void *)s->kv);
        CHECK(s->kv_map >= s->kv_bytes && s->kv_map % (2u << 20) == 0, "%s: mapping of %zu bytes", label, s->kv_map);
        CHECK((size_t)(BLOCK_PAGE(7) - (const char *)s->kv) + 4096 <= s->kv_map, "%s: a 4096-token cache has 7 blocks", label);
        CHECK(resident(s->kv, 4096) == 0, "%s: a fresh cache is only reserved", label);
        /* huge pages asked for (unless the system has them off): /proc/self/smaps's entry of the cache */
        char thp[64] = "";
        FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
        if (f) {
            if (!fgets(thp, sizeof thp, f)) thp[0] = 0;
            fclose(f);
        }
        if (thp[0] && !strstr(thp, "[never]")) {
            f = fopen("/proc/self/smaps", "r");
            char line[256], want[32];
            snprintf(want, sizeof want, "%lx-", (unsigned long)(uintptr_t)s->kv);
            int in = 0, eligible = -1;
            while (f && fgets(line, sizeof line, f)) {
                if (strchr(line, '-') && strchr(line, ':') && line[0] != ' ' && strncmp(line, "THP", 3)) in = !strncmp(line, want, strlen(want));
                if (in && !strncmp(line, "THPeligible:", 12)) eligible = atoi(line + 12);
            }
            if (f) fclose(f);
            CHECK(eligible != 0, "%s: cache mapping not eligible for huge pages (THPeligible %d; -1: no such line)", label, eligible);
        }
        /* 4 KB pages from here, so that residency shows what was populated, not a huge page's fault */
        madvise(s->kv, s->kv_map, MADV_NOHUGEPAGE);
        const int32_t tok = 5;
        float *lg = malloc(sizeof(float) * (size_t)hp->n_vocab);
        moe_batch_item it = {s, &tok, 1, lg};
        CHECK(moe_engine_step(e, &it, 1) == MOE_OK, "%s: step (kv)", label);
        if (can) {
            CHECK(s->kv_ready == 2 * MOE_KV_BLOCK, "%s: rows populated %d, want 2 blocks", label, s->kv_ready);
            CHECK(resident(s->kv, 2 * bb) == 1, "%s: blocks 0-1 resident", label);
            CHECK(resident(BLOCK_PAGE(3), 4096) == 0, "%s: block 3 not populated", label);
            /* a prefill past them populates the blocks it writes and the next */
            int32_t toks[200];
            for (int i = 0; i < 200; i++) toks[i] = (i * 7 + 3) % hp->n_vocab;
            moe_batch_item it2 = {s, toks, 200, lg};
            CHECK(moe_engine_step(e, &it2, 1) == MOE_OK, "%s: prefill (kv)", label);
            CHECK(s->kv_ready == 5 * MOE_KV_BLOCK, "%s: rows populated %d after 201, want 5 blocks", label, s->kv_ready);
            CHECK(resident(s->kv, 5 * bb) == 1, "%s: blocks 0-4 resident", label);
            CHECK(resident(BLOCK_PAGE(6), 4096) == 0, "%s: block 6 not populated", label);
        } else {
            printf("%-10s cache rows fault in as written: this kernel has no MADV_POPULATE_WRITE\n", label);
        }
        free(lg);
        moe_seq_free(s);
#undef BLOCK_PAGE
    }
    moe_engine_free(e);
    moe_model_close(m);
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    moe_init_config base, c;
    moe_init_preset("tiny", &base);
    check_model("tiny", &base);
    c = base;
    c.dtype = MOE_DTYPE_Q8_0;
    check_model("tiny-q8", &c);
    c = base;
    c.dtype = MOE_DTYPE_Q4_0;
    check_model("tiny-q4_0", &c);
    c = base;
    c.n_embd = 256; /* Q4_K needs rows of 256-value blocks */
    c.dtype = MOE_DTYPE_Q4_K;
    check_model("tiny-q4_k", &c);
    c.dtype = MOE_DTYPE_Q6_K;
    check_model("tiny-q6_k", &c);
    c.dtype = MOE_DTYPE_Q5_K;
    check_model("tiny-q5_k", &c);
    check_load_progress("tiny-q8");
    check_copy("tiny-q8");
    check_copy("tiny-q4_k");
    check_kv_ready("tiny-q8");
    c = base;
    c.q_lora_rank = 0;
    c.gating = 1;
    c.n_expert_shared = 2;
    c.dtype = MOE_DTYPE_BF16;
    check_model("v2like", &c);
    return test_done();
}
