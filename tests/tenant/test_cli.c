/* `moe tenants` as users run it (MOE_BIN): add prints the key once, alone on the last line;
 * list/usage/set-quota/revoke; --help; user errors exit 1 with one line on stderr; the key is
 * shown by nothing else and is not in the database file. */
#include "tenant_util.h"

static char g_dir[256], g_db[300];
static const char *g_bin;

/* Run `moe tenants --db DB ARGS`; stdout and stderr into malloc'd strings. */
static int run(const char *args, char **out, char **err) {
    char cmd[2048], o[400], e[400];
    snprintf(o, sizeof o, "%s/out.txt", g_dir);
    snprintf(e, sizeof e, "%s/err.txt", g_dir);
    snprintf(cmd, sizeof cmd, "'%s' tenants --db '%s' %s >'%s' 2>'%s'", g_bin, g_db, args, o, e);
    int st = system(cmd);
    *out = tu_read_file(o, NULL);
    *err = tu_read_file(e, NULL);
    if (!*out) *out = strdup("");
    if (!*err) *err = strdup("");
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static const char *last_line(const char *s, char *buf, size_t n) {
    size_t len = strlen(s);
    while (len && s[len - 1] == '\n') len--;
    size_t b = len;
    while (b && s[b - 1] != '\n') b--;
    snprintf(buf, n, "%.*s", (int)(len - b), s + b);
    return buf;
}

int main(void) {
    g_bin = getenv("MOE_BIN");
    if (!g_bin) {
        fprintf(stderr, "MOE_BIN must point to the moe binary\n");
        return 2;
    }
    tu_tmpdir(g_dir, sizeof g_dir);
    snprintf(g_db, sizeof g_db, "%s/t.db", g_dir);
    char *o, *e, key[128], key2[128];
    int rc = run("add acme --rps 5 --burst 10 --tpm 1000 --concurrency 4 --budget 100000 --priority 3", &o, &e);
    last_line(o, key, sizeof key);
    CHECK(rc == 0 && !strncmp(key, "sk-moe-", 7) && strlen(key) == 50, "add: rc %d key '%s' stderr %s", rc, key, e);
    size_t ol = strlen(o), kl = strlen(key);
    CHECK(ol > kl + 1 && o[ol - 1] == '\n' && o[ol - kl - 2] == '\n' && !strncmp(o + ol - kl - 1, key, kl),
          "key alone on the last line:\n%s", o);
    CHECK(strstr(o, key) && strstr(strstr(o, key) + 1, key) == NULL, "the key appears once");
    free(o);
    free(e);
    rc = run("add beta", &o, &e);
    last_line(o, key2, sizeof key2);
    CHECK(rc == 0 && strcmp(key, key2) != 0, "second tenant, another key");
    free(o);
    free(e);
    rc = run("list", &o, &e);
    CHECK(rc == 0 && strstr(o, "acme") && strstr(o, "beta") && strstr(o, "active") && !strstr(o, "sk-moe-"),
          "list shows tenants, never keys:\n%s", o);
    free(o);
    free(e);
    rc = run("set-quota acme --rps 7 --model big-model --concurrency 1", &o, &e);
    CHECK(rc == 0, "override: %s", e);
    free(o);
    free(e);
    rc = run("set-quota beta --priority 0 --tpm 500", &o, &e);
    CHECK(rc == 0, "set-quota: %s", e);
    free(o);
    free(e);
    rc = run("list --json", &o, &e);
    CHECK(rc == 0 && strstr(o, "\"big-model\"") && strstr(o, "\"tpm\": 500") && strstr(o, "\"priority\": 0"),
          "json:\n%s", o);
    free(o);
    free(e);
    rc = run("usage", &o, &e);
    CHECK(rc == 0 && strstr(o, "REQUESTS"), "usage header: %s", o);
    free(o);
    free(e);
    rc = run("revoke beta", &o, &e);
    CHECK(rc == 0 && strstr(o, "revoked"), "revoke: %s", e);
    free(o);
    free(e);
    rc = run("list", &o, &e);
    CHECK(strstr(o, "revoked"), "listed as revoked");
    free(o);
    free(e);
    /* the key is not in the database (nor its -wal) */
    char wal[400];
    snprintf(wal, sizeof wal, "%s-wal", g_db);
    const char *files[2] = {g_db, wal};
    for (int f = 0; f < 2; f++) {
        size_t len = 0;
        char *d = tu_read_file(files[f], &len);
        CHECK(!d || !memmem(d, len, key + 7, strlen(key + 7)), "key found in %s", files[f]);
        free(d);
    }
    /* user errors: exit 1, one line naming the problem */
    static const struct {
        const char *args, *msg;
    } errs[] = {
        {"add acme", "already exists"},
        {"add 'bad name'", "tenant name"},
        {"add x --rps -1", "--rps"},
        {"add x --priority 10", "--priority"},
        {"add x --bogus 1", "unknown option"},
        {"revoke nobody", "no tenant named 'nobody'"},
        {"usage nobody", "no tenant named"},
        {"set-quota acme", "at least one"},
        {"frobnicate", "unknown command"},
        {"", "give a command"},
        {"usage --month 2024", "YYYY-MM"},
    };
    for (size_t i = 0; i < sizeof errs / sizeof *errs; i++) {
        rc = run(errs[i].args, &o, &e);
        CHECK(rc == 1 && strstr(e, errs[i].msg) && lines(e) == 1 && !strncmp(e, "moe tenants: ", 13),
              "'%s': rc %d stderr '%s'", errs[i].args, rc, e);
        free(o);
        free(e);
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' tenants --db '%s/missing.db' list 2>/dev/null", g_bin, g_dir);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1, "list on a missing database exits 1");
    snprintf(cmd, sizeof cmd, "'%s' tenants list 2>/dev/null", g_bin);
    st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 1, "no --db exits 1");
    snprintf(cmd, sizeof cmd, "'%s' tenants --help | grep -q 'set-quota'", g_bin);
    CHECK(system(cmd) == 0, "--help");
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd)) {
    }
    return test_done();
}
