/* moekit tests: hostile GGUF files, made from one small valid file written with the writer.
 *
 * gh_base() writes the base file (8 keys of every kind, 3 tensors: F32, Q8_0, F16) into a
 * caller's temporary folder and reads it back; gh_walk() finds the byte offset of every header
 * field with a small parser of its own (trusting its input: it only ever reads the base file);
 * each entry of k_gh_cases patches a copy of the base so that exactly one rule of spec gguf.md
 * is broken, and names the words the reader's message must contain. Shared by
 * test_gguf_hostile.c (all cases, in memory), test_gguf_corpus.c (the checked-in files) and
 * gen_gguf_corpus.c (writes tests/corpus/gguf once, and valid fuzz seeds). */
#ifndef MOE_TEST_GGUF_HOSTILE_H
#define MOE_TEST_GGUF_HOSTILE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/gguf.h"

#define GH_NKV 8
#define GH_NT 3

typedef struct {
    size_t key_at[GH_NKV];  /* u64 key length */
    size_t type_at[GH_NKV]; /* i32 value type */
    size_t val_at[GH_NKV];  /* value (arrays: i32 element type) */
    size_t name_at[GH_NT];  /* u64 name length */
    size_t ndims_at[GH_NT];
    size_t ne_at[GH_NT];
    size_t ttype_at[GH_NT];
    size_t off_at[GH_NT];
    size_t infos_end, data_at, data_end; /* data_end: end of the last tensor's bytes */
    uint64_t nbytes[GH_NT];
} gh_layout;

