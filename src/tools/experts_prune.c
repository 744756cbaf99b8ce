/* moekit tools: expert pruning (`moe experts prune`, spec training.md §9.2 method 1, §9.3).
 *
 * Plan: per MoE layer, experts ranked by mass (routing weight if recorded, else selections;
 * ties: lower index). A deepseek2 GGUF has one expert_count for every layer, so every MoE
 * layer keeps the same number N. With group-limited routing (G > 1) each group keeps N/G of
 * its own best experts, so groups stay equal and consecutive (spec deepseek2.md §4.11 step 4).
 *
 * Write: tensors are copied byte for byte from the mapping; the expert-indexed ones (last
 * dimension E) are rebuilt from whole slices of the kept experts, in ascending expert order:
 *   ffn_gate_inp.weight [D, E]        rows (D values each, any dtype)
 *   exp_probs_b.bias    [E]           entries (1-element blocks only)
 *   ffn_{gate,up,gate_up,down}_exps   [*, *, E] matrices
 * Keeping the order keeps top-K tie-breaking and the per-expert accumulation order the same,
 * which is what makes pruning never-selected experts bit-exact under sigmoid gating.
 *
 * When the logits are bit-identical after pruning experts no token selected:
 *   gating 2 (sigmoid), 3 (softmax over the selected), 4 (sqrt softplus): a score depends on
 *   its own logit only, top-K over the remaining experts picks the same set in the same order,
 *   and the weights (and their normalisation) are computed from the same numbers. Yes, without
 *   groups. With groups a group's score is the sum of its two best σ, which may include a
 *   pruned expert: not guaranteed.
 *   gating 1 (softmax over all E): the denominator loses the pruned experts' exp(ℓ): weights
 *   change (slightly); with expert_weights_norm they are mathematically equal but rounded
 *   differently. Never bit-identical in general. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/experts.h"

static double mass_at(const moe_experts_stats *s, int32_t l, int32_t e) {
    size_t i = (size_t)l * (size_t)s->n_expert + (size_t)e;
    return s->has_mass ? s->mass[i] : (double)s->count[i];
}

moe_experts_prune_params moe_experts_default_prune_params(void) {
    moe_experts_prune_params p = {0, 0.95};
    return p;
}

/* experts e0..e0+n-1 of layer l by descending mass into out (stable: ties keep lower index) */
static void rank(const moe_experts_stats *s, int32_t l, int32_t e0, int32_t n, int32_t *out) {
    for (int32_t i = 0; i < n; i++) {
        int32_t j = i;
        double m = mass_at(s, l, e0 + i);
        while (j > 0 && mass_at(s, l, out[j - 1]) < m) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = e0 + i;
    }
}

