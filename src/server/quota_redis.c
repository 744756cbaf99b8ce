/* moekit quotas: the Redis backend (hiredis, synchronous, a small connection pool).
 *
 * Keys of one counter namespace `B` (hash-tagged so Redis Cluster keeps them on one slot):
 *   <prefix>{B}:r          hash l, t    requests-per-second bucket (level, time)
 *   <prefix>{B}:t          hash l, t    tokens-per-minute bucket
 *   <prefix>{B}:c          zset         concurrency leases, score = expiry time
 *   <prefix>{B}:m:YYYY-MM  string       tokens charged this month
 * Every update that reads before it writes is one Lua script run with EVALSHA (Redis runs a
 * script atomically), so replicas never race: ADMIT checks all four limits and takes from
 * all of them or from none; CHARGE adds spent tokens (or refunds unused ones) and answers the
 * tpm level; a lease is given back with ZREM. Keys
 * expire once they would be full/empty again, so idle tenants cost no memory.
 * A script that Redis forgot (restart, SCRIPT FLUSH) answers NOSCRIPT: it is loaded again
 * and re-run once.
 *
 * Failure: a command that fails (connection refused, reset, timeout) drops its connection
 * and returns -1; the caller applies the failure policy. While Redis is down a new connect
 * is tried at most every 250 ms, so requests fail fast instead of each waiting for a
 * connect timeout. Up/down transitions are logged once to stderr. */
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "server/quota_impl.h"

/* level(key, rate, cap) refills like moe_bucket_level and returns level and time. */
#define LUA_LEVEL                                                                                  \
    "local function level(key, rate, cap)\n"                                                       \
    "  local v = redis.call('HMGET', key, 'l', 't')\n"                                             \
    "  local l, t = tonumber(v[1]), tonumber(v[2])\n"                                              \
    "  if not l then return cap, now end\n"                                                        \
    "  if now > t then l = l + (now - t) * rate; t = now end\n"                                    \
    "  if l > cap then l = cap end\n"                                                              \
    "  return l, t\n"                                                                              \
    "end\n"                                                                                        \
    "local function store(key, l, t, rate, cap)\n"                                                 \
    "  redis.call('HSET', key, 'l', string.format('%.17g', l), 't', string.format('%.17g', t))\n" \
    "  redis.call('PEXPIRE', key, math.ceil((cap - l) / rate * 1000) + 1000)\n"                    \
    "end\n"

#define LUA_NOW                                                                                    \
    "local now = tonumber(ARGV[1])\n"                                                              \
    "if now <= 0 then local tm = redis.call('TIME'); now = tonumber(tm[1]) + tonumber(tm[2]) / 1e6 end\n"

