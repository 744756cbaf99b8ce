/* safetensors reader: a valid file round-trips through the writer; hostile headers (bad JSON,
 * overlapping or out-of-file offsets, huge shapes, dtype/length mismatch, lying header length,
 * wrong field types, duplicate names, NUL in names) are refused with MOE_ERR_FORMAT and a message,
 * never a crash (this test runs under ASan/UBSan in the sanitizer pass); every truncation of a
 * valid file is refused or parsed safely; sharded directories; F8_E4M3 decoding. */
#include <math.h>
#include <sys/stat.h>

#include "moe/dtype.h"
#include "moe/safetensors.h"
#include "testutil.h"

/* build "u64 len | header | data" in a malloc'd buffer */
static uint8_t *mk(const char *hdr, size_t data_n, size_t *len) {
    size_t hn = strlen(hdr);
    *len = 8 + hn + data_n;
    uint8_t *b = calloc(1, *len ? *len : 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hn >> (8 * i));
    memcpy(b + 8, hdr, hn);
    for (size_t i = 0; i < data_n; i++) b[8 + hn + i] = (uint8_t)i;
    return b;
}

static void hostile(const char *label, const char *hdr, size_t data_n, const char *want) {
    size_t len;
    uint8_t *b = mk(hdr, data_n, &len);
    moe_st *f = (moe_st *)1;
    char err[512] = "";
    moe_status st = moe_st_open_mem(b, len, &f, err, sizeof err);
    CHECK(st == MOE_ERR_FORMAT && f == NULL, "%s: accepted (st %d)", label, st);
    CHECK(err[0] && (!want || strstr(err, want)), "%s: message '%s' lacks '%s'", label, err, want ? want : "");
    printf("%-26s -> %s\n", label, err);
    if (st == MOE_OK) moe_st_close(f);
    free(b);
}

