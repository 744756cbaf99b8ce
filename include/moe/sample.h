/* moekit: token samplers (temperature, top-k, top-p, seed).
 *
 * Order: top-k on the logits, softmax at temperature T, top-p (smallest set whose probability
 * reaches p), then one draw from a seeded xoshiro256** stream. T <= 0 is greedy (the first
 * argmax), and so is a logit of +inf or a vector with nothing above -inf. NaN logits are never
 * drawn. The same seed and logits give the same tokens on every CPU (the SIMD forms compute the
 * scalar reference's floats bit for bit). Cost O(V) per token, SIMD where the CPU has it.
 * A sampler is owned by one sequence (different samplers may run on different threads at
 * once); buffers are allocated once at init. */
#ifndef MOE_SAMPLE_H
#define MOE_SAMPLE_H

#include <stdint.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_sampler_params {
    float temp;    /* 0 = greedy */
    float top_p;   /* 1 = off */
    int32_t top_k; /* 0 = off */
    uint64_t seed;
} moe_sampler_params;

typedef struct moe_sampler moe_sampler;

moe_sampler_params moe_sampler_default_params(void); /* temp 0.8, top_p 0.95, top_k 40, seed 0 */
moe_status moe_sampler_init(const moe_sampler_params *p, int32_t n_vocab, moe_sampler **out);
void moe_sampler_free(moe_sampler *s);
/* Pick the next token from n_vocab logits. */
int32_t moe_sampler_sample(moe_sampler *s, const float *logits);

#ifdef __cplusplus
}
#endif
#endif
