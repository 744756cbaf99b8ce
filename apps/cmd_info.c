/* moe info: a GGUF file's header, every key/value and the tensor table, as text or JSON.
 *
 * Long arrays are abbreviated (the first few elements and the count); long strings in text
 * mode too. A file the reader rejects prints the reader's message ("PATH: gguf: at byte N:
 * ...") and exits 1. Thin over moe/gguf.h: everything shown comes from its accessors. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "moe/gguf.h"

#define INFO_ARR_HEAD 8       /* array elements shown */
#define INFO_STR_TEXT_MAX 120 /* longer strings are cut in text mode */

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe info MODEL.gguf [--json] [--all]\n"
            "\n"
            "Print a GGUF file's version, alignment, every key/value (arrays abbreviated to their\n"
            "first %d elements and the count) and the tensor table (name, type, shape, bytes) with\n"
            "the total size. The file is fully validated first; a bad file prints where it is\n"
            "broken (field and byte offset) and exits 1.\n"
            "\n"
            "  --json   one JSON object instead of text\n"
            "  --all    do not abbreviate arrays or strings\n",
            INFO_ARR_HEAD);
}

/* A string, escaped for JSON (json=1) or as a quoted C-like literal; cut after max bytes. */
static void put_str(FILE *f, const char *p, uint64_t len, int json, uint64_t max) {
    uint64_t n = len > max ? max : len;
    fputc('"', f);
    for (uint64_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, json ? "\\u%04x" : "\\x%02x", c);
        else fputc(c, f); /* UTF-8 bytes pass through */
    }
    fputc('"', f);
    if (n < len && !json) fprintf(f, "... (%" PRIu64 " bytes)", len);
}

/* One scalar element at p of GGUF type t. */
static void put_scalar(FILE *f, int t, const uint8_t *p, int json) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        float f32;
        uint64_t u64;
        int64_t i64;
        double f64;
    } v;
    memcpy(&v, p, moe_gguf_type_size(t));
    switch (t) {
    case MOE_GGUF_TYPE_UINT8: fprintf(f, "%u", v.u8); break;
    case MOE_GGUF_TYPE_INT8: fprintf(f, "%d", v.i8); break;
    case MOE_GGUF_TYPE_UINT16: fprintf(f, "%u", v.u16); break;
    case MOE_GGUF_TYPE_INT16: fprintf(f, "%d", v.i16); break;
    case MOE_GGUF_TYPE_UINT32: fprintf(f, "%" PRIu32, v.u32); break;
    case MOE_GGUF_TYPE_INT32: fprintf(f, "%" PRId32, v.i32); break;
    case MOE_GGUF_TYPE_UINT64: fprintf(f, "%" PRIu64, v.u64); break;
    case MOE_GGUF_TYPE_INT64: fprintf(f, "%" PRId64, v.i64); break;
    case MOE_GGUF_TYPE_BOOL: fputs(v.u8 ? "true" : "false", f); break;
    case MOE_GGUF_TYPE_FLOAT32:
    case MOE_GGUF_TYPE_FLOAT64: {
        double d = t == MOE_GGUF_TYPE_FLOAT32 ? (double)v.f32 : v.f64;
        if (d != d || d - d != 0) fputs(json ? "null" : (d != d ? "nan" : d > 0 ? "inf" : "-inf"), f);
        else fprintf(f, "%.9g", d);
        break;
    }
    default: fputs("?", f);
    }
}

/* The value of record i: scalar, string, or an array abbreviated to `head` elements. */
static void put_value(FILE *f, const moe_gguf *g, int64_t i, int json, int all) {
    int t = moe_gguf_kv_type(g, i);
    const uint8_t *v = moe_gguf_kv_data(g, i);
    uint64_t smax = all || json ? UINT64_MAX : INFO_STR_TEXT_MAX;
    if (t == MOE_GGUF_TYPE_STRING) {
        uint64_t len;
        memcpy(&len, v, 8);
        put_str(f, (const char *)v + 8, len, json, smax);
    } else if (t == MOE_GGUF_TYPE_ARRAY) {
        int et = moe_gguf_arr_type(g, i);
        uint64_t n = moe_gguf_arr_n(g, i), show = all || n <= INFO_ARR_HEAD ? n : INFO_ARR_HEAD;
        fputc('[', f);
        for (uint64_t j = 0; j < show; j++) {
            if (j) fputs(", ", f);
            if (et == MOE_GGUF_TYPE_STRING) {
                moe_str s = moe_gguf_arr_str(g, i, j);
                put_str(f, s.ptr, s.len, json, all ? UINT64_MAX : 60);
            } else {
                put_scalar(f, et, v + j * moe_gguf_type_size(et), json);
            }
        }
        if (!json && show < n) fprintf(f, ", ... (%" PRIu64 " total)", n);
        fputc(']', f);
    } else {
        put_scalar(f, t, v, json);
    }
}

