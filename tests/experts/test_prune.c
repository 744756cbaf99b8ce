/* moe experts prune / compare.
 *
 * - Pruning experts no token selected leaves every logit bit-identical (sigmoid gating, no
 *   groups: see src/tools/experts_prune.c for why; f32 and q8_0 models), and the compare report
 *   says KL = 0, max |Δlogit| = 0.
 * - Pruning used experts changes logits; the compare report's max |Δlogit| equals the one the
 *   test measures itself, and KL > 0.
 * - Shapes: expert_count, expert_used_count lowered when fewer experts remain, weight bytes
 *   shrink by exactly the removed slices; the pruned file loads and runs.
 * - Group-limited routing: uneven or too-small groups are refused with the reason; an even
 *   prune keeps groups consistent.
 * - Softmax gating: printed, not asserted bit-identical (the denominator changes). */
#include <math.h>

#include "experts_fixture.h"
#include "moe/experts.h"
#include "moe/model.h"
#include "moe/tok.h"
#include "testutil.h"

static char g_dir[512];

static float *eval_all(const char *path, const int32_t *tok, int32_t n, int32_t *V, moe_hparams *hp_out) {
    char err[512];
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) {
        fprintf(stderr, "open %s: %s\n", path, err);
        return NULL;
    }
    *V = moe_model_hparams(m)->n_vocab;
    if (hp_out) *hp_out = *moe_model_hparams(m);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 512;
    p.n_threads = 2;
    moe_ctx *c;
    float *lg = malloc(sizeof(float) * (size_t)n * (size_t)*V);
    if (moe_ctx_init(m, &p, &c, err, sizeof err) || moe_ctx_eval(c, tok, n, lg)) {
        free(lg);
        lg = NULL;
    }
    moe_ctx_free(c);
    moe_model_close(m);
    return lg;
}

static moe_status stats_of(const char *path, const int32_t *tok, int32_t n, moe_experts_stats *s) {
    char err[512];
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) return MOE_ERR_IO;
    const moe_hparams *hp = moe_model_hparams(m);
    moe_experts_stats_init(s, hp->n_layer, hp->n_expert);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 512;
    moe_ctx *c;
    moe_status st = moe_ctx_init(m, &p, &c, err, sizeof err);
    if (!st) st = moe_experts_collect(c, m, tok, n, 1, s);
    moe_ctx_free(c);
    moe_model_close(m);
    return st;
}

/* plan + prune through the library; returns the plan status */
static moe_status prune_to(const char *src, const moe_experts_stats *s, int32_t keep_n, double coverage,
                           const char *dst, uint8_t *keep, char *err, size_t errlen) {
    moe_gguf *g;
    moe_model *m;
    if (moe_gguf_open(src, &g, err, errlen)) return MOE_ERR_IO;
    if (moe_model_open_gguf(g, &m, err, errlen)) {
        moe_gguf_close(g);
        return MOE_ERR_IO;
    }
    moe_experts_prune_params p = moe_experts_default_prune_params();
    p.keep_per_layer = keep_n;
    p.coverage = coverage;
    int32_t n_keep = 0;
    moe_status st = moe_experts_plan(s, moe_model_hparams(m), &p, keep, &n_keep, err, errlen);
    if (!st) st = moe_experts_prune(g, keep, n_keep, dst, err, errlen);
    moe_model_close(m);
    moe_gguf_close(g);
    return st;
}

