/* moe run: generate text from a prompt, streaming to stdout. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/model.h"
#include "moe/sample.h"
#include "moe/tok.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe run -m MODEL (-p PROMPT | -f FILE | --tokens 1,2,3) [-n N] [--chat [--system TEXT]\n"
            "               [--template deepseek2|deepseek3]] [--temp T] [--top-p P] [--top-k K] [--seed S]\n"
            "               [-t N] [--ctx N] [--no-special]\n\n"
            "Generates up to N tokens (default 128), printing them as they come; stops at end-of-sequence.\n"
            "  --chat         wrap the prompt as a user turn with the model's chat template\n"
            "  --temp T       temperature (default 0.8; 0 = greedy)   --top-p P (0.95)   --top-k K (40, 0 = off)\n"
            "  --seed S       sampling seed (default 0: runs are reproducible)\n"
            "  --no-special   treat special-token text in the prompt as plain text\n"
            "Timing goes to stderr.\n");
}

int moe_cmd_run(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *file = NULL, *tokens = NULL, *system = NULL, *tmpl = NULL;
    long long n_gen = 128, threads = 0, n_ctx = 0, top_k = 40, seed = 0;
    double temp = 0.8, top_p = 0.95;
    int chat = 0, special = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--chat")) {
            chat = 1;
            continue;
        }
        if (!strcmp(a, "--no-special")) {
            special = 0;
            continue;
        }
        if (!(v = cli_val("run", argc, argv, &i))) return 1;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) file = v;
        else if (!strcmp(a, "--tokens")) tokens = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--template")) tmpl = v;
        else if (!strcmp(a, "-n")) {
            if (cli_int("run", a, v, 0, 1 << 24, &n_gen)) return 1;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int("run", a, v, 1, 1024, &threads)) return 1;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int("run", a, v, 1, 1 << 24, &n_ctx)) return 1;
        } else if (!strcmp(a, "--top-k")) {
            if (cli_int("run", a, v, 0, 1 << 24, &top_k)) return 1;
        } else if (!strcmp(a, "--seed")) {
            if (cli_int("run", a, v, 0, 0x7fffffffffffffffLL, &seed)) return 1;
        } else if (!strcmp(a, "--temp")) {
            if (cli_float("run", a, v, 0, 100, &temp)) return 1;
        } else if (!strcmp(a, "--top-p")) {
            if (cli_float("run", a, v, 1e-6, 1, &top_p)) return 1;
        } else return cli_fail("run", "unknown option '%s' (see moe run --help)", a);
    }
    if (!model) return cli_fail("run", "give the model with -m MODEL.gguf");
    if ((prompt != NULL) + (file != NULL) + (tokens != NULL) != 1)
        return cli_fail("run", "give exactly one of -p PROMPT, -f FILE or --tokens IDS");
    if (chat && tokens) return cli_fail("run", "--chat needs a text prompt, not --tokens");

    char err[512];
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    moe_tok *tk = NULL;
    moe_tok_stream *ts = NULL;
    moe_sampler *smp = NULL;
    int32_t *ids = NULL;
    char *text = NULL, *templated = NULL;
    size_t n_ids = 0;
    int rc = 1;
    if (moe_model_open(model, &m, err, sizeof err)) {
        cli_fail("run", "%s", err);
        goto out;
    }
    if (moe_tok_init_from_gguf(moe_model_gguf(m), &tk, err, sizeof err)) {
        cli_fail("run", "tokenizer: %s", err);
        goto out;
    }
    if (tokens) {
        int n = cli_ids("run", tokens, &ids);
        if (n < 0) goto out;
        n_ids = (size_t)n;
    } else {
        size_t len = 0;
        if (file) {
            FILE *f = fopen(file, "rb");
            if (!f) {
                cli_fail("run", "cannot open prompt file '%s'", file);
                goto out;
            }
            fseek(f, 0, SEEK_END);
            long sz = ftell(f);
            fseek(f, 0, SEEK_SET);
            text = malloc((size_t)(sz > 0 ? sz : 0) + 1);
            len = text ? fread(text, 1, (size_t)(sz > 0 ? sz : 0), f) : 0;
            fclose(f);
            if (!text) goto out;
            text[len] = 0;
        } else {
            text = strdup(prompt);
            len = strlen(text);
        }
        const char *in = text;
        if (chat) {
            moe_chat_msg msgs[2];
            size_t nm = 0;
            if (system) msgs[nm++] = (moe_chat_msg){"system", system};
            msgs[nm++] = (moe_chat_msg){"user", text};
            if (moe_chat_apply_ex(tk, tmpl, msgs, nm, 1, &templated, err, sizeof err)) {
                cli_fail("run", "chat template: %s (use --template deepseek3 or deepseek2)", err);
                goto out;
            }
            in = templated;
            len = strlen(templated);
        }
        if (moe_tok_encode(tk, in, len, moe_tok_add_bos(tk), special, &ids, &n_ids)) {
            cli_fail("run", "could not tokenize the prompt");
            goto out;
        }
        if (!n_ids) {
            cli_fail("run", "the prompt is empty");
            goto out;
        }
    }
    moe_ctx_params p = moe_ctx_default_params();
    p.n_threads = (int32_t)threads;
    int64_t want = (int64_t)n_ids + n_gen;
    int32_t train = moe_model_hparams(m)->n_ctx_train;
    p.n_ctx = n_ctx ? (int32_t)n_ctx : (int32_t)(want < train ? want : train);
    if (moe_ctx_init(m, &p, &c, err, sizeof err)) {
        cli_fail("run", "%s", err);
        goto out;
    }
    moe_sampler_params sp = {(float)temp, (float)top_p, (int32_t)top_k, (uint64_t)seed};
    if (moe_sampler_init(&sp, moe_model_hparams(m)->n_vocab, &smp) || moe_tok_stream_init(tk, 0, &ts)) {
        cli_fail("run", "out of memory");
        rc = 2;
        goto out;
    }
    double t0 = cli_now();
    if (moe_ctx_eval(c, ids, (int32_t)n_ids, NULL)) {
        cli_fail("run", "%s", moe_ctx_errmsg(c));
        goto out;
    }
    double t1 = cli_now();
    long long gen = 0;
    const char *piece;
    size_t plen;
    const char *stop = "length";
    while (gen < n_gen) {
        int32_t id = moe_sampler_sample(smp, moe_ctx_logits(c));
        gen++;
        if (moe_tok_is_eog(tk, id)) {
            stop = "end of sequence";
            break;
        }
        if (!moe_tok_stream_push(ts, id, &piece, &plen) && plen) {
            fwrite(piece, 1, plen, stdout);
            fflush(stdout);
        }
        if (gen == n_gen) break;
        if (moe_ctx_pos(c) >= moe_ctx_n_ctx(c)) {
            stop = "context full";
            break;
        }
        if (moe_ctx_eval(c, &id, 1, NULL)) {
            cli_fail("run", "%s", moe_ctx_errmsg(c));
            goto out;
        }
    }
    if (!moe_tok_stream_flush(ts, &piece, &plen) && plen) fwrite(piece, 1, plen, stdout);
    fputc('\n', stdout);
    double t2 = cli_now();
    fprintf(stderr, "run: prompt %zu tokens in %.3f s (%.1f tokens/s); generated %lld tokens in %.3f s (%.1f tokens/s); stop: %s\n",
            n_ids, t1 - t0, (double)n_ids / (t1 - t0), gen, t2 - t1, gen > 0 ? (double)gen / (t2 - t1) : 0.0, stop);
    rc = 0;
out:
    free(ids);
    free(text);
    free(templated);
    moe_sampler_free(smp);
    moe_tok_stream_free(ts);
    moe_tok_free(tk);
    moe_ctx_free(c);
    moe_model_close(m);
    return rc;
}
