/* moekit: the OpenAI-compatible HTTP server (`moe serve`).
 *
 * One moe_server serves one model: HTTP threads (libmicrohttpd, one per connection) parse and
 * validate requests, tokenize, and queue them; one engine thread owns the model's moe_engine
 * and all sequences and runs continuous-batching steps (decode tokens of running requests plus
 * bounded prompt chunks of new ones). Text flows back to the HTTP threads through per-request
 * buffers. HTTP threads never touch model weights or KV caches.
 *
 * Settings live in one table (moe_server_settings): name, type, bounds, default, offset in
 * moe_server_params, and whether a running server may reload it. The table drives the YAML
 * config, the command-line flags (--name-with-dashes VALUE), `moe serve --help` and
 * docs/server.md. */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Every server setting (see the table in src/server/settings.c for bounds and defaults). */
typedef struct moe_server_params {
    char model[1024];            /* GGUF path */
    char model_name[256];        /* id in /v1/models and responses ("" = file name) */
    char host[256];              /* listen address */
    int64_t port;                /* 0 = any free port (printed at start) */
    int64_t parallel;            /* sequences decoded together (slots) */
    int64_t ctx;                 /* tokens per sequence (prompt + generated) */
    int64_t kv_tokens;           /* KV cache budget over all slots, tokens (0 = parallel × ctx) */
    int64_t batch;               /* most tokens per engine step */
    int64_t prefill_chunk;       /* most prompt tokens of one request per step */
    int64_t threads;             /* engine threads (0 = CPUs) */
    int64_t queue;               /* most waiting requests; more get 429 */
    int64_t max_body;            /* bytes of a request body; more get 413 */
    int64_t max_prompt_tokens;   /* 0 = ctx − 1 */
    int64_t max_tokens;          /* largest max_tokens a request may ask for */
    int64_t max_connections;     /* open HTTP connections */
    int64_t connection_timeout;  /* seconds an idle connection is kept */
    int64_t retry_after;         /* seconds, Retry-After of a 429 */
    double shutdown_timeout;     /* seconds SIGTERM waits for running requests */
    char chat_template[256];     /* "" = the model's, or deepseek2 / deepseek3 */
    char access_log[1024];       /* JSON lines: "-" = stderr, "" = off, else a file (appended) */
    /* tenants (issue 9; docs/tenants.md) */
    char tenants[1024];          /* tenants database; "" = open server, no API keys */
    char quota_backend[256];     /* "local" or "redis://HOST:PORT" */
    char quota_fail[16];         /* Redis unreachable: "open" or "closed" */
    double priority_aging;       /* seconds of waiting worth one priority class */
    int64_t tenant_metrics;      /* tenants with their own metrics label */
    char admin_tenant[64];       /* with tenants: whose keys may read /metrics and /admin/config */
    int64_t admin_loopback;      /* with tenants: 1 = loopback clients may too, without a key */
} moe_server_params;

typedef enum moe_setting_type {
    MOE_SETTING_INT = 1,    /* int64_t */
    MOE_SETTING_FLOAT = 2,  /* double */
    MOE_SETTING_STRING = 3, /* char[size] */
} moe_setting_type;

/* One row of the settings table. */
typedef struct moe_setting {
    const char *name;       /* YAML key; the flag is --name with '_' → '-' */
    moe_setting_type type;
    double lo, hi;          /* bounds (INT, FLOAT); STRING: most bytes is size − 1 */
    const char *def;        /* default, as text (parsed like a flag value) */
    size_t offset, size;    /* field in moe_server_params */
    int reloadable;         /* SIGHUP re-reads the config file and applies it */
    const char *help;
} moe_setting;

/* The table (static; *n receives its length). Thread-safe. */
const moe_setting *moe_server_settings(size_t *n);
/* Every field at its default. */
moe_server_params moe_server_default_params(void);
/* Set one setting from text ("8080", "0.5", "path"). MOE_ERR_NOTFOUND for an unknown name,
 * MOE_ERR_INVAL for a bad value; err names the setting, the bounds and the value. */
moe_status moe_server_setting_set(moe_server_params *p, const char *name, const char *value,
                                  char *err, size_t errlen);
/* Apply a YAML mapping (setting: value, one level) from a file or memory. Unknown keys, wrong
 * types and values out of bounds are errors naming the key and line. only_reloadable: skip
 * (and do not reject) settings that cannot change while running. */
moe_status moe_server_config_load(moe_server_params *p, const char *path, int only_reloadable,
                                  char *err, size_t errlen);
moe_status moe_server_config_load_mem(moe_server_params *p, const char *yaml, size_t len,
                                      int only_reloadable, char *err, size_t errlen);
/* Write the settings as command-line help (markdown = 0) or a markdown table (markdown = 1). */
void moe_server_settings_doc(FILE *f, int markdown);

typedef struct moe_server moe_server;

/* Open the model, size the KV budget, start the engine thread and listen. On failure *out is
 * NULL and err holds one line (MOE_ERR_IO: cannot bind or open; MOE_ERR_INVAL: settings). */
moe_status moe_server_start(const moe_server_params *p, moe_server **out, char *err,
                            size_t errlen);
/* The bound TCP port, and the model id the server answers to. */
int moe_server_port(const moe_server *s);
const char *moe_server_model_name(const moe_server *s);
/* Apply the reloadable settings of p (thread-safe). */
void moe_server_reload(moe_server *s, const moe_server_params *p);
/* Graceful stop: refuse new requests (503, /ready false), let running ones finish for up to
 * shutdown_timeout seconds, then cancel what is left. Blocks; returns the number cancelled. */
int moe_server_drain(moe_server *s);
/* Stop listening, join the threads, free everything (NULL is allowed). */
void moe_server_free(moe_server *s);

#ifdef __cplusplus
}
#endif
#endif
