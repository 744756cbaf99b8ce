/* moe bench: prefill and decode speed, and decode as a share of the memory-bandwidth roofline.
 *
 * Decoding a MoE model reads, per token, the attention and router weights, the shared experts,
 * the K routed experts each token selects, the output head and the KV cache. The fastest
 * possible decode is bandwidth ÷ those bytes; this command measures both terms in the same run
 * (its own bandwidth probe, run just before and just after every timed decode run, the better
 * of the two counting for that run) and reports decode tokens/s as a percentage of that limit:
 * the median over runs of each run's own ratio, since a shared machine's bandwidth drifts by
 * tens of percent between runs.
 *
 * Batched decode (--batch 1,4,16): n sequences decode together through moe_engine_step, one
 * token each per step. A step reads the dense weights and the head once, each distinct expert
 * a step selects once per layer (counted from the routing counters, step by step) and every
 * sequence's KV cache; its roofline is bandwidth ÷ those bytes, and roofline_pct is the bytes
 * actually streamed per second as a share of the probed bandwidth.
 *
 * Prefill (pp) is also given as a share of the machine's int8 peak: int8 ops per prompt token
 * (2 × the multiply-adds of the W8A8 products, moe_model_matmul_macs; attention scores, router
 * and head left out) × pp ÷ the peak measured in the same run by moe_kern_int8_peak (a loop of
 * independent vpdpbusd zmm — or vpmaddubsw ymm without VNNI — on every thread), and also ÷
 * 128 ops per cycle per core (one 512-bit vpdpbusd per cycle) at the clock measured in the same
 * run (moe_kern_clock_hz): cores with two VNNI pipes (AMD Zen 5) measure 256.
 *
 * The ceiling (--ceiling): the product sets of n_g more decode steps are traced once, untimed
 * (moe_kern_set_trace: each set's weight ranges, in order), and read back with no arithmetic
 * right after every timed run (moe_membw_replay: each set one pool job, the probe's read loop,
 * the best of three read patterns), then probed again. That is how fast this machine reads
 * exactly what the steps read, in their order and in their pieces: the steps' tokens/s can
 * approach it but not pass it (by more than the host's drift), so tg as a
 * share of it says how much of the gap to the roofline is the engine's and how much the reads'. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "core/membw.h"
#include "core/pool.h"
#include "kern/kern.h"
#include "moe/batch.h"
#include "moe/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe bench -m MODEL [-p 512] [-n 128] [-d 0] [-t N] [-r 3] [--batch 1,4,16] [--profile] [--json]\n\n"
            "  -p N    prompt tokens for the prefill test (pp)     -n N   tokens decoded (tg)\n"
            "  -d N    decode after N tokens of context (tg at depth N; the context is prefilled untimed)\n"
            "  -t N    threads (default: all cores)                -r N   repetitions; medians are reported\n"
            "  --batch N,N,...  also decode N sequences together (moe_engine_step), -n steps each;\n"
            "          total tokens/s and %% of that batch's own roofline (distinct experts per step)\n"
            "  --json  one JSON object: pp, tg, bandwidth_gbs, active_bytes_per_token, roofline_pct,\n"
            "          int8_peak_gops, pp_int8_peak_pct, clock_ghz, int8_ops_per_cycle_core, pp_int8_128_pct,\n"
            "          batch: [{n, tg, roofline_pct, bandwidth_gbs}, ...]\n"
            "  --profile  also time every phase of the decode steps (attention in/core/out, experts, head,\n"
            "          ...): ms per step, share of the step, GB/s of weights read and %% of the probed\n"
            "          bandwidth; with --json as \"profile\" (and per batch) lists; the prefill's as\n"
            "          \"pp_profile\" (per prompt: there the products are compute-bound)\n"
            "  --ceiling  also replay the decode steps' weight reads with no arithmetic (same sets, same\n"
            "          order, the probe's read loop): the fastest these steps can run on this machine;\n"
            "          --json: ceiling_tg, ceiling_read_pct (%% of the probe), tg_of_ceiling_pct (per batch too)\n\n"
            "The bandwidth probe runs next to every timed decode run; roofline_pct is the median of each\n"
            "run's tokens/s against its own bandwidth.\n");
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

#define MAX_BATCHES 16

/* a step profile summed over runs (moe_engine_profile) */
typedef struct {
    moe_phase_stat ph[MOE_PHASE_COUNT];
    double total, steps;
} prof_sum;

