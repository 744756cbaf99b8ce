/* moe experts stats: exact counts and co-activation on a model whose routing is known by
 * construction (experts_fixture.h), through the library (per-token and batched) and through
 * the CLI on text and JSONL data; the summary maths on hand-made counts; JSON round trip;
 * Prometheus text parsing; --from-metrics over HTTP from a responder thread on 127.0.0.1. */
#include <arpa/inet.h>
#include <math.h>
#include <poll.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "experts_fixture.h"
#include "moe/experts.h"
#include "moe/model.h"
#include "moe/tok.h"
#include "testutil.h"

static char g_dir[512], g_model[1024];

/* expected selections of token v in layer l (fixture: classes c = v mod E, offset 2(l − Ld)) */
static void expect_add(moe_experts_stats *x, int32_t l, int32_t Ld, int32_t v) {
    const int32_t E = x->n_expert, c = v % E, o = 2 * (l - Ld);
    int32_t sel[2] = {(c + o) % E, (c + o + 1) % E};
    moe_experts_stats_add(x, l, sel, NULL, 2);
}

static void expected_for(moe_experts_stats *x, const moe_hparams *hp, const int32_t *ids, size_t n) {
    moe_experts_stats_init(x, hp->n_layer, hp->n_expert);
    for (size_t t = 0; t < n; t++)
        for (int32_t l = hp->n_layer_dense_lead; l < hp->n_layer; l++) expect_add(x, l, hp->n_layer_dense_lead, ids[t]);
    x->n_tokens = n;
}

static int same_counts(const moe_experts_stats *a, const moe_experts_stats *b, int coact) {
    size_t LE = (size_t)a->n_layer * a->n_expert;
    if (a->n_layer != b->n_layer || a->n_expert != b->n_expert) return 0;
    if (memcmp(a->count, b->count, LE * sizeof *a->count)) return 0;
    if (memcmp(a->is_moe, b->is_moe, (size_t)a->n_layer)) return 0;
    return !coact || !memcmp(a->coact, b->coact, LE * a->n_expert * sizeof *a->coact);
}

