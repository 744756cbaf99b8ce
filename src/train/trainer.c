/* moekit train: the optimizer step, sparse expert updates, load balancing, checkpoints and
 * export (include/moe/train.h).
 *
 * Step s (1-based): batch of samples (s−1)·B … s·B−1 → forward → zero the gradients the
 * backward writes (dense tensors, experts that got tokens) → backward → global gradient norm
 * (idle experts contribute exact zeros, so their slices are skipped) → AdamW on every trainable
 * dense tensor and on the experts the mode selects → bias update from this step's counts.
 *
 * AdamW (Loshchilov & Hutter; decoupled decay, per element, float):
 *   g ← g·clip;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
 *   θ ← θ − lr_s·( (m/(1−β1^s)) / (sqrt(v/(1−β2^s)) + ε) + λ·θ )
 * with λ only on matrices, embeddings and the router (not norms, not the bias). The exact
 * mode's catch-up applies the same function with g = 0 for each missed step s, so the result
 * equals dense AdamW bit for bit (adding the zero gradient is exact).
 * Bias update (DeepSeek-V3, spec training.md §3.1): b_i ← b_i + γ·sign(c̄ − c_i) from this
 * step's assignment counts c (c̄ = N·K/E), used from the next step on. */
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "moe/dtype.h"
#include "moe/tok.h"
#include "train/train_impl.h"

moe_train_params moe_train_default_params(void) {
    moe_train_params p;
    memset(&p, 0, sizeof p);
    p.init_seed = 1;
    p.bpe_sample_mb = 4;
    p.seq_len = 64;
    p.batch_size = 8;
    p.val_fraction = 0.02;
    p.steps = 100;
    p.warmup = 10;
    p.lr = 1e-3;
    p.min_lr = 1e-4;
    p.weight_decay = 0.1;
    p.beta1 = 0.9;
    p.beta2 = 0.95;
    p.eps = 1e-8;
    p.grad_clip = 1.0;
    p.optimizer = MOE_TRAIN_OPT_LAZY;
    p.seed = 1;
    p.export_dtype = MOE_DTYPE_F32;
    p.checkpoint_every = 0;
    p.log_every = 10;
    p.eval_every = 0;
    p.eval_batches = 4;
    snprintf(p.out_dir, sizeof p.out_dir, "train-out");
    return p;
}

double moe_trainer_lr(const moe_train_params *p, int64_t s) {
    if (p->warmup > 0 && s <= p->warmup) return p->lr * (double)s / (double)p->warmup;
    int64_t span = p->steps - p->warmup;
    if (span <= 0) return p->lr;
    double x = (double)(s - p->warmup) / (double)span;
    if (x > 1) x = 1;
    return p->min_lr + 0.5 * (p->lr - p->min_lr) * (1.0 + cos(M_PI * x));
}

/* ---- AdamW ---- */
typedef struct {
    float lr, b1, b2, bc1, bc2, eps, wd, gscale;
} adam_k;

static adam_k adam_for(const moe_trainer *t, int64_t s, float gscale) {
    const moe_train_params *p = &t->p;
    adam_k k;
    k.lr = (float)moe_trainer_lr(p, s);
    k.b1 = (float)p->beta1;
    k.b2 = (float)p->beta2;
    k.bc1 = (float)(1.0 - pow(p->beta1, (double)s));
    k.bc2 = (float)(1.0 - pow(p->beta2, (double)s));
    k.eps = (float)p->eps;
    k.wd = (float)p->weight_decay;
    k.gscale = gscale;
    return k;
}

/* One AdamW step over n elements; g == NULL is a zero gradient; decay: apply λ. */
static void adamw(float *restrict th, float *restrict m, float *restrict v, const float *restrict g, size_t n,
                  const adam_k *k, int decay) {
    const float wd = decay ? k->wd : 0.0f;
    for (size_t i = 0; i < n; i++) {
        float gi = g ? g[i] * k->gscale : 0.0f;
        m[i] = k->b1 * m[i] + (1.0f - k->b1) * gi;
        v[i] = k->b2 * v[i] + (1.0f - k->b2) * gi * gi;
        float mh = m[i] / k->bc1, vh = v[i] / k->bc2;
        th[i] -= k->lr * (mh / (sqrtf(vh) + k->eps) + wd * th[i]);
    }
}

