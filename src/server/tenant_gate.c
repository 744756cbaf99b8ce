/* moekit tenants: the gate the server puts in front of generation — authentication, quotas,
 * usage accounting, per-tenant metrics, the priority rule.
 *
 * Snapshot: the tenants, their key hashes and overrides are read from SQLite into memory and
 * swapped under a rwlock. A background thread checks `PRAGMA data_version` every
 * reload_interval seconds (it changes when another connection — `moe tenants` — commits) and
 * reloads, so `add`, `revoke` and `set-quota` take effect within about a second without a
 * restart. The same thread writes the usage counted since its last pass (one UPSERT per
 * tenant and month), so `moe tenants usage` trails the server by at most that interval.
 *
 * Keys: the table is open addressing on the first 8 bytes of the key's BLAKE2b-256 hash; the
 * probe position depends only on that hash, and every candidate is compared over all 32
 * bytes with sodium_memcmp (constant time). A guess sharing a prefix with a real key hashes
 * to an unrelated value, so timing says nothing about prefixes. Revoked tenants' keys are not
 * in the table: unknown, revoked and malformed keys take the same path and get the same 401.
 * Key material is never logged or stored; the ticket holds only the tenant's name and id.
 *
 * Charging as used: the prompt is taken at admission; generated tokens are charged by the
 * server in small grants ahead of use (moe_tenant_gate_charge answers how long the tenant's tpm
 * bucket stays in debt, the wait before the next grant) and settled exactly by finish (unused
 * grants and unprocessed prompt tokens are refunded). A charge the backend cannot take — a
 * fail-open admission, or Redis gone mid-request — is kept per bucket (pend) and charged by the
 * gate thread once the backend answers again (reconciliation).
 *
 * Counter buckets: tenant id N uses "tN"; a per-model override "tN/m<fnv64 of the model>"
 * (own rate and concurrency counters, the tenant's budget).
 *
 * Metrics: the first metrics_max tenants that send a request get their own label value (the
 * tenant name, which is restricted to [A-Za-z0-9_.-]); later ones share tenant="other", so
 * the number of series is bounded whatever the number of tenants. */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "moe/tenant.h"

sqlite3 *tenant_db_handle(moe_tenant_db *db);

typedef struct key_ent {
    uint8_t h[32];
    int32_t idx; /* tenant index; -1 = empty */
} key_ent;

typedef struct snap {
    moe_tenant *t; /* owned, (n) */
    size_t n;
    key_ent *keys; /* owned, (mask + 1) */
    size_t mask;
    moe_tenant_override *ov; /* owned, (n_ov) */
    size_t n_ov;
} snap;

typedef struct udelta {
    int64_t id;
    char month[8];
    int64_t req, prompt, compl, rej;
} udelta;

/* Tokens consumed while the backend could not be charged (fail-open admissions, charges
 * that failed): one entry per counter bucket, charged by the gate thread once it answers. */
typedef struct pend {
    char bucket[96];
    moe_quota_limits limits;
    int64_t tokens;
} pend;

typedef struct mslot {
    int64_t id;
    char name[MOE_TENANT_NAME_MAX];
    uint64_t req, prompt, compl;
    uint64_t rej[6]; /* by verdict */
} mslot;

struct moe_tenant_gate {
    moe_tenant_gate_params p;
    char db_path[1024], backend[256];
    moe_tenant_db *db; /* owned; gate thread (and open/close) only */
    moe_quota *q;      /* owned */
    pthread_rwlock_t lk;
    snap *s; /* lk */
    int64_t data_version;
    /* mu: usage deltas and metrics */
    pthread_mutex_t mu;
    udelta *ud;
    size_t n_ud, cap_ud;
    mslot *slots; /* (metrics_max + 1); [metrics_max] = "other" */
    int n_slots;
    uint64_t unauthorized, reloads;
    pend *pd; /* unreconciled charges */
    size_t n_pd, cap_pd;
    int64_t pd_tokens;
    /* the thread */
    pthread_t th;
    int started, quit; /* quit: tmu */
    pthread_mutex_t tmu;
    pthread_cond_t tcv;
};

static void snap_free(snap *s) {
    if (!s) return;
    free(s->t);
    free(s->keys);
    free(s->ov);
    free(s);
}

static uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static snap *snap_load(moe_tenant_db *db, char *err, size_t errlen) {
    snap *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    sqlite3 *h = tenant_db_handle(db);
    sqlite3_stmt *st = NULL;
    size_t n_keys = 0, cap = 0;
    uint8_t(*hashes)[32] = NULL;
    int32_t *owner = NULL;
    if (moe_tenant_list(db, &s->t, &s->n) || moe_tenant_overrides(db, &s->ov, &s->n_ov)) goto fail;
    if (sqlite3_prepare_v2(h,
                           "SELECT k.tenant_id, k.hash FROM keys k JOIN tenants t ON t.id = k.tenant_id"
                           " WHERE k.revoked = 0 AND t.revoked = 0",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    while (sqlite3_step(st) == SQLITE_ROW) {
        if (sqlite3_column_bytes(st, 1) != 32) continue;
        int64_t id = sqlite3_column_int64(st, 0);
        int32_t idx = -1;
        for (size_t i = 0; i < s->n; i++)
            if (s->t[i].id == id) idx = (int32_t)i;
        if (idx < 0) continue;
        if (n_keys == cap) {
            cap = cap ? 2 * cap : 16;
            void *nh = realloc(hashes, cap * 32), *no = realloc(owner, cap * sizeof *owner);
            if (nh) hashes = nh;
            if (no) owner = no;
            if (!nh || !no) goto fail;
        }
        memcpy(hashes[n_keys], sqlite3_column_blob(st, 1), 32);
        owner[n_keys++] = idx;
    }
    sqlite3_finalize(st);
    st = NULL;
    size_t size = 16;
    while (size < 2 * n_keys) size *= 2;
    if (!(s->keys = malloc(size * sizeof *s->keys))) goto fail;
    for (size_t i = 0; i < size; i++) s->keys[i].idx = -1;
    s->mask = size - 1;
    for (size_t k = 0; k < n_keys; k++) {
        size_t j = load64(hashes[k]) & s->mask;
        while (s->keys[j].idx >= 0) j = (j + 1) & s->mask;
        memcpy(s->keys[j].h, hashes[k], 32);
        s->keys[j].idx = owner[k];
    }
    free(hashes);
    free(owner);
    return s;
fail:
    snprintf(err, errlen, "tenants database: %s", moe_tenant_db_errmsg(db)[0] ? moe_tenant_db_errmsg(db) : sqlite3_errmsg(h));
    sqlite3_finalize(st);
    free(hashes);
    free(owner);
    snap_free(s);
    return NULL;
}

static int64_t data_version(moe_tenant_db *db) {
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (sqlite3_prepare_v2(tenant_db_handle(db), "PRAGMA data_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

void moe_tenant_gate_flush(moe_tenant_gate *g) {
    pthread_mutex_lock(&g->mu);
    udelta *d = g->ud;
    size_t n = g->n_ud;
    g->ud = NULL;
    g->n_ud = g->cap_ud = 0;
    pthread_mutex_unlock(&g->mu);
    if (!n) {
        free(d);
        return;
    }
    sqlite3 *h = tenant_db_handle(g->db);
    int ok = sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK;
    for (size_t i = 0; ok && i < n; i++)
        ok = moe_tenant_usage_add(g->db, d[i].id, d[i].month, d[i].req, d[i].prompt, d[i].compl, d[i].rej) == MOE_OK;
    if (ok && sqlite3_exec(h, "COMMIT", NULL, NULL, NULL) == SQLITE_OK) {
        free(d);
        return;
    }
    sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
    fprintf(stderr, "moe tenants: cannot write usage (kept for the next try): %s\n", sqlite3_errmsg(h));
    pthread_mutex_lock(&g->mu); /* put the deltas back */
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < g->n_ud && (g->ud[j].id != d[i].id || strcmp(g->ud[j].month, d[i].month))) j++;
        if (j == g->n_ud) {
            if (g->n_ud == g->cap_ud) {
                size_t nc = g->cap_ud ? 2 * g->cap_ud : 16;
                udelta *nu = realloc(g->ud, nc * sizeof *nu);
                if (!nu) break;
                g->ud = nu;
                g->cap_ud = nc;
            }
            g->ud[g->n_ud++] = d[i];
            continue;
        }
        g->ud[j].req += d[i].req;
        g->ud[j].prompt += d[i].prompt;
        g->ud[j].compl += d[i].compl;
        g->ud[j].rej += d[i].rej;
    }
    pthread_mutex_unlock(&g->mu);
    free(d);
}

static void reload_if_changed(moe_tenant_gate *g) {
    int64_t v = data_version(g->db);
    if (v == g->data_version) return;
    char err[256];
    snap *ns = snap_load(g->db, err, sizeof err);
    if (!ns) {
        fprintf(stderr, "moe tenants: reload failed, keeping the previous tenants: %s\n", err);
        return;
    }
    g->data_version = v;
    pthread_rwlock_wrlock(&g->lk);
    snap *old = g->s;
    g->s = ns;
    pthread_rwlock_unlock(&g->lk);
    snap_free(old);
    pthread_mutex_lock(&g->mu);
    g->reloads++;
    pthread_mutex_unlock(&g->mu);
}

/* Remember tokens the backend did not take (under no lock). */
static void pend_add(moe_tenant_gate *g, const char *bucket, const moe_quota_limits *l, int64_t tokens) {
    if (!tokens) return;
    pthread_mutex_lock(&g->mu);
    size_t j = 0;
    while (j < g->n_pd && strcmp(g->pd[j].bucket, bucket)) j++;
    if (j == g->n_pd) {
        if (g->n_pd == g->cap_pd) {
            size_t nc = g->cap_pd ? 2 * g->cap_pd : 16;
            pend *np = realloc(g->pd, nc * sizeof *np);
            if (!np) {
                pthread_mutex_unlock(&g->mu);
                return; /* out of memory: these tokens stay uncharged (usage still counts them) */
            }
            g->pd = np;
            g->cap_pd = nc;
        }
        memset(&g->pd[j], 0, sizeof g->pd[j]);
        snprintf(g->pd[j].bucket, sizeof g->pd[j].bucket, "%s", bucket);
        g->n_pd++;
    }
    g->pd[j].limits = *l;
    g->pd[j].tokens += tokens;
    g->pd_tokens += tokens;
    pthread_mutex_unlock(&g->mu);
}

/* Charge what the backend missed, now that it may answer (gate thread). */
static void reconcile(moe_tenant_gate *g) {
    pthread_mutex_lock(&g->mu);
    pend *d = g->pd;
    size_t n = g->n_pd;
    g->pd = NULL;
    g->n_pd = g->cap_pd = 0;
    g->pd_tokens = 0;
    pthread_mutex_unlock(&g->mu);
    for (size_t i = 0; i < n; i++)
        if (moe_quota_charge(g->q, d[i].bucket, &d[i].limits, d[i].tokens) != MOE_OK)
            pend_add(g, d[i].bucket, &d[i].limits, d[i].tokens);
    free(d);
}

int64_t moe_tenant_gate_unreconciled(moe_tenant_gate *g) {
    pthread_mutex_lock(&g->mu);
    int64_t n = g->pd_tokens;
    pthread_mutex_unlock(&g->mu);
    return n;
}

static void *gate_main(void *arg) {
    moe_tenant_gate *g = arg;
    pthread_mutex_lock(&g->tmu);
    while (!g->quit) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double w = g->p.reload_interval;
        ts.tv_sec += (time_t)w;
        ts.tv_nsec += (long)((w - floor(w)) * 1e9);
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->tcv, &g->tmu, &ts);
        if (g->quit) break;
        pthread_mutex_unlock(&g->tmu);
        reload_if_changed(g);
        reconcile(g);
        moe_tenant_gate_flush(g);
        pthread_mutex_lock(&g->tmu);
    }
    pthread_mutex_unlock(&g->tmu);
    return NULL;
}

moe_tenant_gate_params moe_tenant_gate_default_params(void) {
    moe_tenant_gate_params p = {0};
    p.backend = "local";
    p.fail_open = 0;
    p.metrics_max = 32;
    p.reload_interval = 1.0;
    p.aging = 5.0;
    p.quota = moe_quota_default_params();
    return p;
}

static void bucket_of(int64_t id, const char *model, char *out, size_t n) {
    if (!model) {
        snprintf(out, n, "t%lld", (long long)id);
        return;
    }
    uint64_t h = 1469598103934665603ULL;
    for (const char *c = model; *c; c++) h = (h ^ (uint8_t)*c) * 1099511628211ULL;
    snprintf(out, n, "t%lld/m%016llx", (long long)id, (unsigned long long)h);
}

moe_status moe_tenant_gate_open(const moe_tenant_gate_params *p, moe_tenant_gate **out, char *err, size_t errlen) {
    *out = NULL;
    moe_tenant_gate *g = calloc(1, sizeof *g);
    if (!g) return MOE_ERR_NOMEM;
    g->p = *p;
    snprintf(g->db_path, sizeof g->db_path, "%s", p->db ? p->db : "");
    snprintf(g->backend, sizeof g->backend, "%s", p->backend && p->backend[0] ? p->backend : "local");
    g->p.db = g->db_path;
    g->p.backend = g->backend;
    if (g->p.metrics_max < 0) g->p.metrics_max = 0;
    if (g->p.reload_interval <= 0) g->p.reload_interval = 1.0;
    if (g->p.aging <= 0) g->p.aging = 5.0;
    pthread_rwlock_init(&g->lk, NULL);
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->tmu, NULL);
    pthread_cond_init(&g->tcv, NULL);
    moe_status st;
    if (!(g->slots = calloc((size_t)g->p.metrics_max + 1, sizeof *g->slots))) {
        st = MOE_ERR_NOMEM;
        goto fail;
    }
    snprintf(g->slots[g->p.metrics_max].name, sizeof g->slots[0].name, "other");
    if ((st = moe_tenant_db_open(g->db_path, 0, &g->db, err, errlen))) goto fail;
    g->data_version = data_version(g->db);
    if (!(g->s = snap_load(g->db, err, errlen))) {
        st = MOE_ERR_IO;
        goto fail;
    }
    moe_quota_params qp = p->quota;
    qp.fail_open = p->fail_open;
    if ((st = moe_quota_open(g->backend, &qp, &g->q, err, errlen))) goto fail;
    /* this month's budget counters start from the stored usage (a restart keeps the budget) */
    char month[8];
    moe_quota_month(qp.clock ? qp.clock(qp.clock_ctx) : (double)time(NULL), month);
    moe_tenant_usage *u = NULL;
    size_t nu = 0;
    if (moe_tenant_usage_get(g->db, NULL, month, &u, &nu) == MOE_OK) {
        for (size_t i = 0; i < nu; i++)
            for (size_t j = 0; j < g->s->n; j++)
                if (!strcmp(g->s->t[j].name, u[i].name)) {
                    char b[96];
                    bucket_of(g->s->t[j].id, NULL, b, sizeof b);
                    moe_quota_budget_seed(g->q, b, u[i].prompt_tokens + u[i].completion_tokens);
                }
        free(u);
    }
    if (pthread_create(&g->th, NULL, gate_main, g)) {
        snprintf(err, errlen, "cannot start the tenants thread");
        st = MOE_ERR_INTERNAL;
        goto fail;
    }
    g->started = 1;
    *out = g;
    return MOE_OK;
fail:
    moe_tenant_gate_close(g);
    return st;
}

