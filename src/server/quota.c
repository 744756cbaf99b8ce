/* moekit quotas: token-bucket maths, the backend dispatch and the in-process ("local")
 * backend.
 *
 * Admission rule (both backends, quota_redis.c's Lua mirrors it line for line):
 *   1. budget       used + prompt > budget            → BUDGET, retry at the next month
 *   2. concurrency  running leases >= concurrency     → CONCURRENCY, retry after 1 s
 *   3. requests     rps bucket (rate rps, cap burst) below 1   → REQUESTS
 *   4. tokens       tpm bucket (rate tpm/60, cap tpm) below need → TOKENS,
 *                   need = prompt clamped to [1, tpm] (a prompt larger than the whole minute
 *                   is admitted from a full bucket and leaves debt)
 * Every check runs; the verdict is the first that fails and retry_after the largest wait.
 * Only when all pass is anything taken: 1 request, prompt tokens (tpm and budget), a lease.
 * Generated tokens are charged later (moe_quota_charge, in increments while a request runs)
 * and may push the tpm bucket into debt down to −tpm, which then delays the next admissions:
 * tokens are paid as used. A negative charge is a refund (tokens charged ahead and not used);
 * it never fills a bucket past its capacity nor a month's budget below 0.
 *
 * Local backend: a chained hash table of buckets → entry, under one mutex. Entries are never
 * freed before close (one per tenant and model override; tenants are few). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/quota_impl.h"

/* ---- bucket maths ---- */

static double bucket_refill(const moe_bucket *b, double rate, double cap, double now, double *t_out) {
    if (!b->init) {
        *t_out = now;
        return cap;
    }
    double l = b->level, t = b->t;
    if (now > t) {
        l += (now - t) * rate;
        t = now;
    }
    if (l > cap) l = cap;
    *t_out = t;
    return l;
}

double moe_bucket_level(const moe_bucket *b, double rate, double cap, double now) {
    double t;
    return bucket_refill(b, rate, cap, now, &t);
}

int moe_bucket_take(moe_bucket *b, double rate, double cap, double need, double n, double now, double *retry_after) {
    double t, l = bucket_refill(b, rate, cap, now, &t);
    if (l < need) {
        if (retry_after) *retry_after = rate > 0 ? (need - l) / rate : INFINITY;
        b->level = l;
        b->t = t;
        b->init = 1;
        return 0;
    }
    l -= n;
    if (l < -cap) l = -cap;
    b->level = l;
    b->t = t;
    b->init = 1;
    if (retry_after) *retry_after = 0;
    return 1;
}

void moe_bucket_charge(moe_bucket *b, double rate, double cap, double n, double now) {
    double t, l = bucket_refill(b, rate, cap, now, &t) - n;
    if (l < -cap) l = -cap;
    if (l > cap) l = cap; /* a refund (n < 0) never fills past the capacity */
    b->level = l;
    b->t = t;
    b->init = 1;
}

double moe_bucket_reset(const moe_bucket *b, double rate, double cap, double now) {
    double l = moe_bucket_level(b, rate, cap, now);
    return l >= cap || rate <= 0 ? 0 : (cap - l) / rate;
}

/* ---- helpers ---- */

const char *moe_quota_verdict_str(moe_quota_verdict v) {
    switch (v) {
    case MOE_QUOTA_OK: return "ok";
    case MOE_QUOTA_REQUESTS: return "requests";
    case MOE_QUOTA_TOKENS: return "tokens";
    case MOE_QUOTA_CONCURRENCY: return "concurrency";
    case MOE_QUOTA_BUDGET: return "budget";
    case MOE_QUOTA_UNAVAILABLE: return "unavailable";
    }
    return "?";
}

double quota_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double quota_burst(const moe_quota_limits *l) {
    if (l->burst > 0) return l->burst;
    return l->rps > 1 ? l->rps : 1;
}

void moe_quota_month(double t, char out[8]) {
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(out, 8, "%04d-%02d", (tm.tm_year + 1900) % 10000, tm.tm_mon + 1);
}

double moe_quota_month_left(double t) {
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    tm.tm_mon += 1;
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    time_t next = timegm(&tm);
    return (double)next - t;
}

static double quota_now(const moe_quota *q) { return q->p.clock ? q->p.clock(q->p.clock_ctx) : quota_wall(); }

