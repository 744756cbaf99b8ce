/* moekit kernels (internal API): matrix products over weights of any supported dtype and
 * the small vector ops of the forward pass.
 *
 * Weights follow GGUF/ggml convention: a weight with ne = [in, out] has `out` rows of `in`
 * contiguous elements, and y = W·x means y[o] = Σ_i W[o][i]·x[i]. Every function has a
 * scalar `_ref` form in kern/ref (the specification, kept forever); SIMD forms in kern/cpu are
 * picked at run time from CPU features and tested against the ref. Accumulation order is
 * fixed per output element, so results do not depend on the number of threads. */
#ifndef MOE_KERN_H
#define MOE_KERN_H

#include <stddef.h>
#include <stdint.h>

#include "core/pool.h"

/* A borrowed 2-D weight view: `out` rows of `in` elements of `type`, rows `row_bytes` apart. */
typedef struct moe_wview {
    const uint8_t *data;
    int type;
    int64_t in, out;
    size_t row_bytes;
} moe_wview;

/* Rows dequantized per tile (each thread dequantizes a tile once, then reuses it for all T). */
#define MOE_KERN_TILE 16

/* Per-thread scratch floats that moe_kern_matmul needs for inputs of length `in`. */
static inline size_t moe_kern_scratch_floats(int64_t in) { return (size_t)MOE_KERN_TILE * (size_t)in + 64; }

/* y[t*ldy + o] = Σ_i W[o][i] · x[t*ldx + i] for t < T, o < w->out. `scratch` holds
 * n_threads × moe_kern_scratch_floats(max in) floats. Rows are split across the pool. */
void moe_kern_matmul(moe_pool *pool, const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy,
                     int64_t T, float *scratch, size_t scratch_per_thread);
/* Single-threaded variant over rows [o0, o1) (callers that parallelize themselves). */
void moe_kern_matmul_rows(const moe_wview *w, const float *x, int64_t ldx, float *y, int64_t ldy, int64_t T,
                          int64_t o0, int64_t o1, float *scratch);

/* Dot product of n floats (SIMD where available; fixed summation order per n). */
float moe_kern_dot(const float *a, const float *b, int64_t n);
float moe_kern_dot_ref(const float *a, const float *b, int64_t n);
/* y += a·x */
void moe_kern_axpy(float *y, float a, const float *x, int64_t n);
/* Dequantize a row (SIMD where available); same results as moe_dtype_dequant_row. */
void moe_kern_dequant_row(int type, const void *src, float *dst, int64_t n);

/* RMSNorm (spec deepseek2.md §4.2): sum of squares in double, y = (x·scale)·w. */
void moe_kern_rmsnorm(float *y, const float *x, const float *w, int64_t n, float eps);
/* Numerically stable in-place softmax. */
void moe_kern_softmax(float *x, int64_t n);
/* x[i] = silu(x[i]) · u[i] */
void moe_kern_swiglu(float *x, const float *u, int64_t n);

/* Name of the SIMD level in use ("avx2", "scalar", ...). */
const char *moe_kern_simd_name(void);

#endif