/* Write the base file to dir/name with the writer; returns a malloc'd copy of its bytes. */
static inline uint8_t *gh_base_write(const char *path, size_t *len) {
    moe_gguf_writer *w;
    if (moe_gguf_writer_init(&w)) return NULL;
    static const float f3[3] = {1.5f, 2.5f, 3.5f};
    static const char *strs[3] = {"ab", "", "cde"};
    moe_gguf_writer_set_str(w, "general.architecture", "deepseek2"); /* 0 */
    moe_gguf_writer_set_u32(w, "test.u32", 7);                       /* 1 */
    moe_gguf_writer_set_u32(w, "general.alignmenu", 32);             /* 2: patched into general.alignment */
    moe_gguf_writer_set_i32(w, "dup.a", 1);                          /* 3 */
    moe_gguf_writer_set_i32(w, "dup.b", 2);                          /* 4: patched into a duplicate */
    moe_gguf_writer_set_arr(w, "test.f32arr", MOE_GGUF_TYPE_FLOAT32, f3, 3); /* 5 */
    moe_gguf_writer_set_arr_str(w, "test.strs", strs, NULL, 3);      /* 6 */
    moe_gguf_writer_set_bool(w, "test.bool", 1);                     /* 7 */
    static float a[10];
    static uint8_t b[68], c[12];
    for (int i = 0; i < 10; i++) a[i] = (float)i - 4.5f;
    for (int i = 0; i < 68; i++) b[i] = (uint8_t)(i * 7 + 3);
    for (int i = 0; i < 12; i++) c[i] = (uint8_t)(0x3c ^ i);
    int64_t ne_a[1] = {10}, ne_b[2] = {32, 2}, ne_c[2] = {3, 2};
    moe_gguf_writer_add_tensor(w, "t.a", MOE_DTYPE_F32, 1, ne_a, a);  /* 40 bytes, padded to 64 */
    moe_gguf_writer_add_tensor(w, "t.b", MOE_DTYPE_Q8_0, 2, ne_b, b); /* 68 bytes, padded to 96 */
    moe_gguf_writer_add_tensor(w, "t.c", MOE_DTYPE_F16, 2, ne_c, c);  /* 12 bytes */
    char err[256];
    moe_status st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, err, sizeof err);
    moe_gguf_writer_free(w);
    if (st) {
        fprintf(stderr, "gh_base_write: %s\n", err);
        return NULL;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static inline uint64_t gh_rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static inline uint32_t gh_rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline void gh_wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static inline void gh_wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* Field offsets of the base file (an independent walk, not the reader under test). */
static inline void gh_walk(const uint8_t *b, gh_layout *L) {
    size_t p = 24;
    for (int i = 0; i < GH_NKV; i++) {
        L->key_at[i] = p;
        p += 8 + gh_rd64(b + p);
        L->type_at[i] = p;
        uint32_t t = gh_rd32(b + p);
        p += 4;
        L->val_at[i] = p;
        if (t == MOE_GGUF_TYPE_STRING) {
            p += 8 + gh_rd64(b + p);
        } else if (t == MOE_GGUF_TYPE_ARRAY) {
            uint32_t et = gh_rd32(b + p);
            uint64_t n = gh_rd64(b + p + 4);
            p += 12;
            for (uint64_t j = 0; j < n; j++) p += et == MOE_GGUF_TYPE_STRING ? 8 + gh_rd64(b + p) : moe_gguf_type_size((int)et);
        } else {
            p += moe_gguf_type_size((int)t);
        }
    }
    static const uint64_t nb[GH_NT] = {40, 68, 12};
    for (int i = 0; i < GH_NT; i++) {
        L->name_at[i] = p;
        p += 8 + gh_rd64(b + p);
        L->ndims_at[i] = p;
        uint32_t nd = gh_rd32(b + p);
        p += 4;
        L->ne_at[i] = p;
        p += 8 * nd;
        L->ttype_at[i] = p;
        p += 4;
        L->off_at[i] = p;
        p += 8;
        L->nbytes[i] = nb[i];
    }
    L->infos_end = p;
    L->data_at = (p + 31) / 32 * 32;
    L->data_end = L->data_at + 64 + 96 + 12;
}

/* One hostile case: patch a copy of the base (len may shrink), expect these words. */
typedef struct {
    const char *name;   /* also the corpus file name */
    int corpus;         /* 1: kept as a checked-in file under tests/corpus/gguf */
    const char *expect; /* substring the reader's message must contain */
    void (*patch)(uint8_t *b, size_t *len, const gh_layout *L);
} gh_case;

#define GH(fn) static void fn(uint8_t *b, size_t *len, const gh_layout *L)
GH(p_magic) { (void)len, (void)L; b[3] = 'G'; }
GH(p_ver0) { (void)len, (void)L; gh_wr32(b + 4, 0); }
GH(p_ver1) { (void)len, (void)L; gh_wr32(b + 4, 1); }
GH(p_ver4) { (void)len, (void)L; gh_wr32(b + 4, 4); }
GH(p_ver_swapped) { (void)len, (void)L; gh_wr32(b + 4, 0x03000000u); }
GH(p_nt_neg) { (void)len, (void)L; gh_wr64(b + 8, (uint64_t)-1); }
GH(p_nt_huge) { (void)len, (void)L; gh_wr64(b + 8, 1ull << 40); }
GH(p_nt_plus1) { (void)len, (void)L; gh_wr64(b + 8, GH_NT + 1); }
GH(p_nkv_neg) { (void)len, (void)L; gh_wr64(b + 16, (uint64_t)INT64_MIN); }
GH(p_nkv_huge) { (void)len, (void)L; gh_wr64(b + 16, (uint64_t)INT64_MAX); }
GH(p_nkv_plus1) { (void)len, (void)L; gh_wr64(b + 16, GH_NKV + 1); }
GH(p_key_len_huge) { (void)len; gh_wr64(b + L->key_at[1], 1ull << 40); }
GH(p_key_len_2p30) { (void)len; gh_wr64(b + L->key_at[1], (1ull << 30) + 1); }
GH(p_key_len_lying) { gh_wr64(b + L->key_at[1], *len - L->key_at[1] - 8 + 1); }
GH(p_key_empty) { (void)len; gh_wr64(b + L->key_at[3], 0); }
GH(p_key_nul) { (void)len; b[L->key_at[1] + 8 + 2] = 0; }
GH(p_vtype_13) { (void)len; gh_wr32(b + L->type_at[1], 13); }
GH(p_vtype_neg) { (void)len; gh_wr32(b + L->type_at[1], 0xffffffffu); }
GH(p_nested) { (void)len; gh_wr32(b + L->val_at[5], MOE_GGUF_TYPE_ARRAY); }
GH(p_elem_type_bad) { (void)len; gh_wr32(b + L->val_at[5], 77); }
GH(p_arr_n_2p30) { (void)len; gh_wr64(b + L->val_at[5] + 4, (1ull << 30) + 1); }
GH(p_arr_n_lying) { (void)len; gh_wr64(b + L->val_at[5] + 4, 1u << 20); }
GH(p_strarr_n_lying) { (void)len; gh_wr64(b + L->val_at[6] + 4, 1u << 20); }
GH(p_strarr_elem_huge) { (void)len; gh_wr64(b + L->val_at[6] + 12, 1ull << 31); }
GH(p_str_len_lying) { (void)len; gh_wr64(b + L->val_at[0], 1u << 20); }
GH(p_str_len_huge) { (void)len; gh_wr64(b + L->val_at[0], UINT64_MAX); }
GH(p_dup_key) { (void)len; b[L->key_at[4] + 8 + 4] = 'a'; }
GH(p_align_as_i32) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->type_at[2], MOE_GGUF_TYPE_INT32); }
GH(p_align_as_f32) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->type_at[2], MOE_GGUF_TYPE_FLOAT32); }
GH(p_align_as_u8) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->type_at[2], MOE_GGUF_TYPE_UINT8); }
GH(p_align_48) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->val_at[2], 48); }
GH(p_align_0) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->val_at[2], 0); }
GH(p_align_64) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->val_at[2], 64); }
GH(p_align_2p31) { (void)len; b[L->key_at[2] + 8 + 16] = 't'; gh_wr32(b + L->val_at[2], 1u << 31); }
GH(p_name_64) { (void)len; gh_wr64(b + L->name_at[1], 64); }
GH(p_name_empty) { (void)len; gh_wr64(b + L->name_at[1], 0); }
GH(p_name_huge) { (void)len; gh_wr64(b + L->name_at[1], 1ull << 62); }
GH(p_name_nul) { (void)len; b[L->name_at[1] + 8 + 1] = 0; }
GH(p_dup_name) { (void)len; b[L->name_at[1] + 8 + 2] = 'a'; }
GH(p_ndims_5) { (void)len; gh_wr32(b + L->ndims_at[0], 5); }
GH(p_ndims_neg) { (void)len; gh_wr32(b + L->ndims_at[0], 0xffffffffu); }
GH(p_ne_neg) { (void)len; gh_wr64(b + L->ne_at[1] + 8, (uint64_t)-2); }
GH(p_ne_huge) { (void)len; gh_wr64(b + L->ne_at[1] + 8, 1ull << 40); }
GH(p_ne_overflow) { (void)len; gh_wr64(b + L->ne_at[1], 1ull << 35); gh_wr64(b + L->ne_at[1] + 8, 1ull << 35); }
GH(p_ne_u64_overflow) { (void)len; gh_wr64(b + L->ne_at[0], 1ull << 62); } /* F32: 2^64 bytes */
GH(p_ne_block) { (void)len; gh_wr64(b + L->ne_at[1], 33); }
GH(p_ne_grow_last) { (void)len; gh_wr64(b + L->ne_at[2] + 8, 20); }
GH(p_type_removed) { (void)len; gh_wr32(b + L->ttype_at[0], 4); }
GH(p_type_removed31) { (void)len; gh_wr32(b + L->ttype_at[0], 31); }
GH(p_type_43) { (void)len; gh_wr32(b + L->ttype_at[0], 43); }
GH(p_type_neg) { (void)len; gh_wr32(b + L->ttype_at[0], 0x80000000u); }
GH(p_type_resize) { (void)len; gh_wr32(b + L->ttype_at[0], MOE_DTYPE_I64); }
GH(p_off_first_1) { (void)len; gh_wr64(b + L->off_at[0], 1); }
GH(p_off_first_32) { (void)len; gh_wr64(b + L->off_at[0], 32); }
GH(p_off_gap) { (void)len; gh_wr64(b + L->off_at[1], 96); }
GH(p_off_misaligned) { (void)len; gh_wr64(b + L->off_at[1], 40); }
GH(p_off_overlap) { (void)len; gh_wr64(b + L->off_at[2], 0); }
GH(p_off_huge) { (void)len; gh_wr64(b + L->off_at[2], UINT64_MAX - 7); }
GH(p_trunc_header) { (void)b; *len = L->infos_end - 3; }
GH(p_trunc_padding) { (void)b; *len = L->infos_end + (L->data_at - L->infos_end) / 2; }
GH(p_trunc_data) { (void)b; *len = L->data_end - 1; }
GH(p_trunc_mid_data) { (void)b; *len = L->data_at + 50; }
GH(p_trunc_12) { (void)b, (void)L; *len = 12; }
GH(p_empty) { (void)b, (void)L; *len = 0; }
#undef GH