static int bucket_name_ok(const char *b) {
    size_t n = 0;
    for (; b[n]; n++) {
        char c = b[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == ':' || c == '-' || c == '/'))
            return 0;
    }
    return n > 0 && n <= 200;
}

/* ---- the local backend ---- */

typedef struct local_entry {
    struct local_entry *next;
    moe_bucket rps, tpm;
    int64_t running;
    char month[8];
    int64_t used; /* tokens in month */
    char name[];
} local_entry;

#define LOCAL_HEADS 1024

typedef struct local_impl {
    pthread_mutex_t mu;
    local_entry *heads[LOCAL_HEADS];
} local_impl;

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ULL;
    return h;
}

/* Under mu. NULL when out of memory. */
static local_entry *local_get(local_impl *li, const char *bucket, double now) {
    uint64_t h = fnv1a(bucket) % LOCAL_HEADS;
    local_entry *e = li->heads[h];
    while (e && strcmp(e->name, bucket)) e = e->next;
    if (!e) {
        size_t n = strlen(bucket);
        if (!(e = calloc(1, sizeof *e + n + 1))) return NULL;
        memcpy(e->name, bucket, n + 1);
        e->next = li->heads[h];
        li->heads[h] = e;
    }
    char m[8];
    moe_quota_month(now, m);
    if (strcmp(m, e->month)) {
        memcpy(e->month, m, sizeof m);
        e->used = 0;
    }
    return e;
}

/* The budget belongs to the tenant: the part of the bucket name before '/'. Under mu. */
static local_entry *local_budget_entry(local_impl *li, const char *bucket, double now) {
    const char *slash = strchr(bucket, '/');
    if (!slash) return local_get(li, bucket, now);
    char t[208];
    snprintf(t, sizeof t, "%.*s", (int)(slash - bucket), bucket);
    return local_get(li, t, now);
}

static int local_admit(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t prompt, const char *lease,
                       double now, moe_quota_result *res) {
    local_impl *li = q->impl;
    (void)lease;
    pthread_mutex_lock(&li->mu);
    local_entry *e = local_get(li, bucket, now), *be = e ? local_budget_entry(li, bucket, now) : NULL;
    if (!e || !be) {
        pthread_mutex_unlock(&li->mu);
        return -1;
    }
    moe_quota_verdict v = MOE_QUOTA_OK;
    double retry = 0, burst = quota_burst(l), trate = (double)l->tpm / 60.0;
    if (l->budget > 0 && be->used + prompt > l->budget) {
        v = MOE_QUOTA_BUDGET;
        retry = moe_quota_month_left(now);
    }
    if (l->concurrency > 0 && e->running >= l->concurrency) {
        if (!v) v = MOE_QUOTA_CONCURRENCY;
        if (retry < 1) retry = 1;
    }
    double lr = -1, lt = -1;
    if (l->rps > 0) {
        lr = moe_bucket_level(&e->rps, l->rps, burst, now);
        if (lr < 1) {
            if (!v) v = MOE_QUOTA_REQUESTS;
            if ((1 - lr) / l->rps > retry) retry = (1 - lr) / l->rps;
        }
    }
    double need = (double)prompt;
    if (l->tpm > 0) {
        if (need > (double)l->tpm) need = (double)l->tpm;
        if (need < 1) need = 1;
        lt = moe_bucket_level(&e->tpm, trate, (double)l->tpm, now);
        if (lt < need) {
            if (!v) v = MOE_QUOTA_TOKENS;
            if ((need - lt) / trate > retry) retry = (need - lt) / trate;
        }
    }
    if (!v) {
        if (l->rps > 0) {
            moe_bucket_take(&e->rps, l->rps, burst, 1, 1, now, NULL);
            lr = e->rps.level;
        }
        if (l->tpm > 0) {
            moe_bucket_take(&e->tpm, trate, (double)l->tpm, need, (double)prompt, now, NULL);
            lt = e->tpm.level;
        }
        e->running++;
        be->used += prompt;
    }
    res->verdict = v;
    res->retry_after = v ? retry : 0;
    res->remaining_requests = lr;
    res->reset_requests = l->rps > 0 ? moe_bucket_reset(&e->rps, l->rps, burst, now) : 0;
    res->remaining_tokens = lt;
    res->reset_tokens = l->tpm > 0 ? moe_bucket_reset(&e->tpm, trate, (double)l->tpm, now) : 0;
    res->budget_used = be->used;
    pthread_mutex_unlock(&li->mu);
    return 0;
}

