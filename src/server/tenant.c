/* moekit tenants: the SQLite store and API keys.
 *
 * Schema (user_version 1):
 *   tenants(id INTEGER PRIMARY KEY, name TEXT UNIQUE, priority, rps, burst, tpm, concurrency,
 *           budget, revoked, created)               limits: 0 = unlimited
 *   keys(id, tenant_id, hash BLOB UNIQUE, revoked, created)   hash = BLAKE2b-256(key), never the key
 *   overrides(tenant_id, model, rps, burst, tpm, concurrency, PRIMARY KEY(tenant_id, model))
 *   usage(tenant_id, month 'YYYY-MM', requests, prompt_tokens, completion_tokens, rejected,
 *         PRIMARY KEY(tenant_id, month))            added to by servers (UPSERT), read by the CLI
 * WAL mode and a 5 s busy timeout let the CLI and several servers share the file. */
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/tenant.h"

struct moe_tenant_db {
    sqlite3 *db; /* owned */
    char err[256];
};

static const char k_schema[] =
    "PRAGMA journal_mode=WAL;"
    "CREATE TABLE IF NOT EXISTS tenants(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
    " priority INTEGER NOT NULL DEFAULT 1, rps REAL NOT NULL DEFAULT 0, burst REAL NOT NULL DEFAULT 0,"
    " tpm INTEGER NOT NULL DEFAULT 0, concurrency INTEGER NOT NULL DEFAULT 0, budget INTEGER NOT NULL DEFAULT 0,"
    " revoked INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS keys(id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL REFERENCES tenants(id),"
    " hash BLOB NOT NULL UNIQUE, revoked INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS overrides(tenant_id INTEGER NOT NULL REFERENCES tenants(id), model TEXT NOT NULL,"
    " rps REAL NOT NULL DEFAULT 0, burst REAL NOT NULL DEFAULT 0, tpm INTEGER NOT NULL DEFAULT 0,"
    " concurrency INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(tenant_id, model));"
    "CREATE TABLE IF NOT EXISTS usage(tenant_id INTEGER NOT NULL REFERENCES tenants(id), month TEXT NOT NULL,"
    " requests INTEGER NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    " completion_tokens INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY(tenant_id, month));"
    "PRAGMA user_version=1;";

static moe_status db_fail(moe_tenant_db *db, const char *what) {
    snprintf(db->err, sizeof db->err, "%s: %s", what, sqlite3_errmsg(db->db));
    int code = sqlite3_errcode(db->db);
    return code == SQLITE_BUSY || code == SQLITE_LOCKED ? MOE_ERR_BUSY : MOE_ERR_IO;
}

moe_status moe_tenant_db_open(const char *path, int create, moe_tenant_db **out, char *err, size_t errlen) {
    *out = NULL;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium failed to initialise");
        return MOE_ERR_INTERNAL;
    }
    moe_tenant_db *db = calloc(1, sizeof *db);
    if (!db) return MOE_ERR_NOMEM;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
    if (sqlite3_open_v2(path, &db->db, flags, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "cannot open tenants database '%s': %s", path,
                 db->db ? sqlite3_errmsg(db->db) : "out of memory");
        moe_tenant_db_close(db);
        return MOE_ERR_IO;
    }
    sqlite3_busy_timeout(db->db, 5000);
    char *msg = NULL;
    if (create) {
        if (sqlite3_exec(db->db, k_schema, NULL, NULL, &msg) != SQLITE_OK) {
            snprintf(err, errlen, "tenants database '%s': %s", path, msg ? msg : "cannot create tables");
            sqlite3_free(msg);
            moe_tenant_db_close(db);
            return MOE_ERR_IO;
        }
    } else {
        sqlite3_stmt *st = NULL;
        int ok = sqlite3_prepare_v2(db->db, "SELECT count(*) FROM tenants", -1, &st, NULL) == SQLITE_OK &&
                 sqlite3_step(st) == SQLITE_ROW;
        sqlite3_finalize(st);
        if (!ok) {
            snprintf(err, errlen, "'%s' is not a tenants database (create one with moe tenants --db %s add NAME)", path,
                     path);
            moe_tenant_db_close(db);
            return MOE_ERR_FORMAT;
        }
    }
    *out = db;
    return MOE_OK;
}

void moe_tenant_db_close(moe_tenant_db *db) {
    if (!db) return;
    sqlite3_close(db->db);
    free(db);
}

const char *moe_tenant_db_errmsg(const moe_tenant_db *db) { return db->err; }

