/* GGUF writer: spec gguf.md §5.1's 160-byte example bit for bit; round trips of every value
 * type, string arrays, tensors of every type, fill-callback writing with progress, copy_kv;
 * argument errors. Writes only below a fresh mkdtemp folder. */
#include <dirent.h>
#include <unistd.h>

#include "moe/gguf.h"
#include "testutil.h"

static char g_dir[512];

static const char *tmp(const char *name) {
    static char p[4][1024];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", g_dir, name);
    return p[k];
}

static void test_spec_example(void) {
    static const uint8_t expect[160] = {
        0x47, 0x47, 0x55, 0x46, 0x03, 0x00, 0x00, 0x00,                         /* magic, version 3 */
        0x01, 0, 0, 0, 0, 0, 0, 0,                                              /* n_tensors = 1 */
        0x01, 0, 0, 0, 0, 0, 0, 0,                                              /* n_kv = 1 */
        0x14, 0, 0, 0, 0, 0, 0, 0,                                              /* key length 20 */
        'g', 'e', 'n', 'e', 'r', 'a', 'l', '.', 'a', 'r', 'c', 'h', 'i', 't', 'e', 'c', 't', 'u', 'r', 'e',
        0x08, 0, 0, 0,                                                          /* STRING */
        0x02, 0, 0, 0, 0, 0, 0, 0, 'a', 'b',                                    /* "ab" */
        0x01, 0, 0, 0, 0, 0, 0, 0, 't',                                         /* name "t" */
        0x01, 0, 0, 0,                                                          /* n_dims 1 */
        0x02, 0, 0, 0, 0, 0, 0, 0,                                              /* ne[0] = 2 */
        0x00, 0, 0, 0,                                                          /* F32 */
        0x00, 0, 0, 0, 0, 0, 0, 0,                                              /* offset 0 */
        [0x80] = 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0,                /* 1.0f, -2.0f */
    };
    moe_gguf_writer *w;
    CHECK(moe_gguf_writer_init(&w) == MOE_OK, "init");
    float v[2] = {1.0f, -2.0f};
    int64_t ne[1] = {2};
    moe_gguf_writer_set_str(w, "general.architecture", "ab");
    moe_gguf_writer_add_tensor(w, "t", MOE_DTYPE_F32, 1, ne, v);
    char err[256];
    CHECK(moe_gguf_writer_write(w, tmp("spec.gguf"), NULL, NULL, NULL, NULL, err, sizeof err) == MOE_OK, "%s", err);
    moe_gguf_writer_free(w);
    size_t len = 0;
    char *b = tu_read_file(tmp("spec.gguf"), &len);
    CHECK(b && len == 160, "spec example is 160 bytes (got %zu)", len);
    size_t first = len;
    for (size_t i = 0; b && i < len && i < 160; i++)
        if ((uint8_t)b[i] != expect[i]) {
            first = i;
            break;
        }
    CHECK(b && len == 160 && first == len, "spec example bit for bit (first difference at byte %zu)", first);
    free(b);
}