void moe_tenant_gate_close(moe_tenant_gate *g) {
    if (!g) return;
    if (g->started) {
        pthread_mutex_lock(&g->tmu);
        g->quit = 1;
        pthread_cond_signal(&g->tcv);
        pthread_mutex_unlock(&g->tmu);
        pthread_join(g->th, NULL);
    }
    if (g->db) moe_tenant_gate_flush(g);
    if (g->q && g->n_pd) reconcile(g); /* a last try */
    moe_quota_close(g->q);
    free(g->pd);
    moe_tenant_db_close(g->db);
    snap_free(g->s);
    free(g->ud);
    free(g->slots);
    pthread_rwlock_destroy(&g->lk);
    pthread_mutex_destroy(&g->mu);
    pthread_mutex_destroy(&g->tmu);
    pthread_cond_destroy(&g->tcv);
    free(g);
}

double moe_tenant_gate_aging(const moe_tenant_gate *g) { return g->p.aging; }

double moe_tenant_prio_score(int32_t priority, double waited, double aging) {
    if (aging <= 0) aging = 5.0;
    if (waited < 0) waited = 0;
    return (double)priority + waited / aging;
}

/* ---- authentication ---- */

moe_status moe_tenant_gate_auth(moe_tenant_gate *g, const char *authorization, moe_tenant_ticket *t) {
    memset(t, 0, sizeof *t);
    t->slot = -1;
    if (!authorization) return MOE_ERR_NOTFOUND;
    const char *a = authorization;
    while (*a == ' ' || *a == '\t') a++;
    if (strncasecmp(a, "Bearer", 6) != 0 || (a[6] != ' ' && a[6] != '\t')) return MOE_ERR_NOTFOUND;
    a += 6;
    while (*a == ' ' || *a == '\t') a++;
    size_t len = strlen(a);
    while (len && (a[len - 1] == ' ' || a[len - 1] == '\t')) len--;
    if (len == 0 || len > 256) return MOE_ERR_NOTFOUND;
    uint8_t h[32];
    moe_tenant_key_hash(a, len, h);
    moe_status rc = MOE_ERR_NOTFOUND;
    pthread_rwlock_rdlock(&g->lk);
    snap *s = g->s;
    for (size_t j = load64(h) & s->mask;; j = (j + 1) & s->mask) {
        const key_ent *e = &s->keys[j];
        if (e->idx < 0) break;
        if (sodium_memcmp(e->h, h, 32) == 0) {
            const moe_tenant *tn = &s->t[e->idx];
            t->tenant_id = tn->id;
            memcpy(t->name, tn->name, sizeof t->name);
            t->priority = tn->priority;
            t->limits = tn->limits;
            t->authed = 1;
            rc = MOE_OK;
            break;
        }
    }
    pthread_rwlock_unlock(&g->lk);
    sodium_memzero(h, sizeof h);
    return rc;
}

