/* moe tenants: manage tenants, API keys and quotas in the SQLite database that
 * `moe serve --tenants PATH` reads (src/server/tenant.c). Servers pick changes up within
 * about a second. `add` prints the new key once, alone on the last line of stdout: only its
 * hash is stored, so it cannot be shown again. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "cmds.h"
#include "moe/tenant.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe tenants --db PATH COMMAND ...\n\n"
            "  add NAME [QUOTA...]          create a tenant and print its API key (once, last line)\n"
            "  list [--json]                tenants, their quotas and per-model overrides\n"
            "  revoke NAME                  revoke the tenant and its keys (its requests get 401)\n"
            "  set-quota NAME [QUOTA...]    change some limits or the priority (others are kept)\n"
            "  set-quota NAME --model M [QUOTA...] [--clear]\n"
            "                               per-model override of rps/burst/tpm/concurrency (--clear removes it)\n"
            "  usage [NAME] [--month YYYY-MM] [--json]\n"
            "                               requests, tokens and refusals per tenant and month\n\n"
            "QUOTA (0 = unlimited):\n"
            "  --rps R          requests per second (token bucket refill)\n"
            "  --burst B        bucket size in requests (default max(1, R))\n"
            "  --tpm T          tokens per minute, prompt + generated\n"
            "  --concurrency C  requests running at once\n"
            "  --budget N       tokens per calendar month (UTC)\n"
            "  --priority P     scheduling class 0..%d, higher first (default %d)\n\n"
            "NAME: 1 to 63 of A-Z a-z 0-9 _ . -   The database is created by the first add.\n",
            MOE_TENANT_PRIO_MAX, MOE_TENANT_PRIO_DEFAULT);
}

/* Parse the QUOTA flags among argv[from..]; set[] marks those given. Returns the index of
 * the first unparsed argument or -1 after printing an error. */
enum { F_RPS, F_BURST, F_TPM, F_CONC, F_BUDGET, F_PRIO, F_N };
static int parse_quota(int argc, char **argv, int i, moe_tenant *t, int set[F_N], const char **model, int *clear) {
    for (; i < argc; i++) {
        const char *a = argv[i], *v;
        long long n;
        double d;
        if (!strcmp(a, "--clear") && clear) {
            *clear = 1;
            continue;
        }
        if (!strcmp(a, "--model") && model) {
            if (!(*model = cli_val("tenants", argc, argv, &i))) return -1;
            continue;
        }
        int f = !strcmp(a, "--rps")           ? F_RPS
                : !strcmp(a, "--burst")       ? F_BURST
                : !strcmp(a, "--tpm")         ? F_TPM
                : !strcmp(a, "--concurrency") ? F_CONC
                : !strcmp(a, "--budget")      ? F_BUDGET
                : !strcmp(a, "--priority")    ? F_PRIO
                                              : -1;
        if (f < 0) return cli_fail("tenants", "unknown option or argument '%s' (see moe tenants --help)", a), -1;
        if (!(v = cli_val("tenants", argc, argv, &i))) return -1;
        if (f == F_RPS || f == F_BURST) {
            if (cli_float("tenants", a, v, 0, 1e8, &d)) return -1;
            if (f == F_RPS) t->limits.rps = d;
            else t->limits.burst = d;
        } else {
            long long hi = f == F_PRIO ? MOE_TENANT_PRIO_MAX : (long long)1e15;
            if (cli_int("tenants", a, v, 0, hi, &n)) return -1;
            if (f == F_TPM) t->limits.tpm = n;
            else if (f == F_CONC) t->limits.concurrency = n;
            else if (f == F_BUDGET) t->limits.budget = n;
            else t->priority = (int32_t)n;
        }
        set[f] = 1;
    }
    return i;
}