int moe_tenant_name_ok(const char *name) {
    size_t n = 0;
    for (; name[n]; n++) {
        char c = name[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return n > 0 && n < MOE_TENANT_NAME_MAX;
}

void moe_tenant_key_hash(const char *key, size_t len, uint8_t out[32]) {
    crypto_generichash(out, 32, (const unsigned char *)key, len, NULL, 0);
}

static void new_key(char *key, size_t keylen) {
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    char b64[64];
    sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(key, keylen, "sk-moe-%s", b64);
    sodium_memzero(raw, sizeof raw);
    sodium_memzero(b64, sizeof b64);
}

static int limits_ok(const moe_quota_limits *l) {
    return l->rps >= 0 && l->burst >= 0 && l->tpm >= 0 && l->concurrency >= 0 && l->budget >= 0 && l->rps < 1e9 &&
           l->burst < 1e9;
}

/* priority, rps, burst, tpm, concurrency, budget at parameters first..first+5 (the column order
 * of both statements that write a tenant's quota) */
static void bind_quota(sqlite3_stmt *st, int first, const moe_tenant *t) {
    sqlite3_bind_int(st, first, t->priority);
    sqlite3_bind_double(st, first + 1, t->limits.rps);
    sqlite3_bind_double(st, first + 2, t->limits.burst);
    sqlite3_bind_int64(st, first + 3, t->limits.tpm);
    sqlite3_bind_int64(st, first + 4, t->limits.concurrency);
    sqlite3_bind_int64(st, first + 5, t->limits.budget);
}

moe_status moe_tenant_add(moe_tenant_db *db, moe_tenant *t, char *key, size_t keylen) {
    if (!moe_tenant_name_ok(t->name)) {
        snprintf(db->err, sizeof db->err, "tenant name '%.80s': use 1 to 63 of A-Z a-z 0-9 _ . -", t->name);
        return MOE_ERR_INVAL;
    }
    if (t->priority < 0 || t->priority > MOE_TENANT_PRIO_MAX || !limits_ok(&t->limits) ||
        keylen < MOE_TENANT_KEY_LEN + 1) {
        snprintf(db->err, sizeof db->err, "invalid priority or limits for tenant '%s'", t->name);
        return MOE_ERR_INVAL;
    }
    moe_status rc = MOE_OK;
    sqlite3_stmt *st = NULL;
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return db_fail(db, "begin");
    t->created = (int64_t)time(NULL);
    if (sqlite3_prepare_v2(db->db,
                           "INSERT INTO tenants(name, priority, rps, burst, tpm, concurrency, budget, created)"
                           " VALUES(?,?,?,?,?,?,?,?)",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = db_fail(db, "add");
        goto done;
    }
    sqlite3_bind_text(st, 1, t->name, -1, SQLITE_STATIC);
    bind_quota(st, 2, t);
    sqlite3_bind_int64(st, 8, t->created);
    int s = sqlite3_step(st);
    if (s == SQLITE_CONSTRAINT) {
        snprintf(db->err, sizeof db->err, "tenant '%s' already exists", t->name);
        rc = MOE_ERR_BUSY;
        goto done;
    }
    if (s != SQLITE_DONE) {
        rc = db_fail(db, "add");
        goto done;
    }
    t->id = sqlite3_last_insert_rowid(db->db);
    t->revoked = 0;
    sqlite3_finalize(st);
    st = NULL;
    uint8_t h[32];
    new_key(key, keylen);
    moe_tenant_key_hash(key, strlen(key), h);
    if (sqlite3_prepare_v2(db->db, "INSERT INTO keys(tenant_id, hash, created) VALUES(?,?,?)", -1, &st, NULL) !=
            SQLITE_OK ||
        sqlite3_bind_int64(st, 1, t->id) || sqlite3_bind_blob(st, 2, h, 32, SQLITE_TRANSIENT) ||
        sqlite3_bind_int64(st, 3, t->created) || sqlite3_step(st) != SQLITE_DONE) {
        rc = db_fail(db, "add key");
        goto done;
    }
done:
    sqlite3_finalize(st);
    if (rc == MOE_OK && sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) rc = db_fail(db, "commit");
    if (rc != MOE_OK) {
        sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
        sodium_memzero(key, keylen);
    }
    return rc;
}

#define TENANT_COLS "id, name, priority, rps, burst, tpm, concurrency, budget, revoked, created"

static void row_tenant(sqlite3_stmt *st, moe_tenant *t) {
    memset(t, 0, sizeof *t);
    t->id = sqlite3_column_int64(st, 0);
    snprintf(t->name, sizeof t->name, "%s", (const char *)sqlite3_column_text(st, 1));
    t->priority = sqlite3_column_int(st, 2);
    t->limits.rps = sqlite3_column_double(st, 3);
    t->limits.burst = sqlite3_column_double(st, 4);
    t->limits.tpm = sqlite3_column_int64(st, 5);
    t->limits.concurrency = sqlite3_column_int64(st, 6);
    t->limits.budget = sqlite3_column_int64(st, 7);
    t->revoked = sqlite3_column_int(st, 8);
    t->created = sqlite3_column_int64(st, 9);
}

moe_status moe_tenant_get(moe_tenant_db *db, const char *name, moe_tenant *out) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db, "SELECT " TENANT_COLS " FROM tenants WHERE name = ?", -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "get");
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    moe_status rc = MOE_OK;
    if (s == SQLITE_ROW) row_tenant(st, out);
    else if (s == SQLITE_DONE) {
        snprintf(db->err, sizeof db->err, "no tenant named '%.80s'", name);
        rc = MOE_ERR_NOTFOUND;
    } else rc = db_fail(db, "get");
    sqlite3_finalize(st);
    return rc;
}

/* Step `st` to its end, appending one `elem`-byte row per result (filled by `fill`) to a growing
 * malloc'd array; finalizes st. On failure *out is NULL and *n 0. */
static moe_status collect_rows(moe_tenant_db *db, sqlite3_stmt *st, size_t elem, void (*fill)(sqlite3_stmt *, void *),
                               void **out, size_t *n, const char *what) {
    size_t cap = 0;
    moe_status rc = MOE_OK;
    int s;
    *out = NULL;
    *n = 0;
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            void *nb = realloc(*out, cap * elem);
            if (!nb) {
                rc = MOE_ERR_NOMEM;
                break;
            }
            *out = nb;
        }
        void *row = (char *)*out + (*n)++ * elem;
        memset(row, 0, elem);
        fill(st, row);
    }
    if (rc == MOE_OK && s != SQLITE_DONE) rc = db_fail(db, what);
    sqlite3_finalize(st);
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