static void test_values(void) {
    moe_gguf_writer *w;
    moe_gguf_writer_init(&w);
    /* one scalar of every type, with a distinctive bit pattern */
    uint8_t u8 = 0xfe;
    int8_t i8 = -3;
    uint16_t u16 = 0xbeef;
    int16_t i16 = -12345;
    uint32_t u32 = 0xdeadbeefu;
    int32_t i32 = -2000000000;
    float f32 = -1.25e-20f;
    uint64_t u64 = 0xfedcba9876543210ull;
    int64_t i64 = INT64_MIN + 5;
    double f64 = 3.141592653589793;
    uint8_t bo = 1;
    const void *vals[13] = {&u8, &i8, &u16, &i16, &u32, &i32, &f32, &bo, NULL, NULL, &u64, &i64, &f64};
    for (int t = 0; t <= 12; t++) {
        char key[32];
        snprintf(key, sizeof key, "v.%s", moe_gguf_type_name(t));
        if (vals[t]) CHECK(moe_gguf_writer_set_scalar(w, key, t, vals[t]) == MOE_OK, "set %s", key);
        else CHECK(moe_gguf_writer_set_scalar(w, key, t, &u8) == MOE_ERR_INVAL, "%s is not a scalar", key);
    }
    CHECK(moe_gguf_writer_set_u32(w, "s.u32", 42) == 0 && moe_gguf_writer_set_i32(w, "s.i32", -42) == 0 &&
              moe_gguf_writer_set_f32(w, "s.f32", 0.5f) == 0 && moe_gguf_writer_set_bool(w, "s.bool", 7) == 0 &&
              moe_gguf_writer_set_u64(w, "s.u64", 1ull << 40) == 0 && moe_gguf_writer_set_str(w, "s.str", "héllo") == 0 &&
              moe_gguf_writer_set_strn(w, "s.strn", "a\0b", 3) == 0 && moe_gguf_writer_set_str(w, "s.empty", "") == 0,
          "typed setters");
    /* arrays of every scalar type, and strings */
    uint8_t raw[8 * 5];
    for (int i = 0; i < 40; i++) raw[i] = (uint8_t)(i * 37 + 1);
    for (int t = 0; t <= 12; t++) {
        char key[32];
        snprintf(key, sizeof key, "a.%s", moe_gguf_type_name(t));
        moe_status st = moe_gguf_writer_set_arr(w, key, t, raw, 5);
        CHECK(st == (moe_gguf_type_size(t) ? MOE_OK : MOE_ERR_INVAL), "array of %s", key);
    }
    const char *strs[] = {"alpha", "", "γάμμα", "d e"};
    CHECK(moe_gguf_writer_set_arr_str(w, "a.strs", strs, NULL, 4) == MOE_OK, "string array");
    uint64_t lens[] = {1, 0, 2};
    const char *bin[] = {"\x00", "x", "\xff\x01"};
    CHECK(moe_gguf_writer_set_arr_str(w, "a.bin", bin, lens, 3) == MOE_OK, "string array with lengths");
    CHECK(moe_gguf_writer_set_arr(w, "a.empty", MOE_GGUF_TYPE_INT32, NULL, 0) == MOE_OK, "empty array");
    /* argument errors */
    CHECK(moe_gguf_writer_set_u32(w, "s.u32", 1) == MOE_ERR_INVAL, "duplicate key");
    CHECK(moe_gguf_writer_set_u32(w, "", 1) == MOE_ERR_INVAL, "empty key");
    CHECK(moe_gguf_writer_set_i32(w, "general.alignment", 64) == MOE_ERR_INVAL, "alignment must be uint32");
    CHECK(moe_gguf_writer_set_u32(w, "general.alignment", 48) == MOE_ERR_INVAL, "alignment power of two");
    CHECK(moe_gguf_writer_set_u32(w, "general.alignment", 0) == MOE_ERR_INVAL, "alignment 0");
    CHECK(moe_gguf_writer_set_arr(w, "general.alignment", MOE_GGUF_TYPE_UINT32, &u32, 1) == MOE_ERR_INVAL,
          "alignment array");
    CHECK(moe_gguf_writer_set_arr(w, "a.nested", MOE_GGUF_TYPE_ARRAY, raw, 1) == MOE_ERR_INVAL, "nested array");
    char err[256];
    CHECK(moe_gguf_writer_write(w, tmp("values.gguf"), NULL, NULL, NULL, NULL, err, sizeof err) == MOE_OK, "%s", err);
    moe_gguf_writer_free(w);

    moe_gguf *g;
    CHECK(moe_gguf_open(tmp("values.gguf"), &g, err, sizeof err) == MOE_OK, "reopen: %s", err);
    if (!g) return;
    CHECK(moe_gguf_n_tensors(g) == 0, "no tensors");
    CHECK(moe_gguf_file_size(g) == moe_gguf_data_offset(g) || moe_gguf_file_size(g) < moe_gguf_data_offset(g) + 32,
          "metadata-only file ends after the KVs");
    for (int t = 0; t <= 12; t++) {
        char key[32];
        uint8_t out[8] = {0};
        snprintf(key, sizeof key, "v.%s", moe_gguf_type_name(t));
        if (!vals[t]) continue;
        size_t es = moe_gguf_type_size(t);
        CHECK(moe_gguf_get_scalar(g, key, t, out) == MOE_OK && memcmp(out, vals[t], es) == 0, "round trip %s", key);
        int other = t == MOE_GGUF_TYPE_UINT32 ? MOE_GGUF_TYPE_INT32 : MOE_GGUF_TYPE_UINT32;
        CHECK(moe_gguf_get_scalar(g, key, other, out) == MOE_ERR_FORMAT, "%s: exact type required", key);
        int64_t i = moe_gguf_find_key(g, key);
        CHECK(i >= 0 && moe_gguf_kv_type(g, i) == t && memcmp(moe_gguf_kv_data(g, i), vals[t], es) == 0, "kv_data %s", key);
    }
    uint32_t a;
    int32_t b;
    float f;
    int bb;
    uint64_t c;
    moe_str s;
    CHECK(moe_gguf_get_u32(g, "s.u32", &a) == 0 && a == 42, "u32");
    CHECK(moe_gguf_get_i32(g, "s.i32", &b) == 0 && b == -42, "i32");
    CHECK(moe_gguf_get_f32(g, "s.f32", &f) == 0 && f == 0.5f, "f32");
    CHECK(moe_gguf_get_bool(g, "s.bool", &bb) == 0 && bb == 1, "bool written as 1");
    CHECK(moe_gguf_get_u64(g, "s.u64", &c) == 0 && c == 1ull << 40, "u64");
    CHECK(moe_gguf_get_str(g, "s.str", &s) == 0 && s.len == strlen("héllo") && !memcmp(s.ptr, "héllo", s.len), "str");
    CHECK(moe_gguf_get_str(g, "s.strn", &s) == 0 && s.len == 3 && !memcmp(s.ptr, "a\0b", 3), "strn keeps NUL");
    CHECK(moe_gguf_get_str(g, "s.empty", &s) == 0 && s.len == 0, "empty string");
    CHECK(moe_gguf_get_u32(g, "nope", &a) == MOE_ERR_NOTFOUND, "missing key");
    CHECK(moe_gguf_get_i32(g, "s.u32", &b) == MOE_ERR_FORMAT && strstr(moe_gguf_errmsg(g), "s.u32"), "wrong type: %s",
          moe_gguf_errmsg(g));
    for (int t = 0; t <= 12; t++) {
        size_t es = moe_gguf_type_size(t);
        if (!es) continue;
        char key[32];
        snprintf(key, sizeof key, "a.%s", moe_gguf_type_name(t));
        int64_t i;
        uint64_t n;
        CHECK(moe_gguf_get_arr(g, key, t, &i, &n) == MOE_OK && n == 5 && !memcmp(moe_gguf_arr_data(g, i), raw, 5 * es),
              "array %s", key);
        CHECK(moe_gguf_get_arr(g, key, t == 0 ? 1 : 0, &i, &n) == MOE_ERR_FORMAT, "array %s element type checked", key);
    }
    int64_t i;
    uint64_t n;
    CHECK(moe_gguf_get_arr(g, "a.strs", MOE_GGUF_TYPE_STRING, &i, &n) == MOE_OK && n == 4, "string array");
    for (uint64_t j = 0; j < 4; j++) {
        moe_str e = moe_gguf_arr_str(g, i, j);
        CHECK(e.len == strlen(strs[j]) && !memcmp(e.ptr, strs[j], e.len), "string %llu", (unsigned long long)j);
    }
    CHECK(moe_gguf_arr_str(g, i, 4).len == 0, "past the end is empty");
    CHECK(moe_gguf_get_arr(g, "a.bin", MOE_GGUF_TYPE_STRING, &i, &n) == MOE_OK && n == 3, "binary strings");
    for (uint64_t j = 0; j < 3; j++) {
        moe_str e = moe_gguf_arr_str(g, i, j);
        CHECK(e.len == lens[j] && !memcmp(e.ptr, bin[j], e.len), "binary string %llu", (unsigned long long)j);
    }
    CHECK(moe_gguf_get_arr(g, "a.empty", MOE_GGUF_TYPE_INT32, &i, &n) == MOE_OK && n == 0, "empty array");
    moe_gguf_close(g);
}