void moe_tenant_gate_count_unauthorized(moe_tenant_gate *g) {
    pthread_mutex_lock(&g->mu);
    g->unauthorized++;
    pthread_mutex_unlock(&g->mu);
}

/* ---- admission and accounting ---- */

/* Under mu. */
static udelta *delta_of(moe_tenant_gate *g, int64_t id, const char *month) {
    for (size_t j = 0; j < g->n_ud; j++)
        if (g->ud[j].id == id && !strcmp(g->ud[j].month, month)) return &g->ud[j];
    if (g->n_ud == g->cap_ud) {
        size_t nc = g->cap_ud ? 2 * g->cap_ud : 16;
        udelta *nu = realloc(g->ud, nc * sizeof *nu);
        if (!nu) return NULL;
        g->ud = nu;
        g->cap_ud = nc;
    }
    udelta *d = &g->ud[g->n_ud++];
    memset(d, 0, sizeof *d);
    d->id = id;
    memcpy(d->month, month, 8);
    return d;
}

/* Under mu. */
static mslot *slot_of(moe_tenant_gate *g, moe_tenant_ticket *t) {
    if (t->slot >= 0) return &g->slots[t->slot];
    for (int i = 0; i < g->n_slots; i++)
        if (g->slots[i].id == t->tenant_id) return &g->slots[t->slot = i];
    if (g->n_slots < g->p.metrics_max) {
        mslot *m = &g->slots[t->slot = g->n_slots++];
        m->id = t->tenant_id;
        memcpy(m->name, t->name, sizeof m->name);
        return m;
    }
    return &g->slots[t->slot = g->p.metrics_max];
}

