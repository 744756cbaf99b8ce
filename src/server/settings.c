/* moekit server: the settings table and what it drives (flags, YAML config, help, docs).
 *
 * Every setting is one row: name, type, bounds, default (as text), offset and size in
 * moe_server_params, reloadable, help (redis static_configs, nginx ngx_command_t). Defaults
 * go through the same parser as flag and YAML values, so a default outside its bounds fails
 * the settings unit test rather than shipping. The YAML config is one flat mapping of
 * setting: scalar; errors name the key and the line. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "moe/server.h"

#define OFF(f) offsetof(moe_server_params, f), sizeof(((moe_server_params *)0)->f)
#define I MOE_SETTING_INT
#define F MOE_SETTING_FLOAT
#define S MOE_SETTING_STRING

/* clang-format off */
static const moe_setting k_settings[] = {
    /* name                type lo    hi          default        field                   reload help */
    {"model",              S, 0, 0,             "",            OFF(model),              0, "GGUF model file (-m)"},
    {"model_name",         S, 0, 0,             "",            OFF(model_name),         0, "model id in /v1/models and responses (default: file name without .gguf)"},
    {"host",               S, 0, 0,             "127.0.0.1",   OFF(host),               0, "listen address"},
    {"port",               I, 0, 65535,         "8080",        OFF(port),               0, "TCP port (0 = any free port; the bound one is printed)"},
    {"parallel",           I, 1, 256,           "4",           OFF(parallel),           0, "sequences decoded together (slots)"},
    {"ctx",                I, 16, 1 << 24,      "4096",        OFF(ctx),                0, "tokens per sequence, prompt + generated (capped at the model's context length)"},
    {"kv_tokens",          I, 0, 1LL << 32,     "0",           OFF(kv_tokens),          0, "KV cache budget over all slots in tokens; a request reserves prompt + max_tokens and waits until they fit (0 = parallel x ctx)"},
    {"batch",              I, 1, 65536,         "512",         OFF(batch),              0, "most tokens per engine step (decode tokens + prompt chunks)"},
    {"prefill_chunk",      I, 1, 65536,         "256",         OFF(prefill_chunk),      1, "most prompt tokens of one request per step, so running streams keep flowing"},
    {"threads",            I, 0, 1024,          "0",           OFF(threads),            0, "engine threads (0 = number of CPUs)"},
    {"queue",              I, 0, 1 << 20,       "64",          OFF(queue),              1, "most requests waiting for a slot; more get 429 with Retry-After"},
    {"max_body",           I, 64, 1LL << 30,    "1048576",     OFF(max_body),           1, "bytes of a request body; more get 413"},
    {"max_prompt_tokens",  I, 0, 1 << 24,       "0",           OFF(max_prompt_tokens),  1, "most prompt tokens (0 = ctx - 1); more get 400"},
    {"max_tokens",         I, 1, 1 << 24,       "4096",        OFF(max_tokens),         1, "largest max_tokens a request may ask for (also the default, capped by ctx)"},
    {"max_connections",    I, 1, 65536,         "256",         OFF(max_connections),    0, "open HTTP connections (one thread each)"},
    {"connection_timeout", I, 1, 86400,         "60",          OFF(connection_timeout), 0, "seconds an idle or stalled connection is kept"},
    {"retry_after",        I, 0, 3600,          "1",           OFF(retry_after),        1, "seconds in the Retry-After header of a 429"},
    {"shutdown_timeout",   F, 0, 86400,         "30",          OFF(shutdown_timeout),   1, "seconds SIGTERM waits for running requests before cancelling them"},
    {"chat_template",      S, 0, 0,             "",            OFF(chat_template),      0, "chat template: empty = the model's tokenizer.chat_template, or deepseek2 / deepseek3"},
    {"access_log",         S, 0, 0,             "-",           OFF(access_log),         0, "JSON-lines access log: - = stderr, empty = off, else a file (appended)"},
    /* tenants (issue 9; docs/tenants.md) */
    {"tenants",            S, 0, 0,             "",            OFF(tenants),            0, "tenants database (moe tenants --db PATH): API keys required, per-tenant quotas and priorities; empty = open server"},
    {"quota_backend",      S, 0, 0,             "local",       OFF(quota_backend),      0, "quota counters: local (this process) or redis://HOST:PORT (shared by replicas)"},
    {"quota_fail",         S, 0, 0,             "closed",      OFF(quota_fail),         0, "when Redis is unreachable: open = admit without quota checks, closed = refuse with 503"},
    {"priority_aging",     F, 0.001, 86400,     "5",           OFF(priority_aging),     0, "seconds of queueing worth one priority class (no class starves)"},
    {"tenant_metrics",     I, 0, 10000,         "32",          OFF(tenant_metrics),     0, "tenants with their own metrics label; the rest are tenant=\"other\""},
    {"admin_tenant",       S, 0, 0,             "",            OFF(admin_tenant),       0, "with tenants: the tenant whose keys may read /metrics and /admin/config (empty = none)"},
    {"admin_loopback",     I, 0, 1,             "1",           OFF(admin_loopback),     0, "with tenants: 1 = clients on 127.0.0.1/::1 may read /metrics and /admin/config without a key"},
};
/* clang-format on */
#undef I
#undef F
#undef S

