/* moekit: tenants — API keys, quotas and priorities (`moe tenants`, `moe serve --tenants`).
 *
 * Records live in SQLite (one file, WAL mode, shared by the CLI and every server on the host).
 * An API key is "sk-moe-" + 43 base64url characters (32 random bytes from libsodium); only its
 * BLAKE2b-256 hash (crypto_generichash) is stored. A fast hash is right here: the key has 256
 * bits of entropy, so there is nothing to stretch (crypto_pwhash is for passwords and would
 * cost milliseconds per request). Lookups go by the hash, then compare it with sodium_memcmp,
 * so neither the time nor the answer depends on how much of a guess matches a real key.
 *
 * The gate (moe_tenant_gate) is what the server uses: an in-memory snapshot of the tenants
 * (reloaded when another process changes the database), authentication of a Bearer header,
 * the quota check through a moe_quota backend, usage accounting written back to SQLite once
 * a second, per-tenant metrics with a bounded number of labels, and the priority rule.
 *
 * Thread-safety: a moe_tenant_db is for one thread at a time; a moe_tenant_gate may be used by
 * any number of threads at once. */
#ifndef MOE_TENANT_H
#define MOE_TENANT_H

#include <stddef.h>
#include <stdint.h>

#include "moe/quota.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_TENANT_NAME_MAX 64  /* bytes of a name, with the NUL: [A-Za-z0-9_.-], 1..63 */
#define MOE_TENANT_KEY_LEN 50   /* "sk-moe-" + 43 */
#define MOE_TENANT_PRIO_MAX 9   /* priority classes 0 (lowest) .. 9 (highest) */
#define MOE_TENANT_PRIO_DEFAULT 1

typedef struct moe_tenant {
    int64_t id;
    char name[MOE_TENANT_NAME_MAX];
    int32_t priority;
    int revoked;
    int64_t created; /* Unix time */
    moe_quota_limits limits;
} moe_tenant;

/* A per-model override: these limits (own counters) for requests naming model. */
typedef struct moe_tenant_override {
    int64_t tenant_id;
    char model[256];
    moe_quota_limits limits; /* budget is ignored: the month's budget is the tenant's */
} moe_tenant_override;

typedef struct moe_tenant_usage {
    char name[MOE_TENANT_NAME_MAX];
    char month[8]; /* "YYYY-MM" */
    int64_t requests, prompt_tokens, completion_tokens, rejected;
} moe_tenant_usage;

/* ---- the database ---- */

typedef struct moe_tenant_db moe_tenant_db;

/* Open (create = 1: create the file and tables if missing). err: one line. */
moe_status moe_tenant_db_open(const char *path, int create, moe_tenant_db **out, char *err, size_t errlen);
void moe_tenant_db_close(moe_tenant_db *db);
/* The last error on db, one line. */
const char *moe_tenant_db_errmsg(const moe_tenant_db *db);

/* Valid name: 1..63 of [A-Za-z0-9_.-]. */
int moe_tenant_name_ok(const char *name);
/* Add t (name, priority, limits; id and created are set) with a new key written to key
 * (keylen >= MOE_TENANT_KEY_LEN + 1). MOE_ERR_BUSY: the name exists. */
moe_status moe_tenant_add(moe_tenant_db *db, moe_tenant *t, char *key, size_t keylen);
moe_status moe_tenant_get(moe_tenant_db *db, const char *name, moe_tenant *out);
/* Every tenant, by name. *out malloc'd. */
moe_status moe_tenant_list(moe_tenant_db *db, moe_tenant **out, size_t *n);
/* Revoke the tenant and all its keys (irreversible). MOE_ERR_NOTFOUND if unknown. */
moe_status moe_tenant_revoke(moe_tenant_db *db, const char *name);
/* Write t's priority and limits (found by name). */
moe_status moe_tenant_update(moe_tenant_db *db, const moe_tenant *t);
/* Set (limits != NULL) or remove (NULL) the override of tenant name for model. */
moe_status moe_tenant_override_set(moe_tenant_db *db, const char *name, const char *model, const moe_quota_limits *l);
/* Every override. *out malloc'd. */
moe_status moe_tenant_overrides(moe_tenant_db *db, moe_tenant_override **out, size_t *n);
/* Add to the usage of tenant_id in month. */
moe_status moe_tenant_usage_add(moe_tenant_db *db, int64_t tenant_id, const char *month, int64_t requests,
                                int64_t prompt_tokens, int64_t completion_tokens, int64_t rejected);
/* Usage rows of one tenant (name) or all (NULL), one month ("YYYY-MM") or all (NULL), by
 * name then month. *out malloc'd. */
moe_status moe_tenant_usage_get(moe_tenant_db *db, const char *name, const char *month, moe_tenant_usage **out,
                                size_t *n);

/* BLAKE2b-256 of a key (what is stored). */
void moe_tenant_key_hash(const char *key, size_t len, uint8_t out[32]);

/* ---- the gate (server side) ---- */

