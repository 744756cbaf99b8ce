/* Hostile GGUF files: every broken variant of a small valid file (written with our writer) must
 * give MOE_ERR_FORMAT (or MOE_ERR_IO) with a message naming the field and byte offset, and
 * never crash or read outside the buffer. Each buffer handed to the reader is a malloc'd copy
 * of exactly the file's length, so ASan (the asan ctest pass) catches any overread. */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fmt/gguf_hostile.h"
#include "testutil.h"

static int n_cases;

/* Open len bytes of b from an exact-size copy; returns status, message in err. */
static moe_status open_copy(const uint8_t *b, size_t len, char *err, size_t errlen, uint64_t *touch) {
    uint8_t *c = malloc(len ? len : 1);
    memcpy(c, b, len);
    moe_gguf *g = (moe_gguf *)1;
    err[0] = 0;
    moe_status st = moe_gguf_open_mem(c, len, &g, err, errlen);
    if (st == MOE_OK) {
        if (touch) *touch = gh_touch_all(g);
        moe_gguf_close(g);
    } else {
        CHECK(g == NULL, "out set to NULL on failure");
    }
    free(c);
    n_cases++;
    return st;
}

static void expect_format(const uint8_t *b, size_t len, const char *what, const char *words) {
    char err[512];
    moe_status st = open_copy(b, len, err, sizeof err, NULL);
    CHECK(st == MOE_ERR_FORMAT, "%s: status %s (message '%s')", what, moe_status_str(st), err);
    CHECK(strncmp(err, "gguf: at byte ", 14) == 0, "%s: message shape: '%s'", what, err);
    CHECK(words == NULL || strstr(err, words) != NULL, "%s: message '%s' lacks '%s'", what, err, words);
}

static void write_file(const char *path, const uint8_t *b, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(b, 1, len, f) != len) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

