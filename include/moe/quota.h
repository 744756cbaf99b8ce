/* moekit: per-tenant quota counters (requests per second with burst, tokens per minute,
 * concurrent requests, monthly token budget) behind one interface with two backends:
 *
 *   "local"             in-process counters under one mutex (one replica)
 *   "redis://HOST:PORT" Redis, shared by every replica; each update is one Lua script run with
 *                       EVALSHA, so check-and-take is atomic (no read-modify-write races)
 *
 * The maths is the same in both (the Lua mirrors moe_bucket_take). A token bucket with
 * rate r per second and capacity c holds `level` tokens at time `t`; at time now its level is
 * min(c, level + (now − t)·r). A request that needs n tokens is admitted while the level is at
 * least n and then takes n; otherwise it may retry after (n − level) / r seconds. An absent
 * bucket is full. Times are seconds (double) from an injectable clock, Unix time by default.
 *
 * Thread-safety: a moe_quota may be used by any number of threads at once. */
#ifndef MOE_QUOTA_H
#define MOE_QUOTA_H

#include <stddef.h>
#include <stdint.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- token bucket maths (pure functions; the tests drive them with a fake clock) ---- */

typedef struct moe_bucket {
    double level; /* tokens at time t (may be negative: debt from tokens charged after admission) */
    double t;     /* seconds */
    int init;     /* 0 = never used: full */
} moe_bucket;

/* Level at now (refilled, capped at cap; a clock that steps back refills nothing). */
double moe_bucket_level(const moe_bucket *b, double rate, double cap, double now);
/* Admit if the level is at least need, then take n (n may exceed need: a prompt larger than
 * the capacity is admitted from a full bucket and leaves debt). Returns 1 if admitted; else 0
 * with *retry_after = seconds until the level reaches need (INFINITY when rate is 0). */
int moe_bucket_take(moe_bucket *b, double rate, double cap, double need, double n, double now, double *retry_after);
/* Take n unconditionally (tokens already spent); the level does not fall below −cap. */
void moe_bucket_charge(moe_bucket *b, double rate, double cap, double n, double now);
/* Seconds until the bucket is full again (0 when full). */
double moe_bucket_reset(const moe_bucket *b, double rate, double cap, double now);

/* ---- limits and results ---- */

/* One tenant's limits; 0 = unlimited for every field. */
typedef struct moe_quota_limits {
    double rps;          /* requests per second (refill rate) */
    double burst;        /* bucket capacity in requests (0 = max(1, rps)) */
    int64_t tpm;         /* tokens per minute, prompt + generated */
    int64_t concurrency; /* requests running at once */
    int64_t budget;      /* tokens per calendar month (UTC) */
} moe_quota_limits;

typedef enum moe_quota_verdict {
    MOE_QUOTA_OK = 0,
    MOE_QUOTA_REQUESTS = 1,    /* requests per second */
    MOE_QUOTA_TOKENS = 2,      /* tokens per minute */
    MOE_QUOTA_CONCURRENCY = 3, /* concurrent requests */
    MOE_QUOTA_BUDGET = 4,      /* monthly budget spent */
    MOE_QUOTA_UNAVAILABLE = 5, /* the backend is unreachable and the policy is fail-closed */
} moe_quota_verdict;

/* What an admission decided, with the figures for x-ratelimit-* headers. */
typedef struct moe_quota_result {
    moe_quota_verdict verdict;
    double retry_after;         /* seconds (verdict != OK) */
    double remaining_requests;  /* rps bucket level after the decision (-1 = unlimited) */
    double reset_requests;      /* seconds until the rps bucket is full */
    double remaining_tokens;    /* tpm bucket level (-1 = unlimited) */
    double reset_tokens;        /* seconds until the tpm bucket is full */
    int64_t budget_used;        /* tokens this month, after the decision (-1 = not tracked) */
    int backend_error;          /* 1: the backend failed; the verdict is the failure policy's */
} moe_quota_result;