typedef struct moe_tenant_gate moe_tenant_gate;

typedef struct moe_tenant_gate_params {
    const char *db;            /* tenants database (must exist) */
    const char *backend;       /* "local" or "redis://HOST:PORT" */
    int fail_open;             /* backend unreachable: 1 admit, 0 refuse with 503 */
    int metrics_max;           /* tenants with their own metrics label; the rest are "other" */
    double reload_interval;    /* seconds between checks for database changes and usage writes */
    double aging;              /* seconds of waiting worth one priority class (the fairness rule) */
    moe_quota_params quota;    /* backend parameters (fail_open above wins) */
} moe_tenant_gate_params;

moe_tenant_gate_params moe_tenant_gate_default_params(void);
moe_status moe_tenant_gate_open(const moe_tenant_gate_params *p, moe_tenant_gate **out, char *err, size_t errlen);
/* Writes the pending usage and frees. NULL allowed. */
void moe_tenant_gate_close(moe_tenant_gate *g);

/* Per-request state, filled by auth and admit, ended by finish. */
typedef struct moe_tenant_ticket {
    int64_t tenant_id;
    char name[MOE_TENANT_NAME_MAX];
    int32_t priority;
    int slot;                /* metrics label slot */
    char bucket[96];
    char lease[48];
    moe_quota_limits limits; /* in force for this request (override applied) */
    moe_quota_result res;
    int64_t prompt;          /* prompt tokens charged at admission (less refunds) */
    int64_t charged;         /* generated tokens charged so far (moe_tenant_gate_charge) */
    int authed, admitted, finished;
} moe_tenant_ticket;

/* Authenticate an Authorization header value ("Bearer KEY"; NULL = none). MOE_OK fills t;
 * MOE_ERR_NOTFOUND for a missing, malformed, unknown or revoked key, all alike. */
moe_status moe_tenant_gate_auth(moe_tenant_gate *g, const char *authorization, moe_tenant_ticket *t);
/* Check and take the quota of an authenticated request for model with prompt_tokens.
 * request_id names the concurrency lease. Returns the verdict (also in t->res). */
moe_quota_verdict moe_tenant_gate_admit(moe_tenant_gate *g, moe_tenant_ticket *t, const char *model,
                                        int64_t prompt_tokens, const char *request_id);
/* Charge tokens to an admitted request's counters now (tokens per minute and budget), as
 * they are about to be generated; a negative count refunds tokens charged and not used.
 * Returns the seconds the tenant's tokens-per-minute bucket stays in debt (0 = none): the
 * server grants no more tokens to the request until then. A charge the backend cannot take
 * (Redis down, or a fail-open admission) is kept and charged once the backend answers. */
double moe_tenant_gate_charge(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t tokens);
/* Give back n prompt tokens charged at admission that were never processed (the request
 * was cancelled or refused before its prefill finished); usage counts only what was used. */
void moe_tenant_gate_refund_prompt(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t n);
/* The request ended (any way) after admission with completion_tokens generated: charge or
 * refund the difference to what moe_tenant_gate_charge took, release the lease, count usage.
 * Idempotent; does nothing for a ticket that was not admitted. */
void moe_tenant_gate_finish(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t completion_tokens);
/* Tokens consumed but not yet charged to the backend (it was unreachable): the gate charges
 * them once it answers again. */
int64_t moe_tenant_gate_unreconciled(moe_tenant_gate *g);
/* Response headers for t: x-ratelimit-{limit,remaining,reset}-{requests,tokens} for the limits
 * the tenant has, and Retry-After / retry-after-ms on a refusal. */
void moe_tenant_gate_headers(const moe_tenant_ticket *t, void (*add)(void *ctx, const char *name, const char *value),
                             void *ctx);
/* The refusal body in OpenAI's error shape (malloc'd; NULL when out of memory); *status 429
 * or 503 (backend unavailable, fail-closed). */
char *moe_tenant_gate_refusal(const moe_tenant_ticket *t, int *status);
/* The 401 body ("Incorrect API key provided."), the same for every cause. malloc'd. */
char *moe_tenant_gate_unauthorized(void);
/* Count a 401 (metrics). */
void moe_tenant_gate_count_unauthorized(moe_tenant_gate *g);
/* Prometheus text of the tenant metrics (malloc'd, *len set). */
char *moe_tenant_gate_metrics(moe_tenant_gate *g, size_t *len);
/* Write pending usage now (the gate also does it every reload_interval). */
void moe_tenant_gate_flush(moe_tenant_gate *g);
double moe_tenant_gate_aging(const moe_tenant_gate *g);

/* The fairness rule: a queued request's score is its class plus the time it has waited over
 * aging (one class per aging seconds); the scheduler admits the highest score, ties first
 * come. A request waiting (P_max − p)·aging seconds outranks every new arrival, so no class
 * starves. */
double moe_tenant_prio_score(int32_t priority, double waited, double aging);

#ifdef __cplusplus
}
#endif
#endif
