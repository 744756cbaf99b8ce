/* Samplers: greedy is argmax; top-k and top-p never pick outside their set; the empirical
 * distribution at temperature 1 matches softmax; the same seed gives the same tokens. */
#include <math.h>

#include "moe/sample.h"
#include "testutil.h"

int main(void) {
    enum { V = 50 };
    float logits[V];
    for (int i = 0; i < V; i++) logits[i] = (float)((i * 7919) % V) / 10.0f; /* a permutation of 0..4.9 */
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    moe_sampler *s;
    moe_sampler_params p = {0.0f, 1.0f, 0, 1};
    CHECK(moe_sampler_init(&p, V, &s) == MOE_OK, "init");
    CHECK(moe_sampler_sample(s, logits) == best, "greedy is argmax");
    moe_sampler_free(s);

    /* top-k 3: only the 3 largest */
    p = (moe_sampler_params){1.0f, 1.0f, 3, 7};
    moe_sampler_init(&p, V, &s);
    int ok = 1;
    for (int i = 0; i < 2000; i++) ok &= logits[moe_sampler_sample(s, logits)] >= 4.7f - 1e-6f;
    CHECK(ok, "top-k 3 stays in the top 3");
    moe_sampler_free(s);

    /* temperature 1, no truncation: frequencies follow softmax */
    p = (moe_sampler_params){1.0f, 1.0f, 0, 42};
    moe_sampler_init(&p, V, &s);
    int hist[V] = {0};
    const int N = 200000;
    for (int i = 0; i < N; i++) hist[moe_sampler_sample(s, logits)]++;
    double z = 0, worst = 0;
    for (int i = 0; i < V; i++) z += exp(logits[i]);
    for (int i = 0; i < V; i++) {
        double pr = exp(logits[i]) / z, sd = sqrt(pr * (1 - pr) / N);
        worst = fmax(worst, fabs((double)hist[i] / N - pr) / sd);
    }
    printf("softmax sampling: worst deviation %.2f standard errors over %d draws\n", worst, N);
    CHECK(worst < 5.0, "frequencies deviate by %.2f standard errors", worst);
    moe_sampler_free(s);

    /* top-p 0.5: the smallest prefix with mass >= 0.5 */
    p = (moe_sampler_params){1.0f, 0.5f, 0, 3};
    moe_sampler_init(&p, V, &s);
    double probs[V], acc = 0;
    for (int i = 0; i < V; i++) probs[i] = exp(logits[i]) / z;
    float cut = 0;
    for (int k = 0; k < V; k++) { /* logits are 4.9, 4.8, ... in some order */
        float l = 4.9f - 0.1f * (float)k;
        for (int i = 0; i < V; i++)
            if (fabsf(logits[i] - l) < 1e-4f) acc += probs[i];
        if (acc >= 0.5) {
            cut = l;
            break;
        }
    }
    ok = 1;
    for (int i = 0; i < 5000; i++) ok &= logits[moe_sampler_sample(s, logits)] >= cut - 1e-4f;
    CHECK(ok, "top-p 0.5 stays in the nucleus (cut %.1f)", cut);
    moe_sampler_free(s);

    /* top-p without top-k on large vocabularies (the partial-selection path): every draw lies in
     * the nucleus a full sort defines, for nuclei of a few, hundreds and thousands of tokens */
    static const float steep[] = {2000.0f, 100.0f, 3.0f};
    for (int c = 0; c < 3; c++) {
        enum { BV = 20000 };
        static float lg[BV];
        static int order[BV];
        uint64_t x = 99 + (uint64_t)c;
        for (int i = 0; i < BV; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lg[i] = steep[c] * (float)((double)(x >> 11) * 0x1.0p-53);
            order[i] = i;
        }
        /* reference nucleus: sort indices by logit, take the prefix reaching 0.9 of the mass */
        for (int i = 1; i < BV; i++) { /* insertion sort is fine: done once per case */
            int v = order[i], j = i;
            while (j > 0 && lg[order[j - 1]] < lg[v]) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = v;
        }
        double zz = 0, acc2 = 0;
        float mxl = lg[order[0]];
        for (int i = 0; i < BV; i++) zz += exp(lg[i] - mxl);
        int nucleus = 0;
        while (nucleus < BV && acc2 < 0.9 * zz) acc2 += exp(lg[order[nucleus++]] - mxl);
        float cutoff = lg[order[nucleus - 1]];
        p = (moe_sampler_params){1.0f, 0.9f, 0, 5};
        moe_sampler_init(&p, BV, &s);
        ok = 1;
        for (int i = 0; i < 300; i++) ok &= lg[moe_sampler_sample(s, lg)] >= cutoff;
        moe_sampler_free(s);
        printf("top-p 0.9 over %d tokens: nucleus of %d, every draw inside: %s\n", BV, nucleus, ok ? "yes" : "no");
        CHECK(ok, "top-p draws stay in a nucleus of %d", nucleus);
    }

    /* reproducible with a seed */
    int seq1[20], seq2[20];
    for (int r = 0; r < 2; r++) {
        p = (moe_sampler_params){0.9f, 0.95f, 40, 1234};
        moe_sampler_init(&p, V, &s);
        for (int i = 0; i < 20; i++) (r ? seq2 : seq1)[i] = moe_sampler_sample(s, logits);
        moe_sampler_free(s);
    }
    CHECK(memcmp(seq1, seq2, sizeof seq1) == 0, "same seed, same tokens");
    p = (moe_sampler_params){1.0f, 2.0f, 0, 0};
    CHECK(moe_sampler_init(&p, V, &s) == MOE_ERR_INVAL, "top_p > 1 refused");
    return test_done();
}
