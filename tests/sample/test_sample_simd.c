/* The sampler's SIMD forms against its scalar references (src/sample/sample.c, included to
 * reach the kernels and the level switch).
 *
 *  - vexp_ref against exp() in double over [−87, 0]: relative error below 2^−21 (4.8e−7);
 *  - every kernel of every level this CPU runs (AVX-512, AVX2, scalar) gives the ref's floats
 *    bit for bit, at lengths that are and are not multiples of 8, 16 and the 256-block, with
 *    NaN, ±inf, ±0 and huge values among the inputs;
 *  - the whole sampler draws the same tokens at every level for the same seed (greedy, plain
 *    temperature, top-k, top-p, both) on V = 102,400 and odd V;
 *  - edge cases: one finite logit among -inf, NaN logits, +inf, logits near ±FLT_MAX, tiny
 *    top-p, temperature 0, odd V; the draw's frequencies match softmax (double) where the
 *    vocabulary ends in a partial block (within 5.5 standard errors over 200,000 draws).
 * It also prints the time per token of each level at V = 102,400 (informational). */
#include <float.h>
#include <time.h>

#include "../../src/sample/sample.c"
#include "testutil.h"

static uint64_t g_x = 88172645463325252ull;
static double rnd(void) { /* xorshift64, [0, 1) */
    g_x ^= g_x << 13;
    g_x ^= g_x >> 7;
    g_x ^= g_x << 17;
    return (double)(g_x >> 11) * 0x1.0p-53;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* logits like a model's: N(0, 2) plus a few large ones, and specials if asked */
static void fill(float *x, int32_t n, int specials) {
    for (int32_t i = 0; i < n; i++) {
        double u = rnd() + 1e-12, v = rnd();
        x[i] = (float)(2.0 * sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
        if (rnd() < 0.002) x[i] += 12.0f;
    }
    if (!specials) return;
    for (int32_t i = 0; i < n; i++) {
        double u = rnd();
        if (u < 0.01) x[i] = -INFINITY;
        else if (u < 0.015) x[i] = NAN;
        else if (u < 0.02) x[i] = 0.0f;
        else if (u < 0.025) x[i] = -0.0f;
        else if (u < 0.03) x[i] = -3e38f;
    }
}

static int same_bits(const float *a, const float *b, int32_t n) { return memcmp(a, b, (size_t)n * sizeof(float)) == 0; }

static int run_sampler(const moe_sampler_params *p, int32_t V, const float *logits, int n, int32_t *out) {
    moe_sampler *s;
    if (moe_sampler_init(p, V, &s) != MOE_OK) return 0;
    for (int i = 0; i < n; i++) out[i] = moe_sampler_sample(s, logits);
    moe_sampler_free(s);
    return 1;
}

int main(void) {
    const int top = detect_level();
    printf("sampler levels on this CPU: 0..%d (2 = AVX-512F, 1 = AVX2+FMA, 0 = scalar)\n", top);

    /* exp against double exp over [-87, 0]: every 64th float, and the ends */
    double worst = 0;
    float worst_x = 0;
    for (uint32_t u = f2u(-0.0f); u <= f2u(X_MIN); u += 64) {
        float x = u2f(u);
        double e = exp((double)x), rel = fabs((double)vexp_ref(x) - e) / e;
        if (rel > worst) {
            worst = rel;
            worst_x = x;
        }
    }
    for (float x = 0.0f; x >= X_MIN; x -= 0.001f) {
        double e = exp((double)x), rel = fabs((double)vexp_ref(x) - e) / e;
        if (rel > worst) {
            worst = rel;
            worst_x = x;
        }
    }
    printf("vexp_ref vs exp(): largest relative error %.3g at x = %.6g (bound 2^-21 = %.3g)\n", worst, worst_x,
           0x1.0p-21);
    CHECK(worst < 0x1.0p-21, "vexp_ref relative error %.3g", worst);
    CHECK(vexp_ref(0.0f) == 1.0f && vexp_ref(-0.0f) == 1.0f, "exp(0) = 1 exactly");
    CHECK(weight_ref(NAN, 0.0f, 1.0f) == 0.0f && weight_ref(-INFINITY, 0.0f, 1.0f) == 0.0f &&
              weight_ref(-88.0f, 0.0f, 1.0f) == 0.0f && weight_ref(-87.0f, 0.0f, 1.0f) > 0.0f,
          "weights of NaN, -inf and below -87 are 0");

    /* kernels: each level against the ref, bit for bit */
    enum { NMAX = 102400 + 37 };
    static float x[NMAX], w0[NMAX], w1[NMAX], bs0[NMAX / BLK + 2], bs1[NMAX / BLK + 2];
    static cand c0[NMAX], c1[NMAX];
    static const int32_t lens[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 255, 256, 257, 300, 511, 513, 1000, 4099, NMAX};
    int kern_ok = 1, n_cases = 0;
    for (int lv = 1; lv <= top; lv++) {
        for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
            for (int sp = 0; sp < 2; sp++) {
                int32_t n = lens[li];
                fill(x, n, sp);
                g_level = 0;
                float m0 = k_max(x, n);
                float mx = isfinite(m0) ? m0 : 1.0f, invT = sp ? 1.0f / 0.7f : 1.0f;
                k_weights(x, n, mx, invT, w0, bs0);
                float tau = 0.01f;
                int32_t na0 = k_above(w0, n, tau, c0), f0 = k_find(x, n, m0);
                int32_t g0 = k_next_gt(x, n / 3, n, 2.0f);
                g_level = lv;
                float m1 = k_max(x, n);
                k_weights(x, n, mx, invT, w1, bs1);
                int32_t na1 = k_above(w0, n, tau, c1), f1 = k_find(x, n, m0);
                int32_t g1 = k_next_gt(x, n / 3, n, 2.0f);
                int nb = (n + BLK - 1) / BLK, ok = 1;
                ok &= f2u(m0) == f2u(m1) || (m0 == 0.0f && m1 == 0.0f); /* ±0 may differ: equal weights */
                ok &= same_bits(w0, w1, n) && same_bits(bs0, bs1, nb);
                ok &= na0 == na1 && memcmp(c0, c1, (size_t)na0 * sizeof(cand)) == 0;
                ok &= f0 == f1 && g0 == g1;
                if (!ok)
                    fprintf(stderr, "level %d, n %d, specials %d: max %g/%g find %d/%d next %d/%d above %d/%d\n", lv, n,
                            sp, m0, m1, f0, f1, g0, g1, na0, na1);
                kern_ok &= ok;
                n_cases++;
                /* the weights without an output array give the same block sums */
                k_weights(x, n, mx, invT, NULL, bs1);
                kern_ok &= same_bits(bs0, bs1, nb);
            }
        }
    }
    printf("kernels: %d cases over levels 1..%d, identical to the ref: %s\n", n_cases, top, kern_ok ? "yes" : "no");
    CHECK(kern_ok, "SIMD kernels differ from the ref");

    /* whole sampler: the same tokens at every level */
    enum { V = 102400, DRAWS = 300 };
    static float lg[V];
    static int32_t t0[DRAWS], t1[DRAWS];
    static const moe_sampler_params modes[] = {
        {0.0f, 1.0f, 0, 1}, {1.0f, 1.0f, 0, 2}, {0.7f, 1.0f, 40, 3}, {1.0f, 0.9f, 0, 4}, {0.8f, 0.95f, 40, 5},
        {1.3f, 0.5f, 0, 6}, {1.0f, 1e-6f, 0, 7},
    };
    static const int32_t vs[] = {V, 1003, 7, 16, 257};
    int same = 1;
    for (size_t vi = 0; vi < sizeof vs / sizeof *vs; vi++) {
        int32_t n = vs[vi];
        fill(lg, n, vi == 1);
        for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
            int draws = n >= V ? 40 : DRAWS; /* the scalar ref takes ~2 ms a token at V = 102,400 */
            g_level = 0;
            run_sampler(&modes[mi], n, lg, draws, t0);
            for (int lv = 1; lv <= top; lv++) {
                g_level = lv;
                run_sampler(&modes[mi], n, lg, draws, t1);
                int eq = memcmp(t0, t1, (size_t)draws * sizeof *t0) == 0;
                if (!eq) fprintf(stderr, "V %d, mode %zu, level %d: tokens differ from the ref\n", n, mi, lv);
                same &= eq;
            }
        }
    }
    g_level = top;
    CHECK(same, "every level draws the ref's tokens for the same seed");

    /* edge cases, at the best level (the previous checks tie it to the ref) */
    for (int32_t i = 0; i < V; i++) lg[i] = -INFINITY;
    lg[V - 3] = -5.0f;
    int only = 1;
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
        run_sampler(&modes[mi], V, lg, 50, t0);
        for (int i = 0; i < 50; i++) only &= t0[i] == V - 3;
    }
    CHECK(only, "one finite logit among -inf is always drawn");
    for (int32_t i = 0; i < V; i++) lg[i] = (i % 3) ? NAN : -1.0f - (float)(i % 7);
    lg[12345] = NAN;
    int nan_ok = 1;
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
        run_sampler(&modes[mi], V, lg, 100, t0);
        for (int i = 0; i < 100; i++) nan_ok &= t0[i] >= 0 && t0[i] < V && !isnan(lg[t0[i]]);
    }
    CHECK(nan_ok, "NaN logits are never drawn");
    fill(lg, V, 0);
    lg[777] = INFINITY;
    run_sampler(&modes[1], V, lg, 20, t0);
    int inf_ok = 1;
    for (int i = 0; i < 20; i++) inf_ok &= t0[i] == 777;
    CHECK(inf_ok, "a +inf logit is always drawn");
    /* near ±FLT_MAX: differences overflow to -inf, weights stay finite and the draw is valid */
    for (int32_t i = 0; i < V; i++) lg[i] = (i & 1) ? FLT_MAX * (float)(rnd() - 0.5) : -FLT_MAX;
    lg[4242] = FLT_MAX;
    lg[4243] = FLT_MAX * 0.999999f;
    int huge_ok = 1;
    for (size_t mi = 0; mi < sizeof modes / sizeof *modes; mi++) {
        run_sampler(&modes[mi], V, lg, 50, t0);
        for (int i = 0; i < 50; i++) huge_ok &= t0[i] == 4242 || t0[i] == 4243;
    }
    moe_sampler *s;
    moe_sampler_params hp = {1.0f, 1.0f, 0, 9};
    moe_sampler_init(&hp, V, &s);
    moe_sampler_sample(s, lg);
    double hsum = sum_blocks(s->bs, (V + BLK - 1) / BLK);
    moe_sampler_free(s);
    CHECK(huge_ok && isfinite(hsum), "logits near FLT_MAX: draws %s, weight sum %g", huge_ok ? "ok" : "wrong", hsum);
    /* temperature 0 and a tiny top-p: the first largest logit */
    fill(lg, 1003, 0);
    lg[500] = lg[900] = 40.0f; /* a tie: the first wins */
    moe_sampler_params g = {0.0f, 1.0f, 0, 1}, tp = {1.0f, 1e-7f, 0, 1}, tpk = {1.0f, 1e-7f, 10, 1};
    run_sampler(&g, 1003, lg, 5, t0);
    CHECK(t0[0] == 500 && t0[4] == 500, "temperature 0 is the first argmax (%d)", t0[0]);
    run_sampler(&tp, 1003, lg, 5, t0);
    CHECK(t0[0] == 500 && t0[4] == 500, "tiny top-p keeps the first largest (%d)", t0[0]);
    run_sampler(&tpk, 1003, lg, 5, t0);
    CHECK(t0[0] == 500 && t0[4] == 500, "tiny top-p with top-k keeps the first largest (%d)", t0[0]);

    /* frequencies against softmax in double, on a V whose last block and last vector are
     * partial and whose most likely tokens sit in them */
    enum { FV = 1003, N = 200000 };
    static int hist[FV];
    for (int32_t i = 0; i < FV; i++) lg[i] = (float)(rnd() * 3.0);
    for (int32_t i = FV - 9; i < FV; i++) lg[i] = 6.0f + 0.1f * (float)(i - FV);
    { /* at the best level only: the checks above tie every level to it token for token */
        int lv = top;
        g_level = lv;
        memset(hist, 0, sizeof hist);
        moe_sampler_params fp = {1.0f, 1.0f, 0, 77};
        moe_sampler_init(&fp, FV, &s);
        for (int i = 0; i < N; i++) hist[moe_sampler_sample(s, lg)]++;
        moe_sampler_free(s);
        double z = 0, dev = 0;
        for (int32_t i = 0; i < FV; i++) z += exp((double)lg[i] - 6.0);
        for (int32_t i = 0; i < FV; i++) {
            double pr = exp((double)lg[i] - 6.0) / z, sd = sqrt(pr * (1 - pr) / N);
            dev = fmax(dev, fabs((double)hist[i] / N - pr) / sd);
        }
        printf("level %d: softmax over V = %d, worst deviation %.2f standard errors over %d draws\n", lv, FV, dev, N);
        CHECK(dev < 5.5, "level %d: frequencies deviate by %.2f standard errors", lv, dev);
    }

    /* time per token at V = 102,400 (informational) */
    fill(lg, V, 0);
    for (int lv = 0; lv <= top; lv++) {
        g_level = lv;
        printf("level %d, µs per token at V = %d:", lv, V);
        for (size_t mi = 0; mi < 5; mi++) {
            moe_sampler_init(&modes[mi], V, &s);
            int reps = lv ? 400 : 20;
            double t = now_s();
            for (int i = 0; i < reps; i++) moe_sampler_sample(s, lg);
            t = now_s() - t;
            moe_sampler_free(s);
            printf(" %s %.1f", mi == 0 ? "greedy" : mi == 1 ? "T=1" : mi == 2 ? "top-k" : mi == 3 ? "top-p" : "k+p",
                   1e6 * t / reps);
        }
        printf("\n");
    }
    return test_done();
}
