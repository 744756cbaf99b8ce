/* moekit fmt: GGUF v2/v3 reader and writer (spec gguf.md).
 *
 * Reader invariants: after moe_gguf_open succeeds,
 *   - every KV record and tensor-info record lies inside the file;
 *   - string/array lengths are <= 2^30 and fit the remaining bytes; value and element types are
 *     0..12, no nested arrays;
 *   - keys are non-empty, unique and free of NUL bytes; general.alignment, if present, is a
 *     UINT32 power of two;
 *   - every tensor has a unique name of 1..63 bytes without NUL, 0..4 dims (0 read as 1),
 *     ne[i] >= 0, a valid ggml type id (supported or not), ne[0] a multiple of the block size,
 *     an element count that fits int64 and a byte size that does not overflow, offsets exactly
 *     consecutive (offset_0 = 0, offset_i = offset_{i-1} + PAD(nbytes_{i-1}, A)) and data that
 *     ends inside the file (padding after the last tensor is not required, as in llama.cpp's
 *     mmap loader).
 * Memory grows with the records actually read, never with the header's counts, so a lying
 * count costs nothing; each failure is one message "gguf: at byte N: <field>: <problem>".
 * Accessors by index re-check the index; everything else was proven at open. The file is mapped read-only (MAP_PRIVATE) and
 * never copied; for STRING arrays an index of element offsets is built so element j is O(1).
 *
 * Layout (all little-endian):
 *   magic "GGUF" | u32 version | i64 n_tensors | i64 n_kv | n_kv × {str key, i32 type, value}
 *   | n_tensors × {str name, u32 n_dims, i64 ne[n_dims], i32 type, u64 offset} | pad to A
 *   | data section
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/mapfile.h"
#include "moe/gguf.h"

#define GGUF_MAX_LEN (1ull << 30) /* longest string / array llama.cpp accepts */
#define GGUF_MAX_NAME 63
#define GGUF_DEFAULT_ALIGN 32

typedef struct kv_rec {
    moe_str key;
    int type;           /* moe_gguf_type */
    int arr_type;       /* element type if ARRAY */
    uint64_t arr_n;     /* element count if ARRAY */
    const uint8_t *val; /* start of the value (for arrays: first element) */
    uint64_t *str_off;  /* owned: offsets (from file start) of each string of a STRING array */
} kv_rec;

struct moe_gguf {
    const uint8_t *base; /* borrowed (mem) or owned mapping */
    uint64_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_off;
    int64_t n_kv, n_tensors;
    kv_rec *kv;              /* owned, n_kv */
    moe_gguf_tensor *tensor; /* owned, n_tensors */
    size_t *hash;            /* owned: open-addressing table over tensor names (index+1), size hash_n */
    size_t hash_n;
    char err[256];
};

const char *moe_gguf_type_name(int type) {
    static const char *names[] = {"uint8", "int8",   "uint16", "int16", "uint32",
                                  "int32", "float32", "bool",  "string", "array",
                                  "uint64", "int64",  "float64"};
    return type >= 0 && type <= 12 ? names[type] : "invalid";
}

static size_t scalar_size(int type) {
    switch (type) {
    case MOE_GGUF_TYPE_UINT8: case MOE_GGUF_TYPE_INT8: case MOE_GGUF_TYPE_BOOL: return 1;
    case MOE_GGUF_TYPE_UINT16: case MOE_GGUF_TYPE_INT16: return 2;
    case MOE_GGUF_TYPE_UINT32: case MOE_GGUF_TYPE_INT32: case MOE_GGUF_TYPE_FLOAT32: return 4;
    case MOE_GGUF_TYPE_UINT64: case MOE_GGUF_TYPE_INT64: case MOE_GGUF_TYPE_FLOAT64: return 8;
    default: return 0;
    }
}

/* ---- bounded cursor over the file ---- */
typedef struct {
    const uint8_t *p;
    uint64_t pos, size;
    char *err;
    size_t errlen;
} cur;

/* Every format error goes through here: "gguf: at byte N: <field>: <problem>". */
static moe_status fail(cur *c, uint64_t at, const char *fmt, ...) {
    if (c->err && c->errlen) {
        int n = snprintf(c->err, c->errlen, "gguf: at byte %llu: ", (unsigned long long)at);
        va_list ap;
        va_start(ap, fmt);
        if (n >= 0 && (size_t)n < c->errlen) vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    return MOE_ERR_FORMAT;
}

static int need(cur *c, uint64_t n) { return n <= c->size - c->pos; }

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static uint32_t rd_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static moe_status get_u32(cur *c, uint32_t *v, const char *what) {
    *v = 0;
    if (!need(c, 4)) return fail(c, c->pos, "%s: file truncated (4 bytes needed, %llu left)", what,
                                 (unsigned long long)(c->size - c->pos));
    *v = rd_u32(c->p + c->pos);
    c->pos += 4;
    return MOE_OK;
}
static moe_status get_u64(cur *c, uint64_t *v, const char *what) {
    *v = 0;
    if (!need(c, 8)) return fail(c, c->pos, "%s: file truncated (8 bytes needed, %llu left)", what,
                                 (unsigned long long)(c->size - c->pos));
    *v = rd_u64(c->p + c->pos);
    c->pos += 8;
    return MOE_OK;
}
static moe_status get_str(cur *c, moe_str *s, const char *what) {
    uint64_t at = c->pos, n;
    if (!need(c, 8))
        return fail(c, at, "%s: file truncated in the string length (8 bytes needed, %llu left)", what,
                    (unsigned long long)(c->size - c->pos));
    n = rd_u64(c->p + c->pos);
    if (n > GGUF_MAX_LEN) return fail(c, at, "%s: string length %llu exceeds 2^30", what, (unsigned long long)n);
    c->pos += 8;
    if (!need(c, n))
        return fail(c, at, "%s: string length %llu runs past the end of the file (%llu bytes left)", what,
                    (unsigned long long)n, (unsigned long long)(c->size - c->pos));
    s->ptr = (const char *)c->p + c->pos;
    s->len = n;
    c->pos += n;
    return MOE_OK;
}

static int str_eq(moe_str a, const char *b, size_t blen) { return a.len == blen && memcmp(a.ptr, b, blen) == 0; }

/* A key or tensor name for messages: at most ~60 bytes, bytes outside printable ASCII as \xNN,
 * so hostile names cannot put control characters or megabytes into a log line. */
static const char *printable(moe_str s, char *buf, size_t n) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (uint64_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        if (o + 8 >= n) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f && ch != '\\' && ch != '\'') {
            buf[o++] = (char)ch;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        }
    }
    buf[o] = 0;
    return buf;
}

