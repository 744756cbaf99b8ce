/* Tenants database and the server's gate: keys stored only as hashes, Bearer authentication
 * (unknown, revoked and malformed keys alike), revocation and quota changes picked up from
 * another connection, per-model overrides, usage written back, bounded metrics labels with no
 * key material, the 401/429 bodies and headers, timing independent of a key's prefix, the
 * priority rule, and the gate's overhead per request. */
#include <math.h>

#include "moe/tenant.h"
#include "tenant_util.h"

static moe_tenant_db *open_db(const char *path) {
    moe_tenant_db *db = NULL;
    char err[256];
    if (moe_tenant_db_open(path, 1, &db, err, sizeof err)) fprintf(stderr, "open: %s\n", err);
    return db;
}

static void add(moe_tenant_db *db, const char *name, moe_quota_limits l, int prio, char key[MOE_TENANT_KEY_LEN + 1]) {
    moe_tenant t = {0};
    snprintf(t.name, sizeof t.name, "%s", name);
    t.priority = prio;
    t.limits = l;
    moe_status st = moe_tenant_add(db, &t, key, MOE_TENANT_KEY_LEN + 1);
    CHECK(st == MOE_OK, "add %s: %s", name, moe_tenant_db_errmsg(db));
}

typedef struct hdrs {
    char text[2048];
} hdrs;

static void add_hdr(void *ctx, const char *n, const char *v) {
    hdrs *h = ctx;
    size_t l = strlen(h->text);
    snprintf(h->text + l, sizeof h->text - l, "%s: %s\n", n, v);
}

static char *bearer(const char *key, char *buf, size_t n) {
    snprintf(buf, n, "Bearer %s", key);
    return buf;
}

static int file_has(const char *path, const char *needle) {
    size_t len = 0;
    char *d = tu_read_file(path, &len);
    if (!d) return 0;
    int found = memmem(d, len, needle, strlen(needle)) != NULL;
    free(d);
    return found;
}