static int decays(const tm_tensor *t) { return t->kind == TM_KIND_DENSE || t->kind == TM_KIND_ROUTER || t->kind == TM_KIND_EXPERTS; }

static int ex_alloc(moe_trainer *t, tr_expert *x) {
    if (x->m) return 0;
    x->m = calloc(3 * t->ex_per, sizeof(float));
    x->v = calloc(3 * t->ex_per, sizeof(float));
    if (!x->m || !x->v) return -1;
    t->ex_bytes += 6 * t->ex_per * sizeof(float);
    return 0;
}

/* Update expert (il, e) for step s with its gradient (g = 1) or a zero gradient (g = 0). */
static void expert_update(moe_trainer *t, int il, int e, int64_t s, float gscale, int with_grad) {
    moe_tm_model *m = t->m;
    const tm_layer *ly = &m->layers[il];
    tr_expert *x = &t->ex[(size_t)il * (size_t)m->hp.n_expert + (size_t)e];
    if (ex_alloc(t, x)) return; /* out of memory: the expert stays as it is */
    adam_k k = adam_for(t, s, gscale);
    const int slots[3] = {W_GATE_EXPS, W_UP_EXPS, W_DOWN_EXPS};
    for (int j = 0; j < 3; j++) {
        const tm_tensor *tt = &m->tensors[ly->ti[slots[j]]];
        if (tt->frozen) continue;
        size_t o = tt->off + (size_t)e * t->ex_per;
        adamw(m->params + o, x->m + (size_t)j * t->ex_per, x->v + (size_t)j * t->ex_per, with_grad ? m->grads + o : NULL,
              t->ex_per, &k, 1);
    }
}

/* exact mode: apply the zero-gradient steps expert (il, e) missed, up to step `upto` */
static void catch_up(moe_trainer *t, int il, int e, int64_t upto) {
    tr_expert *x = &t->ex[(size_t)il * (size_t)t->m->hp.n_expert + (size_t)e];
    for (int64_t s = x->last + 1; s <= upto; s++) expert_update(t, il, e, s, 1.0f, 0);
    if (x->last < upto) x->last = upto;
}

static void touch_hook(void *ud, int il, int e) {
    moe_trainer *t = ud;
    if (t->p.optimizer == MOE_TRAIN_OPT_EXACT) catch_up(t, il, e, t->step);
}

void moe_trainer_flush_experts(moe_trainer *t) {
    if (t->p.optimizer != MOE_TRAIN_OPT_EXACT) return;
    const moe_hparams *hp = &t->m->hp;
    for (int il = 0; il < hp->n_layer; il++)
        if (t->m->layers[il].is_moe)
            for (int e = 0; e < hp->n_expert; e++) catch_up(t, il, e, t->step);
}

/* ---- data ---- */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* sample i of the training stream: BOS + T−1 corpus tokens as input, the next T as targets */
static void fill_sample(moe_trainer *t, uint64_t i, int32_t *in, int32_t *tg) {
    const int64_t T = t->m->T;
    uint64_t range = t->n_train - (uint64_t)T + 1;
    uint64_t start = mix64(t->p.seed * 0x100000001b3ull ^ mix64(i)) % range;
    in[0] = t->bos;
    for (int64_t j = 1; j < T; j++) in[j] = (int32_t)t->tok[start + (uint64_t)j - 1];
    for (int64_t j = 0; j < T; j++) tg[j] = (int32_t)t->tok[start + (uint64_t)j];
}

void moe_trainer_fill_batch(moe_trainer *t, int64_t step) {
    const int64_t B = t->m->B, T = t->m->T;
    for (int64_t b = 0; b < B; b++) fill_sample(t, (uint64_t)(step * B + b), t->m->tokens + b * T, t->m->targets + b * T);
}

