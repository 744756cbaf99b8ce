/* moekit kernels, scalar reference forms. These are the specification the SIMD forms are
 * tested against; they stay forever. The dot product sums in 8 interleaved lanes and then
 * pairwise, the same order the AVX2 form uses, so both give bit-identical results. */
#include <math.h>

#include "kern/kern.h"

float moe_kern_dot_ref(const float *a, const float *b, int64_t n) {
    float acc[32] = {0};
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k++) acc[k] = fmaf(a[i + k], b[i + k], acc[k]);
    /* reduce 4 vectors of 8 lanes: (v0+v1)+(v2+v3), then lanes pairwise */
    float v[8];
    for (int k = 0; k < 8; k++) v[k] = (acc[k] + acc[8 + k]) + (acc[16 + k] + acc[24 + k]);
    float s = ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

void moe_kern_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float mean = (float)(ss / (double)n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

void moe_kern_softmax(float *x, int64_t n) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

void moe_kern_swiglu(float *x, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i])) * u[i];
}

void moe_kern_axpy(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}
