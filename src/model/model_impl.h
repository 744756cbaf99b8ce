/* moekit model: struct bodies shared inside src/model (not public). */
#ifndef MOE_MODEL_IMPL_H
#define MOE_MODEL_IMPL_H

#include "core/pool.h"
#include "kern/kern.h"
#include "moe/batch.h"
#include "moe/model.h"

/* A weight split into equal per-head or per-expert slices: slice k is `w` with its data moved
 * by k·stride bytes. */
typedef struct sliced_w {
    moe_wview w;   /* slice 0 */
    size_t stride; /* bytes between slices */
} sliced_w;

typedef struct layer_w {
    const float *attn_norm, *q_a_norm, *kv_a_norm, *ffn_norm; /* (D), (Lq), (Lkv), (D) */
    moe_wview q_a, q_b, q;     /* [D→Lq], [Lq→H·Dk], [D→H·Dk] */
    moe_wview kv_a;            /* [D→Lkv+R] */
    sliced_w k_b;              /* per head [Dn→Lkv] (absorbed: q̃ = k_b_h · q_nope_h) */
    sliced_w v_b;              /* per head [Lkv→Dv] */
    moe_wview attn_out;        /* [H·Dv→D] */
    /* dense */
    moe_wview gate, up, down;  /* [D→F], [D→F], [F→D] */
    /* MoE */
    moe_wview gate_inp;        /* [D→E] router */
    const float *exp_probs_b;  /* (E) or NULL */
    sliced_w gate_exps, up_exps; /* per expert [D→Fe]; with fused gate_up, up = gate + Fe rows */
    sliced_w down_exps;        /* per expert [Fe→D] */
    moe_wview gate_sh, up_sh, down_sh; /* [D→Fe·S], [D→Fe·S], [Fe·S→D] */
    int is_moe;
} layer_w;

struct moe_model {
    moe_hparams hp;
    const moe_gguf *g;   /* borrowed or owned (owns_g) */
    int owns_g;
    moe_wview tok_embd;  /* [D→V] rows looked up */
    moe_wview output;    /* [D→V] (token_embd when tied) */
    const float *output_norm;
    layer_w *layers;     /* owned, L */
    void *owned;         /* owned: f32 copies of 1-D tensors stored in other types, legacy k_b */
    size_t owned_used, owned_cap;
    int32_t dn;          /* Dn = Dk − R */
    uint64_t weight_bytes, active_bytes;
    int main_type;       /* most common weight type, for describe */
    uint8_t *packed;     /* owned mapping: Q8_0 product weights repacked to R16 (load.c), or NULL */
    size_t packed_bytes;
    int32_t n_packed;    /* tensors repacked */
};

/* The multi-sequence engine (include/moe/batch.h): step buffers sized for n_batch tokens, the
 * pool, routing counters. Every buffer is carved from `mem` at init; a step allocates nothing.
 * Token t of a step belongs to sequence tok_seq[t] at position tok_pos[t]. */
struct moe_engine {
    moe_model *m;        /* borrowed */
    moe_pool *pool;      /* owned */
    int32_t n_batch, n_seq_max, n_out; /* n_out = rows of the gathered output head */
    void *mem;           /* owned: step buffers, carved below */
    float *x, *h, *t0;   /* (B, D), (B, D), (B, max width) */
    float *qa, *q, *kvb; /* (B, Lq), (B, H·Dk), (B, Lkv+R) */
    float *qt, *u, *o;   /* (B, H, Lkv+R), (B, H, Lkv), (B, H·Dv) */
    float *fa, *fb;      /* (B, max(F, Fe·(S+K))): dense, or shared (B, Fe·S) then expert slots (B·K, Fe) */
    float *xe, *ye;      /* (B·K, D) gathered expert inputs (floats, or blocks: moe_ffn) / expert outputs, by slot */
    moe_q8a *hq;         /* (B, D/32) h quantized once for the experts (W8A8 weights) */
    moe_wview *wv;       /* (max(3E, H)) per-step weight slices (heads, experts) */
    moe_kern_prod *prods, *prods2; /* (max(2E+3, H)), (E+1) product sets of one job */
    float *router;       /* (B, E) */
    int32_t *sel;        /* (B, K) selected experts */
    float *selw;         /* (B, K) their weights */
    int32_t *ex_tok;     /* (B·K) token index grouped by expert */
    float *ex_w;         /* (B·K) weight grouped by expert */
    int32_t *ex_off;     /* (E+1) */
    float *rope;         /* (B, R): cos/sin pairs per token */
    int32_t *tok_pos;    /* (B) position of each token of the step */
    float **tok_cache;   /* (B) KV cache base of each token's sequence */
    float *hl;           /* (n_out, D) normed last rows of the items that want logits */
    float *lo;           /* (n_out, V) their logits */
    float *scratch;      /* (n_threads, scratch_per_thread) */
    size_t scratch_per_thread;
    moe_q8a *xq;         /* (B, max in / 32) activation blocks of W8A8 products */
    moe_kern_ws ws;      /* scratch + xq, as the kernels take them */
    uint64_t *counts;    /* (L, E) routing counters */
    moe_route_observer_fn route_fn; /* optional, with route_ud (borrowed) */
    void *route_ud;
    float *scores;       /* owned, separate: (n_threads, scores_cap) attention scratch (moe_kern_mla_scratch), grown by moe_seq_init */
    size_t scores_cap;
    int32_t n_seq_live;
    int prof;            /* step profile on (moe_engine_profile) */
    double prof_s[MOE_PHASE_COUNT], prof_b[MOE_PHASE_COUNT], prof_total;
    uint64_t prof_n[MOE_PHASE_COUNT];
    char err[256];
};

/* One sequence: its latent cache (L, n_ctx, Lkv+R) = [c_kv, roped k_pe] per token, an anonymous
 * mapping committed as it fills. */
struct moe_seq {
    moe_engine *e;       /* borrowed */
    int32_t n_ctx, pos;
    float *kv;           /* owned mapping (kv_map bytes): blocks of MOE_KV_BLOCK rows of every layer (batch.c) */
    size_t kv_bytes, kv_map;
    int32_t kv_ready;    /* positions [0, kv_ready) are populated (moe_seq_kv_ready) */
    int32_t step_mark;   /* scratch for moe_engine_step's "at most once" check */
};

/* moe_ctx: one engine + one sequence (model.h). */
struct moe_ctx {
    moe_engine *e;
    moe_seq *s;
    int32_t n_batch;
    float *logits;       /* (V) last position */
    char err[256];
};

/* One step over validated items (forward.c). When logits_all is not NULL it receives the logits
 * of every token of the step, (B, V) in item order; each item's `logits` (if set) receives its
 * last token's row. Advances every item's sequence. */
void moe_engine_forward(moe_engine *e, const moe_batch_item *items, int32_t n_items, float *logits_all);
/* A sequence's KV cache in blocks (batch.c): floats per block (MOE_KV_BLOCK positions of every
 * layer), kern.h's bs for the attention kernels, and blocks for n positions */
static inline int64_t moe_kv_block_floats(const moe_hparams *hp) {
    return (int64_t)hp->n_layer * MOE_KV_BLOCK * (hp->kv_lora_rank + hp->n_rot);
}
static inline size_t moe_kv_blocks(int64_t n) { return (size_t)((n + MOE_KV_BLOCK - 1) / MOE_KV_BLOCK); }
/* Populates the cache rows [0, upto) of every layer (and some rows ahead) before a step writes
 * them: see batch.c. Never fails; without MADV_POPULATE_WRITE the rows fault in as written. */
void moe_seq_kv_ready(moe_seq *s, int32_t upto);

#endif