static moe_status open_corpus(moe_trainer *t, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        snprintf(t->err, sizeof t->err, "train: cannot open corpus '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) || sb.st_size < 24) {
        close(fd);
        snprintf(t->err, sizeof t->err, "train: corpus '%s' is too short", path);
        return MOE_ERR_FORMAT;
    }
    t->map_len = (size_t)sb.st_size;
    t->map = mmap(NULL, t->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (t->map == MAP_FAILED) {
        t->map = NULL;
        snprintf(t->err, sizeof t->err, "train: cannot map corpus '%s'", path);
        return MOE_ERR_IO;
    }
    const uint8_t *b = t->map;
    uint32_t nv;
    uint64_t n;
    memcpy(&nv, b + 8, 4);
    memcpy(&n, b + 12, 8);
    if (memcmp(b, "MOETOK01", 8) || n > (t->map_len - 24) / 4) {
        snprintf(t->err, sizeof t->err, "train: '%s' is not a moekit corpus file (MOETOK01)", path);
        return MOE_ERR_FORMAT;
    }
    if ((int32_t)nv != t->m->hp.n_vocab) {
        snprintf(t->err, sizeof t->err, "train: corpus '%s' was made for %u ids, the model has %d", path, nv,
                 t->m->hp.n_vocab);
        return MOE_ERR_FORMAT;
    }
    t->tok = (const uint32_t *)(const void *)(b + 24);
    t->n_tok = n;
    for (uint64_t i = 0; i < n; i++)
        if (t->tok[i] >= nv) {
            snprintf(t->err, sizeof t->err, "train: corpus '%s': id %u at %llu is out of range", path, t->tok[i],
                     (unsigned long long)i);
            return MOE_ERR_FORMAT;
        }
    uint64_t nval = (uint64_t)((double)n * t->p.val_fraction);
    if (nval && nval < (uint64_t)t->p.seq_len + 1) nval = (uint64_t)t->p.seq_len + 1;
    t->n_train = n > nval ? n - nval : 0;
    if (t->n_train < (uint64_t)t->p.seq_len + 1) {
        snprintf(t->err, sizeof t->err, "train: corpus '%s' has %llu training tokens, fewer than seq_len + 1", path,
                 (unsigned long long)t->n_train);
        return MOE_ERR_RANGE;
    }
    return MOE_OK;
}

/* ---- init ---- */
static int matches(const char (*pats)[64], int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!fnmatch(pats[i], name, 0)) return 1;
    return 0;
}

moe_status moe_trainer_init(const moe_train_params *p, const char *model_gguf, const char *corpus, moe_trainer **out,
                            char *err, size_t errlen) {
    *out = NULL;
    moe_trainer *t = calloc(1, sizeof *t);
    if (!t) return MOE_ERR_NOMEM;
    t->p = *p;
    moe_status st = moe_gguf_open(model_gguf, &t->base, err, errlen);
    if (!st) st = moe_tm_load_gguf(t->base, &t->m, err, errlen);
    if (st) goto fail;
    moe_tm_model *m = t->m;
    const moe_hparams *hp = &m->hp;
    if (p->seq_len < 2 || p->batch_size < 1 || p->seq_len > 65536) {
        st = MOE_ERR_INVAL;
        snprintf(err, errlen, "train: seq_len must be >= 2 and batch_size >= 1");
        goto fail;
    }
    t->pool = moe_pool_init(p->threads);
    m->pool = t->pool;
    if (!t->pool || moe_tm_alloc_acts(m, p->batch_size, p->seq_len)) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "train: out of memory for %d × %d tokens", p->batch_size, p->seq_len);
        goto fail;
    }
    m->aux_alpha = p->aux_alpha;
    m->touch_expert = touch_hook;
    m->touch_ud = t;
    /* freezing */
    for (int i = 0; i < m->n_tensors; i++) {
        tm_tensor *tt = &m->tensors[i];
        if (tt->kind == TM_KIND_BIAS) continue;
        if (p->n_train_only > 0 && !matches(p->train_only, p->n_train_only, tt->name)) tt->frozen = 1;
        if (matches(p->freeze, p->n_freeze, tt->name)) tt->frozen = 1;
    }
    /* BOS id from the tokenizer keys */
    uint32_t bos = 0;
    if (moe_gguf_get_u32(t->base, "tokenizer.ggml.bos_token_id", &bos) || bos >= (uint32_t)hp->n_vocab) bos = 0;
    t->bos = (int32_t)bos;
    t->om = calloc(m->n_params, sizeof(float));
    t->ov = calloc(m->n_params, sizeof(float));
    size_t LE = (size_t)hp->n_layer * (size_t)(hp->n_expert > 0 ? hp->n_expert : 1);
    t->ex = calloc(LE, sizeof(tr_expert));
    t->ex_per = (size_t)hp->n_ff_exp * (size_t)hp->n_embd;
    if (!t->om || !t->ov || !t->ex) {
        st = MOE_ERR_NOMEM;
        snprintf(err, errlen, "train: out of memory");
        goto fail;
    }
    if (p->optimizer == MOE_TRAIN_OPT_DENSE)
        for (int il = 0; il < hp->n_layer; il++)
            if (m->layers[il].is_moe)
                for (int e = 0; e < hp->n_expert; e++)
                    if (ex_alloc(t, &t->ex[(size_t)il * hp->n_expert + e])) {
                        st = MOE_ERR_NOMEM;
                        snprintf(err, errlen, "train: out of memory");
                        goto fail;
                    }
    if (corpus && (st = open_corpus(t, corpus))) {
        snprintf(err, errlen, "%s", t->err);
        goto fail;
    }
    *out = t;
    return MOE_OK;