static void count(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t req, int64_t prompt, int64_t compl, int rej_verdict) {
    char month[8];
    moe_quota_month((double)time(NULL), month);
    pthread_mutex_lock(&g->mu);
    udelta *d = delta_of(g, t->tenant_id, month);
    if (d) {
        d->req += req;
        d->prompt += prompt;
        d->compl += compl;
        d->rej += rej_verdict ? 1 : 0;
    }
    mslot *m = slot_of(g, t);
    m->req += (uint64_t)req;
    m->prompt += (uint64_t)prompt;
    m->compl += (uint64_t)compl;
    if (rej_verdict > 0 && rej_verdict < 6) m->rej[rej_verdict]++;
    pthread_mutex_unlock(&g->mu);
}

moe_quota_verdict moe_tenant_gate_admit(moe_tenant_gate *g, moe_tenant_ticket *t, const char *model,
                                        int64_t prompt_tokens, const char *request_id) {
    const char *override_model = NULL;
    pthread_rwlock_rdlock(&g->lk);
    for (size_t i = 0; model && i < g->s->n_ov; i++) {
        const moe_tenant_override *o = &g->s->ov[i];
        if (o->tenant_id == t->tenant_id && !strcmp(o->model, model)) {
            t->limits.rps = o->limits.rps;
            t->limits.burst = o->limits.burst;
            t->limits.tpm = o->limits.tpm;
            t->limits.concurrency = o->limits.concurrency;
            override_model = model;
            break;
        }
    }
    pthread_rwlock_unlock(&g->lk);
    bucket_of(t->tenant_id, override_model, t->bucket, sizeof t->bucket);
    snprintf(t->lease, sizeof t->lease, "%.47s", request_id ? request_id : "-");
    moe_quota_admit(g->q, t->bucket, &t->limits, prompt_tokens, t->lease, &t->res);
    t->admitted = t->res.verdict == MOE_QUOTA_OK;
    t->prompt = t->admitted ? prompt_tokens : 0;
    t->charged = 0;
    /* admitted by fail-open: nothing was taken; the prompt is charged once the backend answers */
    if (t->admitted && t->res.backend_error) pend_add(g, t->bucket, &t->limits, prompt_tokens);
    if (t->admitted) count(g, t, 1, prompt_tokens, 0, 0);
    else count(g, t, 0, 0, 0, (int)t->res.verdict);
    return t->res.verdict;
}