/* KEYS: r t c m. ARGV: now rps burst tpm conc budget prompt lease lease_ttl month_left budget_ttl */
static const char k_admit[] =
    LUA_NOW
    "local rps, burst, tpm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])\n"
    "local conc, budget, prompt = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])\n"
    "local lease, lease_ttl, month_left = ARGV[8], tonumber(ARGV[9]), tonumber(ARGV[10])\n"
    LUA_LEVEL
    "local verdict, retry = 0, 0\n"
    "local used = tonumber(redis.call('GET', KEYS[4]) or '0')\n"
    "if budget > 0 and used + prompt > budget then verdict = 4; retry = month_left end\n"
    "local running = 0\n"
    "if conc > 0 then\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)\n"
    "  running = redis.call('ZCARD', KEYS[3])\n"
    "  if running >= conc then\n"
    "    if verdict == 0 then verdict = 3 end\n"
    "    if retry < 1 then retry = 1 end\n"
    "  end\n"
    "end\n"
    "local lr, tr, lt, tt = -1, now, -1, now\n"
    "if rps > 0 then\n"
    "  lr, tr = level(KEYS[1], rps, burst)\n"
    "  if lr < 1 then\n"
    "    if verdict == 0 then verdict = 1 end\n"
    "    if (1 - lr) / rps > retry then retry = (1 - lr) / rps end\n"
    "  end\n"
    "end\n"
    "local trate = tpm / 60\n"
    "if tpm > 0 then\n"
    "  local need = prompt\n"
    "  if need > tpm then need = tpm end\n"
    "  if need < 1 then need = 1 end\n"
    "  lt, tt = level(KEYS[2], trate, tpm)\n"
    "  if lt < need then\n"
    "    if verdict == 0 then verdict = 2 end\n"
    "    if (need - lt) / trate > retry then retry = (need - lt) / trate end\n"
    "  end\n"
    "end\n"
    "if verdict == 0 then\n"
    "  if rps > 0 then lr = lr - 1; store(KEYS[1], lr, tr, rps, burst) end\n"
    "  if tpm > 0 then\n"
    "    lt = lt - prompt\n"
    "    if lt < -tpm then lt = -tpm end\n"
    "    store(KEYS[2], lt, tt, trate, tpm)\n"
    "  end\n"
    "  if conc > 0 then\n"
    "    redis.call('ZADD', KEYS[3], now + lease_ttl, lease)\n"
    "    redis.call('PEXPIRE', KEYS[3], math.ceil(lease_ttl * 1000) + 1000)\n"
    "    running = running + 1\n"
    "  end\n"
    "  if prompt > 0 or used == 0 then\n"
    "    used = redis.call('INCRBY', KEYS[4], prompt)\n"
    "    redis.call('EXPIRE', KEYS[4], ARGV[11])\n"
    "  end\n"
    "end\n"
    "return {verdict, string.format('%.17g', retry), string.format('%.17g', lr), string.format('%.17g', lt), used,"
    " running, string.format('%.17g', now)}\n";

/* KEYS: t m. ARGV: now tpm n budget_ttl */
static const char k_charge[] =
    LUA_NOW
    "local tpm, n = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    LUA_LEVEL
    "local left = -1\n"
    "if tpm > 0 then\n"
    "  local trate = tpm / 60\n"
    "  local l, t = level(KEYS[1], trate, tpm)\n"
    "  l = l - n\n"
    "  if l < -tpm then l = -tpm end\n"
    "  if l > tpm then l = tpm end\n"
    "  store(KEYS[1], l, t, trate, tpm)\n"
    "  left = l\n"
    "end\n"
    "local used = redis.call('INCRBY', KEYS[2], n)\n"
    "if used < 0 then redis.call('SET', KEYS[2], '0'); used = 0 end\n"
    "redis.call('EXPIRE', KEYS[2], ARGV[4])\n"
    "return {used, string.format('%.17g', left)}\n";

enum { SCRIPT_ADMIT, SCRIPT_CHARGE, N_SCRIPT };
static const char *const k_scripts[N_SCRIPT] = {k_admit, k_charge};

typedef struct redis_impl {
    char host[256];
    int port;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    redisContext **idle; /* (pool) free connections */
    int n_idle, n_open;
    double t_last_try;   /* last failed connect (mu) */
    char sha[N_SCRIPT][48]; /* (mu) "" until loaded */
} redis_impl;

