/* The `moe` command as a user runs it (MOE_BIN): init → eval agrees with the library's
 * token-by-token decode; run generates; bench --json has its keys; --help everywhere; user
 * errors exit 1 with a one-line message naming the problem. */
#include <jansson.h>
#include <stdarg.h>
#include <math.h>
#include <sys/wait.h>

#include "moe/model.h"
#include "testutil.h"

static char g_dir[512];
static const char *g_bin;

/* run a shell command, capture stdout+stderr (up to cap), return exit status */
static int sh(char *out, size_t cap, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, strstr(cmd, "2>") ? "%s" : "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = out ? fread(out, 1, cap - 1, p) : 0;
    if (out) out[n] = 0;
    else {
        char junk[4096];
        while (fread(junk, 1, sizeof junk, p) > 0) {
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void) {
    g_bin = getenv("MOE_BIN");
    if (!g_bin) g_bin = "./moe";
    tu_tmpdir(g_dir, sizeof g_dir);
    char out[16384], model[700], lpath[700];
    snprintf(model, sizeof model, "%s/tiny.gguf", g_dir);
    snprintf(lpath, sizeof lpath, "%s/l.f32", g_dir);

    CHECK(sh(out, sizeof out, "%s init --preset tiny --seed 3 -o %s", g_bin, model) == 0, "init: %s", out);
    const char *ids = "0,17,99,300,301,302,5,6,7,400,401,3";
    CHECK(sh(out, sizeof out, "%s eval -m %s --tokens %s --logits %s -t 2", g_bin, model, ids, lpath) == 0, "eval: %s", out);
    size_t len;
    char *lb = tu_read_file(lpath, &len);
    char err[256];
    moe_model *m = NULL;
    CHECK(moe_model_open(model, &m, err, sizeof err) == MOE_OK, "open: %s", err);
    if (lb && m) {
        int V = moe_model_hparams(m)->n_vocab, T = 12;
        CHECK(len == sizeof(float) * (size_t)T * (size_t)V, "logits file has %zu bytes", len);
        int32_t tok[12] = {0, 17, 99, 300, 301, 302, 5, 6, 7, 400, 401, 3};
        moe_ctx *c;
        moe_ctx_params p = moe_ctx_default_params();
        p.n_ctx = 16;
        p.n_threads = 1;
        moe_ctx_init(m, &p, &c, err, sizeof err);
        double md = 0;
        for (int t = 0; t < T && len == sizeof(float) * (size_t)T * (size_t)V; t++) {
            moe_ctx_eval(c, &tok[t], 1, NULL);
            const float *row = (const float *)lb + (size_t)t * V;
            for (int i = 0; i < V; i++) md = fmax(md, fabs(row[i] - moe_ctx_logits(c)[i]));
        }
        printf("moe eval vs token-by-token decode: max|d| %.2e\n", md);
        CHECK(md < 1e-5, "moe eval differs from decode by %.3e", md);
        moe_ctx_free(c);
    }
    free(lb);
    moe_model_close(m);

    /* run: text prompt, chat, token prompt; deterministic with a seed */
    char out2[16384];
    CHECK(sh(out, sizeof out, "%s run -m %s -p 'Hello there' -n 12 --seed 5 2>/dev/null", g_bin, model) == 0, "run: %s", out);
    CHECK(sh(out2, sizeof out2, "%s run -m %s -p 'Hello there' -n 12 --seed 5 2>/dev/null", g_bin, model) == 0, "run 2");
    CHECK(strcmp(out, out2) == 0, "same seed, same text");
    CHECK(sh(out, sizeof out, "%s run -m %s --chat --system 'Be brief.' -p 'Hi' -n 4 --temp 0", g_bin, model) == 0, "chat: %s", out);
    CHECK(strstr(out, "generated") != NULL, "run prints timing: %s", out);
    CHECK(sh(out, sizeof out, "%s run -m %s --tokens 0,1,2 -n 3", g_bin, model) == 0, "run --tokens: %s", out);

    /* bench --json */
    CHECK(sh(out, sizeof out, "%s bench -m %s -p 16 -n 8 -r 1 -t 2 --json 2>/dev/null", g_bin, model) == 0, "bench: %s", out);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    CHECK(j != NULL, "bench --json is JSON: %s", out);
    const char *keys[] = {"pp", "tg", "bandwidth_gbs", "active_bytes_per_token", "roofline_pct", "batch", "int8_peak_gops",
                          "clock_ghz", "int8_ops_per_cycle_core", "pp_int8_128_pct"};
    for (size_t i = 0; j && i < sizeof keys / sizeof keys[0]; i++) CHECK(json_object_get(j, keys[i]) != NULL, "bench key %s", keys[i]);
    if (j) CHECK(json_number_value(json_object_get(j, "tg")) > 0 && json_number_value(json_object_get(j, "bandwidth_gbs")) > 0,
                 "bench measured something");
#if defined(__x86_64__) || defined(__aarch64__)
    if (j) { /* the busy clock of any core this runs on: between 0.5 and 7 GHz */
        double ghz = json_number_value(json_object_get(j, "clock_ghz"));
        CHECK(ghz > 0.5 && ghz < 7.0, "bench clock_ghz %.3f", ghz);
    }
#endif
    json_decref(j);
    /* bench --profile: per-phase lists for decode and each batch; the shares make up the step */
    CHECK(sh(out, sizeof out, "%s bench -m %s -p 8 -n 4 -r 1 -t 2 --batch 2 --profile --json 2>/dev/null", g_bin, model) == 0,
          "bench --profile: %s", out);
    j = json_loads(out, 0, &je);
    CHECK(j != NULL, "bench --profile --json is JSON: %s", out);
    json_t *bl = j ? json_object_get(j, "batch") : NULL;
    json_t *lists[3] = {j ? json_object_get(j, "profile") : NULL, bl ? json_object_get(json_array_get(bl, 0), "profile") : NULL,
                        j ? json_object_get(j, "pp_profile") : NULL};
    for (int k = 0; k < 3; k++) {
        CHECK(json_is_array(lists[k]) && json_array_size(lists[k]) >= 5, "bench profile list %d", k);
        double share = 0, head_mb = 0;
        size_t i;
        json_t *ph;
        json_array_foreach(lists[k], i, ph) {
            share += json_number_value(json_object_get(ph, "share"));
            if (!strcmp(json_string_value(json_object_get(ph, "phase")) ? json_string_value(json_object_get(ph, "phase")) : "", "head"))
                head_mb = json_number_value(json_object_get(ph, "mb_per_step"));
        }
        CHECK(fabs(share - 1.0) < 1e-3 && head_mb > 0, "bench profile %d: shares add to %.4f, head %.3f MB/step", k, share, head_mb);
    }
    json_decref(j);
    /* bench --ceiling: the replayed reads are the profiled weight bytes (decode: the same tokens,
     * so the same experts); a batch's traced steps are other steps than its timed ones (other
     * tokens, so other experts), so its reads per step lie between one token's (every MoE layer
     * reads at least K experts) and n tokens' (base weights n times, n·K experts); every rate is
     * positive */
    CHECK(sh(out, sizeof out, "%s bench -m %s -p 0 -n 3 -r 1 -t 2 --batch 3 --profile --ceiling --json 2>/dev/null", g_bin,
             model) == 0,
          "bench --ceiling: %s", out);
    j = json_loads(out, 0, &je);
    CHECK(j != NULL, "bench --ceiling --json is JSON: %s", out);
    if (j) {
        double mb = 0;
        size_t i;
        json_t *ph, *b0 = json_array_get(json_object_get(j, "batch"), 0);
        json_array_foreach(json_object_get(j, "profile"), i, ph) { /* weights: every phase but the cache reads */
            const char *name = json_string_value(json_object_get(ph, "phase"));
            if (name && strcmp(name, "attn.core")) mb += json_number_value(json_object_get(ph, "mb_per_step"));
        }
        const double cb = json_number_value(json_object_get(j, "ceiling_bytes_per_step"));
        CHECK(fabs(cb - 1e6 * mb) <= 1e-3 * cb + 1e4, "bench --ceiling reads %.0f bytes per step, the profile's weights %.0f", cb,
              1e6 * mb);
        CHECK(json_number_value(json_object_get(j, "ceiling_tg")) > 0 && json_number_value(json_object_get(j, "ceiling_read_pct")) > 0 &&
                  json_number_value(json_object_get(j, "tg_of_ceiling_pct")) > 0,
              "bench --ceiling figures: %s", out);
        const double bcb = json_number_value(json_object_get(b0, "ceiling_bytes_per_step"));
        CHECK(bcb >= cb - 1 && bcb <= 3 * cb + 1 &&
                  json_number_value(json_object_get(b0, "ceiling_tg")) > 0 && json_number_value(json_object_get(b0, "tg_of_ceiling_pct")) > 0,
              "bench --ceiling batch: %s", out);
    }
    json_decref(j);
    CHECK(sh(out, sizeof out, "%s bench -m %s -p 0 -n 2 -r 1 -t 2 --profile 2>&1", g_bin, model) == 0 &&
              strstr(out, "profile of decode (tg)") && strstr(out, "experts.up"),
          "bench --profile prints a table: %s", out);

    /* --help everywhere, exit 0 */
    const char *cmds[] = {"init", "eval", "run", "bench", "info", "tokenize", "detokenize"};
    CHECK(sh(out, sizeof out, "%s --help", g_bin) == 0 && strstr(out, "commands:"), "moe --help");
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        CHECK(sh(out, sizeof out, "%s %s --help", g_bin, cmds[i]) == 0 && strstr(out, "usage"), "moe %s --help: %s", cmds[i], out);

    /* user errors: exit 1, one line naming the problem */
    struct {
        const char *args, *want;
    } bad[] = {
        {"frobnicate", "unknown command"},
        {"init --preset huge -o /tmp/x.gguf", "unknown preset 'huge'"},
        {"init --preset tiny", "-o OUT.gguf"},
        {"init --preset tiny --dtype q3_k -o /tmp/x.gguf", "--dtype must be"},
        {"eval -m /nonexistent.gguf --tokens 1", "cannot open"},
        {"eval -m MODEL --tokens 1,x", "comma-separated"},
        {"eval -m MODEL --tokens 999999", "outside the vocabulary"},
        {"eval -m MODEL --tokens 1,2,3 --ctx 2", "exceed the context"},
        {"run -m MODEL", "exactly one of"},
        {"run -m MODEL -p hi --temp abc", "--temp expects a number"},
        {"bench", "give the model"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char args[1024];
        const char *mp = strstr(bad[i].args, "MODEL");
        if (mp)
            snprintf(args, sizeof args, "%.*s%s%s", (int)(mp - bad[i].args), bad[i].args, model, mp + 5);
        else
            snprintf(args, sizeof args, "%s", bad[i].args);
        int rc = sh(out, sizeof out, "%s %s", g_bin, args);
        CHECK(rc == 1, "moe %s: exit %d (want 1): %s", args, rc, out);
        CHECK(strstr(out, bad[i].want) != NULL, "moe %s: message '%s' lacks '%s'", args, out, bad[i].want);
    }
    /* a truncated model file */
    char trunc[700];
    snprintf(trunc, sizeof trunc, "%s/trunc.gguf", g_dir);
    sh(NULL, 0, "head -c 100000 %s > %s", model, trunc);
    int rc = sh(out, sizeof out, "%s eval -m %s --tokens 1", g_bin, trunc);
    CHECK(rc == 1 && strstr(out, "gguf"), "truncated model: exit %d: %s", rc, out);
    return test_done();
}