static void test_db_and_gate(const char *dir) {
    char path[512], key_a[64], key_b[64], key_c[64], hb[128];
    snprintf(path, sizeof path, "%s/tenants.db", dir);
    moe_tenant_db *db = open_db(path);
    if (!db) return;
    add(db, "acme", (moe_quota_limits){.rps = 2, .burst = 2, .tpm = 6000}, 3, key_a);
    add(db, "beta", (moe_quota_limits){0}, 1, key_b);
    add(db, "gamma", (moe_quota_limits){.concurrency = 1}, 0, key_c);
    CHECK(strlen(key_a) == MOE_TENANT_KEY_LEN && !strncmp(key_a, "sk-moe-", 7), "key shape %s", key_a);
    CHECK(strcmp(key_a, key_b) != 0, "keys differ");
    moe_tenant t = {0};
    snprintf(t.name, sizeof t.name, "acme");
    char k2[64];
    CHECK(moe_tenant_add(db, &t, k2, sizeof k2) == MOE_ERR_BUSY, "duplicate name refused");
    snprintf(t.name, sizeof t.name, "no spaces");
    CHECK(moe_tenant_add(db, &t, k2, sizeof k2) == MOE_ERR_INVAL, "bad name refused");
    CHECK(moe_tenant_get(db, "nobody", &t) == MOE_ERR_NOTFOUND, "unknown tenant");
    CHECK(moe_tenant_override_set(db, "acme", "big-model", &(moe_quota_limits){.rps = 1, .burst = 1}) == MOE_OK,
          "override");
    /* the key is stored only as its hash */
    uint8_t h[32];
    moe_tenant_key_hash(key_a, strlen(key_a), h);
    CHECK(!file_has(path, key_a) && !file_has(path, key_a + 7), "the key is not in the database file");

    moe_tenant_gate_params p = moe_tenant_gate_default_params();
    p.db = path;
    p.metrics_max = 2;
    p.reload_interval = 0.1;
    moe_tenant_gate *g = NULL;
    char err[256];
    CHECK(moe_tenant_gate_open(&p, &g, err, sizeof err) == MOE_OK, "gate: %s", err);
    if (!g) return;
    moe_tenant_ticket tk;
    CHECK(moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &tk) == MOE_OK && !strcmp(tk.name, "acme") &&
              tk.priority == 3,
          "acme authenticates");
    snprintf(hb, sizeof hb, "bearer   %s  ", key_b);
    CHECK(moe_tenant_gate_auth(g, hb, &tk) == MOE_OK && !strcmp(tk.name, "beta"), "scheme case and spaces");
    const char *bad[] = {NULL, "", "Bearer", "Bearer ", "Basic abc", "Bearer sk-moe-nope", "Bearerx sk", key_a};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(moe_tenant_gate_auth(g, bad[i], &tk) == MOE_ERR_NOTFOUND && !tk.authed, "bad header %zu refused", i);
    char almost[64];
    snprintf(almost, sizeof almost, "Bearer %s", key_a);
    almost[strlen(almost) - 1] ^= 1;
    CHECK(moe_tenant_gate_auth(g, almost, &tk) == MOE_ERR_NOTFOUND, "one character off refused");

    /* admission, headers and the 429 body */
    hdrs hd = {{0}};
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &tk);
    CHECK(moe_tenant_gate_admit(g, &tk, "tiny", 100, "req-1") == MOE_QUOTA_OK, "admit");
    moe_tenant_gate_headers(&tk, add_hdr, &hd);
    CHECK(strstr(hd.text, "x-ratelimit-limit-requests: 2\n") && strstr(hd.text, "x-ratelimit-remaining-requests: 1\n") &&
              strstr(hd.text, "x-ratelimit-limit-tokens: 6000\n") &&
              strstr(hd.text, "x-ratelimit-remaining-tokens: 5900\n") && strstr(hd.text, "x-ratelimit-reset-requests: 500ms"),
          "headers:\n%s", hd.text);
    moe_tenant_gate_finish(g, &tk, 40);
    moe_tenant_gate_finish(g, &tk, 40); /* idempotent */
    moe_tenant_ticket t2;
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &t2);
    moe_tenant_gate_admit(g, &t2, "tiny", 10, "req-2");
    moe_tenant_gate_finish(g, &t2, 0);
    moe_tenant_ticket t3;
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &t3);
    CHECK(moe_tenant_gate_admit(g, &t3, "tiny", 10, "req-3") == MOE_QUOTA_REQUESTS, "3rd within the second refused");
    memset(&hd, 0, sizeof hd);
    moe_tenant_gate_headers(&t3, add_hdr, &hd);
    int status = 0;
    char *body = moe_tenant_gate_refusal(&t3, &status);
    CHECK(status == 429 && body && strstr(body, "\"code\":\"rate_limit_exceeded\"") && strstr(body, "\"type\":\"requests\""),
          "429 body %s", body ? body : "(null)");
    CHECK(strstr(hd.text, "Retry-After: 1\n") && strstr(hd.text, "retry-after-ms: "), "Retry-After:\n%s", hd.text);
    free(body);
    /* the override has its own counter: the model's requests are not refused by the tenant's */
    moe_tenant_ticket t4;
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &t4);
    CHECK(moe_tenant_gate_admit(g, &t4, "big-model", 10, "req-4") == MOE_QUOTA_OK && t4.limits.rps == 1 &&
              strchr(t4.bucket, '/'),
          "override bucket %s", t4.bucket);
    moe_tenant_gate_finish(g, &t4, 5);
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &t4);
    CHECK(moe_tenant_gate_admit(g, &t4, "big-model", 10, "req-5") == MOE_QUOTA_REQUESTS, "override's rps 1");
    /* concurrency 1 for gamma */
    moe_tenant_ticket c1, c2;
    moe_tenant_gate_auth(g, bearer(key_c, hb, sizeof hb), &c1);
    moe_tenant_gate_auth(g, bearer(key_c, hb, sizeof hb), &c2);
    CHECK(moe_tenant_gate_admit(g, &c1, "tiny", 1, "c1") == MOE_QUOTA_OK, "gamma 1st");
    CHECK(moe_tenant_gate_admit(g, &c2, "tiny", 1, "c2") == MOE_QUOTA_CONCURRENCY, "gamma 2nd concurrent");
    moe_tenant_gate_finish(g, &c1, 3);
    moe_tenant_gate_auth(g, bearer(key_c, hb, sizeof hb), &c2);
    CHECK(moe_tenant_gate_admit(g, &c2, "tiny", 1, "c2") == MOE_QUOTA_OK, "gamma after the first ended");
    moe_tenant_gate_finish(g, &c2, 0);
    moe_tenant_ticket b1;
    moe_tenant_gate_auth(g, bearer(key_b, hb, sizeof hb), &b1);
    CHECK(moe_tenant_gate_admit(g, &b1, "tiny", 7, "b1") == MOE_QUOTA_OK, "beta unlimited");
    memset(&hd, 0, sizeof hd);
    moe_tenant_gate_headers(&b1, add_hdr, &hd);
    CHECK(hd.text[0] == 0, "no rate-limit headers without limits: %s", hd.text);
    moe_tenant_gate_finish(g, &b1, 2);

    /* metrics: at most 2 named tenants, the third is "other"; no key material */
    size_t ml = 0;
    char *m = moe_tenant_gate_metrics(g, &ml);
    CHECK(m && strstr(m, "moe_tenant_requests_total{tenant=\"acme\"} 3") &&
              strstr(m, "moe_tenant_requests_total{tenant=\"gamma\"} 2") &&
              strstr(m, "moe_tenant_requests_total{tenant=\"other\"} 1") && !strstr(m, "tenant=\"beta\"") &&
              strstr(m, "moe_tenant_rate_limited_total{tenant=\"acme\",limit=\"requests\"} 2") &&
              strstr(m, "moe_tenant_tokens_total{tenant=\"acme\",kind=\"completion\"} 45"),
          "metrics:\n%s", m ? m : "(null)");
    CHECK(m && !strstr(m, key_a + 7) && !strstr(m, key_b + 7) && !strstr(m, "sk-moe-"), "no key in metrics");
    free(m);

    /* usage is written back, and revocation from another connection takes effect */
    moe_tenant_gate_flush(g);
    moe_tenant_usage *u = NULL;
    size_t nu = 0;
    CHECK(moe_tenant_usage_get(db, "acme", NULL, &u, &nu) == MOE_OK && nu == 1 && u[0].requests == 3 &&
              u[0].prompt_tokens == 120 && u[0].completion_tokens == 45 && u[0].rejected == 2,
          "acme usage: %zu rows, %lld req %lld prompt %lld completion %lld rejected", nu, nu ? (long long)u[0].requests : 0,
          nu ? (long long)u[0].prompt_tokens : 0, nu ? (long long)u[0].completion_tokens : 0,
          nu ? (long long)u[0].rejected : 0);
    free(u);
    CHECK(moe_tenant_usage_get(db, NULL, NULL, &u, &nu) == MOE_OK && nu == 3, "3 tenants with usage: %zu", nu);
    free(u);
    CHECK(moe_tenant_revoke(db, "beta") == MOE_OK, "revoke");
    moe_tenant tb;
    moe_tenant_get(db, "acme", &tb);
    tb.limits.rps = 1000;
    tb.limits.burst = 1000;
    moe_tenant_update(db, &tb);
    int gone = 0;
    for (int i = 0; i < 100 && !gone; i++) {
        usleep(20000);
        gone = moe_tenant_gate_auth(g, bearer(key_b, hb, sizeof hb), &tk) == MOE_ERR_NOTFOUND;
    }
    CHECK(gone, "revoked key refused within 2 s");
    moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &tk);
    CHECK(tk.limits.rps == 1000, "new quota picked up: rps %g", tk.limits.rps);

    /* timing: wrong keys sharing 40 characters with a real key vs random wrong keys */
    char near[80], far[80];
    double tn = 0, tf = 0;
    /* many short rounds, the order alternating, so a slow spell of a shared host (another
     * process, a CPU changing speed) falls on both kinds alike; medians over the rounds */
    enum { rounds = 81 };
    const int per = 500;
    double med_n[rounds], med_f[rounds];
    for (int r = 0; r < rounds; r++) {
        for (int pass = 0; pass < 2; pass++) {
            const int is_near = (pass == 0) == (r % 2 == 0);
            double t0 = tt_now();
            for (int i = 0; i < per; i++) {
                if (is_near) {
                    snprintf(near, sizeof near, "Bearer %.40s%010d", key_a, i);
                    moe_tenant_gate_auth(g, near, &tk);
                } else {
                    snprintf(far, sizeof far, "Bearer zz-qqq-%.26s%010d", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", i);
                    moe_tenant_gate_auth(g, far, &tk);
                }
            }
            (is_near ? med_n : med_f)[r] = (tt_now() - t0) / per;
        }
    }
    for (int i = 1; i < rounds; i++)
        for (int j = i; j > 0; j--) {
            if (med_n[j] < med_n[j - 1]) {
                double x = med_n[j];
                med_n[j] = med_n[j - 1];
                med_n[j - 1] = x;
            }
            if (med_f[j] < med_f[j - 1]) {
                double x = med_f[j];
                med_f[j] = med_f[j - 1];
                med_f[j - 1] = x;
            }
        }
    tn = med_n[rounds / 2];
    tf = med_f[rounds / 2];
    printf("auth of a wrong key: %.0f ns sharing a 40-char prefix with a real key, %.0f ns unrelated (%+.1f%%)\n",
           tn * 1e9, tf * 1e9, 100 * (tn - tf) / tf);
    CHECK(fabs(tn - tf) < 0.25 * tf + 100e-9, "timing independent of the prefix: %.0f vs %.0f ns", tn * 1e9, tf * 1e9);

    /* gateway overhead per request, in process: auth + admit + finish */
    static double lat[5000];
    moe_tenant_get(db, "acme", &tb);
    for (int i = 0; i < 5000; i++) {
        char id[32];
        snprintf(id, sizeof id, "bench-%d", i);
        double t0 = tt_now();
        moe_tenant_gate_auth(g, bearer(key_a, hb, sizeof hb), &tk);
        moe_tenant_gate_admit(g, &tk, "tiny", 20, id);
        moe_tenant_gate_finish(g, &tk, 10);
        lat[i] = tt_now() - t0;
    }
    for (int i = 1; i < 5000; i++)
        for (int j = i; j > 0 && lat[j] < lat[j - 1]; j--) {
            double x = lat[j];
            lat[j] = lat[j - 1];
            lat[j - 1] = x;
        }
    printf("gate overhead (local backend): p50 %.2f us, p99 %.2f us\n", lat[2500] * 1e6, lat[4950] * 1e6);
    CHECK(lat[4950] < 50e-6, "p99 %.1f us < 50 us", lat[4950] * 1e6);
    moe_tenant_gate_close(g);

    /* a restart keeps this month's budget (seeded from the stored usage) */
    moe_tenant_get(db, "gamma", &tb);
    tb.limits.concurrency = 0;
    tb.limits.budget = 10; /* gamma has used 2 prompt + 3 completion tokens */
    moe_tenant_update(db, &tb);
    CHECK(moe_tenant_gate_open(&p, &g, err, sizeof err) == MOE_OK, "reopen");
    if (g) {
        moe_tenant_gate_auth(g, bearer(key_c, hb, sizeof hb), &tk);
        CHECK(moe_tenant_gate_admit(g, &tk, "tiny", 6, "x") == MOE_QUOTA_BUDGET, "5 used + 6 > 10: budget");
        body = moe_tenant_gate_refusal(&tk, &status);
        CHECK(status == 429 && body && strstr(body, "insufficient_quota"), "budget body %s", body ? body : "");
        free(body);
        CHECK(moe_tenant_gate_admit(g, &tk, "tiny", 5, "y") == MOE_QUOTA_OK, "5 + 5 fits");
        moe_tenant_gate_finish(g, &tk, 0);
        moe_tenant_gate_close(g);
    }
    body = moe_tenant_gate_unauthorized();
    CHECK(body && strstr(body, "\"code\":\"invalid_api_key\"") && strstr(body, "\"param\":null"), "401 body %s",
          body ? body : "");
    free(body);
    moe_tenant_db_close(db);
}