fail:
    moe_trainer_free(t);
    return st;
}

void moe_trainer_free(moe_trainer *t) {
    if (!t) return;
    if (t->ex && t->m)
        for (size_t i = 0; i < (size_t)t->m->hp.n_layer * (size_t)(t->m->hp.n_expert > 0 ? t->m->hp.n_expert : 1); i++) {
            free(t->ex[i].m);
            free(t->ex[i].v);
        }
    free(t->ex);
    free(t->om);
    free(t->ov);
    moe_tm_free(t->m);
    moe_pool_free(t->pool);
    moe_gguf_close(t->base);
    if (t->map) munmap(t->map, t->map_len);
    free(t);
}

const char *moe_trainer_errmsg(const moe_trainer *t) { return t->err; }
int64_t moe_trainer_steps_done(const moe_trainer *t) { return t->step; }
uint64_t moe_trainer_n_params(const moe_trainer *t) {
    uint64_t n = 0;
    for (int i = 0; i < t->m->n_tensors; i++) n += t->m->tensors[i].numel;
    return n;
}

uint64_t moe_trainer_checksum(const moe_trainer *t) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < t->m->n_tensors; i++) {
        const uint8_t *b = (const uint8_t *)(t->m->params + t->m->tensors[i].off);
        for (size_t k = 0; k < t->m->tensors[i].numel * sizeof(float); k++) h = (h ^ b[k]) * 0x100000001b3ull;
    }
    return h;
}

