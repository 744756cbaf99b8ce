/* moekit tests: tiny assertion helpers shared by every test program.
 *
 * CHECK(cond, fmt, ...) records a failure and continues; test_done() prints
 * "N passed, N failed" and returns the exit code. */
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tu_pass, tu_fail;

#define CHECK(cond, ...)                                                                  \
    do {                                                                                  \
        if (cond) {                                                                       \
            tu_pass++;                                                                    \
        } else {                                                                          \
            tu_fail++;                                                                    \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fprintf(stderr, "\n");                                                        \
        }                                                                                 \
    } while (0)

static inline int test_done(void) {
    printf("%d passed, %d failed\n", tu_pass, tu_fail);
    return tu_fail ? 1 : (tu_pass ? 0 : 1);
}

/* Path under the shared folder (MOE_SHARED, default ../shared from the source tree). */
static inline const char *tu_shared(const char *rel, char *buf, size_t n) {
    const char *base = getenv("MOE_SHARED");
    if (!base) base = "../shared";
    snprintf(buf, n, "%s/%s", base, rel);
    return buf;
}

/* Fresh temporary directory (tests only write below it). */
static inline const char *tu_tmpdir(char *buf, size_t n) {
    const char *t = getenv("TMPDIR");
    snprintf(buf, n, "%s/moetest.XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(2);
    }
    return buf;
}

/* Read a whole file; returns malloc'd buffer (NUL-terminated) or NULL. */
static inline char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        if (len) *len = (size_t)n;
    }
    return b;
}

#endif
