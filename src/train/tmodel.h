/* moekit train: the training-time deepseek2 model (internal API of src/train).
 *
 * Parameters, gradients and activations are owned flat buffers of `treal` (float in the
 * library; double when a test defines MOE_TRAIN_F64 before including tmodel.c, for the
 * float64 finite-difference checks — symbols are then named moe_tm64_* so both versions link
 * into one test). Every GGUF tensor of the model is one entry of the tensor table: an offset
 * into params/grads (llm.c layout, spec training.md §1.1). Expert tensors ([D, Fe, E] etc.)
 * are E contiguous slices, one per expert, which is what sparse updates work on.
 *
 * Shapes: B sequences × T tokens per step (N = B·T), all starting at position 0. Letters as
 * in STYLE.md and spec deepseek2.md: D, H, Lq, Lkv, R, Dn, Dk, Dv, F, Fe, S, E, K, V. */
#ifndef MOE_TRAIN_TMODEL_H
#define MOE_TRAIN_TMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/pool.h"
#include "moe/gguf.h"
#include "moe/model.h"
#include "moe/status.h"

/* ---- tensor table (independent of the element type) ---- */
enum {
    TM_KIND_DENSE = 0,   /* matrices and embeddings: decayed */
    TM_KIND_NORM = 1,    /* RMSNorm weights: not decayed */
    TM_KIND_ROUTER = 2,  /* ffn_gate_inp: decayed */
    TM_KIND_EXPERTS = 3, /* [in, out, E]: E slices of in·out, sparse updates */
    TM_KIND_BIAS = 4,    /* exp_probs_b: no gradient, moved by the load-balancing update */
};

typedef struct tm_tensor {
    char name[64];
    int n_dims;
    int64_t ne[3];
    size_t off, numel; /* into the flat buffers, elements */
    int kind, layer;   /* layer −1 for global tensors */
    int frozen;        /* no gradient, no update (freezing, or kind BIAS) */
} tm_tensor;

/* Weight slots of a layer (index into tm_layer.ti; −1 = absent). */
enum {
    W_ATTN_NORM, W_Q_A, W_Q_A_NORM, W_Q_B, W_Q, W_KV_A, W_KV_A_NORM, W_K_B, W_V_B, W_ATTN_OUT, W_FFN_NORM,
    W_GATE, W_UP, W_DOWN, W_GATE_INP, W_EXP_B, W_GATE_EXPS, W_UP_EXPS, W_DOWN_EXPS, W_GATE_SH, W_UP_SH, W_DOWN_SH,
    W_COUNT
};

typedef struct tm_layer {
    int ti[W_COUNT];
    int is_moe;
} tm_layer;

#endif /* MOE_TRAIN_TMODEL_H */

/* ---- element-type dependent part (may be included twice: float, then double) ---- */
#ifdef MOE_TRAIN_F64
#ifndef MOE_TRAIN_TMODEL_F64_H
#define MOE_TRAIN_TMODEL_F64_H
#define MOE_TM_BODY
typedef double treal;
#define TM(x) moe_tm64_##x
#endif
#else
#ifndef MOE_TRAIN_TMODEL_F32_H
#define MOE_TRAIN_TMODEL_F32_H
#define MOE_TM_BODY
typedef float treal;
#define TM(x) moe_tm_##x
#endif
#endif

#ifdef MOE_TM_BODY
#undef MOE_TM_BODY