/* ---- the step ---- */
moe_status moe_trainer_step(moe_trainer *t, moe_train_stats *out) {
    moe_tm_model *m = t->m;
    const moe_hparams *hp = &m->hp;
    const int64_t E = hp->n_expert, K = hp->n_expert_used, N = m->N;
    if (!t->tok) {
        snprintf(t->err, sizeof t->err, "train: no corpus");
        return MOE_ERR_INVAL;
    }
    double t0 = moe_now();
    moe_trainer_fill_batch(t, t->step);
    m->replay = 0;
    double loss = moe_tm_forward(m);
    if (!isfinite(loss)) {
        snprintf(t->err, sizeof t->err, "train: loss is %f at step %lld (lower the learning rate)", loss,
                 (long long)t->step + 1);
        return MOE_ERR_RANGE;
    }
    if (t->p.optimizer == MOE_TRAIN_OPT_DENSE) /* every expert's gradient is written (zeros for idle ones) */
        for (int il = 0; il < hp->n_layer; il++)
            if (m->layers[il].is_moe) memset(m->active + (size_t)il * E, 1, (size_t)E);
    moe_tm_zero_grads(m);
    if (t->p.optimizer == MOE_TRAIN_OPT_DENSE) /* restore the real activity for the statistics below */
        for (int il = 0; il < hp->n_layer; il++)
            if (m->layers[il].is_moe)
                for (int64_t e = 0; e < E; e++) m->active[(size_t)il * E + e] = m->counts[(size_t)il * E + e] > 0;
    moe_tm_backward(m);
    /* global gradient norm over what is trained (idle experts are zero) */
    double ss = 0;
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *tt = &m->tensors[i];
        if (tt->frozen) continue;
        if (tt->kind != TM_KIND_EXPERTS) {
            const float *g = m->grads + tt->off;
            for (size_t k = 0; k < tt->numel; k++) ss += (double)g[k] * (double)g[k];
            continue;
        }
        for (int64_t e = 0; e < E; e++) {
            if (!m->active[(size_t)tt->layer * E + e]) continue;
            const float *g = m->grads + tt->off + (size_t)e * t->ex_per;
            for (size_t k = 0; k < t->ex_per; k++) ss += (double)g[k] * (double)g[k];
        }
    }
    double gnorm = sqrt(ss);
    float gscale = (t->p.grad_clip > 0 && gnorm > t->p.grad_clip) ? (float)(t->p.grad_clip / gnorm) : 1.0f;
    int64_t s = t->step + 1;
    adam_k k = adam_for(t, s, gscale);
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *tt = &m->tensors[i];
        if (tt->frozen || tt->kind == TM_KIND_EXPERTS) continue;
        adamw(m->params + tt->off, t->om + tt->off, t->ov + tt->off, m->grads + tt->off, tt->numel, &k, decays(tt));
    }
    int idle = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        if (!m->layers[il].is_moe) continue;
        for (int64_t e = 0; e < E; e++) {
            int act = m->active[(size_t)il * E + e];
            idle += !act;
            tr_expert *x = &t->ex[(size_t)il * E + e];
            switch (t->p.optimizer) {
            case MOE_TRAIN_OPT_DENSE:
                expert_update(t, il, (int)e, s, gscale, 1);
                break;
            case MOE_TRAIN_OPT_EXACT:
                if (act) { /* already caught up to s−1 by the forward's touch */
                    expert_update(t, il, (int)e, s, gscale, 1);
                    x->last = s;
                }
                break;
            default:
                if (act) expert_update(t, il, (int)e, s, gscale, 1);
                break;
            }
        }
    }
    /* load metrics and the aux-loss-free bias update */
    double mm_sum = 0, cv_sum = 0;
    int n_moe = 0;
    for (int il = 0; il < hp->n_layer; il++) {
        const tm_layer *ly = &m->layers[il];
        if (!ly->is_moe) continue;
        const uint64_t *c = m->counts + (size_t)il * E;
        double mean = (double)(N * K) / (double)E, mx = 0, var = 0;
        for (int64_t e = 0; e < E; e++) {
            mx = fmax(mx, (double)c[e]);
            var += ((double)c[e] - mean) * ((double)c[e] - mean);
        }
        mm_sum += mx / mean;
        cv_sum += sqrt(var / (double)E) / mean;
        n_moe++;
        if (t->p.bias_gamma > 0 && ly->ti[W_EXP_B] >= 0) {
            float *b = m->params + m->tensors[ly->ti[W_EXP_B]].off;
            for (int64_t e = 0; e < E; e++) {
                double d = mean - (double)c[e];
                b[e] += (float)(t->p.bias_gamma * (d > 0 ? 1.0 : d < 0 ? -1.0 : 0.0));
            }
        }
    }
    t->step = s;
    if (out) {
        out->step = s;
        out->loss = loss;
        out->loss_ce = m->loss_ce;
        out->loss_aux = m->loss_aux;
        out->lr = k.lr;
        out->grad_norm = gnorm;
        out->load_maxmean = n_moe ? mm_sum / n_moe : 0;
        out->load_cv = n_moe ? cv_sum / n_moe : 0;
        out->idle_experts = idle;
        out->seconds = moe_now() - t0;
    }
    return MOE_OK;
}

double moe_trainer_eval(moe_trainer *t, int32_t n_batches) {
    moe_tm_model *m = t->m;
    const int64_t B = m->B, T = m->T;
    uint64_t nval = t->n_tok - t->n_train;
    int use_val = nval >= (uint64_t)T + 1;
    double sum = 0;
    void (*hook)(void *, int, int) = m->touch_expert;
    m->touch_expert = NULL; /* evaluation sees the parameters as they are */
    if (t->p.optimizer == MOE_TRAIN_OPT_EXACT) moe_trainer_flush_experts(t);
    for (int32_t bi = 0; bi < n_batches; bi++) {
        for (int64_t b = 0; b < B; b++) {
            uint64_t w = (uint64_t)bi * (uint64_t)B + (uint64_t)b, start;
            if (use_val) {
                uint64_t range = nval - (uint64_t)T;
                uint64_t total = (uint64_t)n_batches * (uint64_t)B;
                start = t->n_train + (range * w) / (total ? total : 1);
            } else {
                start = mix64(~w) % (t->n_train - (uint64_t)T + 1);
            }
            int32_t *in = m->tokens + b * T, *tg = m->targets + b * T;
            in[0] = t->bos;
            for (int64_t j = 1; j < T; j++) in[j] = (int32_t)t->tok[start + (uint64_t)j - 1];
            for (int64_t j = 0; j < T; j++) tg[j] = (int32_t)t->tok[start + (uint64_t)j];
        }
        m->replay = 0;
        double aux = m->aux_alpha;
        m->aux_alpha = 0;
        sum += moe_tm_forward(m);
        m->aux_alpha = aux;
    }
    m->touch_expert = hook;
    return n_batches ? sum / n_batches : 0;
}