const moe_setting *moe_server_settings(size_t *n) {
    if (n) *n = sizeof k_settings / sizeof k_settings[0];
    return k_settings;
}

static void set_err(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t n, const char *fmt, ...) {
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static const moe_setting *find(const char *name) {
    for (size_t i = 0; i < sizeof k_settings / sizeof k_settings[0]; i++)
        if (!strcmp(k_settings[i].name, name)) return &k_settings[i];
    return NULL;
}

static moe_status set_one(moe_server_params *p, const moe_setting *s, const char *v, char *err,
                          size_t errlen) {
    char *field = (char *)p + s->offset;
    char *end;
    switch (s->type) {
    case MOE_SETTING_INT: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end || (double)x < s->lo || (double)x > s->hi) {
            set_err(err, errlen, "%s expects an integer in [%.0f, %.0f], got '%s'", s->name, s->lo, s->hi, v);
            return MOE_ERR_INVAL;
        }
        int64_t y = x;
        memcpy(field, &y, sizeof y);
        return MOE_OK;
    }
    case MOE_SETTING_FLOAT: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) || x < s->lo || x > s->hi) {
            set_err(err, errlen, "%s expects a number in [%g, %g], got '%s'", s->name, s->lo, s->hi, v);
            return MOE_ERR_INVAL;
        }
        memcpy(field, &x, sizeof x);
        return MOE_OK;
    }
    case MOE_SETTING_STRING: {
        size_t len = strlen(v);
        if (len >= s->size) {
            set_err(err, errlen, "%s is longer than %zu bytes", s->name, s->size - 1);
            return MOE_ERR_INVAL;
        }
        memcpy(field, v, len + 1);
        return MOE_OK;
    }
    }
    return MOE_ERR_INTERNAL;
}

moe_status moe_server_setting_set(moe_server_params *p, const char *name, const char *value,
                                  char *err, size_t errlen) {
    if (!p || !name || !value) return MOE_ERR_INVAL;
    const moe_setting *s = find(name);
    if (!s) {
        set_err(err, errlen, "unknown setting '%s'", name);
        return MOE_ERR_NOTFOUND;
    }
    return set_one(p, s, value, err, errlen);
}

moe_server_params moe_server_default_params(void) {
    moe_server_params p;
    memset(&p, 0, sizeof p);
    for (size_t i = 0; i < sizeof k_settings / sizeof k_settings[0]; i++)
        (void)set_one(&p, &k_settings[i], k_settings[i].def, NULL, 0);
    return p;
}