static void test_library(void) {
    char err[512];
    moe_model *m;
    CHECK(moe_model_open(g_model, &m, err, sizeof err) == MOE_OK, "open: %s", err);
    const moe_hparams *hp = moe_model_hparams(m);
    enum { T = 60 };
    int32_t tok[T];
    /* a skewed token mix: classes 0 and 3 dominate */
    for (int i = 0; i < T; i++) tok[i] = (int32_t)((i % 3 ? 8 * (i % 7) : 3 + 8 * i) % hp->n_vocab);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 128;
    p.n_threads = 2;
    moe_ctx *c;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "ctx: %s", err);
    moe_experts_stats got, exp, bat;
    moe_experts_stats_init(&got, hp->n_layer, hp->n_expert);
    CHECK(moe_experts_collect(c, m, tok, T, 1, &got) == MOE_OK, "collect per token");
    expected_for(&exp, hp, tok, T);
    CHECK(got.n_tokens == T && got.has_coact && got.has_mass, "tokens %llu", (unsigned long long)got.n_tokens);
    CHECK(same_counts(&got, &exp, 1), "per-token counts and co-activation equal the constructed routing");
    for (int32_t e = 0; e < hp->n_expert; e++)
        printf("layer 1 expert %d: %llu (expected %llu)  layer 2: %llu (expected %llu)\n", e,
               (unsigned long long)got.count[1 * 8 + e], (unsigned long long)exp.count[1 * 8 + e],
               (unsigned long long)got.count[2 * 8 + e], (unsigned long long)exp.count[2 * 8 + e]);
    CHECK(!got.is_moe[0] && got.is_moe[1] && got.is_moe[2], "dense layer 0 not reported");
    /* routing-weight mass (from the engine's routing observer): only selected experts carry it */
    double mass_sum = 0;
    int mass_ok = 1;
    for (int32_t l = 1; l < hp->n_layer; l++)
        for (int32_t e = 0; e < hp->n_expert; e++) {
            double w = got.mass[(size_t)l * (size_t)hp->n_expert + (size_t)e];
            mass_sum += w;
            mass_ok &= got.count[(size_t)l * (size_t)hp->n_expert + (size_t)e] ? w > 0 : w == 0;
        }
    CHECK(mass_ok && mass_sum > 0, "weight mass on exactly the selected experts (sum %.3f)", mass_sum);
    /* batched: the observer sees every token, so the same counts, co-activation and mass */
    moe_ctx_truncate(c, 0);
    moe_experts_stats_init(&bat, hp->n_layer, hp->n_expert);
    CHECK(moe_experts_collect(c, m, tok, T, 0, &bat) == MOE_OK, "collect batched");
    CHECK(same_counts(&bat, &exp, 1) && bat.has_coact && bat.has_mass, "batched counts and co-activation equal");
    double md = 0;
    for (size_t i = 0; i < (size_t)hp->n_layer * (size_t)hp->n_expert; i++) md = fmax(md, fabs(bat.mass[i] - got.mass[i]));
    CHECK(md < 1e-4, "batched mass equals per-token mass (max |d| %.2e)", md);
    /* summaries follow the counts */
    moe_experts_layer_summary sm;
    int32_t ord[8];
    CHECK(moe_experts_summarize(&got, 1, &sm, ord) == MOE_OK, "summarize");
    CHECK(sm.n_select == 2 * T, "n_select %llu", (unsigned long long)sm.n_select);
    for (int i = 1; i < 8; i++) CHECK(got.count[8 + ord[i - 1]] >= got.count[8 + ord[i]], "order by count");
    CHECK(moe_experts_summarize(&got, 0, &sm, NULL) == MOE_ERR_INVAL, "dense layer has no summary");
    /* JSON round trip */
    char path[1024];
    snprintf(path, sizeof path, "%s/lib.json", g_dir);
    CHECK(moe_experts_write_json(&got, "routed", path, err, sizeof err) == MOE_OK, "write json: %s", err);
    moe_experts_stats back;
    CHECK(moe_experts_read_json(path, &back, err, sizeof err) == MOE_OK, "read json: %s", err);
    CHECK(same_counts(&back, &got, 1) && back.has_coact && back.has_mass && back.n_tokens == T, "json round trip");
    moe_experts_stats_free(&back);
    moe_experts_stats_free(&got);
    moe_experts_stats_free(&exp);
    moe_experts_stats_free(&bat);
    moe_ctx_free(c);
    moe_model_close(m);
}

static void test_summary_math(void) {
    moe_experts_stats s;
    moe_experts_stats_init(&s, 1, 8);
    s.is_moe[0] = 1;
    uint64_t c[8] = {6, 2, 1, 1, 0, 0, 0, 0};
    memcpy(s.count, c, sizeof c);
    moe_experts_layer_summary sm;
    int32_t ord[8];
    moe_experts_summarize(&s, 0, &sm, ord);
    double mean = 10.0 / 8, var = 0, h = 0;
    for (int e = 0; e < 8; e++) {
        var += (c[e] - mean) * (c[e] - mean) / 8;
        if (c[e]) h -= c[e] / 10.0 * log2(c[e] / 10.0);
    }
    CHECK(fabs(sm.max_over_mean - 4.8) < 1e-12, "max/mean %g", sm.max_over_mean);
    CHECK(fabs(sm.cv - sqrt(var) / mean) < 1e-12, "cv %g", sm.cv);
    CHECK(fabs(sm.entropy - h) < 1e-12 && fabs(sm.entropy_norm - h / 3) < 1e-12, "entropy %g", sm.entropy);
    CHECK(sm.idle_fraction == 0.5, "idle %g", sm.idle_fraction);
    CHECK(sm.cover[0] == 1 && sm.cover[1] == 3 && sm.cover[2] == 4, "cover %d %d %d", sm.cover[0], sm.cover[1],
          sm.cover[2]);
    CHECK(ord[0] == 0 && ord[1] == 1 && ord[2] == 2 && ord[3] == 3 && ord[4] == 4, "ties by lower index");
    /* with routing weights the coverage follows the weight mass */
    s.has_mass = 1;
    double w[8] = {1, 1, 1, 7, 0, 0, 0, 0};
    memcpy(s.mass, w, sizeof w);
    moe_experts_summarize(&s, 0, &sm, ord);
    CHECK(ord[0] == 3 && sm.cover[0] == 1 && sm.cover[1] == 3, "weight mass coverage %d %d", ord[0], sm.cover[1]);
    moe_experts_stats_free(&s);
}

