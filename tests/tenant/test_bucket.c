/* Token-bucket maths and the local quota backend, driven by a fake clock: bursts, refill,
 * exact boundaries, a clock that steps back, debt from charged tokens, every limit's verdict
 * and retry time, the month roll of the budget. */
#include <math.h>

#include "moe/quota.h"
#include "tenant_util.h"

#define NEAR(a, b) (fabs((a) - (b)) < 1e-9)

static void test_bucket_maths(void) {
    moe_bucket b = {0};
    double ra = -1;
    /* a new bucket is full: a burst of cap, then refused */
    CHECK(NEAR(moe_bucket_level(&b, 2, 5, 100), 5), "new bucket full");
    for (int i = 0; i < 5; i++) CHECK(moe_bucket_take(&b, 2, 5, 1, 1, 100, &ra), "burst take %d", i);
    CHECK(!moe_bucket_take(&b, 2, 5, 1, 1, 100, &ra), "6th refused");
    CHECK(NEAR(ra, 0.5), "retry after 0.5 s at rate 2, got %g", ra);
    /* boundary: just before the refill of one token refused, exactly at it admitted */
    CHECK(!moe_bucket_take(&b, 2, 5, 1, 1, 100.4999, &ra), "before boundary");
    CHECK(NEAR(ra, 0.0001) || fabs(ra - 0.0001) < 1e-6, "retry %g", ra);
    CHECK(moe_bucket_take(&b, 2, 5, 1, 1, 100.5, &ra), "at boundary");
    CHECK(NEAR(moe_bucket_level(&b, 2, 5, 100.5), 0), "empty again");
    /* refill caps at capacity */
    CHECK(NEAR(moe_bucket_level(&b, 2, 5, 1000), 5), "capped");
    CHECK(NEAR(moe_bucket_reset(&b, 2, 5, 100.5), 2.5), "reset time 2.5 s");
    CHECK(NEAR(moe_bucket_reset(&b, 2, 5, 1000), 0), "full: reset 0");
    /* a clock that steps back refills nothing and does not move time back */
    moe_bucket c = {0};
    CHECK(moe_bucket_take(&c, 1, 1, 1, 1, 50, NULL), "take at 50");
    CHECK(!moe_bucket_take(&c, 1, 1, 1, 1, 40, &ra), "clock back: refused");
    CHECK(NEAR(c.t, 50), "time stays 50, got %g", c.t);
    CHECK(moe_bucket_take(&c, 1, 1, 1, 1, 51, NULL), "one second after 50");
    /* fractional rates: 0.1 per second = one every 10 s */
    moe_bucket d = {0};
    CHECK(moe_bucket_take(&d, 0.1, 1, 1, 1, 0, NULL), "first");
    CHECK(!moe_bucket_take(&d, 0.1, 1, 1, 1, 9.99, &ra) && fabs(ra - 0.01) < 1e-6, "9.99 s: retry %g", ra);
    CHECK(moe_bucket_take(&d, 0.1, 1, 1, 1, 10, NULL), "10 s");
    /* debt: a take bigger than need, and charges after admission, floored at -cap */
    moe_bucket e = {0};
    CHECK(moe_bucket_take(&e, 10, 100, 100, 150, 0, NULL), "prompt 150 > cap 100 from a full bucket");
    CHECK(NEAR(e.level, -50), "debt -50, got %g", e.level);
    CHECK(!moe_bucket_take(&e, 10, 100, 1, 1, 5, &ra) && NEAR(ra, 0.1), "in debt: retry %g", ra);
    moe_bucket_charge(&e, 10, 100, 1000, 5);
    CHECK(NEAR(e.level, -100), "charge floored at -cap, got %g", e.level);
    CHECK(NEAR(moe_bucket_level(&e, 10, 100, 25), 100), "20 s later full");
    /* zero rate: never refills, retry infinite */
    moe_bucket z = {0};
    CHECK(moe_bucket_take(&z, 0, 1, 1, 1, 0, NULL) && !moe_bucket_take(&z, 0, 1, 1, 1, 1e6, &ra) && isinf(ra),
          "rate 0");
}

/* The steady state of a long run: admitted = burst + rate * T (within one). */
static void test_bucket_long_run(void) {
    moe_bucket b = {0};
    int admitted = 0;
    for (int i = 0; i <= 100000; i++) /* 100 k attempts over 10 s, every 0.1 ms */
        admitted += moe_bucket_take(&b, 20, 20, 1, 1, i * 1e-4, NULL);
    /* the last refill lands exactly on t = 10 s, where rounding may leave 0.99999 tokens */
    CHECK(admitted >= 219 && admitted <= 220, "admitted %d, expected 220 (219 by rounding)", admitted);
}

