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

/* ---- replay of a weight-read trace (moe_membw_replay) ---- */
typedef struct {
    const moe_kern_span *s; /* the set's spans */
    int64_t ns;
    size_t total;
    int streams, level;
    size_t tile;
    uint64_t sums[256];
} rp_job;

/* a read position: span k, offset off, left bytes still to read in this slice */
typedef struct {
    int64_t k;
    size_t off, left;
} rp_cur;

static void rp_skip_ends(rp_cur *c, const rp_job *j) {
    while (c->left && c->k < j->ns && c->off >= j->s[c->k].n) {
        c->off -= j->s[c->k].n;
        c->k++;
    }
}

/* the next piece of slice c (at most 512 bytes, inside one span): its address and length */
static const uint8_t *rp_piece(rp_cur *c, const rp_job *j, size_t *n) {
    const moe_kern_span *sp = &j->s[c->k];
    size_t m = sp->n - c->off;
    m = m < 512 ? m : 512;
    m = m < c->left ? m : c->left;
    const uint8_t *q = sp->p + c->off;
    c->off += m;
    c->left -= m;
    rp_skip_ends(c, j);
    *n = m;
    return q;
}

/* Sum of n bytes, 8 at a time: each 64-bit word adds its bytes into four 16-bit lanes (at most
 * 510 per word, so 64 words cannot overflow a lane), folded into the total every 64 words. */
static uint64_t bytes_sum(const uint8_t *q, size_t n) {
    const uint64_t m = 0x00FF00FF00FF00FFull;
    uint64_t s = 0;
    size_t i = 0;
    while (i + 8 <= n) {
        uint64_t lanes = 0;
        for (int w = 0; w < 64 && i + 8 <= n; w++, i += 8) {
            uint64_t v;
            memcpy(&v, q + i, 8);
            lanes += (v & m) + ((v >> 8) & m);
        }
        s += (lanes & 0xFFFF) + ((lanes >> 16) & 0xFFFF) + ((lanes >> 32) & 0xFFFF) + (lanes >> 48);
    }
    for (; i < n; i++) s += q[i];
    return s;
}

/* The S cursors c[] in lockstep until all are done: PIECE runs for each piece (q, n) in turn; a
 * full 512-byte piece first prefetches 2 KB ahead, as the probe does. */
#define RP_LOCKSTEP(PIECE)                                                                                             \
    for (int any = 1; any;) {                                                                                          \
        any = 0;                                                                                                       \
        for (int k = 0; k < S; k++) {                                                                                  \
            if (!c[k].left) continue;                                                                                  \
            any = 1;                                                                                                   \
            size_t n;                                                                                                  \
            const uint8_t *q = rp_piece(&c[k], j, &n);                                                                 \
            if (n == 512)                                                                                              \
                for (int l = 0; l < 8; l++) __builtin_prefetch(q + 2048 + 64 * l, 0, 3);                            \
            PIECE;                                                                                                     \
        }                                                                                                              \
    }

#if defined(__x86_64__)
/* AVX-512: 64-byte loads summed with vpsadbw (a short piece through a masked load) */
__attribute__((target("avx512f,avx512bw"))) static uint64_t rp_read_avx512(rp_cur *c, int S, const rp_job *j) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a = z, b = z;
    RP_LOCKSTEP({
        if (n == 512) {
            for (int l = 0; l < 8; l += 2) {
                a = _mm512_add_epi64(a, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(q + 64 * l)), z));
                b = _mm512_add_epi64(b, _mm512_sad_epu8(_mm512_loadu_si512((const void *)(q + 64 * l + 64)), z));
            }
        } else {
            for (size_t m = 0; m < n; m += 64) {
                const size_t r = n - m < 64 ? n - m : 64;
                const __mmask64 mk = r == 64 ? ~(__mmask64)0 : (((__mmask64)1 << r) - 1);
                a = _mm512_add_epi64(a, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(mk, q + m), z));
            }
        }
    })
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(a, b));
}