/* CLI on text and JSONL: counts equal the expected routing of the tokenizer's ids */
static void test_cli(void) {
    const char *bin = getenv("MOE_BIN");
    CHECK(bin != NULL, "MOE_BIN set");
    if (!bin) return;
    char err[512], txt[1024], jsl[1024], js[1024], cmd[4096];
    snprintf(txt, sizeof txt, "%s/data.txt", g_dir);
    snprintf(jsl, sizeof jsl, "%s/data.jsonl", g_dir);
    snprintf(js, sizeof js, "%s/cli.json", g_dir);
    const char *text = "Mixture-of-experts models route each token to a few experts. Which ones work?\n";
    const char *docs[2] = {"first document: hello experts", "second one, with digits 12345"};
    FILE *f = fopen(txt, "w");
    fputs(text, f);
    fclose(f);
    f = fopen(jsl, "w");
    fprintf(f, "{\"text\": \"%s\"}\n\n{\"text\": \"%s\"}\n", docs[0], docs[1]);
    fclose(f);
    moe_model *m;
    moe_tok *tok;
    CHECK(moe_model_open(g_model, &m, err, sizeof err) == MOE_OK, "open");
    CHECK(moe_tok_init_from_gguf(moe_model_gguf(m), &tok, err, sizeof err) == MOE_OK, "tok: %s", err);
    const moe_hparams *hp = moe_model_hparams(m);
    /* text */
    int32_t *ids;
    size_t n;
    moe_tok_encode(tok, text, strlen(text), 1, 0, &ids, &n);
    moe_experts_stats exp, got;
    expected_for(&exp, hp, ids, n);
    free(ids);
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s --data %s --json %s > %s/out.txt", bin, g_model, txt, js, g_dir);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    CHECK(moe_experts_read_json(js, &got, err, sizeof err) == MOE_OK, "read: %s", err);
    CHECK(same_counts(&got, &exp, 1) && got.n_tokens == n, "CLI text counts (%zu tokens)", n);
    moe_experts_stats_free(&got);
    moe_experts_stats_free(&exp);
    /* jsonl: two sequences */
    moe_experts_stats_init(&exp, hp->n_layer, hp->n_expert);
    size_t total = 0;
    for (int d = 0; d < 2; d++) {
        moe_tok_encode(tok, docs[d], strlen(docs[d]), 1, 0, &ids, &n);
        for (size_t t = 0; t < n; t++)
            for (int32_t l = hp->n_layer_dense_lead; l < hp->n_layer; l++) expect_add(&exp, l, hp->n_layer_dense_lead, ids[t]);
        total += n;
        free(ids);
    }
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s --data %s --json %s --batched > %s/out.txt", bin, g_model, jsl,
             js, g_dir);
    CHECK(fx_sh(cmd) == 0, "%s", cmd);
    CHECK(moe_experts_read_json(js, &got, err, sizeof err) == MOE_OK, "read: %s", err);
    CHECK(same_counts(&got, &exp, 1) && got.n_tokens == total && got.has_coact && got.has_mass, "CLI jsonl --batched: counts, co-activation, mass (%zu tokens)", total);
    moe_experts_stats_free(&got);
    moe_experts_stats_free(&exp);
    /* --max-tokens caps what is read */
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s --data %s --max-tokens 5 --json %s > %s/out.txt", bin, g_model,
             txt, js, g_dir);
    CHECK(fx_sh(cmd) == 0, "max-tokens");
    CHECK(moe_experts_read_json(js, &got, err, sizeof err) == MOE_OK && got.n_tokens == 5, "5 tokens");
    moe_experts_stats_free(&got);
    /* user errors exit 1 */
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s 2>/dev/null", bin, g_model);
    CHECK(fx_sh(cmd) == 1, "missing --data is a user error");
    snprintf(cmd, sizeof cmd, "%s experts stats -m %s --data %s/nope.txt 2>/dev/null", bin, g_model, g_dir);
    CHECK(fx_sh(cmd) == 1, "missing data file");
    moe_tok_free(tok);
    moe_model_close(m);
}

