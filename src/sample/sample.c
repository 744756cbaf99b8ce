/* moekit sample: temperature / top-k / top-p sampling (see moe/sample.h).
 *
 * Cost per token is O(V) in every mode: top-k keeps a sorted array of k by insertion, plain
 * temperature sampling draws from the unnormalised weights in index order, and top-p without
 * top-k selects a growing top-m (quickselect) until it holds the nucleus and sorts only that. */
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

/* Quickselect: afterwards c[0..m) hold the m largest logits (in no particular order). O(n). */
static void select_top(cand *c, int32_t n, int32_t m) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = c[lo + (hi - lo) / 2].logit;
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                cand t = c[i];
                c[i++] = c[j];
                c[j--] = t;
            }
        }
        if (m - 1 <= j) hi = j;
        else if (m - 1 >= i) lo = i;
        else break;
    }
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
    float mx = logits[0];
    for (int32_t i = 1; i < V; i++) mx = logits[i] > mx ? logits[i] : mx;
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
    }
    /* weights exp((l - max) / T) over the candidates */
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        s->c[i].logit = expf((s->c[i].logit - mx) / s->p.temp);
        sum += s->c[i].logit;
    }
    /* top-p: the smallest set of most likely tokens whose mass reaches p. Without top-k the
     * candidates are unsorted: select the top m (m growing 4x) until their mass reaches p, then
     * sort only those, so a typical nucleus costs O(V) instead of a sort of the vocabulary. */
    if (s->p.top_p < 1.0f) {
        double want = (double)s->p.top_p * sum;
        if (!k) {
            for (int32_t m = 64;; m *= 4) {
                if (m >= n) {
                    qsort(s->c, (size_t)n, sizeof(cand), by_logit_desc);
                    break;
                }
                select_top(s->c, n, m);
                double mass = 0.0;
                for (int32_t i = 0; i < m; i++) mass += s->c[i].logit;
                if (mass >= want) {
                    qsort(s->c, (size_t)m, sizeof(cand), by_logit_desc);
                    n = m;
                    break;
                }
            }
        }
        double acc = 0.0;
        for (int32_t i = 0; i < n; i++) {
            acc += s->c[i].logit;
            if (acc >= want) {
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
