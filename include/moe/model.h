/* moekit: the deepseek2 model (DeepSeek-V2, V2-Lite, V3, R1 and fine-tunes).
 *
 * moe_model holds the hyperparameters and borrowed views of the mmapped weights; it is
 * read-only after open and may be shared by any number of contexts and threads.
 * moe_ctx is one sequence: its MLA latent KV cache (kv_lora_rank + rope dims floats per token
 * per layer), step buffers sized at creation (no allocation inside a step), a thread pool and
 * routing statistics. A moe_ctx is used by one thread at a time.
 *
 * Math: ../shared/spec/deepseek2.md §4, every variant (q-LoRA or not, split attn_k_b/attn_v_b
 * or legacy attn_kv_b, softmax/sigmoid gating, exp_probs_b, group-limited routing, top-k
 * normalisation and scaling, shared experts, leading dense layers, YaRN, tied head). Only the
 * experts a token selects are computed. */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "moe/gguf.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hyperparameters as read from the GGUF (letters as in spec deepseek2.md). */
typedef struct moe_hparams {
    int32_t n_vocab;         /* V */
    int32_t n_embd;          /* D */
    int32_t n_layer;         /* L (block_count − nextn_predict_layers) */
    int32_t n_head;          /* H */
    int32_t n_ctx_train;     /* context_length */
    int32_t q_lora_rank;     /* Lq, 0 = plain attn_q */
    int32_t kv_lora_rank;    /* Lkv */
    int32_t n_rot;           /* R */
    int32_t n_embd_head_k;   /* Dk = Dn + R */
    int32_t n_embd_head_v;   /* Dv */
    int32_t n_ff;            /* F (dense layers) */
    int32_t n_ff_exp;        /* Fe */
    int32_t n_expert;        /* E */
    int32_t n_expert_used;   /* K */
    int32_t n_expert_shared; /* S */
    int32_t n_expert_groups; /* G (0/1 = no grouping) */
    int32_t n_group_used;
    int32_t n_layer_dense_lead; /* Ld */
    int32_t gating_func;     /* 1 softmax, 2 sigmoid, 3 softmax over selected, 4 sqrt(softplus) */
    int32_t expert_weights_norm;
    float expert_weights_scale;
    float rms_eps;
    int32_t is_mla;          /* split attn_k_b/attn_v_b (1) or legacy attn_kv_b (0) */
    int32_t tied_output;
    int32_t has_exp_probs_b;
    /* rope */
    float rope_freq_base;
    float rope_freq_scale;   /* 1/factor */
    float rope_ext_factor;   /* 1 for yarn */
    float rope_attn_factor;  /* context attention factor (spec §4.5) */
    float rope_yarn_log_mul; /* mscale_all_dim */
    int32_t n_ctx_orig_yarn;
    float kq_scale;          /* spec §4.6 */
} moe_hparams;

typedef struct moe_model moe_model;
typedef struct moe_ctx moe_ctx;

/* Open a deepseek2 GGUF: validates keys (exact types, as llama.cpp), tensor set and shapes,
 * dtypes. On failure *out is NULL and err names the problem (key, tensor, expected shape). */
moe_status moe_model_open(const char *path, moe_model **out, char *err, size_t errlen);
/* Progress of the long part of every moe_model_open / moe_model_open_gguf in this process from
 * now on: the weights' repacking (or copy into huge pages), done and total bytes; the last call
 * has done == total. Called from one of the loading threads, about every 64 MB. NULL: none. */
void moe_model_set_load_progress(moe_gguf_progress_fn fn, void *ud);
/* The same over an already opened GGUF (borrowed; must outlive the model). */
moe_status moe_model_open_gguf(const moe_gguf *g, moe_model **out, char *err, size_t errlen);
void moe_model_close(moe_model *m);
const moe_hparams *moe_model_hparams(const moe_model *m);
/* The GGUF the model reads (borrowed), e.g. for the tokenizer. */
const moe_gguf *moe_model_gguf(const moe_model *m);
/* Bytes of weights, and bytes read per decoded token (attention, router, shared experts,
 * K routed experts, head; without KV cache). */