static const char k_metrics[] =
    "# HELP moe_expert_tokens_total Tokens routed to each expert.\n"
    "# TYPE moe_expert_tokens_total counter\n"
    "moe_expert_tokens_total{layer=\"1\",expert=\"0\"} 10\n"
    "moe_expert_tokens_total{expert=\"1\",layer=\"1\"} 30\n"
    "moe_expert_tokens_total{layer=\"1\",expert=\"3\",replica=\"a\"} 5\n"
    "moe_expert_tokens_total{layer=\"1\",expert=\"3\",replica=\"b\"} 7\n"
    "moe_expert_tokens_total{layer=\"2\",expert=\"3\"} 1.2e+01\n"
    "moe_requests_total 99\n"
    "moe_expert_tokens_total_created{layer=\"1\",expert=\"0\"} 1.7e9\n";

static void check_metrics_stats(const moe_experts_stats *s, const char *what) {
    CHECK(s->n_layer == 3 && s->n_expert == 4, "%s: dims %d × %d", what, s->n_layer, s->n_expert);
    if (s->n_layer != 3 || s->n_expert != 4) return;
    CHECK(!s->is_moe[0] && s->is_moe[1] && s->is_moe[2], "%s: layers", what);
    CHECK(s->count[4 + 0] == 10 && s->count[4 + 1] == 30 && s->count[4 + 2] == 0 && s->count[4 + 3] == 12,
          "%s: layer 1 counts %llu %llu %llu %llu", what, (unsigned long long)s->count[4], (unsigned long long)s->count[5],
          (unsigned long long)s->count[6], (unsigned long long)s->count[7]);
    CHECK(s->count[8 + 3] == 12, "%s: layer 2", what);
}

static void test_metrics_parse(void) {
    char err[512];
    moe_experts_stats s;
    CHECK(moe_experts_parse_metrics(k_metrics, strlen(k_metrics), &s, err, sizeof err) == MOE_OK, "parse: %s", err);
    check_metrics_stats(&s, "parse");
    moe_experts_layer_summary sm;
    moe_experts_summarize(&s, 1, &sm, NULL);
    CHECK(sm.n_select == 52 && sm.cover[0] == 1, "metrics summary");
    moe_experts_stats_free(&s);
    const char *bad[] = {"moe_requests_total 3\n", "moe_expert_tokens_total{layer=\"1\"} 3\n",
                         "moe_expert_tokens_total{layer=\"1\",expert=\"x\"} 3\n",
                         "moe_expert_tokens_total{layer=\"1\",expert=\"2\"} -3\n",
                         "moe_expert_tokens_total{layer=\"1\",expert=\"2\"}\n",
                         "moe_expert_tokens_total{layer=\"1,expert=\"2\"} 4\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        CHECK(moe_experts_parse_metrics(bad[i], strlen(bad[i]), &s, err, sizeof err) == MOE_ERR_FORMAT && err[0],
              "bad metrics %zu refused", i);
    }
}

/* ---- a one-shot-per-connection HTTP responder on 127.0.0.1 ---- */
typedef struct {
    int fd, n_serve;
} server;