static struct timeval tv_of(double s) {
    struct timeval tv;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

static void set_up(moe_quota *q, int up, const char *why) {
    redis_impl *ri = q->impl;
    int was = atomic_exchange(&q->up, up);
    if (was == up) return;
    if (up)
        fprintf(stderr, "moe quota: redis %s:%d reachable again\n", ri->host, ri->port);
    else
        fprintf(stderr, "moe quota: redis %s:%d unreachable (%s): failing %s\n", ri->host, ri->port, why,
                q->p.fail_open ? "open (requests admitted without quota checks)" : "closed (requests refused with 503)");
}

/* A connection from the pool, or a new one; NULL when Redis cannot be reached. */
static redisContext *conn_get(moe_quota *q) {
    redis_impl *ri = q->impl;
    pthread_mutex_lock(&ri->mu);
    for (;;) {
        if (ri->n_idle) {
            redisContext *c = ri->idle[--ri->n_idle];
            pthread_mutex_unlock(&ri->mu);
            return c;
        }
        if (ri->n_open < q->p.pool) break;
        pthread_cond_wait(&ri->cv, &ri->mu);
    }
    double now = quota_wall();
    if (!atomic_load(&q->up) && now - ri->t_last_try < 0.25) { /* down: fail fast */
        pthread_mutex_unlock(&ri->mu);
        return NULL;
    }
    ri->n_open++;
    pthread_mutex_unlock(&ri->mu);
    redisContext *c = redisConnectWithTimeout(ri->host, ri->port, tv_of(q->p.timeout));
    if (!c || c->err || redisSetTimeout(c, tv_of(q->p.timeout)) != REDIS_OK) {
        char why[128];
        snprintf(why, sizeof why, "%s", c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        pthread_mutex_lock(&ri->mu);
        ri->n_open--;
        ri->t_last_try = quota_wall();
        pthread_cond_signal(&ri->cv);
        pthread_mutex_unlock(&ri->mu);
        set_up(q, 0, why);
        return NULL;
    }
    return c;
}

/* Back to the pool (ok) or closed (after an error: its state is unknown). */
static void conn_put(moe_quota *q, redisContext *c, int ok) {
    redis_impl *ri = q->impl;
    pthread_mutex_lock(&ri->mu);
    if (ok && ri->n_idle < q->p.pool) {
        ri->idle[ri->n_idle++] = c;
        c = NULL;
    } else {
        ri->n_open--;
    }
    pthread_cond_signal(&ri->cv);
    pthread_mutex_unlock(&ri->mu);
    if (c) redisFree(c);
}

/* The failure of command on c: close it, count it, log it. Returns -1. */
static int fail(moe_quota *q, redisContext *c, redisReply *r, const char *what) {
    char why[200];
    snprintf(why, sizeof why, "%s: %s", what, r && r->type == REDIS_REPLY_ERROR ? r->str : c->err ? c->errstr : "bad reply");
    if (r) freeReplyObject(r);
    atomic_fetch_add(&q->errors, 1);
    int conn_broken = c->err != 0;
    conn_put(q, c, !conn_broken);
    if (conn_broken) set_up(q, 0, why);
    else fprintf(stderr, "moe quota: redis %s\n", why);
    return -1;
}

/* EVALSHA script; loads it on first use and after NOSCRIPT. Reply owned by the caller. */
static redisReply *run_script(moe_quota *q, redisContext *c, int which, int n_keys, const char **keys, int n_args,
                              const char **args) {
    redis_impl *ri = q->impl;
    const char *argv[32];
    size_t lens[32];
    char nk[16], sha[48];
    int argc = 0;
    snprintf(nk, sizeof nk, "%d", n_keys);
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&ri->mu);
        snprintf(sha, sizeof sha, "%s", ri->sha[which]);
        pthread_mutex_unlock(&ri->mu);
        if (!sha[0] || attempt) {
            redisReply *l = redisCommand(c, "SCRIPT LOAD %s", k_scripts[which]);
            if (!l || l->type != REDIS_REPLY_STRING) return l; /* error reply or NULL: caller fails */
            snprintf(sha, sizeof sha, "%s", l->str);
            freeReplyObject(l);
            pthread_mutex_lock(&ri->mu);
            snprintf(ri->sha[which], sizeof ri->sha[which], "%s", sha);
            pthread_mutex_unlock(&ri->mu);
        }
        argc = 0;
        argv[argc++] = "EVALSHA";
        argv[argc++] = sha;
        argv[argc++] = nk;
        for (int i = 0; i < n_keys; i++) argv[argc++] = keys[i];
        for (int i = 0; i < n_args; i++) argv[argc++] = args[i];
        for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
        redisReply *r = redisCommandArgv(c, argc, argv, lens);
        if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
            freeReplyObject(r);
            continue;
        }
        return r;
    }
    return NULL;
}

/* "T" → <prefix>{T}:suffix; "T/S" → <prefix>{T}:S:suffix (same slot as T's budget). budget:
 * the tenant's key, whatever the sub-bucket. */
