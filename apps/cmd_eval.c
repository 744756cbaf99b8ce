/* moe eval: evaluate token ids from position 0 and write every position's logits. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe eval -m MODEL (--tokens 1,2,3 | --tokens-file IDS.json) [--logits OUT.f32] [-t N]\n"
            "                [--ctx N] [--batch N]\n\n"
            "Evaluates one sequence from position 0. --logits writes float32 [n_tokens][n_vocab]\n"
            "(little-endian, row-major). Prints the last position's top tokens.\n");
}

int moe_cmd_eval(int argc, char **argv) {
    const char *model = NULL, *tokens = NULL, *tokens_file = NULL, *logits_path = NULL;
    long long threads = 0, n_ctx = 0, n_batch = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!(v = cli_val("eval", argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--tokens")) tokens = v;
        else if (!strcmp(a, "--tokens-file")) tokens_file = v;
        else if (!strcmp(a, "--logits")) logits_path = v;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int("eval", a, v, 1, 1024, &threads)) return 1;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int("eval", a, v, 1, 1 << 24, &n_ctx)) return 1;
        } else if (!strcmp(a, "--batch")) {
            if (cli_int("eval", a, v, 1, 1 << 16, &n_batch)) return 1;
        } else return cli_fail("eval", "unknown option '%s' (see moe eval --help)", a);
    }
    if (!model) return cli_fail("eval", "give the model with -m MODEL.gguf");
    if (!tokens == !tokens_file) return cli_fail("eval", "give exactly one of --tokens or --tokens-file");
    int32_t *ids = NULL;
    int n = tokens ? cli_ids("eval", tokens, &ids) : cli_ids_file("eval", tokens_file, &ids);
    if (n < 0) return 1;
    char err[512];
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    float *logits = NULL;
    int rc = 1;
    if (moe_model_open(model, &m, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto out;
    }
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = (int32_t)threads;
    p.n_ctx = n_ctx ? (int32_t)n_ctx : (n < moe_model_hparams(m)->n_ctx_train ? n : 0);
    if (n_batch) p.n_batch = (int32_t)n_batch;
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto out;
    }
    const int32_t V = moe_model_hparams(m)->n_vocab;
    if (logits_path) {
        logits = malloc(sizeof(float) * (size_t)n * (size_t)V);
        if (!logits) {
            cli_fail("eval", "not enough memory for %d × %d logits", n, V);
            rc = 2;
            goto out;
        }
    }
    double t0 = cli_now();
    moe_status st = moe_ctx_eval(c, ids, n, logits);
    double dt = cli_now() - t0;
    if (st) {
        cli_fail("eval", "%s", moe_ctx_errmsg(c));
        rc = st == MOE_ERR_INVAL || st == MOE_ERR_RANGE ? 1 : 2;
        goto out;
    }
    if (logits_path) {
        FILE *f = fopen(logits_path, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)n * V, f) != (size_t)n * V || fclose(f)) {
            cli_fail("eval", "cannot write '%s'", logits_path);
            goto out;
        }
    }
    const float *last = moe_ctx_logits(c);
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (last[i] > last[best]) best = i;
    fprintf(stderr, "eval: %d tokens in %.3f s (%.1f tokens/s, %d threads); last position argmax %d (logit %.4f)\n", n, dt,
            n / dt, moe_ctx_n_threads(c), best, last[best]);
    rc = 0;
out:
    free(ids);
    free(logits);
    moe_ctx_free(c);
    moe_model_close(m);
    return rc;
}