static void lim_text(const moe_quota_limits *l, char *out, size_t n) {
    char r[32], b[32], t[32], c[32], g[32];
    if (l->rps > 0) snprintf(r, sizeof r, "%g", l->rps);
    else snprintf(r, sizeof r, "-");
    if (l->rps > 0) snprintf(b, sizeof b, "%g", l->burst > 0 ? l->burst : (l->rps > 1 ? l->rps : 1));
    else snprintf(b, sizeof b, "-");
    if (l->tpm > 0) snprintf(t, sizeof t, "%lld", (long long)l->tpm);
    else snprintf(t, sizeof t, "-");
    if (l->concurrency > 0) snprintf(c, sizeof c, "%lld", (long long)l->concurrency);
    else snprintf(c, sizeof c, "-");
    if (l->budget > 0) snprintf(g, sizeof g, "%lld", (long long)l->budget);
    else snprintf(g, sizeof g, "-");
    snprintf(out, n, "%8s %6s %10s %5s %12s", r, b, t, c, g);
}

static json_t *lim_json(const moe_quota_limits *l) {
    return json_pack("{s:f,s:f,s:I,s:I,s:I}", "rps", l->rps, "burst", l->burst, "tpm", (json_int_t)l->tpm,
                     "concurrency", (json_int_t)l->concurrency, "budget", (json_int_t)l->budget);
}

static int cmd_list(moe_tenant_db *db, int argc, char **argv, int i) {
    int as_json = 0;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) as_json = 1;
        else return cli_fail("tenants", "list: unexpected argument '%s'", argv[i]);
    }
    moe_tenant *t = NULL;
    moe_tenant_override *ov = NULL;
    size_t n = 0, n_ov = 0;
    if (moe_tenant_list(db, &t, &n) || moe_tenant_overrides(db, &ov, &n_ov)) {
        cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
        free(t);
        return 2;
    }
    if (as_json) {
        json_t *arr = json_array();
        for (size_t k = 0; k < n; k++) {
            json_t *o = json_pack("{s:s,s:I,s:s,s:i,s:o,s:I}", "name", t[k].name, "id", (json_int_t)t[k].id, "status",
                                  t[k].revoked ? "revoked" : "active", "priority", t[k].priority, "limits",
                                  lim_json(&t[k].limits), "created", (json_int_t)t[k].created);
            json_t *oo = json_object();
            for (size_t j = 0; j < n_ov; j++)
                if (ov[j].tenant_id == t[k].id) json_object_set_new(oo, ov[j].model, lim_json(&ov[j].limits));
            json_object_set_new(o, "overrides", oo);
            json_array_append_new(arr, o);
        }
        char *s = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(arr);
        if (s) printf("%s\n", s);
        free(s);
    } else {
        printf("%-24s %-8s %4s %8s %6s %10s %5s %12s  %s\n", "NAME", "STATUS", "PRIO", "RPS", "BURST", "TPM", "CONC",
               "BUDGET/MONTH", "CREATED (UTC)");
        for (size_t k = 0; k < n; k++) {
            char lt[96], when[32];
            time_t c = (time_t)t[k].created;
            struct tm tm;
            gmtime_r(&c, &tm);
            strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
            lim_text(&t[k].limits, lt, sizeof lt);
            printf("%-24s %-8s %4d %s  %s\n", t[k].name, t[k].revoked ? "revoked" : "active", t[k].priority, lt, when);
            for (size_t j = 0; j < n_ov; j++)
                if (ov[j].tenant_id == t[k].id) {
                    lim_text(&ov[j].limits, lt, sizeof lt);
                    printf("  model %-26.60s %s\n", ov[j].model, lt);
                }
        }
    }
    free(t);
    free(ov);
    return 0;
}

