/* The Redis quota backend against a real redis-server started here on a free 127.0.0.1 port:
 * the Lua scripts agree with the local backend step for step (fake clock), several processes
 * sharing one quota admit burst + rate·T within 5% while another tenant is unaffected, scripts
 * come back after SCRIPT FLUSH, and killing Redis follows the failure policy (fail-open admits,
 * fail-closed refuses) without crashing, recovering when Redis returns. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "moe/quota.h"
#include "tenant_util.h"

static int g_port;
static char g_spec[64];

static moe_quota *open_q(fake_clock *clk, int fail_open) {
    moe_quota_params p = moe_quota_default_params();
    if (clk) {
        p.clock = fake_now;
        p.clock_ctx = clk;
    }
    p.fail_open = fail_open;
    moe_quota *q = NULL;
    char err[256];
    if (moe_quota_open(g_spec, &p, &q, err, sizeof err)) fprintf(stderr, "open %s: %s\n", g_spec, err);
    return q;
}

/* Same operations on both backends; every result must agree. */
static void test_parity(void) {
    fake_clock c1 = {1717000000.25}, c2 = c1;
    moe_quota_params p = moe_quota_default_params();
    p.clock = fake_now;
    p.clock_ctx = &c1;
    moe_quota *loc = NULL, *red = open_q(&c2, 0);
    char err[256];
    moe_quota_open("local", &p, &loc, err, sizeof err);
    CHECK(loc && red, "both backends open");
    if (!loc || !red) return;
    static const moe_quota_limits lims[4] = {
        {.rps = 3, .burst = 5, .tpm = 600},
        {.rps = 2, .burst = 4, .concurrency = 2},
        {.tpm = 1200, .budget = 5000},
        {.rps = 10, .burst = 10, .tpm = 3000, .concurrency = 3, .budget = 20000},
    };
    static const char *const buckets[4] = {"pa", "pb", "pc", "pd/model"};
    char held[4][64][24]; /* leases admitted by both, per bucket */
    int n_held[4] = {0};
    uint64_t rng = 12345;
    int mismatches = 0, ok = 0, refused = 0;
    double worst = 0;
    for (int i = 0; i < 3000; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        int b = (int)((rng >> 33) % 4), op = (int)((rng >> 40) % 10);
        double dt = (double)((rng >> 20) % 400) / 1000.0; /* 0..0.4 s */
        c1.t += dt;
        c2.t += dt;
        if (op < 6) {
            int64_t prompt = (int64_t)((rng >> 28) % 300);
            char lease[24];
            snprintf(lease, sizeof lease, "L%d", i);
            moe_quota_result a, r;
            moe_quota_admit(loc, buckets[b], &lims[b], prompt, lease, &a);
            moe_quota_admit(red, buckets[b], &lims[b], prompt, lease, &r);
            double d = fabs(a.retry_after - r.retry_after) + fabs(a.remaining_requests - r.remaining_requests) +
                       fabs(a.remaining_tokens - r.remaining_tokens);
            if (d > worst) worst = d;
            if (a.verdict != r.verdict || d > 1e-6 || a.budget_used != r.budget_used || r.backend_error) {
                if (mismatches++ < 5)
                    fprintf(stderr, "step %d bucket %s: local %s retry %g rem %g/%g used %lld; redis %s retry %g rem %g/%g used %lld\n",
                            i, buckets[b], moe_quota_verdict_str(a.verdict), a.retry_after, a.remaining_requests,
                            a.remaining_tokens, (long long)a.budget_used, moe_quota_verdict_str(r.verdict), r.retry_after,
                            r.remaining_requests, r.remaining_tokens, (long long)r.budget_used);
            }
            if (a.verdict) refused++;
            else ok++;
            if (!a.verdict && !r.verdict && n_held[b] < 64) snprintf(held[b][n_held[b]++], 24, "%s", lease);
        } else if (op < 8) {
            /* generated tokens charged as used; one in four a refund of tokens charged ahead */
            int64_t n = (int64_t)((rng >> 30) % 200) - ((rng >> 50) % 4 == 0 ? 220 : 0);
            double la = 0, lr = 0;
            moe_status sa = moe_quota_charge_level(loc, buckets[b], &lims[b], n, &la);
            moe_status sr = moe_quota_charge_level(red, buckets[b], &lims[b], n, &lr);
            if (sa != sr || fabs(la - lr) > 1e-6) {
                if (mismatches++ < 5)
                    fprintf(stderr, "step %d charge %lld on %s: local %d level %g; redis %d level %g\n", i, (long long)n,
                            buckets[b], sa, la, sr, lr);
            }
            if (fabs(la - lr) > worst) worst = fabs(la - lr);
        } else if (n_held[b]) {
            moe_quota_release(loc, buckets[b], &lims[b], held[b][0]);
            moe_quota_release(red, buckets[b], &lims[b], held[b][0]);
            memmove(held[b][0], held[b][1], (size_t)--n_held[b] * 24);
        }
    }
    printf("parity: %d admitted, %d refused, %d mismatches, largest difference %.3g\n", ok, refused, mismatches, worst);
    CHECK(ok > 200 && refused > 200, "the sequence exercises both outcomes (%d/%d)", ok, refused);
    CHECK(mismatches == 0, "%d mismatches between local and redis", mismatches);
    moe_quota_close(loc);
    moe_quota_close(red);
}