uint64_t moe_model_weight_bytes(const moe_model *m);
uint64_t moe_model_active_bytes(const moe_model *m);
/* Bytes of one routed expert (gate + up + down) of one MoE layer (0 without MoE layers), and
 * the number of MoE layers: a step that selects n distinct experts in a layer reads n of these. */
uint64_t moe_model_expert_bytes(const moe_model *m);
int32_t moe_model_n_moe_layers(const moe_model *m);
/* Multiply-adds per token of the matrix products over quantized/converted weights (attention
 * projections, dense FFN, shared and K routed experts; without router, head and attention
 * scores): the int8 work of a prefill token under W8A8. */
uint64_t moe_model_matmul_macs(const moe_model *m);
/* A one-line description ("deepseek2 L=3 D=128 E=8/K=2 ... f32"). */
void moe_model_describe(const moe_model *m, char *buf, size_t n);

typedef struct moe_ctx_params {
    int32_t n_ctx;     /* tokens the KV cache holds; 0 = the model's context_length */
    int32_t n_batch;   /* most tokens per forward step (longer inputs are chunked); 0 = 512 */
    int32_t n_threads; /* 0 = number of CPUs */
} moe_ctx_params;

moe_ctx_params moe_ctx_default_params(void);
/* Create a context. The KV cache is reserved as virtual memory and committed as it fills. */
moe_status moe_ctx_init(moe_model *m, const moe_ctx_params *p, moe_ctx **out, char *err, size_t errlen);
void moe_ctx_free(moe_ctx *c);
/* Last error message on this context. */
const char *moe_ctx_errmsg(const moe_ctx *c);

/* Append n tokens at the current position and run the forward pass. If `logits` is not NULL
 * it receives n × V floats (every position's logits, row-major); the last position's logits
 * are always available through moe_ctx_logits. MOE_ERR_RANGE if the tokens do not fit in
 * n_ctx (nothing is appended then), MOE_ERR_INVAL for a token id outside [0, V). */
moe_status moe_ctx_eval(moe_ctx *c, const int32_t *tokens, int32_t n, float *logits);
/* Logits of the last evaluated position (V floats, owned by the context). */
const float *moe_ctx_logits(const moe_ctx *c);
int32_t moe_ctx_pos(const moe_ctx *c);
int32_t moe_ctx_n_ctx(const moe_ctx *c);
/* Forget positions >= pos (pos = 0 clears the sequence). */
moe_status moe_ctx_truncate(moe_ctx *c, int32_t pos);
int moe_ctx_n_threads(const moe_ctx *c);

/* Routing statistics: for MoE layer `layer` (0-based over all layers; dense layers give NULL),
 * an array of E counters: how many tokens selected each expert since the last reset. */
const uint64_t *moe_ctx_expert_counts(const moe_ctx *c, int32_t layer);
void moe_ctx_reset_expert_counts(moe_ctx *c);

/* Routing observer: called on the evaluating thread once per MoE layer per forward step, right
 * after routing, with the step's tokens (in step order) × n_used selected experts and their final
 * weights w_j (after normalisation and scaling; spec §4.11), row-major (n_tokens, n_used). The
 * pointers are valid during the call only. Costs nothing when unset. */
typedef void (*moe_route_observer_fn)(void *ud, int32_t layer, int32_t n_tokens, int32_t n_used,
                                      const int32_t *experts, const float *weights);
/* Set (or with fn = NULL remove) the observer of a context. */
void moe_ctx_set_route_observer(moe_ctx *c, moe_route_observer_fn fn, void *ud);
/* The engine under a context (batch.h), for its step profile; owned by the context. */
struct moe_engine *moe_ctx_engine(moe_ctx *c);

#ifdef __cplusplus
}
#endif
#endif