int main(void) {
    char dir[512], path[1024], err[512];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/base.gguf", dir);
    size_t len;
    uint8_t *base = gh_base_write(path, &len);
    CHECK(base != NULL, "base file written");
    if (!base) return test_done();
    gh_layout L;
    gh_walk(base, &L);
    printf("base: %zu bytes, infos end at %zu, data at %zu..%zu\n", len, L.infos_end, L.data_at, L.data_end);
    CHECK(L.data_end <= len && len - L.data_end < 32, "layout walk agrees with the file size");

    /* the base itself is valid and reads back */
    uint64_t touch = 0;
    moe_status st = open_copy(base, len, err, sizeof err, &touch);
    CHECK(st == MOE_OK, "base opens: %s", err);
    {
        moe_gguf *g;
        if (moe_gguf_open(path, &g, err, sizeof err) == MOE_OK) {
            CHECK(moe_gguf_n_kv(g) == GH_NKV && moe_gguf_n_tensors(g) == GH_NT, "counts");
            CHECK(moe_gguf_data_offset(g) == L.data_at, "data offset %llu", (unsigned long long)moe_gguf_data_offset(g));
            for (int i = 0; i < GH_NT; i++)
                CHECK(moe_gguf_tensor_at(g, i)->nbytes == L.nbytes[i], "nbytes of tensor %d", i);
            moe_gguf_close(g);
        }
    }

    /* 1. every hand-made case */
    uint8_t *buf = malloc(len);
    for (size_t i = 0; i < GH_NCASES; i++) {
        const gh_case *c = &k_gh_cases[i];
        size_t n = len;
        memcpy(buf, base, len);
        c->patch(buf, &n, &L);
        char em[512];
        open_copy(buf, n, em, sizeof em, NULL);
        printf("  %-24s %s\n", c->name, em);
        expect_format(buf, n, c->name, c->expect);
    }

    /* 2. truncated at every byte offset up to the end of the last tensor's data; the padding
     *    after the last tensor is optional (as in llama.cpp's mmap loader) */
    for (size_t n = 0; n < L.data_end; n++) {
        char what[64];
        snprintf(what, sizeof what, "truncated to %zu bytes", n);
        expect_format(base, n, what, NULL);
    }
    for (size_t n = L.data_end; n <= len; n++) {
        st = open_copy(base, n, err, sizeof err, &touch);
        CHECK(st == MOE_OK, "truncated in the last padding (%zu bytes) still opens: %s", n, err);
    }

    /* 3. the same through the file path (mmap), and I/O errors */
    size_t cuts[] = {0, 3, 23, L.key_at[5] + 5, L.infos_end - 1, L.data_at + 1, L.data_end - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char p2[1100];
        snprintf(p2, sizeof p2, "%s/cut%zu.gguf", dir, i);
        write_file(p2, base, cuts[i]);
        moe_gguf *g;
        st = moe_gguf_open(p2, &g, err, sizeof err);
        CHECK(st == MOE_ERR_FORMAT && g == NULL, "file cut at %zu: %s", cuts[i], moe_status_str(st));
        CHECK(strstr(err, p2) == err && strstr(err, "gguf: at byte "), "file message names path and byte: %s", err);
        unlink(p2);
        n_cases++;
    }
    {
        moe_gguf *g;
        char p2[1100];
        snprintf(p2, sizeof p2, "%s/missing.gguf", dir);
        CHECK(moe_gguf_open(p2, &g, err, sizeof err) == MOE_ERR_IO && err[0], "missing file: %s", err);
        CHECK(moe_gguf_open(dir, &g, err, sizeof err) == MOE_ERR_IO && err[0], "directory: %s", err);
        snprintf(p2, sizeof p2, "%s/fifo", dir);
        if (mkfifo(p2, 0600) == 0) {
            CHECK(moe_gguf_open(p2, &g, err, sizeof err) == MOE_ERR_IO && err[0], "fifo does not hang: %s", err);
            unlink(p2);
        }
        n_cases += 3;
    }

    /* 4. lying counts over a large zero-filled file cost no memory and fail at the first record */
    {
        size_t big = 1 << 20;
        uint8_t *z = calloc(1, big);
        memcpy(z, base, 24);
        gh_wr64(z + 8, big / 25 - 2);
        gh_wr64(z + 16, 0);
        expect_format(z, big, "many tensors, zero names", "name is empty");
        gh_wr64(z + 8, 0);
        gh_wr64(z + 16, big / 14 - 2);
        expect_format(z, big, "many keys, empty", "key is empty");
        free(z);
    }

    /* 5. valid edge files: header only; metadata only (no padding); version 2; n_dims 0 */
    {
        uint8_t h[24];
        memcpy(h, base, 8);
        gh_wr64(h + 8, 0);
        gh_wr64(h + 16, 0);
        CHECK(open_copy(h, 24, err, sizeof err, NULL) == MOE_OK, "header-only file: %s", err);
        size_t n = L.name_at[0];
        memcpy(buf, base, n);
        gh_wr64(buf + 8, 0);
        CHECK(open_copy(buf, n, err, sizeof err, NULL) == MOE_OK, "metadata-only file: %s", err);
        memcpy(buf, base, len);
        gh_wr32(buf + 4, 2);
        CHECK(open_copy(buf, len, err, sizeof err, NULL) == MOE_OK, "version 2: %s", err);
    }

    /* 6. random damage to the header (deterministic): fails cleanly or opens and reads safely */
    {
        uint64_t s = 0x9e3779b97f4a7c15ull;
        int ok = 0, bad = 0;
        for (int it = 0; it < 20000; it++) {
            memcpy(buf, base, len);
            size_t n = len;
            int flips = 1 + it % 4;
            for (int f = 0; f < flips; f++) {
                s = s * 6364136223846793005ull + 1442695040888963407ull;
                size_t at = (size_t)(s >> 33) % L.data_at;
                uint8_t v = (uint8_t)(s >> 20);
                buf[at] = (it & 8) ? v : (uint8_t)(buf[at] ^ (1u << (v & 7)));
            }
            if (it % 5 == 0) n = (size_t)(s >> 40) % (len + 1);
            err[0] = 0;
            st = open_copy(buf, n, err, sizeof err, &touch);
            if (st == MOE_OK) {
                ok++;
            } else {
                bad++;
                CHECK(st == MOE_ERR_FORMAT && strncmp(err, "gguf: at byte ", 14) == 0, "random %d: %s '%s'", it,
                      moe_status_str(st), err);
            }
        }
        printf("random damage: %d opened and read, %d rejected\n", ok, bad);
    }
    printf("hostile cases run: %d (%zu hand-made)\n", n_cases, GH_NCASES);
    free(buf);
    free(base);
    unlink(path);
    rmdir(dir);
    return test_done();
}