/* ---- checkpoints (GGUF: the model's keys + train.* keys, parameters and moments) ---- */
static int skip_train_keys(const char *key, void *ud) {
    (void)ud;
    return !strncmp(key, "train.", 6);
}

static moe_status fsync_dir_of(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    int fd = open(dirname(buf), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return MOE_ERR_IO;
    int r = fsync(fd);
    close(fd);
    return r ? MOE_ERR_IO : MOE_OK;
}

moe_status moe_trainer_save(moe_trainer *t, const char *path) {
    moe_tm_model *m = t->m;
    const moe_hparams *hp = &m->hp;
    moe_gguf_writer *w;
    moe_status st = moe_gguf_writer_init(&w);
    if (st) return st;
    char nm[96];
    const int64_t LE = (int64_t)hp->n_layer * (hp->n_expert > 0 ? hp->n_expert : 1);
    int64_t *last = calloc((size_t)LE, sizeof(int64_t));
    uint8_t *alloc = calloc((size_t)LE, 1);
    if (!last || !alloc) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    for (int64_t i = 0; i < LE; i++) {
        last[i] = t->ex[i].last;
        alloc[i] = t->ex[i].m != NULL;
    }
    st = moe_gguf_writer_copy_kv(w, t->base, skip_train_keys, NULL);
    if (!st) st = moe_gguf_writer_set_u64(w, "train.step", (uint64_t)t->step);
    if (!st) st = moe_gguf_writer_set_u64(w, "train.n_params", (uint64_t)m->n_params);
    if (!st) st = moe_gguf_writer_set_u32(w, "train.optimizer", (uint32_t)t->p.optimizer);
    if (!st) st = moe_gguf_writer_set_u64(w, "train.seed", t->p.seed);
    if (!st) st = moe_gguf_writer_set_arr(w, "train.expert_last", MOE_GGUF_TYPE_INT64, last, (uint64_t)LE);
    if (!st) st = moe_gguf_writer_set_arr(w, "train.expert_alloc", MOE_GGUF_TYPE_UINT8, alloc, (uint64_t)LE);
    for (int i = 0; i < m->n_tensors && !st; i++) {
        const tm_tensor *tt = &m->tensors[i];
        st = moe_gguf_writer_add_tensor(w, tt->name, MOE_DTYPE_F32, tt->n_dims, tt->ne, m->params + tt->off);
        if (st || tt->kind == TM_KIND_EXPERTS || tt->kind == TM_KIND_BIAS) continue;
        int64_t ne[1] = {(int64_t)tt->numel};
        snprintf(nm, sizeof nm, "opt.m.%s", tt->name);
        st = moe_gguf_writer_add_tensor(w, nm, MOE_DTYPE_F32, 1, ne, t->om + tt->off);
        snprintf(nm, sizeof nm, "opt.v.%s", tt->name);
        if (!st) st = moe_gguf_writer_add_tensor(w, nm, MOE_DTYPE_F32, 1, ne, t->ov + tt->off);
    }
    for (int64_t i = 0; i < LE && !st; i++) {
        if (!t->ex[i].m) continue;
        int64_t ne[1] = {(int64_t)(3 * t->ex_per)};
        snprintf(nm, sizeof nm, "opt.m.x.%lld", (long long)i);
        st = moe_gguf_writer_add_tensor(w, nm, MOE_DTYPE_F32, 1, ne, t->ex[i].m);
        snprintf(nm, sizeof nm, "opt.v.x.%lld", (long long)i);
        if (!st) st = moe_gguf_writer_add_tensor(w, nm, MOE_DTYPE_F32, 1, ne, t->ex[i].v);
    }
    if (st) {
        snprintf(t->err, sizeof t->err, "train: checkpoint: preparing '%s' failed (%s)", path, moe_status_str(st));
        goto out;
    }
    /* the writer writes path.tmp, fsyncs it and renames it over path */
    st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, t->err, sizeof t->err);
    if (!st) st = fsync_dir_of(path);
out:
    free(last);
    free(alloc);
    moe_gguf_writer_free(w);
    return st;
}

