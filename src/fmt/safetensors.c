/* moekit fmt: safetensors reader (mmap, zero-copy) and writer; sharded checkpoint directories.
 *
 * Layout of a file:
 *   offset 0   u64 LE  N = header length (1 <= N <= MOE_ST_MAX_HEADER, 8 + N <= file size)
 *   offset 8   N bytes UTF-8 JSON object (may be padded with trailing spaces)
 *   offset 8+N data buffer; tensor t occupies [8+N+begin, 8+N+end)
 *
 * Invariants after a successful open (everything else is refused with MOE_ERR_FORMAT):
 *   - every tensor has a known dtype, 0..8 dims each >= 0, a shape product that fits in int64,
 *     end - begin == n_elem × dtype size, begin <= end <= data buffer size;
 *   - sorted by begin, each tensor starts at or after the previous one's end (no overlap);
 *   - names are unique (jansson JSON_REJECT_DUPLICATES) and contain no NUL;
 *   - __metadata__, if present, is an object of strings.
 * The jansson tree is dropped after open; names and metadata are copied into one arena. */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe/dtype.h"
#include "core/mapfile.h"
#include "moe/safetensors.h"

static const struct {
    const char *name;
    size_t size;
} k_dt[MOE_ST_DTYPE_COUNT] = {
    [MOE_ST_BOOL] = {"BOOL", 1},       [MOE_ST_U8] = {"U8", 1},   [MOE_ST_I8] = {"I8", 1},
    [MOE_ST_F8_E5M2] = {"F8_E5M2", 1}, [MOE_ST_F8_E4M3] = {"F8_E4M3", 1},
    [MOE_ST_I16] = {"I16", 2},         [MOE_ST_U16] = {"U16", 2}, [MOE_ST_F16] = {"F16", 2},
    [MOE_ST_BF16] = {"BF16", 2},       [MOE_ST_I32] = {"I32", 4}, [MOE_ST_U32] = {"U32", 4},
    [MOE_ST_F32] = {"F32", 4},         [MOE_ST_F64] = {"F64", 8}, [MOE_ST_I64] = {"I64", 8},
    [MOE_ST_U64] = {"U64", 8},
};

const char *moe_st_dtype_name(int dt) { return dt >= 0 && dt < MOE_ST_DTYPE_COUNT ? k_dt[dt].name : NULL; }
size_t moe_st_dtype_size(int dt) { return dt >= 0 && dt < MOE_ST_DTYPE_COUNT ? k_dt[dt].size : 0; }

static int dtype_from(const char *s) {
    for (int i = 0; i < MOE_ST_DTYPE_COUNT; i++)
        if (!strcmp(k_dt[i].name, s)) return i;
    return -1;
}

struct moe_st {
    const uint8_t *base; /* borrowed (mem) or mapped */
    size_t size;
    int mapped;
    moe_st_tensor *t;    /* owned, sorted by offset */
    int64_t n;
    moe_st_tensor **by_name; /* owned, sorted by name */
    char **meta;         /* owned: key, value pairs */
    int64_t n_meta;
    char *arena;         /* owned: names and metadata strings */
};

static int cmp_off(const void *a, const void *b) {
    const moe_st_tensor *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset ? 1 : (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}
static int cmp_name(const void *a, const void *b) {
    return strcmp((*(const moe_st_tensor *const *)a)->name, (*(const moe_st_tensor *const *)b)->name);
}

/* printable, shortened name for messages (names come from untrusted files) */
static const char *esc(const char *s, char *buf, size_t n) {
    size_t j = 0;
    for (size_t i = 0; s[i] && j + 5 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) j += (size_t)snprintf(buf + j, n - j, "\\x%02x", c);
        else buf[j++] = (char)c;
        if (i > 80) {
            j += (size_t)snprintf(buf + j, n - j, "...");
            break;
        }
    }
    buf[j < n ? j : n - 1] = 0;
    return buf;
}

#define FAIL(...)                                                                                                 \
    do {                                                                                                          \
        if (err) snprintf(err, errlen, __VA_ARGS__);                                                              \
        st = MOE_ERR_FORMAT;                                                                                      \
        goto out;                                                                                                 \
    } while (0)