static int cmd_usage(moe_tenant_db *db, int argc, char **argv, int i) {
    const char *name = NULL, *month = NULL;
    int as_json = 0;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) as_json = 1;
        else if (!strcmp(argv[i], "--month")) {
            if (!(month = cli_val("tenants", argc, argv, &i))) return 1;
        } else if (argv[i][0] == '-' || name)
            return cli_fail("tenants", "usage: unexpected argument '%s'", argv[i]);
        else name = argv[i];
    }
    if (month && (strlen(month) != 7 || month[4] != '-'))
        return cli_fail("tenants", "--month expects YYYY-MM, got '%s'", month);
    moe_tenant t;
    if (name && moe_tenant_get(db, name, &t)) return cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
    moe_tenant_usage *u = NULL;
    size_t n = 0;
    if (moe_tenant_usage_get(db, name, month, &u, &n)) {
        cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
        return 2;
    }
    if (as_json) {
        json_t *arr = json_array();
        for (size_t k = 0; k < n; k++)
            json_array_append_new(arr, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "name", u[k].name, "month",
                                                 u[k].month, "requests", (json_int_t)u[k].requests, "prompt_tokens",
                                                 (json_int_t)u[k].prompt_tokens, "completion_tokens",
                                                 (json_int_t)u[k].completion_tokens, "total_tokens",
                                                 (json_int_t)(u[k].prompt_tokens + u[k].completion_tokens), "rejected",
                                                 (json_int_t)u[k].rejected));
        char *s = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(arr);
        if (s) printf("%s\n", s);
        free(s);
    } else {
        printf("%-24s %-7s %10s %14s %14s %14s %10s\n", "NAME", "MONTH", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL",
               "REJECTED");
        for (size_t k = 0; k < n; k++)
            printf("%-24s %-7s %10lld %14lld %14lld %14lld %10lld\n", u[k].name, u[k].month, (long long)u[k].requests,
                   (long long)u[k].prompt_tokens, (long long)u[k].completion_tokens,
                   (long long)(u[k].prompt_tokens + u[k].completion_tokens), (long long)u[k].rejected);
    }
    free(u);
    return 0;
}