int main(void) {
    /* ---- valid file through the writer ---- */
    char dir[512], path[1024], err[512];
    tu_tmpdir(dir, sizeof dir);
    float a[6] = {1, -2, 3.5f, 0.25f, -0, 1e-3f};
    uint16_t bf[4] = {moe_f32_to_bf16(1.5f), moe_f32_to_bf16(-2.0f), moe_f32_to_bf16(0.125f), moe_f32_to_bf16(3.0f)};
    uint16_t hf[2] = {moe_f32_to_f16(0.5f), moe_f32_to_f16(-7.0f)};
    uint8_t f8[2] = {0x38, 0xC0}; /* 1.0, -2.0 */
    int64_t sa[2] = {2, 3}, sb[1] = {4}, sh[2] = {1, 2}, s8[2] = {1, 2};
    moe_st_wtensor w[] = {{"a", MOE_ST_F32, 2, sa, a}, {"b.weight", MOE_ST_BF16, 1, sb, bf}, {"h", MOE_ST_F16, 2, sh, hf},
                          {"s", MOE_ST_F8_E4M3, 2, s8, f8}, {"empty", MOE_ST_F32, 1, (int64_t[]){0}, a}};
    static const char *const meta[] = {"format", "pt", NULL};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(moe_st_write(path, w, 5, meta, err, sizeof err) == MOE_OK, "write: %s", err);
    moe_st *f;
    CHECK(moe_st_open(path, &f, err, sizeof err) == MOE_OK, "open: %s", err);
    if (f) {
        CHECK(moe_st_n_tensors(f) == 5, "5 tensors");
        const moe_st_tensor *t = moe_st_find(f, "a");
        CHECK(t && t->dtype == MOE_ST_F32 && t->n_dims == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->n_elem == 6, "a");
        float y[6];
        CHECK(t && moe_st_read_f32(t, 0, 6, y) == MOE_OK && !memcmp(y, a, sizeof a), "a values");
        CHECK(t && moe_st_read_f32(t, 4, 3, y) == MOE_ERR_RANGE, "read past the end refused");
        t = moe_st_find(f, "b.weight");
        CHECK(t && moe_st_read_f32(t, 1, 3, y) == MOE_OK && y[0] == -2.0f && y[1] == 0.125f && y[2] == 3.0f, "bf16 values");
        t = moe_st_find(f, "h");
        CHECK(t && moe_st_read_f32(t, 0, 2, y) == MOE_OK && y[0] == 0.5f && y[1] == -7.0f, "f16 values");
        CHECK(moe_st_find(f, "nope") == NULL, "absent name");
        const char *m = moe_st_metadata(f, "format");
        CHECK(m && !strcmp(m, "pt"), "metadata");
        moe_st_close(f);
    }
    /* the directory reader: single file, fp8 with a missing scale is refused */
    moe_st_dir *d;
    CHECK(moe_st_dir_open(dir, &d, err, sizeof err) == MOE_OK, "dir: %s", err);
    if (d) {
        float y[4];
        CHECK(moe_st_dir_read_rows(d, "a", 1, 1, y, err, sizeof err) == MOE_OK && y[0] == 0.25f, "row 1 of a");
        CHECK(moe_st_dir_read_rows(d, "a", 2, 1, y, err, sizeof err) == MOE_ERR_RANGE, "row past the end");
        CHECK(moe_st_dir_read_rows(d, "s", 0, 1, y, err, sizeof err) == MOE_ERR_FORMAT && strstr(err, "s_scale_inv"),
              "fp8 without scale: %s", err);
        moe_st_dir_close(d);
    }
    /* a sharded directory whose index names a file outside the directory is refused */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/sharded", dir);
    mkdir(sub, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", sub);
    FILE *ix = fopen(path, "w");
    fprintf(ix, "{\"weight_map\": {\"a\": \"../model.safetensors\"}}");
    fclose(ix);
    CHECK(moe_st_dir_open(sub, &d, err, sizeof err) == MOE_ERR_FORMAT, "index path escape refused: %s", err);
    printf("index escape -> %s\n", err);
    ix = fopen(path, "w");
    fprintf(ix, "{\"weight_map\": {\"zz\": \"x.safetensors\"}}");
    fclose(ix);
    snprintf(path, sizeof path, "%s/x.safetensors", sub);
    CHECK(moe_st_write(path, w, 1, NULL, err, sizeof err) == MOE_OK, "shard");
    CHECK(moe_st_dir_open(sub, &d, err, sizeof err) == MOE_ERR_FORMAT && strstr(err, "zz"), "index lists a missing tensor: %s", err);

    /* ---- F8_E4M3 decoding, all 256 codes against the definition ---- */
    int bad = 0;
    for (int v = 0; v < 256; v++) {
        int s = v >> 7, e = (v >> 3) & 15, mm = v & 7;
        double want = e == 0 ? mm / 8.0 * pow(2, -6) : (1 + mm / 8.0) * pow(2, e - 7);
        if (s) want = -want;
        float got = moe_st_f8e4m3_to_f32((uint8_t)v);
        if ((v & 0x7f) == 0x7f) bad += !isnan(got);
        else bad += got != (float)want;
    }
    CHECK(bad == 0, "f8 e4m3: %d codes wrong", bad);
    CHECK(moe_st_f8e4m3_to_f32(0x7E) == 448.0f && moe_st_f8e4m3_to_f32(0x01) == 0x1p-9f, "f8 extremes");

    /* ---- hostile headers ---- */
    hostile("bad JSON", "{\"a\": {\"dtype\": \"F32\", ", 0, "JSON");
    {
        size_t len;
        uint8_t *b = mk("[1,2]", 0, &len);
        b[8] = '{'; /* "{1,2]" */
        moe_st *g = NULL;
        CHECK(moe_st_open_mem(b, len, &g, err, sizeof err) == MOE_ERR_FORMAT, "{1,2] refused");
        free(b);
    }
    hostile("array header", "[{\"a\":1}]", 0, "'{'");
    hostile("out-of-file end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "past the data");
    hostile("begin > end", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 16, "begin");
    hostile("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            16, "overlap");
    hostile("same range twice", "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}",
            8, "overlap");
    hostile("huge shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16, "overflow");
    hostile("huge shape 2", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4611686018427387904],\"data_offsets\":[0,16]}}", 16, "elements");
    hostile("length mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, "span");
    hostile("dtype mismatch", "{\"a\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[0,16]}}", 16, "span");
    hostile("unknown dtype", "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", 16, "dtype");
    hostile("dtype not string", "{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 16, "dtype");
    hostile("negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 16, "shape");
    hostile("float dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 16, "shape");
    hostile("9 dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 16, "dims");
    hostile("negative offset", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 16, "offsets");
    hostile("3 offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 16, "data_offsets");
    hostile("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 16, "shape");
    hostile("entry not object", "{\"a\":3}", 16, "not an object");
    hostile("duplicate name", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
            16, "JSON");
    hostile("NUL in name", "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 16, "JSON");
    hostile("metadata not strings", "{\"__metadata__\":{\"x\":1}}", 0, "__metadata__");
    hostile("huge offset", "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[18446744073709551615,0]}}", 16, NULL);
    {
        /* header length lies: larger than the file, zero, above the limit */
        uint8_t b[16] = {0};
        moe_st *g = NULL;
        b[0] = 200;
        CHECK(moe_st_open_mem(b, sizeof b, &g, err, sizeof err) == MOE_ERR_FORMAT && strstr(err, "past the end"), "len > file: %s", err);
        memset(b, 0, 8);
        CHECK(moe_st_open_mem(b, sizeof b, &g, err, sizeof err) == MOE_ERR_FORMAT, "len 0");
        b[7] = 1; /* 2^56 */
        CHECK(moe_st_open_mem(b, sizeof b, &g, err, sizeof err) == MOE_ERR_FORMAT && strstr(err, "outside"), "len huge: %s", err);
        CHECK(moe_st_open_mem(b, 5, &g, err, sizeof err) == MOE_ERR_FORMAT, "5-byte file");
    }
    /* every truncation of the valid file: refused or parsed, never a crash */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t len;
    char *whole = tu_read_file(path, &len);
    int refused = 0, ok = 0;
    for (size_t n = 0; whole && n < len; n++) {
        uint8_t *b = malloc(n ? n : 1);
        memcpy(b, whole, n);
        moe_st *g = NULL;
        if (moe_st_open_mem(b, n, &g, err, sizeof err) == MOE_OK) {
            ok++;
            for (int64_t i = 0; i < moe_st_n_tensors(g); i++) {
                const moe_st_tensor *t = moe_st_tensor_at(g, i);
                CHECK(t->offset + t->nbytes <= n, "tensor inside the truncated file");
            }
            moe_st_close(g);
        } else {
            refused++;
        }
        free(b);
    }
    printf("truncations: %d refused, %d accepted (only whole-data prefixes may parse)\n", refused, ok);
    CHECK(refused > 0 && ok == 0, "every truncation refused (%d accepted)", ok);
    /* random byte damage to the header */
    uint64_t seed = 12345;
    for (int it = 0; whole && it < 3000; it++) {
        uint8_t *b = malloc(len);
        memcpy(b, whole, len);
        for (int k = 0; k < 3; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(seed >> 33) % (len < 200 ? len : 200);
            b[at] = (uint8_t)(seed >> 17);
        }
        moe_st *g = NULL;
        if (moe_st_open_mem(b, len, &g, err, sizeof err) == MOE_OK) {
            for (int64_t i = 0; i < moe_st_n_tensors(g); i++) {
                const moe_st_tensor *t = moe_st_tensor_at(g, i);
                float tmp[8];
                if (t->n_elem <= 8) moe_st_read_f32(t, 0, t->n_elem, tmp);
            }
            moe_st_close(g);
        }
        free(b);
    }
    free(whole);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "could not remove %s\n", dir);
    return test_done();
}