static moe_status parse(moe_st *f, char *err, size_t errlen) {
    moe_status st = MOE_OK;
    json_t *root = NULL;
    char nb[128];
    if (f->size < 8) FAIL("safetensors: file is %zu bytes, shorter than the 8-byte header length", f->size);
    uint64_t hn = 0;
    for (int i = 7; i >= 0; i--) hn = (hn << 8) | f->base[i];
    if (hn == 0 || hn > MOE_ST_MAX_HEADER)
        FAIL("safetensors: header length %llu at offset 0 is outside 1..%u", (unsigned long long)hn, MOE_ST_MAX_HEADER);
    if (hn > f->size - 8)
        FAIL("safetensors: header length %llu at offset 0 runs past the end of the %zu-byte file",
             (unsigned long long)hn, f->size);
    if (f->base[8] != '{') FAIL("safetensors: header at offset 8 does not start with '{'");
    const uint64_t data0 = 8 + hn, data_n = f->size - data0;
    json_error_t je;
    root = json_loadb((const char *)f->base + 8, (size_t)hn, JSON_REJECT_DUPLICATES, &je);
    if (!root) FAIL("safetensors: header JSON invalid at byte %d: %s", je.position + 8, je.text);
    if (!json_is_object(root)) FAIL("safetensors: header is not a JSON object");
    size_t n_obj = json_object_size(root), arena_n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        arena_n += strlen(key) + 1;
        if (!strcmp(key, "__metadata__")) {
            if (!json_is_object(v)) FAIL("safetensors: __metadata__ is not an object");
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                if (!json_is_string(mv)) FAIL("safetensors: __metadata__ value of '%s' is not a string", esc(mk, nb, sizeof nb));
                arena_n += strlen(mk) + 1 + strlen(json_string_value(mv)) + 1;
            }
        }
    }
    f->t = calloc(n_obj ? n_obj : 1, sizeof *f->t);
    f->by_name = calloc(n_obj ? n_obj : 1, sizeof *f->by_name);
    f->arena = malloc(arena_n ? arena_n : 1);
    json_t *md = json_object_get(root, "__metadata__");
    f->meta = calloc(2 * (md ? json_object_size(md) : 0) + 1, sizeof *f->meta);
    if (!f->t || !f->by_name || !f->arena || !f->meta) {
        st = MOE_ERR_NOMEM;
        if (err) snprintf(err, errlen, "safetensors: out of memory for %zu header entries", n_obj);
        goto out;
    }
    char *ap = f->arena;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            const char *mk;
            json_t *mv;
            json_object_foreach(v, mk, mv) {
                size_t a = strlen(mk) + 1, b = strlen(json_string_value(mv)) + 1;
                f->meta[2 * f->n_meta] = memcpy(ap, mk, a);
                f->meta[2 * f->n_meta + 1] = memcpy(ap + a, json_string_value(mv), b);
                ap += a + b;
                f->n_meta++;
            }
            continue;
        }
        const char *nm = esc(key, nb, sizeof nb);
        if (!json_is_object(v)) FAIL("safetensors: tensor '%s': entry is not an object", nm);
        json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
               *jo = json_object_get(v, "data_offsets");
        if (!json_is_string(jd)) FAIL("safetensors: tensor '%s': missing or non-string \"dtype\"", nm);
        int dt = dtype_from(json_string_value(jd));
        if (dt < 0) FAIL("safetensors: tensor '%s': unknown dtype \"%.20s\"", nm, json_string_value(jd));
        if (!json_is_array(js)) FAIL("safetensors: tensor '%s': missing or non-array \"shape\"", nm);
        if (json_array_size(js) > MOE_ST_MAX_DIMS)
            FAIL("safetensors: tensor '%s': shape has %zu dims (at most %d)", nm, json_array_size(js), MOE_ST_MAX_DIMS);
        if (!json_is_array(jo) || json_array_size(jo) != 2)
            FAIL("safetensors: tensor '%s': \"data_offsets\" must be [begin, end]", nm);
        moe_st_tensor *t = &f->t[f->n];
        t->dtype = dt;
        t->n_dims = (int)json_array_size(js);
        int64_t ne = 1;
        for (int d = 0; d < MOE_ST_MAX_DIMS; d++) t->shape[d] = 1;
        for (int d = 0; d < t->n_dims; d++) {
            json_t *x = json_array_get(js, (size_t)d);
            if (!json_is_integer(x) || json_integer_value(x) < 0)
                FAIL("safetensors: tensor '%s': shape[%d] is not a non-negative integer", nm, d);
            int64_t s = json_integer_value(x);
            if (s && ne > INT64_MAX / s) FAIL("safetensors: tensor '%s': shape product overflows", nm);
            ne *= s;
            t->shape[d] = s;
        }
        t->n_elem = ne;
        json_t *b = json_array_get(jo, 0), *e = json_array_get(jo, 1);
        if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
            FAIL("safetensors: tensor '%s': data_offsets are not non-negative integers", nm);
        uint64_t ub = (uint64_t)json_integer_value(b), ue = (uint64_t)json_integer_value(e);
        if (ub > ue) FAIL("safetensors: tensor '%s': data_offsets begin %llu > end %llu", nm, (unsigned long long)ub, (unsigned long long)ue);
        if (ue > data_n)
            FAIL("safetensors: tensor '%s': data_offsets end %llu is past the data buffer (%llu bytes)", nm,
                 (unsigned long long)ue, (unsigned long long)data_n);
        uint64_t need = (uint64_t)ne;
        if (need > UINT64_MAX / k_dt[dt].size || need * k_dt[dt].size != ue - ub)
            FAIL("safetensors: tensor '%s': %s shape has %lld elements (%llu bytes) but data_offsets span %llu bytes",
                 nm, k_dt[dt].name, (long long)ne, (unsigned long long)(need * k_dt[dt].size),
                 (unsigned long long)(ue - ub));
        t->offset = data0 + ub;
        t->nbytes = ue - ub;
        size_t kl = strlen(key) + 1;
        t->name = memcpy(ap, key, kl);
        ap += kl;
        f->n++;
    }
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_off);
    for (int64_t i = 0; i < f->n; i++) {
        f->t[i].data = f->base + f->t[i].offset;
        f->by_name[i] = &f->t[i];
        if (i > 0 && f->t[i].offset < f->t[i - 1].offset + f->t[i - 1].nbytes) {
            char nb2[128];
            FAIL("safetensors: tensors '%s' and '%s' overlap (data bytes %llu..%llu and %llu..)",
                 esc(f->t[i - 1].name, nb2, sizeof nb2), esc(f->t[i].name, nb, sizeof nb),
                 (unsigned long long)(f->t[i - 1].offset - data0),
                 (unsigned long long)(f->t[i - 1].offset - data0 + f->t[i - 1].nbytes),
                 (unsigned long long)(f->t[i].offset - data0));
        }
    }
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_name);
out:
    json_decref(root);
    return st;
}

