/* moe experts: routing statistics (stats), expert pruning (prune) and the trade-off report
 * (compare). Formats and semantics: docs/experts.md; the work is in src/tools/experts*.c. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cmds.h"
#include "moe/experts.h"
#include "moe/model.h"
#include "moe/tok.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe experts stats -m MODEL --data TEXT_OR_JSONL [--max-tokens N] [--json OUT] [--html OUT]\n"
            "                         [--ctx N] [--batched] [-t N]\n"
            "       moe experts stats --from-metrics URL [--json OUT] [--html OUT]\n"
            "       moe experts prune -m MODEL (--keep-per-layer N | --coverage 0.95) (--stats FILE | --data TEXT)\n"
            "                         -o OUT.gguf [--max-tokens N] [-t N]\n"
            "       moe experts compare BASE PRUNED --data TEXT [--max-tokens N] [--decode N] [--json OUT] [-t N]\n\n"
            "stats   runs the model over the data (each JSONL line {\"text\": ...} is one sequence, a plain text\n"
            "        file is one) and reports per layer and expert: token share, load imbalance (max/mean, CV,\n"
            "        entropy), co-activation, and the experts covering 50/90/99%% of the routing mass.\n"
            "        --batched evaluates in batches (faster; the same statistics).\n"
            "        --from-metrics reads moe_expert_tokens_total from a server's Prometheus endpoint.\n"
            "prune   keeps the same number of experts in every MoE layer, ranked by routing mass; writes a GGUF\n"
            "        that moekit and llama.cpp load.\n"
            "compare perplexity of both models, KL(base || pruned) of the next-token distributions, size and\n"
            "        decode speed.\n");
}

/* ---- data: documents → token ids ---- */

typedef struct {
    int32_t **ids;
    size_t *n;
    size_t n_docs;
    size_t total;
} docs;

static void docs_free(docs *d) {
    for (size_t i = 0; i < d->n_docs; i++) free(d->ids[i]);
    free(d->ids);
    free(d->n);
    memset(d, 0, sizeof *d);
}

static int docs_add(docs *d, const moe_tok *tok, const char *text, size_t len, size_t max_tokens) {
    if (d->total >= max_tokens) return 0;
    int32_t *ids;
    size_t n;
    if (moe_tok_encode(tok, text, len, 1, 0, &ids, &n)) return -1;
    if (n > max_tokens - d->total) n = max_tokens - d->total;
    if (n < 1) {
        free(ids);
        return 0;
    }
    int32_t **ni = realloc(d->ids, (d->n_docs + 1) * sizeof *ni);
    size_t *nn = ni ? realloc(d->n, (d->n_docs + 1) * sizeof *nn) : NULL;
    if (ni) d->ids = ni;
    if (!ni || !nn) {
        free(ids);
        return -1;
    }
    d->n = nn;
    d->ids[d->n_docs] = ids;
    d->n[d->n_docs++] = n;
    d->total += n;
    return 0;
}

/* A .jsonl file (or one whose first byte is '{') is one {"text": ...} per line; else the whole
 * file is one document. */
static int load_docs(const char *cmd, const char *path, const moe_tok *tok, size_t max_tokens, docs *d) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail(cmd, "cannot read --data '%s'", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return cli_fail(cmd, "cannot read --data '%s'", path);
    }
    fclose(f);
    buf[len] = 0;
    size_t pl = strlen(path);
    size_t first = strspn(buf, " \t\r\n");
    int jsonl = (pl > 6 && !strcmp(path + pl - 6, ".jsonl")) || buf[first] == '{';
    int rc = 0;
    if (!jsonl) {
        if (docs_add(d, tok, buf, (size_t)len, max_tokens)) rc = cli_fail(cmd, "cannot tokenize '%s'", path);
    } else {
        char *p = buf;
        int line = 0;
        while (*p && !rc) {
            char *e = strchr(p, '\n');
            if (e) *e = 0;
            line++;
            if (p[strspn(p, " \t\r")]) {
                json_error_t je;
                json_t *o = json_loads(p, 0, &je), *t = o ? json_object_get(o, "text") : NULL;
                if (!json_is_string(t)) rc = cli_fail(cmd, "%s:%d: each line must be an object with a \"text\" string", path, line);
                else if (docs_add(d, tok, json_string_value(t), json_string_length(t), max_tokens))
                    rc = cli_fail(cmd, "%s:%d: cannot tokenize", path, line);
                json_decref(o);
            }
            p = e ? e + 1 : p + strlen(p);
        }
    }
    free(buf);
    if (!rc && d->total == 0) rc = cli_fail(cmd, "no tokens in '%s'", path);
    if (rc) docs_free(d);
    return rc;
}