static void prof_take(prof_sum *ps, moe_engine *e, double steps) {
    moe_phase_stat st[MOE_PHASE_COUNT];
    ps->total += moe_engine_profile_read(e, st);
    ps->steps += steps;
    for (int i = 0; i < MOE_PHASE_COUNT; i++) {
        ps->ph[i].name = st[i].name;
        ps->ph[i].seconds += st[i].seconds;
        ps->ph[i].bytes += st[i].bytes;
        ps->ph[i].calls += st[i].calls;
    }
    moe_engine_profile(e, 0);
}

/* the ceiling of traced steps (see the top): tokens/s, read rate as % of the probe, bytes per step */
typedef struct {
    double tg, read_pct, bytes_step, of_pct; /* of_pct: the measured tokens/s as % of tg (median of pairs) */
    double ph_s[MOE_PHASE_COUNT];            /* replay seconds per phase, summed over the replays */
    double steps;                            /* steps replayed in all (for ph_s per step) */
} ceil_res;

/* per phase: ms per step, share of the step, GB/s read and % of the probe (bw, bytes/s); with a
 * ceiling (cr, NULL or no steps: none) also the replay's ms per step and the phase's time as a
 * share of it */
static void prof_print(const prof_sum *ps, const char *title, double bw, int json, const ceil_res *cr) {
    const int ce = cr && cr->steps > 0;
    if (ps->steps <= 0 || ps->total <= 0) {
        if (json) printf("[]");
        return;
    }
    if (json) printf("[");
    else
        fprintf(stderr, "profile of %s: %.3f ms per step\n  %-13s %9s %7s %9s %8s %8s%s\n", title, 1e3 * ps->total / ps->steps,
                "phase", "ms/step", "share", "MB/step", "GB/s", "% probe", ce ? "  ceiling ms  % of it" : "");
    for (int i = 0, k = 0; i < MOE_PHASE_COUNT; i++) {
        const moe_phase_stat *p = &ps->ph[i];
        if (!p->calls && i != MOE_PHASE_OTHER) continue;
        double gbs = p->seconds > 0 ? p->bytes / p->seconds / 1e9 : 0, pct = bw > 0 && p->seconds > 0 ? 100.0 * p->bytes / p->seconds / bw : 0;
        const double cms = ce ? 1e3 * cr->ph_s[i] / cr->steps : 0, ms = 1e3 * p->seconds / ps->steps;
        if (json) {
            printf("%s{\"phase\": \"%s\", \"ms_per_step\": %.4f, \"share\": %.4f, \"mb_per_step\": %.3f, \"gbs\": %.3f, "
                   "\"bw_pct\": %.2f",
                   k++ ? ", " : "", p->name, ms, p->seconds / ps->total, p->bytes / ps->steps / 1e6, gbs, pct);
            if (ce) printf(", \"ceiling_ms_per_step\": %.4f", cms);
            printf("}");
        } else if (p->bytes > 0) {
            fprintf(stderr, "  %-13s %9.3f %6.1f%% %9.2f %8.2f %7.1f%%", p->name, ms, 100.0 * p->seconds / ps->total,
                    p->bytes / ps->steps / 1e6, gbs, pct);
            if (ce && cms > 0) fprintf(stderr, "  %10.3f %6.1f%%", cms, ms > 0 ? 100.0 * cms / ms : 0.0);
            fprintf(stderr, "\n");
        } else
            fprintf(stderr, "  %-13s %9.3f %6.1f%%\n", p->name, ms, 100.0 * p->seconds / ps->total);
    }
    if (json) printf("]");
}

#define TRACE_SPANS (1 << 20)
#define TRACE_SETS (1 << 17)

static moe_kern_trace *trace_new(void) {
    moe_kern_trace *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->span = malloc(sizeof *t->span * TRACE_SPANS);
    t->set_end = malloc(sizeof *t->set_end * TRACE_SETS);
    t->set_tag = malloc(sizeof *t->set_tag * TRACE_SETS);
    t->cap_span = TRACE_SPANS;
    t->cap_set = TRACE_SETS;
    if (!t->span || !t->set_end || !t->set_tag) {
        free(t->span);
        free(t->set_end);
        free(t->set_tag);
        free(t);
        return NULL;
    }
    return t;
}

