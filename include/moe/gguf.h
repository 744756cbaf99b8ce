/* moekit: GGUF v2/v3 reader (mmap, zero-copy) and writer.
 *
 * Reader: every header field is validated at open time (magic, version, counts, string and
 * array lengths, value types, tensor dims and element counts, overflow, offsets, alignment);
 * a bad file gives MOE_ERR_FORMAT and a message naming the field and its byte offset.
 * After a successful open, every accessor is bounds-safe and the object is read-only, so a
 * moe_gguf may be shared between threads.
 *
 * Writer: collects key/values and tensor infos, then streams the file (header, infos,
 * padding, tensor data) so models larger than RAM can be written tensor by tensor.
 * Files written load in llama.cpp (spec gguf.md §5 writer recipe). */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "moe/dtype.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Value types of key/value records (spec gguf.md §3). */
typedef enum moe_gguf_type {
    MOE_GGUF_TYPE_UINT8 = 0,
    MOE_GGUF_TYPE_INT8 = 1,
    MOE_GGUF_TYPE_UINT16 = 2,
    MOE_GGUF_TYPE_INT16 = 3,
    MOE_GGUF_TYPE_UINT32 = 4,
    MOE_GGUF_TYPE_INT32 = 5,
    MOE_GGUF_TYPE_FLOAT32 = 6,
    MOE_GGUF_TYPE_BOOL = 7,
    MOE_GGUF_TYPE_STRING = 8,
    MOE_GGUF_TYPE_ARRAY = 9,
    MOE_GGUF_TYPE_UINT64 = 10,
    MOE_GGUF_TYPE_INT64 = 11,
    MOE_GGUF_TYPE_FLOAT64 = 12,
} moe_gguf_type;

/* Name of a value type ("uint32", "string", ...) or "invalid". */
const char *moe_gguf_type_name(int type);

/* A borrowed view of a byte string inside the file (not NUL-terminated). */
typedef struct moe_str {
    const char *ptr;
    uint64_t len;
} moe_str;

/* A tensor as described by its info record; `data` points into the mapping (borrowed,
 * valid until moe_gguf_close). ne[] beyond n_dims are 1. */
typedef struct moe_gguf_tensor {
    moe_str name;
    int type;          /* moe_dtype id */
    int n_dims;        /* 1..4 as stored (0 is read as 1) */
    int64_t ne[4];
    uint64_t offset;   /* relative to the data section */
    uint64_t nbytes;
    const void *data;
} moe_gguf_tensor;

typedef struct moe_gguf moe_gguf;

/* Open and validate a GGUF file by mmap. On failure *out is NULL and `err` (if not NULL)
 * receives a one-line message naming the problem (field and byte offset for MOE_ERR_FORMAT). */
moe_status moe_gguf_open(const char *path, moe_gguf **out, char *err, size_t errlen);
/* The same over a caller-owned buffer that must outlive the object (tests, fuzzing). */
moe_status moe_gguf_open_mem(const void *buf, size_t len, moe_gguf **out, char *err,
                             size_t errlen);
/* Unmap and free. NULL is allowed. */
void moe_gguf_close(moe_gguf *g);

uint32_t moe_gguf_version(const moe_gguf *g);
uint32_t moe_gguf_alignment(const moe_gguf *g);
uint64_t moe_gguf_data_offset(const moe_gguf *g); /* absolute offset of the data section */
uint64_t moe_gguf_file_size(const moe_gguf *g);
/* Base address of the mapping (borrowed). */
const void *moe_gguf_base(const moe_gguf *g);

/* ---- key/value records ---- */
int64_t moe_gguf_n_kv(const moe_gguf *g);
/* Index of a key, or -1. */
int64_t moe_gguf_find_key(const moe_gguf *g, const char *key);
moe_str moe_gguf_kv_key(const moe_gguf *g, int64_t i);
int moe_gguf_kv_type(const moe_gguf *g, int64_t i); /* moe_gguf_type */
/* For ARRAY values: element type and count. */
int moe_gguf_arr_type(const moe_gguf *g, int64_t i);
uint64_t moe_gguf_arr_n(const moe_gguf *g, int64_t i);
/* For numeric arrays: pointer to the packed little-endian elements (may be unaligned). */
const void *moe_gguf_arr_data(const moe_gguf *g, int64_t i);
/* Pointer to record i's encoded value inside the file (may be unaligned): scalars: the value;
 * STRING: the u64 length then the bytes; ARRAY: the first element. NULL for a bad index. */
const void *moe_gguf_kv_data(const moe_gguf *g, int64_t i);
/* Size in bytes of a scalar value type (1, 2, 4 or 8); 0 for STRING, ARRAY and invalid ids. */
size_t moe_gguf_type_size(int type);
/* For STRING arrays: element j (O(1): an offset index is built at open). */
moe_str moe_gguf_arr_str(const moe_gguf *g, int64_t i, uint64_t j);