static uint32_t hash_bytes(const char *p, uint64_t n) {
    uint32_t h = 2166136261u;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* Open-addressing table over n names: slot holds index+1 (0 = empty), size a power of two
 * >= 2n so probing always ends. Returns the index of the first duplicate name, or -1 (via
 * *dup). n is bounded by records actually parsed (each >= 14 bytes of the file), so the
 * size computation cannot overflow. */
static moe_status build_hash(size_t **tab, size_t *tab_n, size_t n, moe_str (*name_at)(const void *, size_t),
                             const void *arr, int64_t *dup) {
    size_t tn = 16;
    while (tn < 2 * n) tn <<= 1;
    size_t *t = calloc(tn, sizeof *t);
    *dup = -1;
    if (!t) return MOE_ERR_NOMEM;
    for (size_t i = 0; i < n && *dup < 0; i++) {
        moe_str s = name_at(arr, i);
        for (size_t h = hash_bytes(s.ptr, s.len) & (tn - 1);; h = (h + 1) & (tn - 1)) {
            if (!t[h]) {
                t[h] = i + 1;
                break;
            }
            if (str_eq(name_at(arr, t[h] - 1), s.ptr, s.len)) {
                *dup = (int64_t)i;
                break;
            }
        }
    }
    *tab = t;
    *tab_n = tn;
    return MOE_OK;
}

static moe_str kv_name_at(const void *arr, size_t i) { return ((const kv_rec *)arr)[i].key; }
static moe_str tensor_name_at(const void *arr, size_t i) { return ((const moe_gguf_tensor *)arr)[i].name; }

/* Keys are looked up rarely (model load); a linear scan keeps the reader simple. */
static int64_t find_key_n(const moe_gguf *g, const char *key, size_t klen) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key, klen)) return i;
    return -1;
}

/* Grow a parse array so it holds one more element. Arrays grow with the records actually
 * read, never from the header's counts, so a lying count cannot make us allocate. */
static moe_status grow(void **arr, size_t *cap, size_t n, size_t elem) {
    if (n < *cap) return MOE_OK;
    size_t nc = *cap ? 2 * *cap : 64;
    void *p = realloc(*arr, nc * elem);
    if (!p) return MOE_ERR_NOMEM;
    memset((char *)p + *cap * elem, 0, (nc - *cap) * elem);
    *arr = p;
    *cap = nc;
    return MOE_OK;
}

static moe_status parse_value(cur *c, kv_rec *kv, const char *key) {
    uint64_t at = c->pos;
    moe_status st;
    if (kv->type == MOE_GGUF_TYPE_STRING) {
        moe_str s;
        kv->val = c->p + c->pos;
        char what[96];
        snprintf(what, sizeof what, "key '%s' value", key);
        return get_str(c, &s, what);
    }
    if (kv->type == MOE_GGUF_TYPE_ARRAY) {
        uint32_t et;
        uint64_t n;
        if ((st = get_u32(c, &et, "array element type"))) return st;
        if (et == MOE_GGUF_TYPE_ARRAY) return fail(c, at, "key '%s': nested arrays are not allowed", key);
        if (et > MOE_GGUF_TYPE_FLOAT64)
            return fail(c, at, "key '%s': array element type %u is not a GGUF type", key, et);
        if ((st = get_u64(c, &n, "array length"))) return st;
        if (n > GGUF_MAX_LEN)
            return fail(c, at + 4, "key '%s': array length %llu exceeds 2^30", key, (unsigned long long)n);
        kv->arr_type = (int)et;
        kv->arr_n = n;
        kv->val = c->p + c->pos;
        if (et == MOE_GGUF_TYPE_STRING) {
            /* each element is a full string (>= 8 bytes): bound n by the bytes left, then index */
            if (n > (c->size - c->pos) / 8)
                return fail(c, at + 4, "key '%s': array of %llu strings cannot fit in the %llu bytes left", key,
                            (unsigned long long)n, (unsigned long long)(c->size - c->pos));
            kv->str_off = malloc((n ? n : 1) * sizeof(uint64_t));
            if (!kv->str_off) return MOE_ERR_NOMEM;
            for (uint64_t j = 0; j < n; j++) {
                moe_str s;
                char what[128];
                kv->str_off[j] = c->pos;
                if (c->size - c->pos < 8 || rd_u64(c->p + c->pos) > c->size - c->pos - 8) {
                    snprintf(what, sizeof what, "key '%s' element %llu", key, (unsigned long long)j);
                    return get_str(c, &s, what);
                }
                if ((st = get_str(c, &s, "array element"))) return st;
            }
        } else {
            size_t es = scalar_size((int)et);
            if (n > (c->size - c->pos) / es)
                return fail(c, at + 4, "key '%s': array of %llu %s runs past the end of the file (%llu bytes left)",
                            key, (unsigned long long)n, moe_gguf_type_name((int)et),
                            (unsigned long long)(c->size - c->pos));
            c->pos += n * es;
        }
        return MOE_OK;
    }
    size_t es = scalar_size(kv->type);
    if (!need(c, es))
        return fail(c, at, "key '%s': file truncated in the %s value (%zu bytes needed, %llu left)", key,
                    moe_gguf_type_name(kv->type), es, (unsigned long long)(c->size - c->pos));
    kv->val = c->p + c->pos;
    c->pos += es;
    return MOE_OK;
}