static void test_unused_bit_identical(const char *label, int dtype) {
    char path[1024], out[1024], err[512];
    moe_init_config cfg = fx_config();
    cfg.dtype = dtype;
    const int away[] = {2, 6, -1};
    CHECK(fx_make(g_dir, label, &cfg, 0, away, path, sizeof path) == 0, "%s: fixture", label);
    enum { T = 48 };
    int32_t tok[T];
    for (int i = 0; i < T; i++) tok[i] = (int32_t)((i * 131 + 17) % 500);
    moe_experts_stats s;
    CHECK(stats_of(path, tok, T, &s) == MOE_OK, "%s: stats", label);
    int32_t max_used = 0;
    for (int32_t l = 1; l < 3; l++) {
        int32_t used = 0;
        for (int32_t e = 0; e < 8; e++) used += s.count[l * 8 + e] > 0;
        if (used > max_used) max_used = used;
        CHECK(s.count[l * 8 + 2] == 0 && s.count[l * 8 + 6] == 0, "%s: biased-away experts unused", label);
    }
    printf("%s: at most %d of 8 experts used per layer\n", label, max_used);
    uint8_t keep[3 * 8];
    snprintf(out, sizeof out, "%s/%s.pruned.gguf", g_dir, label);
    CHECK(prune_to(path, &s, max_used, 0, out, keep, err, sizeof err) == MOE_OK, "%s: prune: %s", label, err);
    for (int32_t i = 8; i < 24; i++) CHECK(keep[i] || s.count[i] == 0, "%s: only unused experts pruned", label);
    int32_t V, V2;
    moe_hparams hp, hp2;
    float *a = eval_all(path, tok, T, &V, &hp), *b = eval_all(out, tok, T, &V2, &hp2);
    CHECK(a && b && V == V2, "%s: both models evaluate", label);
    if (a && b) {
        size_t diff = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
        printf("%s: %d → %d experts, %zu of %zu logits differ\n", label, hp.n_expert, hp2.n_expert, diff, (size_t)T * V);
        CHECK(diff == 0, "%s: pruning unused experts keeps every logit bit-identical (%zu differ)", label, diff);
        CHECK(hp2.n_expert == max_used && hp2.n_expert_used == 2, "%s: E=%d K=%d", label, hp2.n_expert, hp2.n_expert_used);
    }
    /* weight bytes shrink by exactly the removed slices */
    moe_model *m0, *m1;
    if (!moe_model_open(path, &m0, err, sizeof err) && !moe_model_open(out, &m1, err, sizeof err)) {
        moe_gguf *g = (moe_gguf *)moe_model_gguf(m0);
        uint64_t removed = 0;
        for (int l = 1; l < 3; l++) {
            const char *nm[] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
                                "ffn_gate_inp.weight", "exp_probs_b.bias"};
            for (int k = 0; k < 5; k++) {
                char tn[96];
                snprintf(tn, sizeof tn, "blk.%d.%s", l, nm[k]);
                const moe_gguf_tensor *t = moe_gguf_find_tensor(g, tn);
                if (t) removed += t->nbytes / 8 * (uint64_t)(8 - max_used);
            }
        }
        uint64_t w0 = moe_model_weight_bytes(m0), w1 = moe_model_weight_bytes(m1);
        CHECK(w0 - w1 == removed, "%s: weight bytes %llu → %llu (removed %llu)", label, (unsigned long long)w0,
              (unsigned long long)w1, (unsigned long long)removed);
        moe_model_close(m1);
        moe_model_close(m0);
    }
    free(a);
    free(b);
    moe_experts_stats_free(&s);
}

static double json_num(const char *path, const char *key) {
    char *t = tu_read_file(path, NULL);
    if (!t) return NAN;
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *p = strstr(t, pat);
    double v = p ? strtod(p + strlen(pat), NULL) : NAN;
    free(t);
    return v;
}

