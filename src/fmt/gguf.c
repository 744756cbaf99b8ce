/* moekit fmt: GGUF v2/v3 reader and writer (spec gguf.md).
 *
 * Reader invariants: after moe_gguf_open succeeds,
 *   - every KV record and tensor-info record lies inside the file;
 *   - string/array lengths are <= 2^30 and fit the remaining bytes;
 *   - every tensor has 1..4 dims, ne[i] >= 0, a known supported-or-unsupported-but-valid type id,
 *     ne[0] a multiple of the block size, a byte size that does not overflow, offsets exactly
 *     consecutive (offset_0 = 0, offset_i = offset_{i-1} + PAD(nbytes_{i-1}, A)) and data that
 *     ends inside the file;
 *   - keys and tensor names are unique; tensor names are < 64 bytes.
 * So accessors never need to re-check bounds. The file is mapped read-only (MAP_PRIVATE) and
 * never copied; for STRING arrays an index of element offsets is built so element j is O(1).
 *
 * Layout (all little-endian):
 *   magic "GGUF" | u32 version | i64 n_tensors | i64 n_kv | n_kv × {str key, i32 type, value}
 *   | n_tensors × {str name, u32 n_dims, i64 ne[n_dims], i32 type, u64 offset} | pad to A
 *   | data section
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

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
    uint32_t *hash;          /* owned: open-addressing table over tensor names, size hash_n */
    uint32_t hash_n;
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
    if (!need(c, 4)) return fail(c, c->pos, "file truncated while reading %s", what);
    *v = rd_u32(c->p + c->pos);
    c->pos += 4;
    return MOE_OK;
}
static moe_status get_u64(cur *c, uint64_t *v, const char *what) {
    *v = 0;
    if (!need(c, 8)) return fail(c, c->pos, "file truncated while reading %s", what);
    *v = rd_u64(c->p + c->pos);
    c->pos += 8;
    return MOE_OK;
}
static moe_status get_str(cur *c, moe_str *s, const char *what) {
    uint64_t at = c->pos, n;
    if (!need(c, 8)) return fail(c, at, "file truncated while reading the length of %s", what);
    n = rd_u64(c->p + c->pos);
    if (n > GGUF_MAX_LEN) return fail(c, at, "%s length %llu exceeds 2^30", what, (unsigned long long)n);
    c->pos += 8;
    if (!need(c, n))
        return fail(c, at, "%s length %llu runs past the end of the file (%llu bytes left)", what,
                    (unsigned long long)n, (unsigned long long)(c->size - c->pos));
    s->ptr = (const char *)c->p + c->pos;
    s->len = n;
    c->pos += n;
    return MOE_OK;
}

static int str_eq(moe_str a, const char *b, size_t blen) { return a.len == blen && memcmp(a.ptr, b, blen) == 0; }

static uint32_t hash_bytes(const char *p, uint64_t n) {
    uint32_t h = 2166136261u;
    for (uint64_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* Keys are looked up rarely (model load); a linear scan keeps the reader simple. Duplicate
 * detection at open uses a temporary hash table so hostile files with many keys stay O(n). */
static int64_t find_key_n(const moe_gguf *g, const char *key, size_t klen) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key, klen)) return i;
    return -1;
}

static moe_status parse_value(moe_gguf *g, cur *c, kv_rec *kv, const char *key_for_msg) {
    uint64_t at = c->pos;
    if (kv->type == MOE_GGUF_TYPE_STRING) {
        moe_str s;
        kv->val = c->p + c->pos;
        return get_str(c, &s, "string value");
    }
    if (kv->type == MOE_GGUF_TYPE_ARRAY) {
        uint32_t et;
        uint64_t n;
        moe_status st;
        if ((st = get_u32(c, &et, "array element type"))) return st;
        if (et > 12) return fail(c, at, "key '%s': array element type %u is not a GGUF type", key_for_msg, et);
        if (et == MOE_GGUF_TYPE_ARRAY) return fail(c, at, "key '%s': nested arrays are not allowed", key_for_msg);
        if ((st = get_u64(c, &n, "array length"))) return st;
        if (n > GGUF_MAX_LEN)
            return fail(c, at + 4, "key '%s': array length %llu exceeds 2^30", key_for_msg, (unsigned long long)n);
        kv->arr_type = (int)et;
        kv->arr_n = n;
        kv->val = c->p + c->pos;
        if (et == MOE_GGUF_TYPE_STRING) {
            /* each element is a full string: walk and index them */
            if (n > (c->size - c->pos) / 8)
                return fail(c, at + 4, "key '%s': array of %llu strings cannot fit in the file", key_for_msg,
                            (unsigned long long)n);
            kv->str_off = malloc((n ? n : 1) * sizeof(uint64_t));
            if (!kv->str_off) return MOE_ERR_NOMEM;
            for (uint64_t j = 0; j < n; j++) {
                moe_str s;
                kv->str_off[j] = c->pos;
                if ((st = get_str(c, &s, "array string element"))) return st;
            }
        } else {
            size_t es = scalar_size((int)et);
            if (n > (c->size - c->pos) / es)
                return fail(c, at + 4, "key '%s': array of %llu %s runs past the end of the file", key_for_msg,
                            (unsigned long long)n, moe_gguf_type_name((int)et));
            c->pos += n * es;
        }
        return MOE_OK;
    }
    size_t es = scalar_size(kv->type);
    if (!es) return fail(c, at - 4, "key '%s': value type %d is not a GGUF type", key_for_msg, kv->type);
    if (!need(c, es)) return fail(c, at, "file truncated in the value of key '%s'", key_for_msg);
    kv->val = c->p + c->pos;
    c->pos += es;
    (void)g;
    return MOE_OK;
}