/* Short name of a verdict ("requests", "tokens", "concurrency", "budget", "unavailable", "ok"). */
const char *moe_quota_verdict_str(moe_quota_verdict v);

/* ---- the counter backend ---- */

typedef struct moe_quota moe_quota;

typedef struct moe_quota_params {
    int fail_open;        /* backend unreachable: 1 admit (fail-open), 0 refuse (fail-closed) */
    double timeout;       /* seconds for a Redis connect or command (default 0.25) */
    double lease_ttl;     /* seconds a concurrency lease lives if never released (crashed replica) */
    int pool;             /* most Redis connections (default 32) */
    const char *prefix;   /* Redis key prefix (default "moe:q:") */
    /* clock: NULL = Unix time. With the Redis backend and no clock the scripts read Redis's
     * TIME, so every replica shares one clock. */
    double (*clock)(void *ctx);
    void *clock_ctx;
} moe_quota_params;

moe_quota_params moe_quota_default_params(void);

/* spec: "local" or "redis://HOST:PORT". A Redis backend that cannot be reached at open is
 * not an error (it is retried at each call, the failure policy applies meanwhile); a
 * malformed spec is MOE_ERR_INVAL with err naming it. */
moe_status moe_quota_open(const char *spec, const moe_quota_params *p, moe_quota **out, char *err, size_t errlen);
void moe_quota_close(moe_quota *q);
/* "local" or "redis". */
const char *moe_quota_backend(const moe_quota *q);

/* Admit one request of `bucket` (the tenant's counter namespace, [A-Za-z0-9_.:-]; "T/S" gives
 * sub-bucket S of tenant T its own rate and concurrency counters while the monthly budget
 * stays T's, as a per-model override needs) needing
 * prompt_tokens now: checks budget, concurrency, requests and tokens together and, only if
 * all pass, takes one request, prompt_tokens from the tpm bucket and the budget, and a
 * concurrency lease named lease (unique per request). Returns MOE_OK whatever the verdict;
 * an error status only for bad arguments. */
moe_status moe_quota_admit(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t prompt_tokens,
                           const char *lease, moe_quota_result *res);
/* Charge tokens spent after admission (generated tokens) to the tpm bucket and the budget.
 * tokens < 0 refunds tokens charged ahead and not used (the bucket stops at its capacity,
 * the budget at 0). */
moe_status moe_quota_charge(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t tokens);
/* The same, and *tokens_left (may be NULL) = the tpm bucket's level afterwards (negative: the
 * tenant is in debt for -level / (tpm / 60) seconds), -1 when l->tpm is 0 or on error.
 * MOE_ERR_IO: the backend failed (nothing was charged). */
moe_status moe_quota_charge_level(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t tokens,
                                  double *tokens_left);
/* End a request: give its concurrency lease back. */
moe_status moe_quota_release(moe_quota *q, const char *bucket, const moe_quota_limits *l, const char *lease);
/* Tokens charged to the budget this month (0 if none); -1 if the backend failed. */
int64_t moe_quota_budget_used(moe_quota *q, const char *bucket);
/* Set this month's budget counter if it is not set yet (restores it from stored usage). */
moe_status moe_quota_budget_seed(moe_quota *q, const char *bucket, int64_t used);

/* Backend health, for logs and metrics: 1 reachable (always for local), 0 failing. */
int moe_quota_up(const moe_quota *q);
/* Counters since open: backend errors, decisions taken by the failure policy. */
void moe_quota_stats(const moe_quota *q, uint64_t *errors, uint64_t *policy_decisions);

/* "YYYY-MM" (UTC) of Unix time t; the budget's period. */
void moe_quota_month(double t, char out[8]);
/* Seconds from t to the start of the next UTC month. */
double moe_quota_month_left(double t);

#ifdef __cplusplus
}
#endif
#endif
