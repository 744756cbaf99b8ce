/* moekit server: Prometheus metrics (text exposition format 0.0.4).
 *
 * Everything is counted under one mutex (updates are a few adds; a scrape copies nothing
 * large except the L × E expert counters). Histograms keep per-bucket counts and are made
 * cumulative when rendered. Names follow Prometheus conventions (base units, _total for
 * counters) so `promtool check metrics` accepts the page; tests/server checks that. */
#include <stdlib.h>
#include <string.h>

#include "server/server_impl.h"

static const double k_lat_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
static const double k_itl_le[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5, 5};
static const double k_tok_le[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
#define NB(a) ((int)(sizeof a / sizeof a[0]))

int srv_metrics_init(srv_metrics *m, int32_t n_layer, int32_t n_expert) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->queue = (srv_hist){.le = k_lat_le, .n = NB(k_lat_le)};
    m->ttft = (srv_hist){.le = k_lat_le, .n = NB(k_lat_le)};
    m->e2e = (srv_hist){.le = k_lat_le, .n = NB(k_lat_le)};
    m->itl = (srv_hist){.le = k_itl_le, .n = NB(k_itl_le)};
    m->step = (srv_hist){.le = k_itl_le, .n = NB(k_itl_le)};
    m->step_tokens = (srv_hist){.le = k_tok_le, .n = NB(k_tok_le)};
    m->n_layer = n_layer > 0 ? n_layer : 0;
    m->n_expert = n_expert > 0 ? n_expert : 0;
    m->t_start = srv_wall();
    if (m->n_layer) {
        m->is_moe = calloc((size_t)m->n_layer, 1);
        m->expert = calloc((size_t)m->n_layer * (size_t)(m->n_expert ? m->n_expert : 1), sizeof *m->expert);
        if (!m->is_moe || !m->expert) return -1;
    }
    return 0;
}

void srv_metrics_free(srv_metrics *m) {
    free(m->is_moe);
    free(m->expert);
    pthread_mutex_destroy(&m->mu);
}

void srv_hist_observe(srv_hist *h, double v) {
    int i = 0;
    while (i < h->n && v > h->le[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

void srv_metrics_code(srv_metrics *m, int status) {
    if (status < 100 || status >= 600) return;
    pthread_mutex_lock(&m->mu);
    m->by_code[status]++;
    pthread_mutex_unlock(&m->mu);
}

static void head(srv_buf *o, const char *name, const char *type, const char *help) {
    srv_buf_fmt(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void hist(srv_buf *o, const char *name, const char *help, const srv_hist *h) {
    head(o, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        srv_buf_fmt(o, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    srv_buf_fmt(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, (unsigned long long)cum, name,
                h->sum, name, (unsigned long long)h->count);
}

static void gauge(srv_buf *o, const char *name, const char *help, double v) {
    head(o, name, "gauge", help);
    srv_buf_fmt(o, "%s %.17g\n", name, v);
}

static void counter(srv_buf *o, const char *name, const char *help, uint64_t v) {
    head(o, name, "counter", help);
    srv_buf_fmt(o, "%s %llu\n", name, (unsigned long long)v);
}

int srv_metrics_render(srv_metrics *m, srv_buf *o) {
    pthread_mutex_lock(&m->mu);
    gauge(o, "moe_requests_running", "Requests holding a sequence slot (prefill or decode).", (double)m->running);
    gauge(o, "moe_requests_waiting", "Requests queued for a slot (the autoscaling signal).", (double)m->waiting);
    hist(o, "moe_request_queue_seconds", "Time from arrival to getting a slot.", &m->queue);
    hist(o, "moe_time_to_first_token_seconds", "Time from arrival to the first generated token.", &m->ttft);
    hist(o, "moe_inter_token_latency_seconds", "Time between consecutive generated tokens of a request.", &m->itl);
    hist(o, "moe_request_duration_seconds", "End-to-end time of generation requests, arrival to last token.",
         &m->e2e);
    counter(o, "moe_prompt_tokens_total", "Prompt tokens prefilled.", m->prompt_tokens);
    counter(o, "moe_generation_tokens_total", "Tokens generated.", m->gen_tokens);
    head(o, "moe_http_requests_total", "counter", "HTTP responses by status code.");
    for (int c = 100; c < 600; c++)
        if (m->by_code[c]) srv_buf_fmt(o, "moe_http_requests_total{code=\"%d\"} %llu\n", c, (unsigned long long)m->by_code[c]);
    head(o, "moe_request_finish_total", "counter", "Finished generation requests by finish reason.");
    srv_buf_fmt(o, "moe_request_finish_total{reason=\"stop\"} %llu\n", (unsigned long long)m->finish_stop);
    srv_buf_fmt(o, "moe_request_finish_total{reason=\"length\"} %llu\n", (unsigned long long)m->finish_length);
    srv_buf_fmt(o, "moe_request_finish_total{reason=\"cancelled\"} %llu\n", (unsigned long long)m->finish_cancel);
    srv_buf_fmt(o, "moe_request_finish_total{reason=\"error\"} %llu\n", (unsigned long long)m->finish_error);
    gauge(o, "moe_kv_cache_used_tokens", "Tokens held in the KV caches of all sequences.", (double)m->kv_used);
    gauge(o, "moe_kv_cache_reserved_tokens", "Tokens reserved by running requests (prompt + max_tokens).",
          (double)m->kv_reserved);
    gauge(o, "moe_kv_cache_capacity_tokens", "KV cache budget in tokens (kv_tokens).", (double)m->kv_capacity);
    gauge(o, "moe_kv_cache_usage_ratio", "Reserved over capacity.",
          m->kv_capacity ? (double)m->kv_reserved / (double)m->kv_capacity : 0.0);
    gauge(o, "moe_kv_cache_used_bytes", "Bytes of KV cache in use.", (double)m->kv_used * m->kv_bytes_per_token);
    counter(o, "moe_engine_steps_total", "Batched forward steps run by the engine thread.", m->steps);
    hist(o, "moe_engine_step_seconds", "Duration of one batched forward step.", &m->step);
    hist(o, "moe_engine_step_tokens", "Tokens per batched step (decode tokens + prompt chunks).", &m->step_tokens);
    gauge(o, "moe_ready", "1 when the model is loaded, a step has completed and the server is not draining.",
          (double)m->ready);
    gauge(o, "moe_start_time_seconds", "Unix time the server started.", m->t_start);
    head(o, "moe_expert_tokens_total", "counter", "Tokens routed to each expert, by MoE layer and expert.");
    for (int32_t l = 0; l < m->n_layer; l++) {
        if (!m->is_moe[l]) continue;
        const uint64_t *row = m->expert + (size_t)l * (size_t)m->n_expert;
        for (int32_t e = 0; e < m->n_expert; e++)
            srv_buf_fmt(o, "moe_expert_tokens_total{layer=\"%d\",expert=\"%d\"} %llu\n", l, e,
                        (unsigned long long)row[e]);
    }
    pthread_mutex_unlock(&m->mu);
    return o->oom ? -1 : 0;
}