void moe_st_close(moe_st *f) {
    if (!f) return;
    if (f->mapped) moe_unmap_file(f->base, f->size);
    free(f->t);
    free(f->by_name);
    free(f->meta);
    free(f->arena);
    free(f);
}

moe_status moe_st_open_mem(const void *buf, size_t len, moe_st **out, char *err, size_t errlen) {
    *out = NULL;
    moe_st *f = calloc(1, sizeof *f);
    if (!f) return MOE_ERR_NOMEM;
    f->base = buf;
    f->size = len;
    moe_status st = parse(f, err, errlen);
    if (st) {
        moe_st_close(f);
        return st;
    }
    *out = f;
    return MOE_OK;
}

moe_status moe_st_open(const char *path, moe_st **out, char *err, size_t errlen) {
    *out = NULL;
    const void *base;
    size_t size;
    moe_status st0 = moe_map_file(path, &base, &size, err, errlen);
    if (st0) return st0;
    moe_st *f = calloc(1, sizeof *f);
    if (!f) {
        moe_unmap_file(base, size);
        return MOE_ERR_NOMEM;
    }
    f->base = base;
    f->size = size;
    f->mapped = 1;
    char e2[480];
    moe_status st = parse(f, e2, sizeof e2);
    if (st) {
        if (err) snprintf(err, errlen, "%s: %s", path, e2);
        moe_st_close(f);
        return st;
    }
    *out = f;
    return MOE_OK;
}

int64_t moe_st_n_tensors(const moe_st *f) { return f->n; }
const moe_st_tensor *moe_st_tensor_at(const moe_st *f, int64_t i) { return i >= 0 && i < f->n ? &f->t[i] : NULL; }