/* Tokens per minute charged as used (fake clock, so every level is exact): the prompt at
 * admission, generated tokens in grants ahead of use, the difference settled at the end, an
 * unprocessed prompt refunded; the wait a debt imposes. */
static void test_charge_as_used(const char *dir) {
    char path[512], key[64], hb[128];
    snprintf(path, sizeof path, "%s/tpm.db", dir);
    moe_tenant_db *db = open_db(path);
    if (!db) return;
    add(db, "meter", (moe_quota_limits){.tpm = 600}, 1, key); /* 10 tokens per second */
    fake_clock clk = {1717000000.0};
    moe_tenant_gate_params p = moe_tenant_gate_default_params();
    p.db = path;
    p.quota.clock = fake_now;
    p.quota.clock_ctx = &clk;
    moe_tenant_gate *g = NULL;
    char err[256];
    CHECK(moe_tenant_gate_open(&p, &g, err, sizeof err) == MOE_OK, "gate: %s", err);
    if (!g) return;
    moe_tenant_ticket t, u;
    moe_tenant_gate_auth(g, bearer(key, hb, sizeof hb), &t);
    CHECK(moe_tenant_gate_admit(g, &t, "tiny", 100, "a") == MOE_QUOTA_OK && t.res.remaining_tokens == 500, "prompt taken");
    double w1 = moe_tenant_gate_charge(g, &t, 16), w2 = moe_tenant_gate_charge(g, &t, 16);
    CHECK(w1 == 0 && w2 == 0 && t.charged == 32, "grants within the bucket: no wait");
    moe_tenant_gate_finish(g, &t, 20); /* 20 generated: 12 of the 32 come back */
    moe_tenant_gate_auth(g, bearer(key, hb, sizeof hb), &u);
    CHECK(moe_tenant_gate_admit(g, &u, "tiny", 10, "b") == MOE_QUOTA_OK && u.res.remaining_tokens == 600 - 100 - 20 - 10,
          "charged exactly 100 + 20 before: %g left", u.res.remaining_tokens);
    moe_tenant_gate_refund_prompt(g, &u, 10); /* cancelled while queued */
    moe_tenant_gate_finish(g, &u, 0);
    /* a long stream: grants until the bucket is in debt, then a wait of debt / rate */
    moe_tenant_gate_auth(g, bearer(key, hb, sizeof hb), &t);
    moe_tenant_gate_admit(g, &t, "tiny", 1, "c"); /* level 480 − 1 = 479 */
    double w = 0;
    int grants = 0;
    while (w == 0 && grants < 100) {
        w = moe_tenant_gate_charge(g, &t, 16);
        grants++;
    }
    CHECK(grants == 30 && fabs(w - 0.1) < 1e-9, "30 grants of 16 from 479 leave a debt of 1 token = 0.1 s: %d, %g s",
          grants, w);
    clk.t += 0.1;
    CHECK(moe_tenant_gate_charge(g, &t, 16) > 0, "charging again at once is in debt again");
    moe_tenant_gate_finish(g, &t, 100); /* cancelled after 100 tokens: 396 of the 496 charged come back */
    clk.t += 0; /* same instant: level = 479 + 1 (refill over 0.1 s) − 100 */
    moe_tenant_gate_auth(g, bearer(key, hb, sizeof hb), &u);
    CHECK(moe_tenant_gate_admit(g, &u, "tiny", 1, "d") == MOE_QUOTA_OK && fabs(u.res.remaining_tokens - 379) < 1e-6,
          "the cancelled stream is charged its 100 tokens: %g left (want 379)", u.res.remaining_tokens);
    moe_tenant_gate_finish(g, &u, 0);
    moe_tenant_gate_flush(g);
    moe_tenant_usage *us = NULL;
    size_t nu = 0;
    CHECK(moe_tenant_usage_get(db, "meter", NULL, &us, &nu) == MOE_OK && nu == 1 && us[0].prompt_tokens == 102 &&
              us[0].completion_tokens == 120,
          "usage counts what was used: prompt %lld completion %lld", nu ? (long long)us[0].prompt_tokens : -1,
          nu ? (long long)us[0].completion_tokens : -1);
    free(us);
    moe_tenant_gate_close(g);
    moe_tenant_db_close(db);
}

static void test_priority_rule(void) {
    double a = 5.0;
    CHECK(moe_tenant_prio_score(3, 0, a) > moe_tenant_prio_score(1, 0, a), "higher class first");
    CHECK(moe_tenant_prio_score(1, 10.1, a) > moe_tenant_prio_score(3, 0, a), "a class-1 request waiting > 10 s beats a new class-3");
    CHECK(moe_tenant_prio_score(0, 45.01, a) > moe_tenant_prio_score(MOE_TENANT_PRIO_MAX, 0, a),
          "no starvation: the lowest class outranks every new arrival after 9 x aging");
}

int main(void) {
    char dir[256];
    tu_tmpdir(dir, sizeof dir);
    test_db_and_gate(dir);
    test_charge_as_used(dir);
    test_priority_rule();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) {
    }
    return test_done();
}