typedef struct {
    int calls, fail_at;
    uint64_t last_done, total;
    int monotonic;
} fill_state;

static uint8_t pattern(int64_t t, uint64_t k) { return (uint8_t)(t * 131 + k * 7 + (k >> 8)); }

static int fill(void *ud, int64_t i, void *buf, uint64_t nbytes) {
    fill_state *s = ud;
    s->calls++;
    if (s->fail_at == (int)i) return 1;
    for (uint64_t k = 0; k < nbytes; k++) ((uint8_t *)buf)[k] = pattern(i, k);
    return 0;
}
static void progress(void *ud, uint64_t done, uint64_t total) {
    fill_state *s = ud;
    if (done < s->last_done || done > total) s->monotonic = 0;
    s->last_done = done;
    s->total = total;
}

static const int k_types[] = {MOE_DTYPE_F32,  MOE_DTYPE_F16,  MOE_DTYPE_BF16, MOE_DTYPE_Q8_0, MOE_DTYPE_Q4_0,
                              MOE_DTYPE_Q4_1, MOE_DTYPE_Q5_0, MOE_DTYPE_Q5_1, MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_K,
                              MOE_DTYPE_Q6_K, MOE_DTYPE_Q2_K, MOE_DTYPE_I32,  MOE_DTYPE_F64};
