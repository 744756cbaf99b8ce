/* moe bench: prefill and decode speed, and decode as a share of the memory-bandwidth roofline.
 *
 * Decoding a MoE model reads, per token, the attention and router weights, the shared experts,
 * the K routed experts each token selects, the output head and the KV cache. The fastest
 * possible decode is bandwidth ÷ those bytes; this command measures both terms in the same run
 * (its own bandwidth probe) and reports decode tokens/s as a percentage of that limit. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "core/membw.h"
#include "core/pool.h"
#include "kern/kern.h"
#include "moe/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe bench -m MODEL [-p 512] [-n 128] [-t N] [-r 3] [--json]\n\n"
            "  -p N    prompt tokens for the prefill test (pp)     -n N   tokens decoded (tg)\n"
            "  -t N    threads (default: all cores)                -r N   repetitions; medians are reported\n"
            "  --json  one JSON object: pp, tg, bandwidth_gbs, active_bytes_per_token, roofline_pct, ...\n");
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int moe_cmd_bench(int argc, char **argv) {
    const char *model = NULL;
    long long n_p = 512, n_g = 128, threads = 0, reps = 3;
    int json = 0;
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
        if (!(v = cli_val("bench", argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p")) {
            if (cli_int("bench", a, v, 0, 1 << 20, &n_p)) return 1;
        } else if (!strcmp(a, "-n")) {
            if (cli_int("bench", a, v, 0, 1 << 20, &n_g)) return 1;
        } else if (!strcmp(a, "-t")) {
            if (cli_int("bench", a, v, 1, 1024, &threads)) return 1;
        } else if (!strcmp(a, "-r")) {
            if (cli_int("bench", a, v, 1, 1000, &reps)) return 1;
        } else return cli_fail("bench", "unknown option '%s' (see moe bench --help)", a);
    }
    if (!model) return cli_fail("bench", "give the model with -m MODEL.gguf");
    char err[512], desc[512];
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    int32_t *toks = NULL;
    double *pp = NULL, *tg = NULL;
    int rc = 1;
    if (moe_model_open(model, &m, err, sizeof err)) {
        cli_fail("bench", "%s", err);
        goto out;
    }
    const moe_hparams *hp = moe_model_hparams(m);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = (int32_t)threads;
    p.n_ctx = (int32_t)(n_p > n_g + 1 ? n_p : n_g + 1) + 1;
    p.n_batch = n_p > 0 ? (int32_t)n_p : 1;
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        cli_fail("bench", "%s", err);
        goto out;
    }
    int nth = moe_ctx_n_threads(c);
    moe_model_describe(m, desc, sizeof desc);
    if (!json) fprintf(stderr, "bench: %s\nbench: %d threads, %s kernels\n", desc, nth, moe_kern_simd_name());

    /* bandwidth probe with the same thread count */
    moe_pool *pool = moe_pool_init(nth);
    double bw = pool ? moe_membw_probe(pool, (size_t)1 << 30, 5) : 0.0;
    moe_pool_free(pool);

    /* deterministic pseudo-random tokens */
    size_t nt = (size_t)(n_p > n_g ? n_p : n_g) + 1;
    toks = malloc(sizeof(int32_t) * nt);
    pp = calloc((size_t)reps, sizeof(double));
    tg = calloc((size_t)reps, sizeof(double));
    if (!toks || !pp || !tg) goto out;
    uint32_t x = 12345;
    for (size_t i = 0; i < nt; i++) {
        x = x * 1664525u + 1013904223u;
        toks[i] = (int32_t)((x >> 8) % (uint32_t)hp->n_vocab);
    }
    /* warm-up (page in the weights) */
    moe_ctx_eval(c, toks, 1, NULL);
    for (int r = 0; r < reps; r++) {
        if (n_p > 0) {
            moe_ctx_truncate(c, 0);
            double t0 = cli_now();
            if (moe_ctx_eval(c, toks, (int32_t)n_p, NULL)) goto eval_fail;
            pp[r] = (double)n_p / (cli_now() - t0);
        }
        if (n_g > 0) {
            moe_ctx_truncate(c, 0);
            if (moe_ctx_eval(c, toks, 1, NULL)) goto eval_fail;
            double t0 = cli_now();
            for (long long i = 0; i < n_g; i++)
                if (moe_ctx_eval(c, &toks[i + 1], 1, NULL)) goto eval_fail;
            tg[r] = (double)n_g / (cli_now() - t0);
        }
    }
    double pp_med = n_p > 0 ? median(pp, (int)reps) : 0, tg_med = n_g > 0 ? median(tg, (int)reps) : 0;
    /* active bytes: weights per token + the average KV cache read over the decode run */
    double kv_row = (double)(hp->kv_lora_rank + hp->n_rot) * 4.0 * hp->n_layer;
    double active = (double)moe_model_active_bytes(m) + kv_row * (1.0 + (double)n_g / 2.0);
    double limit = bw > 0 ? bw / active : 0, roof = limit > 0 ? 100.0 * tg_med / limit : 0;
    char b1[32], b2[32];
    if (json) {
        printf("{\"model\": \"%s\", \"threads\": %d, \"simd\": \"%s\", \"n_prompt\": %lld, \"n_gen\": %lld, \"reps\": %lld, "
               "\"pp\": %.3f, \"tg\": %.3f, \"bandwidth_gbs\": %.3f, \"active_bytes_per_token\": %.0f, "
               "\"roofline_tg\": %.3f, \"roofline_pct\": %.2f, \"batch\": []}\n",
               model, nth, moe_kern_simd_name(), n_p, n_g, reps, pp_med, tg_med, bw / 1e9, active, limit, roof);
    } else {
        printf("memory read bandwidth   %8.2f GB/s (probe, %d threads)\n", bw / 1e9, nth);
        printf("active bytes per token  %8s (weights %s + KV cache)\n", cli_bytes(active, b1, sizeof b1),
               cli_bytes((double)moe_model_active_bytes(m), b2, sizeof b2));
        printf("pp%-5lld %10.2f tokens/s (median of %lld)\n", n_p, pp_med, reps);
        printf("tg%-5lld %10.2f tokens/s (median of %lld)  roofline %.2f tokens/s  -> %.1f%% of roofline\n", n_g, tg_med,
               reps, limit, roof);
    }
    rc = 0;
    goto out;
eval_fail:
    cli_fail("bench", "%s", moe_ctx_errmsg(c));
out:
    free(toks);
    free(pp);
    free(tg);
    moe_ctx_free(c);
    moe_model_close(m);
    return rc;
}
