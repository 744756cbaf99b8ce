/* bench_tok: tokenizer encode speed on the real DeepSeek-V3 vocabulary, one core.
 *
 * usage: bench_tok [VOCAB.gguf] [--mb N] [--chunk BYTES]
 * The text is every input string of shared/vectors/tokenizer/deepseek-v3.public.jsonl (English
 * prose, code, JSON, numbers, whitespace, CJK, Arabic, Hindi, Cyrillic, emoji, ...) plus a
 * block of English prose and code, repeated to N MB (default 8), encoded in prompt-sized
 * chunks (default 4096 bytes, cut at character boundaries) with add_bos and parse_special,
 * as a server would. Prints the best of 5 runs in MB/s (wall clock and CPU time), and decode
 * speed. The "long" category (single words of 100-200 repeated letters, a BPE worst case) is
 * left out unless BENCH_ALL=1 is set; its figure is reported separately in docs/performance.md. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/tok.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time of this process: on a busy shared machine it is the better single-core figure */
static double cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const char k_prose[] =
    "Mixture-of-experts models route each token to a few experts out of many. In DeepSeek-V3, "
    "256 routed experts and 1 shared expert sit in every MoE layer; the router picks 8 of them, "
    "limited to 4 of 8 groups. It's a design that keeps the cost per token small (about 37B "
    "active parameters out of 671B) while the model's capacity stays large.\n\n"
    "    for (int i = 0; i < n_expert; ++i) {\n        if (score[i] > best) { best = score[i]; k = i; }\n    }\n"
    "def softmax(x):\n    m = max(x)\n    e = [math.exp(v - m) for v in x]\n    return [v / sum(e) for v in e]\n\n"
    "{\"model\": \"deepseek-v3\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 128}\n"
    "Visit https://example.com/docs?page=2&lang=en for 1,234,567 more examples, 3.14159 and 2025-01-31.\n";

int main(int argc, char **argv) {
    const char *path = NULL;
    double mb = 8;
    size_t chunk = 4096;
    char buf[1024], err[256];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--chunk") && i + 1 < argc) chunk = (size_t)atol(argv[++i]);
        else path = argv[i];
    }
    const char *shared = getenv("MOE_SHARED");
    if (!shared) shared = "../shared";
    if (!path) {
        snprintf(buf, sizeof buf, "%s/vectors/tokenizer/deepseek-v3-vocab.gguf", shared);
        path = buf;
    }
    moe_gguf *g;
    moe_tok *t;
    if (moe_gguf_open(path, &g, err, sizeof err)) {
        fprintf(stderr, "bench_tok: %s\n", err);
        return 1;
    }
    double t0 = now();
    if (moe_tok_init_from_gguf(g, &t, err, sizeof err)) {
        fprintf(stderr, "bench_tok: %s\n", err);
        return 1;
    }
    double t_load = now() - t0;

    /* corpus */
    size_t cap = 1 << 20, n = 0;
    char *corpus = malloc(cap);
    char jp[1024];
    snprintf(jp, sizeof jp, "%s/vectors/tokenizer/deepseek-v3.public.jsonl", shared);
    FILE *f = fopen(jp, "rb");
    char *line = NULL;
    size_t lcap = 0;
    ssize_t ll;
    while (f && (ll = getline(&line, &lcap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)ll, JSON_ALLOW_NUL, &je);
        json_t *jt = o ? json_object_get(o, "text") : NULL;
        /* each string appears 4 times (option combinations): take it once */
        const char *cid = o ? json_string_value(json_object_get(o, "id")) : NULL;
        if (jt && cid && (getenv("BENCH_ALL") || strncmp(cid, "long-", 5)) && json_is_true(json_object_get(o, "bos")) &&
            json_is_true(json_object_get(o, "special"))) {
            size_t l = json_string_length(jt);
            if (n + l + 1 > cap) corpus = realloc(corpus, cap = 2 * (n + l + 1));
            memcpy(corpus + n, json_string_value(jt), l);
            n += l;
            corpus[n++] = '\n';
        }
        json_decref(o);
    }
    free(line);
    if (f) fclose(f);
    for (int k = 0; k < 4; k++) {
        size_t l = sizeof k_prose - 1;
        if (n + l > cap) corpus = realloc(corpus, cap = 2 * (n + l));
        memcpy(corpus + n, k_prose, l);
        n += l;
    }
    size_t want = (size_t)(mb * 1e6), base = n;
    char *text = malloc(want + base);
    size_t tn = 0;
    while (tn < want) {
        memcpy(text + tn, corpus, base);
        tn += base;
    }

    double best = 1e30, best_cpu = 1e30;
    size_t n_tok = 0;
    int32_t *all = malloc(sizeof *all * (tn + 16));
    for (int rep = 0; rep < 5; rep++) {
        double a = now(), ac = cpu();
        n_tok = 0;
        for (size_t o = 0; o < tn;) {
            size_t e = o + chunk < tn ? o + chunk : tn;
            while (e < tn && ((unsigned char)text[e] & 0xC0) == 0x80) e++;
            int32_t *ids;
            size_t ni;
            if (moe_tok_encode(t, text + o, e - o, 1, 1, &ids, &ni)) {
                fprintf(stderr, "bench_tok: encode failed\n");
                return 2;
            }
            memcpy(all + n_tok, ids, ni * sizeof *ids);
            n_tok += ni;
            free(ids);
            o = e;
        }
        double d = now() - a, dc = cpu() - ac;
        if (d < best) best = d;
        if (dc < best_cpu) best_cpu = dc;
    }
    double a = now();
    char *dec;
    size_t dl;
    moe_tok_decode(t, all, n_tok, 1, &dec, &dl);
    double td = now() - a;
    printf("vocab load: %.1f ms (%d tokens)\n", t_load * 1e3, moe_tok_n_vocab(t));
    printf("corpus: %s\n", getenv("BENCH_ALL") ? "all public vector strings" : "public vector strings except 'long'");
    printf("encode: %.2f MB in %.3f s = %.1f MB/s wall, %.1f MB/s cpu (%zu tokens, %.2f bytes/token, "
           "%zu-byte chunks, best of 5)\n",
           (double)tn / 1e6, best, (double)tn / 1e6 / best, (double)tn / 1e6 / best_cpu, n_tok,
           (double)tn / (double)n_tok, chunk);
    printf("decode: %.1f MB/s\n", (double)dl / 1e6 / td);
    free(dec);
    free(all);
    free(text);
    free(corpus);
    moe_tok_free(t);
    moe_gguf_close(g);
    return 0;
}
