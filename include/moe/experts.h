/* moekit: expert analytics and pruning (`moe experts`, spec training.md §9).
 *
 * Statistics: a moe_experts_stats holds, per layer ℓ and expert e, the number of tokens that
 * selected e (count), optionally the routing-weight mass Σ w (needs per-token routing
 * weights, see has_mass) and the co-activation matrix (tokens that selected both i and j).
 * They are collected by running the model (moe_experts_collect), read back from the JSON
 * report (moe_experts_read_json) or from a server's Prometheus counters
 * (moe_experts_parse_metrics / moe_experts_fetch_metrics; counts only).
 * Summaries (shares, max/mean, CV, entropy, coverage sets) are derived by
 * moe_experts_summarize; the JSON and HTML reports are docs/experts.md.
 *
 * Pruning: moe_experts_plan picks the experts to keep (the same number in every MoE layer,
 * because a deepseek2 GGUF has one expert_count), moe_experts_prune writes the pruned GGUF by
 * copying whole expert slices (any dtype) and the matching router rows and bias entries.
 *
 * Thread-safety: every function works on the objects it is given; none has global state. */
#ifndef MOE_EXPERTS_H
#define MOE_EXPERTS_H

#include <stddef.h>
#include <stdint.h>

#include "moe/gguf.h"
#include "moe/model.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Routing statistics of a model with L layers and E experts per MoE layer. All arrays are
 * owned (freed by moe_experts_stats_free). Indexing: [layer * E + expert],
 * coact [(layer * E + i) * E + j]. */
typedef struct moe_experts_stats {
    int32_t n_layer;        /* L */
    int32_t n_expert;       /* E */
    int32_t n_expert_used;  /* K (0 when unknown, e.g. from metrics) */
    uint64_t n_tokens;      /* tokens observed (per MoE layer) */
    int32_t has_mass;       /* mass[] holds routing-weight sums */
    int32_t has_coact;      /* coact[] holds co-activation counts */
    char source[32];        /* "model", "metrics", "json" */
    uint8_t *is_moe;        /* (L) 1 for MoE layers */
    uint64_t *count;        /* (L, E) selections */
    double *mass;           /* (L, E) Σ routing weight over selecting tokens (valid if has_mass) */
    uint64_t *coact;        /* (L, E, E) tokens that selected both i and j (i != j; diagonal = count) */
} moe_experts_stats;

/* Allocate zeroed statistics for L layers × E experts. */
moe_status moe_experts_stats_init(moe_experts_stats *s, int32_t n_layer, int32_t n_expert);
void moe_experts_stats_free(moe_experts_stats *s);

/* Record one token's routing in `layer`: its k selected experts and (weights may be NULL)
 * their weights. Marks the layer as MoE and updates count, co-activation and mass. */
void moe_experts_stats_add(moe_experts_stats *s, int32_t layer, const int32_t *experts,
                           const float *weights, int32_t k);

/* Evaluate tokens[0..n) on `c` (appended at its current position) and record routing through
 * the engine's routing observer: each token's selected experts and weights (exact counts,
 * co-activation and weight mass). per_token = 1 evaluates one token per step, 0 in batched
 * steps (faster; same statistics). The context's expert counters are reset. */
moe_status moe_experts_collect(moe_ctx *c, const moe_model *m, const int32_t *tokens, int32_t n,
                               int per_token, moe_experts_stats *s);

/* Per-layer summary derived from the statistics. `mass` below is the routing-weight mass when
 * has_mass, else the selection count (the JSON says which: "mass_source"). */
typedef struct moe_experts_layer_summary {
    uint64_t n_select;     /* Σ_e count */
    double max_over_mean;  /* max count / mean count (1 = perfectly balanced) */
    double cv;             /* population std / mean of counts */
    double entropy;        /* of the token shares, in bits */
    double entropy_norm;   /* entropy / log2(E) */
    double idle_fraction;  /* experts with count 0 / E */
    int32_t cover[3];      /* experts needed to cover 50 %, 90 %, 99 % of the mass */
} moe_experts_layer_summary;

/* Fill `out` for `layer`; `order` (E ints, may be NULL) receives the experts by descending
 * mass (ties: lower index first). MOE_ERR_INVAL for a dense layer. */
moe_status moe_experts_summarize(const moe_experts_stats *s, int32_t layer,
                                 moe_experts_layer_summary *out, int32_t *order);

/* Reports (formats: docs/experts.md). `model` is a label written into the report. */
moe_status moe_experts_write_json(const moe_experts_stats *s, const char *model, const char *path,
                                  char *err, size_t errlen);
moe_status moe_experts_write_html(const moe_experts_stats *s, const char *model, const char *path,
                                  char *err, size_t errlen);
/* Read statistics back from a JSON report written by moe_experts_write_json. */
moe_status moe_experts_read_json(const char *path, moe_experts_stats *s, char *err, size_t errlen);

/* Prometheus text exposition: every `moe_expert_tokens_total{layer="L",expert="E"} N` sample
 * (labels in any order, other labels summed over) becomes count[L][E]; other lines are ignored.
 * MOE_ERR_FORMAT if no such sample is found or a sample is malformed. */
moe_status moe_experts_parse_metrics(const char *text, size_t len, moe_experts_stats *s, char *err,
                                     size_t errlen);
/* GET `url` (libcurl; http or https) and parse it as above. */
moe_status moe_experts_fetch_metrics(const char *url, moe_experts_stats *s, char *err, size_t errlen);

/* ---- pruning ---- */
typedef struct moe_experts_prune_params {
    int32_t keep_per_layer; /* keep this many experts in every MoE layer (0 = use coverage) */
    double coverage;        /* else: the fewest experts per layer that cover this share of every
                               layer's mass (the largest such number over layers is kept) */
} moe_experts_prune_params;

moe_experts_prune_params moe_experts_default_prune_params(void);

/* Decide which experts stay: keep[l * E + e] = 1 for kept experts of MoE layers, by
 * descending mass (ties: lower index). With group-limited routing (G > 1) every group keeps the
 * same number, keep/G, of its own best experts; the plan is refused (MOE_ERR_INVAL, reason in
 * err) when keep is not a multiple of G, a group would keep fewer than 2 experts (the group
 * score is the sum of its two best), or keep >= E. *n_keep receives the experts kept per layer. */
moe_status moe_experts_plan(const moe_experts_stats *s, const moe_hparams *hp,
                            const moe_experts_prune_params *p, uint8_t *keep, int32_t *n_keep,
                            char *err, size_t errlen);

/* Write `src` (a deepseek2 GGUF) with only the kept experts: rows of ffn_gate_inp, entries
 * of exp_probs_b, slices of ffn_{gate,up,gate_up,down}_exps (bytes copied: any dtype);
 * expert_count = n_keep, expert_used_count lowered to what stays reachable. Every other key
 * and tensor is copied unchanged. */
moe_status moe_experts_prune(const moe_gguf *src, const uint8_t *keep, int32_t n_keep,
                             const char *path, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