#define NTYPES (int)(sizeof k_types / sizeof k_types[0])

static moe_gguf_writer *tensors_writer(uint32_t align, uint8_t **owned) {
    moe_gguf_writer *w;
    moe_gguf_writer_init(&w);
    if (align != 32) moe_gguf_writer_set_u32(w, "general.alignment", align);
    for (int k = 0; k < NTYPES; k++) {
        int t = k_types[k];
        int64_t bs = moe_dtype_block_size(t);
        int64_t ne[4] = {bs * (k % 3 + 1), 3, k % 2 + 1, k % 4 == 3 ? 2 : 1};
        int nd = k % 4 == 3 ? 4 : (k % 2 ? 3 : 2);
        char name[64];
        snprintf(name, sizeof name, "blk.%d.%s.weight", k, moe_dtype_name(t));
        const void *data = NULL;
        if (owned) { /* even tensors carry their bytes, odd ones come from the callback */
            if (k % 2 == 0) {
                size_t nb = moe_dtype_row_bytes(t, ne[0]) * (size_t)(ne[1] * ne[2] * ne[3]);
                owned[k] = malloc(nb);
                for (size_t j = 0; j < nb; j++) owned[k][j] = pattern(k, j);
                data = owned[k];
            } else {
                owned[k] = NULL;
            }
        }
        CHECK(moe_gguf_writer_add_tensor(w, name, t, nd, ne, data) == MOE_OK, "add %s", name);
    }
    return w;
}

static void test_tensors(uint32_t align) {
    uint8_t *owned[NTYPES];
    moe_gguf_writer *w = tensors_writer(align, owned);
    moe_gguf_writer_set_str(w, "general.architecture", "deepseek2");
    fill_state fs = {0, -1, 0, 0, 1};
    char err[256];
    const char *path = tmp("tensors.gguf");
    CHECK(moe_gguf_writer_write(w, path, fill, &fs, progress, &fs, err, sizeof err) == MOE_OK, "%s", err);
    CHECK(fs.calls == NTYPES / 2, "fill called once per data-less tensor (%d)", fs.calls);
    CHECK(fs.monotonic && fs.last_done == fs.total && fs.total > 0, "progress reaches the total");
    moe_gguf_writer_free(w);
    moe_gguf *g;
    CHECK(moe_gguf_open(path, &g, err, sizeof err) == MOE_OK, "reopen: %s", err);
    if (!g) return;
    CHECK(moe_gguf_alignment(g) == align && moe_gguf_data_offset(g) % align == 0, "alignment %u", align);
    CHECK(moe_gguf_n_tensors(g) == NTYPES, "tensor count");
    CHECK(moe_gguf_file_size(g) == moe_gguf_data_offset(g) + fs.total, "last tensor padded too");
    for (int k = 0; k < NTYPES && k < moe_gguf_n_tensors(g); k++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, k);
        int ty = k_types[k];
        int64_t bs = moe_dtype_block_size(ty);
        int nd = k % 4 == 3 ? 4 : (k % 2 ? 3 : 2);
        CHECK(t->type == ty && t->n_dims == nd, "tensor %d type/dims", k);
        CHECK(t->ne[0] == bs * (k % 3 + 1) && t->ne[1] == 3 && t->ne[2] == k % 2 + 1 && t->ne[3] == (k % 4 == 3 ? 2 : 1),
              "tensor %d shape", k);
        uint64_t nb = moe_dtype_row_bytes(ty, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        CHECK(t->nbytes == nb, "tensor %d nbytes", k);
        CHECK(((const uint8_t *)t->data - (const uint8_t *)moe_gguf_base(g)) % align == 0, "tensor %d aligned", k);
        int same = 1;
        for (uint64_t j = 0; j < nb; j++) same &= ((const uint8_t *)t->data)[j] == pattern(k, j);
        CHECK(same, "tensor %d bytes", k);
        free(owned[k]);
    }
    moe_gguf_close(g);
}