static void trace_free(moe_kern_trace *t) {
    if (!t) return;
    free(t->span);
    free(t->set_end);
    free(t->set_tag);
    free(t);
}

static double trace_bytes(const moe_kern_trace *t) {
    double b = 0;
    for (int64_t i = 0; i < t->n_span; i++) b += (double)t->span[i].n;
    return b;
}

/* one replay of trace t (the best of three read patterns), then a probe: *tg (tokens/s for
 * `tokens` tokens in the trace) and *pct, its read rate as % of the better of that probe and
 * bw_before (bytes/s); the best pattern's seconds per phase are added to ph_s */
static void ceil_once(const moe_kern_trace *t, moe_pool *pool, moe_membw *probe, double bw_before, double tokens,
                      double *tg, double *pct, double *ph_s) {
    double bytes = trace_bytes(t), dt = 0;
    double *set_s = malloc(sizeof(double) * 2 * (size_t)(t->n_set > 0 ? t->n_set : 1)), *best_s = set_s + t->n_set;
    /* streams per thread and tile KB: the best patterns on the bench model (4 streams in equal
     * slices or 32-64 KB apart; 1, 2 and 8 streams and 16 KB tiles read 5-30 % slower) */
    static const int pat[][2] = {{4, 0}, {4, 32}, {4, 64}};
    for (int q = 0; q < (int)(sizeof pat / sizeof pat[0]); q++) {
        double d = moe_membw_replay(pool, t, pat[q][0], (size_t)pat[q][1] << 10, NULL, set_s);
        if (dt == 0 || d < dt) {
            dt = d;
            if (set_s) memcpy(best_s, set_s, sizeof(double) * (size_t)t->n_set);
        }
    }
    for (int64_t k = 0; set_s && k < t->n_set; k++)
        if (t->set_tag[k] >= 0 && t->set_tag[k] < MOE_PHASE_COUNT) ph_s[t->set_tag[k]] += best_s[k];
    free(set_s);
    double after = moe_membw_run(probe, pool, 3), bw = after > bw_before ? after : bw_before;
    *tg = dt > 0 ? tokens / dt : 0;
    *pct = dt > 0 && bw > 0 ? 100.0 * bytes / dt / bw : 0;
}

typedef struct {
    int n;
    double tg, roof_pct, bytes_step, limit, bw;
    prof_sum prof;
    ceil_res ceil;
} batch_res;

