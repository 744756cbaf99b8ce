/* Checkpoints and export:
 *  - train N steps = train k, save, free, new trainer, resume, train N−k: identical parameters
 *    (checksum and memcmp) in lazy and exact modes, with the bias update and aux loss on;
 *  - the checkpoint is written atomically (no .tmp left; a corrupt file is refused);
 *  - the same batches come back for the same step (data by global sample index);
 *  - the exported GGUF loads in the engine and its logits equal the trainer's forward (1e-4),
 *    in f32, and in f16 within the f16 rounding. */
#include <math.h>
#include <sys/stat.h>

#include "moe/model.h"
#include "trainfix.h"

static char g_dir[512];

static void test_resume(int mode, const char *label) {
    const int N = 12, k = 5;
    moe_train_params p = fix_params(mode);
    p.batch_size = 2;
    p.bias_gamma = 0.001;
    p.aux_alpha = 1e-3;
    p.steps = N;
    moe_trainer *a = fix_trainer(g_dir, &p);
    for (int s = 0; s < N; s++) CHECK(moe_trainer_step(a, NULL) == MOE_OK, "step");
    char ck[700], tmp[720];
    snprintf(ck, sizeof ck, "%s/ck.gguf", g_dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", ck);
    moe_trainer *b = fix_trainer(g_dir, &p);
    for (int s = 0; s < k; s++) CHECK(moe_trainer_step(b, NULL) == MOE_OK, "step");
    CHECK(moe_trainer_save(b, ck) == MOE_OK, "save: %s", moe_trainer_errmsg(b));
    struct stat sb;
    CHECK(stat(tmp, &sb) != 0, "no temporary file left behind");
    moe_trainer_free(b);
    moe_trainer *c = fix_trainer(g_dir, &p);
    CHECK(moe_trainer_resume(c, ck) == MOE_OK, "resume: %s", moe_trainer_errmsg(c));
    CHECK(moe_trainer_steps_done(c) == k, "resumed at step %d", k);
    for (int s = k; s < N; s++) CHECK(moe_trainer_step(c, NULL) == MOE_OK, "step");
    moe_trainer_flush_experts(a);
    moe_trainer_flush_experts(c);
    uint64_t ha = moe_trainer_checksum(a), hc = moe_trainer_checksum(c);
    printf("%s: %d steps %016llx, %d + resume + %d %016llx\n", label, N, (unsigned long long)ha, k, N - k,
           (unsigned long long)hc);
    CHECK(ha == hc && !memcmp(a->m->params, c->m->params, sizeof(float) * a->m->n_params),
          "%s: resumed run is bit-identical", label);
    /* a checkpoint for another optimizer mode or a damaged file is refused */
    moe_train_params q = p;
    q.optimizer = mode == MOE_TRAIN_OPT_LAZY ? MOE_TRAIN_OPT_EXACT : MOE_TRAIN_OPT_LAZY;
    moe_trainer *d = fix_trainer(g_dir, &q);
    CHECK(moe_trainer_resume(d, ck) != MOE_OK, "other optimizer mode refused");
    moe_trainer_free(d);
    FILE *f = fopen(ck, "r+b");
    fseek(f, 0, SEEK_SET);
    fputs("XXXX", f);
    fclose(f);
    d = fix_trainer(g_dir, &p);
    CHECK(moe_trainer_resume(d, ck) != MOE_OK, "damaged checkpoint refused");
    moe_trainer_free(d);
    moe_trainer_free(a);
    moe_trainer_free(c);
}

static void test_batches(void) {
    moe_train_params p = fix_params(MOE_TRAIN_OPT_LAZY);
    p.batch_size = 3;
    moe_trainer *a = fix_trainer(g_dir, &p), *b = fix_trainer(g_dir, &p);
    int32_t x[24];
    moe_trainer_fill_batch(a, 7);
    memcpy(x, a->m->tokens, sizeof x);
    moe_trainer_fill_batch(b, 3);
    moe_trainer_fill_batch(b, 7);
    CHECK(!memcmp(x, b->m->tokens, sizeof x), "batch of step 7 does not depend on history");
    moe_trainer_fill_batch(b, 8);
    CHECK(memcmp(x, b->m->tokens, sizeof x) != 0, "different steps, different batches");
    CHECK(a->m->tokens[0] == a->bos, "samples start with BOS");
    moe_trainer_free(a);
    moe_trainer_free(b);
}

static void test_export(int dtype, double tol, const char *label) {
    moe_train_params p = fix_params(MOE_TRAIN_OPT_EXACT);
    p.seq_len = 16;
    moe_trainer *t = fix_trainer(g_dir, &p);
    for (int s = 0; s < 6; s++) CHECK(moe_trainer_step(t, NULL) == MOE_OK, "step");
    char path[700], err[512];
    snprintf(path, sizeof path, "%s/export.gguf", g_dir);
    CHECK(moe_trainer_export(t, path, dtype) == MOE_OK, "export: %s", moe_trainer_errmsg(t));
    moe_model *em;
    moe_status st = moe_model_open(path, &em, err, sizeof err);
    CHECK(st == MOE_OK, "engine loads the export: %s", err);
    if (st) {
        moe_trainer_free(t);
        return;
    }
    moe_ctx_params cp = moe_ctx_default_params();
    cp.n_ctx = 32;
    cp.n_threads = 1;
    moe_ctx *ctx;
    CHECK(moe_ctx_init(em, &cp, &ctx, err, sizeof err) == MOE_OK, "ctx");
    const int T = 16, V = t->m->hp.n_vocab;
    moe_trainer_fill_batch(t, 100);
    float *ref = malloc(sizeof(float) * T * V);
    CHECK(moe_ctx_eval(ctx, t->m->tokens, T, ref) == MOE_OK, "eval");
    t->m->touch_expert = NULL;
    moe_tm_forward(t->m);
    double d = 0;
    for (int i = 0; i < T * V; i++) d = fmax(d, fabs((double)ref[i] - t->m->logits[i]));
    printf("export %s: engine vs trainer logits max|d| %.2e\n", label, d);
    CHECK(d < tol, "export %s: logits differ by %.3e", label, d);
    free(ref);
    moe_ctx_free(ctx);
    moe_model_close(em);
    moe_trainer_free(t);
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    fix_make(g_dir, 8, 2, 1, NULL);
    test_resume(MOE_TRAIN_OPT_LAZY, "lazy");
    test_resume(MOE_TRAIN_OPT_EXACT, "exact");
    test_batches();
    test_export(0, 1e-4, "f32");
    test_export(1, 5e-2, "f16");
    return test_done();
}