static moe_status parse(moe_gguf *g, char *err, size_t errlen) {
    cur c = {g->base, 0, g->size, err, errlen};
    moe_status st;
    uint32_t magic, version;
    uint64_t n_tensors, n_kv;

    if (g->size < 4) return fail(&c, 0, "file is %llu bytes, too short for the GGUF magic", (unsigned long long)g->size);
    magic = rd_u32(g->base);
    if (memcmp(g->base, "GGUF", 4) != 0) return fail(&c, 0, "bad magic 0x%08x (expected \"GGUF\")", magic);
    c.pos = 4;
    if ((st = get_u32(&c, &version, "version"))) return st;
    if ((version & 0xffff) == 0)
        return fail(&c, 4, "version 0x%08x looks byte-swapped (big-endian files are not supported)", version);
    if (version == 1) return fail(&c, 4, "GGUF version 1 is not supported (only 2 and 3)");
    if (version == 0 || version > 3) return fail(&c, 4, "unsupported GGUF version %u (only 2 and 3)", version);
    g->version = version;
    if ((st = get_u64(&c, &n_tensors, "tensor count"))) return st;
    if ((int64_t)n_tensors < 0) return fail(&c, 8, "tensor count %lld is negative", (long long)n_tensors);
    if ((st = get_u64(&c, &n_kv, "key/value count"))) return st;
    if ((int64_t)n_kv < 0) return fail(&c, 16, "key/value count %lld is negative", (long long)n_kv);
    /* each KV needs >= 8+1+4+1 bytes, each tensor info >= 8+1+4+4+8: reject lying counts early */
    if (n_kv > (g->size - c.pos) / 13)
        return fail(&c, 16, "key/value count %llu cannot fit in a %llu-byte file", (unsigned long long)n_kv,
                    (unsigned long long)g->size);
    if (n_tensors > (g->size - c.pos) / 25)
        return fail(&c, 8, "tensor count %llu cannot fit in a %llu-byte file", (unsigned long long)n_tensors,
                    (unsigned long long)g->size);

    g->kv = calloc(n_kv ? n_kv : 1, sizeof(kv_rec));
    g->tensor = calloc(n_tensors ? n_tensors : 1, sizeof(moe_gguf_tensor));
    if (!g->kv || !g->tensor) return MOE_ERR_NOMEM;

    /* duplicate-key table */
    uint32_t kn = 16;
    while (kn < 2 * n_kv) kn <<= 1;
    uint32_t *kt = calloc(kn, sizeof(uint32_t));
    if (!kt) return MOE_ERR_NOMEM;
    g->alignment = GGUF_DEFAULT_ALIGN;
    for (uint64_t i = 0; i < n_kv; i++) {
        kv_rec *kv = &g->kv[i];
        uint64_t at = c.pos;
        uint32_t type;
        char kbuf[96];
        if ((st = get_str(&c, &kv->key, "key"))) goto out;
        if (kv->key.len == 0) { st = fail(&c, at, "key #%llu is empty", (unsigned long long)i); goto out; }
        snprintf(kbuf, sizeof kbuf, "%.*s", (int)(kv->key.len > 80 ? 80 : kv->key.len), kv->key.ptr);
        for (uint32_t h = hash_bytes(kv->key.ptr, kv->key.len) & (kn - 1);; h = (h + 1) & (kn - 1)) {
            if (!kt[h]) { kt[h] = (uint32_t)i + 1; break; }
            if (str_eq(g->kv[kt[h] - 1].key, kv->key.ptr, kv->key.len)) {
                st = fail(&c, at, "duplicate key '%s'", kbuf);
                goto out;
            }
        }
        uint64_t tat = c.pos;
        if ((st = get_u32(&c, &type, "value type"))) goto out;
        if (type > 12) { st = fail(&c, tat, "key '%s': value type %u is not a GGUF type", kbuf, type); goto out; }
        kv->type = (int)type;
        g->n_kv = (int64_t)i + 1; /* so cleanup frees str_off of this record too */
        if ((st = parse_value(g, &c, kv, kbuf))) goto out;
        if (str_eq(kv->key, "general.alignment", 17)) {
            if (kv->type != MOE_GGUF_TYPE_UINT32) {
                st = fail(&c, tat, "key 'general.alignment' has type %s, expected uint32", moe_gguf_type_name(kv->type));
                goto out;
            }
            uint32_t a = rd_u32(kv->val);
            if (a == 0 || (a & (a - 1))) {
                st = fail(&c, (uint64_t)(kv->val - g->base), "general.alignment = %u is not a power of two", a);
                goto out;
            }
            g->alignment = a;
        }
    }
    free(kt);
    kt = NULL;
    g->n_kv = (int64_t)n_kv;

    /* tensor infos */
    uint32_t hn = 16;
    while (hn < 2 * n_tensors) hn <<= 1;
    g->hash = calloc(hn, sizeof(uint32_t));
    g->hash_n = hn;
    if (!g->hash) return MOE_ERR_NOMEM;
    uint64_t expect_off = 0, A = g->alignment;
    for (uint64_t i = 0; i < n_tensors; i++) {
        moe_gguf_tensor *t = &g->tensor[i];
        uint64_t at = c.pos;
        uint32_t nd, type;
        char nbuf[80];
        if ((st = get_str(&c, &t->name, "tensor name"))) return st;
        snprintf(nbuf, sizeof nbuf, "%.*s", (int)(t->name.len > 70 ? 70 : t->name.len), t->name.ptr);
        if (t->name.len > GGUF_MAX_NAME)
            return fail(&c, at, "tensor name '%s...' is %llu bytes (at most 63)", nbuf, (unsigned long long)t->name.len);
        if (t->name.len == 0) return fail(&c, at, "tensor #%llu has an empty name", (unsigned long long)i);
        for (uint32_t h = hash_bytes(t->name.ptr, t->name.len) & (hn - 1);; h = (h + 1) & (hn - 1)) {
            if (!g->hash[h]) { g->hash[h] = (uint32_t)i + 1; break; }
            if (str_eq(g->tensor[g->hash[h] - 1].name, t->name.ptr, t->name.len))
                return fail(&c, at, "duplicate tensor name '%s'", nbuf);
        }
        uint64_t dat = c.pos;
        if ((st = get_u32(&c, &nd, "tensor n_dims"))) return st;
        if (nd > 4) return fail(&c, dat, "tensor '%s': n_dims = %u (at most 4)", nbuf, nd);
        t->n_dims = nd ? (int)nd : 1;
        for (int d = 0; d < 4; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t v, vat = c.pos;
            if ((st = get_u64(&c, &v, "tensor dimension"))) return st;
            if ((int64_t)v < 0) return fail(&c, vat, "tensor '%s': ne[%u] = %lld is negative", nbuf, d, (long long)v);
            t->ne[d] = (int64_t)v;
        }
        uint64_t tat = c.pos;
        if ((st = get_u32(&c, &type, "tensor type"))) return st;
        if (type >= MOE_DTYPE_COUNT || moe_dtype_block_size((int)type) == 0)
            return fail(&c, tat, "tensor '%s': type id %u is not a valid ggml type", nbuf, type);
        t->type = (int)type;
        if ((st = get_u64(&c, &t->offset, "tensor offset"))) return st;
        /* element count and byte size without overflow */
        uint64_t nel = 1;
        for (int d = 0; d < 4; d++) {
            uint64_t e = (uint64_t)t->ne[d];
            if (e && nel > (uint64_t)INT64_MAX / e)
                return fail(&c, dat, "tensor '%s': element count overflows int64", nbuf);
            nel *= e;
        }
        int64_t bs = moe_dtype_block_size(t->type);
        if (t->ne[0] % bs)
            return fail(&c, dat + 4, "tensor '%s': ne[0] = %lld is not a multiple of the %s block size %lld", nbuf,
                        (long long)t->ne[0], moe_dtype_name(t->type), (long long)bs);
        uint64_t blocks = nel / (uint64_t)bs, bb = moe_dtype_block_bytes(t->type);
        if (blocks && bb > UINT64_MAX / blocks) return fail(&c, dat, "tensor '%s': byte size overflows", nbuf);
        t->nbytes = blocks * bb;
        if (t->nbytes > g->size) return fail(&c, dat, "tensor '%s': %llu bytes of data cannot fit in a %llu-byte file",
                                             nbuf, (unsigned long long)t->nbytes, (unsigned long long)g->size);
        if (t->offset != expect_off)
            return fail(&c, tat + 4, "tensor '%s': data offset %llu, expected %llu (offsets must be consecutive and %llu-aligned)",
                        nbuf, (unsigned long long)t->offset, (unsigned long long)expect_off, (unsigned long long)A);
        expect_off += (t->nbytes + A - 1) / A * A;
    }
    g->n_tensors = (int64_t)n_tensors;
    /* data section */
    g->data_off = (c.pos + A - 1) / A * A;
    if (n_tensors) {
        if (g->data_off > g->size)
            return fail(&c, c.pos, "file ends before the data section (expected at byte %llu)", (unsigned long long)g->data_off);
        for (uint64_t i = 0; i < n_tensors; i++) {
            moe_gguf_tensor *t = &g->tensor[i];
            if (t->offset > g->size - g->data_off || t->nbytes > g->size - g->data_off - t->offset)
                return fail(&c, g->data_off + t->offset,
                            "tensor '%.*s': data [%llu, +%llu) runs past the end of the file (%llu bytes): file truncated?",
                            (int)t->name.len, t->name.ptr, (unsigned long long)(g->data_off + t->offset),
                            (unsigned long long)t->nbytes, (unsigned long long)g->size);
            t->data = g->base + g->data_off + t->offset;
        }
    }
    return MOE_OK;
out:
    free(kt);
    return st;
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
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err) snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (err) snprintf(err, errlen, "'%s' is not a regular file", path);
        close(fd);
        return MOE_ERR_IO;
    }
    moe_gguf *g = calloc(1, sizeof *g);
    if (!g) {
        close(fd);
        return MOE_ERR_NOMEM;
    }
    g->size = (uint64_t)sb.st_size;
    if (g->size) {
        void *p = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            if (err) snprintf(err, errlen, "cannot mmap '%s': %s", path, strerror(errno));
            close(fd);
            free(g);
            return MOE_ERR_IO;
        }
        g->base = p;
        g->mapped = 1;
    } else {
        g->base = (const uint8_t *)"";
    }
    close(fd);
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
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g);
}