static void shape_str(const moe_gguf_tensor *t, char *buf, size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->n_dims && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, "%s%" PRId64, d ? ", " : "", t->ne[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static const char *type_name(int t) {
    const char *s = moe_dtype_name(t);
    return s ? s : "?";
}

static void print_text(const moe_gguf *g, const char *path, int all) {
    uint64_t total = 0;
    int64_t nk = moe_gguf_n_kv(g), nt = moe_gguf_n_tensors(g);
    printf("file:        %s\n", path);
    printf("version:     %u\n", moe_gguf_version(g));
    printf("alignment:   %u\n", moe_gguf_alignment(g));
    printf("data offset: %" PRIu64 "\n", moe_gguf_data_offset(g));
    printf("file size:   %" PRIu64 " bytes\n", moe_gguf_file_size(g));
    printf("\nkeys (%" PRId64 "):\n", nk);
    int w = 8;
    for (int64_t i = 0; i < nk; i++)
        if ((int)moe_gguf_kv_key(g, i).len > w) w = (int)moe_gguf_kv_key(g, i).len;
    if (w > 48) w = 48;
    for (int64_t i = 0; i < nk; i++) {
        moe_str k = moe_gguf_kv_key(g, i);
        int t = moe_gguf_kv_type(g, i);
        char ty[32];
        if (t == MOE_GGUF_TYPE_ARRAY)
            snprintf(ty, sizeof ty, "%s[%" PRIu64 "]", moe_gguf_type_name(moe_gguf_arr_type(g, i)), moe_gguf_arr_n(g, i));
        else
            snprintf(ty, sizeof ty, "%s", moe_gguf_type_name(t));
        printf("  %-*.*s  %-16s ", w, (int)k.len, k.ptr, ty);
        put_value(stdout, g, i, 0, all);
        putchar('\n');
    }
    printf("\ntensors (%" PRId64 "):\n", nt);
    printf("  %-40s %-6s %-24s %14s\n", "name", "type", "shape", "bytes");
    for (int64_t i = 0; i < nt; i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char shape[128];
        shape_str(t, shape, sizeof shape);
        printf("  %-40.*s %-6s %-24s %14" PRIu64 "\n", (int)t->name.len, t->name.ptr, type_name(t->type), shape,
               t->nbytes);
        total += t->nbytes;
    }
    printf("\ntotal: %" PRId64 " tensors, %" PRIu64 " bytes (%.2f MiB)\n", nt, total, (double)total / 1048576.0);
}

static void print_json(const moe_gguf *g, const char *path, int all) {
    uint64_t total = 0;
    int64_t nk = moe_gguf_n_kv(g), nt = moe_gguf_n_tensors(g);
    printf("{\"file\": ");
    put_str(stdout, path, strlen(path), 1, UINT64_MAX);
    printf(", \"version\": %u, \"alignment\": %u, \"data_offset\": %" PRIu64 ", \"file_size\": %" PRIu64 ",\n",
           moe_gguf_version(g), moe_gguf_alignment(g), moe_gguf_data_offset(g), moe_gguf_file_size(g));
    printf(" \"kv\": [\n");
    for (int64_t i = 0; i < nk; i++) {
        moe_str k = moe_gguf_kv_key(g, i);
        int t = moe_gguf_kv_type(g, i);
        printf("  {\"key\": ");
        put_str(stdout, k.ptr, k.len, 1, UINT64_MAX);
        printf(", \"type\": \"%s\"", moe_gguf_type_name(t));
        if (t == MOE_GGUF_TYPE_ARRAY) {
            uint64_t n = moe_gguf_arr_n(g, i);
            printf(", \"elem_type\": \"%s\", \"n\": %" PRIu64 ", \"truncated\": %s",
                   moe_gguf_type_name(moe_gguf_arr_type(g, i)), n, !all && n > INFO_ARR_HEAD ? "true" : "false");
        }
        printf(", \"value\": ");
        put_value(stdout, g, i, 1, all);
        printf("}%s\n", i + 1 < nk ? "," : "");
    }
    printf(" ],\n \"tensors\": [\n");
    for (int64_t i = 0; i < nt; i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        char shape[128];
        shape_str(t, shape, sizeof shape);
        printf("  {\"name\": ");
        put_str(stdout, t->name.ptr, t->name.len, 1, UINT64_MAX);
        printf(", \"type\": \"%s\", \"shape\": %s, \"offset\": %" PRIu64 ", \"bytes\": %" PRIu64 "}%s\n",
               type_name(t->type), shape, t->offset, t->nbytes, i + 1 < nt ? "," : "");
        total += t->nbytes;
    }
    printf(" ],\n \"n_tensors\": %" PRId64 ", \"total_bytes\": %" PRIu64 "}\n", nt, total);
}

int moe_cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int json = 0, all = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--all")) {
            all = 1;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "moe info: unknown option '%s' (try moe info --help)\n", argv[i]);
            return 1;
        } else if (path) {
            fprintf(stderr, "moe info: one file at a time ('%s' and '%s')\n", path, argv[i]);
            return 1;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return 1;
    }
    moe_gguf *g;
    char err[512];
    moe_status st = moe_gguf_open(path, &g, err, sizeof err);
    if (st == MOE_ERR_NOMEM) {
        fprintf(stderr, "moe info: %s: out of memory\n", path);
        return 2;
    }
    if (st) {
        fprintf(stderr, "moe info: %s\n", err);
        return 1;
    }
    if (json) print_json(g, path, all);
    else print_text(g, path, all);
    moe_gguf_close(g);
    if (fflush(stdout) != 0) return 2;
    return 0;
}
