/* moekit: training and fine-tuning of deepseek2 MoE models on one machine (`moe train`).
 *
 * A moe_trainer holds an F32 copy of every parameter of a GGUF model with its gradient and
 * AdamW state, runs forward + backward over batches of a tokenized corpus and updates the
 * parameters: AdamW with decoupled weight decay, global-norm gradient clipping, linear warmup
 * then cosine decay. Experts that receive no token in a step get no gradient work; the
 * optimizer mode says what happens to them (spec training.md §2):
 *   dense  every expert is updated every step (idle ones with a zero gradient): the baseline;
 *   exact  idle experts are skipped and caught up later with the zero-gradient steps they
 *          missed, so the parameters equal dense AdamW bit for bit;
 *   lazy   idle experts are not touched at all (LazyAdam), their optimizer state is allocated
 *          on their first token. A different optimizer from dense AdamW.
 * Load balancing: DeepSeek-V3's auxiliary-loss-free bias update of exp_probs_b and the
 * sequence-wise auxiliary loss, both optional. Freezing: tensors matched by name patterns get
 * no gradient and no update. Data: samples are drawn by global sample index from (seed, index)
 * only, so a resumed run sees the same batches. Checkpoints are GGUF files written atomically
 * (temporary file, fsync, rename) and resume bit-exactly. A trainer is used by one thread. */
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_train_opt {
    MOE_TRAIN_OPT_DENSE = 0,
    MOE_TRAIN_OPT_EXACT = 1,
    MOE_TRAIN_OPT_LAZY = 2,
} moe_train_opt;

#define MOE_TRAIN_MAX_PATTERNS 32

/* Every setting of a training run (the YAML keys are these names, grouped; docs/training.md). */
typedef struct moe_train_params {
    /* model: start from a GGUF (fine-tune), or create one (preset / JSON shape config) */
    char model[512];          /* model.base: existing GGUF */
    char init_preset[64];     /* model.init.preset */
    char init_config[512];    /* model.init.config: JSON shape file (moe init --config) */
    uint64_t init_seed;       /* model.init.seed */
    int32_t vocab_size;       /* model.init.vocab_size: train a BPE of this size on the data (0 = built-in) */
    int32_t bpe_sample_mb;    /* model.init.bpe_sample_mb: MB of text the BPE learns from */
    /* data */
    char text[512];           /* data.text: UTF-8 text file, tokenized into data.tokens if missing */
    char tokens[512];         /* data.tokens: corpus file (default: OUT/corpus.tok) */
    int32_t seq_len, batch_size;
    double val_fraction;      /* data.val_fraction: tail of the corpus held out */
    /* optimization */
    int64_t steps, warmup;
    double lr, min_lr, weight_decay, beta1, beta2, eps, grad_clip;
    int32_t optimizer;        /* moe_train_opt */
    uint64_t seed;
    int32_t threads;          /* 0 = all CPUs */
    double bias_gamma;        /* balance.bias_update: γ of the aux-loss-free update (0 = off) */
    double aux_alpha;         /* balance.aux_loss: α of the sequence-wise loss (0 = off) */
    char freeze[MOE_TRAIN_MAX_PATTERNS][64]; /* fnmatch patterns of tensor names kept fixed */
    int32_t n_freeze;
    char train_only[MOE_TRAIN_MAX_PATTERNS][64]; /* if any: only matching tensors are trained */
    int32_t n_train_only;
    /* output */
    char out_dir[512];        /* output.dir: checkpoints, loss.csv, loss.svg, corpus */
    char export_path[512];    /* output.export: final GGUF (default OUT/model.gguf) */
    int32_t export_dtype;     /* moe_dtype of exported matrices (f32 default, f16, bf16, q8_0) */
    int64_t checkpoint_every, log_every, eval_every;
    int32_t eval_batches;
    int32_t resume;           /* continue from OUT/checkpoint.gguf if present */
    int32_t quiet;
} moe_train_params;

moe_train_params moe_train_default_params(void);
/* Read a train.yaml (keys: docs/training.md) over p. The message names the key and line. */
moe_status moe_train_load_yaml(const char *path, moe_train_params *p, char *err, size_t errlen);

/* ---- corpus and vocabulary ---- */
/* Tokenize a text file with the tokenizer of model_gguf into a corpus file (atomic write):
 * "MOETOK01", u32 n_vocab, u64 n_tokens, then n_tokens u32 ids. Documents (paragraphs
 * separated by blank lines) are joined with EOS. *n_tokens may be NULL. */
moe_status moe_train_tokenize_file(const char *model_gguf, const char *text_path, const char *out_path,
                                   uint64_t *n_tokens, char *err, size_t errlen);
/* Learn a byte-level BPE of n_vocab ids (deepseek-v3 pre-tokenizer; ids as the built-in
 * vocabulary: BOS, EOS, 256 bytes, merges, <｜User｜>, <｜Assistant｜>) from up to sample_bytes of
 * text and write its tokenizer.* keys into a GGUF without tensors (usable as moe init --vocab-from). */
moe_status moe_train_bpe(const char *text_path, uint64_t sample_bytes, int32_t n_vocab, const char *out_gguf,
                         char *err, size_t errlen);

/* ---- the trainer ---- */
typedef struct moe_trainer moe_trainer;

/* Statistics of one step. */
typedef struct moe_train_stats {
    int64_t step;             /* steps done after this one (1-based) */
    double loss, loss_ce, loss_aux, lr, grad_norm;
    double load_maxmean, load_cv; /* mean over MoE layers of max/mean and CV of expert load */
    int32_t idle_experts;     /* (layer, expert) pairs without a token this step */
    double seconds;
} moe_train_stats;

/* Load model_gguf (any dtype) and open the corpus file; p gives batch geometry and the
 * optimizer settings (p->model and data paths are not read here). */
moe_status moe_trainer_init(const moe_train_params *p, const char *model_gguf, const char *corpus,
                            moe_trainer **out, char *err, size_t errlen);
void moe_trainer_free(moe_trainer *t);
const char *moe_trainer_errmsg(const moe_trainer *t);
/* One optimizer step on the batch of the current step (samples step·B … step·B+B−1). */
moe_status moe_trainer_step(moe_trainer *t, moe_train_stats *st);
/* Mean cross-entropy over n_batches held-out batches (no update). */
double moe_trainer_eval(moe_trainer *t, int32_t n_batches);
int64_t moe_trainer_steps_done(const moe_trainer *t);
/* Write a checkpoint (model, optimizer state, step, per-expert state) atomically. */
moe_status moe_trainer_save(moe_trainer *t, const char *path);
/* Continue from a checkpoint written by moe_trainer_save for the same model and settings. */
moe_status moe_trainer_resume(moe_trainer *t, const char *path);
/* Write the current parameters as a deepseek2 GGUF the engine and llama.cpp load. */
moe_status moe_trainer_export(moe_trainer *t, const char *path, int dtype);
/* Parameter count, and a checksum of all parameters (FNV-1a over their bytes). */
uint64_t moe_trainer_n_params(const moe_trainer *t);
uint64_t moe_trainer_checksum(const moe_trainer *t);

/* The whole run of `moe train`: model creation (BPE, init), corpus, training loop with
 * progress lines on `log`, loss.csv + loss.svg in out_dir, checkpoints, export. */
moe_status moe_train_run(const moe_train_params *p, FILE *log, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
