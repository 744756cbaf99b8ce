/* `moe info` run as a process (MOE_BIN): a shared model in text and JSON (parsed with jansson),
 * --help, a broken file from the corpus (exit 1 with the reader's message), a missing file. */
#include <jansson.h>
#include <sys/wait.h>

#include "moe/gguf.h"
#include "testutil.h"

/* Run a shell command; stdout into out (malloc'd), returns the exit status. */
static int run(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    size_t n = 0, cap = 1 << 16;
    char *b = malloc(cap);
    if (!p || !b) exit(2);
    size_t k;
    while ((k = fread(b + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (cap - n < 4096) b = realloc(b, cap *= 2);
    }
    b[n] = 0;
    int st = pclose(p);
    *out = b;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int main(void) {
    const char *bin = getenv("MOE_BIN");
    const char *src = getenv("MOE_SRC");
    CHECK(bin != NULL && src != NULL, "MOE_BIN and MOE_SRC are set (ctest sets them)");
    if (!bin || !src) return test_done();
    char model[1024], cmd[4096], *out;
    tu_shared("vectors/models/v3-q8_0.gguf", model, sizeof model);

    snprintf(cmd, sizeof cmd, "'%s' info '%s' 2>&1", bin, model);
    int rc = run(cmd, &out);
    CHECK(rc == 0, "text: exit %d: %s", rc, out);
    const char *want[] = {"version:     3", "alignment:   32", "general.architecture", "\"deepseek2\"",
                          "string[512]", "... (512 total)", "token_embd.weight", "q8_0", "[256, 512]", "139264",
                          "total: 52 tensors"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(strstr(out, want[i]) != NULL, "text output has '%s'", want[i]);
    free(out);

    snprintf(cmd, sizeof cmd, "'%s' info --json '%s'", bin, model);
    rc = run(cmd, &out);
    CHECK(rc == 0, "json: exit %d", rc);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CHECK(j != NULL, "JSON parses: %s (line %d)", je.text, je.line);
    if (j) {
        moe_gguf *g;
        char err[256];
        CHECK(moe_gguf_open(model, &g, err, sizeof err) == MOE_OK, "%s", err);
        json_t *kv = json_object_get(j, "kv"), *ts = json_object_get(j, "tensors");
        CHECK(json_integer_value(json_object_get(j, "version")) == 3, "version");
        CHECK(json_array_size(kv) == (size_t)moe_gguf_n_kv(g), "every key listed");
        CHECK(json_array_size(ts) == (size_t)moe_gguf_n_tensors(g), "every tensor listed");
        uint64_t total = 0;
        for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) total += moe_gguf_tensor_at(g, i)->nbytes;
        CHECK((uint64_t)json_integer_value(json_object_get(j, "total_bytes")) == total, "total bytes");
        json_t *t0 = json_array_get(ts, 0);
        CHECK(!strcmp(json_string_value(json_object_get(t0, "name")), "token_embd.weight") &&
                  json_integer_value(json_array_get(json_object_get(t0, "shape"), 1)) == 512,
              "first tensor and its shape");
        size_t idx;
        json_t *e;
        int seen_tokens = 0;
        json_array_foreach(kv, idx, e) {
            if (strcmp(json_string_value(json_object_get(e, "key")), "tokenizer.ggml.tokens")) continue;
            seen_tokens = json_integer_value(json_object_get(e, "n")) == 512 &&
                          json_array_size(json_object_get(e, "value")) == 8 &&
                          json_is_true(json_object_get(e, "truncated"));
        }
        CHECK(seen_tokens, "long array abbreviated to 8 elements with its count");
        moe_gguf_close(g);
        json_decref(j);
    }
    free(out);

    snprintf(cmd, sizeof cmd, "'%s' info --help", bin);
    rc = run(cmd, &out);
    CHECK(rc == 0 && strstr(out, "usage: moe info"), "--help: exit %d", rc);
    free(out);

    snprintf(cmd, sizeof cmd, "'%s' info '%s/tests/corpus/gguf/offset-gap.gguf' 2>&1", bin, src);
    rc = run(cmd, &out);
    CHECK(rc == 1, "broken file exits 1 (got %d)", rc);
    CHECK(strstr(out, "gguf: at byte 373: tensor 't.b': offset 96, expected 64") != NULL, "reader's message: %s", out);
    free(out);

    snprintf(cmd, sizeof cmd, "'%s' info /nonexistent/x.gguf 2>&1", bin);
    rc = run(cmd, &out);
    CHECK(rc == 1 && strstr(out, "cannot open"), "missing file: %d %s", rc, out);
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' info 2>&1", bin);
    rc = run(cmd, &out);
    CHECK(rc == 1 && strstr(out, "usage"), "no file: exit %d", rc);
    free(out);
    return test_done();
}