/* CLI: stats → prune (unused and used experts) → compare */
static void test_cli_compare(void) {
    const char *bin = getenv("MOE_BIN");
    CHECK(bin != NULL, "MOE_BIN");
    if (!bin) return;
    char path[1024], data[1024], cmd[8192], err[512];
    moe_init_config cfg = fx_config();
    const int away[] = {1, 5, -1};
    CHECK(fx_make(g_dir, "cli", &cfg, 0, away, path, sizeof path) == 0, "fixture");
    snprintf(data, sizeof data, "%s/cal.txt", g_dir);
    const char *text = "Experts that never see a token can go. Experts that do carry the model's knowledge, "
                       "and removing them changes what it predicts next.";
    FILE *f = fopen(data, "w");
    fputs(text, f);
    fclose(f);
    const char *d = g_dir;
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s --data %s --json %s/cli.json > %s/log.txt", bin, path, data, d, d);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    moe_experts_stats s;
    snprintf(cmd, sizeof cmd, "%s/cli.json", d);
    CHECK(moe_experts_read_json(cmd, &s, err, sizeof err) == MOE_OK, "read stats: %s", err);
    int32_t max_used = 0;
    for (int32_t l = 1; l < 3; l++) {
        int32_t used = 0;
        for (int32_t e = 0; e < 8; e++) used += s.count[l * 8 + e] > 0;
        if (used > max_used) max_used = used;
    }
    moe_experts_stats_free(&s);
    /* unused experts: compare says nothing changed */
    snprintf(cmd, sizeof cmd,
             "%s experts prune -m %s --stats %s/cli.json --keep-per-layer %d -o %s/unused.gguf >> %s/log.txt && "
             "%s experts compare %s %s/unused.gguf --data %s --json %s/cmp0.json >> %s/log.txt",
             bin, path, d, max_used, d, d, bin, path, d, data, d, d);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "%s/cmp0.json", d);
    double kl0 = json_num(cmd, "kl_mean"), dl0 = json_num(cmd, "max_abs_logit_diff");
    double p0 = json_num(cmd, "ppl_base"), p1 = json_num(cmd, "ppl_pruned");
    printf("prune unused (keep %d): KL %.3g, max|Δlogit| %.3g, ppl %.6f vs %.6f\n", max_used, kl0, dl0, p0, p1);
    CHECK(kl0 == 0 && dl0 == 0 && p0 == p1 && p0 > 1, "compare: unused prune changes nothing");
    CHECK(json_num(cmd, "weight_bytes_pruned") < json_num(cmd, "weight_bytes_base"), "smaller model");
    CHECK(json_num(cmd, "decode_tps_pruned") > 0 && json_num(cmd, "decode_tps_base") > 0, "decode speed measured");
    /* used experts: keep 3 by coverage-free count */
    snprintf(cmd, sizeof cmd,
             "%s experts prune -m %s --stats %s/cli.json --keep-per-layer 3 -o %s/used.gguf >> %s/log.txt && "
             "%s experts compare %s %s/used.gguf --data %s --json %s/cmp1.json > %s/cmp1.txt",
             bin, path, d, d, d, bin, path, d, data, d, d);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, "%s/cmp1.json", d);
    double kl1 = json_num(cmd, "kl_mean"), dl1 = json_num(cmd, "max_abs_logit_diff");
    /* measure it ourselves */
    moe_model *m;
    moe_tok *tok;
    int32_t *ids = NULL;
    size_t n = 0;
    if (!moe_model_open(path, &m, err, sizeof err)) {
        if (!moe_tok_init_from_gguf(moe_model_gguf(m), &tok, err, sizeof err)) {
            moe_tok_encode(tok, text, strlen(text), 1, 0, &ids, &n);
            moe_tok_free(tok);
        }
        moe_model_close(m);
    }
    int32_t V, V2;
    char used[1024];
    snprintf(used, sizeof used, "%s/used.gguf", d);
    float *a = eval_all(path, ids, (int32_t)n, &V, NULL), *b = eval_all(used, ids, (int32_t)n, &V2, NULL);
    double mine = 0;
    for (size_t i = 0; a && b && i < n * (size_t)V; i++) mine = fmax(mine, fabs((double)a[i] - b[i]));
    printf("prune used (keep 3): KL mean %.4g nats, max|Δlogit| reported %.6g, measured %.6g\n", kl1, dl1, mine);
    CHECK(kl1 > 0 && dl1 > 0, "pruning used experts changes the distribution");
    CHECK(fabs(dl1 - mine) <= 1e-6 * fmax(1, mine), "compare reports the measured change (%g vs %g)", dl1, mine);
    free(a);
    free(b);
    free(ids);
    /* coverage: the kept experts cover the level in every layer; the file loads */
    snprintf(cmd, sizeof cmd, "%s experts prune -m %s --stats %s/cli.json --coverage 0.6 -o %s/cov.gguf >> %s/log.txt", bin,
             path, d, d, d);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    /* user errors */
    snprintf(cmd, sizeof cmd, "%s experts prune -m %s --stats %s/cli.json --keep-per-layer 8 -o %s/x.gguf 2>/dev/null", bin,
             path, d, d);
    CHECK(fx_sh(cmd) == 1, "keeping all experts is refused");
    snprintf(cmd, sizeof cmd, "%s experts prune -m %s --keep-per-layer 2 -o %s/x.gguf 2>/dev/null", bin, path, d);
    CHECK(fx_sh(cmd) == 1, "no statistics is refused");
}

