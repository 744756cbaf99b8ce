/* moekit: safetensors reader (mmap, zero-copy, validated) and a small writer.
 *
 * A safetensors file is: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data buffer (offsets are relative to its start).
 * Shapes are in PyTorch order (slowest dimension first), the reverse of GGUF's ne order.
 *
 * Reader: the header is validated at open time (JSON, field types, known dtype, rank, shape
 * product without overflow, byte length == elements × dtype size, offsets inside the file, no
 * two tensors overlapping, header size limit, duplicate names); a bad file gives
 * MOE_ERR_FORMAT with a message naming the tensor and field. After open the object is
 * read-only and may be shared by threads.
 *
 * Checkpoint directories: model.safetensors, or shards listed by model.safetensors.index.json
 * ("weight_map": name -> file). Rows can be read as float32 from F32/F16/BF16/F64 and
 * DeepSeek-V3's F8_E4M3 weights, which are multiplied by their block-wise
 * `<name>_scale_inv` (one float per 128×128 block) as llama.cpp's converter does. */
#ifndef MOE_SAFETENSORS_H
#define MOE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of safetensors (values are ours, names are the file's strings). */
typedef enum moe_st_dtype {
    MOE_ST_BOOL = 0,
    MOE_ST_U8 = 1,
    MOE_ST_I8 = 2,
    MOE_ST_F8_E5M2 = 3,
    MOE_ST_F8_E4M3 = 4,
    MOE_ST_I16 = 5,
    MOE_ST_U16 = 6,
    MOE_ST_F16 = 7,
    MOE_ST_BF16 = 8,
    MOE_ST_I32 = 9,
    MOE_ST_U32 = 10,
    MOE_ST_F32 = 11,
    MOE_ST_F64 = 12,
    MOE_ST_I64 = 13,
    MOE_ST_U64 = 14,
    MOE_ST_DTYPE_COUNT = 15,
} moe_st_dtype;

#define MOE_ST_MAX_DIMS 8
/* Largest header accepted (the reference implementation's limit). */
#define MOE_ST_MAX_HEADER (100u * 1000u * 1000u)

/* "BF16", "F8_E4M3", ... or NULL. */
const char *moe_st_dtype_name(int dtype);
/* Bytes per element (1, 2, 4 or 8), 0 for an invalid id. */
size_t moe_st_dtype_size(int dtype);

/* One tensor of a file. Pointers are borrowed from the moe_st object. */
typedef struct moe_st_tensor {
    const char *name;              /* NUL-terminated */
    int dtype;                     /* moe_st_dtype */
    int n_dims;                    /* 0..MOE_ST_MAX_DIMS */
    int64_t shape[MOE_ST_MAX_DIMS]; /* PyTorch order; unused entries are 1 */
    int64_t n_elem;
    uint64_t offset;               /* absolute byte offset in the file */
    uint64_t nbytes;
    const void *data;              /* into the mapping (may be unaligned) */
} moe_st_tensor;

typedef struct moe_st moe_st;

/* Open and validate one .safetensors file by mmap. *out is NULL on failure and err receives a
 * one-line message (file, tensor, field). */
moe_status moe_st_open(const char *path, moe_st **out, char *err, size_t errlen);
/* The same over a caller-owned buffer that must outlive the object (tests, fuzzing). */
moe_status moe_st_open_mem(const void *buf, size_t len, moe_st **out, char *err, size_t errlen);
void moe_st_close(moe_st *f);
int64_t moe_st_n_tensors(const moe_st *f);
/* Tensors in file order of their data (sorted by offset). */
const moe_st_tensor *moe_st_tensor_at(const moe_st *f, int64_t i);
const moe_st_tensor *moe_st_find(const moe_st *f, const char *name);
/* String value of __metadata__[key], or NULL. */
const char *moe_st_metadata(const moe_st *f, const char *key);

/* Convert n elements starting at element `first` of t to float32 (F32, F16, BF16, F64, F8_E4M3,
 * F8_E5M2; no scaling). MOE_ERR_UNSUPPORTED for integer dtypes, MOE_ERR_RANGE if out of bounds. */
moe_status moe_st_read_f32(const moe_st_tensor *t, int64_t first, int64_t n, float *dst);
/* One float8 e4m3fn value (OCP FN variant: no infinities, 0x7F/0xFF are NaN, max 448). */
float moe_st_f8e4m3_to_f32(uint8_t v);

/* ---- checkpoint directories (single file or sharded) ---- */
typedef struct moe_st_dir moe_st_dir;

/* Open HF_DIR/model.safetensors.index.json and its shards (file names must be plain names inside
 * the directory; every tensor of the weight map must be in its shard, none twice), or
 * HF_DIR/model.safetensors. */
moe_status moe_st_dir_open(const char *dir, moe_st_dir **out, char *err, size_t errlen);
void moe_st_dir_close(moe_st_dir *d);
int64_t moe_st_dir_n_tensors(const moe_st_dir *d);
/* Tensors of all shards, sorted by name. */
const moe_st_tensor *moe_st_dir_tensor_at(const moe_st_dir *d, int64_t i);
const moe_st_tensor *moe_st_dir_find(const moe_st_dir *d, const char *name);
/* Total bytes of tensor data over all shards. */
uint64_t moe_st_dir_data_bytes(const moe_st_dir *d);

/* Read rows [row0, row0+n_rows) of tensor `name` as float32 into dst. A tensor of rank >= 2 is
 * viewed as shape[0] rows of n_elem/shape[0] values; rank 0 or 1 is one row. F8_E4M3 weights are multiplied by `<name>_scale_inv` (F32/BF16/F16, shape
 * [ceil(rows/block_rows), ceil(cols/block_cols)], block 128×128 unless set otherwise). The
 * message names the tensor on failure. */
moe_status moe_st_dir_read_rows(const moe_st_dir *d, const char *name, int64_t row0, int64_t n_rows, float *dst,
                                char *err, size_t errlen);
/* Block size of the FP8 scales (DeepSeek-V3: quantization_config.weight_block_size = [128, 128]). */
void moe_st_dir_set_fp8_block(moe_st_dir *d, int64_t block_rows, int64_t block_cols);

/* ---- writer (tests and tools) ---- */
typedef struct moe_st_wtensor {
    const char *name;
    int dtype;       /* moe_st_dtype */
    int n_dims;
    const int64_t *shape; /* PyTorch order */
    const void *data;     /* n_elem × dtype size bytes */
} moe_st_wtensor;

/* Write a .safetensors file (header padded with spaces to a multiple of 8 bytes, tensors in the
 * given order, contiguous). meta: NULL or a NULL-terminated list of key, value, key, value, ...
 * strings for __metadata__. */
moe_status moe_st_write(const char *path, const moe_st_wtensor *ts, size_t n, const char *const *meta, char *err,
                        size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