static int open_model(const char *cmd, const char *path, moe_model **m, moe_tok **tok) {
    char err[512];
    if (moe_model_open(path, m, err, sizeof err)) return cli_fail(cmd, "%s", err);
    if (tok && moe_tok_init_from_gguf(moe_model_gguf(*m), tok, err, sizeof err)) {
        moe_model_close(*m);
        *m = NULL;
        return cli_fail(cmd, "%s: tokenizer: %s", path, err);
    }
    return 0;
}

/* Run every document in windows of n_ctx tokens (each window from position 0). */
static int collect(const char *cmd, moe_model *m, const docs *d, int32_t n_ctx, int threads, int per_token,
                   moe_experts_stats *s) {
    char err[512];
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = threads;
    moe_ctx *c;
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) return cli_fail(cmd, "%s", err);
    int rc = 0;
    for (size_t i = 0; i < d->n_docs && !rc; i++)
        for (size_t at = 0; at < d->n[i] && !rc; at += (size_t)n_ctx) {
            size_t n = d->n[i] - at < (size_t)n_ctx ? d->n[i] - at : (size_t)n_ctx;
            moe_ctx_truncate(c, 0);
            moe_status st = moe_experts_collect(c, m, d->ids[i] + at, (int32_t)n, per_token, s);
            if (st) rc = cli_fail(cmd, "evaluation failed: %s (%s)", moe_ctx_errmsg(c), moe_status_str(st));
        }
    moe_ctx_free(c);
    return rc;
}