static void test_shapes_and_groups(void) {
    char path[1024], out[1024], err[512];
    /* K is lowered when fewer experts remain than are used */
    moe_init_config cfg = fx_config();
    cfg.n_expert_used = 3;
    CHECK(fx_make(g_dir, "k3", &cfg, 0, NULL, path, sizeof path) == 0, "fixture k3");
    int32_t tok[20];
    for (int i = 0; i < 20; i++) tok[i] = i * 7 + 3;
    moe_experts_stats s;
    CHECK(stats_of(path, tok, 20, &s) == MOE_OK, "stats k3");
    uint8_t keep[4 * 16];
    snprintf(out, sizeof out, "%s/k3.pruned.gguf", g_dir);
    CHECK(prune_to(path, &s, 2, 0, out, keep, err, sizeof err) == MOE_OK, "prune to 2: %s", err);
    int32_t V;
    moe_hparams hp;
    float *lg = eval_all(out, tok, 20, &V, &hp);
    CHECK(lg && hp.n_expert == 2 && hp.n_expert_used == 2, "K lowered to 2 (E=%d K=%d)", hp.n_expert, hp.n_expert_used);
    free(lg);
    moe_experts_stats_free(&s);
    /* groups: 16 experts in 4 groups of 4, 2 groups used, top-4 */
    cfg = fx_config();
    cfg.n_expert = 16;
    cfg.n_expert_used = 4;
    cfg.n_group = 4;
    cfg.n_group_used = 2;
    CHECK(fx_make(g_dir, "grp", &cfg, 0, NULL, path, sizeof path) == 0, "fixture groups");
    CHECK(stats_of(path, tok, 20, &s) == MOE_OK, "stats groups");
    snprintf(out, sizeof out, "%s/grp.pruned.gguf", g_dir);
    err[0] = 0;
    CHECK(prune_to(path, &s, 6, 0, out, keep, err, sizeof err) == MOE_ERR_INVAL && strstr(err, "multiple of 4"),
          "uneven groups refused: %s", err);
    printf("refused: %s\n", err);
    err[0] = 0;
    CHECK(prune_to(path, &s, 4, 0, out, keep, err, sizeof err) == MOE_ERR_INVAL && strstr(err, "at least 2 per group"),
          "1 per group refused: %s", err);
    printf("refused: %s\n", err);
    CHECK(prune_to(path, &s, 8, 0, out, keep, err, sizeof err) == MOE_OK, "even groups: %s", err);
    for (int l = 1; l < 3; l++)
        for (int g = 0; g < 4; g++) {
            int k = 0;
            for (int e = 0; e < 4; e++) k += keep[l * 16 + g * 4 + e];
            CHECK(k == 2, "layer %d group %d keeps 2 (%d)", l, g, k);
        }
    lg = eval_all(out, tok, 20, &V, &hp);
    CHECK(lg && hp.n_expert == 8 && hp.n_expert_groups == 4 && hp.n_group_used == 2 && hp.n_expert_used == 4,
          "grouped prune loads: E=%d G=%d/%d K=%d", hp.n_expert, hp.n_group_used, hp.n_expert_groups, hp.n_expert_used);
    free(lg);
    moe_experts_stats_free(&s);
    /* stats of another shape are refused */
    moe_experts_stats_init(&s, 3, 8);
    CHECK(prune_to(path, &s, 8, 0, out, keep, err, sizeof err) == MOE_ERR_INVAL && strstr(err, "3 layers × 8"),
          "shape mismatch: %s", err);
    moe_experts_stats_free(&s);
}

/* softmax over all E: documented as not bit-identical; print how close it is */
static void show_softmax(void) {
    char path[1024], out[1024], err[512];
    moe_init_config cfg = fx_config();
    cfg.gating = 1;
    cfg.exp_probs_b = 0;
    cfg.norm_topk = 0;
    cfg.scale = 1;
    if (fx_make(g_dir, "softmax", &cfg, 0, NULL, path, sizeof path)) return;
    int32_t tok[8] = {5, 9, 9, 5, 5, 9, 5, 9};
    moe_experts_stats s;
    uint8_t keep[24];
    if (stats_of(path, tok, 8, &s)) return;
    int32_t used = 0;
    for (int32_t l = 1; l < 3; l++) {
        int32_t u = 0;
        for (int32_t e = 0; e < 8; e++) u += s.count[l * 8 + e] > 0;
        used = u > used ? u : used;
    }
    snprintf(out, sizeof out, "%s/softmax.pruned.gguf", g_dir);
    if (used < 8 && !prune_to(path, &s, used, 0, out, keep, err, sizeof err)) {
        int32_t V;
        float *a = eval_all(path, tok, 8, &V, NULL), *b = eval_all(out, tok, 8, &V, NULL);
        double d = 0;
        for (size_t i = 0; a && b && i < (size_t)8 * V; i++) d = fmax(d, fabs((double)a[i] - b[i]));
        printf("softmax gating, unused experts pruned (keep %d): max|Δlogit| %.3g (not bit-identical by design)\n",
               used, d);
        free(a);
        free(b);
    }
    moe_experts_stats_free(&s);
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    test_unused_bit_identical("f32", 0);
    test_unused_bit_identical("q8_0", 8);
    test_shapes_and_groups();
    test_cli_compare();
    show_softmax();
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (!tu_fail) fx_sh(cmd);
    return test_done();
}