/* Charge n (may be negative) to t's counters; the tpm level after, or -1 when unknown. */
static double charge(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t n) {
    if (!n && t->limits.tpm <= 0) return -1;
    if (t->res.backend_error) { /* fail-open: the backend has not seen this request at all */
        pend_add(g, t->bucket, &t->limits, n);
        return -1;
    }
    double left = -1;
    if (moe_quota_charge_level(g->q, t->bucket, &t->limits, n, &left) != MOE_OK) {
        pend_add(g, t->bucket, &t->limits, n);
        return -1;
    }
    return left;
}

double moe_tenant_gate_charge(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t tokens) {
    if (!t->admitted || t->finished) return 0;
    double left = charge(g, t, tokens);
    t->charged += tokens;
    if (t->limits.tpm <= 0 || left >= 0 || t->res.backend_error) return 0;
    return -left / ((double)t->limits.tpm / 60.0);
}

void moe_tenant_gate_refund_prompt(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t n) {
    if (!t->admitted || t->finished || n <= 0) return;
    if (n > t->prompt) n = t->prompt;
    charge(g, t, -n);
    t->prompt -= n;
    count(g, t, 0, -n, 0, 0);
}

void moe_tenant_gate_finish(moe_tenant_gate *g, moe_tenant_ticket *t, int64_t completion_tokens) {
    if (!t->admitted || t->finished) return;
    if (completion_tokens < 0) completion_tokens = 0;
    if (completion_tokens != t->charged) charge(g, t, completion_tokens - t->charged); /* exact: what was used */
    t->charged = completion_tokens;
    t->finished = 1;
    if (!t->res.backend_error && (t->limits.concurrency > 0 || !strcmp(moe_quota_backend(g->q), "local")))
        moe_quota_release(g->q, t->bucket, &t->limits, t->lease);
    count(g, t, 0, 0, completion_tokens, 0);
}

/* ---- responses ---- */