static void test_local_backend(void) {
    fake_clock clk = {1700000000.0}; /* 2023-11-14 */
    moe_quota_params p = moe_quota_default_params();
    p.clock = fake_now;
    p.clock_ctx = &clk;
    moe_quota *q = NULL;
    char err[256];
    CHECK(moe_quota_open("local", &p, &q, err, sizeof err) == MOE_OK, "open: %s", err);
    if (!q) return;
    CHECK(!strcmp(moe_quota_backend(q), "local") && moe_quota_up(q), "local, up");
    moe_quota_result r;
    moe_quota_limits l = {.rps = 2, .burst = 3};
    for (int i = 0; i < 3; i++) {
        moe_quota_admit(q, "t1", &l, 0, "a", &r);
        CHECK(r.verdict == MOE_QUOTA_OK, "burst %d", i);
    }
    CHECK(NEAR(r.remaining_requests, 0) && NEAR(r.reset_requests, 1.5), "remaining %g reset %g", r.remaining_requests,
          r.reset_requests);
    moe_quota_admit(q, "t1", &l, 0, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_REQUESTS && NEAR(r.retry_after, 0.5), "4th: %s retry %g",
          moe_quota_verdict_str(r.verdict), r.retry_after);
    moe_quota_admit(q, "t2", &l, 0, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "another bucket is unaffected");
    clk.t += 0.5;
    moe_quota_admit(q, "t1", &l, 0, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "refilled after 0.5 s");

    /* tokens per minute: prompt charged at admission, generation charged after */
    moe_quota_limits lt = {.tpm = 600}; /* 10 tokens per second */
    moe_quota_admit(q, "tok", &lt, 500, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && NEAR(r.remaining_tokens, 100), "prompt 500: remaining %g", r.remaining_tokens);
    moe_quota_admit(q, "tok", &lt, 200, "b", &r);
    CHECK(r.verdict == MOE_QUOTA_TOKENS && NEAR(r.retry_after, 10), "prompt 200 > 100 left: retry %g", r.retry_after);
    moe_quota_charge(q, "tok", &lt, 300);
    moe_quota_admit(q, "tok", &lt, 1, "c", &r);
    CHECK(r.verdict == MOE_QUOTA_TOKENS && NEAR(r.retry_after, 20.1), "debt -200: retry %g", r.retry_after);
    clk.t += 20.1 + 1e-6;
    moe_quota_admit(q, "tok", &lt, 1, "c", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "after 20.1 s");
    moe_quota_admit(q, "tok2", &lt, 5000, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && NEAR(r.remaining_tokens, -600), "oversized prompt from a full bucket: %g",
          r.remaining_tokens);

    /* concurrency: leases taken and given back */
    moe_quota_limits lc = {.concurrency = 2};
    moe_quota_admit(q, "conc", &lc, 0, "r1", &r);
    moe_quota_admit(q, "conc", &lc, 0, "r2", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "2 running");
    moe_quota_admit(q, "conc", &lc, 0, "r3", &r);
    CHECK(r.verdict == MOE_QUOTA_CONCURRENCY && r.retry_after >= 1, "3rd refused");
    moe_quota_release(q, "conc", &lc, "r1");
    moe_quota_admit(q, "conc", &lc, 0, "r3", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "after a release");

    /* a refusal takes nothing: the rps bucket is untouched when tokens refuse */
    moe_quota_limits lb = {.rps = 1, .burst = 1, .tpm = 60};
    moe_quota_admit(q, "both", &lb, 100, "x", &r);
    CHECK(r.verdict == MOE_QUOTA_OK, "first from full buckets");
    clk.t += 1;
    moe_quota_admit(q, "both", &lb, 30, "y", &r);
    CHECK(r.verdict == MOE_QUOTA_TOKENS, "tokens in debt: %s", moe_quota_verdict_str(r.verdict));
    CHECK(NEAR(r.remaining_requests, 1), "rps bucket untouched by the refusal: %g", r.remaining_requests);

    /* monthly budget, with sub-buckets sharing it, and the month roll */
    moe_quota_limits lg = {.budget = 1000};
    moe_quota_admit(q, "bud", &lg, 600, "a", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && r.budget_used == 600, "600 used: %lld", (long long)r.budget_used);
    moe_quota_admit(q, "bud/model-x", &lg, 300, "b", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && r.budget_used == 900, "sub-bucket shares the budget: %lld",
          (long long)r.budget_used);
    moe_quota_charge(q, "bud/model-x", &lg, 100);
    CHECK(moe_quota_budget_used(q, "bud") == 1000, "charged to the tenant's budget");
    moe_quota_admit(q, "bud", &lg, 1, "c", &r);
    char m[8];
    moe_quota_month(clk.t, m);
    CHECK(r.verdict == MOE_QUOTA_BUDGET && NEAR(r.retry_after, moe_quota_month_left(clk.t)), "spent in %s: retry %g", m,
          r.retry_after);
    clk.t += moe_quota_month_left(clk.t);
    moe_quota_month(clk.t, m);
    CHECK(!strcmp(m, "2023-12"), "next month %s", m);
    moe_quota_admit(q, "bud", &lg, 1, "c", &r);
    CHECK(r.verdict == MOE_QUOTA_OK && r.budget_used == 1, "a new month: %lld", (long long)r.budget_used);
    moe_quota_budget_seed(q, "seeded", 777);
    CHECK(moe_quota_budget_used(q, "seeded") == 777, "seed");

    /* bad arguments */
    CHECK(moe_quota_admit(q, "bad key!", &l, 0, "a", &r) == MOE_ERR_INVAL, "bucket charset");
    CHECK(moe_quota_admit(q, "", &l, 0, "a", &r) == MOE_ERR_INVAL, "empty bucket");
    moe_quota_close(q);
    CHECK(moe_quota_open("redis://", &p, &q, err, sizeof err) == MOE_ERR_INVAL && strstr(err, "redis://HOST:PORT"),
          "bad spec: %s", err);
    CHECK(moe_quota_open("memcached://x", &p, &q, err, sizeof err) == MOE_ERR_INVAL, "unknown backend");
    CHECK(moe_quota_month_left(1700000000.0) > 0 && moe_quota_month_left(1701388800.0 - 1) == 1, "month left");
}

int main(void) {
    test_bucket_maths();
    test_bucket_long_run();
    test_local_backend();
    return test_done();
}