/* n sequences decode n_g steps together; returns MOE_OK and fills r */
static moe_status run_batch(moe_model *m, int nth, int n, int n_g, const int32_t *toks, int n_toks, batch_res *r,
                            moe_membw *probe, moe_pool *pool, int profile, int ceiling, int reps, char *err, size_t errlen) {
    const moe_hparams *hp = moe_model_hparams(m);
    moe_engine_params ep = moe_engine_default_params();
    ep.n_batch = n;
    ep.n_seq_max = n;
    ep.n_threads = nth;
    moe_engine *e = NULL;
    moe_seq **seq = calloc((size_t)n, sizeof *seq);
    moe_batch_item *it = calloc((size_t)n, sizeof *it);
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)hp->n_vocab);
    const size_t LE = (size_t)hp->n_layer * (size_t)hp->n_expert;
    uint64_t *prev = calloc(LE + 1, sizeof *prev);
    moe_status st = MOE_ERR_NOMEM;
    if (!seq || !it || !lg || !prev) goto out;
    if ((st = moe_engine_init(m, &ep, &e, err, errlen))) goto out;
    for (int i = 0; i < n; i++)
        if ((st = moe_seq_init(e, (ceiling ? 2 * n_g : n_g) + 2, &seq[i]))) {
            snprintf(err, errlen, "%s", moe_engine_errmsg(e));
            goto out;
        }
    /* first token of every sequence (pages in the caches), not timed */
    for (int i = 0; i < n; i++) it[i] = (moe_batch_item){seq[i], &toks[i % n_toks], 1, lg + (size_t)i * hp->n_vocab};
    if ((st = moe_engine_step(e, it, n))) goto fail;
    const double eb = (double)moe_model_expert_bytes(m);
    const double base = (double)moe_model_active_bytes(m) -
                        (double)moe_model_n_moe_layers(m) * hp->n_expert_used * eb;
    const double kv_row = (double)(hp->kv_lora_rank + hp->n_rot) * 4.0 * hp->n_layer;
    double bw = probe ? moe_membw_run(probe, pool, 3) : 0.0; /* bandwidth next to the timed steps */
    if (profile) moe_engine_profile(e, 1);
    double bytes = 0, t0 = cli_now();
    for (int k = 0; k < n_g; k++) {
        for (int il = 0; il < hp->n_layer; il++) {
            const uint64_t *c = moe_engine_expert_counts(e, il);
            if (c) memcpy(prev + (size_t)il * hp->n_expert, c, sizeof(uint64_t) * (size_t)hp->n_expert);
        }
        for (int i = 0; i < n; i++) it[i].tokens = &toks[(i * 7 + k + 1) % n_toks];
        if ((st = moe_engine_step(e, it, n))) goto fail;
        /* bytes of this step: dense weights + head once, distinct experts once, every cache */
        double distinct = 0;
        for (int il = 0; il < hp->n_layer; il++) {
            const uint64_t *c = moe_engine_expert_counts(e, il);
            if (!c) continue;
            for (int x = 0; x < hp->n_expert; x++) distinct += c[x] != prev[(size_t)il * hp->n_expert + x];
        }
        bytes += base + distinct * eb + kv_row * (double)n * (double)(k + 2);
    }
    double dt = cli_now() - t0;
    memset(&r->prof, 0, sizeof r->prof);
    if (profile) prof_take(&r->prof, e, n_g);
    if (probe) {
        double after = moe_membw_run(probe, pool, 3);
        bw = after > bw ? after : bw;
    }
    r->bw = bw;
    r->n = n;
    r->tg = (double)n * n_g / dt;
    r->bytes_step = bytes / n_g;
    r->limit = bw > 0 ? (double)n * bw / r->bytes_step : 0;
    r->roof_pct = bw > 0 ? 100.0 * (bytes / dt) / bw : 0;
    memset(&r->ceil, 0, sizeof r->ceil);
    if (ceiling) { /* n_g more steps, traced, then replayed */
        moe_kern_trace *t = trace_new();
        if (!t) {
            st = MOE_ERR_NOMEM;
            snprintf(err, errlen, "out of memory for the ceiling's trace");
            goto out;
        }
        moe_kern_set_trace(t);
        for (int k = n_g; k < 2 * n_g && !st; k++) {
            for (int i = 0; i < n; i++) it[i].tokens = &toks[(i * 7 + k + 1) % n_toks];
            st = moe_engine_step(e, it, n);
        }
        moe_kern_set_trace(NULL);
        if (!st && t->overflow) {
            st = MOE_ERR_NOMEM;
            snprintf(err, errlen, "the ceiling's trace is full (fewer steps: -n)");
        } else if (!st) {
            double ctg[64], cpct[64], cof[64];
            const int nr = reps < 64 ? reps : 64;
            for (int k = 0; k < nr; k++) {
                ceil_once(t, pool, probe, bw, (double)n * n_g, &ctg[k], &cpct[k], r->ceil.ph_s);
                cof[k] = ctg[k] > 0 ? 100.0 * r->tg / ctg[k] : 0;
            }
            r->ceil.tg = median(ctg, nr);
            r->ceil.read_pct = median(cpct, nr);
            r->ceil.bytes_step = trace_bytes(t) / n_g;
            r->ceil.of_pct = median(cof, nr);
            r->ceil.steps = (double)nr * n_g;
        }
        trace_free(t);
        if (st == MOE_ERR_NOMEM) goto out;
        if (st) goto fail;
    }
    goto out;
fail:
    snprintf(err, errlen, "%s", moe_engine_errmsg(e));
out:
    if (seq)
        for (int i = 0; i < n; i++) moe_seq_free(seq[i]);
    moe_engine_free(e);
    free(seq);
    free(it);
    free(lg);
    free(prev);
    return st;
}

