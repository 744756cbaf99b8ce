/* moekit: element types of tensors (the ggml type ids, as stored in GGUF files).
 *
 * Values equal ggml's `enum ggml_type` so they can be written to disk unchanged. */
#ifndef MOE_DTYPE_H
#define MOE_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_dtype {
    MOE_DTYPE_F32 = 0,
    MOE_DTYPE_F16 = 1,
    MOE_DTYPE_Q4_0 = 2,
    MOE_DTYPE_Q4_1 = 3,
    MOE_DTYPE_Q5_0 = 6,
    MOE_DTYPE_Q5_1 = 7,
    MOE_DTYPE_Q8_0 = 8,
    MOE_DTYPE_Q8_1 = 9,
    MOE_DTYPE_Q2_K = 10,
    MOE_DTYPE_Q3_K = 11,
    MOE_DTYPE_Q4_K = 12,
    MOE_DTYPE_Q5_K = 13,
    MOE_DTYPE_Q6_K = 14,
    MOE_DTYPE_Q8_K = 15,
    MOE_DTYPE_I8 = 24,
    MOE_DTYPE_I16 = 25,
    MOE_DTYPE_I32 = 26,
    MOE_DTYPE_I64 = 27,
    MOE_DTYPE_F64 = 28,
    MOE_DTYPE_BF16 = 30,
    MOE_DTYPE_COUNT = 43, /* ggml's GGML_TYPE_COUNT: ids >= this are invalid */
} moe_dtype;

/* Elements per block (1 for plain types); 0 when the id is unknown or removed. */
int64_t moe_dtype_block_size(int type);
/* Bytes per block; 0 when the id is unknown or removed. */
size_t moe_dtype_block_bytes(int type);
/* Lower-case name ("f32", "q8_0", ...) or NULL for an unknown id. */
const char *moe_dtype_name(int type);
/* Parse a name as printed by moe_dtype_name (case-insensitive); -1 if unknown. */
int moe_dtype_from_name(const char *name);
/* 1 when this build can compute with weights of this type (dequantize rows). */
int moe_dtype_supported(int type);
/* Bytes of a row of n elements; 0 if n is not a multiple of the block size. */
size_t moe_dtype_row_bytes(int type, int64_t n);

/* Scalar conversions (exact bit behaviour of ggml's reference, spec gguf.md §8). */
float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);
float moe_bf16_to_f32(uint16_t h);
uint16_t moe_f32_to_bf16(float f);

/* Dequantize one row of n elements of `type` from `src` into `dst` (n floats).
 * Returns MOE_ERR_UNSUPPORTED (as int) for types this build cannot read. */
int moe_dtype_dequant_row(int type, const void *src, float *dst, int64_t n);
/* Quantize/convert n floats into `type`: F32, F16, BF16, Q8_0, Q4_0, Q5_0 and Q4_K following
 * ggml's reference quantizers (Q8_0 and Q4_0 bit-identical; Q4_0/Q4_K are the no-imatrix paths
 * of llama-quantize). n must be a
 * multiple of the block size (else MOE_ERR_INVAL); other types give MOE_ERR_UNSUPPORTED.
 * Returns 0 or a negative moe_status. */
int moe_dtype_quant_row(int type, const float *src, void *dst, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