static const gh_case k_gh_cases[] = {
    {"bad-magic", 1, "magic", p_magic},
    {"version-0", 0, "version", p_ver0},
    {"version-1", 1, "version", p_ver1},
    {"version-4", 0, "version", p_ver4},
    {"version-byteswapped", 0, "byte-swapped", p_ver_swapped},
    {"n-tensors-negative", 0, "negative", p_nt_neg},
    {"n-tensors-huge", 1, "cannot fit", p_nt_huge},
    {"n-tensors-plus1", 0, "tensor", p_nt_plus1},
    {"n-kv-negative", 0, "negative", p_nkv_neg},
    {"n-kv-huge", 1, "cannot fit", p_nkv_huge},
    {"n-kv-plus1", 0, "", p_nkv_plus1},
    {"key-len-huge", 0, "exceeds 2^30", p_key_len_huge},
    {"key-len-2p30", 0, "exceeds 2^30", p_key_len_2p30},
    {"key-len-lying", 1, "runs past the end", p_key_len_lying},
    {"key-empty", 0, "empty", p_key_empty},
    {"key-nul", 0, "NUL", p_key_nul},
    {"value-type-13", 1, "not a GGUF type", p_vtype_13},
    {"value-type-neg", 0, "not a GGUF type", p_vtype_neg},
    {"nested-array", 1, "nested", p_nested},
    {"array-elem-type-bad", 0, "not a GGUF type", p_elem_type_bad},
    {"array-len-2p30", 0, "exceeds 2^30", p_arr_n_2p30},
    {"array-len-lying", 0, "runs past the end", p_arr_n_lying},
    {"string-array-len-lying", 1, "cannot fit", p_strarr_n_lying},
    {"string-array-elem-huge", 0, "exceeds 2^30", p_strarr_elem_huge},
    {"string-len-lying", 0, "runs past the end", p_str_len_lying},
    {"string-len-huge", 0, "exceeds 2^30", p_str_len_huge},
    {"duplicate-key", 1, "duplicate key", p_dup_key},
    {"alignment-int32", 1, "expected uint32", p_align_as_i32},
    {"alignment-float32", 0, "expected uint32", p_align_as_f32},
    {"alignment-uint8", 0, "expected uint32", p_align_as_u8},
    {"alignment-48", 1, "power of two", p_align_48},
    {"alignment-0", 0, "power of two", p_align_0},
    {"alignment-64-layout-32", 0, "offset", p_align_64},
    {"alignment-2p31", 0, "", p_align_2p31},
    {"name-64-bytes", 1, "at most 63", p_name_64},
    {"name-empty", 0, "empty", p_name_empty},
    {"name-len-huge", 0, "exceeds 2^30", p_name_huge},
    {"name-nul", 0, "NUL", p_name_nul},
    {"duplicate-tensor", 1, "duplicate tensor name", p_dup_name},
    {"n-dims-5", 1, "n_dims", p_ndims_5},
    {"n-dims-neg", 0, "n_dims", p_ndims_neg},
    {"ne-negative", 1, "negative", p_ne_neg},
    {"ne-huge", 0, "cannot fit", p_ne_huge},
    {"ne-overflow-int64", 1, "overflows", p_ne_overflow},
    {"ne-bytes-overflow", 0, "byte size overflows", p_ne_u64_overflow},
    {"ne0-not-block-multiple", 1, "block size", p_ne_block},
    {"ne-last-past-eof", 0, "runs past the end", p_ne_grow_last},
    {"type-removed-4", 1, "not a valid ggml type", p_type_removed},
    {"type-removed-31", 0, "not a valid ggml type", p_type_removed31},
    {"type-43", 0, "not a valid ggml type", p_type_43},
    {"type-negative", 0, "not a valid ggml type", p_type_neg},
    {"type-resized", 0, "offset", p_type_resize},
    {"offset-first-1", 1, "offset 1, expected 0", p_off_first_1},
    {"offset-first-32", 0, "expected 0", p_off_first_32},
    {"offset-gap", 1, "offset 96, expected 64", p_off_gap},
    {"offset-misaligned", 0, "offset 40, expected 64", p_off_misaligned},
    {"offset-overlap", 0, "expected 160", p_off_overlap},
    {"offset-huge", 0, "expected 160", p_off_huge},
    {"truncated-header", 1, "truncated", p_trunc_header},
    {"truncated-padding", 0, "data section", p_trunc_padding},
    {"truncated-data", 1, "runs past the end", p_trunc_data},
    {"truncated-mid-data", 0, "runs past the end", p_trunc_mid_data},
    {"truncated-12", 0, "truncated", p_trunc_12},
    {"empty", 0, "magic", p_empty},
};
#define GH_NCASES (sizeof k_gh_cases / sizeof k_gh_cases[0])