static void print_stats(const moe_experts_stats *s) {
    int32_t *ord = malloc(sizeof(int32_t) * (size_t)s->n_expert);
    if (!ord) return;
    printf("%llu tokens, %d experts (top-%d), mass = %s\n", (unsigned long long)s->n_tokens, s->n_expert,
           s->n_expert_used, s->has_mass ? "routing weight" : "selections");
    printf("layer  selections  max/mean     CV  entropy(bits)  idle  cover50 cover90 cover99  top experts\n");
    for (int32_t l = 0; l < s->n_layer; l++) {
        moe_experts_layer_summary sm;
        if (!s->is_moe[l] || moe_experts_summarize(s, l, &sm, ord)) continue;
        printf("%5d %11llu %9.3f %6.3f %14.3f %4.0f%% %8d %7d %7d  ", l, (unsigned long long)sm.n_select,
               sm.max_over_mean, sm.cv, sm.entropy, 100 * sm.idle_fraction, sm.cover[0], sm.cover[1], sm.cover[2]);
        for (int32_t i = 0; i < s->n_expert && i < 4; i++)
            printf("%s%d(%.1f%%)", i ? " " : "", ord[i],
                   sm.n_select ? 100.0 * s->count[(size_t)l * s->n_expert + ord[i]] / sm.n_select : 0.0);
        printf("\n");
    }
    free(ord);
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int cmd_stats(int argc, char **argv) {
    const char *C = "experts stats", *model = NULL, *data = NULL, *json = NULL, *html = NULL, *url = NULL;
    long long max_tokens = 100000, n_ctx = 512, threads = 0;
    int batched = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--batched")) {
            batched = 1;
            continue;
        }
        if (!(v = cli_val(C, argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--html")) html = v;
        else if (!strcmp(a, "--from-metrics")) url = v;
        else if (!strcmp(a, "--max-tokens")) {
            if (cli_int(C, a, v, 1, 1LL << 40, &max_tokens)) return 1;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int(C, a, v, 1, 1 << 24, &n_ctx)) return 1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int(C, a, v, 1, 1024, &threads)) return 1;
        } else return cli_fail(C, "unknown option '%s' (see moe experts --help)", a);
    }
    char err[512];
    moe_experts_stats s;
    const char *label;
    if (url) {
        if (model || data) return cli_fail(C, "give either --from-metrics URL or -m MODEL --data TEXT, not both");
        if (moe_experts_fetch_metrics(url, &s, err, sizeof err)) return cli_fail(C, "%s", err);
        label = url;
    } else {
        if (!model || !data) return cli_fail(C, "give -m MODEL and --data TEXT_OR_JSONL (or --from-metrics URL)");
        moe_model *m;
        moe_tok *tok;
        if (open_model(C, model, &m, &tok)) return 1;
        docs d;
        int rc = load_docs(C, data, tok, (size_t)max_tokens, &d);
        const moe_hparams *hp = moe_model_hparams(m);
        if (!rc && moe_experts_stats_init(&s, hp->n_layer, hp->n_expert > 0 ? hp->n_expert : 1))
            rc = cli_fail(C, "out of memory");
        if (!rc) {
            if (hp->n_expert <= 0) rc = cli_fail(C, "%s has no MoE layer", model);
            else rc = collect(C, m, &d, (int32_t)n_ctx, (int)threads, !batched, &s);
            if (rc) moe_experts_stats_free(&s);
        }
        docs_free(&d);
        moe_tok_free(tok);
        moe_model_close(m);
        if (rc) return rc;
        label = base_name(model);
    }
    print_stats(&s);
    int rc = 0;
    if (json && moe_experts_write_json(&s, label, json, err, sizeof err)) rc = cli_fail(C, "%s", err);
    if (!rc && html && moe_experts_write_html(&s, label, html, err, sizeof err)) rc = cli_fail(C, "%s", err);
    moe_experts_stats_free(&s);
    return rc;
}