static const moe_st_tensor *find_in(moe_st_tensor *const *arr, int64_t n, const char *name) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(arr[mid]->name, name);
        if (!c) return arr[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const moe_st_tensor *moe_st_find(const moe_st *f, const char *name) { return find_in(f->by_name, f->n, name); }

const char *moe_st_metadata(const moe_st *f, const char *key) {
    for (int64_t i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    return NULL;
}

/* ---- element conversion ---- */

float moe_st_f8e4m3_to_f32(uint8_t v) {
    int s = v >> 7, e = (v >> 3) & 15, m = v & 7;
    float r;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) r = ldexpf((float)m, -9); /* subnormal: m/8 · 2^-6 */
    else r = ldexpf((float)(8 + m), e - 10); /* (1 + m/8) · 2^(e-7) */
    return s ? -r : r;
}

static float f8e5m2_to_f32(uint8_t v) { return moe_f16_to_f32((uint16_t)(v << 8)); }

moe_status moe_st_read_f32(const moe_st_tensor *t, int64_t first, int64_t n, float *dst) {
    if (first < 0 || n < 0 || first > t->n_elem || n > t->n_elem - first) return MOE_ERR_RANGE;
    const uint8_t *p = (const uint8_t *)t->data + (size_t)first * moe_st_dtype_size(t->dtype);
    switch (t->dtype) {
    case MOE_ST_F32: memcpy(dst, p, (size_t)n * 4); return MOE_OK;
    case MOE_ST_F64:
        for (int64_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            dst[i] = (float)d;
        }
        return MOE_OK;
    case MOE_ST_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = moe_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return MOE_OK;
    case MOE_ST_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = moe_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
        return MOE_OK;
    case MOE_ST_F8_E4M3:
        for (int64_t i = 0; i < n; i++) dst[i] = moe_st_f8e4m3_to_f32(p[i]);
        return MOE_OK;
    case MOE_ST_F8_E5M2:
        for (int64_t i = 0; i < n; i++) dst[i] = f8e5m2_to_f32(p[i]);
        return MOE_OK;
    default: return MOE_ERR_UNSUPPORTED;
    }
}

/* ---- directories ---- */

struct moe_st_dir {
    moe_st **files; /* owned */
    int n_files;
    moe_st_tensor **by_name; /* borrowed tensors, sorted by name */
    int64_t n;
    uint64_t data_bytes;
    int64_t blk_r, blk_c;
};

void moe_st_dir_close(moe_st_dir *d) {
    if (!d) return;
    for (int i = 0; i < d->n_files; i++) moe_st_close(d->files[i]);
    free(d->files);
    free(d->by_name);
    free(d);
}

static int plain_name(const char *s) {
    return s[0] && strcmp(s, ".") && strcmp(s, "..") && !strchr(s, '/') && strlen(s) < 256;
}

moe_status moe_st_dir_open(const char *dir, moe_st_dir **out, char *err, size_t errlen) {
    *out = NULL;
    moe_status st = MOE_OK;
    moe_st_dir *d = calloc(1, sizeof *d);
    json_t *idx = NULL;
    const char **names = NULL;
    size_t n_names = 0;
    if (!d) return MOE_ERR_NOMEM;
    d->blk_r = d->blk_c = 128;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    json_t *wm = NULL;
    if (access(path, F_OK) == 0) {
        json_error_t je;
        idx = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
        if (!idx) FAIL("%s:%d:%d: %s", path, je.line, je.column, je.text);
        wm = json_object_get(idx, "weight_map");
        if (!json_is_object(wm)) FAIL("%s: no \"weight_map\" object", path);
        const char *k;
        json_t *v;
        names = calloc(json_object_size(wm) + 1, sizeof *names);
        if (!names) {
            st = MOE_ERR_NOMEM;
            goto out;
        }
        json_object_foreach(wm, k, v) {
            char nb[128];
            if (!json_is_string(v) || !plain_name(json_string_value(v)))
                FAIL("%s: weight_map[\"%s\"] is not a file name inside the directory", path, esc(k, nb, sizeof nb));
            size_t j = 0;
            while (j < n_names && strcmp(names[j], json_string_value(v))) j++;
            if (j == n_names) names[n_names++] = json_string_value(v);
        }
    } else {
        static const char *single = "model.safetensors";
        names = calloc(1, sizeof *names);
        if (!names) {
            st = MOE_ERR_NOMEM;
            goto out;
        }
        names[n_names++] = single;
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        if (access(path, F_OK) != 0) {
            if (err) snprintf(err, errlen, "%s: neither model.safetensors.index.json nor model.safetensors found", dir);
            st = MOE_ERR_NOTFOUND;
            goto out;
        }
    }
    d->files = calloc(n_names ? n_names : 1, sizeof *d->files);
    if (!d->files) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    int64_t total = 0;
    for (size_t i = 0; i < n_names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if ((st = moe_st_open(path, &d->files[i], err, errlen))) goto out;
        d->n_files++;
        total += d->files[i]->n;
    }
    d->by_name = calloc((size_t)total + 1, sizeof *d->by_name);
    if (!d->by_name) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < d->n_files; i++)
        for (int64_t j = 0; j < d->files[i]->n; j++) {
            d->by_name[d->n++] = &d->files[i]->t[j];
            d->data_bytes += d->files[i]->t[j].nbytes;
        }
    qsort(d->by_name, (size_t)d->n, sizeof *d->by_name, cmp_name);
    for (int64_t i = 1; i < d->n; i++)
        if (!strcmp(d->by_name[i]->name, d->by_name[i - 1]->name)) {
            char nb[128];
            FAIL("%s: tensor '%s' is stored in two shards", dir, esc(d->by_name[i]->name, nb, sizeof nb));
        }
    if (wm) {
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v) {
            char nb[128];
            const moe_st_tensor *t = NULL;
            for (int i = 0; i < d->n_files && !t; i++)
                if (!strcmp(names[i], json_string_value(v))) t = moe_st_find(d->files[i], k);
            if (!t) FAIL("%s: weight_map lists '%s' in %s, which does not contain it", dir, esc(k, nb, sizeof nb), json_string_value(v));
        }
    }