int moe_cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    int batches[MAX_BATCHES], n_batches = 0;
    long long n_p = 512, n_g = 128, threads = 0, reps = 3, depth = 0;
    int json = 0, profile = 0, ceiling = 0;
    ceil_res tgc;
    memset(&tgc, 0, sizeof tgc);
    moe_kern_trace *tgt = NULL; /* the decode steps' trace (--ceiling) */
    double *ctg = NULL, *cpct = NULL, *cof = NULL;
    prof_sum tgp, ppp;
    memset(&tgp, 0, sizeof tgp);
    memset(&ppp, 0, sizeof ppp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            json = 1;
            continue;
        }
        if (!strcmp(a, "--profile")) {
            profile = 1;
            continue;
        }
        if (!strcmp(a, "--ceiling")) {
            ceiling = 1;
            continue;
        }
        if (!(v = cli_val("bench", argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p")) {
            if (cli_int("bench", a, v, 0, 1 << 20, &n_p)) return 1;
        } else if (!strcmp(a, "-n")) {
            if (cli_int("bench", a, v, 0, 1 << 20, &n_g)) return 1;
        } else if (!strcmp(a, "-d") || !strcmp(a, "--depth")) {
            if (cli_int("bench", a, v, 0, 1 << 20, &depth)) return 1;
        } else if (!strcmp(a, "-t")) {
            if (cli_int("bench", a, v, 1, 1024, &threads)) return 1;
        } else if (!strcmp(a, "-r")) {
            if (cli_int("bench", a, v, 1, 1000, &reps)) return 1;
        } else if (!strcmp(a, "--batch")) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            n_batches = 0;
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                long long b;
                if (n_batches == MAX_BATCHES) return cli_fail("bench", "--batch: at most %d sizes", MAX_BATCHES);
                if (cli_int("bench", a, tok, 1, 256, &b)) return 1;
                batches[n_batches++] = (int)b;
            }
        } else return cli_fail("bench", "unknown option '%s' (see moe bench --help)", a);
    }
    if (!model) return cli_fail("bench", "give the model with -m MODEL.gguf");
    char err[512], desc[512];
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    int32_t *toks = NULL;
    double *pp = NULL, *tg = NULL, *bws = NULL, *ratio = NULL;
    moe_pool *pool = NULL;
    moe_membw *probe = NULL;
    int rc = 1;
    if (moe_model_open(model, &m, err, sizeof err)) {
        cli_fail("bench", "%s", err);
        goto out;
    }
    const moe_hparams *hp = moe_model_hparams(m);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = (int32_t)threads;
    p.n_ctx = (int32_t)(n_p > depth + n_g + 1 ? n_p : depth + n_g + 1) + 1;
    p.n_batch = (int32_t)(n_p > 0 ? n_p : depth > 0 ? (depth < 512 ? depth : 512) : 1);
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        cli_fail("bench", "%s", err);
        goto out;
    }
    int nth = moe_ctx_n_threads(c);
    moe_model_describe(m, desc, sizeof desc);
    if (!json) fprintf(stderr, "bench: %s\nbench: %d threads, %s kernels\n", desc, nth, moe_kern_simd_name());

    /* bandwidth probe with the same thread count, run again next to every timed decode run */
    pool = moe_pool_init(nth);
    probe = moe_membw_new((size_t)1 << 30);
    double peak = pool ? moe_kern_int8_peak(pool, 0.5) : 0.0; /* int8 ops/s, all threads */
    double hz = pool ? moe_kern_clock_hz(pool, 0.2) : 0.0;    /* busy core clock */

    /* deterministic pseudo-random tokens */
    size_t nt = (size_t)(n_p > depth + n_g ? n_p : depth + n_g) + 1;
    /* a batch's sequence i reads toks[i·7 + k + 1] at step k (2·batch_steps steps with --ceiling):
     * enough tokens that no two sequences read the same ones (with wrapping, a short run's
     * sequences repeated each other and routed to the same experts) */
    const int batch_steps = n_g > 0 ? (int)n_g : 16;
    for (int b = 0; b < n_batches; b++) {
        const size_t need = (size_t)7 * (size_t)batches[b] + 2 * (size_t)batch_steps + 2;
        nt = need > nt ? need : nt;
    }
    toks = malloc(sizeof(int32_t) * nt);
    pp = calloc((size_t)reps, sizeof(double));
    tg = calloc((size_t)reps, sizeof(double));
    bws = calloc((size_t)reps, sizeof(double));
    ratio = calloc((size_t)reps, sizeof(double));
    if (!toks || !pp || !tg || !bws || !ratio || !pool || !probe) goto out;
    uint32_t x = 12345;
    for (size_t i = 0; i < nt; i++) {
        x = x * 1664525u + 1013904223u;
        toks[i] = (int32_t)((x >> 8) % (uint32_t)hp->n_vocab);
    }
    /* active bytes: weights per token + the average KV cache read over the decode run */
    double kv_row = (double)(hp->kv_lora_rank + hp->n_rot) * 4.0 * hp->n_layer;
    double active = (double)moe_model_active_bytes(m) + kv_row * ((depth > 0 ? (double)depth : 1.0) + (double)n_g / 2.0);
    /* warm-up: pages in the weights, and a full-size prompt commits the step buffers (a one-token
     * warm-up left the first timed prefill paying their page faults) */
    moe_ctx_eval(c, toks, (int32_t)(n_p > 0 ? n_p : 1), NULL);
    if (ceiling && n_g > 0) { /* the decode steps once more, traced, untimed; replayed after each timed run */
        ctg = calloc((size_t)reps, sizeof(double));
        cpct = calloc((size_t)reps, sizeof(double));
        cof = calloc((size_t)reps, sizeof(double));
        if (!(tgt = trace_new()) || !ctg || !cpct || !cof) {
            cli_fail("bench", "--ceiling: out of memory for the trace");
            goto out;
        }
        moe_ctx_truncate(c, 0);
        int bad = moe_ctx_eval(c, toks, (int32_t)(depth > 0 ? depth : 1), NULL) != MOE_OK;
        moe_kern_set_trace(tgt);
        for (long long i = 0; i < n_g && !bad; i++) bad = moe_ctx_eval(c, &toks[(depth > 0 ? depth : 1) + i], 1, NULL) != MOE_OK;
        moe_kern_set_trace(NULL);
        if (bad) goto eval_fail;
        if (tgt->overflow) {
            cli_fail("bench", "--ceiling: the trace of %lld steps is full; use fewer (-n)", n_g);
            goto out;
        }
    }
    for (int r = 0; r < reps; r++) {
        if (n_p > 0) {
            moe_ctx_truncate(c, 0);
            if (profile) moe_engine_profile(moe_ctx_engine(c), 1);
            double t0 = cli_now();
            if (moe_ctx_eval(c, toks, (int32_t)n_p, NULL)) goto eval_fail;
            pp[r] = (double)n_p / (cli_now() - t0);
            if (profile) prof_take(&ppp, moe_ctx_engine(c), 1.0); /* per prompt (one step of n_p tokens) */
        }
        if (n_g > 0) {
            moe_ctx_truncate(c, 0);
            if (moe_ctx_eval(c, toks, (int32_t)(depth > 0 ? depth : 1), NULL)) goto eval_fail; /* context, untimed */
            double before = moe_membw_run(probe, pool, 3);
            if (profile) moe_engine_profile(moe_ctx_engine(c), 1);
            double t0 = cli_now();
            for (long long i = 0; i < n_g; i++)
                if (moe_ctx_eval(c, &toks[(depth > 0 ? depth : 1) + i], 1, NULL)) goto eval_fail;
            tg[r] = (double)n_g / (cli_now() - t0);
            if (profile) prof_take(&tgp, moe_ctx_engine(c), (double)n_g);
            double after = moe_membw_run(probe, pool, 3);
            bws[r] = after > before ? after : before; /* the better of the probes just before and after */
            ratio[r] = 100.0 * tg[r] * active / bws[r];
            if (tgt) { /* the same steps' reads alone, right after */
                ceil_once(tgt, pool, probe, bws[r], (double)n_g, &ctg[r], &cpct[r], tgc.ph_s);
                cof[r] = ctg[r] > 0 ? 100.0 * tg[r] / ctg[r] : 0;
            }
        }
    }
    if (ceiling && n_g > 0) {
        tgc.tg = median(ctg, (int)reps);
        tgc.read_pct = median(cpct, (int)reps);
        tgc.of_pct = median(cof, (int)reps);
        tgc.bytes_step = trace_bytes(tgt) / (double)n_g;
        tgc.steps = (double)reps * (double)n_g;
    }
    double pp_med = n_p > 0 ? median(pp, (int)reps) : 0, tg_med = n_g > 0 ? median(tg, (int)reps) : 0;
    double bw = n_g > 0 ? median(bws, (int)reps) : moe_membw_run(probe, pool, 5);
    /* roofline share: the median over runs of each run's tokens/s against its own bandwidth */
    double limit = bw > 0 ? bw / active : 0, roof = n_g > 0 ? median(ratio, (int)reps) : 0;
    /* prefill as a share of the int8 peak (only meaningful when the products run W8A8) */
    const double pp_ops = 2.0 * (double)moe_model_matmul_macs(m);
    const int w8a8 = moe_kern_int8_enabled() && moe_kern_level() > 0;
    double pp_peak = peak > 0 ? 100.0 * pp_med * pp_ops / peak : 0;
    /* the same against 128 int8 ops per cycle per core (a 512-bit vpdpbusd per cycle) at the measured clock */
    double peak128 = 128.0 * hz * nth, pp_peak128 = peak128 > 0 ? 100.0 * pp_med * pp_ops / peak128 : 0;
    batch_res br[MAX_BATCHES];
    for (int b = 0; b < n_batches; b++) {
        if (run_batch(m, nth, batches[b], batch_steps, toks, (int)nt, &br[b], probe, pool, profile, ceiling,
                      (int)reps, err, sizeof err)) {
            cli_fail("bench", "batch %d: %s", batches[b], err);
            goto out;
        }
        if (!json)
            fprintf(stderr, "bench: batch %d: %.2f tokens/s, %.1f%% of its roofline\n", br[b].n, br[b].tg, br[b].roof_pct);
    }
    char b1[32], b2[32];
    if (json) {
        printf("{\"model\": \"%s\", \"threads\": %d, \"simd\": \"%s\", \"w8a8\": %s, \"n_prompt\": %lld, \"n_gen\": %lld, "
               "\"reps\": %lld, \"depth\": %lld, \"pp\": %.3f, \"tg\": %.3f, \"bandwidth_gbs\": %.3f, \"active_bytes_per_token\": %.0f, "
               "\"roofline_tg\": %.3f, \"roofline_pct\": %.2f, \"int8_peak_gops\": %.1f, \"pp_int8_ops_per_token\": %.0f, "
               "\"pp_int8_peak_pct\": %.2f, \"clock_ghz\": %.3f, \"int8_ops_per_cycle_core\": %.1f, \"pp_int8_128_pct\": %.2f, "
               "\"batch\": [",
               model, nth, moe_kern_simd_name(), w8a8 ? "true" : "false", n_p, n_g, reps, depth, pp_med, tg_med, bw / 1e9, active,
               limit, roof, peak / 1e9, pp_ops, pp_peak, hz / 1e9, hz > 0 ? peak / hz / nth : 0.0, pp_peak128);
        for (int b = 0; b < n_batches; b++) {
            printf("%s{\"n\": %d, \"tg\": %.3f, \"roofline_tg\": %.3f, \"roofline_pct\": %.2f, \"bytes_per_step\": %.0f, "
                   "\"bandwidth_gbs\": %.3f",
                   b ? ", " : "", br[b].n, br[b].tg, br[b].limit, br[b].roof_pct, br[b].bytes_step, br[b].bw / 1e9);
            if (ceiling)
                printf(", \"ceiling_tg\": %.3f, \"ceiling_read_pct\": %.2f, \"ceiling_bytes_per_step\": %.0f, "
                       "\"tg_of_ceiling_pct\": %.2f",
                       br[b].ceil.tg, br[b].ceil.read_pct, br[b].ceil.bytes_step,
                       br[b].ceil.of_pct);
            if (profile) {
                printf(", \"profile\": ");
                prof_print(&br[b].prof, NULL, br[b].bw, 1, ceiling ? &br[b].ceil : NULL);
            }
            printf("}");
        }
        printf("]");
        if (ceiling && n_g > 0)
            printf(", \"ceiling_tg\": %.3f, \"ceiling_read_pct\": %.2f, \"ceiling_bytes_per_step\": %.0f, \"tg_of_ceiling_pct\": %.2f",
                   tgc.tg, tgc.read_pct, tgc.bytes_step, tgc.of_pct);
        if (profile && n_g > 0) {
            printf(", \"profile\": ");
            prof_print(&tgp, NULL, bw, 1, ceiling ? &tgc : NULL);
        }
        if (profile && n_p > 0) {
            printf(", \"pp_profile\": ");
            prof_print(&ppp, NULL, bw, 1, NULL);
        }
        printf("}\n");
    } else {
        printf("memory read bandwidth   %8.2f GB/s (probe, %d threads; median of the probes next to each decode run)\n",
               bw / 1e9, nth);
        printf("active bytes per token  %8s (weights %s + KV cache)\n", cli_bytes(active, b1, sizeof b1),
               cli_bytes((double)moe_model_active_bytes(m), b2, sizeof b2));
        printf("pp%-5lld %10.2f tokens/s (median of %lld)\n", n_p, pp_med, reps);
        if (depth > 0) printf("tg at depth %lld (decode after %lld tokens of context)\n", depth, depth);
        printf("tg%-5lld %10.2f tokens/s (median of %lld)  roofline %.2f tokens/s  -> %.1f%% of roofline (median of "
               "per-run ratios)\n",
               n_g, tg_med, reps, limit, roof);
        printf("int8 peak               %8.1f Gops/s (vpdpbusd/vpmaddubsw probe, %d threads: %.0f ops/cycle/core at %.2f "
               "GHz)\n",
               peak / 1e9, nth, hz > 0 ? peak / hz / nth : 0.0, hz / 1e9);
        printf("pp%-5lld %10.2f tokens/s x %.2f Gops/token -> %.1f%% of int8 peak, %.1f%% of 128 ops/cycle/core%s\n", n_p,
               pp_med, pp_ops / 1e9, pp_peak, pp_peak128, w8a8 ? "" : " (W8A8 off: F32 activations)");
        if (ceiling && n_g > 0)
            printf("ceiling tg %8.2f tokens/s: the steps' %s of weight reads alone at %.1f%% of the probe -> tg at %.1f%% "
                   "of it\n",
                   tgc.tg, cli_bytes(tgc.bytes_step, b1, sizeof b1), tgc.read_pct, tgc.of_pct);
        for (int b = 0; b < n_batches; b++) {
            printf("batch %-3d %10.2f tokens/s total  roofline %.2f tokens/s (%s per step)  -> %.1f%% of roofline\n",
                   br[b].n, br[b].tg, br[b].limit, cli_bytes(br[b].bytes_step, b1, sizeof b1), br[b].roof_pct);
            if (ceiling)
                printf("  ceiling %10.2f tokens/s: the steps' %s of weight reads alone at %.1f%% of the probe -> %.1f%% of it\n",
                       br[b].ceil.tg, cli_bytes(br[b].ceil.bytes_step, b2, sizeof b2), br[b].ceil.read_pct,
                       br[b].ceil.of_pct);
        }
    }
    if (profile && !json) {
        if (n_p > 0) {
            char title[64];
            snprintf(title, sizeof title, "prefill (pp%lld, per prompt)", n_p);
            prof_print(&ppp, title, bw, 0, NULL);
        }
        if (n_g > 0) prof_print(&tgp, "decode (tg)", bw, 0, ceiling ? &tgc : NULL);
        for (int b = 0; b < n_batches; b++) {
            char title[64];
            snprintf(title, sizeof title, "batch %d", br[b].n);
            prof_print(&br[b].prof, title, br[b].bw, 0, ceiling ? &br[b].ceil : NULL);
        }
    }
    rc = 0;
    goto out;
eval_fail:
    cli_fail("bench", "%s", moe_ctx_errmsg(c));
out:
    free(toks);
    free(pp);
    free(tg);
    free(bws);
    free(ratio);
    free(ctg);
    free(cpct);
    free(cof);
    trace_free(tgt);
    moe_membw_free(probe);
    moe_pool_free(pool);
    moe_ctx_free(c);
    moe_model_close(m);
    return rc;
}