static moe_status parse_header(moe_gguf *g, cur *c, uint64_t *n_tensors, uint64_t *n_kv) {
    moe_status st;
    uint32_t version;
    if (g->size < 4)
        return fail(c, 0, "magic: file is %llu bytes, too short for a GGUF header", (unsigned long long)g->size);
    if (memcmp(g->base, "GGUF", 4) != 0)
        return fail(c, 0, "magic: bad magic 0x%08x (expected \"GGUF\" = 0x46554747)", rd_u32(g->base));
    c->pos = 4;
    if ((st = get_u32(c, &version, "version"))) return st;
    if (version == 0) return fail(c, 4, "version: 0 is not a GGUF version");
    if ((version & 0xffff) == 0)
        return fail(c, 4, "version: 0x%08x looks byte-swapped (big-endian files are not supported)", version);
    if (version == 1) return fail(c, 4, "version: GGUF version 1 is not supported (only 2 and 3)");
    if (version > 3) return fail(c, 4, "version: unsupported GGUF version %u (only 2 and 3)", version);
    g->version = version;
    if ((st = get_u64(c, n_tensors, "tensor count"))) return st;
    if ((int64_t)*n_tensors < 0) return fail(c, 8, "tensor count: %lld is negative", (long long)*n_tensors);
    if ((st = get_u64(c, n_kv, "key/value count"))) return st;
    if ((int64_t)*n_kv < 0) return fail(c, 16, "key/value count: %lld is negative", (long long)*n_kv);
    /* each KV record takes >= 8+1+4+1 bytes and each tensor-info record >= 8+1+4+4+8: reject
     * lying counts before reading a record */
    uint64_t left = g->size - c->pos;
    if (*n_kv > left / 14)
        return fail(c, 16, "key/value count: %llu records cannot fit in the %llu bytes left",
                    (unsigned long long)*n_kv, (unsigned long long)left);
    if (*n_tensors > (left - *n_kv * 14) / 25)
        return fail(c, 8, "tensor count: %llu records cannot fit in the %llu bytes left",
                    (unsigned long long)*n_tensors, (unsigned long long)left);
    return MOE_OK;
}

static moe_status parse_kvs(moe_gguf *g, cur *c, uint64_t n_kv) {
    moe_status st;
    size_t cap = 0;
    g->alignment = GGUF_DEFAULT_ALIGN;
    for (uint64_t i = 0; i < n_kv; i++) {
        uint64_t at = c->pos;
        uint32_t type;
        char kbuf[80];
        if ((st = grow((void **)&g->kv, &cap, (size_t)i, sizeof(kv_rec)))) return st;
        kv_rec *kv = &g->kv[i];
        g->n_kv = (int64_t)i + 1; /* from here on close() frees this record's str_off */
        char what[48];
        snprintf(what, sizeof what, "key #%llu", (unsigned long long)i);
        if ((st = get_str(c, &kv->key, what))) return st;
        if (kv->key.len == 0) return fail(c, at, "key #%llu: the key is empty", (unsigned long long)i);
        printable(kv->key, kbuf, sizeof kbuf);
        if (memchr(kv->key.ptr, 0, kv->key.len)) return fail(c, at, "key '%s': contains a NUL byte", kbuf);
        uint64_t tat = c->pos;
        if ((st = get_u32(c, &type, "value type"))) return st;
        if (type > MOE_GGUF_TYPE_FLOAT64)
            return fail(c, tat, "key '%s': value type %u is not a GGUF type (0..12)", kbuf, type);
        kv->type = (int)type;
        kv->arr_type = -1;
        if ((st = parse_value(c, kv, kbuf))) return st;
        if (str_eq(kv->key, "general.alignment", 17)) {
            if (kv->type != MOE_GGUF_TYPE_UINT32)
                return fail(c, tat, "key 'general.alignment': type %s, expected uint32", moe_gguf_type_name(kv->type));
            uint32_t a = rd_u32(kv->val);
            if (a == 0 || (a & (a - 1)))
                return fail(c, (uint64_t)(kv->val - g->base), "key 'general.alignment': %u is not a power of two", a);
            g->alignment = a;
        }
    }
    size_t *tab, tab_n;
    int64_t dup;
    if ((st = build_hash(&tab, &tab_n, (size_t)n_kv, kv_name_at, g->kv, &dup))) return st;
    free(tab);
    if (dup >= 0) {
        char kbuf[80];
        moe_str k = g->kv[dup].key;
        return fail(c, (uint64_t)((const uint8_t *)k.ptr - g->base) - 8, "key '%s': duplicate key",
                    printable(k, kbuf, sizeof kbuf));
    }
    return MOE_OK;
}

