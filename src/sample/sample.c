/* moekit sample: temperature / top-k / top-p sampling (see moe/sample.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe/sample.h"

typedef struct {
    float logit;
    int32_t id;
} cand;

struct moe_sampler {
    moe_sampler_params p;
    int32_t n_vocab;
    cand *c; /* (V) */
    uint64_t s[4];
};

moe_sampler_params moe_sampler_default_params(void) {
    moe_sampler_params p = {0.8f, 0.95f, 40, 0};
    return p;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform01(moe_sampler *r) {
    uint64_t *s = r->s, t = s[1] << 17;
    uint64_t res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return (double)(res >> 11) * 0x1.0p-53;
}

moe_status moe_sampler_init(const moe_sampler_params *p, int32_t n_vocab, moe_sampler **out) {
    *out = NULL;
    if (n_vocab <= 0 || p->top_p <= 0.0f || p->top_p > 1.0f || p->top_k < 0) return MOE_ERR_INVAL;
    moe_sampler *s = calloc(1, sizeof *s);
    if (!s) return MOE_ERR_NOMEM;
    s->c = malloc(sizeof(cand) * (size_t)n_vocab);
    if (!s->c) {
        free(s);
        return MOE_ERR_NOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->s[i] = splitmix(&x);
    *out = s;
    return MOE_OK;
}

void moe_sampler_free(moe_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s);
}

static int by_logit_desc(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

int32_t moe_sampler_sample(moe_sampler *s, const float *logits) {
    const int32_t V = s->n_vocab;
    if (s->p.temp <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < V; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    int32_t n;
    int32_t k = s->p.top_k > 0 && s->p.top_k < V ? s->p.top_k : 0;
    if (k) {
        /* keep the k largest in a sorted (descending) array by insertion */
        n = 0;
        for (int32_t i = 0; i < V; i++) {
            float l = logits[i];
            if (n == k && l <= s->c[k - 1].logit) continue;
            int32_t j = n < k ? n++ : k - 1;
            while (j > 0 && s->c[j - 1].logit < l) {
                s->c[j] = s->c[j - 1];
                j--;
            }
            s->c[j].logit = l;
            s->c[j].id = i;
        }
    } else {
        for (int32_t i = 0; i < V; i++) {
            s->c[i].logit = logits[i];
            s->c[i].id = i;
        }
        n = V;
        qsort(s->c, (size_t)n, sizeof(cand), by_logit_desc);
    }
    /* softmax at temperature over the candidates (sorted, so c[0] is the max) */
    double sum = 0.0;
    float mx = s->c[0].logit;
    for (int32_t i = 0; i < n; i++) {
        s->c[i].logit = expf((s->c[i].logit - mx) / s->p.temp);
        sum += s->c[i].logit;
    }
    /* top-p: smallest prefix whose mass reaches p */
    if (s->p.top_p < 1.0f) {
        double acc = 0.0;
        for (int32_t i = 0; i < n; i++) {
            acc += s->c[i].logit / sum;
            if (acc >= s->p.top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0.0;
        for (int32_t i = 0; i < n; i++) sum += s->c[i].logit;
    }
    double r = uniform01(s) * sum, acc = 0.0;
    for (int32_t i = 0; i < n; i++) {
        acc += s->c[i].logit;
        if (r < acc) return s->c[i].id;
    }
    return s->c[n - 1].id;
}