moe_status moe_experts_plan(const moe_experts_stats *s, const moe_hparams *hp, const moe_experts_prune_params *p,
                            uint8_t *keep, int32_t *n_keep, char *err, size_t errlen) {
#define FAIL(...)                                              \
    do {                                                       \
        if (err && errlen) snprintf(err, errlen, __VA_ARGS__); \
        free(ord);                                             \
        return MOE_ERR_INVAL;                                  \
    } while (0)
    const int32_t L = hp->n_layer, E = hp->n_expert;
    const int32_t G = hp->n_expert_groups > 1 ? hp->n_expert_groups : 1, per = E / G;
    int32_t *ord = malloc(sizeof(int32_t) * (size_t)(E > 0 ? E : 1));
    if (!ord) return MOE_ERR_NOMEM;
    *n_keep = 0;
    if (E <= 0 || hp->n_layer_dense_lead >= L) FAIL("the model has no MoE layer");
    if (s->n_layer != L || s->n_expert != E)
        FAIL("the statistics are for %d layers × %d experts, the model has %d × %d", s->n_layer, s->n_expert, L, E);
    int32_t N = p->keep_per_layer;
    if (N <= 0) {
        if (!(p->coverage > 0 && p->coverage <= 1)) FAIL("coverage must be in (0, 1], got %g", p->coverage);
        /* the fewest experts per group q such that the groups' best q cover the level, max over layers */
        int32_t qmax = 1;
        for (int32_t l = hp->n_layer_dense_lead; l < L; l++) {
            double total = 0;
            for (int32_t e = 0; e < E; e++) total += mass_at(s, l, e);
            if (total <= 0) continue;
            int32_t q = 1;
            for (; q < per; q++) {
                double acc = 0;
                for (int32_t g = 0; g < G; g++) {
                    rank(s, l, g * per, per, ord);
                    for (int32_t i = 0; i < q; i++) acc += mass_at(s, l, ord[i]);
                }
                if (acc >= p->coverage * total * (1 - 1e-12)) break;
            }
            if (q > qmax) qmax = q;
        }
        N = qmax * G;
    }
    if (N >= E) FAIL("keeping %d of %d experts per layer prunes nothing", N, E);
    if (G > 1 && N % G)
        FAIL("group-limited routing with %d groups of %d: keep a multiple of %d experts per layer so groups shrink evenly "
             "(asked %d)", G, per, G, N);
    if (G > 1 && N / G < 2)
        FAIL("group-limited routing scores a group by its two best experts: keep at least 2 per group (%d per layer), "
             "asked %d", 2 * G, N);
    memset(keep, 0, (size_t)L * (size_t)E);
    for (int32_t l = hp->n_layer_dense_lead; l < L; l++)
        for (int32_t g = 0; g < G; g++) {
            rank(s, l, g * per, per, ord);
            for (int32_t i = 0; i < N / G; i++) keep[(size_t)l * E + ord[i]] = 1;
        }
    *n_keep = N;
    free(ord);
    return MOE_OK;
#undef FAIL
}

/* ---- writer ---- */

typedef struct {
    const moe_gguf_tensor *t;
    int32_t layer;  /* >= 0: slice by keep row of this layer */
} out_tensor;

typedef struct {
    out_tensor *ts;
    const uint8_t *keep;
    int32_t E;
} fill_ctx;

static int fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    fill_ctx *fc = ud;
    const out_tensor *o = &fc->ts[i];
    const uint64_t slice = o->t->nbytes / (uint64_t)fc->E;
    const uint8_t *k = fc->keep + (size_t)o->layer * (size_t)fc->E;
    uint64_t at = 0;
    for (int32_t e = 0; e < fc->E; e++) {
        if (!k[e]) continue;
        if (at + slice > nbytes) return -1;
        memcpy((char *)buf + at, (const char *)o->t->data + slice * (uint64_t)e, slice);
        at += slice;
    }
    return at == nbytes ? 0 : -1;
}

static const char *const k_sliced[] = {"ffn_gate_inp.weight", "exp_probs_b.bias", "ffn_gate_exps.weight",
                                       "ffn_up_exps.weight", "ffn_gate_up_exps.weight", "ffn_down_exps.weight", NULL};

/* layer of "blk.N.<expert-indexed name>", else -1 */
static int32_t sliced_layer(const moe_str *name) {
    char buf[128];
    if (name->len >= sizeof buf) return -1;
    memcpy(buf, name->ptr, name->len);
    buf[name->len] = 0;
    int l, n = 0;
    if (sscanf(buf, "blk.%d.%n", &l, &n) != 1 || n == 0 || l < 0) return -1;
    for (int i = 0; k_sliced[i]; i++)
        if (!strcmp(buf + n, k_sliced[i])) return l;
    return -1;
}

typedef struct {
    const char *a, *b;
} skip2;

static int skip_keys(const char *key, void *ud) {
    const skip2 *s = ud;
    return !strcmp(key, s->a) || !strcmp(key, s->b);
}