static int skip_arch(const char *key, void *ud) {
    (*(int *)ud)++;
    return strcmp(key, "general.architecture") == 0;
}

static void test_copy_kv(void) {
    char err[256];
    moe_gguf *src;
    CHECK(moe_gguf_open(tmp("values.gguf"), &src, err, sizeof err) == MOE_OK, "%s", err);
    if (!src) return;
    moe_gguf_writer *w;
    moe_gguf_writer_init(&w);
    moe_gguf_writer_set_str(w, "s.str", "first"); /* clashes with the copy: copy fails */
    CHECK(moe_gguf_writer_copy_kv(w, src, NULL, NULL) == MOE_ERR_INVAL, "copy onto an existing key");
    moe_gguf_writer_free(w);

    moe_gguf_writer_init(&w);
    int seen = 0;
    moe_gguf_writer_set_str(w, "general.architecture", "new");
    CHECK(moe_gguf_writer_copy_kv(w, src, skip_arch, &seen) == MOE_OK, "copy_kv");
    CHECK(seen == moe_gguf_n_kv(src), "skip asked for every key");
    CHECK(moe_gguf_writer_write(w, tmp("copy.gguf"), NULL, NULL, NULL, NULL, err, sizeof err) == MOE_OK, "%s", err);
    moe_gguf_writer_free(w);
    moe_gguf *dst;
    CHECK(moe_gguf_open(tmp("copy.gguf"), &dst, err, sizeof err) == MOE_OK, "%s", err);
    if (dst) {
        CHECK(moe_gguf_n_kv(dst) == moe_gguf_n_kv(src) + 1, "key count");
        moe_str s;
        CHECK(moe_gguf_get_str(dst, "general.architecture", &s) == 0 && s.len == 3, "skipped key kept ours");
        /* every copied record is byte-identical (key, type, value) */
        for (int64_t i = 0; i < moe_gguf_n_kv(src); i++) {
            moe_str k = moe_gguf_kv_key(src, i);
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)k.len, k.ptr);
            int64_t j = moe_gguf_find_key(dst, key);
            CHECK(j >= 0 && moe_gguf_kv_type(dst, j) == moe_gguf_kv_type(src, i) &&
                      moe_gguf_arr_type(dst, j) == moe_gguf_arr_type(src, i) &&
                      moe_gguf_arr_n(dst, j) == moe_gguf_arr_n(src, i),
                  "copied %s", key);
            const uint8_t *a = moe_gguf_kv_data(src, i), *b = moe_gguf_kv_data(dst, j);
            int ty = moe_gguf_kv_type(src, i), et = moe_gguf_arr_type(src, i);
            size_t n = moe_gguf_type_size(ty);
            uint64_t len;
            if (ty == MOE_GGUF_TYPE_STRING) {
                memcpy(&len, a, 8);
                n = 8 + (size_t)len;
            } else if (ty == MOE_GGUF_TYPE_ARRAY && et != MOE_GGUF_TYPE_STRING) {
                n = (size_t)moe_gguf_arr_n(src, i) * moe_gguf_type_size(et);
            } else if (ty == MOE_GGUF_TYPE_ARRAY) {
                n = 0;
                for (uint64_t e = 0; e < moe_gguf_arr_n(src, i); e++) {
                    moe_str x = moe_gguf_arr_str(src, i, e), y = moe_gguf_arr_str(dst, j, e);
                    CHECK(x.len == y.len && !memcmp(x.ptr, y.ptr, x.len), "%s[%llu]", key, (unsigned long long)e);
                }
            }
            CHECK(b && memcmp(a, b, n) == 0, "value bytes of %s", key);
        }
        moe_gguf_close(dst);
    }
    moe_gguf_close(src);
}

