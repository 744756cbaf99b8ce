/* The trainer's forward (float, naive MLA) against the inference engine (absorbed MLA): the
 * same GGUF gives the same logits within 1e-4 for every model variant, and the trainer's
 * logits do not depend on the number of threads (bit-identical). */
#include <math.h>
#include <unistd.h>

#include "moe/init.h"
#include "moe/model.h"
#include "testutil.h"
#include "train/tmodel.h"

static void check(const char *label, moe_init_config cfg) {
    char dir[512], path[600], err[512];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    moe_status st = moe_init_write(&cfg, NULL, path, NULL, NULL, err, sizeof err);
    CHECK(st == MOE_OK, "%s: init: %s", label, err);
    if (st) return;
    moe_model *em;
    moe_ctx *ctx;
    CHECK(moe_model_open(path, &em, err, sizeof err) == MOE_OK, "%s: engine open: %s", label, err);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 64;
    p.n_threads = 1;
    CHECK(moe_ctx_init(em, &p, &ctx, err, sizeof err) == MOE_OK, "ctx: %s", err);
    const int T = 40, V = moe_model_hparams(em)->n_vocab;
    int32_t tok[40];
    for (int i = 0; i < T; i++) tok[i] = (i * 97 + 5) % V;
    float *ref = malloc(sizeof(float) * (size_t)T * V);
    CHECK(moe_ctx_eval(ctx, tok, T, ref) == MOE_OK, "eval");

    moe_pool *pool = moe_pool_init(2);
    float *l1 = malloc(sizeof(float) * (size_t)T * V);
    for (int thr = 0; thr < 2; thr++) {
        moe_tm_model *m;
        st = moe_tm_load(path, &m, err, sizeof err);
        CHECK(st == MOE_OK, "%s: train load: %s", label, err);
        if (st) break;
        m->pool = thr ? pool : NULL;
        CHECK(moe_tm_alloc_acts(m, 1, T) == MOE_OK, "acts");
        memcpy(m->tokens, tok, sizeof tok);
        for (int i = 0; i < T; i++) m->targets[i] = tok[(i + 1) % T];
        double loss = moe_tm_forward(m);
        double d = 0;
        for (size_t i = 0; i < (size_t)T * V; i++) d = fmax(d, fabs((double)m->logits[i] - ref[i]));
        if (!thr) {
            printf("%-34s train vs engine logits max|d| %.2e (loss %.4f)\n", label, d, loss);
            CHECK(d < 1e-4, "%s: logits differ by %.3e", label, d);
            memcpy(l1, m->logits, sizeof(float) * (size_t)T * V);
        } else {
            CHECK(!memcmp(l1, m->logits, sizeof(float) * (size_t)T * V), "%s: 1 vs 2 threads differ", label);
        }
        moe_tm_free(m);
    }
    moe_pool_free(pool);
    free(l1);
    free(ref);
    moe_ctx_free(ctx);
    moe_model_close(em);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    moe_init_config c;
    moe_init_preset("tiny", &c);
    check("tiny (q-LoRA, sigmoid+bias)", c);
    moe_init_preset("tiny", &c);
    c.q_lora_rank = 0;
    c.gating = 1;
    c.exp_probs_b = 0;
    c.norm_topk = 0;
    c.scale = 1.0f;
    c.tied = 1;
    check("no q-LoRA, softmax, tied", c);
    moe_init_preset("tiny", &c);
    c.n_group = 4;
    c.n_group_used = 2;
    c.n_expert_used = 3;
    c.yarn_factor = 8;
    c.yarn_orig_ctx = 32;
    c.mscale_all_dim = 0.707f;
    c.n_expert_shared = 2;
    check("groups, YaRN x8, 2 shared", c);
    moe_init_preset("tiny", &c);
    c.legacy_kv_b = 1;
    c.dtype = 1; /* f16 weights, dequantized into the trainer */
    check("legacy attn_kv_b, f16", c);
    return test_done();
}