/* Typed getters by key. MOE_ERR_NOTFOUND if absent (message not set), MOE_ERR_FORMAT if the
 * stored type differs (the message names key, expected and actual type). Integer getters
 * accept only their exact type, as llama.cpp does. */
moe_status moe_gguf_get_u32(const moe_gguf *g, const char *key, uint32_t *out);
moe_status moe_gguf_get_i32(const moe_gguf *g, const char *key, int32_t *out);
moe_status moe_gguf_get_u64(const moe_gguf *g, const char *key, uint64_t *out);
moe_status moe_gguf_get_f32(const moe_gguf *g, const char *key, float *out);
moe_status moe_gguf_get_bool(const moe_gguf *g, const char *key, int *out);
moe_status moe_gguf_get_str(const moe_gguf *g, const char *key, moe_str *out);
/* Any scalar type: copies moe_gguf_type_size(type) bytes into out when the stored type is
 * exactly `type` (MOE_ERR_INVAL if `type` is not a scalar type). */
moe_status moe_gguf_get_scalar(const moe_gguf *g, const char *key, int type, void *out);
/* Array getter: checks the key is an ARRAY of element type `elem_type`. */
moe_status moe_gguf_get_arr(const moe_gguf *g, const char *key, int elem_type, int64_t *index,
                            uint64_t *n);
/* Message of the last failed getter on this object (not thread-safe for getters racing). */
const char *moe_gguf_errmsg(const moe_gguf *g);

/* ---- tensors ---- */
int64_t moe_gguf_n_tensors(const moe_gguf *g);
const moe_gguf_tensor *moe_gguf_tensor_at(const moe_gguf *g, int64_t i);
/* Tensor by name, or NULL. */
const moe_gguf_tensor *moe_gguf_find_tensor(const moe_gguf *g, const char *name);

/* ---- writer ---- */
typedef struct moe_gguf_writer moe_gguf_writer;

moe_status moe_gguf_writer_init(moe_gguf_writer **out);
void moe_gguf_writer_free(moe_gguf_writer *w);
/* Scalars. Keys must be unique; a repeated key is MOE_ERR_INVAL. Strings are copied. */
moe_status moe_gguf_writer_set_u32(moe_gguf_writer *w, const char *key, uint32_t v);
moe_status moe_gguf_writer_set_i32(moe_gguf_writer *w, const char *key, int32_t v);
moe_status moe_gguf_writer_set_f32(moe_gguf_writer *w, const char *key, float v);
moe_status moe_gguf_writer_set_bool(moe_gguf_writer *w, const char *key, int v);
moe_status moe_gguf_writer_set_u64(moe_gguf_writer *w, const char *key, uint64_t v);
/* Any scalar type (UINT8 ... FLOAT64 except STRING/ARRAY): moe_gguf_type_size(type) bytes
 * from *v, little-endian. */
moe_status moe_gguf_writer_set_scalar(moe_gguf_writer *w, const char *key, int type, const void *v);
moe_status moe_gguf_writer_set_str(moe_gguf_writer *w, const char *key, const char *v);
moe_status moe_gguf_writer_set_strn(moe_gguf_writer *w, const char *key, const char *v,
                                    uint64_t len);
/* Numeric array of n elements of `elem_type` (packed little-endian values, copied). */
moe_status moe_gguf_writer_set_arr(moe_gguf_writer *w, const char *key, int elem_type,
                                   const void *data, uint64_t n);
/* String array (copied). lens may be NULL for NUL-terminated strings. */
moe_status moe_gguf_writer_set_arr_str(moe_gguf_writer *w, const char *key,
                                       const char *const *strs, const uint64_t *lens,
                                       uint64_t n);
/* Copy every key/value of `src` except those for which skip(key) returns non-zero. */
moe_status moe_gguf_writer_copy_kv(moe_gguf_writer *w, const moe_gguf *src,
                                   int (*skip)(const char *key, void *ud), void *ud);
/* Declare a tensor; `data` (nbytes of it) may be NULL if a fill callback provides it at
 * write time. The pointer is borrowed until moe_gguf_writer_write returns. */
moe_status moe_gguf_writer_add_tensor(moe_gguf_writer *w, const char *name, int type, int n_dims,
                                      const int64_t *ne, const void *data);

/* Produces tensor `i`'s bytes into `buf` (nbytes of them). Non-zero return aborts the write. */
typedef int (*moe_gguf_fill_fn)(void *ud, int64_t i, void *buf, uint64_t nbytes);
/* Progress callback: bytes written so far of total. */
typedef void (*moe_gguf_progress_fn)(void *ud, uint64_t done, uint64_t total);

/* Write the file: to `path`.tmp, fsync, rename to `path`. Tensors declared without data are
 * produced by `fill` one at a time. `err` receives a message on failure. */
moe_status moe_gguf_writer_write(moe_gguf_writer *w, const char *path, moe_gguf_fill_fn fill,
                                 void *fill_ud, moe_gguf_progress_fn progress, void *progress_ud,
                                 char *err, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