static int cmd_prune(int argc, char **argv) {
    const char *C = "experts prune", *model = NULL, *stats = NULL, *data = NULL, *out = NULL;
    long long keep = 0, max_tokens = 100000, threads = 0;
    double coverage = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!(v = cli_val(C, argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--stats")) stats = v;
        else if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--keep-per-layer")) {
            if (cli_int(C, a, v, 1, 1 << 20, &keep)) return 1;
        } else if (!strcmp(a, "--coverage")) {
            if (cli_float(C, a, v, 1e-9, 1.0, &coverage)) return 1;
        } else if (!strcmp(a, "--max-tokens")) {
            if (cli_int(C, a, v, 1, 1LL << 40, &max_tokens)) return 1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int(C, a, v, 1, 1024, &threads)) return 1;
        } else return cli_fail(C, "unknown option '%s' (see moe experts --help)", a);
    }
    if (!model || !out) return cli_fail(C, "give -m MODEL and -o OUT.gguf");
    if (!keep == !(coverage > 0)) return cli_fail(C, "give exactly one of --keep-per-layer N or --coverage C");
    if (!stats == !data) return cli_fail(C, "give exactly one of --stats FILE (from moe experts stats --json) or --data TEXT");
    char err[512];
    moe_model *m;
    moe_tok *tok = NULL;
    if (open_model(C, model, &m, data ? &tok : NULL)) return 1;
    const moe_hparams *hp = moe_model_hparams(m);
    moe_experts_stats s;
    memset(&s, 0, sizeof s);
    int rc = 0;
    if (stats) {
        if (moe_experts_read_json(stats, &s, err, sizeof err)) rc = cli_fail(C, "%s", err);
    } else {
        docs d;
        rc = load_docs(C, data, tok, (size_t)max_tokens, &d);
        if (!rc && moe_experts_stats_init(&s, hp->n_layer, hp->n_expert > 0 ? hp->n_expert : 1))
            rc = cli_fail(C, "out of memory");
        if (!rc) rc = collect(C, m, &d, 512, (int)threads, 0, &s);
        docs_free(&d);
    }
    uint8_t *kp = rc ? NULL : malloc((size_t)hp->n_layer * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1));
    int32_t n_keep = 0;
    if (!rc && !kp) rc = cli_fail(C, "out of memory");
    moe_experts_prune_params pp = moe_experts_default_prune_params();
    pp.keep_per_layer = (int32_t)keep;
    pp.coverage = coverage;
    if (!rc && moe_experts_plan(&s, hp, &pp, kp, &n_keep, err, sizeof err)) rc = cli_fail(C, "%s", err);
    if (!rc && moe_experts_prune(moe_model_gguf(m), kp, n_keep, out, err, sizeof err)) rc = cli_fail(C, "%s", err);
    if (!rc) {
        /* report what is kept and what share of the observed mass it holds */
        for (int32_t l = 0; l < hp->n_layer; l++) {
            if (l < hp->n_layer_dense_lead) continue;
            double tot = 0, kept = 0;
            printf("layer %d keeps", l);
            for (int32_t e = 0; e < hp->n_expert; e++) {
                size_t i = (size_t)l * hp->n_expert + e;
                double mm = s.has_mass ? s.mass[i] : (double)s.count[i];
                tot += mm;
                if (kp[i]) {
                    kept += mm;
                    printf(" %d", e);
                }
            }
            printf("  (%.2f%% of the %s)\n", tot > 0 ? 100 * kept / tot : 0.0, s.has_mass ? "routing mass" : "selections");
        }
        moe_model *pm;
        if (moe_model_open(out, &pm, err, sizeof err)) {
            rc = cli_fail(C, "the pruned file does not load: %s", err);
            rc = 2;
        } else {
            char b1[32], b2[32];
            printf("wrote %s: %d of %d experts per layer, top-%d, %s → %s of weights\n", out, n_keep, hp->n_expert,
                   moe_model_hparams(pm)->n_expert_used, cli_bytes((double)moe_model_weight_bytes(m), b1, sizeof b1),
                   cli_bytes((double)moe_model_weight_bytes(pm), b2, sizeof b2));
            moe_model_close(pm);
        }
    }
    free(kp);
    moe_experts_stats_free(&s);
    moe_tok_free(tok);
    moe_model_close(m);
    return rc;
}

/* log-softmax of row into out; returns nothing */
static void log_softmax(const float *x, int32_t V, double *out) {
    double mx = -INFINITY, sum = 0;
    for (int32_t i = 0; i < V; i++) mx = fmax(mx, x[i]);
    for (int32_t i = 0; i < V; i++) sum += exp((double)x[i] - mx);
    double lse = mx + log(sum);
    for (int32_t i = 0; i < V; i++) out[i] = (double)x[i] - lse;
}

