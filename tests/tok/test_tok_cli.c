/* tok: the `moe tokenize` / `moe detokenize` commands (MOE_BIN), end to end.
 * Runs the whole public vector file through `moe tokenize --jsonl` (per-line bos/special) and
 * compares every output line; checks detokenize and the exit status of user errors. */
#include <jansson.h>
#include <sys/wait.h>

#include "testutil.h"

static int run(const char *cmd) {
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

int main(void) {
    const char *bin = getenv("MOE_BIN");
    if (!bin) bin = "./moe";
    char vocab[1024], jsonl[1024], cmd[4096];
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", vocab, sizeof vocab);
    tu_shared("vectors/tokenizer/deepseek-v3.public.jsonl", jsonl, sizeof jsonl);

    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --jsonl '%s'", bin, vocab, jsonl);
    FILE *p = popen(cmd, "r");
    FILE *f = fopen(jsonl, "rb");
    CHECK(p && f, "popen/fopen");
    if (!p || !f) return test_done();
    char *a = NULL, *b = NULL;
    size_t ca = 0, cb = 0;
    int lines = 0, ok = 0;
    while (getline(&a, &ca, f) > 0) {
        lines++;
        if (getline(&b, &cb, p) <= 0) break;
        json_error_t je;
        json_t *o = json_loads(a, JSON_ALLOW_NUL, &je), *got = json_loads(b, 0, &je);
        if (o && got && json_equal(json_object_get(o, "ids"), got)) ok++;
        else fprintf(stderr, "FAIL line %d: %s", lines, b);
        json_decref(o);
        json_decref(got);
    }
    free(a);
    free(b);
    fclose(f);
    CHECK(pclose(p) == 0, "moe tokenize --jsonl exit status");
    printf("cli: %d/%d vector lines\n", ok, lines);
    CHECK(lines == 1736 && ok == lines, "%d of %d lines", ok, lines);

    /* detokenize */
    snprintf(cmd, sizeof cmd, "'%s' detokenize -m '%s' 0 19923 2058", bin, vocab);
    p = popen(cmd, "r");
    char out[256] = "";
    size_t n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    CHECK(p && pclose(p) == 0 && !strcmp(out, "<\xef\xbd\x9c" "begin\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>Hello world\n"),
          "detokenize: '%s'", out);
    snprintf(cmd, sizeof cmd, "'%s' detokenize -m '%s' --no-special --ids 0,19923,2058", bin, vocab);
    p = popen(cmd, "r");
    n = p ? fread(out, 1, sizeof out - 1, p) : 0;
    out[n] = 0;
    CHECK(p && pclose(p) == 0 && !strcmp(out, "Hello world\n"), "detokenize --no-special: '%s'", out);

    /* user errors: exit 1, one line on stderr */
    const char *bad[] = {"tokenize -m '%s'", "tokenize -m '%s' a b", "tokenize -m /nonexistent.gguf x",
                         "tokenize -m '%s' --bogus x", "detokenize -m '%s'", "detokenize -m '%s' 12x",
                         "detokenize -m '%s' 99999999", "tokenize -m '%s' --jsonl /nonexistent.jsonl"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[2048];
        snprintf(args, sizeof args, bad[i], vocab);
        snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>&1", bin, args);
        CHECK(run(cmd) == 1, "'%s' should exit 1", args);
    }
    snprintf(cmd, sizeof cmd, "'%s' tokenize --help >/dev/null && '%s' detokenize --help >/dev/null", bin, bin);
    CHECK(run(cmd) == 0, "--help");
    return test_done();
}