uint32_t moe_gguf_version(const moe_gguf *g) { return g->version; }
uint32_t moe_gguf_alignment(const moe_gguf *g) { return g->alignment; }
uint64_t moe_gguf_data_offset(const moe_gguf *g) { return g->data_off; }
uint64_t moe_gguf_file_size(const moe_gguf *g) { return g->size; }
const void *moe_gguf_base(const moe_gguf *g) { return g->base; }
int64_t moe_gguf_n_kv(const moe_gguf *g) { return g->n_kv; }
int64_t moe_gguf_find_key(const moe_gguf *g, const char *key) { return find_key_n(g, key, strlen(key)); }
moe_str moe_gguf_kv_key(const moe_gguf *g, int64_t i) { return g->kv[i].key; }
int moe_gguf_kv_type(const moe_gguf *g, int64_t i) { return g->kv[i].type; }
int moe_gguf_arr_type(const moe_gguf *g, int64_t i) { return g->kv[i].type == MOE_GGUF_TYPE_ARRAY ? g->kv[i].arr_type : -1; }
uint64_t moe_gguf_arr_n(const moe_gguf *g, int64_t i) { return g->kv[i].type == MOE_GGUF_TYPE_ARRAY ? g->kv[i].arr_n : 0; }
const void *moe_gguf_arr_data(const moe_gguf *g, int64_t i) { return g->kv[i].val; }

moe_str moe_gguf_arr_str(const moe_gguf *g, int64_t i, uint64_t j) {
    moe_str s = {"", 0};
    const kv_rec *kv = &g->kv[i];
    if (kv->type != MOE_GGUF_TYPE_ARRAY || kv->arr_type != MOE_GGUF_TYPE_STRING || j >= kv->arr_n) return s;
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
    for (uint32_t h = hash_bytes(name, n) & (g->hash_n - 1);; h = (h + 1) & (g->hash_n - 1)) {
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
    if (!key || !*key) return MOE_ERR_INVAL;
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
    if (strcmp(key, "general.alignment") == 0 && (v == 0 || (v & (v - 1)))) return MOE_ERR_INVAL;
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