static int local_charge(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t n, double now,
                        double *left) {
    local_impl *li = q->impl;
    pthread_mutex_lock(&li->mu);
    local_entry *e = local_get(li, bucket, now), *be = e ? local_budget_entry(li, bucket, now) : NULL;
    if (e && be) {
        if (l->tpm > 0) {
            moe_bucket_charge(&e->tpm, (double)l->tpm / 60.0, (double)l->tpm, (double)n, now);
            *left = e->tpm.level;
        }
        be->used += n;
        if (be->used < 0) be->used = 0;
    }
    pthread_mutex_unlock(&li->mu);
    return e ? 0 : -1;
}

static int local_release(moe_quota *q, const char *bucket, const char *lease) {
    local_impl *li = q->impl;
    (void)lease;
    pthread_mutex_lock(&li->mu);
    local_entry *e = local_get(li, bucket, quota_now(q));
    if (e && e->running > 0) e->running--;
    pthread_mutex_unlock(&li->mu);
    return e ? 0 : -1;
}

static int64_t local_budget_used(moe_quota *q, const char *bucket, double now) {
    local_impl *li = q->impl;
    pthread_mutex_lock(&li->mu);
    local_entry *e = local_budget_entry(li, bucket, now);
    int64_t u = e ? e->used : -1;
    pthread_mutex_unlock(&li->mu);
    return u;
}

static int local_budget_seed(moe_quota *q, const char *bucket, int64_t used, double now) {
    local_impl *li = q->impl;
    pthread_mutex_lock(&li->mu);
    local_entry *e = local_budget_entry(li, bucket, now);
    if (e && e->used == 0) e->used = used;
    pthread_mutex_unlock(&li->mu);
    return e ? 0 : -1;
}

static void local_close(moe_quota *q) {
    local_impl *li = q->impl;
    if (!li) return;
    for (int i = 0; i < LOCAL_HEADS; i++)
        for (local_entry *e = li->heads[i], *nx; e; e = nx) {
            nx = e->next;
            free(e);
        }
    pthread_mutex_destroy(&li->mu);
    free(li);
}

static const quota_ops k_local_ops = {"local", local_admit, local_charge, local_release,
                                      local_budget_used, local_budget_seed, local_close};

/* ---- the public interface ---- */

moe_quota_params moe_quota_default_params(void) {
    moe_quota_params p = {0};
    p.fail_open = 0;
    p.timeout = 0.25;
    p.lease_ttl = 600;
    p.pool = 32;
    p.prefix = "moe:q:";
    return p;
}

moe_status moe_quota_open(const char *spec, const moe_quota_params *p, moe_quota **out, char *err, size_t errlen) {
    *out = NULL;
    moe_quota *q = calloc(1, sizeof *q);
    if (!q) return MOE_ERR_NOMEM;
    q->p = p ? *p : moe_quota_default_params();
    if (q->p.timeout <= 0) q->p.timeout = 0.25;
    if (q->p.lease_ttl <= 0) q->p.lease_ttl = 600;
    if (q->p.pool <= 0) q->p.pool = 32;
    snprintf(q->prefix, sizeof q->prefix, "%s", q->p.prefix ? q->p.prefix : "moe:q:");
    q->p.prefix = q->prefix;
    atomic_init(&q->up, 1);
    atomic_init(&q->errors, 0);
    atomic_init(&q->policy, 0);
    if (!spec || !strcmp(spec, "local") || !spec[0]) {
        local_impl *li = calloc(1, sizeof *li);
        if (!li) {
            free(q);
            return MOE_ERR_NOMEM;
        }
        pthread_mutex_init(&li->mu, NULL);
        q->impl = li;
        q->ops = &k_local_ops;
        *out = q;
        return MOE_OK;
    }
    if (!strncmp(spec, "redis://", 8)) {
        char host[256];
        const char *h = spec + 8, *colon = strrchr(h, ':');
        char *end = NULL;
        long port = colon ? strtol(colon + 1, &end, 10) : 6379;
        size_t hl = colon ? (size_t)(colon - h) : strlen(h);
        if (colon && (!*(colon + 1) || *end)) port = -1;
        if (hl == 0 || hl >= sizeof host || port <= 0 || port > 65535) {
            snprintf(err, errlen, "quota backend '%.200s': expected redis://HOST:PORT", spec);
            free(q);
            return MOE_ERR_INVAL;
        }
        memcpy(host, h, hl);
        host[hl] = 0;
        if (quota_redis_open(q, host, (int)port, err, errlen)) {
            free(q);
            return MOE_ERR_NOMEM;
        }
        *out = q;
        return MOE_OK;
    }
    snprintf(err, errlen, "quota backend '%.200s': expected local or redis://HOST:PORT", spec);
    free(q);
    return MOE_ERR_INVAL;
}