/* ---- replicas sharing one quota ---- */

typedef struct worker {
    moe_quota *q;
    const char *bucket;
    moe_quota_limits l;
    double t_end;
    atomic_int *admitted;
    atomic_int *errors;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    char lease[32];
    int i = 0;
    while (tt_now() < w->t_end) {
        moe_quota_result r;
        snprintf(lease, sizeof lease, "%p-%d", (void *)w, i++);
        moe_quota_admit(w->q, w->bucket, &w->l, 1, lease, &r);
        if (r.backend_error) atomic_fetch_add(w->errors, 1);
        else if (r.verdict == MOE_QUOTA_OK) atomic_fetch_add(w->admitted, 1);
    }
    return NULL;
}

/* One "replica": a process with its own backend connection and n threads. Writes the count
 * of admissions to fd. */
static void replica(int fd, const char *bucket, moe_quota_limits l, double seconds, int threads) {
    moe_quota *q = open_q(NULL, 0);
    atomic_int admitted = 0, errors = 0;
    pthread_t th[16];
    worker w = {q, bucket, l, tt_now() + seconds, &admitted, &errors};
    for (int i = 0; i < threads; i++) pthread_create(&th[i], NULL, work, &w);
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    int out[2] = {atomic_load(&admitted), atomic_load(&errors)};
    if (write(fd, out, sizeof out) != sizeof out) _exit(3);
    moe_quota_close(q);
    _exit(0);
}

static void test_replicas(void) {
    const double T = 3.0;
    moe_quota_limits shared = {.rps = 40, .burst = 20}, other = {.rps = 10, .burst = 5};
    int fds[3][2];
    pid_t pids[3];
    for (int i = 0; i < 3; i++) {
        if (pipe(fds[i])) exit(2);
        if ((pids[i] = fork()) == 0) {
            close(fds[i][0]);
            if (i < 2) replica(fds[i][1], "shared", shared, T, 6);
            else replica(fds[i][1], "other", other, T, 2);
        }
        close(fds[i][1]);
    }
    int got[3][2] = {{0}};
    for (int i = 0; i < 3; i++) {
        if (read(fds[i][0], got[i], sizeof got[i]) != sizeof got[i]) got[i][0] = -1;
        close(fds[i][0]);
        waitpid(pids[i], NULL, 0);
    }
    int both = got[0][0] + got[1][0];
    double want = shared.burst + shared.rps * T, want_other = other.burst + other.rps * T;
    printf("replicas: shared quota admitted %d + %d = %d (expected %.0f, %+.1f%%); other tenant %d (expected %.0f); "
           "backend errors %d\n",
           got[0][0], got[1][0], both, want, 100.0 * (both - want) / want, got[2][0], want_other,
           got[0][1] + got[1][1] + got[2][1]);
    CHECK(fabs(both - want) <= 0.05 * want, "two replicas admitted %d, quota %.0f", both, want);
    CHECK(got[0][0] > 0.2 * want && got[1][0] > 0.2 * want, "both replicas got a share (%d, %d)", got[0][0], got[1][0]);
    CHECK(fabs(got[2][0] - want_other) <= 0.05 * want_other + 1, "other tenant admitted %d, quota %.0f", got[2][0],
          want_other);
}

static void test_concurrency_across(void) {
    fake_clock c = {1717000000.0};
    moe_quota *a = open_q(&c, 0), *b = open_q(&c, 0);
    if (!a || !b) return;
    moe_quota_limits l = {.concurrency = 3};
    moe_quota_result r;
    moe_quota_admit(a, "cc", &l, 0, "a1", &r);
    moe_quota_admit(b, "cc", &l, 0, "b1", &r);
    moe_quota_admit(a, "cc", &l, 0, "a2", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "3 leases over two clients");
    moe_quota_admit(b, "cc", &l, 0, "b2", &r);
    CHECK(r.verdict == MOE_QUOTA_CONCURRENCY, "4th refused on the other client");
    moe_quota_release(a, "cc", &l, "a1");
    moe_quota_admit(b, "cc", &l, 0, "b2", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "admitted after a release on the other client");
    /* a lease of a crashed replica expires after lease_ttl */
    c.t += 601;
    moe_quota_admit(b, "cc", &l, 0, "b3", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "expired leases are dropped");
    moe_quota_close(a);
    moe_quota_close(b);
}

