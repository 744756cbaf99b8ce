/* moe eval: evaluate token ids from position 0 and write every position's logits; or the
 * perplexity of a text file (--perplexity), computed as llama.cpp's llama-perplexity does. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/model.h"
#include "moe/tok.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe eval -m MODEL (--tokens 1,2,3 | --tokens-file IDS.json) [--logits OUT.f32] [-t N]\n"
            "                [--ctx N] [--batch N]\n"
            "       moe eval -m MODEL --perplexity TEXT_FILE [--ctx 512] [--chunks N] [-t N]\n\n"
            "Evaluates one sequence from position 0. --logits writes float32 [n_tokens][n_vocab]\n"
            "(little-endian, row-major). Prints the last position's top tokens.\n\n"
            "--perplexity: tokenizes the file with the model's tokenizer (BOS first if the vocabulary\n"
            "asks for it), cuts the tokens into windows of --ctx tokens (default 512), evaluates each\n"
            "window from position 0 with its first token replaced by BOS, and scores the predictions\n"
            "of the second half of each window (as llama.cpp's llama-perplexity). Prints the running\n"
            "perplexity per window and the final one: exp(mean negative log-likelihood).\n");
}

/* log-sum-exp of a row minus the target logit: -log softmax(row)[target] (double accumulation) */
static double nll(const float *row, int32_t V, int32_t target) {
    float mx = row[0];
    for (int32_t i = 1; i < V; i++) mx = row[i] > mx ? row[i] : mx;
    double s = 0;
    for (int32_t i = 0; i < V; i++) s += exp((double)row[i] - mx);
    return log(s) + mx - row[target];
}

static int perplexity(const char *model, const char *file, long long n_ctx, long long max_chunks, long long threads,
                      long long n_batch) {
    char err[512];
    int rc = 1;
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    moe_tok *tk = NULL;
    int32_t *ids = NULL;
    float *logits = NULL;
    size_t len = 0, n_ids = 0;
    FILE *f = fopen(file, "rb");
    char *text = NULL;
    if (!f) return cli_fail("eval", "cannot open '%s'", file);
    fseek(f, 0, SEEK_END);
    long fl = ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc(fl > 0 ? (size_t)fl : 1);
    if (!text || (fl > 0 && fread(text, 1, (size_t)fl, f) != (size_t)fl)) {
        fclose(f);
        free(text);
        return cli_fail("eval", "cannot read '%s'", file);
    }
    fclose(f);
    len = fl > 0 ? (size_t)fl : 0;
    if (moe_model_open(model, &m, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto out;
    }
    if (moe_tok_init_from_gguf(moe_model_gguf(m), &tk, err, sizeof err)) {
        cli_fail("eval", "tokenizer: %s", err);
        goto out;
    }
    if (moe_tok_encode(tk, text, len, 1, 0, &ids, &n_ids)) {
        cli_fail("eval", "tokenizing '%s' failed", file);
        rc = 2;
        goto out;
    }
    const int32_t V = moe_model_hparams(m)->n_vocab, bos = moe_tok_bos(tk);
    const int add_bos = moe_tok_add_bos(tk) && bos >= 0;
    if (n_ctx < 4) n_ctx = 4;
    long long n_chunk = (long long)n_ids / n_ctx;
    if (max_chunks > 0 && n_chunk > max_chunks) n_chunk = max_chunks;
    if (n_chunk < 1) {
        cli_fail("eval", "'%s' has %zu tokens, fewer than one window of --ctx %lld (use a smaller --ctx)", file, n_ids,
                 n_ctx);
        goto out;
    }
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = (int32_t)threads;
    p.n_ctx = (int32_t)n_ctx;
    if (n_batch) p.n_batch = (int32_t)n_batch;
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        cli_fail("eval", "%s", err);
        goto out;
    }
    const int64_t first = n_ctx / 2; /* score positions first .. n_ctx-2 (predicting first+1 ..) */
    logits = malloc(sizeof(float) * (size_t)(n_ctx - first) * (size_t)V);
    if (!logits) {
        cli_fail("eval", "not enough memory for %lld × %d logits", n_ctx - first, V);
        rc = 2;
        goto out;
    }
    fprintf(stderr, "perplexity: %zu tokens, %lld windows of %lld, scoring %lld predictions per window\n", n_ids,
            n_chunk, n_ctx, n_ctx - first - 1);
    double sum = 0, t0 = cli_now();
    long long count = 0;
    for (long long k = 0; k < n_chunk; k++) {
        int32_t *w = ids + k * n_ctx, save = w[0];
        if (add_bos) w[0] = bos;
        moe_status st = moe_ctx_truncate(c, 0);
        if (!st) st = moe_ctx_eval(c, w, (int32_t)first, NULL);
        if (!st) st = moe_ctx_eval(c, w + first, (int32_t)(n_ctx - first), logits);
        w[0] = save;
        if (st) {
            cli_fail("eval", "%s", moe_ctx_errmsg(c));
            rc = 2;
            goto out;
        }
        for (int64_t j = first; j < n_ctx - 1; j++) {
            sum += nll(logits + (size_t)(j - first) * (size_t)V, V, w[j + 1]);
            count++;
        }
        printf("[%lld]%.4f%s", k + 1, exp(sum / (double)count), k + 1 < n_chunk ? "," : "\n");
        fflush(stdout);
    }
    double dt = cli_now() - t0;
    printf("perplexity: %.4f (mean NLL %.5f over %lld predictions, %lld windows of %lld tokens) in %.1f s\n",
           exp(sum / (double)count), sum / (double)count, count, n_chunk, n_ctx, dt);
    rc = 0;
out:
    free(text);
    free(ids);
    free(logits);
    moe_ctx_free(c);
    moe_tok_free(tk);
    moe_model_close(m);
    return rc;
}

int moe_cmd_eval(int argc, char **argv) {
    const char *model = NULL, *tokens = NULL, *tokens_file = NULL, *logits_path = NULL, *ppl_file = NULL;
    long long threads = 0, n_ctx = 0, n_batch = 0, chunks = 0;
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
        else if (!strcmp(a, "--perplexity")) ppl_file = v;
        else if (!strcmp(a, "--chunks")) {
            if (cli_int("eval", a, v, 1, 1 << 30, &chunks)) return 1;
        }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int("eval", a, v, 1, 1024, &threads)) return 1;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int("eval", a, v, 1, 1 << 24, &n_ctx)) return 1;
        } else if (!strcmp(a, "--batch")) {
            if (cli_int("eval", a, v, 1, 1 << 16, &n_batch)) return 1;
        } else return cli_fail("eval", "unknown option '%s' (see moe eval --help)", a);
    }
    if (!model) return cli_fail("eval", "give the model with -m MODEL.gguf");
    if (ppl_file) {
        if (tokens || tokens_file || logits_path)
            return cli_fail("eval", "--perplexity cannot be combined with --tokens, --tokens-file or --logits");
        return perplexity(model, ppl_file, n_ctx ? n_ctx : 512, chunks, threads, n_batch);
    }
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