static void fill_tenant(sqlite3_stmt *st, void *row) { row_tenant(st, row); }

moe_status moe_tenant_list(moe_tenant_db *db, moe_tenant **out, size_t *n) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db, "SELECT " TENANT_COLS " FROM tenants ORDER BY name", -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "list");
    return collect_rows(db, st, sizeof **out, fill_tenant, (void **)out, n, "list");
}

static moe_status exec_named(moe_tenant_db *db, const char *sql, const char *name, const char *what) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK) return db_fail(db, what);
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? MOE_OK : db_fail(db, what);
}

moe_status moe_tenant_revoke(moe_tenant_db *db, const char *name) {
    moe_tenant t;
    moe_status rc = moe_tenant_get(db, name, &t);
    if (rc) return rc;
    if (sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) return db_fail(db, "begin");
    rc = exec_named(db, "UPDATE tenants SET revoked = 1 WHERE name = ?", name, "revoke");
    if (!rc)
        rc = exec_named(db, "UPDATE keys SET revoked = 1 WHERE tenant_id = (SELECT id FROM tenants WHERE name = ?)", name,
                        "revoke keys");
    if (!rc && sqlite3_exec(db->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) rc = db_fail(db, "commit");
    if (rc) sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

moe_status moe_tenant_update(moe_tenant_db *db, const moe_tenant *t) {
    if (t->priority < 0 || t->priority > MOE_TENANT_PRIO_MAX || !limits_ok(&t->limits)) {
        snprintf(db->err, sizeof db->err, "invalid priority or limits for tenant '%s'", t->name);
        return MOE_ERR_INVAL;
    }
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db,
                           "UPDATE tenants SET priority=?, rps=?, burst=?, tpm=?, concurrency=?, budget=? WHERE name=?",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "set-quota");
    bind_quota(st, 1, t);
    sqlite3_bind_text(st, 7, t->name, -1, SQLITE_STATIC);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    if (s != SQLITE_DONE) return db_fail(db, "set-quota");
    if (sqlite3_changes(db->db) == 0) {
        snprintf(db->err, sizeof db->err, "no tenant named '%.80s'", t->name);
        return MOE_ERR_NOTFOUND;
    }
    return MOE_OK;
}

moe_status moe_tenant_override_set(moe_tenant_db *db, const char *name, const char *model, const moe_quota_limits *l) {
    moe_tenant t;
    moe_status rc = moe_tenant_get(db, name, &t);
    if (rc) return rc;
    if (!model[0] || strlen(model) >= sizeof((moe_tenant_override *)0)->model || (l && !limits_ok(l))) {
        snprintf(db->err, sizeof db->err, "invalid model name or limits for the override");
        return MOE_ERR_INVAL;
    }
    sqlite3_stmt *st = NULL;
    const char *sql = l ? "INSERT INTO overrides(tenant_id, model, rps, burst, tpm, concurrency) VALUES(?,?,?,?,?,?)"
                          " ON CONFLICT(tenant_id, model) DO UPDATE SET rps=excluded.rps, burst=excluded.burst,"
                          " tpm=excluded.tpm, concurrency=excluded.concurrency"
                        : "DELETE FROM overrides WHERE tenant_id = ? AND model = ?";
    if (sqlite3_prepare_v2(db->db, sql, -1, &st, NULL) != SQLITE_OK) return db_fail(db, "override");
    sqlite3_bind_int64(st, 1, t.id);
    sqlite3_bind_text(st, 2, model, -1, SQLITE_STATIC);
    if (l) {
        sqlite3_bind_double(st, 3, l->rps);
        sqlite3_bind_double(st, 4, l->burst);
        sqlite3_bind_int64(st, 5, l->tpm);
        sqlite3_bind_int64(st, 6, l->concurrency);
    }
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? MOE_OK : db_fail(db, "override");
}

static void fill_override(sqlite3_stmt *st, void *row) {
    moe_tenant_override *o = row;
    o->tenant_id = sqlite3_column_int64(st, 0);
    snprintf(o->model, sizeof o->model, "%s", (const char *)sqlite3_column_text(st, 1));
    o->limits.rps = sqlite3_column_double(st, 2);
    o->limits.burst = sqlite3_column_double(st, 3);
    o->limits.tpm = sqlite3_column_int64(st, 4);
    o->limits.concurrency = sqlite3_column_int64(st, 5);
}

moe_status moe_tenant_overrides(moe_tenant_db *db, moe_tenant_override **out, size_t *n) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db, "SELECT tenant_id, model, rps, burst, tpm, concurrency FROM overrides", -1, &st,
                           NULL) != SQLITE_OK)
        return db_fail(db, "overrides");
    return collect_rows(db, st, sizeof **out, fill_override, (void **)out, n, "overrides");
}

