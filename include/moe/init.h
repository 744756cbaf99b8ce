/* moekit: random-weight deepseek2 models of any shape (`moe init`).
 *
 * A moe_init_config describes the shape; presets (DESIGN.md) fill it, a JSON file can
 * override any field. moe_init_write streams the GGUF tensor by tensor (so the 15.7 B-parameter
 * v2-lite preset needs only one tensor in memory at a time) and the files follow
 * spec/minimal-model.md so llama.cpp loads them too. */
#ifndef MOE_INIT_H
#define MOE_INIT_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_init_config {
    char name[64];          /* general.name */
    int32_t n_layer, n_layer_dense, n_embd, n_head;
    int32_t q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head;
    int32_t n_ff, n_ff_exp, n_expert, n_expert_used, n_expert_shared, n_group, n_group_used;
    int32_t gating;          /* 1 softmax, 2 sigmoid */
    int32_t exp_probs_b;     /* write the selection bias */
    int32_t norm_topk;
    float scale;             /* expert_weights_scale */
    int32_t n_vocab;         /* pad the vocabulary to this many ids (0 = as is) */
    int32_t n_ctx;           /* context_length */
    float rope_theta;
    float yarn_factor;       /* 0 = no YaRN */
    int32_t yarn_orig_ctx;
    float mscale_all_dim;
    int32_t tied;            /* no output.weight */
    int32_t legacy_kv_b;     /* fused attn_kv_b instead of attn_k_b/attn_v_b */
    float rms_eps;
    int32_t dtype;           /* moe_dtype of the matrices (norms, router, bias stay F32) */
    uint64_t seed;
} moe_init_config;

/* Fill `out` from a preset name (tiny, bench-v2lite-4L, v2-lite, v3-mini). MOE_ERR_NOTFOUND if unknown. */
moe_status moe_init_preset(const char *name, moe_init_config *out);
/* Names of the presets, NULL-terminated. */
const char *const *moe_init_preset_names(void);
/* Apply a JSON object of overrides (field names as in moe_init_config; "preset" picks the base). */
moe_status moe_init_from_json(const char *path, moe_init_config *cfg, char *err, size_t errlen);
/* Check the shape is a valid deepseek2 model; the message names the field. */
moe_status moe_init_validate(const moe_init_config *cfg, char *err, size_t errlen);

typedef void (*moe_init_progress_fn)(void *ud, uint64_t done, uint64_t total);
/* Write the model. vocab_from: a GGUF whose tokenizer is copied (NULL = built-in vocabulary). */
moe_status moe_init_write(const moe_init_config *cfg, const char *vocab_from, const char *path,
                          moe_init_progress_fn progress, void *ud, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
