/* moekit model: open a deepseek2 GGUF, read hyperparameters, bind and check tensors.
 *
 * Keys are read with the exact GGUF types llama.cpp expects (spec deepseek2.md §2): a key
 * present with another type is an error, not a guess. Tensors must be exactly the set §3
 * describes (names, shapes in ne order, trailing dims 1); a missing, misshapen or extra tensor
 * is refused with its name, the expected and the actual shape. Weights stay in the mapping;
 * only 1-D tensors stored in a non-F32 type and the legacy fused attn_kv_b's key half (which
 * the absorbed attention needs transposed) are copied to F32 at load, and where the AVX-512
 * VNNI kernels run, the quantized matrices are repacked once into their R16 layouts (kern.h; same
 * size, same results bit for bit, about 1.3-3x the per-core speed of the file's form); where
 * only the AVX2 forms run, they are copied into huge pages in the file's layout. MOE_REPACK=0
 * keeps the file's pages. */
#include <math.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_impl.h"
#include "moe/dtype.h"

typedef struct {
    const moe_gguf *g;
    moe_model *m;
    char *err;
    size_t errlen;
    uint8_t *used; /* per tensor: consumed */
} loader;

static moe_status lfail(loader *l, moe_status st, const char *fmt, ...) {
    if (l->err && l->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->err, l->errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* u32 key (or an INT32/UINT32 array, layer 0's value). required: error when missing. */
static moe_status key_u32(loader *l, const char *key, int required, uint32_t def, uint32_t *out) {
    moe_status st = moe_gguf_get_u32(l->g, key, out);
    if (st == MOE_OK) return MOE_OK;
    if (st == MOE_ERR_NOTFOUND) {
        if (required) return lfail(l, MOE_ERR_FORMAT, "model: required key '%s' is missing", key);
        *out = def;
        return MOE_OK;
    }
    int64_t i = moe_gguf_find_key(l->g, key);
    if (moe_gguf_kv_type(l->g, i) == MOE_GGUF_TYPE_ARRAY) {
        int et = moe_gguf_arr_type(l->g, i);
        if ((et == MOE_GGUF_TYPE_UINT32 || et == MOE_GGUF_TYPE_INT32) && moe_gguf_arr_n(l->g, i) > 0) {
            int32_t v;
            memcpy(&v, moe_gguf_arr_data(l->g, i), 4);
            if (v < 0) return lfail(l, MOE_ERR_FORMAT, "model: key '%s'[0] = %d is negative", key, v);
            *out = (uint32_t)v;
            return MOE_OK;
        }
    }
    return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
}

static moe_status key_f32(loader *l, const char *key, int required, float def, float *out) {
    moe_status st = moe_gguf_get_f32(l->g, key, out);
    if (st == MOE_OK) return MOE_OK;
    if (st == MOE_ERR_NOTFOUND && !required) {
        *out = def;
        return MOE_OK;
    }
    if (st == MOE_ERR_NOTFOUND) return lfail(l, MOE_ERR_FORMAT, "model: required key '%s' is missing", key);
    return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
}

static moe_status key_bool(loader *l, const char *key, int def, int *out) {
    moe_status st = moe_gguf_get_bool(l->g, key, out);
    if (st == MOE_ERR_NOTFOUND) {
        *out = def;
        return MOE_OK;
    }
    if (st) return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
    return MOE_OK;
}

#define TRY(x)                                                                                                    \
    do {                                                                                                          \
        moe_status st_ = (x);                                                                                     \
        if (st_) return st_;                                                                                      \
    } while (0)

static moe_status read_hparams(loader *l) {
    moe_hparams *hp = &l->m->hp;
    moe_str arch;
    char k[128];
    uint32_t u;
    moe_status st = moe_gguf_get_str(l->g, "general.architecture", &arch);
    if (st == MOE_ERR_NOTFOUND) return lfail(l, MOE_ERR_FORMAT, "model: key 'general.architecture' is missing");
    if (st) return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
    if (arch.len != 9 || memcmp(arch.ptr, "deepseek2", 9) != 0)
        return lfail(l, MOE_ERR_UNSUPPORTED, "model: architecture '%.*s' is not supported (moekit runs deepseek2)",
                     (int)(arch.len > 40 ? 40 : arch.len), arch.ptr);
#define K(name) (snprintf(k, sizeof k, "deepseek2.%s", name), k)
    uint32_t n_block, nextn;
    TRY(key_u32(l, K("block_count"), 1, 0, &n_block));
    TRY(key_u32(l, K("nextn_predict_layers"), 0, 0, &nextn));
    if (n_block < 1 || n_block > 512 || nextn >= n_block)
        return lfail(l, MOE_ERR_FORMAT, "model: block_count %u / nextn_predict_layers %u out of range", n_block, nextn);
    hp->n_layer = (int32_t)(n_block - nextn);
    TRY(key_u32(l, K("context_length"), 1, 0, &u));
    hp->n_ctx_train = (int32_t)(u > 0x7fffffff ? 0x7fffffff : u);
    TRY(key_u32(l, K("embedding_length"), 1, 0, &u));
    hp->n_embd = (int32_t)u;
    TRY(key_u32(l, K("attention.head_count"), 1, 0, &u));
    hp->n_head = (int32_t)u;
    uint32_t n_head_kv;
    TRY(key_u32(l, K("attention.head_count_kv"), 0, u, &n_head_kv));
    if (hp->n_embd <= 0 || hp->n_embd > (1 << 20) || hp->n_head <= 0 || hp->n_head > 4096)
        return lfail(l, MOE_ERR_FORMAT, "model: embedding_length %d / head_count %d out of range", hp->n_embd, hp->n_head);

    /* vocabulary size = number of tokens */
    int64_t ti;
    uint64_t nv;
    st = moe_gguf_get_arr(l->g, "tokenizer.ggml.tokens", MOE_GGUF_TYPE_STRING, &ti, &nv);
    if (st == MOE_ERR_NOTFOUND) return lfail(l, MOE_ERR_FORMAT, "model: key 'tokenizer.ggml.tokens' is missing");
    if (st) return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
    if (nv == 0 || nv > (1u << 24)) return lfail(l, MOE_ERR_FORMAT, "model: vocabulary of %llu tokens", (unsigned long long)nv);
    hp->n_vocab = (int32_t)nv;
    uint32_t vsz = (uint32_t)nv;
    TRY(key_u32(l, K("vocab_size"), 0, (uint32_t)nv, &vsz));

    TRY(key_f32(l, K("attention.layer_norm_rms_epsilon"), 1, 0, &hp->rms_eps));
    TRY(key_u32(l, K("leading_dense_block_count"), 0, 0, &u));
    hp->n_layer_dense_lead = (int32_t)(u > (uint32_t)hp->n_layer ? (uint32_t)hp->n_layer : u);
    int lite = hp->n_layer == 27 || hp->n_layer == 26 || (hp->n_layer == 48 && vsz == 128256);
    if (lite) {
        hp->q_lora_rank = 0;
    } else {
        TRY(key_u32(l, K("attention.q_lora_rank"), 1, 0, &u));
        hp->q_lora_rank = (int32_t)u;
    }
    TRY(key_u32(l, K("attention.kv_lora_rank"), 1, 0, &u));
    hp->kv_lora_rank = (int32_t)u;
    uint32_t klen, vlen, klen_mla, vlen_mla;
    TRY(key_u32(l, K("attention.key_length"), 0, (uint32_t)(hp->n_embd / hp->n_head), &klen));
    TRY(key_u32(l, K("attention.value_length"), 0, (uint32_t)(hp->n_embd / hp->n_head), &vlen));
    TRY(key_u32(l, K("attention.key_length_mla"), 0, 0, &klen_mla));
    TRY(key_u32(l, K("attention.value_length_mla"), 0, 0, &vlen_mla));
    TRY(key_u32(l, K("rope.dimension_count"), 0, klen, &u));
    hp->n_rot = (int32_t)u;
    hp->is_mla = klen_mla != 0 && vlen_mla != 0;
    hp->n_embd_head_k = (int32_t)(hp->is_mla ? klen_mla : klen);
    hp->n_embd_head_v = (int32_t)(hp->is_mla ? vlen_mla : vlen);
    if (hp->kv_lora_rank <= 0 || hp->kv_lora_rank > 65536)
        return lfail(l, MOE_ERR_FORMAT, "model: kv_lora_rank %d out of range", hp->kv_lora_rank);
    if (hp->n_rot <= 0 || hp->n_rot % 2 || hp->n_embd_head_k - hp->n_rot < 1 || hp->n_embd_head_k > 65536)
        return lfail(l, MOE_ERR_FORMAT,
                     "model: rope.dimension_count %d must be even and smaller than the key head size %d", hp->n_rot,
                     hp->n_embd_head_k);
    if (hp->n_embd_head_v <= 0 || hp->n_embd_head_v > 65536)
        return lfail(l, MOE_ERR_FORMAT, "model: value head size %d out of range", hp->n_embd_head_v);
    if (hp->is_mla && (uint64_t)klen * n_head_kv != (uint64_t)(hp->kv_lora_rank + hp->n_rot))
        return lfail(l, MOE_ERR_FORMAT, "model: MLA needs key_length × head_count_kv = kv_lora_rank + rope dims (%u × %u != %d)",
                     klen, n_head_kv, hp->kv_lora_rank + hp->n_rot);
    if (!hp->is_mla && n_head_kv != (uint32_t)hp->n_head)
        return lfail(l, MOE_ERR_FORMAT, "model: legacy attn_kv_b layout needs head_count_kv = head_count (%u != %d)",
                     n_head_kv, hp->n_head);
    if (hp->q_lora_rank < 0 || hp->q_lora_rank > 65536) return lfail(l, MOE_ERR_FORMAT, "model: q_lora_rank out of range");
    l->m->dn = hp->n_embd_head_k - hp->n_rot;

    TRY(key_u32(l, K("feed_forward_length"), 0, 0, &u));
    hp->n_ff = (int32_t)u;
    TRY(key_u32(l, K("expert_feed_forward_length"), 1, 0, &u));
    hp->n_ff_exp = (int32_t)u;
    TRY(key_u32(l, K("expert_shared_count"), 1, 0, &u));
    hp->n_expert_shared = (int32_t)u;
    TRY(key_u32(l, K("expert_count"), 0, 0, &u));
    hp->n_expert = (int32_t)u;
    TRY(key_u32(l, K("expert_used_count"), 0, 0, &u));
    hp->n_expert_used = (int32_t)u;
    TRY(key_u32(l, K("expert_group_count"), 0, 0, &u));
    hp->n_expert_groups = (int32_t)u;
    TRY(key_u32(l, K("expert_group_used_count"), 0, 0, &u));
    hp->n_group_used = (int32_t)u;
    TRY(key_f32(l, K("expert_weights_scale"), 0, 0.0f, &hp->expert_weights_scale));
    TRY(key_bool(l, K("expert_weights_norm"), 0, &hp->expert_weights_norm));
    TRY(key_u32(l, K("expert_gating_func"), 0, 0, &u));
    if (u == 0) u = ((hp->n_layer == 47 || hp->n_layer == 48) && vsz == 154880) ? 2 : 1;
    if (u > 4) return lfail(l, MOE_ERR_FORMAT, "model: expert_gating_func %u is not 1..4", u);
    hp->gating_func = (int32_t)u;
    int has_moe = hp->n_layer_dense_lead < hp->n_layer;
    if (has_moe) {
        if (hp->n_expert <= 0 || hp->n_expert > 1024)
            return lfail(l, MOE_ERR_FORMAT, "model: expert_count %d must be in 1..1024 for MoE layers", hp->n_expert);
        if (hp->n_expert_used <= 0 || hp->n_expert_used > hp->n_expert)
            return lfail(l, MOE_ERR_FORMAT, "model: expert_used_count %d must be in 1..expert_count (%d)",
                         hp->n_expert_used, hp->n_expert);
        if (hp->n_ff_exp <= 0) return lfail(l, MOE_ERR_FORMAT, "model: expert_feed_forward_length must be > 0");
        if (hp->n_expert_shared < 0 || hp->n_expert_shared > 64)
            return lfail(l, MOE_ERR_FORMAT, "model: expert_shared_count %d out of range", hp->n_expert_shared);
        if (hp->n_expert_groups > 1) {
            if (hp->n_expert_groups >= hp->n_expert || hp->n_expert % hp->n_expert_groups)
                return lfail(l, MOE_ERR_FORMAT, "model: expert_group_count %d must divide expert_count %d",
                             hp->n_expert_groups, hp->n_expert);
            if (hp->n_group_used <= 0 || hp->n_group_used >= hp->n_expert_groups)
                return lfail(l, MOE_ERR_FORMAT, "model: expert_group_used_count %d must be in 1..%d", hp->n_group_used,
                             hp->n_expert_groups - 1);
            if (hp->n_expert_used > hp->n_group_used * (hp->n_expert / hp->n_expert_groups))
                return lfail(l, MOE_ERR_FORMAT, "model: %d experts per token cannot come from %d groups of %d",
                             hp->n_expert_used, hp->n_group_used, hp->n_expert / hp->n_expert_groups);
        }
    }
    if (hp->n_layer_dense_lead > 0 && hp->n_ff <= 0)
        return lfail(l, MOE_ERR_FORMAT, "model: feed_forward_length must be > 0 with leading dense layers");

    /* rope and YaRN (spec §2.3, §4.5, §4.6) */
    TRY(key_f32(l, K("rope.freq_base"), 0, 10000.0f, &hp->rope_freq_base));
    moe_str stype;
    char scaling[16] = "linear";
    st = moe_gguf_get_str(l->g, K("rope.scaling.type"), &stype);
    if (st == MOE_OK) {
        snprintf(scaling, sizeof scaling, "%.*s", (int)(stype.len > 15 ? 15 : stype.len), stype.ptr);
        if (strcmp(scaling, "none") && strcmp(scaling, "linear") && strcmp(scaling, "yarn"))
            return lfail(l, MOE_ERR_UNSUPPORTED, "model: rope.scaling.type '%.*s' is not supported (none, linear, yarn)",
                         (int)(stype.len > 40 ? 40 : stype.len), stype.ptr);
    } else if (st != MOE_ERR_NOTFOUND) {
        return lfail(l, MOE_ERR_FORMAT, "model: %s", moe_gguf_errmsg(l->g));
    }
    float factor, linear;
    TRY(key_f32(l, K("rope.scale_linear"), 0, 0.0f, &linear));
    TRY(key_f32(l, K("rope.scaling.factor"), 0, linear, &factor));
    hp->rope_freq_scale = factor != 0.0f ? 1.0f / factor : 1.0f;
    if (!strcmp(scaling, "none")) hp->rope_freq_scale = 1.0f;
    hp->rope_ext_factor = !strcmp(scaling, "yarn") ? 1.0f : 0.0f;
    float rope_attn_factor, log_mul;
    TRY(key_f32(l, K("rope.scaling.attn_factor"), 0, 1.0f, &rope_attn_factor));
    TRY(key_f32(l, K("rope.scaling.yarn_log_multiplier"), 0, 0.0f, &log_mul));
    hp->rope_yarn_log_mul = log_mul / 0.1f;
    TRY(key_u32(l, K("rope.scaling.original_context_length"), 0, (uint32_t)hp->n_ctx_train, &u));
    hp->n_ctx_orig_yarn = (int32_t)(u > 0x7fffffff ? 0x7fffffff : u);
    float af = 1.0f;
    if (hp->rope_ext_factor != 0.0f) {
        float f = 1.0f / hp->rope_freq_scale;
#define GET_M(s, mm) ((s) <= 1.0f ? 1.0f : 0.1f * (mm) * logf(s) + 1.0f)
        if (hp->rope_yarn_log_mul != 0.0f) {
            float mall = hp->rope_yarn_log_mul, msc = mall != 1.0f ? mall : 1.0f;
            af = GET_M(f, msc) / GET_M(f, mall);
        } else {
            af = GET_M(f, 1.0f);
        }
        af = af / (1.0f + 0.1f * logf(f));
#undef GET_M
    }
    hp->rope_attn_factor = af * rope_attn_factor;
    float af_org = hp->rope_attn_factor * (1.0f + 0.1f * logf(1.0f / hp->rope_freq_scale));
    float mscale = af_org * (1.0f + 0.1f * hp->rope_yarn_log_mul * logf(1.0f / hp->rope_freq_scale));
    hp->kq_scale = mscale * mscale / sqrtf((float)hp->n_embd_head_k);
#undef K
    return MOE_OK;
}

/* ---- tensors ---- */

static void *owned_alloc(moe_model *m, size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    if (m->owned_used + bytes > m->owned_cap) return NULL;
    void *p = (char *)m->owned + m->owned_used;
    m->owned_used += bytes;
    return p;
}

static const moe_gguf_tensor *find(loader *l, const char *name, int required, int64_t n0, int64_t n1, int64_t n2,
                                   moe_status *st) {
    const moe_gguf_tensor *t = moe_gguf_find_tensor(l->g, name);
    *st = MOE_OK;
    if (!t) {
        if (required) *st = lfail(l, MOE_ERR_FORMAT, "model: tensor '%s' is missing", name);
        return NULL;
    }
    int64_t want[4] = {n0, n1, n2, 1};
    if (t->ne[0] != want[0] || t->ne[1] != want[1] || t->ne[2] != want[2] || t->ne[3] != 1) {
        *st = lfail(l, MOE_ERR_FORMAT, "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld, 1]",
                    name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                    (long long)n0, (long long)n1, (long long)n2);
        return NULL;
    }
    if (!moe_dtype_supported(t->type)) {
        const char *tn = moe_dtype_name(t->type);
        *st = lfail(l, MOE_ERR_UNSUPPORTED, "model: tensor '%s' has type %s, which this build cannot compute with", name,
                    tn ? tn : "?");
        return NULL;
    }
    l->used[t - moe_gguf_tensor_at(l->g, 0)] = 1;
    l->m->weight_bytes += t->nbytes;
    return t;
}

static moe_status bind_w(loader *l, moe_wview *w, const char *name, int required, int64_t in, int64_t out) {
    moe_status st;
    const moe_gguf_tensor *t = find(l, name, required, in, out, 1, &st);
    if (st) return st;
    if (t) {
        w->data = t->data;
        w->type = t->type;
        w->in = in;
        w->out = out;
        w->row_bytes = moe_dtype_row_bytes(t->type, in);
    }
    return MOE_OK;
}

static moe_status bind_sliced(loader *l, sliced_w *s, const char *name, int required, int64_t in, int64_t out,
                              int64_t n) {
    moe_status st;
    const moe_gguf_tensor *t = find(l, name, required, in, out, n, &st);
    if (st || !t) return st;
    s->w.data = t->data;
    s->w.type = t->type;
    s->w.in = in;
    s->w.out = out;
    s->w.row_bytes = moe_dtype_row_bytes(t->type, in);
    s->stride = s->w.row_bytes * (size_t)out;
    return MOE_OK;
}

/* 1-D vector as float*: borrowed when stored F32 (and aligned), else converted into owned. */
static moe_status bind_vec(loader *l, const float **out, const char *name, int required, int64_t n) {
    moe_status st;
    const moe_gguf_tensor *t = find(l, name, required, n, 1, 1, &st);
    *out = NULL;
    if (st || !t) return st;
    if (t->type == MOE_DTYPE_F32 && ((uintptr_t)t->data & 3) == 0) {
        *out = t->data;
        return MOE_OK;
    }
    float *v = owned_alloc(l->m, (size_t)n * sizeof(float));
    if (!v) return lfail(l, MOE_ERR_NOMEM, "model: out of memory");
    moe_dtype_dequant_row(t->type, t->data, v, n);
    *out = v;
    return MOE_OK;
}

static moe_status bind_tensors(loader *l) {
    moe_model *m = l->m;
    const moe_hparams *hp = &m->hp;
    const int64_t D = hp->n_embd, V = hp->n_vocab, H = hp->n_head, Lq = hp->q_lora_rank, Lkv = hp->kv_lora_rank,
                  R = hp->n_rot, Dk = hp->n_embd_head_k, Dv = hp->n_embd_head_v, Dn = m->dn, F = hp->n_ff,
                  Fe = hp->n_ff_exp, E = hp->n_expert, S = hp->n_expert_shared;
    char name[96];
    /* owned f32 space: norms of every layer at most, plus legacy k_b */
    size_t need = (size_t)(2 * D + Lq + Lkv + E + 64) * sizeof(float) * (size_t)hp->n_layer + (size_t)(D + 64) * 4;
    if (!hp->is_mla) need += (size_t)H * (size_t)Lkv * (size_t)Dn * sizeof(float) * (size_t)hp->n_layer + 64 * (size_t)hp->n_layer;
    m->owned = malloc(need);
    m->owned_cap = need;
    m->layers = calloc((size_t)hp->n_layer, sizeof(layer_w));
    if (!m->owned || !m->layers) return lfail(l, MOE_ERR_NOMEM, "model: out of memory");

    TRY(bind_w(l, &m->tok_embd, "token_embd.weight", 1, D, V));
    TRY(bind_vec(l, &m->output_norm, "output_norm.weight", 1, D));
    TRY(bind_w(l, &m->output, "output.weight", 0, D, V));
    hp = &m->hp;
    m->hp.tied_output = m->output.data == NULL;
    if (m->hp.tied_output) m->output = m->tok_embd;
    int64_t n_exp_b = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        layer_w *ly = &m->layers[il];
#define N(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), name)
        TRY(bind_vec(l, &ly->attn_norm, N("attn_norm.weight"), 1, D));
        if (Lq > 0) {
            TRY(bind_w(l, &ly->q_a, N("attn_q_a.weight"), 1, D, Lq));
            TRY(bind_vec(l, &ly->q_a_norm, N("attn_q_a_norm.weight"), 1, Lq));
            TRY(bind_w(l, &ly->q_b, N("attn_q_b.weight"), 1, Lq, H * Dk));
        } else {
            TRY(bind_w(l, &ly->q, N("attn_q.weight"), 1, D, H * Dk));
        }
        TRY(bind_w(l, &ly->kv_a, N("attn_kv_a_mqa.weight"), 1, D, Lkv + R));
        TRY(bind_vec(l, &ly->kv_a_norm, N("attn_kv_a_norm.weight"), 1, Lkv));
        if (hp->is_mla) {
            TRY(bind_sliced(l, &ly->k_b, N("attn_k_b.weight"), 1, Dn, Lkv, H));
            TRY(bind_sliced(l, &ly->v_b, N("attn_v_b.weight"), 1, Lkv, Dv, H));
        } else {
            moe_wview kvb = {0};
            TRY(bind_w(l, &kvb, N("attn_kv_b.weight"), 1, Lkv, H * (Dn + Dv)));
            /* values: rows h·(Dn+Dv)+Dn … +Dv of each head, used in place */
            ly->v_b.w = kvb;
            ly->v_b.w.data = kvb.data + (size_t)Dn * kvb.row_bytes;
            ly->v_b.w.out = Dv;
            ly->v_b.stride = (size_t)(Dn + Dv) * kvb.row_bytes;
            /* keys: k_b_h[r][d] = W[h·(Dn+Dv)+d][r], transposed into owned F32 (H, Lkv, Dn) */
            float *kb = owned_alloc(m, (size_t)(H * Lkv * Dn) * sizeof(float));
            float *row = malloc((size_t)Lkv * sizeof(float));
            if (!kb || !row) {
                free(row);
                return lfail(l, MOE_ERR_NOMEM, "model: out of memory");
            }
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < Dn; d++) {
                    moe_dtype_dequant_row(kvb.type, kvb.data + (size_t)(h * (Dn + Dv) + d) * kvb.row_bytes, row, Lkv);
                    for (int64_t r = 0; r < Lkv; r++) kb[(h * Lkv + r) * Dn + d] = row[r];
                }
            free(row);
            ly->k_b.w = (moe_wview){(const uint8_t *)kb, MOE_DTYPE_F32, Dn, Lkv, (size_t)Dn * sizeof(float)};
            ly->k_b.stride = (size_t)(Lkv * Dn) * sizeof(float);
        }
        TRY(bind_w(l, &ly->attn_out, N("attn_output.weight"), 1, H * Dv, D));
        TRY(bind_vec(l, &ly->ffn_norm, N("ffn_norm.weight"), 1, D));
        if (il < hp->n_layer_dense_lead) {
            TRY(bind_w(l, &ly->gate, N("ffn_gate.weight"), 1, D, F));
            TRY(bind_w(l, &ly->up, N("ffn_up.weight"), 1, D, F));
            TRY(bind_w(l, &ly->down, N("ffn_down.weight"), 1, F, D));
        } else {
            ly->is_moe = 1;
            TRY(bind_w(l, &ly->gate_inp, N("ffn_gate_inp.weight"), 1, D, E));
            TRY(bind_vec(l, &ly->exp_probs_b, N("exp_probs_b.bias"), 0, E));
            n_exp_b += ly->exp_probs_b != NULL;
            if (moe_gguf_find_tensor(l->g, N("ffn_gate_up_exps.weight"))) {
                TRY(bind_sliced(l, &ly->gate_exps, name, 1, D, 2 * Fe, E));
                ly->gate_exps.w.out = Fe;
                ly->up_exps = ly->gate_exps;
                ly->up_exps.w.data += (size_t)Fe * ly->gate_exps.w.row_bytes;
            } else {
                TRY(bind_sliced(l, &ly->gate_exps, N("ffn_gate_exps.weight"), 1, D, Fe, E));
                TRY(bind_sliced(l, &ly->up_exps, N("ffn_up_exps.weight"), 1, D, Fe, E));
            }
            TRY(bind_sliced(l, &ly->down_exps, N("ffn_down_exps.weight"), 1, Fe, D, E));
            if (S > 0) {
                TRY(bind_w(l, &ly->gate_sh, N("ffn_gate_shexp.weight"), 1, D, Fe * S));
                TRY(bind_w(l, &ly->up_sh, N("ffn_up_shexp.weight"), 1, D, Fe * S));
                TRY(bind_w(l, &ly->down_sh, N("ffn_down_shexp.weight"), 1, Fe * S, D));
            }
        }
#undef N
    }
    m->hp.has_exp_probs_b = n_exp_b > 0;
    /* every tensor must have been consumed, except MTP (nextn) blocks past the last layer */
    for (int64_t i = 0; i < moe_gguf_n_tensors(l->g); i++) {
        if (l->used[i]) continue;
        const moe_gguf_tensor *t = moe_gguf_tensor_at(l->g, i);
        int blk = -1;
        if (t->name.len > 4 && memcmp(t->name.ptr, "blk.", 4) == 0) blk = atoi(t->name.ptr + 4);
        if (blk >= hp->n_layer) continue;
        return lfail(l, MOE_ERR_FORMAT, "model: unexpected tensor '%.*s' (not part of this deepseek2 configuration)",
                     (int)t->name.len, t->name.ptr);
    }
    /* bytes read per decoded token */
    uint64_t act = moe_dtype_row_bytes(m->tok_embd.type, D) + m->output.row_bytes * (uint64_t)V;
    for (int il = 0; il < hp->n_layer; il++) {
        layer_w *ly = &m->layers[il];
        const moe_wview *ws[] = {&ly->q_a, &ly->q_b, &ly->q, &ly->kv_a, &ly->attn_out, &ly->gate, &ly->up, &ly->down,
                                 &ly->gate_inp, &ly->gate_sh, &ly->up_sh, &ly->down_sh};
        for (size_t k = 0; k < sizeof ws / sizeof ws[0]; k++)
            if (ws[k]->data) act += ws[k]->row_bytes * (uint64_t)ws[k]->out;
        act += (ly->k_b.stride + ly->v_b.w.row_bytes * (uint64_t)Dv) * (uint64_t)H;
        if (ly->is_moe)
            act += (uint64_t)hp->n_expert_used * (ly->gate_exps.w.row_bytes * (uint64_t)Fe * 2 +
                                                  ly->down_exps.w.row_bytes * (uint64_t)D);
    }
    m->active_bytes = act;
    return MOE_OK;
}

/* ---- R16 repacking (kern.h): the quantized product weights into the VNNI kernels' layouts ----
 * Every product view (not the embedding table, which is read by rows) that points into a tensor
 * of a type in k_r16 is collected; a tensor is repacked when all its views start on a 16-row boundary, have
 * a multiple of 16 rows and slice it at a multiple of 16 rows, and the tensor's rows are a
 * multiple of 16. The copy sits at the same byte offsets as in the file, so a view moves by
 * (its offset in the tensor) unchanged. Source pages of a file-backed model are released. */
typedef struct {
    moe_wview *w;
    size_t stride; /* bytes between slices (0: one matrix) */
} rp_view;

typedef struct {
    const moe_gguf_tensor *t;
    int ok;
    size_t off; /* in m->packed */
} rp_tensor;

typedef struct {
    const rp_tensor *ts;
    int n;
    uint8_t *dst;
    int64_t total; /* groups over all tensors */
    int release;   /* drop the source pages of each finished range (file-backed, not the embedding) */
    const uint8_t *keep0, *keep1; /* bytes that must stay mapped: the embedding table */
    _Atomic uint64_t done;        /* bytes repacked, for the progress hook */
    uint64_t total_bytes, next_report;
} rp_job;

static moe_gguf_progress_fn g_load_progress;
static void *g_load_ud;

void moe_model_set_load_progress(moe_gguf_progress_fn fn, void *ud) {
    g_load_progress = fn;
    g_load_ud = ud;
}

/* the file types that have an R16 layout: its in-memory type and its repacking */
typedef struct {
    int type, ktype;
    void (*repack)(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1, uint8_t *dst);
} r16_kind;
static const r16_kind k_r16[] = {
    {MOE_DTYPE_Q8_0, MOE_KTYPE_Q8_0_R16, moe_kern_repack_q8_0_r16},
    {MOE_DTYPE_Q4_0, MOE_KTYPE_Q4_0_R16, moe_kern_repack_q4_0_r16},
    {MOE_DTYPE_Q5_0, MOE_KTYPE_Q5_0_R16, moe_kern_repack_q5_0_r16},
    {MOE_DTYPE_Q5_1, MOE_KTYPE_Q5_1_R16, moe_kern_repack_q5_1_r16},
    {MOE_DTYPE_Q4_K, MOE_KTYPE_Q4_K_R16, moe_kern_repack_q4_k_r16},
    {MOE_DTYPE_Q5_K, MOE_KTYPE_Q5_K_R16, moe_kern_repack_q5_k_r16},
    {MOE_DTYPE_Q6_K, MOE_KTYPE_Q6_K_R16, moe_kern_repack_q6_k_r16},
};
static const r16_kind *r16_form(int type) {
    for (size_t i = 0; i < sizeof k_r16 / sizeof k_r16[0]; i++)
        if (k_r16[i].type == type) return &k_r16[i];
    return NULL;
}

/* Without VNNI (the AVX2 forms read the file's layout) the same types are copied into huge
 * pages, layout unchanged: from the file's 4 KB pages the AVX2 kernel read the routed experts at
 * ~20 % of the probe (page-cache faults on each expert's first use and a TLB miss per 4 KB of
 * weights) while the head, read every token, ran at ~60 %. */
static void copy_groups(const uint8_t *src, size_t src_row_bytes, int64_t in, int64_t g0, int64_t g1, uint8_t *dst) {
    (void)in;
    memcpy(dst + (size_t)g0 * 16 * src_row_bytes, src + (size_t)g0 * 16 * src_row_bytes, (size_t)(g1 - g0) * 16 * src_row_bytes);
}
static int repack_vnni(void) { return moe_kern_level() == 2; }

static void rp_worker(void *arg, int ith, int nth) {
    rp_job *j = arg;
    int64_t g0 = j->total * ith / nth, g1 = j->total * (ith + 1) / nth, base = 0;
    for (int k = 0; k < j->n; k++) {
        const moe_gguf_tensor *t = j->ts[k].t;
        const size_t rb = moe_dtype_row_bytes(t->type, t->ne[0]);
        const int64_t ng = (int64_t)(t->nbytes / rb) / 16, a = g0 > base ? g0 - base : 0, b = g1 - base < ng ? g1 - base : ng;
        if (j->ts[k].ok && a < b) {
            /* in steps of ~8 MB so that thread 0 can report progress */
            const int64_t step = (int64_t)((8u << 20) / (16 * rb)) + 1;
            void (*fn)(const uint8_t *, size_t, int64_t, int64_t, int64_t, uint8_t *) =
                repack_vnni() ? r16_form(t->type)->repack : copy_groups;
            for (int64_t c = a; c < b; c += step) {
                const int64_t ce = c + step < b ? c + step : b;
                fn(t->data, rb, t->ne[0], c, ce, j->dst + j->ts[k].off);
                const uint64_t d = atomic_fetch_add(&j->done, (uint64_t)(ce - c) * 16 * rb) + (uint64_t)(ce - c) * 16 * rb;
                if (ith == 0 && g_load_progress && d >= j->next_report && d < j->total_bytes) {
                    g_load_progress(g_load_ud, d, j->total_bytes);
                    j->next_report = d + (64u << 20);
                }
            }
            /* whole pages inside this range: a private read-only file mapping refaults them from the
             * file if anything reads them again, so peak memory stays near one copy of the model */
            const uint8_t *s0 = (const uint8_t *)t->data + (size_t)a * 16 * rb, *s1 = (const uint8_t *)t->data + (size_t)b * 16 * rb;
            uintptr_t pa = ((uintptr_t)s0 + 4095) & ~(uintptr_t)4095, pe = (uintptr_t)s1 & ~(uintptr_t)4095;
            if (j->release && pe > pa && !(s1 > j->keep0 && s0 < j->keep1)) madvise((void *)pa, pe - pa, MADV_DONTNEED);
        }
        if (j->ts[k].ok) base += ng;
    }
}

static int repack_wanted(void) {
    const char *e = getenv("MOE_REPACK");
    if (e && !strcmp(e, "0")) return 0;
    return moe_kern_level() >= 1 && moe_kern_level() <= 2 && moe_kern_int8_enabled();
}

static moe_status repack(moe_model *m, int release_src) {
    const moe_hparams *hp = &m->hp;
    const int L = hp->n_layer;
    size_t nv = 0, nt = 0, cap_v = (size_t)L * 17 + 1;
    rp_view *v = calloc(cap_v, sizeof *v);
    rp_tensor *ts = calloc(cap_v, sizeof *ts);
    if (!v || !ts) {
        free(v);
        free(ts);
        return MOE_ERR_NOMEM;
    }
    for (int il = 0; il < L; il++) {
        layer_w *ly = &m->layers[il];
        moe_wview *plain[] = {&ly->q_a, &ly->q_b, &ly->q, &ly->kv_a, &ly->attn_out, &ly->gate, &ly->up,
                              &ly->down, &ly->gate_inp, &ly->gate_sh, &ly->up_sh, &ly->down_sh};
        sliced_w *sl[] = {&ly->k_b, &ly->v_b, &ly->gate_exps, &ly->up_exps, &ly->down_exps};
        for (size_t k = 0; k < sizeof plain / sizeof plain[0]; k++) v[nv++] = (rp_view){plain[k], 0};
        for (size_t k = 0; k < sizeof sl / sizeof sl[0]; k++) v[nv++] = (rp_view){&sl[k]->w, sl[k]->stride};
    }
    v[nv++] = (rp_view){&m->output, 0};
    /* the tensor of every view of a k_r16 type, and whether all its views allow R16 */
    int64_t n_tensors = moe_gguf_n_tensors(m->g);
    for (size_t i = 0; i < nv; i++) {
        moe_wview *w = v[i].w;
        if (!w->data || !r16_form(w->type)) {
            v[i].w = NULL;
            continue;
        }
        const moe_gguf_tensor *t = NULL;
        for (int64_t k = 0; k < n_tensors && !t; k++) {
            const moe_gguf_tensor *c = moe_gguf_tensor_at(m->g, k);
            if (c->type == w->type && w->data >= (const uint8_t *)c->data && w->data < (const uint8_t *)c->data + c->nbytes)
                t = c;
        }
        if (!t) { /* not a tensor's bytes (cannot happen for bound views): leave it */
            v[i].w = NULL;
            continue;
        }
        size_t k = 0;
        while (k < nt && ts[k].t != t) k++;
        if (k == nt) ts[nt++] = (rp_tensor){t, 1, 0};
        const size_t g16 = 16 * w->row_bytes, rel = (size_t)(w->data - (const uint8_t *)t->data);
        if (!moe_kern_can_repack(t->type, w->in, w->out) || w->row_bytes != moe_dtype_row_bytes(t->type, t->ne[0]) ||
            rel % g16 || v[i].stride % g16 || t->nbytes % g16)
            ts[k].ok = 0;
    }
    /* the embedding table keeps reading the file's rows: a tied head gets its own copy */
    size_t total = 0;
    int64_t groups = 0;
    uint64_t bytes = 0; /* the tensors' bytes, without the alignment padding */
    for (size_t k = 0; k < nt; k++) {
        if (!ts[k].ok) continue;
        ts[k].off = total;
        total += (ts[k].t->nbytes + 63) & ~(size_t)63;
        bytes += ts[k].t->nbytes;
        groups += (int64_t)(ts[k].t->nbytes / (16 * moe_dtype_row_bytes(ts[k].t->type, ts[k].t->ne[0])));
    }
    moe_status st = MOE_OK;
    if (total) {
        void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            st = MOE_ERR_NOMEM;
            goto out;
        }
#ifdef MADV_HUGEPAGE
        madvise(p, total, MADV_HUGEPAGE); /* a 2 MB page per TLB entry while weights stream */
#endif
        moe_pool *pool = moe_pool_init(0);
        const uint8_t *e0 = m->tok_embd.data, *e1 = e0 ? e0 + m->tok_embd.row_bytes * (size_t)hp->n_vocab : e0;
        rp_job j = {ts, (int)nt, p, groups, release_src, e0, e1, 0, bytes, 0};
        if (pool) {
            moe_pool_run(pool, rp_worker, &j);
            moe_pool_free(pool);
        } else {
            rp_worker(&j, 0, 1);
        }
        if (g_load_progress) g_load_progress(g_load_ud, j.total_bytes, j.total_bytes);
        /* no mprotect(PROT_READ) here: on this VM the first read of each 2 MB page after it ran at
         * ~4 GB/s instead of ~30 (measured on a 1 GB mapping; no guest page faults), so every
         * expert a server first routed to, and a decode right after loading, paid ~0.5 s per GB */
        m->packed = p;
        m->packed_bytes = total;
        for (size_t i = 0; i < nv; i++) {
            if (!v[i].w) continue;
            for (size_t k = 0; k < nt; k++) {
                const uint8_t *b = ts[k].t->data;
                if (ts[k].ok && v[i].w->data >= b && v[i].w->data < b + ts[k].t->nbytes) {
                    v[i].w->data = m->packed + ts[k].off + (size_t)(v[i].w->data - b);
                    if (repack_vnni()) v[i].w->type = r16_form(ts[k].t->type)->ktype;
                    break;
                }
            }
        }
        for (size_t k = 0; k < nt; k++) m->n_packed += ts[k].ok;
    }
out:
    free(v);
    free(ts);
    return st;
}

