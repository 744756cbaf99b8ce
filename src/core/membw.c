/* moekit core: memory read-bandwidth probe (see membw.h). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/clock.h"
#include "core/membw.h"
#include "kern/kern.h"

typedef struct {
    const float *buf;
    size_t n;
    int streams; /* per thread (AVX-512 form) */
    float sums[256];
} bw_job;

#if defined(__x86_64__)
#include <immintrin.h>
/* AVX-512: `streams` equal slices of [p, p + n) read in lockstep, 512 bytes of each per step
 * (8 loads OR-ed into 4 registers), each prefetching 2 KB ahead. One stream per thread read
 * ~15 % slower than four on this VM (53 against 63 GB/s on 2 threads), and the W8A8 kernels,
 * which read 2-4 weight streams per thread, read faster than a one-stream probe: so the probe
 * tries 1, 2, 4 and 8 and keeps the best (moe_membw_run). */
__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n, int streams) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    const size_t len = n / (size_t)streams / 128 * 128;
    for (size_t i = 0; i < len; i += 128)
        for (int k = 0; k < streams; k++) {
            const float *q = p + (size_t)k * len + i;
            for (int l = 0; l < 8; l++) _mm_prefetch((const char *)(q + 512 + 16 * l), _MM_HINT_T0);
            a = _mm512_or_si512(a, _mm512_load_si512(q));
            b = _mm512_or_si512(b, _mm512_load_si512(q + 16));
            c = _mm512_or_si512(c, _mm512_load_si512(q + 32));
            d = _mm512_or_si512(d, _mm512_load_si512(q + 48));
            a = _mm512_or_si512(a, _mm512_load_si512(q + 64));
            b = _mm512_or_si512(b, _mm512_load_si512(q + 80));
            c = _mm512_or_si512(c, _mm512_load_si512(q + 96));
            d = _mm512_or_si512(d, _mm512_load_si512(q + 112));
        }
    int32_t out[16];
    _mm512_storeu_si512(out, _mm512_or_si512(_mm512_or_si512(a, b), _mm512_or_si512(c, d)));
    float s = (float)(out[0] & 1);
    for (size_t i = len * (size_t)streams; i < n; i++) s += p[i];
    return s;
}
#endif

static void bw_worker(void *arg, int ith, int nth) {
    bw_job *j = arg;
    size_t a = j->n * (size_t)ith / (size_t)nth, b = j->n * (size_t)(ith + 1) / (size_t)nth;
    a = a / 16 * 16; /* 64-byte aligned slices */
    b = ith == nth - 1 ? j->n : b / 16 * 16;
    float s = 0.0f;
#if defined(__x86_64__)
    if (moe_kern_level() == 2) {
        j->sums[ith & 255] = read_avx512(j->buf + a, b - a, j->streams);
        return;
    }
#endif
    static const float ones[4096] = {0};
    for (size_t i = a; i < b; i += 4096) {
        size_t k = b - i < 4096 ? b - i : 4096;
        s += moe_kern_dot(j->buf + i, ones, (int64_t)k);
    }
    j->sums[ith & 255] = s;
}

#define HUGE ((size_t)2 << 20)

struct moe_membw {
    float *buf;
    size_t bytes;
};

moe_membw *moe_membw_new(size_t bytes) {
    if (!bytes) bytes = (size_t)1 << 30;
    moe_membw *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    /* 2 MB pages like the model's weights (load.c): on 4 KB pages the probe read a few percent
     * slower than the head's product streams, which put those above "100 %" of the probe */
    b->bytes = (bytes + HUGE - 1) / HUGE * HUGE;
    void *p = mmap(NULL, b->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(b);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, b->bytes, MADV_HUGEPAGE);
#endif
    b->buf = p;
    memset(b->buf, 1, b->bytes); /* commit the pages */
    return b;
}

double moe_membw_run(moe_membw *b, moe_pool *pool, int reps) {
    bw_job j = {b->buf, b->bytes / sizeof(float), 1, {0}};
    int max_streams = 1; /* the scalar/AVX2 pass reads one stream per thread */
#if defined(__x86_64__)
    if (moe_kern_level() == 2) max_streams = 8;
#endif
    double best = 0.0;
    for (int r = 0; r < reps; r++)
        for (int streams = 1; streams <= max_streams; streams *= 2) {
            j.streams = streams;
            double t0 = moe_now();
            moe_pool_run(pool, bw_worker, &j);
            double dt = moe_now() - t0;
            if (dt > 0 && (double)b->bytes / dt > best) best = (double)b->bytes / dt;
        }
    return best;
}

void moe_membw_free(moe_membw *b) {
    if (!b) return;
    munmap(b->buf, b->bytes);
    free(b);
}