/* OpenAI's duration style: "20ms", "1.5s", "6m0s", "1h2m3s". */
static void duration(double s, char *out, size_t n) {
    if (!(s > 0)) s = 0;
    if (s < 1) snprintf(out, n, "%dms", (int)ceil(s * 1000));
    else if (s < 60) snprintf(out, n, "%.3gs", s);
    else if (s < 3600) snprintf(out, n, "%dm%ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, n, "%lldh%dm%ds", (long long)(s / 3600), (int)fmod(s / 60, 60), (int)fmod(s, 60));
}

void moe_tenant_gate_headers(const moe_tenant_ticket *t, void (*add)(void *ctx, const char *name, const char *value),
                             void *ctx) {
    char v[64];
    const moe_quota_result *r = &t->res;
    if (!t->authed) return;
    if (t->limits.rps > 0 && !r->backend_error) {
        double burst = t->limits.burst > 0 ? t->limits.burst : t->limits.rps > 1 ? t->limits.rps : 1;
        snprintf(v, sizeof v, "%lld", (long long)burst);
        add(ctx, "x-ratelimit-limit-requests", v);
        snprintf(v, sizeof v, "%lld", (long long)(r->remaining_requests > 0 ? floor(r->remaining_requests) : 0));
        add(ctx, "x-ratelimit-remaining-requests", v);
        duration(r->reset_requests, v, sizeof v);
        add(ctx, "x-ratelimit-reset-requests", v);
    }
    if (t->limits.tpm > 0 && !r->backend_error) {
        snprintf(v, sizeof v, "%lld", (long long)t->limits.tpm);
        add(ctx, "x-ratelimit-limit-tokens", v);
        snprintf(v, sizeof v, "%lld", (long long)(r->remaining_tokens > 0 ? floor(r->remaining_tokens) : 0));
        add(ctx, "x-ratelimit-remaining-tokens", v);
        duration(r->reset_tokens, v, sizeof v);
        add(ctx, "x-ratelimit-reset-tokens", v);
    }
    if (r->verdict != MOE_QUOTA_OK) {
        double ra = r->retry_after > 0 ? r->retry_after : 1;
        if (ra > 1e9) ra = 1e9;
        snprintf(v, sizeof v, "%lld", (long long)ceil(ra));
        add(ctx, "Retry-After", v);
        snprintf(v, sizeof v, "%lld", (long long)ceil(ra * 1000));
        add(ctx, "retry-after-ms", v);
    }
}

static char *error_json(const char *message, const char *type, const char *code) {
    json_t *o = json_pack("{s:{s:s,s:s,s:n,s:s}}", "error", "message", message, "type", type, "param", "code", code);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

char *moe_tenant_gate_refusal(const moe_tenant_ticket *t, int *status) {
    char msg[400], wait[32];
    const moe_quota_result *r = &t->res;
    duration(r->retry_after, wait, sizeof wait);
    *status = 429;
    switch (r->verdict) {
    case MOE_QUOTA_REQUESTS:
        snprintf(msg, sizeof msg,
                 "Rate limit reached for requests: limit %g per second (burst %g). Please try again in %s.",
                 t->limits.rps, t->limits.burst > 0 ? t->limits.burst : (t->limits.rps > 1 ? t->limits.rps : 1), wait);
        return error_json(msg, "requests", "rate_limit_exceeded");
    case MOE_QUOTA_TOKENS:
        snprintf(msg, sizeof msg, "Rate limit reached for tokens per minute: limit %lld. Please try again in %s.",
                 (long long)t->limits.tpm, wait);
        return error_json(msg, "tokens", "rate_limit_exceeded");
    case MOE_QUOTA_CONCURRENCY:
        snprintf(msg, sizeof msg, "Too many concurrent requests: limit %lld. Please try again in %s.",
                 (long long)t->limits.concurrency, wait);
        return error_json(msg, "requests", "rate_limit_exceeded");
    case MOE_QUOTA_BUDGET:
        snprintf(msg, sizeof msg, "You exceeded your monthly token budget of %lld tokens; it renews in %s.",
                 (long long)t->limits.budget, wait);
        return error_json(msg, "insufficient_quota", "insufficient_quota");
    case MOE_QUOTA_UNAVAILABLE:
    default:
        *status = 503;
        return error_json("The quota service is unavailable; please retry shortly.", "server_error",
                          "quota_unavailable");
    }
}

char *moe_tenant_gate_unauthorized(void) {
    return error_json("Incorrect API key provided. Send a valid key as 'Authorization: Bearer KEY'.",
                      "invalid_request_error", "invalid_api_key");
}

/* ---- metrics ---- */

typedef struct tbuf {
    char *p;
    size_t len, cap;
    int oom;
} tbuf;

static void tb_fmt(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_fmt(tbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = b->cap ? b->cap * 2 : 4096;
        while (nc < b->len + (size_t)n + 1) nc *= 2;
        char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

char *moe_tenant_gate_metrics(moe_tenant_gate *g, size_t *len) {
    tbuf b = {0};
    static const char *const kinds[6] = {NULL, "requests", "tokens", "concurrency", "budget", "unavailable"};
    pthread_mutex_lock(&g->mu);
    int n = g->n_slots;
    mslot *sl = malloc(((size_t)g->p.metrics_max + 1) * sizeof *sl);
    if (sl) memcpy(sl, g->slots, ((size_t)g->p.metrics_max + 1) * sizeof *sl);
    uint64_t unauth = g->unauthorized, reloads = g->reloads;
    long long pd_tokens = (long long)g->pd_tokens;
    pthread_mutex_unlock(&g->mu);
    if (!sl) return NULL;
    const mslot *other = &sl[g->p.metrics_max];
    int other_used = other->req || other->prompt || other->compl;
    for (int k = 1; k < 6; k++) other_used |= other->rej[k] != 0;
#define EACH_SLOT(body)                                                  \
    for (int i = 0; i <= g->p.metrics_max; i++) {                        \
        if (i >= n && i < g->p.metrics_max) continue;                    \
        if (i == g->p.metrics_max && !other_used) continue;              \
        const mslot *m = &sl[i];                                         \
        body                                                             \
    }
    tb_fmt(&b, "# HELP moe_tenant_requests_total Generation requests admitted, by tenant (at most %d named; the "
               "rest are \"other\").\n# TYPE moe_tenant_requests_total counter\n",
           g->p.metrics_max);
    EACH_SLOT(tb_fmt(&b, "moe_tenant_requests_total{tenant=\"%s\"} %llu\n", m->name, (unsigned long long)m->req);)
    tb_fmt(&b, "# HELP moe_tenant_tokens_total Tokens charged, by tenant and kind.\n"
               "# TYPE moe_tenant_tokens_total counter\n");
    EACH_SLOT(tb_fmt(&b, "moe_tenant_tokens_total{tenant=\"%s\",kind=\"prompt\"} %llu\n", m->name,
                     (unsigned long long)m->prompt);
              tb_fmt(&b, "moe_tenant_tokens_total{tenant=\"%s\",kind=\"completion\"} %llu\n", m->name,
                     (unsigned long long)m->compl);)
    tb_fmt(&b, "# HELP moe_tenant_rate_limited_total Requests refused by a quota (429, or 503 when the quota "
               "backend is down and fail-closed), by tenant and limit.\n# TYPE moe_tenant_rate_limited_total counter\n");
    EACH_SLOT(for (int k = 1; k < 6; k++) tb_fmt(&b, "moe_tenant_rate_limited_total{tenant=\"%s\",limit=\"%s\"} %llu\n",
                                                 m->name, kinds[k], (unsigned long long)m->rej[k]);)
#undef EACH_SLOT
    uint64_t errors = 0, policy = 0;
    moe_quota_stats(g->q, &errors, &policy);
    tb_fmt(&b,
           "# HELP moe_tenant_unauthorized_total Requests refused with 401 (missing, unknown or revoked key).\n"
           "# TYPE moe_tenant_unauthorized_total counter\nmoe_tenant_unauthorized_total %llu\n"
           "# HELP moe_tenant_reloads_total Reloads of the tenants database after a change.\n"
           "# TYPE moe_tenant_reloads_total counter\nmoe_tenant_reloads_total %llu\n"
           "# HELP moe_quota_backend_up 1 when the quota backend answers.\n"
           "# TYPE moe_quota_backend_up gauge\nmoe_quota_backend_up{backend=\"%s\"} %d\n"
           "# HELP moe_quota_backend_errors_total Failed calls to the quota backend.\n"
           "# TYPE moe_quota_backend_errors_total counter\nmoe_quota_backend_errors_total %llu\n"
           "# HELP moe_quota_policy_decisions_total Admissions decided by the failure policy while the backend was "
           "down.\n# TYPE moe_quota_policy_decisions_total counter\nmoe_quota_policy_decisions_total{policy=\"%s\"} "
           "%llu\n",
           (unsigned long long)unauth, (unsigned long long)reloads, moe_quota_backend(g->q), moe_quota_up(g->q),
           (unsigned long long)errors, g->p.fail_open ? "fail_open" : "fail_closed", (unsigned long long)policy);
    tb_fmt(&b,
           "# HELP moe_quota_unreconciled_tokens Tokens used but not yet charged to the quota backend (it was "
           "unreachable); charged once it answers.\n# TYPE moe_quota_unreconciled_tokens gauge\n"
           "moe_quota_unreconciled_tokens %lld\n",
           pd_tokens);
    free(sl);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