static moe_status copy_tensor(moe_trainer *t, const moe_gguf *g, const char *name, float *dst, size_t n) {
    const moe_gguf_tensor *gt = moe_gguf_find_tensor(g, name);
    if (!gt || gt->type != MOE_DTYPE_F32 || gt->nbytes != n * sizeof(float)) {
        snprintf(t->err, sizeof t->err, "train: checkpoint tensor '%s' is missing or has another size", name);
        return MOE_ERR_FORMAT;
    }
    memcpy(dst, gt->data, n * sizeof(float));
    return MOE_OK;
}

moe_status moe_trainer_resume(moe_trainer *t, const char *path) {
    moe_tm_model *m = t->m;
    const moe_hparams *hp = &m->hp;
    moe_gguf *g;
    moe_status st = moe_gguf_open(path, &g, t->err, sizeof t->err);
    if (st) return st;
    uint64_t step = 0, np = 0;
    uint32_t opt = 0;
    int64_t ki, ka;
    uint64_t nl = 0, na = 0;
    const int64_t LE = (int64_t)hp->n_layer * (hp->n_expert > 0 ? hp->n_expert : 1);
    if (moe_gguf_get_u64(g, "train.step", &step) || moe_gguf_get_u64(g, "train.n_params", &np) ||
        moe_gguf_get_u32(g, "train.optimizer", &opt) ||
        moe_gguf_get_arr(g, "train.expert_last", MOE_GGUF_TYPE_INT64, &ki, &nl) ||
        moe_gguf_get_arr(g, "train.expert_alloc", MOE_GGUF_TYPE_UINT8, &ka, &na)) {
        snprintf(t->err, sizeof t->err, "train: '%s' is not a moekit training checkpoint (train.* keys)", path);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    if (np != m->n_params || (int64_t)nl != LE || (int64_t)na != LE) {
        snprintf(t->err, sizeof t->err, "train: checkpoint '%s' belongs to another model shape", path);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    if ((int32_t)opt != t->p.optimizer) {
        snprintf(t->err, sizeof t->err, "train: checkpoint '%s' was written with optimizer mode %u, the config says %d",
                 path, opt, t->p.optimizer);
        st = MOE_ERR_INVAL;
        goto out;
    }
    char nm[96];
    for (int i = 0; i < m->n_tensors && !st; i++) {
        const tm_tensor *tt = &m->tensors[i];
        st = copy_tensor(t, g, tt->name, m->params + tt->off, tt->numel);
        if (st || tt->kind == TM_KIND_EXPERTS || tt->kind == TM_KIND_BIAS) continue;
        snprintf(nm, sizeof nm, "opt.m.%s", tt->name);
        if (moe_gguf_find_tensor(g, nm)) { /* absent when the tensor was frozen: moments stay 0 */
            st = copy_tensor(t, g, nm, t->om + tt->off, tt->numel);
            snprintf(nm, sizeof nm, "opt.v.%s", tt->name);
            if (!st) st = copy_tensor(t, g, nm, t->ov + tt->off, tt->numel);
        }
    }
    const uint8_t *alloc = moe_gguf_arr_data(g, ka);
    const uint8_t *lastp = moe_gguf_arr_data(g, ki);
    for (int64_t i = 0; i < LE && !st; i++) {
        memcpy(&t->ex[i].last, lastp + 8 * i, 8);
        if (!alloc[i]) continue;
        if (ex_alloc(t, &t->ex[i])) {
            st = MOE_ERR_NOMEM;
            break;
        }
        snprintf(nm, sizeof nm, "opt.m.x.%lld", (long long)i);
        st = copy_tensor(t, g, nm, t->ex[i].m, 3 * t->ex_per);
        snprintf(nm, sizeof nm, "opt.v.x.%lld", (long long)i);
        if (!st) st = copy_tensor(t, g, nm, t->ex[i].v, 3 * t->ex_per);
    }
    if (!st) t->step = (int64_t)step;
out:
    moe_gguf_close(g);
    return st;
}

/* ---- export ---- */
typedef struct {
    moe_trainer *t;
    int *ti;     /* writer tensor index → model tensor */
    int *type;
} exp_ctx;

static int exp_fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    exp_ctx *x = ud;
    const tm_tensor *tt = &x->t->m->tensors[x->ti[i]];
    const float *src = x->t->m->params + tt->off;
    int64_t in = tt->ne[0], rows = tt->ne[1] * tt->ne[2];
    size_t rb = moe_dtype_row_bytes(x->type[i], in);
    if (rb * (uint64_t)rows != nbytes) return -1;
    for (int64_t r = 0; r < rows; r++)
        if (moe_dtype_quant_row(x->type[i], src + r * in, (uint8_t *)buf + (size_t)r * rb, in)) return -1;
    return 0;
}

static int skip_export_keys(const char *key, void *ud) {
    (void)ud;
    static const char *const k[] = {"general.file_type", "deepseek2.attention.head_count_kv",
                                    "deepseek2.attention.key_length", "deepseek2.attention.value_length",
                                    "deepseek2.attention.key_length_mla", "deepseek2.attention.value_length_mla", NULL};
    if (!strncmp(key, "train.", 6)) return 1;
    for (int i = 0; k[i]; i++)
        if (!strcmp(key, k[i])) return 1;
    return 0;
}

moe_status moe_trainer_export(moe_trainer *t, const char *path, int dtype) {
    moe_tm_model *m = t->m;
    const moe_hparams *hp = &m->hp;
    if (dtype != MOE_DTYPE_F32 && dtype != MOE_DTYPE_F16 && dtype != MOE_DTYPE_BF16 && dtype != MOE_DTYPE_Q8_0) {
        snprintf(t->err, sizeof t->err, "train: export type must be f32, f16, bf16 or q8_0");
        return MOE_ERR_INVAL;
    }
    moe_trainer_flush_experts(t); /* exact mode: parameters as dense AdamW has them now */
    moe_gguf_writer *w;
    moe_status st = moe_gguf_writer_init(&w);
    if (st) return st;
    exp_ctx x = {t, calloc((size_t)m->n_tensors, sizeof(int)), calloc((size_t)m->n_tensors, sizeof(int))};
    if (!x.ti || !x.type) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    const uint32_t Lkv = (uint32_t)hp->kv_lora_rank, R = (uint32_t)hp->n_rot;
    uint32_t ft = dtype == MOE_DTYPE_F32 ? 0 : dtype == MOE_DTYPE_F16 ? 1 : dtype == MOE_DTYPE_BF16 ? 32 : 7;
    st = moe_gguf_writer_copy_kv(w, t->base, skip_export_keys, NULL);
    if (!st) st = moe_gguf_writer_set_u32(w, "general.file_type", ft);
    if (!st) st = moe_gguf_writer_set_u32(w, "deepseek2.attention.head_count_kv", 1);
    if (!st) st = moe_gguf_writer_set_u32(w, "deepseek2.attention.key_length", Lkv + R);
    if (!st) st = moe_gguf_writer_set_u32(w, "deepseek2.attention.value_length", Lkv);
    if (!st) st = moe_gguf_writer_set_u32(w, "deepseek2.attention.key_length_mla", (uint32_t)hp->n_embd_head_k);
    if (!st) st = moe_gguf_writer_set_u32(w, "deepseek2.attention.value_length_mla", (uint32_t)hp->n_embd_head_v);
    for (int i = 0; i < m->n_tensors && !st; i++) {
        const tm_tensor *tt = &m->tensors[i];
        int ty = (tt->kind == TM_KIND_NORM || tt->kind == TM_KIND_ROUTER || tt->kind == TM_KIND_BIAS) ? MOE_DTYPE_F32
                                                                                                       : dtype;
        if (tt->ne[0] % moe_dtype_block_size(ty)) ty = MOE_DTYPE_F16; /* as moe init does */
        x.ti[i] = i;
        x.type[i] = ty;
        st = moe_gguf_writer_add_tensor(w, tt->name, ty, tt->n_dims, tt->ne, NULL);
    }
    if (st) {
        snprintf(t->err, sizeof t->err, "train: export: preparing '%s' failed (%s)", path, moe_status_str(st));
        goto out;
    }
    st = moe_gguf_writer_write(w, path, exp_fill, &x, NULL, NULL, t->err, sizeof t->err);
    if (!st) st = fsync_dir_of(path);
out:
    free(x.ti);
    free(x.type);
    moe_gguf_writer_free(w);
    return st;
}
