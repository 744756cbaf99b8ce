/* moekit tools: import Hugging Face checkpoints (`moe convert`) and quantize GGUF models
 * (`moe quantize`). Both stream one tensor at a time, so a model larger than RAM converts; the
 * largest single output tensor (plus a bounded row buffer) is all that is held in memory. */
#ifndef MOE_TOOLS_H
#define MOE_TOOLS_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Called after each output tensor: its index, count, name, bytes written so far and in total. */
typedef void (*moe_tools_progress_fn)(void *ud, int64_t i, int64_t n, const char *name, uint64_t done,
                                      uint64_t total);
/* Informational lines ("skipping 45 tensors of MTP layer 61", ...). */
typedef void (*moe_tools_note_fn)(void *ud, const char *msg);

typedef struct moe_convert_params {
    int dtype;           /* matrices: MOE_DTYPE_F32, F16 (default), BF16 or Q8_0; norms, router,
                            biases and 1-D tensors stay F32; Q8_0 falls back to F16 when a row
                            is not a multiple of 32 (as llama.cpp's converter) */
    const char *pre;     /* tokenizer.ggml.pre override; NULL = detect from tokenizer.json */
    const char *name;    /* general.name; NULL = the directory's base name */
    moe_tools_progress_fn progress;
    moe_tools_note_fn note;
    void *ud;
} moe_convert_params;

moe_convert_params moe_convert_default_params(void);
/* Convert HF_DIR (config.json, tokenizer.json, tokenizer_config.json, safetensors) to a deepseek2
 * GGUF at out_path. Architectures: DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (anything else is
 * MOE_ERR_UNSUPPORTED with a message naming it). err receives a one-line message on failure. */
moe_status moe_convert(const char *hf_dir, const char *out_path, const moe_convert_params *p, char *err,
                       size_t errlen);

/* Per-tensor result of moe_quantize. */
typedef struct moe_quant_report {
    const char *name;
    int type_in, type_out;
    int64_t n_elem;
    uint64_t bytes_in, bytes_out;
    double rms_err;  /* sqrt(mean((dequant(out) - dequant(in))²)) */
    double rms_val;  /* sqrt(mean(dequant(in)²)) */
} moe_quant_report;
typedef void (*moe_quant_report_fn)(void *ud, const moe_quant_report *r);

typedef struct moe_quantize_params {
    int type;            /* MOE_DTYPE_Q8_0, Q4_0, Q4_K, Q5_K or Q6_K (also F16, BF16, F32) */
    int n_threads;       /* 0 = number of CPUs */
    moe_tools_progress_fn progress;
    moe_quant_report_fn report;
    void *ud;
} moe_quantize_params;

moe_quantize_params moe_quantize_default_params(void);
/* Type a tensor gets when quantizing to `type` (llama.cpp rules): 1-D tensors, norms,
 * ffn_gate_inp and exp_probs_b keep their type (F32); rows that are not a multiple of the block
 * fall back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, then F16 when ne[0] % 32 != 0; Q4_0/Q8_0 -> F16). */
int moe_quantize_tensor_type(const char *name, int n_dims, const int64_t *ne, int type_in, int type);
/* Quantize every tensor of in_path into out_path (all keys copied, general.file_type updated). */
moe_status moe_quantize(const char *in_path, const char *out_path, const moe_quantize_params *p, char *err,
                        size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