moe_status moe_tenant_usage_add(moe_tenant_db *db, int64_t tenant_id, const char *month, int64_t requests,
                                int64_t prompt_tokens, int64_t completion_tokens, int64_t rejected) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db,
                           "INSERT INTO usage(tenant_id, month, requests, prompt_tokens, completion_tokens, rejected)"
                           " VALUES(?,?,?,?,?,?) ON CONFLICT(tenant_id, month) DO UPDATE SET"
                           " requests = requests + excluded.requests,"
                           " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                           " completion_tokens = completion_tokens + excluded.completion_tokens,"
                           " rejected = rejected + excluded.rejected",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "usage");
    sqlite3_bind_int64(st, 1, tenant_id);
    sqlite3_bind_text(st, 2, month, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, requests);
    sqlite3_bind_int64(st, 4, prompt_tokens);
    sqlite3_bind_int64(st, 5, completion_tokens);
    sqlite3_bind_int64(st, 6, rejected);
    int s = sqlite3_step(st);
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? MOE_OK : db_fail(db, "usage");
}

static void fill_usage(sqlite3_stmt *st, void *row) {
    moe_tenant_usage *u = row;
    snprintf(u->name, sizeof u->name, "%s", (const char *)sqlite3_column_text(st, 0));
    snprintf(u->month, sizeof u->month, "%s", (const char *)sqlite3_column_text(st, 1));
    u->requests = sqlite3_column_int64(st, 2);
    u->prompt_tokens = sqlite3_column_int64(st, 3);
    u->completion_tokens = sqlite3_column_int64(st, 4);
    u->rejected = sqlite3_column_int64(st, 5);
}

moe_status moe_tenant_usage_get(moe_tenant_db *db, const char *name, const char *month, moe_tenant_usage **out,
                                size_t *n) {
    *out = NULL;
    *n = 0;
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->db,
                           "SELECT t.name, u.month, u.requests, u.prompt_tokens, u.completion_tokens, u.rejected"
                           " FROM usage u JOIN tenants t ON t.id = u.tenant_id"
                           " WHERE (?1 IS NULL OR t.name = ?1) AND (?2 IS NULL OR u.month = ?2)"
                           " ORDER BY t.name, u.month",
                           -1, &st, NULL) != SQLITE_OK)
        return db_fail(db, "usage");
    if (name) sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (month) sqlite3_bind_text(st, 2, month, -1, SQLITE_STATIC);
    return collect_rows(db, st, sizeof **out, fill_usage, (void **)out, n, "usage");
}

/* For the gate: the raw handle (same thread rules). */
sqlite3 *tenant_db_handle(moe_tenant_db *db);
sqlite3 *tenant_db_handle(moe_tenant_db *db) { return db->db; }