moe_status moe_experts_prune(const moe_gguf *src, const uint8_t *keep, int32_t n_keep, const char *path, char *err,
                             size_t errlen) {
    moe_status st;
    if (err && errlen) err[0] = 0;
    char arch[64], k_count[128], k_used[128], k_groups[128], k_gused[128];
    moe_str a;
    if (moe_gguf_get_str(src, "general.architecture", &a) || a.len == 0 || a.len >= sizeof arch) {
        if (err && errlen) snprintf(err, errlen, "general.architecture missing");
        return MOE_ERR_FORMAT;
    }
    memcpy(arch, a.ptr, a.len);
    arch[a.len] = 0;
    snprintf(k_count, sizeof k_count, "%s.expert_count", arch);
    snprintf(k_used, sizeof k_used, "%s.expert_used_count", arch);
    snprintf(k_groups, sizeof k_groups, "%s.expert_group_count", arch);
    snprintf(k_gused, sizeof k_gused, "%s.expert_group_used_count", arch);
    uint32_t E = 0, K = 0, G = 0, GU = 0, L = 0;
    char k_blocks[128];
    snprintf(k_blocks, sizeof k_blocks, "%s.block_count", arch);
    if (moe_gguf_get_u32(src, k_count, &E) || moe_gguf_get_u32(src, k_used, &K) ||
        moe_gguf_get_u32(src, k_blocks, &L) || E == 0) {
        if (err && errlen) snprintf(err, errlen, "%s, %s and %s must be uint32 keys", k_count, k_used, k_blocks);
        return MOE_ERR_FORMAT;
    }
    moe_gguf_get_u32(src, k_groups, &G);
    moe_gguf_get_u32(src, k_gused, &GU);
    if (n_keep <= 0 || (uint32_t)n_keep >= E) {
        if (err && errlen) snprintf(err, errlen, "keep %d of %u experts: nothing to prune", n_keep, E);
        return MOE_ERR_INVAL;
    }
    /* top-K stays reachable: at most the kept experts, and with groups the experts of the used groups */
    uint32_t K2 = K < (uint32_t)n_keep ? K : (uint32_t)n_keep;
    if (G > 1 && GU > 0 && K2 > GU * ((uint32_t)n_keep / G)) K2 = GU * ((uint32_t)n_keep / G);

    const int64_t nt = moe_gguf_n_tensors(src);
    out_tensor *ts = calloc((size_t)nt + 1, sizeof *ts);
    moe_gguf_writer *w = NULL;
    if (!ts || moe_gguf_writer_init(&w)) {
        free(ts);
        return MOE_ERR_NOMEM;
    }
    skip2 sk = {k_count, k_used};
    st = moe_gguf_writer_copy_kv(w, src, skip_keys, &sk);
    if (!st) st = moe_gguf_writer_set_u32(w, k_count, (uint32_t)n_keep);
    if (!st) st = moe_gguf_writer_set_u32(w, k_used, K2);
    for (int64_t i = 0; i < nt && !st; i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(src, i);
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)(t->name.len < 127 ? t->name.len : 127), t->name.ptr);
        int32_t l = sliced_layer(&t->name);
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        ts[i].t = t;
        ts[i].layer = l;
        if (l >= 0) {
            const int last = t->n_dims - 1;
            if ((uint32_t)l >= L || last < 0 || ne[last] != (int64_t)E || t->nbytes % E ||
                (t->n_dims == 1 && moe_dtype_block_size(t->type) != 1)) {
                if (err && errlen)
                    snprintf(err, errlen, "tensor %s: last dimension must be expert_count %u (got %lld)", name, E,
                             (long long)ne[last < 0 ? 0 : last]);
                st = MOE_ERR_FORMAT;
                break;
            }
            int n_here = 0;
            for (uint32_t e = 0; e < E; e++) n_here += keep[(size_t)l * E + e] != 0;
            if (n_here != n_keep) {
                if (err && errlen) snprintf(err, errlen, "layer %d keeps %d experts, expected %d", l, n_here, n_keep);
                st = MOE_ERR_INVAL;
                break;
            }
            ne[last] = n_keep;
            st = moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, ne, NULL);
        } else {
            st = moe_gguf_writer_add_tensor(w, name, t->type, t->n_dims, ne, t->data);
        }
        if (st && err && errlen && !err[0]) snprintf(err, errlen, "tensor %s: cannot add (%s)", name, moe_status_str(st));
    }
    if (!st) {
        fill_ctx fc = {ts, keep, (int32_t)E};
        st = moe_gguf_writer_write(w, path, fill, &fc, NULL, NULL, err, errlen);
    }
    moe_gguf_writer_free(w);
    free(ts);
    return st;
}
