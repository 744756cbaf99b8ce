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

double moe_membw_probe(moe_pool *pool, size_t bytes, int reps) {
    if (!bytes) bytes = (size_t)1 << 30;
    size_t n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) return 0.0;
    memset(buf, 1, n * sizeof(float)); /* commit the pages */
    bw_job j = {buf, n, {0}};
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        moe_pool_run(pool, bw_worker, &j);
        double dt = now() - t0;
        if (dt > 0 && (double)bytes / dt > best) best = (double)bytes / dt;
    }
    free(buf);
    return best;
}