static moe_status parse_tensor_infos(moe_gguf *g, cur *c, uint64_t n_tensors) {
    moe_status st;
    size_t cap = 0;
    uint64_t expect_off = 0, A = g->alignment;
    for (uint64_t i = 0; i < n_tensors; i++) {
        uint64_t at = c->pos;
        uint32_t nd, type;
        char nbuf[80];
        if ((st = grow((void **)&g->tensor, &cap, (size_t)i, sizeof(moe_gguf_tensor)))) return st;
        moe_gguf_tensor *t = &g->tensor[i];
        char what[48];
        snprintf(what, sizeof what, "tensor #%llu name", (unsigned long long)i);
        if ((st = get_str(c, &t->name, what))) return st;
        printable(t->name, nbuf, sizeof nbuf);
        if (t->name.len == 0) return fail(c, at, "tensor #%llu: the name is empty", (unsigned long long)i);
        if (t->name.len > GGUF_MAX_NAME)
            return fail(c, at, "tensor '%s': name is %llu bytes (at most 63)", nbuf, (unsigned long long)t->name.len);
        if (memchr(t->name.ptr, 0, t->name.len)) return fail(c, at, "tensor '%s': name contains a NUL byte", nbuf);
        uint64_t dat = c->pos;
        if ((st = get_u32(c, &nd, "tensor n_dims"))) return st;
        if (nd > 4) return fail(c, dat, "tensor '%s': n_dims = %u (at most 4)", nbuf, nd);
        t->n_dims = nd ? (int)nd : 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t v, vat = c->pos;
            if ((st = get_u64(c, &v, "tensor ne"))) return st;
            if ((int64_t)v < 0) return fail(c, vat, "tensor '%s': ne[%u] = %lld is negative", nbuf, d, (long long)v);
            t->ne[d] = (int64_t)v;
        }
        uint64_t tat = c->pos;
        if ((st = get_u32(c, &type, "tensor type"))) return st;
        if (type >= MOE_DTYPE_COUNT || moe_dtype_block_size((int)type) == 0)
            return fail(c, tat, "tensor '%s': type id %u is not a valid ggml type", nbuf, type);
        t->type = (int)type;
        if ((st = get_u64(c, &t->offset, "tensor offset"))) return st;
        /* element count (must fit int64, as in ggml) and byte size, without overflow */
        uint64_t nel = 1;
        for (int d = 0; d < 4; d++) {
            uint64_t e = (uint64_t)t->ne[d];
            if (e && nel > (uint64_t)INT64_MAX / e)
                return fail(c, dat + 4, "tensor '%s': element count %lld x %lld x %lld x %lld overflows int64", nbuf,
                            (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3]);
            nel *= e;
        }
        int64_t bs = moe_dtype_block_size(t->type);
        if (t->ne[0] % bs)
            return fail(c, dat + 4, "tensor '%s': ne[0] = %lld is not a multiple of the %s block size %lld", nbuf,
                        (long long)t->ne[0], moe_dtype_name(t->type), (long long)bs);
        uint64_t blocks = nel / (uint64_t)bs, bb = moe_dtype_block_bytes(t->type);
        if (blocks && bb > UINT64_MAX / blocks)
            return fail(c, dat + 4, "tensor '%s': byte size overflows uint64", nbuf);
        t->nbytes = blocks * bb;
        if (t->nbytes > g->size)
            return fail(c, dat + 4, "tensor '%s': %llu bytes of data cannot fit in a %llu-byte file", nbuf,
                        (unsigned long long)t->nbytes, (unsigned long long)g->size);
        if (t->offset != expect_off)
            return fail(c, tat + 4, "tensor '%s': offset %llu, expected %llu (offsets must be consecutive, each "
                        "tensor padded to the %llu-byte alignment)", nbuf, (unsigned long long)t->offset,
                        (unsigned long long)expect_off, (unsigned long long)A);
        /* nbytes <= size, so this cannot wrap; once past the file size no later tensor fits */
        expect_off += (t->nbytes + A - 1) / A * A;
        if (expect_off > g->size + A)
            return fail(c, dat + 4, "tensor '%s': data up to offset %llu cannot fit in a %llu-byte file", nbuf,
                        (unsigned long long)expect_off, (unsigned long long)g->size);
        g->n_tensors = (int64_t)i + 1;
    }
    int64_t dup;
    if ((st = build_hash(&g->hash, &g->hash_n, (size_t)n_tensors, tensor_name_at, g->tensor, &dup))) return st;
    if (dup >= 0) {
        char nbuf[80];
        moe_str s = g->tensor[dup].name;
        return fail(c, (uint64_t)((const uint8_t *)s.ptr - g->base) - 8, "tensor '%s': duplicate tensor name",
                    printable(s, nbuf, sizeof nbuf));
    }
    return MOE_OK;
}

static moe_status parse(moe_gguf *g, char *err, size_t errlen) {
    cur c = {g->base, 0, g->size, err, errlen};
    moe_status st;
    uint64_t n_tensors = 0, n_kv = 0;
    if ((st = parse_header(g, &c, &n_tensors, &n_kv))) return st;
    if ((st = parse_kvs(g, &c, n_kv))) return st;
    if ((st = parse_tensor_infos(g, &c, n_tensors))) return st;
    /* data section: starts at the next multiple of A after the infos (absolute offset) */
    uint64_t A = g->alignment;
    g->data_off = (c.pos + A - 1) / A * A;
    if (!n_tensors) return MOE_OK; /* a metadata-only file may end right after the KVs */
    if (g->data_off > g->size)
        return fail(&c, c.pos, "data section: file ends at byte %llu, before the data section at %llu",
                    (unsigned long long)g->size, (unsigned long long)g->data_off);
    for (uint64_t i = 0; i < n_tensors; i++) {
        moe_gguf_tensor *t = &g->tensor[i];
        if (t->offset > g->size - g->data_off || t->nbytes > g->size - g->data_off - t->offset) {
            char nbuf[80];
            return fail(&c, g->data_off + t->offset,
                        "tensor '%s': data [%llu, %llu) runs past the end of the file (%llu bytes): truncated?",
                        printable(t->name, nbuf, sizeof nbuf), (unsigned long long)(g->data_off + t->offset),
                        (unsigned long long)(g->data_off + t->offset + t->nbytes), (unsigned long long)g->size);
        }
        t->data = g->base + g->data_off + t->offset;
    }
    return MOE_OK;
}