static void *serve(void *ud) {
    server *sv = ud;
    for (int k = 0; k < sv->n_serve; k++) {
        /* give up after 20 s without a client, so a failing CLI cannot hang the test */
        struct pollfd pf = {sv->fd, POLLIN, 0};
        if (poll(&pf, 1, 20000) <= 0) break;
        int c = accept(sv->fd, NULL, NULL);
        if (c < 0) break;
        char req[4096];
        ssize_t got = 0, r;
        while (got < (ssize_t)sizeof req - 1 && (r = read(c, req + got, sizeof req - 1 - (size_t)got)) > 0) {
            got += r;
            req[got] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        char head[256];
        int ok = got > 0 && !strncmp(req, "GET /metrics ", 13);
        const char *body = ok ? k_metrics : "not found\n";
        snprintf(head, sizeof head,
                 "HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                 ok ? "200 OK" : "404 Not Found", strlen(body));
        if (write(c, head, strlen(head)) < 0 || write(c, body, strlen(body)) < 0) perror("write");
        close(c);
    }
    return NULL;
}

static void test_metrics_http(void) {
    server sv = {socket(AF_INET, SOCK_STREAM, 0), 3};
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    socklen_t al = sizeof a;
    int ok = sv.fd >= 0 && !bind(sv.fd, (struct sockaddr *)&a, sizeof a) && !listen(sv.fd, 4) &&
             !getsockname(sv.fd, (struct sockaddr *)&a, &al);
    CHECK(ok, "listen on 127.0.0.1");
    if (!ok) return;
    int port = ntohs(a.sin_port);
    pthread_t th;
    pthread_create(&th, NULL, serve, &sv);
    char url[128], err[512], cmd[4096], js[1024];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    /* 1: the library */
    moe_experts_stats s;
    CHECK(moe_experts_fetch_metrics(url, &s, err, sizeof err) == MOE_OK, "fetch: %s", err);
    check_metrics_stats(&s, "http");
    moe_experts_stats_free(&s);
    /* 2: the CLI, JSON + HTML report */
    const char *bin = getenv("MOE_BIN");
    snprintf(js, sizeof js, "%s/metrics.json", g_dir);
    snprintf(cmd, sizeof cmd, "%s experts stats --from-metrics %s --json %s --html %s/metrics.html > %s/m.txt", bin,
             url, js, g_dir, g_dir);
    CHECK(bin && fx_sh(cmd) == 0, "%s", cmd);
    CHECK(moe_experts_read_json(js, &s, err, sizeof err) == MOE_OK, "read: %s", err);
    check_metrics_stats(&s, "cli");
    CHECK(!s.has_coact && !s.has_mass, "metrics give token counts only");
    moe_experts_stats_free(&s);
    /* 3: a 404 is an error naming the URL */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing", port);
    err[0] = 0;
    CHECK(moe_experts_fetch_metrics(url, &s, err, sizeof err) == MOE_ERR_IO && strstr(err, "127.0.0.1"), "404: %s", err);
    pthread_join(th, NULL);
    close(sv.fd);
    /* nothing listens any more: refused */
    snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);
    CHECK(moe_experts_fetch_metrics(url, &s, err, sizeof err) == MOE_ERR_IO, "closed port");
    /* only http(s) */
    CHECK(moe_experts_fetch_metrics("file:///etc/hostname", &s, err, sizeof err) == MOE_ERR_IO, "file:// refused");
}

int main(void) {
    tu_tmpdir(g_dir, sizeof g_dir);
    moe_init_config cfg = fx_config();
    CHECK(fx_make(g_dir, "routed", &cfg, 1, NULL, g_model, sizeof g_model) == 0, "fixture");
    test_summary_math();
    test_library();
    test_cli();
    test_metrics_parse();
    test_metrics_http();
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (!tu_fail) fx_sh(cmd);
    return test_done();
}