static void test_errors(void) {
    moe_gguf_writer *w;
    moe_gguf_writer_init(&w);
    int64_t ne[4] = {32, 2, 1, 1}, bad[2] = {33, 1}, neg[2] = {32, -1}, huge[4] = {1ll << 40, 1ll << 40, 1, 1};
    char name64[65];
    memset(name64, 'x', 64);
    name64[64] = 0;
    CHECK(moe_gguf_writer_add_tensor(w, "a", MOE_DTYPE_Q8_0, 2, ne, NULL) == MOE_OK, "add");
    CHECK(moe_gguf_writer_add_tensor(w, "a", MOE_DTYPE_F32, 2, ne, NULL) == MOE_ERR_INVAL, "duplicate tensor");
    CHECK(moe_gguf_writer_add_tensor(w, name64, MOE_DTYPE_F32, 2, ne, NULL) == MOE_ERR_INVAL, "64-byte name");
    CHECK(moe_gguf_writer_add_tensor(w, name64 + 1, MOE_DTYPE_F32, 2, ne, NULL) == MOE_OK, "63-byte name");
    CHECK(moe_gguf_writer_add_tensor(w, "", MOE_DTYPE_F32, 2, ne, NULL) == MOE_ERR_INVAL, "empty name");
    CHECK(moe_gguf_writer_add_tensor(w, "b", MOE_DTYPE_Q8_0, 2, bad, NULL) == MOE_ERR_INVAL, "block multiple");
    CHECK(moe_gguf_writer_add_tensor(w, "c", MOE_DTYPE_F32, 2, neg, NULL) == MOE_ERR_INVAL, "negative dim");
    CHECK(moe_gguf_writer_add_tensor(w, "d", MOE_DTYPE_F32, 0, ne, NULL) == MOE_ERR_INVAL, "0 dims");
    CHECK(moe_gguf_writer_add_tensor(w, "e", MOE_DTYPE_F32, 5, ne, NULL) == MOE_ERR_INVAL, "5 dims");
    CHECK(moe_gguf_writer_add_tensor(w, "f", 4, 2, ne, NULL) == MOE_ERR_INVAL, "removed type id");
    CHECK(moe_gguf_writer_add_tensor(w, "g", 99, 2, ne, NULL) == MOE_ERR_INVAL, "unknown type id");
    CHECK(moe_gguf_writer_add_tensor(w, "h", MOE_DTYPE_F32, 4, huge, NULL) == MOE_ERR_INVAL, "element count overflow");
    char err[256] = "";
    /* no data and no callback: error, and neither the file nor its .tmp is left behind */
    CHECK(moe_gguf_writer_write(w, tmp("nodata.gguf"), NULL, NULL, NULL, NULL, err, sizeof err) == MOE_ERR_INVAL &&
              err[0], "missing data: %s", err);
    CHECK(access(tmp("nodata.gguf"), F_OK) != 0 && access(tmp("nodata.gguf.tmp"), F_OK) != 0, "no file left");
    fill_state fs = {0, 1, 0, 0, 1};
    CHECK(moe_gguf_writer_write(w, tmp("fail.gguf"), fill, &fs, NULL, NULL, err, sizeof err) != MOE_OK && err[0],
          "fill failure: %s", err);
    CHECK(access(tmp("fail.gguf"), F_OK) != 0 && access(tmp("fail.gguf.tmp"), F_OK) != 0, "no file left");
    CHECK(moe_gguf_writer_write(w, "/nonexistent-dir/x.gguf", fill, &fs, NULL, NULL, err, sizeof err) == MOE_ERR_IO &&
              err[0], "unwritable path: %s", err);
    moe_gguf_writer_free(w);
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    test_spec_example();
    test_values();
    test_tensors(32);
    test_tensors(64);
    test_tensors(4096);
    test_copy_kv();
    test_errors();
    /* clean the temporary folder */
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') unlink(tmp(e->d_name));
    if (d) closedir(d);
    rmdir(g_dir);
    return test_done();
}