moe_status moe_server_config_load_mem(moe_server_params *p, const char *yaml, size_t len,
                                      int only_reloadable, char *err, size_t errlen) {
    yaml_parser_t parser;
    yaml_document_t doc;
    moe_status st = MOE_OK;
    if (!p || (!yaml && len)) return MOE_ERR_INVAL;
    if (!yaml_parser_initialize(&parser)) return MOE_ERR_NOMEM;
    yaml_parser_set_input_string(&parser, (const unsigned char *)(yaml ? yaml : ""), len);
    if (!yaml_parser_load(&parser, &doc)) {
        set_err(err, errlen, "config: line %zu: %s", parser.problem_mark.line + 1,
                parser.problem ? parser.problem : "malformed YAML");
        yaml_parser_delete(&parser);
        return MOE_ERR_FORMAT;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) goto done; /* empty file: nothing to set */
    if (root->type != YAML_MAPPING_NODE) {
        set_err(err, errlen, "config: line %zu: expected a mapping of setting: value", root->start_mark.line + 1);
        st = MOE_ERR_FORMAT;
        goto done;
    }
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
        yaml_node_t *v = yaml_document_get_node(&doc, pr->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE) {
            set_err(err, errlen, "config: line %zu: keys must be setting names", k ? k->start_mark.line + 1 : 0);
            st = MOE_ERR_FORMAT;
            goto done;
        }
        const char *key = (const char *)k->data.scalar.value;
        const moe_setting *s = find(key);
        if (!s) {
            set_err(err, errlen, "config: line %zu: unknown setting '%s'", k->start_mark.line + 1, key);
            st = MOE_ERR_NOTFOUND;
            goto done;
        }
        if (v->type != YAML_SCALAR_NODE) {
            set_err(err, errlen, "config: line %zu: %s needs a single value", v->start_mark.line + 1, key);
            st = MOE_ERR_FORMAT;
            goto done;
        }
        if (strlen((const char *)v->data.scalar.value) != v->data.scalar.length) {
            set_err(err, errlen, "config: line %zu: %s contains a NUL byte", v->start_mark.line + 1, key);
            st = MOE_ERR_FORMAT;
            goto done;
        }
        if (only_reloadable && !s->reloadable) continue;
        char msg[256];
        if ((st = set_one(p, s, (const char *)v->data.scalar.value, msg, sizeof msg)) != MOE_OK) {
            set_err(err, errlen, "config: line %zu: %s", v->start_mark.line + 1, msg);
            goto done;
        }
    }
done:
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return st;
}

moe_status moe_server_config_load(moe_server_params *p, const char *path, int only_reloadable,
                                  char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "config: cannot open '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        if (cap >= (1u << 24)) { /* a settings file is small; refuse a runaway one */
            free(buf);
            fclose(f);
            set_err(err, errlen, "config: '%s' is larger than 16 MiB", path);
            return MOE_ERR_FORMAT;
        }
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (!buf) return MOE_ERR_NOMEM;
    moe_status st = moe_server_config_load_mem(p, buf, n, only_reloadable, err, errlen);
    if (st != MOE_OK && err && errlen && strncmp(err, "config: ", 8) == 0) {
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s: %s", path, err + 8);
        set_err(err, errlen, "config: %s", tmp);
    }
    free(buf);
    return st;
}

static void flag_name(const char *name, char *out, size_t n) {
    size_t i = 0;
    for (; name[i] && i + 1 < n; i++) out[i] = name[i] == '_' ? '-' : name[i];
    out[i] = 0;
}

static const char *type_name(moe_setting_type t) {
    return t == MOE_SETTING_INT ? "int" : t == MOE_SETTING_FLOAT ? "number" : "string";
}

void moe_server_settings_doc(FILE *f, int markdown) {
    size_t n;
    const moe_setting *s = moe_server_settings(&n);
    if (markdown) {
        fprintf(f, "| setting (YAML key) | flag | type | bounds | default | reloadable | meaning |\n");
        fprintf(f, "|---|---|---|---|---|---|---|\n");
    }
    for (size_t i = 0; i < n; i++) {
        char flag[64], bounds[64] = "";
        flag_name(s[i].name, flag, sizeof flag);
        if (s[i].type == MOE_SETTING_INT) snprintf(bounds, sizeof bounds, "%.0f..%.0f", s[i].lo, s[i].hi);
        else if (s[i].type == MOE_SETTING_FLOAT) snprintf(bounds, sizeof bounds, "%g..%g", s[i].lo, s[i].hi);
        else snprintf(bounds, sizeof bounds, "<= %zu bytes", s[i].size - 1);
        if (markdown)
            fprintf(f, "| `%s` | `--%s` | %s | %s | %s%s%s | %s | %s |\n", s[i].name, flag, type_name(s[i].type),
                    bounds, s[i].def[0] ? "`" : "", s[i].def[0] ? s[i].def : "(empty)", s[i].def[0] ? "`" : "",
                    s[i].reloadable ? "yes" : "no", s[i].help);
        else
            fprintf(f, "  --%-20s %s (%s %s, default '%s'%s)\n", flag, s[i].help, type_name(s[i].type), bounds,
                    s[i].def, s[i].reloadable ? ", reloadable" : "");
    }
}
