/* moekit core: memory read-bandwidth probe (see membw.h). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/membw.h"
#include "kern/kern.h"

typedef struct {
    const float *buf;
    size_t n;
    float sums[256];
} bw_job;

static void bw_worker(void *arg, int ith, int nth) {
    bw_job *j = arg;
    size_t a = j->n * (size_t)ith / (size_t)nth, b = j->n * (size_t)(ith + 1) / (size_t)nth;
    static const float ones[4096] = {0};
    float s = 0.0f;
    for (size_t i = a; i < b; i += 4096) {
        size_t k = b - i < 4096 ? b - i : 4096;
        s += moe_kern_dot(j->buf + i, ones, (int64_t)k);
    }
    j->sums[ith & 255] = s;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct moe_membw {
    float *buf;
    size_t bytes;
};

moe_membw *moe_membw_new(size_t bytes) {
    if (!bytes) bytes = (size_t)1 << 30;
    moe_membw *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->bytes = bytes / 64 * 64;
    b->buf = aligned_alloc(64, b->bytes);
    if (!b->buf) {
        free(b);
        return NULL;
    }
    memset(b->buf, 1, b->bytes); /* commit the pages */
    return b;
}

double moe_membw_run(moe_membw *b, moe_pool *pool, int reps) {
    bw_job j = {b->buf, b->bytes / sizeof(float), {0}};
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        moe_pool_run(pool, bw_worker, &j);
        double dt = now() - t0;
        if (dt > 0 && (double)b->bytes / dt > best) best = (double)b->bytes / dt;
    }
    return best;
}

void moe_membw_free(moe_membw *b) {
    if (!b) return;
    free(b->buf);
    free(b);
}

double moe_membw_probe(moe_pool *pool, size_t bytes, int reps) {
    moe_membw *b = moe_membw_new(bytes);
    if (!b) return 0.0;
    double r = moe_membw_run(b, pool, reps);
    moe_membw_free(b);
    return r;
}
