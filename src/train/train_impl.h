/* moekit train: struct bodies shared inside src/train and with its tests (not public). */
#ifndef MOE_TRAIN_IMPL_H
#define MOE_TRAIN_IMPL_H

#include "moe/gguf.h"
#include "moe/train.h"
#include "train/tmodel.h"

/* Optimizer state of one routed expert of one layer: its gate, up and down slices (3 × per
 * floats each for m and v), allocated on first use (lazy, exact) or at init (dense). */
typedef struct tr_expert {
    float *m, *v;      /* owned, 3·per each, or NULL */
    int64_t last;      /* exact mode: steps applied to this expert's parameters */
} tr_expert;

struct moe_trainer {
    moe_train_params p;
    moe_tm_model *m;       /* owned */
    moe_pool *pool;        /* owned */
    moe_gguf *base;        /* owned: the model file (metadata for checkpoints and export) */
    /* corpus: mmapped u32 ids */
    void *map;
    size_t map_len;
    const uint32_t *tok;   /* borrowed from map */
    uint64_t n_tok, n_train; /* [0, n_train) training, [n_train, n_tok) held out */
    int32_t bos;
    /* optimizer */
    float *om, *ov;        /* owned, n_params: moments of non-expert tensors */
    tr_expert *ex;         /* owned, (L, E) */
    size_t ex_per;         /* Fe·D */
    int64_t step;          /* optimizer steps done */
    uint64_t ex_bytes;     /* bytes of expert optimizer state allocated */
    char err[256];
};

/* Learning rate of step s (1-based): linear warmup then cosine to min_lr (exposed for tests). */
double moe_trainer_lr(const moe_train_params *p, int64_t s);
/* Fill m->tokens/targets with the batch of the given step (samples step·B … +B−1). */
void moe_trainer_fill_batch(moe_trainer *t, int64_t step);
/* Exact mode: bring every expert up to the current step (done before export). */
void moe_trainer_flush_experts(moe_trainer *t);

#endif