static moe_status open_common(moe_gguf *g, moe_gguf **out, char *err, size_t errlen) {
    moe_status st = parse(g, err, errlen);
    if (st == MOE_ERR_NOMEM && err && errlen) snprintf(err, errlen, "gguf: out of memory while reading the header");
    if (st) {
        moe_gguf_close(g);
        return st;
    }
    *out = g;
    return MOE_OK;
}

moe_status moe_gguf_open_mem(const void *buf, size_t len, moe_gguf **out, char *err, size_t errlen) {
    *out = NULL;
    moe_gguf *g = calloc(1, sizeof *g);
    if (!g) return MOE_ERR_NOMEM;
    g->base = buf;
    g->size = len;
    return open_common(g, out, err, errlen);
}

moe_status moe_gguf_open(const char *path, moe_gguf **out, char *err, size_t errlen) {
    *out = NULL;
    const void *base;
    size_t size;
    moe_status st0 = moe_map_file(path, &base, &size, err, errlen);
    if (st0) return st0;
    moe_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        moe_unmap_file(base, size);
        return MOE_ERR_NOMEM;
    }
    g->base = base;
    g->size = size;
    g->mapped = 1;
    char e2[256];
    moe_status st = open_common(g, out, e2, sizeof e2);
    if (st && err) snprintf(err, errlen, "%s: %s", path, e2);
    return st;
}

void moe_gguf_close(moe_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; g->kv && i < g->n_kv; i++) free(g->kv[i].str_off);
    free(g->kv);
    free(g->tensor);
    free(g->hash);
    if (g->mapped) moe_unmap_file(g->base, g->size);
    free(g);
}

uint32_t moe_gguf_version(const moe_gguf *g) { return g->version; }
uint32_t moe_gguf_alignment(const moe_gguf *g) { return g->alignment; }
uint64_t moe_gguf_data_offset(const moe_gguf *g) { return g->data_off; }
uint64_t moe_gguf_file_size(const moe_gguf *g) { return g->size; }
const void *moe_gguf_base(const moe_gguf *g) { return g->base; }
int64_t moe_gguf_n_kv(const moe_gguf *g) { return g->n_kv; }
int64_t moe_gguf_find_key(const moe_gguf *g, const char *key) { return find_key_n(g, key, strlen(key)); }

/* Accessors by index check the index, so a caller's off-by-one cannot read outside the
 * parsed records: a bad index gives an empty key, type -1, count 0 or NULL. */
static const kv_rec *kv_at(const moe_gguf *g, int64_t i) { return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL; }

moe_str moe_gguf_kv_key(const moe_gguf *g, int64_t i) {
    moe_str none = {"", 0};
    const kv_rec *kv = kv_at(g, i);
    return kv ? kv->key : none;
}
int moe_gguf_kv_type(const moe_gguf *g, int64_t i) {
    const kv_rec *kv = kv_at(g, i);
    return kv ? kv->type : -1;
}
int moe_gguf_arr_type(const moe_gguf *g, int64_t i) {
    const kv_rec *kv = kv_at(g, i);
    return kv && kv->type == MOE_GGUF_TYPE_ARRAY ? kv->arr_type : -1;
}
uint64_t moe_gguf_arr_n(const moe_gguf *g, int64_t i) {
    const kv_rec *kv = kv_at(g, i);
    return kv && kv->type == MOE_GGUF_TYPE_ARRAY ? kv->arr_n : 0;
}
const void *moe_gguf_arr_data(const moe_gguf *g, int64_t i) {
    const kv_rec *kv = kv_at(g, i);
    return kv ? kv->val : NULL;
}
const void *moe_gguf_kv_data(const moe_gguf *g, int64_t i) {
    const kv_rec *kv = kv_at(g, i);
    return kv ? kv->val : NULL;
}
size_t moe_gguf_type_size(int type) { return scalar_size(type); }

moe_str moe_gguf_arr_str(const moe_gguf *g, int64_t i, uint64_t j) {
    moe_str s = {"", 0};
    const kv_rec *kv = kv_at(g, i);
    if (!kv || kv->type != MOE_GGUF_TYPE_ARRAY || kv->arr_type != MOE_GGUF_TYPE_STRING || j >= kv->arr_n) return s;
    const uint8_t *p = g->base + kv->str_off[j];
    s.len = rd_u64(p);
    s.ptr = (const char *)p + 8;
    return s;
}

const char *moe_gguf_errmsg(const moe_gguf *g) { return g->err; }

static moe_status get_typed(const moe_gguf *g, const char *key, int type, const uint8_t **val) {
    moe_gguf *m = (moe_gguf *)g;
    int64_t i = moe_gguf_find_key(g, key);
    if (i < 0) {
        snprintf(m->err, sizeof m->err, "key '%s' not found", key);
        return MOE_ERR_NOTFOUND;
    }
    if (g->kv[i].type != type) {
        snprintf(m->err, sizeof m->err, "key '%s' has type %s, expected %s (at byte %llu)", key,
                 moe_gguf_type_name(g->kv[i].type), moe_gguf_type_name(type),
                 (unsigned long long)(g->kv[i].key.ptr - (const char *)g->base + g->kv[i].key.len));
        return MOE_ERR_FORMAT;
    }
    *val = g->kv[i].val;
    return MOE_OK;
}

