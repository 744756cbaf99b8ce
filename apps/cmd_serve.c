/* moe serve: the OpenAI-compatible server (src/server). Settings come from the table in
 * src/server/settings.c: defaults, then --config FILE (YAML), then flags. SIGTERM/SIGINT drain
 * (stop accepting, finish or time out running requests, exit 0); SIGHUP re-reads the config
 * file and applies its reloadable settings. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/server.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe serve -m MODEL [--config moe.yaml] [--host H] [--port P] [--SETTING VALUE ...]\n\n"
            "OpenAI-compatible HTTP server: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,\n"
            "/health, /ready, /metrics (Prometheus). Flags override the config file; SIGTERM drains and exits 0,\n"
            "SIGHUP reloads the config's reloadable settings. Settings (YAML key = flag without dashes):\n"
            "  -m MODEL                  same as --model\n"
            "  --config FILE             YAML mapping of setting: value\n");
    moe_server_settings_doc(f, 0);
    fprintf(f, "  --settings-markdown       print the settings table as markdown (docs/server.md) and exit\n");
}

/* "--max-body" → "max_body" */
static int flag_to_name(const char *a, char *out, size_t n) {
    if (strncmp(a, "--", 2) != 0 || strlen(a + 2) >= n) return -1;
    size_t i = 0;
    for (const char *p = a + 2; *p; p++) out[i++] = *p == '-' ? '_' : *p;
    out[i] = 0;
    return 0;
}

int moe_cmd_serve(int argc, char **argv) {
    const char *config = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(argv[i], "--settings-markdown")) {
            moe_server_settings_doc(stdout, 1);
            return 0;
        }
        if (!strcmp(argv[i], "--config")) {
            if (!(config = cli_val("serve", argc, argv, &i))) return 1;
        }
    }
    moe_server_params p = moe_server_default_params();
    char err[512];
    if (config && moe_server_config_load(&p, config, 0, err, sizeof err)) return cli_fail("serve", "%s", err);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        char name[64];
        if (!strcmp(a, "--config")) {
            i++;
            continue;
        }
        if (!(v = cli_val("serve", argc, argv, &i))) return 1;
        if (!strcmp(a, "-m")) a = "--model";
        if (flag_to_name(a, name, sizeof name))
            return cli_fail("serve", "unknown option '%s' (see moe serve --help)", a);
        moe_status st = moe_server_setting_set(&p, name, v, err, sizeof err);
        if (st == MOE_ERR_NOTFOUND) return cli_fail("serve", "unknown option '%s' (see moe serve --help)", a);
        if (st) return cli_fail("serve", "%s", err);
    }
    if (!p.model[0]) return cli_fail("serve", "give the model with -m MODEL.gguf (or model: in the config)");

    /* every thread inherits this mask; the main thread takes the signals with sigwait */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    moe_server *s = NULL;
    moe_status st = moe_server_start(&p, &s, err, sizeof err);
    if (st) {
        cli_fail("serve", "%s", err);
        return st == MOE_ERR_NOMEM || st == MOE_ERR_INTERNAL ? 2 : 1;
    }
    fprintf(stderr, "moe serve: listening on http://%s:%d (model %s, parallel %lld, ctx %lld, batch %lld)\n", p.host,
            moe_server_port(s), moe_server_model_name(s), (long long)p.parallel, (long long)p.ctx, (long long)p.batch);
    for (;;) {
        int sig = 0;
        if (sigwait(&set, &sig)) continue;
        if (sig == SIGHUP) {
            if (!config) {
                fprintf(stderr, "moe serve: SIGHUP: no --config file to reload\n");
                continue;
            }
            moe_server_params np = p;
            if (moe_server_config_load(&np, config, 1, err, sizeof err)) {
                fprintf(stderr, "moe serve: reload failed, settings unchanged: %s\n", err);
                continue;
            }
            p = np;
            moe_server_reload(s, &p);
            fprintf(stderr, "moe serve: reloaded %s\n", config);
            continue;
        }
        break;
    }
    fprintf(stderr, "moe serve: draining (up to %g s)\n", p.shutdown_timeout);
    int cancelled = moe_server_drain(s);
    moe_server_free(s);
    fprintf(stderr, "moe serve: stopped (%d request%s cancelled at the deadline)\n", cancelled, cancelled == 1 ? "" : "s");
    return 0;
}
