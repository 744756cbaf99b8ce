/* The checked-in corpus of broken GGUF files (tests/corpus/gguf, made once by
 * gen_gguf_corpus broken): each must fail with MOE_ERR_FORMAT and a message naming a byte
 * offset, through the mmap path and from an exact-size buffer. */
#include <dirent.h>

#include "moe/gguf.h"
#include "testutil.h"

int main(void) {
    char dir[1024];
    const char *src = getenv("MOE_SRC");
    if (src) {
        snprintf(dir, sizeof dir, "%s/tests/corpus/gguf", src);
    } else { /* __FILE__ is absolute in CMake builds: <src>/tests/fmt/test_gguf_corpus.c */
        snprintf(dir, sizeof dir, "%s", __FILE__);
        char *s = strstr(dir, "/tests/fmt/");
        if (s) strcpy(s, "/tests/corpus/gguf");
    }
    DIR *d = opendir(dir);
    CHECK(d != NULL, "corpus folder %s", dir);
    if (!d) return test_done();
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 5, ".gguf")) continue;
        char p[2048], err[512] = "";
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        moe_gguf *g;
        moe_status st = moe_gguf_open(p, &g, err, sizeof err);
        CHECK(st == MOE_ERR_FORMAT && g == NULL && strstr(err, "gguf: at byte "), "%s: %s '%s'", e->d_name,
              moe_status_str(st), err);
        size_t len = 0;
        char *b = tu_read_file(p, &len);
        if (b) {
            char *c = malloc(len ? len : 1);
            memcpy(c, b, len);
            st = moe_gguf_open_mem(c, len, &g, err, sizeof err);
            CHECK(st == MOE_ERR_FORMAT && err[0], "%s from memory: %s", e->d_name, moe_status_str(st));
            free(c);
            free(b);
        }
        printf("  %-32s %s\n", e->d_name, err);
        n++;
    }
    closedir(d);
    printf("corpus files: %d\n", n);
    CHECK(n >= 12, "at least a dozen corpus files (found %d)", n);
    return test_done();
}