moe_status moe_gguf_get_u32(const moe_gguf *g, const char *key, uint32_t *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_UINT32, &v);
    if (!st) *out = rd_u32(v);
    return st;
}
moe_status moe_gguf_get_i32(const moe_gguf *g, const char *key, int32_t *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_INT32, &v);
    if (!st) memcpy(out, v, 4);
    return st;
}
moe_status moe_gguf_get_u64(const moe_gguf *g, const char *key, uint64_t *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_UINT64, &v);
    if (!st) *out = rd_u64(v);
    return st;
}
moe_status moe_gguf_get_f32(const moe_gguf *g, const char *key, float *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_FLOAT32, &v);
    if (!st) memcpy(out, v, 4);
    return st;
}
moe_status moe_gguf_get_bool(const moe_gguf *g, const char *key, int *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_BOOL, &v);
    if (!st) *out = v[0] != 0;
    return st;
}
moe_status moe_gguf_get_str(const moe_gguf *g, const char *key, moe_str *out) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_STRING, &v);
    if (!st) {
        out->len = rd_u64(v);
        out->ptr = (const char *)v + 8;
    }
    return st;
}
moe_status moe_gguf_get_scalar(const moe_gguf *g, const char *key, int type, void *out) {
    const uint8_t *v;
    size_t es = scalar_size(type);
    if (!es) return MOE_ERR_INVAL;
    moe_status st = get_typed(g, key, type, &v);
    if (!st) memcpy(out, v, es);
    return st;
}
moe_status moe_gguf_get_arr(const moe_gguf *g, const char *key, int elem_type, int64_t *index, uint64_t *n) {
    const uint8_t *v;
    moe_status st = get_typed(g, key, MOE_GGUF_TYPE_ARRAY, &v);
    if (st) return st;
    int64_t i = moe_gguf_find_key(g, key);
    if (g->kv[i].arr_type != elem_type) {
        snprintf(((moe_gguf *)g)->err, sizeof g->err, "key '%s' is an array of %s, expected an array of %s", key,
                 moe_gguf_type_name(g->kv[i].arr_type), moe_gguf_type_name(elem_type));
        return MOE_ERR_FORMAT;
    }
    *index = i;
    *n = g->kv[i].arr_n;
    return MOE_OK;
}

int64_t moe_gguf_n_tensors(const moe_gguf *g) { return g->n_tensors; }
const moe_gguf_tensor *moe_gguf_tensor_at(const moe_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensor[i] : NULL;
}
const moe_gguf_tensor *moe_gguf_find_tensor(const moe_gguf *g, const char *name) {
    size_t n = strlen(name);
    if (!g->hash_n) return NULL;
    for (size_t h = hash_bytes(name, n) & (g->hash_n - 1);; h = (h + 1) & (g->hash_n - 1)) {
        if (!g->hash[h]) return NULL;
        const moe_gguf_tensor *t = &g->tensor[g->hash[h] - 1];
        if (str_eq(t->name, name, n)) return t;
    }
}

/* ================================ writer ================================ */

typedef struct wkv {
    char *key;
    int type, arr_type;
    uint8_t *blob; /* owned: encoded value bytes exactly as on disk (after the type field) */
    size_t blob_len;
} wkv;

typedef struct wtensor {
    char name[GGUF_MAX_NAME + 1];
    int type, n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
    const void *data; /* borrowed or NULL */
} wtensor;

struct moe_gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    uint32_t alignment;
};

moe_status moe_gguf_writer_init(moe_gguf_writer **out) {
    *out = calloc(1, sizeof **out);
    if (!*out) return MOE_ERR_NOMEM;
    (*out)->alignment = GGUF_DEFAULT_ALIGN;
    return MOE_OK;
}

void moe_gguf_writer_free(moe_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].blob);
    }
    free(w->kv);
    free(w->t);
    free(w);
}

static moe_status add_kv(moe_gguf_writer *w, const char *key, int type, int arr_type, const void *blob, size_t len) {
    if (!key || !*key || strlen(key) > GGUF_MAX_LEN) return MOE_ERR_INVAL;
    if (strcmp(key, "general.alignment") == 0) {
        /* the reader (ours and llama.cpp's) rejects any other type or a non-power of two */
        uint32_t a;
        if (type != MOE_GGUF_TYPE_UINT32) return MOE_ERR_INVAL;
        memcpy(&a, blob, 4);
        if (a == 0 || (a & (a - 1))) return MOE_ERR_INVAL;
    }
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) return MOE_ERR_INVAL;
    if (w->n_kv == w->cap_kv) {
        size_t nc = w->cap_kv ? 2 * w->cap_kv : 32;
        wkv *nk = realloc(w->kv, nc * sizeof *nk);
        if (!nk) return MOE_ERR_NOMEM;
        w->kv = nk;
        w->cap_kv = nc;
    }
    wkv *k = &w->kv[w->n_kv];
    k->key = strdup(key);
    k->blob = malloc(len ? len : 1);
    if (!k->key || !k->blob) {
        free(k->key);
        free(k->blob);
        return MOE_ERR_NOMEM;
    }
    memcpy(k->blob, blob, len);
    k->blob_len = len;
    k->type = type;
    k->arr_type = arr_type;
    if (strcmp(key, "general.alignment") == 0 && type == MOE_GGUF_TYPE_UINT32) memcpy(&w->alignment, blob, 4);
    w->n_kv++;
    return MOE_OK;
}