static void test_script_flush(void) {
    fake_clock c = {1717000000.0};
    moe_quota *q = open_q(&c, 0);
    if (!q) return;
    moe_quota_limits l = {.rps = 1};
    moe_quota_result r;
    moe_quota_admit(q, "fl", &l, 0, "x", &r);
    redisContext *rc = redisConnect("127.0.0.1", g_port);
    redisReply *rep = rc ? redisCommand(rc, "SCRIPT FLUSH") : NULL;
    CHECK(rep && rep->type == REDIS_REPLY_STATUS, "SCRIPT FLUSH");
    if (rep) freeReplyObject(rep);
    if (rc) redisFree(rc);
    c.t += 1;
    moe_quota_admit(q, "fl", &l, 0, "x", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && !r.backend_error, "NOSCRIPT reloads the script");
    /* the overhead of one admission over loopback */
    double lat[2000];
    for (int i = 0; i < 2000; i++) {
        double t0 = tt_now();
        moe_quota_admit(q, "lat", &l, 0, "x", &r);
        lat[i] = tt_now() - t0;
    }
    for (int i = 1; i < 2000; i++) /* insertion sort (small) */
        for (int j = i; j > 0 && lat[j] < lat[j - 1]; j--) {
            double t = lat[j];
            lat[j] = lat[j - 1];
            lat[j - 1] = t;
        }
    printf("redis admit latency: p50 %.1f us, p99 %.1f us\n", lat[1000] * 1e6, lat[1980] * 1e6);
    /* The target (p99 < 1 ms) is measured by bench/bench_gateway on a quiet machine; on a
     * shared 2-core runner p99 is the scheduler's (it read 2.4 ms at load 8), so the test holds
     * the median, which a round trip per call or a reconnect per call would still break. */
    CHECK(lat[1000] < 500e-6, "p50 %.1f us < 500 us", lat[1000] * 1e6);
    CHECK(lat[1980] < 20e-3, "p99 %.1f us < 20 ms", lat[1980] * 1e6);
    moe_quota_close(q);
}

static void test_redis_dies(const char *dir, pid_t *pid) {
    moe_quota *closed = open_q(NULL, 0), *open = open_q(NULL, 1);
    if (!closed || !open) return;
    moe_quota_limits l = {.rps = 1000, .concurrency = 100};
    moe_quota_result r;
    moe_quota_admit(closed, "die", &l, 0, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && moe_quota_up(closed), "up before");
    tt_redis_stop(*pid);
    *pid = -1;
    double worst = 0;
    int n_unavail = 0, n_open_ok = 0;
    for (int i = 0; i < 200; i++) {
        double t0 = tt_now();
        moe_quota_admit(closed, "die", &l, 0, "a", &r);
        n_unavail += r.verdict == MOE_QUOTA_UNAVAILABLE && r.backend_error;
        moe_quota_admit(open, "die", &l, 0, "a", &r);
        n_open_ok += r.verdict == MOE_QUOTA_OK && r.backend_error;
        moe_quota_charge(open, "die", &l, 5);
        moe_quota_release(open, "die", &l, "a");
        double dt = tt_now() - t0;
        if (dt > worst) worst = dt;
    }
    uint64_t errors = 0, pol = 0;
    moe_quota_stats(closed, &errors, &pol);
    printf("redis down: fail-closed refused %d/200, fail-open admitted %d/200, slowest pair %.2f ms, %llu errors\n",
           n_unavail, n_open_ok, worst * 1e3, (unsigned long long)errors);
    CHECK(n_unavail == 200 && n_open_ok == 200, "policies followed (%d, %d)", n_unavail, n_open_ok);
    CHECK(!moe_quota_up(closed) && !moe_quota_up(open), "reported down");
    CHECK(pol == 200 && errors >= 200, "counted: %llu decisions, %llu errors", (unsigned long long)pol,
          (unsigned long long)errors);
    CHECK(worst < 0.5, "a call while down takes %.3f s (< timeout)", worst);
    *pid = tt_redis_start(dir, g_port);
    CHECK(*pid > 0, "redis restarted");
    usleep(300000); /* past the 250 ms reconnect back-off */
    moe_quota_admit(closed, "die", &l, 0, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && !r.backend_error && moe_quota_up(closed), "back up after restart");
    moe_quota_close(closed);
    moe_quota_close(open);
}

int main(void) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    g_port = tt_free_port();
    snprintf(g_spec, sizeof g_spec, "redis://127.0.0.1:%d", g_port);
    pid_t pid = tt_redis_start(dir, g_port);
    CHECK(pid > 0, "redis-server started on 127.0.0.1:%d (is the redis-server package installed?)", g_port);
    if (pid > 0) {
        test_parity();
        test_concurrency_across();
        test_script_flush();
        test_replicas();
        test_redis_dies(dir, &pid);
    }
    tt_redis_stop(pid);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {
    }
    return test_done();
}