void moe_quota_close(moe_quota *q) {
    if (!q) return;
    q->ops->close(q);
    free(q);
}

const char *moe_quota_backend(const moe_quota *q) { return q->ops->name; }

/* The backend failed: the failure policy decides. */
static void policy(moe_quota *q, moe_quota_result *res) {
    memset(res, 0, sizeof *res);
    res->backend_error = 1;
    res->verdict = q->p.fail_open ? MOE_QUOTA_OK : MOE_QUOTA_UNAVAILABLE;
    res->retry_after = q->p.fail_open ? 0 : 1;
    res->remaining_requests = res->remaining_tokens = -1;
    res->budget_used = -1;
    atomic_fetch_add(&q->policy, 1);
}

/* Redis's TIME serves as the clock unless one was injected (0 tells the script to read it). */
static double call_now(moe_quota *q) {
    if (q->p.clock) return q->p.clock(q->p.clock_ctx);
    return q->ops == &k_local_ops ? quota_wall() : 0;
}

moe_status moe_quota_admit(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t prompt_tokens,
                           const char *lease, moe_quota_result *res) {
    if (!q || !bucket || !l || !res || !bucket_name_ok(bucket) || prompt_tokens < 0) return MOE_ERR_INVAL;
    memset(res, 0, sizeof *res);
    if (q->ops->admit(q, bucket, l, prompt_tokens, lease ? lease : "-", call_now(q), res)) policy(q, res);
    return MOE_OK;
}

moe_status moe_quota_charge_level(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t tokens,
                                  double *tokens_left) {
    double left = -1;
    if (tokens_left) *tokens_left = -1;
    if (!q || !bucket || !l || !bucket_name_ok(bucket)) return MOE_ERR_INVAL;
    if (!tokens && l->tpm <= 0) return MOE_OK;
    if (q->ops->charge(q, bucket, l, tokens, call_now(q), &left)) return MOE_ERR_IO;
    if (tokens_left) *tokens_left = l->tpm > 0 ? left : -1;
    return MOE_OK;
}

moe_status moe_quota_charge(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t tokens) {
    return moe_quota_charge_level(q, bucket, l, tokens, NULL);
}

moe_status moe_quota_release(moe_quota *q, const char *bucket, const moe_quota_limits *l, const char *lease) {
    if (!q || !bucket || !l || !bucket_name_ok(bucket)) return MOE_ERR_INVAL;
    return q->ops->release(q, bucket, lease ? lease : "-") ? MOE_ERR_IO : MOE_OK;
}

int64_t moe_quota_budget_used(moe_quota *q, const char *bucket) {
    if (!q || !bucket || !bucket_name_ok(bucket)) return -1;
    return q->ops->budget_used(q, bucket, q->p.clock ? q->p.clock(q->p.clock_ctx) : quota_wall());
}

moe_status moe_quota_budget_seed(moe_quota *q, const char *bucket, int64_t used) {
    if (!q || !bucket || !bucket_name_ok(bucket) || used < 0) return MOE_ERR_INVAL;
    return q->ops->budget_seed(q, bucket, used, q->p.clock ? q->p.clock(q->p.clock_ctx) : quota_wall()) ? MOE_ERR_IO
                                                                                                          : MOE_OK;
}

int moe_quota_up(const moe_quota *q) { return atomic_load(&((moe_quota *)q)->up); }

void moe_quota_stats(const moe_quota *q, uint64_t *errors, uint64_t *policy_decisions) {
    moe_quota *m = (moe_quota *)q;
    if (errors) *errors = atomic_load(&m->errors);
    if (policy_decisions) *policy_decisions = atomic_load(&m->policy);
}