moe_status moe_gguf_writer_set_u32(moe_gguf_writer *w, const char *key, uint32_t v) {
    return add_kv(w, key, MOE_GGUF_TYPE_UINT32, -1, &v, 4);
}
moe_status moe_gguf_writer_set_i32(moe_gguf_writer *w, const char *key, int32_t v) {
    return add_kv(w, key, MOE_GGUF_TYPE_INT32, -1, &v, 4);
}
moe_status moe_gguf_writer_set_f32(moe_gguf_writer *w, const char *key, float v) {
    return add_kv(w, key, MOE_GGUF_TYPE_FLOAT32, -1, &v, 4);
}
moe_status moe_gguf_writer_set_bool(moe_gguf_writer *w, const char *key, int v) {
    uint8_t b = v ? 1 : 0;
    return add_kv(w, key, MOE_GGUF_TYPE_BOOL, -1, &b, 1);
}
moe_status moe_gguf_writer_set_u64(moe_gguf_writer *w, const char *key, uint64_t v) {
    return add_kv(w, key, MOE_GGUF_TYPE_UINT64, -1, &v, 8);
}
moe_status moe_gguf_writer_set_scalar(moe_gguf_writer *w, const char *key, int type, const void *v) {
    size_t es = scalar_size(type);
    if (!es || !v) return MOE_ERR_INVAL;
    if (type == MOE_GGUF_TYPE_BOOL) return moe_gguf_writer_set_bool(w, key, *(const uint8_t *)v);
    return add_kv(w, key, type, -1, v, es);
}
moe_status moe_gguf_writer_set_strn(moe_gguf_writer *w, const char *key, const char *v, uint64_t len) {
    if (len > GGUF_MAX_LEN) return MOE_ERR_INVAL;
    uint8_t *b = malloc(8 + len);
    if (!b) return MOE_ERR_NOMEM;
    memcpy(b, &len, 8);
    memcpy(b + 8, v, len);
    moe_status st = add_kv(w, key, MOE_GGUF_TYPE_STRING, -1, b, 8 + len);
    free(b);
    return st;
}
moe_status moe_gguf_writer_set_str(moe_gguf_writer *w, const char *key, const char *v) {
    return moe_gguf_writer_set_strn(w, key, v, strlen(v));
}
moe_status moe_gguf_writer_set_arr(moe_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n) {
    size_t es = scalar_size(elem_type);
    if (!es || n > GGUF_MAX_LEN) return MOE_ERR_INVAL;
    size_t len = 4 + 8 + n * es;
    uint8_t *b = malloc(len);
    if (!b) return MOE_ERR_NOMEM;
    uint32_t et = (uint32_t)elem_type;
    memcpy(b, &et, 4);
    memcpy(b + 4, &n, 8);
    if (n) memcpy(b + 12, data, n * es);
    moe_status st = add_kv(w, key, MOE_GGUF_TYPE_ARRAY, elem_type, b, len);
    free(b);
    return st;
}
moe_status moe_gguf_writer_set_arr_str(moe_gguf_writer *w, const char *key, const char *const *strs,
                                       const uint64_t *lens, uint64_t n) {
    if (n > GGUF_MAX_LEN) return MOE_ERR_INVAL;
    size_t len = 12;
    for (uint64_t j = 0; j < n; j++) len += 8 + (lens ? lens[j] : strlen(strs[j]));
    uint8_t *b = malloc(len), *p;
    if (!b) return MOE_ERR_NOMEM;
    uint32_t et = MOE_GGUF_TYPE_STRING;
    memcpy(b, &et, 4);
    memcpy(b + 4, &n, 8);
    p = b + 12;
    for (uint64_t j = 0; j < n; j++) {
        uint64_t l = lens ? lens[j] : strlen(strs[j]);
        memcpy(p, &l, 8);
        memcpy(p + 8, strs[j], l);
        p += 8 + l;
    }
    moe_status st = add_kv(w, key, MOE_GGUF_TYPE_ARRAY, MOE_GGUF_TYPE_STRING, b, len);
    free(b);
    return st;
}

moe_status moe_gguf_writer_copy_kv(moe_gguf_writer *w, const moe_gguf *src, int (*skip)(const char *key, void *ud),
                                   void *ud) {
    for (int64_t i = 0; i < src->n_kv; i++) {
        const kv_rec *kv = &src->kv[i];
        char key[1024];
        if (kv->key.len >= sizeof key) return MOE_ERR_UNSUPPORTED;
        memcpy(key, kv->key.ptr, kv->key.len);
        key[kv->key.len] = 0;
        if (skip && skip(key, ud)) continue;
        /* the encoded value spans from val (or, for arrays, 12 bytes before) to the next record */
        const uint8_t *start = kv->type == MOE_GGUF_TYPE_ARRAY ? kv->val - 12 : kv->val;
        size_t len;
        if (kv->type == MOE_GGUF_TYPE_STRING) {
            len = 8 + rd_u64(kv->val);
        } else if (kv->type == MOE_GGUF_TYPE_ARRAY) {
            if (kv->arr_type == MOE_GGUF_TYPE_STRING) {
                len = 12;
                for (uint64_t j = 0; j < kv->arr_n; j++) len += 8 + rd_u64(src->base + kv->str_off[j]);
            } else {
                len = 12 + kv->arr_n * scalar_size(kv->arr_type);
            }
        } else {
            len = scalar_size(kv->type);
        }
        moe_status st = add_kv(w, key, kv->type, kv->arr_type, start, len);
        if (st) return st;
    }
    return MOE_OK;
}

