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
    float sums[256];
} bw_job;

#if defined(__x86_64__)
#include <immintrin.h>
/* AVX-512: 8 streams of 64-byte loads OR-ed into 4 registers, prefetching 2 KB ahead; reads
 * at least as fast as any kernel (the F32 dot alone read a few percent below the W8A8 kernels,
 * which put decode above 100 % of "its" roofline). */
__attribute__((target("avx512f"))) static float read_avx512(const float *p, size_t n) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        _mm_prefetch((const char *)(p + i + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 528), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 544), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 560), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 576), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 592), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 608), _MM_HINT_T0);
        _mm_prefetch((const char *)(p + i + 624), _MM_HINT_T0);
        a = _mm512_or_si512(a, _mm512_load_si512(p + i));
        b = _mm512_or_si512(b, _mm512_load_si512(p + i + 16));
        c = _mm512_or_si512(c, _mm512_load_si512(p + i + 32));
        d = _mm512_or_si512(d, _mm512_load_si512(p + i + 48));
        a = _mm512_or_si512(a, _mm512_load_si512(p + i + 64));
        b = _mm512_or_si512(b, _mm512_load_si512(p + i + 80));
        c = _mm512_or_si512(c, _mm512_load_si512(p + i + 96));
        d = _mm512_or_si512(d, _mm512_load_si512(p + i + 112));
    }
    int32_t out[16];
    _mm512_storeu_si512(out, _mm512_or_si512(_mm512_or_si512(a, b), _mm512_or_si512(c, d)));
    float s = (float)(out[0] & 1);
    for (; i < n; i++) s += p[i];
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
        j->sums[ith & 255] = read_avx512(j->buf + a, b - a);
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
    bw_job j = {b->buf, b->bytes / sizeof(float), {0}};
    double best = 0.0;
    for (int r = 0; r < reps; r++) {
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