/* AVX2 (level 1): 32-byte loads summed with vpsadbw (a short piece word by word) */
__attribute__((target("avx2"))) static uint64_t rp_read_avx2(rp_cur *c, int S, const rp_job *j) {
    const __m256i z = _mm256_setzero_si256();
    __m256i a = z, b = z;
    uint64_t tail = 0;
    RP_LOCKSTEP({
        if (n == 512) {
            for (int l = 0; l < 16; l += 2) {
                a = _mm256_add_epi64(a, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(const void *)(q + 32 * l)), z));
                b = _mm256_add_epi64(b, _mm256_sad_epu8(_mm256_loadu_si256((const __m256i *)(const void *)(q + 32 * l + 32)), z));
            }
        } else {
            tail += bytes_sum(q, n);
        }
    })
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)(void *)out, _mm256_add_epi64(a, b));
    return out[0] + out[1] + out[2] + out[3] + tail;
}
#endif

static uint64_t rp_read_plain(rp_cur *c, int S, const rp_job *j) {
    uint64_t s = 0;
    RP_LOCKSTEP(s += bytes_sum(q, n))
    return s;
}
#undef RP_LOCKSTEP

/* the cursor at byte pos of the set (len bytes to read), walking on from span *k0, which starts
 * at byte *p0: positions asked for never decrease, so a pass over the set walks its spans once */
static rp_cur rp_at(const rp_job *j, int64_t *k0, size_t *p0, size_t pos, size_t len) {
    while (*k0 < j->ns && pos >= *p0 + j->s[*k0].n) {
        *p0 += j->s[*k0].n;
        (*k0)++;
    }
    return (rp_cur){*k0, pos - *p0, len};
}

static uint64_t rp_read(rp_cur *c, int S, const rp_job *j) {
#if defined(__x86_64__)
    if (j->level == 2) return rp_read_avx512(c, S, j);
    if (j->level == 1) return rp_read_avx2(c, S, j);
#endif
    return rp_read_plain(c, S, j);
}

/* A thread's part [a, b) as S cursors in lockstep: S equal slices (tile 0), or tiles of S·tile
 * bytes, each read by S cursors `tile` bytes apart (as the R16 kernels' quads read 4 groups). */
static void rp_worker(void *arg, int ith, int nth) {
    rp_job *j = arg;
    const size_t a = j->total * (size_t)ith / (size_t)nth / 64 * 64,
                 b = ith == nth - 1 ? j->total : j->total * (size_t)(ith + 1) / (size_t)nth / 64 * 64;
    const int S = j->streams;
    const size_t step = j->tile ? (size_t)S * j->tile : b - a;
    int64_t k0 = 0;
    size_t p0 = 0;
    uint64_t sum = 0;
    for (size_t x = a; x < b; x += step) {
        const size_t len = b - x < step ? b - x : step;
        rp_cur c[8];
        for (int k = 0; k < S; k++) {
            const size_t lo = x + len * (size_t)k / (size_t)S / 64 * 64,
                         hi = k == S - 1 ? x + len : x + len * (size_t)(k + 1) / (size_t)S / 64 * 64;
            c[k] = rp_at(j, &k0, &p0, lo, hi - lo);
        }
        sum += rp_read(c, S, j);
    }
    j->sums[ith & 255] = sum;
}

double moe_membw_replay(moe_pool *pool, const moe_kern_trace *t, int streams, size_t tile, uint64_t *sum,
                        double *set_s) {
    rp_job j;
    j.streams = streams < 1 ? 1 : streams > 8 ? 8 : streams;
    j.tile = tile / 64 * 64;
    j.level = moe_kern_level();
    const int nth = moe_pool_n_threads(pool);
    uint64_t total = 0;
    int64_t s0 = 0;
    const double t0 = moe_now();
    for (int64_t k = 0; k < t->n_set; k++) {
        j.s = t->span + s0;
        j.ns = t->set_end[k] - s0;
        s0 = t->set_end[k];
        j.total = 0;
        for (int64_t i = 0; i < j.ns; i++) j.total += j.s[i].n;
        if (set_s) set_s[k] = 0;
        if (!j.total) continue;
        const double ts = set_s ? moe_now() : 0;
        moe_pool_run(pool, rp_worker, &j);
        if (set_s) set_s[k] = moe_now() - ts;
        for (int i = 0; i < nth && i < 256; i++) total += j.sums[i];
    }
    const double dt = moe_now() - t0;
    if (sum) *sum = total;
    return dt;
}