static void key(char *out, size_t n, const moe_quota *q, const char *bucket, const char *suffix, int budget) {
    const char *slash = strchr(bucket, '/');
    if (!slash) snprintf(out, n, "%s{%s}:%s", q->prefix, bucket, suffix);
    else if (budget) snprintf(out, n, "%s{%.*s}:%s", q->prefix, (int)(slash - bucket), bucket, suffix);
    else snprintf(out, n, "%s{%.*s}:%s:%s", q->prefix, (int)(slash - bucket), bucket, slash + 1, suffix);
}

static double month_time(double now) { return now > 0 ? now : quota_wall(); }

/* The bucket's budget key for the month of time mt ("m:YYYY-MM"). */
static void month_key(char *out, size_t n, const moe_quota *q, const char *bucket, double mt) {
    char m[8], mk[16];
    moe_quota_month(mt, m);
    snprintf(mk, sizeof mk, "m:%s", m);
    key(out, n, q, bucket, mk, 1);
}

/* A connection for a command; a failure to get one counts as a quota error. */
static redisContext *conn_cmd(moe_quota *q) {
    redisContext *c = conn_get(q);
    if (!c) atomic_fetch_add(&q->errors, 1);
    return c;
}

static double reply_num(const redisReply *r) {
    if (r->type == REDIS_REPLY_INTEGER) return (double)r->integer;
    if (r->type == REDIS_REPLY_STRING) return strtod(r->str, NULL);
    return NAN;
}

static int redis_admit(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t prompt, const char *lease,
                       double now, moe_quota_result *res) {
    char kr[300], kt[300], kc[300], km[320];
    double mt = month_time(now);
    key(kr, sizeof kr, q, bucket, "r", 0);
    key(kt, sizeof kt, q, bucket, "t", 0);
    key(kc, sizeof kc, q, bucket, "c", 0);
    month_key(km, sizeof km, q, bucket, mt);
    double burst = quota_burst(l), left = moe_quota_month_left(mt);
    char a[11][48];
    snprintf(a[0], 48, "%.17g", now);
    snprintf(a[1], 48, "%.17g", l->rps);
    snprintf(a[2], 48, "%.17g", burst);
    snprintf(a[3], 48, "%lld", (long long)l->tpm);
    snprintf(a[4], 48, "%lld", (long long)l->concurrency);
    snprintf(a[5], 48, "%lld", (long long)l->budget);
    snprintf(a[6], 48, "%lld", (long long)prompt);
    snprintf(a[7], 48, "%.40s", lease);
    snprintf(a[8], 48, "%.17g", q->p.lease_ttl);
    snprintf(a[9], 48, "%.17g", left);
    snprintf(a[10], 48, "%lld", (long long)(left + 7 * 86400));
    const char *keys[4] = {kr, kt, kc, km}, *args[11];
    for (int i = 0; i < 11; i++) args[i] = a[i];
    redisContext *c = conn_cmd(q);
    if (!c) return -1;
    redisReply *r = run_script(q, c, SCRIPT_ADMIT, 4, keys, 11, args);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 7) return fail(q, c, r, "admit script");
    int verdict = (int)r->element[0]->integer;
    double retry = reply_num(r->element[1]), lr = reply_num(r->element[2]), lt = reply_num(r->element[3]);
    double used = reply_num(r->element[4]), t = reply_num(r->element[6]);
    freeReplyObject(r);
    conn_put(q, c, 1);
    set_up(q, 1, NULL);
    res->verdict = (moe_quota_verdict)verdict;
    res->retry_after = verdict ? retry : 0;
    res->remaining_requests = l->rps > 0 ? lr : -1;
    res->reset_requests = l->rps > 0 && lr < burst ? (burst - lr) / l->rps : 0;
    res->remaining_tokens = l->tpm > 0 ? lt : -1;
    res->reset_tokens = l->tpm > 0 && lt < (double)l->tpm ? ((double)l->tpm - lt) / ((double)l->tpm / 60.0) : 0;
    res->budget_used = (int64_t)used;
    (void)t;
    return 0;
}