out:
    free(names);
    json_decref(idx);
    if (st) {
        moe_st_dir_close(d);
        return st;
    }
    *out = d;
    return MOE_OK;
}

int64_t moe_st_dir_n_tensors(const moe_st_dir *d) { return d->n; }
const moe_st_tensor *moe_st_dir_tensor_at(const moe_st_dir *d, int64_t i) {
    return i >= 0 && i < d->n ? d->by_name[i] : NULL;
}
const moe_st_tensor *moe_st_dir_find(const moe_st_dir *d, const char *name) { return find_in(d->by_name, d->n, name); }
uint64_t moe_st_dir_data_bytes(const moe_st_dir *d) { return d->data_bytes; }
void moe_st_dir_set_fp8_block(moe_st_dir *d, int64_t br, int64_t bc) {
    if (br > 0 && bc > 0) {
        d->blk_r = br;
        d->blk_c = bc;
    }
}

static void rows_cols(const moe_st_tensor *t, int64_t *rows, int64_t *cols) {
    if (t->n_dims >= 2) {
        *rows = t->shape[0];
        *cols = t->shape[0] ? t->n_elem / t->shape[0] : 0;
    } else {
        *rows = 1;
        *cols = t->n_elem;
    }
}

moe_status moe_st_dir_read_rows(const moe_st_dir *d, const char *name, int64_t row0, int64_t n_rows, float *dst,
                                char *err, size_t errlen) {
    moe_status st = MOE_OK;
    const moe_st_tensor *t = moe_st_dir_find(d, name);
    if (!t) {
        if (err) snprintf(err, errlen, "tensor '%s' not found in the checkpoint", name);
        return MOE_ERR_NOTFOUND;
    }
    int64_t rows, cols;
    rows_cols(t, &rows, &cols);
    if (row0 < 0 || n_rows < 0 || row0 > rows || n_rows > rows - row0) {
        if (err) snprintf(err, errlen, "tensor '%s': rows %lld..%lld out of range (%lld rows)", name, (long long)row0,
                          (long long)(row0 + n_rows), (long long)rows);
        return MOE_ERR_RANGE;
    }
    st = moe_st_read_f32(t, row0 * cols, n_rows * cols, dst);
    if (st) {
        if (err) snprintf(err, errlen, "tensor '%s': dtype %s cannot be read as float", name, moe_st_dtype_name(t->dtype));
        return st;
    }
    if (t->dtype != MOE_ST_F8_E4M3 && t->dtype != MOE_ST_F8_E5M2) return MOE_OK;
    /* block-wise dequantization: w[r][c] *= scale_inv[r / br][c / bc] (llama.cpp dequant_model) */
    char sn[512];
    snprintf(sn, sizeof sn, "%s_scale_inv", name);
    const moe_st_tensor *s = moe_st_dir_find(d, sn);
    if (!s) {
        if (err) snprintf(err, errlen, "tensor '%s' is FP8 but '%s' is missing", name, sn);
        return MOE_ERR_FORMAT;
    }
    const int64_t br = d->blk_r, bc = d->blk_c, sr = (rows + br - 1) / br, sc = (cols + bc - 1) / bc;
    if (s->n_dims != 2 || s->shape[0] != sr || s->shape[1] != sc) {
        if (err) snprintf(err, errlen, "'%s' has shape [%lld, %lld], expected [%lld, %lld] for %lldx%lld blocks of [%lld, %lld]",
                          sn, (long long)(s->n_dims > 0 ? s->shape[0] : 0), (long long)(s->n_dims > 1 ? s->shape[1] : 0),
                          (long long)sr, (long long)sc, (long long)br, (long long)bc, (long long)rows, (long long)cols);
        return MOE_ERR_FORMAT;
    }
    float *srow = malloc(sizeof(float) * (size_t)(sc ? sc : 1));
    if (!srow) return MOE_ERR_NOMEM;
    for (int64_t r = 0; r < n_rows && !st; r++) {
        int64_t gr = row0 + r;
        if (r == 0 || gr % br == 0) st = moe_st_read_f32(s, (gr / br) * sc, sc, srow);
        if (st) {
            if (err) snprintf(err, errlen, "'%s': dtype %s cannot be read as float", sn, moe_st_dtype_name(s->dtype));
            break;
        }
        float *y = dst + r * cols;
        for (int64_t c = 0; c < cols; c++) y[c] *= srow[c / bc];
    }
    free(srow);
    return st;
}