moe_status moe_gguf_writer_add_tensor(moe_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne,
                                      const void *data) {
    if (!name || !*name || strlen(name) > GGUF_MAX_NAME || n_dims < 1 || n_dims > 4) return MOE_ERR_INVAL;
    if (moe_dtype_block_size(type) == 0) return MOE_ERR_INVAL;
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0) return MOE_ERR_INVAL;
    if (w->n_t == w->cap_t) {
        size_t nc = w->cap_t ? 2 * w->cap_t : 64;
        wtensor *nt = realloc(w->t, nc * sizeof *nt);
        if (!nt) return MOE_ERR_NOMEM;
        w->t = nt;
        w->cap_t = nc;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    strcpy(t->name, name);
    t->type = type;
    t->n_dims = n_dims;
    uint64_t nel = 1;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] < 0) return MOE_ERR_INVAL;
        if (t->ne[d] && nel > (uint64_t)INT64_MAX / (uint64_t)t->ne[d]) return MOE_ERR_INVAL;
        nel *= (uint64_t)t->ne[d];
    }
    if (t->ne[0] % moe_dtype_block_size(type)) return MOE_ERR_INVAL;
    t->nbytes = nel / (uint64_t)moe_dtype_block_size(type) * moe_dtype_block_bytes(type);
    t->data = data;
    w->n_t++;
    return MOE_OK;
}

static int wr(FILE *f, const void *p, size_t n) { return fwrite(p, 1, n, f) == n ? 0 : -1; }
static int wr_pad(FILE *f, uint64_t n) {
    static const uint8_t z[64];
    while (n) {
        size_t k = n > sizeof z ? sizeof z : (size_t)n;
        if (wr(f, z, k)) return -1;
        n -= k;
    }
    return 0;
}

moe_status moe_gguf_writer_write(moe_gguf_writer *w, const char *path, moe_gguf_fill_fn fill, void *fill_ud,
                                 moe_gguf_progress_fn progress, void *progress_ud, char *err, size_t errlen) {
    char tmp[4096];
    uint64_t A = w->alignment, off = 0, pos = 0, total = 0, done = 0;
    void *buf = NULL;
    uint64_t buf_n = 0;
    moe_status st = MOE_OK;
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return MOE_ERR_INVAL;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        if (err) snprintf(err, errlen, "cannot create '%s': %s", tmp, strerror(errno));
        return MOE_ERR_IO;
    }
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off += (w->t[i].nbytes + A - 1) / A * A;
    }
    total = off;
    uint32_t ver = 3;
    uint64_t nt = w->n_t, nkv = w->n_kv;
    int bad = wr(f, "GGUF", 4) || wr(f, &ver, 4) || wr(f, &nt, 8) || wr(f, &nkv, 8);
    pos = 24;
    for (size_t i = 0; i < w->n_kv && !bad; i++) {
        uint64_t kl = strlen(w->kv[i].key);
        uint32_t ty = (uint32_t)w->kv[i].type;
        bad = wr(f, &kl, 8) || wr(f, w->kv[i].key, kl) || wr(f, &ty, 4) || wr(f, w->kv[i].blob, w->kv[i].blob_len);
        pos += 8 + kl + 4 + w->kv[i].blob_len;
    }
    for (size_t i = 0; i < w->n_t && !bad; i++) {
        wtensor *t = &w->t[i];
        uint64_t nl = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims, ty = (uint32_t)t->type;
        bad = wr(f, &nl, 8) || wr(f, t->name, nl) || wr(f, &nd, 4) || wr(f, t->ne, 8 * nd) || wr(f, &ty, 4) ||
              wr(f, &t->offset, 8);
        pos += 8 + nl + 4 + 8 * nd + 4 + 8;
    }
    if (!bad && w->n_t) bad = wr_pad(f, (pos + A - 1) / A * A - pos);
    for (size_t i = 0; i < w->n_t && !bad; i++) {
        wtensor *t = &w->t[i];
        const void *data = t->data;
        if (!data) {
            if (!fill) {
                st = MOE_ERR_INVAL;
                if (err) snprintf(err, errlen, "tensor '%s' has no data and no fill callback", t->name);
                break;
            }
            if (t->nbytes > buf_n) {
                free(buf);
                buf = malloc(t->nbytes ? t->nbytes : 1);
                buf_n = t->nbytes;
                if (!buf) {
                    st = MOE_ERR_NOMEM;
                    if (err) snprintf(err, errlen, "out of memory for tensor '%s' (%llu bytes)", t->name,
                                      (unsigned long long)t->nbytes);
                    break;
                }
            }
            if (fill(fill_ud, (int64_t)i, buf, t->nbytes)) {
                st = MOE_ERR_INTERNAL;
                if (err) snprintf(err, errlen, "producing tensor '%s' failed", t->name);
                break;
            }
            data = buf;
        }
        bad = wr(f, data, t->nbytes) || wr_pad(f, (t->nbytes + A - 1) / A * A - t->nbytes);
        done += (t->nbytes + A - 1) / A * A;
        if (progress) progress(progress_ud, done, total);
    }
    free(buf);
    if (!st && bad) {
        st = MOE_ERR_IO;
        if (err) snprintf(err, errlen, "writing '%s' failed: %s", tmp, strerror(errno));
    }
    if (fflush(f) || fsync(fileno(f))) {
        if (!st) {
            st = MOE_ERR_IO;
            if (err) snprintf(err, errlen, "flushing '%s' failed: %s", tmp, strerror(errno));
        }
    }
    fclose(f);
    if (!st && rename(tmp, path) != 0) {
        st = MOE_ERR_IO;
        if (err) snprintf(err, errlen, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    }
    if (st) unlink(tmp);
    return st;
}
