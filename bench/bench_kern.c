/* bench_kern: W8A8 matrix products, one thread, timed in thread CPU time (on a busy shared
 * machine wall time measures the neighbours).
 *
 * usage: bench_kern [ROWS] [IN]   (default 16384 × 2048, Q8_0: 35.7 MB, beyond the caches)
 * Prints: the int8 peak probe (ops/s, one thread), then for T = 1, 2, 4, 8, 16, 64, 256 tokens
 * the time per product, weight bytes/s (the decode figure) and int8 ops/s as % of the peak
 * (the prefill figure); for T = 1 also the F32-activation path (dequantize + F32 dot). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kern/kern.h"
#include "moe/dtype.h"

static double tcpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atoll(argv[1]) : 16384, in = argc > 2 ? atoll(argv[2]) : 2048;
    int types[] = {MOE_DTYPE_Q8_0, MOE_KTYPE_Q8_0_R16, MOE_DTYPE_Q4_0}; /* R16: the Q8_0 matrix repacked (kern.h) */
    double peak = moe_kern_int8_peak(NULL, 0.3);
    printf("simd %s, int8 peak (1 thread) %.1f Gops/s\n", moe_kern_simd_name(), peak / 1e9);
    float *xf = malloc(sizeof(float) * 256 * (size_t)in), *y = malloc(sizeof(float) * 256 * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)in);
    moe_q8a *xq = malloc(sizeof(moe_q8a) * 256 * (size_t)(in / 32));
    uint32_t s = 1;
    for (int64_t i = 0; i < 256 * in; i++) {
        s = s * 1664525u + 1013904223u;
        xf[i] = (float)((int32_t)s >> 8) / 8388608.0f;
    }
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        int t = types[k], r16 = t == MOE_KTYPE_Q8_0_R16, qt = r16 ? MOE_DTYPE_Q8_0 : t;
        size_t rb = moe_dtype_row_bytes(qt, in);
        uint8_t *w = aligned_alloc(64, (rb * (size_t)rows + 63) / 64 * 64);
        for (int64_t o = 0; o < rows; o++) {
            for (int64_t i = 0; i < in; i++) row[i] = xf[(o * 7 + i) % (256 * in)];
            moe_dtype_quant_row(qt, row, w + (size_t)o * rb, in);
        }
        if (r16) {
            uint8_t *p = aligned_alloc(64, (rb * (size_t)rows + 63) / 64 * 64);
            moe_kern_repack_q8_0_r16(w, rb, in, 0, rows / 16, p);
            free(w);
            w = p;
        }
        moe_wview wv = {w, t, in, rows, rb};
        int Ts[] = {1, 2, 4, 8, 16, 64, 256};
        for (size_t q = 0; q < sizeof Ts / sizeof Ts[0]; q++) {
            int64_t T = Ts[q];
            moe_kern_mmq_rows(&wv, xq, T, y, rows, 0, rows); /* warm */
            double best = 1e9;
            for (int r = 0; r < 3; r++) {
                double t0 = tcpu();
                for (int64_t tt = 0; tt < T; tt++) moe_kern_quant_act(xf + tt * in, xq + tt * (in / 32), in);
                moe_kern_mmq_rows(&wv, xq, T, y, rows, 0, rows);
                double dt = tcpu() - t0;
                best = dt < best ? dt : best;
            }
            double ops = 2.0 * (double)rows * (double)in * (double)T;
            printf("%-5s T=%-4lld %8.2f ms  weights %6.2f GB/s  %7.1f Gops/s  %5.1f%% of int8 peak\n", r16 ? "r16" : moe_dtype_name(t),
                   (long long)T, best * 1e3, (double)rb * (double)rows / best / 1e9, ops / best / 1e9,
                   peak > 0 ? 100.0 * ops / best / peak : 0.0);
        }
        /* F32-activation path for comparison */
        float *scratch = malloc(sizeof(float) * moe_kern_scratch_floats(in));
        moe_kern_ws ws = {scratch, moe_kern_scratch_floats(in), NULL, 0};
        double t0 = tcpu();
        moe_kern_matmul(NULL, &wv, xf, in, y, rows, 1, &ws);
        double dt = tcpu() - t0;
        printf("%-5s T=1    %8.2f ms  weights %6.2f GB/s  (F32 activations: dequantize + F32 dot)\n", r16 ? "r16" : moe_dtype_name(t),
               dt * 1e3, (double)rb * (double)rows / dt / 1e9);
        free(scratch);
        free(w);
    }
    free(xf);
    free(y);
    free(row);
    free(xq);
    return 0;
}