static int redis_charge(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t n, double now,
                        double *left) {
    char kt[300], km[320];
    double mt = month_time(now);
    key(kt, sizeof kt, q, bucket, "t", 0);
    month_key(km, sizeof km, q, bucket, mt);
    char a[4][48];
    snprintf(a[0], 48, "%.17g", now);
    snprintf(a[1], 48, "%lld", (long long)l->tpm);
    snprintf(a[2], 48, "%lld", (long long)n);
    snprintf(a[3], 48, "%lld", (long long)(moe_quota_month_left(mt) + 7 * 86400));
    const char *keys[2] = {kt, km}, *args[4] = {a[0], a[1], a[2], a[3]};
    redisContext *c = conn_cmd(q);
    if (!c) return -1;
    redisReply *r = run_script(q, c, SCRIPT_CHARGE, 2, keys, 4, args);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return fail(q, c, r, "charge script");
    *left = reply_num(r->element[1]);
    freeReplyObject(r);
    conn_put(q, c, 1);
    set_up(q, 1, NULL);
    return 0;
}

static int redis_release(moe_quota *q, const char *bucket, const char *lease) {
    char kc[300];
    key(kc, sizeof kc, q, bucket, "c", 0);
    redisContext *c = conn_cmd(q);
    if (!c) return -1;
    redisReply *r = redisCommand(c, "ZREM %s %s", kc, lease);
    if (!r || r->type != REDIS_REPLY_INTEGER) return fail(q, c, r, "ZREM");
    freeReplyObject(r);
    conn_put(q, c, 1);
    return 0;
}

static int64_t redis_budget_used(moe_quota *q, const char *bucket, double now) {
    char km[320];
    month_key(km, sizeof km, q, bucket, month_time(now));
    redisContext *c = conn_cmd(q);
    if (!c) return -1;
    redisReply *r = redisCommand(c, "GET %s", km);
    if (!r || (r->type != REDIS_REPLY_STRING && r->type != REDIS_REPLY_NIL)) {
        fail(q, c, r, "GET");
        return -1;
    }
    int64_t u = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    conn_put(q, c, 1);
    return u;
}

static int redis_budget_seed(moe_quota *q, const char *bucket, int64_t used, double now) {
    char km[320];
    double mt = month_time(now);
    month_key(km, sizeof km, q, bucket, mt);
    redisContext *c = conn_cmd(q);
    if (!c) return -1;
    redisReply *r = redisCommand(c, "SET %s %lld NX EX %lld", km, (long long)used,
                                 (long long)(moe_quota_month_left(mt) + 7 * 86400));
    if (!r || (r->type != REDIS_REPLY_STATUS && r->type != REDIS_REPLY_NIL)) return fail(q, c, r, "SET NX");
    freeReplyObject(r);
    conn_put(q, c, 1);
    return 0;
}

static void redis_close(moe_quota *q) {
    redis_impl *ri = q->impl;
    if (!ri) return;
    for (int i = 0; i < ri->n_idle; i++) redisFree(ri->idle[i]);
    free(ri->idle);
    pthread_mutex_destroy(&ri->mu);
    pthread_cond_destroy(&ri->cv);
    free(ri);
}

static const quota_ops k_redis_ops = {"redis", redis_admit, redis_charge, redis_release,
                                      redis_budget_used, redis_budget_seed, redis_close};

int quota_redis_open(moe_quota *q, const char *host, int port, char *err, size_t errlen) {
    redis_impl *ri = calloc(1, sizeof *ri);
    if (!ri || !(ri->idle = calloc((size_t)q->p.pool, sizeof *ri->idle))) {
        free(ri);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(ri->host, sizeof ri->host, "%s", host);
    ri->port = port;
    pthread_mutex_init(&ri->mu, NULL);
    pthread_cond_init(&ri->cv, NULL);
    q->impl = ri;
    q->ops = &k_redis_ops;
    /* probe once so the log says at start whether Redis is there */
    redisContext *c = conn_get(q);
    if (c) conn_put(q, c, 1);
    return 0;
}