/* ---- writer ---- */

moe_status moe_st_write(const char *path, const moe_st_wtensor *ts, size_t n, const char *const *meta, char *err,
                        size_t errlen) {
    moe_status st = MOE_OK;
    json_t *root = json_object();
    char *hdr = NULL;
    FILE *fp = NULL;
    if (!root) return MOE_ERR_NOMEM;
    uint64_t off = 0;
    if (meta && meta[0]) {
        json_t *m = json_object();
        for (size_t i = 0; meta[i] && meta[i + 1]; i += 2) json_object_set_new(m, meta[i], json_string(meta[i + 1]));
        json_object_set_new(root, "__metadata__", m);
    }
    for (size_t i = 0; i < n; i++) {
        size_t es = moe_st_dtype_size(ts[i].dtype);
        if (!es || ts[i].n_dims < 0 || ts[i].n_dims > MOE_ST_MAX_DIMS) {
            if (err) snprintf(err, errlen, "safetensors writer: tensor '%s' has a bad dtype or rank", ts[i].name);
            st = MOE_ERR_INVAL;
            goto out;
        }
        uint64_t ne = 1;
        json_t *shape = json_array();
        for (int d = 0; d < ts[i].n_dims; d++) {
            ne *= (uint64_t)ts[i].shape[d];
            json_array_append_new(shape, json_integer(ts[i].shape[d]));
        }
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(moe_st_dtype_name(ts[i].dtype)));
        json_object_set_new(e, "shape", shape);
        json_t *o = json_array();
        json_array_append_new(o, json_integer((json_int_t)off));
        json_array_append_new(o, json_integer((json_int_t)(off + ne * es)));
        json_object_set_new(e, "data_offsets", o);
        json_object_set_new(root, ts[i].name, e);
        off += ne * es;
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    uint64_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    fp = fopen(path, "wb");
    if (!fp) {
        if (err) snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        st = MOE_ERR_IO;
        goto out;
    }
    uint8_t lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (uint8_t)(padded >> (8 * i));
    int bad = fwrite(lb, 1, 8, fp) != 8 || fwrite(hdr, 1, hl, fp) != hl;
    for (uint64_t i = hl; i < padded && !bad; i++) bad = fputc(' ', fp) == EOF;
    for (size_t i = 0; i < n && !bad; i++) {
        uint64_t ne = 1;
        for (int d = 0; d < ts[i].n_dims; d++) ne *= (uint64_t)ts[i].shape[d];
        size_t nb = (size_t)(ne * moe_st_dtype_size(ts[i].dtype));
        bad = nb && fwrite(ts[i].data, 1, nb, fp) != nb;
    }
    if (fclose(fp) || bad) {
        if (err) snprintf(err, errlen, "writing '%s' failed", path);
        st = MOE_ERR_IO;
    }
    fp = NULL;
out:
    free(hdr);
    json_decref(root);
    return st;
}
