/* Writes GGUF files for tests and fuzzing (not a ctest case; built with the fuzz targets).
 *
 *   gen_gguf_corpus broken DIR   the hostile cases marked for the corpus (gguf_hostile.h), one
 *                                file each; run once to make tests/corpus/gguf (checked in)
 *   gen_gguf_corpus seeds DIR    small valid files: fuzzing seeds (scripts/run-fuzz.sh writes
 *                                them into a temporary folder, never into the source tree) */
#include <unistd.h>

#include "fmt/gguf_hostile.h"

static int put(const char *dir, const char *name, const uint8_t *b, size_t n) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fwrite(b, 1, n, f) != n || fclose(f)) {
        perror(p);
        return 1;
    }
    return 0;
}

/* A valid file with one small tensor of each type the engine reads, plus every value type. */
static int seed_types(const char *path) {
    moe_gguf_writer *w;
    if (moe_gguf_writer_init(&w)) return 1;
    static const int types[] = {MOE_DTYPE_F32,  MOE_DTYPE_F16,  MOE_DTYPE_BF16, MOE_DTYPE_Q8_0,
                                MOE_DTYPE_Q4_0, MOE_DTYPE_Q4_1, MOE_DTYPE_Q5_0, MOE_DTYPE_Q5_1,
                                MOE_DTYPE_Q4_K, MOE_DTYPE_Q5_K, MOE_DTYPE_Q6_K};
    static uint8_t data[256 * 4];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 31 + 7);
    uint64_t v = 0x0102030405060708ull;
    for (int t = 0; t <= MOE_GGUF_TYPE_FLOAT64; t++) {
        char key[32];
        snprintf(key, sizeof key, "seed.%s", moe_gguf_type_name(t));
        if (t == MOE_GGUF_TYPE_STRING) moe_gguf_writer_set_str(w, key, "hello");
        else if (t == MOE_GGUF_TYPE_ARRAY) moe_gguf_writer_set_arr(w, key, MOE_GGUF_TYPE_INT32, data, 4);
        else moe_gguf_writer_set_scalar(w, key, t, &v);
    }
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char name[32];
        int64_t ne[2] = {moe_dtype_block_size(types[i]) == 256 ? 256 : 32, 1};
        snprintf(name, sizeof name, "t.%s", moe_dtype_name(types[i]));
        moe_gguf_writer_add_tensor(w, name, types[i], 2, ne, data);
    }
    char err[256];
    moe_status st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, err, sizeof err);
    moe_gguf_writer_free(w);
    if (st) fprintf(stderr, "%s\n", err);
    return st != MOE_OK;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[1], "broken") && strcmp(argv[1], "seeds"))) {
        fprintf(stderr, "usage: gen_gguf_corpus broken|seeds DIR\n");
        return 1;
    }
    const char *dir = argv[2];
    char path[1024];
    snprintf(path, sizeof path, "%s/base.gguf", dir);
    size_t len;
    uint8_t *base = gh_base_write(path, &len);
    if (!base) return 2;
    gh_layout L;
    gh_walk(base, &L);
    uint8_t *buf = malloc(len);
    int bad = 0, n = 0;
    if (!strcmp(argv[1], "broken")) {
        unlink(path);
        for (size_t i = 0; i < GH_NCASES; i++) {
            if (!k_gh_cases[i].corpus) continue;
            char name[96];
            size_t m = len;
            memcpy(buf, base, len);
            k_gh_cases[i].patch(buf, &m, &L);
            snprintf(name, sizeof name, "%s.gguf", k_gh_cases[i].name);
            bad |= put(dir, name, buf, m);
            n++;
        }
    } else {
        n++; /* base.gguf */
        memcpy(buf, base, len);
        gh_wr64(buf + 8, 0);
        bad |= put(dir, "meta-only.gguf", buf, L.name_at[0]);
        bad |= put(dir, "header-only.gguf", buf, 24);
        gh_wr64(buf + 8, GH_NT);
        gh_wr32(buf + 4, 2);
        bad |= put(dir, "version2.gguf", buf, len);
        snprintf(path, sizeof path, "%s/types.gguf", dir);
        bad |= seed_types(path);
        n += 4;
    }
    printf("gen_gguf_corpus: wrote %d files to %s\n", n, dir);
    free(buf);
    free(base);
    return bad ? 2 : 0;
}
