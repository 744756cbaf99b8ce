/* moekit: batched decoding of several sequences in one forward step (the server's engine).
 *
 * A moe_engine owns the step buffers (sized once for up to n_batch tokens), the thread pool and
 * the routing counters of one model. A moe_seq is one sequence: its MLA latent KV cache and
 * position. moe_engine_step runs one forward pass over tokens from any number of sequences:
 * attention runs per sequence over its own cache, while every matrix product (and each routed
 * expert) is computed once over all the step's tokens, so an expert's weights are read once
 * per step however many sequences select it. A sequence may contribute a chunk of its prompt
 * (prefill) and others a single token (decode) in the same step.
 *
 * Threading: the engine and its sequences belong to one thread (the server's engine thread);
 * moe_engine functions are not thread-safe. The model may be shared by several engines.
 * moe_ctx (model.h) is a one-sequence convenience over the same code. */
#ifndef MOE_BATCH_H
#define MOE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "moe/model.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_engine moe_engine;
typedef struct moe_seq moe_seq;

typedef struct moe_engine_params {
    int32_t n_batch;   /* most tokens per step, over all sequences (0 = 512) */
    int32_t n_seq_max; /* most sequences per step (0 = 64) */
    int32_t n_threads; /* 0 = number of CPUs */
} moe_engine_params;

moe_engine_params moe_engine_default_params(void);
moe_status moe_engine_init(moe_model *m, const moe_engine_params *p, moe_engine **out, char *err,
                           size_t errlen);
void moe_engine_free(moe_engine *e);
const char *moe_engine_errmsg(const moe_engine *e);
int moe_engine_n_threads(const moe_engine *e);
/* Run fn(arg, ith, nth) on every thread of the engine's pool (the caller is thread 0) and
 * return when all are done: lets the engine's owner spread its own per-step work (sampling
 * the step's sequences, say) over the threads the engine already holds, between steps. */
void moe_engine_parallel(moe_engine *e, void (*fn)(void *arg, int ith, int nth), void *arg);

/* A sequence with room for n_ctx tokens (0 = the model's context length). The cache is
 * reserved as virtual memory and committed as it fills; moe_seq_bytes tells the committed
 * upper bound (n_ctx × (kv_lora_rank + rope dims) × 4 × layers) for budgeting. */
moe_status moe_seq_init(moe_engine *e, int32_t n_ctx, moe_seq **out);
void moe_seq_free(moe_seq *s);
int32_t moe_seq_pos(const moe_seq *s);
int32_t moe_seq_n_ctx(const moe_seq *s);
size_t moe_seq_bytes(const moe_seq *s);
/* Forget positions >= pos (0 clears). */
moe_status moe_seq_truncate(moe_seq *s, int32_t pos);

/* One sequence's part of a step: n_tokens tokens appended at its current position. If
 * `logits` is not NULL it receives the logits of the item's last token (n_vocab floats). */
typedef struct moe_batch_item {
    moe_seq *seq;
    const int32_t *tokens;
    int32_t n_tokens;
    float *logits;
} moe_batch_item;

/* Run one step. Sum of n_tokens must be <= n_batch, n_items <= n_seq_max, each sequence at
 * most once per step; MOE_ERR_RANGE if a sequence would exceed its n_ctx, MOE_ERR_INVAL for
 * token ids outside the vocabulary (nothing is appended to any sequence then). */
moe_status moe_engine_step(moe_engine *e, moe_batch_item *items, int32_t n_items);

/* Routing counters of MoE layer `layer` (E counters; NULL for dense layers), summed over all
 * steps of this engine since the last reset. */
const uint64_t *moe_engine_expert_counts(const moe_engine *e, int32_t layer);
void moe_engine_reset_expert_counts(moe_engine *e);
/* The routing observer of model.h on an engine: tokens in the order of the step's items. */
void moe_engine_set_route_observer(moe_engine *e, moe_route_observer_fn fn, void *ud);

/* Step profile: wall time, weight bytes read and calls per phase of the forward pass, summed
 * over the steps since moe_engine_profile(e, 1); either call clears it, 0 also stops it (read
 * first). Off by default; off, it
 * costs one branch per phase. Phase bytes count each weight matrix once per call (attention:
 * the latent cache rows attended to, once); MOE_PHASE_OTHER is the step's time outside every
 * named phase (norms, RoPE, SwiGLU, routing, the experts' weighted sums, embedding). */
typedef enum moe_phase {
    MOE_PHASE_ATTN_IN,   /* q (or q_a) and kv_a, one job */
    MOE_PHASE_ATTN_QB,   /* q_b (models with a query LoRA) */
    MOE_PHASE_ATTN_KB,   /* queries into the latent space, all heads */
    MOE_PHASE_ATTN_CORE, /* scores, softmax and latent values over the cache */
    MOE_PHASE_ATTN_VB,   /* values out of the latent, all heads */
    MOE_PHASE_ATTN_OUT,  /* attn_output */
    MOE_PHASE_DENSE_UP,  /* dense FFN gate+up */
    MOE_PHASE_DENSE_DOWN,
    MOE_PHASE_ROUTER,    /* the router's scores */
    MOE_PHASE_EXPERTS_UP,   /* shared experts' and every selected expert's gate+up, one job */
    MOE_PHASE_EXPERTS_DOWN, /* shared and selected experts' down, one job */
    MOE_PHASE_HEAD,
    MOE_PHASE_OTHER,
    MOE_PHASE_COUNT
} moe_phase;
typedef struct moe_phase_stat {
    const char *name; /* "attn.in", ..., "other" */
    double seconds, bytes;
    uint64_t calls;
} moe_phase_stat;
void moe_engine_profile(moe_engine *e, int on);
/* Fills out[MOE_PHASE_COUNT]; returns the summed wall time of the profiled steps. */
double moe_engine_profile_read(const moe_engine *e, moe_phase_stat *out);

#ifdef __cplusplus
}
#endif
#endif