static int cmd_compare(int argc, char **argv) {
    const char *C = "experts compare", *paths[2] = {NULL, NULL}, *data = NULL, *json = NULL;
    long long max_tokens = 4096, n_ctx = 512, threads = 0, n_decode = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (a[0] != '-') {
            if (paths[0] && paths[1]) return cli_fail(C, "give two models: BASE PRUNED");
            paths[paths[0] ? 1 : 0] = a;
            continue;
        }
        if (!(v = cli_val(C, argc, argv, &i))) return 1;
        if (!strcmp(a, "--data")) data = v;
        else if (!strcmp(a, "--json")) json = v;
        else if (!strcmp(a, "--max-tokens")) {
            if (cli_int(C, a, v, 2, 1LL << 40, &max_tokens)) return 1;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int(C, a, v, 2, 1 << 24, &n_ctx)) return 1;
        } else if (!strcmp(a, "--decode")) {
            if (cli_int(C, a, v, 0, 1 << 20, &n_decode)) return 1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int(C, a, v, 1, 1024, &threads)) return 1;
        } else return cli_fail(C, "unknown option '%s' (see moe experts --help)", a);
    }
    if (!paths[1] || !data) return cli_fail(C, "give BASE PRUNED and --data TEXT");
    moe_model *m[2] = {NULL, NULL};
    moe_tok *tok = NULL;
    moe_ctx *c[2] = {NULL, NULL};
    docs d = {0};
    float *lg[2] = {NULL, NULL};
    double *lp[2] = {NULL, NULL};
    int rc = 0;
    char err[512];
    if (open_model(C, paths[0], &m[0], &tok) || open_model(C, paths[1], &m[1], NULL)) {
        rc = 1;
        goto out;
    }
    const int32_t V = moe_model_hparams(m[0])->n_vocab;
    if (moe_model_hparams(m[1])->n_vocab != V) {
        rc = cli_fail(C, "the models have different vocabularies (%d vs %d ids)", V, moe_model_hparams(m[1])->n_vocab);
        goto out;
    }
    if ((rc = load_docs(C, data, tok, (size_t)max_tokens, &d))) goto out;
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = (int32_t)n_ctx;
    p.n_threads = (int)threads;
    for (int k = 0; k < 2; k++) {
        if (moe_ctx_init(m[k], &p, &c[k], err, sizeof err)) {
            rc = cli_fail(C, "%s", err);
            goto out;
        }
        lg[k] = malloc(sizeof(float) * (size_t)n_ctx * (size_t)V);
        lp[k] = malloc(sizeof(double) * (size_t)V);
        if (!lg[k] || !lp[k]) {
            rc = cli_fail(C, "not enough memory for %lld × %d logits", n_ctx, V);
            goto out;
        }
    }
    double nll[2] = {0, 0}, kl_sum = 0, kl_max = 0, max_dlogit = 0;
    long long n_scored = 0, n_pos = 0, top1_same = 0;
    for (size_t i = 0; i < d.n_docs; i++)
        for (size_t at = 0; at < d.n[i]; at += (size_t)n_ctx) {
            int32_t n = (int32_t)(d.n[i] - at < (size_t)n_ctx ? d.n[i] - at : (size_t)n_ctx);
            const int32_t *ids = d.ids[i] + at;
            for (int k = 0; k < 2; k++) {
                moe_ctx_truncate(c[k], 0);
                if (moe_ctx_eval(c[k], ids, n, lg[k])) {
                    rc = cli_fail(C, "%s: %s", paths[k], moe_ctx_errmsg(c[k]));
                    goto out;
                }
            }
            for (int32_t t = 0; t < n; t++) {
                const float *a = lg[0] + (size_t)t * V, *b = lg[1] + (size_t)t * V;
                log_softmax(a, V, lp[0]);
                log_softmax(b, V, lp[1]);
                double kl = 0;
                int32_t am = 0, bm = 0;
                for (int32_t v = 0; v < V; v++) {
                    kl += exp(lp[0][v]) * (lp[0][v] - lp[1][v]);
                    max_dlogit = fmax(max_dlogit, fabs((double)a[v] - b[v]));
                    if (a[v] > a[am]) am = v;
                    if (b[v] > b[bm]) bm = v;
                }
                if (kl < 0) kl = 0; /* rounding */
                kl_sum += kl;
                kl_max = fmax(kl_max, kl);
                top1_same += am == bm;
                n_pos++;
                if (t + 1 < n) {
                    nll[0] -= lp[0][ids[t + 1]];
                    nll[1] -= lp[1][ids[t + 1]];
                    n_scored++;
                }
            }
        }
    /* decode speed: one token per step from position 0 over the first tokens of the data */
    double tps[2] = {0, 0};
    int32_t nd = (int32_t)(n_decode < (long long)d.n[0] ? n_decode : (long long)d.n[0]);
    if (nd > n_ctx) nd = (int32_t)n_ctx;
    for (int k = 0; k < 2 && nd > 0; k++) {
        moe_ctx_truncate(c[k], 0);
        double t0 = cli_now();
        for (int32_t t = 0; t < nd; t++) moe_ctx_eval(c[k], &d.ids[0][t], 1, NULL);
        tps[k] = nd / (cli_now() - t0);
    }
    struct stat sb[2];
    uint64_t fsize[2] = {0, 0};
    for (int k = 0; k < 2; k++) fsize[k] = stat(paths[k], &sb[k]) ? 0 : (uint64_t)sb[k].st_size;
    double ppl[2] = {n_scored ? exp(nll[0] / n_scored) : NAN, n_scored ? exp(nll[1] / n_scored) : NAN};
    double kl_mean = n_pos ? kl_sum / n_pos : 0;
    char b[4][32];
    printf("positions %lld (next-token predictions %lld)\n", n_pos, n_scored);
    printf("              %14s %14s\n", "base", "pruned");
    printf("perplexity    %14.4f %14.4f  (%+.2f%%)\n", ppl[0], ppl[1], 100 * (ppl[1] / ppl[0] - 1));
    printf("file size     %14s %14s\n", cli_bytes((double)fsize[0], b[0], 32), cli_bytes((double)fsize[1], b[1], 32));
    printf("weights       %14s %14s\n", cli_bytes((double)moe_model_weight_bytes(m[0]), b[2], 32),
           cli_bytes((double)moe_model_weight_bytes(m[1]), b[3], 32));
    printf("decode tok/s  %14.1f %14.1f  (%d tokens, %d threads)\n", tps[0], tps[1], nd, moe_ctx_n_threads(c[0]));
    printf("KL(base||pruned) mean %.6g nats, max %.6g; max |Δlogit| %.6g; top-1 agreement %.2f%%\n", kl_mean, kl_max,
           max_dlogit, n_pos ? 100.0 * top1_same / n_pos : 0.0);
    if (json) {
        json_t *o = json_object();
        json_object_set_new(o, "format", json_string("moekit.experts.compare"));
        json_object_set_new(o, "version", json_integer(1));
        json_object_set_new(o, "base", json_string(paths[0]));
        json_object_set_new(o, "pruned", json_string(paths[1]));
        json_object_set_new(o, "n_positions", json_integer(n_pos));
        json_object_set_new(o, "n_predictions", json_integer(n_scored));
        json_object_set_new(o, "ppl_base", json_real(isfinite(ppl[0]) ? ppl[0] : 0));
        json_object_set_new(o, "ppl_pruned", json_real(isfinite(ppl[1]) ? ppl[1] : 0));
        json_object_set_new(o, "kl_mean", json_real(kl_mean));
        json_object_set_new(o, "kl_max", json_real(kl_max));
        json_object_set_new(o, "max_abs_logit_diff", json_real(max_dlogit));
        json_object_set_new(o, "top1_agreement", json_real(n_pos ? (double)top1_same / n_pos : 0));
        json_object_set_new(o, "file_bytes_base", json_integer((json_int_t)fsize[0]));
        json_object_set_new(o, "file_bytes_pruned", json_integer((json_int_t)fsize[1]));
        json_object_set_new(o, "weight_bytes_base", json_integer((json_int_t)moe_model_weight_bytes(m[0])));
        json_object_set_new(o, "weight_bytes_pruned", json_integer((json_int_t)moe_model_weight_bytes(m[1])));
        json_object_set_new(o, "decode_tokens", json_integer(nd));
        json_object_set_new(o, "decode_tps_base", json_real(tps[0]));
        json_object_set_new(o, "decode_tps_pruned", json_real(tps[1]));
        if (json_dump_file(o, json, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)))
            rc = cli_fail(C, "cannot write '%s'", json);
        json_decref(o);
    }
out:
    for (int k = 0; k < 2; k++) {
        free(lg[k]);
        free(lp[k]);
        moe_ctx_free(c[k]);
        moe_model_close(m[k]);
    }
    docs_free(&d);
    moe_tok_free(tok);
    return rc;
}

int moe_cmd_experts(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2;
    }
    if (!strcmp(argv[1], "stats")) return cmd_stats(argc - 1, argv + 1);
    if (!strcmp(argv[1], "prune")) return cmd_prune(argc - 1, argv + 1);
    if (!strcmp(argv[1], "compare")) return cmd_compare(argc - 1, argv + 1);
    return cli_fail("experts", "unknown subcommand '%s' (stats, prune, compare)", argv[1]);
}