int moe_cmd_tenants(int argc, char **argv) {
    const char *dbpath = NULL;
    int sub = -1;
    /* --db and --help anywhere; the first other non-option word is the subcommand */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--db")) {
            if (!(dbpath = cli_val("tenants", argc, argv, &i))) return 1;
            continue;
        }
        if (sub < 0 && argv[i][0] != '-') sub = i;
    }
    if (!dbpath) return cli_fail("tenants", "give the database with --db PATH (see moe tenants --help)");
    if (sub < 0) return cli_fail("tenants", "give a command: add, list, revoke, set-quota or usage");
    /* the arguments after the subcommand, without --db PATH */
    int n = 0;
    char **args = calloc((size_t)argc + 1, sizeof *args);
    if (!args) return 2;
    for (int i = sub + 1; i < argc; i++) {
        if (!strcmp(argv[i], "--db")) {
            i++;
            continue;
        }
        args[n++] = argv[i];
    }
    const char *cmd = argv[sub];
    int is_add = !strcmp(cmd, "add");
    if (!is_add && strcmp(cmd, "list") && strcmp(cmd, "revoke") && strcmp(cmd, "set-quota") && strcmp(cmd, "usage")) {
        free(args);
        return cli_fail("tenants", "unknown command '%s' (add, list, revoke, set-quota, usage)", cmd);
    }
    moe_tenant_db *db = NULL;
    char err[512];
    moe_status st = moe_tenant_db_open(dbpath, is_add, &db, err, sizeof err);
    if (st) {
        free(args);
        return cli_fail("tenants", "%s", err);
    }
    int rc = 0;
    if (!strcmp(cmd, "list")) rc = cmd_list(db, n, args, 0);
    else if (!strcmp(cmd, "usage")) rc = cmd_usage(db, n, args, 0);
    else {
        if (n < 1 || args[0][0] == '-') {
            rc = cli_fail("tenants", "%s needs a tenant NAME", cmd);
            goto done;
        }
        const char *name = args[0];
        if (!strcmp(cmd, "revoke")) {
            if (n > 1) {
                rc = cli_fail("tenants", "revoke: unexpected argument '%s'", args[1]);
                goto done;
            }
            if ((st = moe_tenant_revoke(db, name))) {
                rc = cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
                goto done;
            }
            printf("tenant %s revoked\n", name);
            goto done;
        }
        moe_tenant t = {0};
        int set[F_N] = {0}, clear = 0;
        const char *model = NULL;
        if (is_add) {
            snprintf(t.name, sizeof t.name, "%s", name);
            if (strlen(name) >= sizeof t.name || !moe_tenant_name_ok(name)) {
                rc = cli_fail("tenants", "tenant name '%.80s': use 1 to 63 of A-Z a-z 0-9 _ . -", name);
                goto done;
            }
            t.priority = MOE_TENANT_PRIO_DEFAULT;
            if (parse_quota(n, args, 1, &t, set, NULL, NULL) < 0) {
                rc = 1;
                goto done;
            }
            char key[MOE_TENANT_KEY_LEN + 1];
            if ((st = moe_tenant_add(db, &t, key, sizeof key))) {
                rc = cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
                if (st != MOE_ERR_BUSY && st != MOE_ERR_INVAL) rc = 2;
                goto done;
            }
            char lt[96];
            lim_text(&t.limits, lt, sizeof lt);
            printf("tenant %s added (id %lld, priority %d). Its API key follows; it is shown only this once:\n", t.name,
                   (long long)t.id, t.priority);
            printf("%s\n", key);
            fflush(stdout);
            memset(key, 0, sizeof key);
            goto done;
        }
        /* set-quota */
        if ((st = moe_tenant_get(db, name, &t))) {
            rc = cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
            goto done;
        }
        moe_tenant given = t;
        if (parse_quota(n, args, 1, &given, set, &model, &clear) < 0) {
            rc = 1;
            goto done;
        }
        if (model) {
            if (set[F_BUDGET] || set[F_PRIO]) {
                rc = cli_fail("tenants", "--budget and --priority belong to the tenant, not to a --model override");
                goto done;
            }
            moe_tenant_override *ov = NULL;
            size_t n_ov = 0;
            moe_quota_limits l = {0};
            if (!moe_tenant_overrides(db, &ov, &n_ov))
                for (size_t j = 0; j < n_ov; j++)
                    if (ov[j].tenant_id == t.id && !strcmp(ov[j].model, model)) l = ov[j].limits;
            free(ov);
            if (set[F_RPS]) l.rps = given.limits.rps;
            if (set[F_BURST]) l.burst = given.limits.burst;
            if (set[F_TPM]) l.tpm = given.limits.tpm;
            if (set[F_CONC]) l.concurrency = given.limits.concurrency;
            l.budget = 0;
            if ((st = moe_tenant_override_set(db, name, model, clear ? NULL : &l))) {
                rc = cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
                goto done;
            }
            printf(clear ? "tenant %s: override for model %s removed\n" : "tenant %s: override for model %s set\n",
                   name, model);
            goto done;
        }
        if (clear) {
            rc = cli_fail("tenants", "--clear needs --model M");
            goto done;
        }
        int any = 0;
        for (int f = 0; f < F_N; f++) any |= set[f];
        if (!any) {
            rc = cli_fail("tenants", "set-quota: give at least one of --rps --burst --tpm --concurrency --budget --priority");
            goto done;
        }
        if ((st = moe_tenant_update(db, &given))) {
            rc = cli_fail("tenants", "%s", moe_tenant_db_errmsg(db));
            goto done;
        }
        char lt[96];
        lim_text(&given.limits, lt, sizeof lt);
        printf("tenant %s: priority %d, rps/burst/tpm/concurrency/budget %s\n", name, given.priority, lt);
    }
done:
    moe_tenant_db_close(db);
    free(args);
    return rc;
}
