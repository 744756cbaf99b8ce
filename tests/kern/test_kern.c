/* Kernels: every SIMD form against its scalar _ref (bit-identical where the order of
 * operations is the same by construction), matmul against a float64 naive product, vector ops
 * against their formulas, and the thread pool's split. */
#include <math.h>

#include "core/pool.h"
#include "kern/kern.h"
#include "moe/dtype.h"
#include "testutil.h"

static uint64_t g_s = 88172645463325252ull;
static float frand(void) {
    g_s ^= g_s << 13;
    g_s ^= g_s >> 7;
    g_s ^= g_s << 17;
    return (float)((double)(g_s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

int main(void) {
    printf("simd: %s\n", moe_kern_simd_name());
    /* dot: SIMD vs ref, all lengths 0..300 (tails) */
    float a[4096], b[4096];
    for (int i = 0; i < 4096; i++) {
        a[i] = frand();
        b[i] = frand();
    }
    int same = 1;
    double worst = 0;
    for (int n = 0; n <= 300; n++) {
        float x = moe_kern_dot(a, b, n), y = moe_kern_dot_ref(a, b, n);
        same &= memcmp(&x, &y, 4) == 0;
        double exact = 0;
        for (int i = 0; i < n; i++) exact += (double)a[i] * b[i];
        worst = fmax(worst, fabs(exact - x));
    }
    CHECK(same, "SIMD dot differs from ref");
    CHECK(worst < 1e-4, "dot vs float64: %.3e", worst);
    printf("dot: bit-identical to ref for n = 0..300, max |err| vs float64 %.2e\n", worst);

    /* dequant rows: SIMD vs dtype reference for F16, BF16, Q8_0 */
    int types[] = {MOE_DTYPE_F16, MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0, MOE_DTYPE_F32};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k];
        uint8_t q[4096 * 4];
        float r1[4096], r2[4096];
        CHECK(moe_dtype_quant_row(t, a, q, 4096) == 0, "quant %s", moe_dtype_name(t));
        moe_dtype_dequant_row(t, q, r1, 4096);
        moe_kern_dequant_row(t, q, r2, 4096);
        CHECK(memcmp(r1, r2, sizeof r1) == 0, "dequant %s: SIMD differs from reference", moe_dtype_name(t));
    }

    /* matmul: threaded, tiled, strided vs float64 naive, for each weight type */
    moe_pool *pool = moe_pool_init(3);
    const int IN = 96, OUT = 70, T = 5, LDX = 100, LDY = 75;
    static float W[70 * 96], X[5 * 100], Y[5 * 75], Y1[5 * 75];
    static uint8_t Q[70 * 96 * 4];
    for (int i = 0; i < OUT * IN; i++) W[i] = frand();
    for (int i = 0; i < T * LDX; i++) X[i] = frand();
    float *scratch = malloc(sizeof(float) * 3 * moe_kern_scratch_floats(IN));
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k];
        size_t rb = moe_dtype_row_bytes(t, IN);
        for (int o = 0; o < OUT; o++) moe_dtype_quant_row(t, W + o * IN, Q + o * rb, IN);
        moe_wview w = {Q, t, IN, OUT, rb};
        for (int i = 0; i < T * LDY; i++) Y[i] = Y1[i] = -7.0f;
        moe_kern_matmul(pool, &w, X, LDX, Y, LDY, T, scratch, moe_kern_scratch_floats(IN));
        moe_kern_matmul(NULL, &w, X, LDX, Y1, LDY, T, scratch, moe_kern_scratch_floats(IN));
        double md = 0;
        float row[96];
        for (int tt = 0; tt < T; tt++)
            for (int o = 0; o < OUT; o++) {
                moe_dtype_dequant_row(t, Q + o * rb, row, IN);
                double e = 0;
                for (int i = 0; i < IN; i++) e += (double)row[i] * X[tt * LDX + i];
                md = fmax(md, fabs(e - Y[tt * LDY + o]));
            }
        int untouched = 1;
        for (int tt = 0; tt < T; tt++)
            for (int o = OUT; o < LDY; o++) untouched &= Y[tt * LDY + o] == -7.0f;
        printf("matmul %-5s max |err| vs float64 %.2e\n", moe_dtype_name(t), md);
        CHECK(md < 1e-4, "matmul %s error %.3e", moe_dtype_name(t), md);
        CHECK(untouched, "matmul %s wrote outside its rows", moe_dtype_name(t));
        CHECK(memcmp(Y, Y1, sizeof Y) == 0, "matmul %s: threaded differs from single-threaded", moe_dtype_name(t));
    }
    free(scratch);
    moe_pool_free(pool);

    /* rmsnorm, softmax, swiglu against their formulas */
    float x[37], w[37], y[37];
    for (int i = 0; i < 37; i++) {
        x[i] = frand() * 3;
        w[i] = frand();
    }
    moe_kern_rmsnorm(y, x, w, 37, 1e-6f);
    double ss = 0;
    for (int i = 0; i < 37; i++) ss += (double)x[i] * x[i];
    double sc = 1.0 / sqrt(ss / 37 + 1e-6), me = 0;
    for (int i = 0; i < 37; i++) me = fmax(me, fabs(x[i] * sc * w[i] - y[i]));
    CHECK(me < 1e-6, "rmsnorm error %.3e", me);
    memcpy(y, x, sizeof y);
    moe_kern_softmax(y, 37);
    double sum = 0, mx = -1e9, se = 0;
    for (int i = 0; i < 37; i++) mx = fmax(mx, x[i]);
    for (int i = 0; i < 37; i++) sum += exp(x[i] - mx);
    for (int i = 0; i < 37; i++) se = fmax(se, fabs(exp(x[i] - mx) / sum - y[i]));
    CHECK(se < 1e-7, "softmax error %.3e", se);
    memcpy(y, x, sizeof y);
    moe_kern_swiglu(y, w, 37);
    double ge = 0;
    for (int i = 0; i < 37; i++) ge = fmax(ge, fabs(x[i] / (1 + exp(-x[i])) * w[i] - y[i]));
    CHECK(ge < 1e-6, "swiglu error %.3e", ge);
    return test_done();
}