/* Activations of one layer kept for the backward pass. */
typedef struct TM(lact) {
    treal *x_in, *h1, *r1;          /* (N, D), (N, D), (N) */
    treal *qa_raw, *qa, *rq;        /* (N, Lq), (N, Lq), (N) */
    treal *q;                       /* (N, H·Dk) before rope */
    treal *kv, *ckv, *rkv, *kpe;    /* (N, Lkv+R), (N, Lkv), (N), (N, R) roped */
    treal *qpe;                     /* (N, H, R) roped */
    treal *kn, *v;                  /* (N, H, Dn), (N, H, Dv) */
    treal *P;                       /* (B, H, T, T) attention probabilities */
    treal *o;                       /* (N, H·Dv) */
    treal *x_mid, *h2, *r2;         /* (N, D), (N, D), (N) */
    treal *fg, *fu;                 /* dense (N, F) gate and up pre-activations */
    treal *logit, *s;               /* router (N, E) logits, scores */
    int32_t *sel;                   /* (N, K) */
    treal *w, *wz;                  /* (N, K) weights, (N) normalisation sum (0 = none) */
    treal *sg, *su;                 /* shared (N, Fe·S) */
    int32_t *ex_off, *ex_asg;       /* (E+1), (N·K) assignment t·K+k grouped by expert */
    treal *eg, *eu, *ey;            /* (N·K, Fe), (N·K, Fe), (N·K, D) in grouped order */
} TM(lact);

typedef struct TM(model) {
    moe_hparams hp;
    int32_t dn;
    tm_tensor *tensors; /* owned */
    int n_tensors;
    int ti_embd, ti_out_norm, ti_out; /* ti_out −1 when tied */
    tm_layer *layers;   /* owned, L */
    size_t n_params;
    treal *params, *grads; /* owned, n_params each */
    /* step geometry and activations (owned, sized by TM(alloc_acts)) */
    int32_t B, T, N;
    void *amem;
    TM(lact) *acts;     /* L */
    int32_t *tokens, *targets; /* (N) */
    treal *rope;        /* (T, R) cos/sin pairs */
    treal *x_fin, *hf, *rf, *logits; /* (N, D), (N, D), (N), (N, V) */
    treal *gx, *gh, *gt0, *gt1, *gt2, *gbig; /* backward scratch (N, max width) */
    treal *gres;        /* (N, D) gradient of the residual stream */
    treal *gattn;       /* per thread (T, T) + (T) */
    int n_thr;
    moe_pool *pool;     /* borrowed, may be NULL (serial) */
    /* routing */
    int replay;         /* 1: reuse the stored sel (finite differences), 0: route */
    uint8_t *active;    /* (L, E): expert got ≥ 1 token this step */
    uint64_t *counts;   /* (L, E): assignments this step */
    /* losses of the last forward */
    double loss_ce, loss_aux;
    double aux_alpha;   /* sequence-wise auxiliary loss weight (0 = off) */
    /* called before an expert's weights are used in a forward (exact-mode catch-up) */
    void (*touch_expert)(void *ud, int layer, int e);
    void *touch_ud;
} TM(model);

/* Tensor table and buffers for hyperparameters hp (params zero). */
moe_status TM(create)(const moe_hparams *hp, int tied, TM(model) **out, char *err, size_t errlen);
/* Open a deepseek2 GGUF (any stored dtype; legacy attn_kv_b split into k_b/v_b) into F32/F64 params. */
moe_status TM(load)(const char *path, TM(model) **out, char *err, size_t errlen);
moe_status TM(load_gguf)(const moe_gguf *g, TM(model) **out, char *err, size_t errlen);
void TM(free)(TM(model) *m);
/* Size the activations for B sequences of T tokens. */
moe_status TM(alloc_acts)(TM(model) *m, int32_t B, int32_t T);
int TM(find)(const TM(model) *m, const char *name);
/* Forward over m->tokens (B, T); targets < 0 are ignored. Returns the mean cross-entropy
 * (plus the auxiliary loss when aux_alpha > 0) and leaves logits in m->logits (N, V). */
double TM(forward)(TM(model) *m);
/* Backward of the last forward: accumulates into grads (caller zeroes them: TM(zero_grads)). */
void TM(backward)(TM(model) *m);
/* Zero the gradients that the next backward writes: every non-frozen dense tensor and the
 * slices of the experts active in the last forward (idle experts' gradients are not touched). */
void TM(zero_grads)(TM(model) *m);

#endif /* MOE_TM_BODY */