/* Read everything an opened file offers through the public accessors (what a loader or
 * `moe info` would do); returns a checksum so the reads cannot be optimised away. Shared
 * with the fuzz target. */
static inline uint64_t gh_touch_all(const moe_gguf *g) {
    uint64_t sum = moe_gguf_version(g) + moe_gguf_alignment(g) + moe_gguf_data_offset(g);
    char key[128];
    for (int64_t i = 0; i < moe_gguf_n_kv(g); i++) {
        moe_str k = moe_gguf_kv_key(g, i);
        int t = moe_gguf_kv_type(g, i);
        const uint8_t *v = moe_gguf_kv_data(g, i);
        for (uint64_t j = 0; j < k.len; j++) sum += (uint8_t)k.ptr[j];
        snprintf(key, sizeof key, "%.*s", (int)(k.len < 100 ? k.len : 100), k.ptr);
        sum += (uint64_t)moe_gguf_find_key(g, key);
        if (t == MOE_GGUF_TYPE_ARRAY) {
            int et = moe_gguf_arr_type(g, i);
            uint64_t n = moe_gguf_arr_n(g, i);
            int64_t idx;
            uint64_t n2;
            if (moe_gguf_get_arr(g, key, et, &idx, &n2) == MOE_OK) sum += n2;
            if (et == MOE_GGUF_TYPE_STRING) {
                for (uint64_t j = 0; j <= n; j++) { /* j == n: out of range, must be empty */
                    moe_str s = moe_gguf_arr_str(g, i, j);
                    if (s.len) sum += (uint8_t)s.ptr[0] + (uint8_t)s.ptr[s.len - 1];
                }
            } else {
                size_t es = moe_gguf_type_size(et);
                const uint8_t *d = moe_gguf_arr_data(g, i);
                for (uint64_t j = 0; j < n * es; j++) sum += d[j];
            }
        } else if (t == MOE_GGUF_TYPE_STRING) {
            moe_str s;
            if (moe_gguf_get_str(g, key, &s) == MOE_OK && s.len) sum += (uint8_t)s.ptr[s.len - 1];
        } else {
            uint8_t out[8];
            if (moe_gguf_get_scalar(g, key, t, out) == MOE_OK) sum += out[0] + v[0];
            uint32_t u32;
            int32_t i32;
            uint64_t u64;
            float f;
            int bo;
            sum += (uint64_t)moe_gguf_get_u32(g, key, &u32) + (uint64_t)moe_gguf_get_i32(g, key, &i32) +
                   (uint64_t)moe_gguf_get_u64(g, key, &u64) + (uint64_t)moe_gguf_get_f32(g, key, &f) +
                   (uint64_t)moe_gguf_get_bool(g, key, &bo);
            sum += strlen(moe_gguf_errmsg(g));
        }
    }
    /* out-of-range indices must be harmless */
    sum += moe_gguf_kv_key(g, -1).len + moe_gguf_kv_key(g, moe_gguf_n_kv(g)).len;
    sum += (uint64_t)moe_gguf_kv_type(g, moe_gguf_n_kv(g)) + moe_gguf_arr_n(g, -5);
    sum += moe_gguf_arr_str(g, moe_gguf_n_kv(g), 0).len + (moe_gguf_kv_data(g, -1) == NULL);
    for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char name[80];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        sum += (moe_gguf_find_tensor(g, name) == t);
        sum += (uint64_t)t->type + (uint64_t)t->n_dims + t->nbytes + t->offset;
        const uint8_t *d = t->data;
        if (t->nbytes) sum += d[0] + d[t->nbytes - 1];
    }
    sum += (moe_gguf_tensor_at(g, moe_gguf_n_tensors(g)) == NULL) + (moe_gguf_find_tensor(g, "no such tensor") == NULL);
    return sum;
}

#endif