/* The embedding table is read in place, a row per token, from the file's mapping: map all its
 * pages at load (11 ms for a 222 MB table here). Left to fault in, a random row took ~16 µs on
 * this VM instead of ~7, about 0.1 ms of a batch-16 step of the bench model. (Copying the
 * table into huge pages brought a row to 0.8 µs in a harness, but in the engine, between the
 * steps' weight streams, rows still took ~5 µs: nothing measurable, so not done.) */
static void map_embedding(const moe_model *m) {
    const uint8_t *e = m->tok_embd.data;
    if (!e) return;
    const uintptr_t a = (uintptr_t)e & ~(uintptr_t)4095,
                    b = ((uintptr_t)e + m->tok_embd.row_bytes * (size_t)m->hp.n_vocab + 4095) & ~(uintptr_t)4095;
#ifdef MADV_POPULATE_READ
    if (madvise((void *)a, b - a, MADV_POPULATE_READ) == 0) return;
#endif
    /* kernels before 5.14: a read per page (the kernel maps its neighbours with it) */
    uint8_t acc = 0;
    for (uintptr_t p = a; p < b; p += 4096) acc ^= *(const volatile uint8_t *)p;
    (void)acc;
}

static moe_status open_model(const moe_gguf *g, moe_model **out, char *err, size_t errlen, int file_backed) {
    *out = NULL;
    moe_model *m = calloc(1, sizeof *m);
    if (!m) return MOE_ERR_NOMEM;
    m->g = g;
    loader l = {g, m, err, errlen, calloc((size_t)moe_gguf_n_tensors(g) + 1, 1)};
    moe_status st = l.used ? read_hparams(&l) : MOE_ERR_NOMEM;
    if (!st) st = bind_tensors(&l);
    free(l.used);
    if (!st && repack_wanted()) st = repack(m, file_backed);
    if (!st && file_backed) map_embedding(m);
    if (st) {
        if (st == MOE_ERR_NOMEM && err && errlen) snprintf(err, errlen, "model: out of memory");
        moe_model_close(m);
        return st;
    }
    /* most common weight type */
    uint64_t by_type[MOE_DTYPE_COUNT] = {0};
    for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        if (t->type < MOE_DTYPE_COUNT) by_type[t->type] += t->nbytes;
    }
    for (int t = 0; t < MOE_DTYPE_COUNT; t++)
        if (by_type[t] > by_type[m->main_type]) m->main_type = t;
    *out = m;
    return MOE_OK;
}

