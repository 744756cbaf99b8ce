/* Shared fixture of the trainer tests: a small deepseek2 model and a corpus in a temp dir. */
#ifndef MOE_TEST_TRAINFIX_H
#define MOE_TEST_TRAINFIX_H

#include <unistd.h>

#include "moe/init.h"
#include "moe/train.h"
#include "testutil.h"
#include "train/train_impl.h"

static const char k_fix_text[] =
    "The quick brown fox jumps over the lazy dog. A mixture of experts sends every token to a few "
    "small networks, and the router learns which expert is good at what.\n\n"
    "Attention lets every token look back at the tokens before it. The keys and values are "
    "squeezed into a short latent vector, which keeps the cache small.\n\n"
    "Numbers like 3.14 and 2024 appear in text as well, and so do questions? Yes! The end.\n\n";

/* Model with E experts (K used), the built-in vocabulary, and a corpus of the text above
 * repeated. Paths go into dir (model.gguf, text.txt, corpus.tok). */
static void fix_make(const char *dir, int E, int K, int bias, moe_init_config *out_cfg) {
    char path[700], text[700], corpus[700], err[512];
    moe_init_config c;
    moe_init_preset("tiny", &c);
    c.n_embd = 64;
    c.n_head = 2;
    c.q_lora_rank = 32;
    c.kv_lora_rank = 32;
    c.qk_nope = 16;
    c.qk_rope = 8;
    c.v_head = 16;
    c.n_ff = 96;
    c.n_ff_exp = 32;
    c.n_expert = E;
    c.n_expert_used = K;
    c.exp_probs_b = bias;
    c.n_layer = 2;
    c.n_layer_dense = 1;
    c.seed = 3;
    if (out_cfg) *out_cfg = c;
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    snprintf(text, sizeof text, "%s/text.txt", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.tok", dir);
    if (moe_init_write(&c, NULL, path, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "init: %s\n", err);
        exit(2);
    }
    FILE *f = fopen(text, "w");
    for (int i = 0; i < 40; i++) fputs(k_fix_text, f);
    fclose(f);
    if (moe_train_tokenize_file(path, text, corpus, NULL, err, sizeof err)) {
        fprintf(stderr, "tokenize: %s\n", err);
        exit(2);
    }
}

static moe_trainer *fix_trainer(const char *dir, const moe_train_params *p) {
    char path[700], corpus[700], err[512];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    snprintf(corpus, sizeof corpus, "%s/corpus.tok", dir);
    moe_trainer *t;
    if (moe_trainer_init(p, path, corpus, &t, err, sizeof err)) {
        fprintf(stderr, "trainer: %s\n", err);
        exit(2);
    }
    return t;
}

static moe_train_params fix_params(int mode) {
    moe_train_params p = moe_train_default_params();
    p.seq_len = 8;
    p.batch_size = 1;
    p.steps = 40;
    p.warmup = 5;
    p.lr = 3e-3;
    p.optimizer = mode;
    p.threads = 1;
    p.val_fraction = 0.05;
    return p;
}

#endif