moe_status moe_model_open_gguf(const moe_gguf *g, moe_model **out, char *err, size_t errlen) {
    return open_model(g, out, err, errlen, 0);
}

moe_status moe_model_open(const char *path, moe_model **out, char *err, size_t errlen) {
    moe_gguf *g;
    *out = NULL;
    moe_status st = moe_gguf_open(path, &g, err, errlen);
    if (st) return st;
    st = open_model(g, out, err, errlen, 1);
    if (st) {
        moe_gguf_close(g);
        return st;
    }
    (*out)->owns_g = 1;
    return MOE_OK;
}

void moe_model_close(moe_model *m) {
    if (!m) return;
    if (m->owns_g) moe_gguf_close((moe_gguf *)m->g);
    if (m->packed) munmap(m->packed, m->packed_bytes);
    free(m->layers);
    free(m->owned);
    free(m);
}

const moe_hparams *moe_model_hparams(const moe_model *m) { return &m->hp; }
const moe_gguf *moe_model_gguf(const moe_model *m) { return m->g; }
uint64_t moe_model_weight_bytes(const moe_model *m) { return m->weight_bytes; }
uint64_t moe_model_active_bytes(const moe_model *m) { return m->active_bytes; }

void moe_model_describe(const moe_model *m, char *buf, size_t n) {
    const moe_hparams *hp = &m->hp;
    snprintf(buf, n,
             "deepseek2 L=%d (dense %d) D=%d H=%d q_lora=%d kv_lora=%d rope=%d Dk=%d Dv=%d E=%d K=%d S=%d groups=%d/%d "
             "gating=%s%s V=%d ctx=%d %s%s%s, %.1f MB",
             hp->n_layer, hp->n_layer_dense_lead, hp->n_embd, hp->n_head, hp->q_lora_rank, hp->kv_lora_rank, hp->n_rot,
             hp->n_embd_head_k, hp->n_embd_head_v, hp->n_expert, hp->n_expert_used, hp->n_expert_shared,
             hp->n_group_used, hp->n_expert_groups, hp->gating_func == 2 ? "sigmoid" : "softmax",
             hp->has_exp_probs_b ? "+bias" : "", hp->n_vocab, hp->n_ctx_train, moe_dtype_name(m->main_type),
             hp->rope_ext_factor != 0.0f ? " yarn" : "", hp->is_mla ? "" : " legacy-kv_b",
             (double)m->weight_bytes / 1e6);
}
