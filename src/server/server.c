/* moekit server: HTTP (libmicrohttpd), the OpenAI routes, limits, access log and lifecycle.
 *
 * libmicrohttpd runs one thread per connection (MHD_USE_THREAD_PER_CONNECTION), so a handler
 * may block: a non-streaming request waits for its result, and a stream's content reader
 * waits for the next text. While waiting, every 20 ms the thread polls its socket for
 * POLLRDHUP: a client that hangs up cancels its request at once (the engine frees the slot
 * before its next step), whether it was queued, prefilling or decoding.
 *
 * Per-connection state (struct conn) lives from the first call of the access handler to the
 * completed callback, which writes the access log line and drops the request reference.
 *
 * Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (live),
 * GET /ready (a step ran, not draining), GET /metrics (Prometheus). Anything else: 404/405 in
 * OpenAI's error shape. Status codes: 400 bad request, 404 unknown model/route, 413 body too
 * large, 429 queue full (Retry-After), 500 engine error, 503 draining or out of memory. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "moe/batch.h"
#include "moe/tenant.h"
#include "server/server_impl.h"

struct moe_server {
    moe_server_params p; /* reloadable fields guarded by pmu */
    pthread_mutex_t pmu;
    moe_model *model;
    moe_tok *tok;
    srv_sched *sched;
    srv_metrics metrics;
    int metrics_ok;
    struct MHD_Daemon *d;
    int port;
    char model_name[256];
    int64_t created;
    int32_t V, ctx;
    int64_t kv_budget;
    FILE *access; /* owned unless stderr */
    pthread_mutex_t log_mu;
    atomic_int draining;
    atomic_int inflight; /* generation requests not yet completed */
    atomic_ullong counter;
    uint64_t id_salt;
    moe_tenant_gate *gate; /* owned; NULL = open server (tenants, issue 9) */
};

typedef struct conn {
    moe_server *s;
    srv_buf body;
    int too_big, status, fd, is_gen;
    srv_kind kind;
    char path[96], method[16], id[48];
    double t0;
    srv_req *req; /* reference */
    /* stream */
    int stream, include_usage, sent_role, finished;
    srv_buf pending;
    int64_t prompt_tokens, gen_tokens;
    const char *finish;
    moe_tenant_ticket tk; /* tenants (issue 9): who sent it, what the quota said */
    int submitted;        /* req is in the scheduler (it will be marked done) */
    double t_grant;       /* tpm quota: no more tokens are granted before this (srv_now) */
} conn;

/* tenants (issue 9): generated tokens are charged to the tenant's tokens-per-minute bucket
 * GRANT_TOKENS at a time, before the engine may produce them (r->allow). A new grant is made
 * when fewer than half a grant is left, unless the bucket is in debt: then not before the
 * debt is paid back (t_grant). So a stream runs at most one grant ahead of its quota, and at
 * the end the difference to what was really generated is charged or refunded. */
#define GRANT_TOKENS 16

static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---- responses ---- */

static void add_header(void *r, const char *name, const char *value) {
    MHD_add_response_header(r, name, value);
}

static enum MHD_Result send_buf(conn *k, struct MHD_Connection *c, int status, const char *ctype, const char *data,
                                size_t len, int retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    if (k->id[0]) MHD_add_response_header(r, "X-Request-Id", k->id);
    if (k->tk.authed) moe_tenant_gate_headers(&k->tk, add_header, r); /* x-ratelimit-* (issue 9) */
    if (retry_after >= 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", ra);
    }
    k->status = status;
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result send_json(conn *k, struct MHD_Connection *c, int status, char *json_owned) {
    static const char oom[] = "{\"error\":{\"message\":\"Out of memory.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";
    if (!json_owned) return send_buf(k, c, 503, "application/json", oom, sizeof oom - 1, -1);
    enum MHD_Result rc = send_buf(k, c, status, "application/json", json_owned, strlen(json_owned), -1);
    free(json_owned);
    return rc;
}

static enum MHD_Result send_error(conn *k, struct MHD_Connection *c, const srv_error *e, int retry_after) {
    char *j = srv_error_json(e);
    if (!j) return send_json(k, c, 503, NULL);
    enum MHD_Result rc = send_buf(k, c, e->status, "application/json", j, strlen(j), retry_after);
    free(j);
    return rc;
}

static enum MHD_Result fail(conn *k, struct MHD_Connection *c, int status, const char *type, const char *code,
                            const char *param, const char *msg) {
    srv_error e;
    srv_error_set(&e, status, type, code, param, "%s", msg);
    return send_error(k, c, &e, -1);
}

/* ---- operator endpoints (tenants, issue 9) ----
 * With --tenants, /metrics (per-tenant usage) and /admin/config are for the operator only, so
 * that no tenant can read another's usage: a client on the loopback interface (unless
 * admin_loopback is 0) or one with a key of the admin_tenant. Everyone else gets the same 401
 * as an unknown key. Without --tenants they stay open, as before. */
static int peer_loopback(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return 0;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return 0;
}

static int operator_ok(conn *k, struct MHD_Connection *c) {
    moe_server *s = k->s;
    if (!s->gate) return 1;
    if (s->p.admin_loopback && peer_loopback(c)) return 1;
    moe_tenant_ticket t;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    return s->p.admin_tenant[0] && moe_tenant_gate_auth(s->gate, auth, &t) == MOE_OK &&
           !strcmp(t.name, s->p.admin_tenant);
}

/* ---- /admin/config: the settings table as JSON; PUT applies reloadable settings ----
 * GET answers {"settings": [{"name", "value", "type", "reloadable", "help"}, ...]} from the one
 * settings table. PUT takes {"name": value, ...}: every name must be a reloadable setting and
 * every value pass the table's bounds (moe_server_setting_set); all are checked on a copy
 * first, then applied together like a SIGHUP reload (nothing changes if one is wrong: 400
 * naming it). Who may: the operator (see operator_ok); without --tenants, loopback clients. */
static json_t *setting_value(const moe_setting *t, const moe_server_params *p) {
    const char *f = (const char *)p + t->offset;
    if (t->type == MOE_SETTING_INT) return json_integer((json_int_t) * (const int64_t *)f);
    if (t->type == MOE_SETTING_FLOAT) return json_real(*(const double *)f);
    return json_string(f);
}

static enum MHD_Result admin_config(conn *k, struct MHD_Connection *c, int get) {
    moe_server *s = k->s;
    size_t n;
    const moe_setting *t = moe_server_settings(&n);
    pthread_mutex_lock(&s->pmu);
    moe_server_params cur = s->p;
    pthread_mutex_unlock(&s->pmu);
    if (!get) {
        json_error_t je;
        json_t *in = k->body.len ? json_loadb(k->body.p, k->body.len, 0, &je) : NULL;
        char err[400] = "";
        const char *bad = NULL;
        moe_server_params np = cur;
        if (!json_is_object(in)) snprintf(err, sizeof err, "Send a JSON object of reloadable settings, e.g. {\"queue\": 32}.");
        const char *key;
        json_t *v;
        json_object_foreach(in, key, v) {
            if (err[0]) break;
            bad = key;
            size_t i = 0;
            while (i < n && strcmp(t[i].name, key)) i++;
            char text[1100];
            if (i == n) snprintf(err, sizeof err, "Unknown setting '%.100s'.", key);
            else if (!t[i].reloadable)
                snprintf(err, sizeof err, "Setting '%s' cannot change while the server runs (restart it).", key);
            else if (json_is_integer(v)) snprintf(text, sizeof text, "%lld", (long long)json_integer_value(v));
            else if (json_is_real(v)) snprintf(text, sizeof text, "%.17g", json_real_value(v));
            else if (json_is_string(v)) snprintf(text, sizeof text, "%s", json_string_value(v));
            else snprintf(err, sizeof err, "Setting '%s' needs a number or a string.", key);
            if (!err[0] && moe_server_setting_set(&np, key, text, err, sizeof err) != MOE_OK && !err[0])
                snprintf(err, sizeof err, "Bad value for '%s'.", key);
        }
        if (err[0]) {
            json_decref(in);
            srv_error e;
            srv_error_set(&e, 400, NULL, "invalid_value", bad, "%s", err);
            return send_error(k, c, &e, -1);
        }
        json_decref(in);
        moe_server_reload(s, &np);
        cur = np;
    }
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:o,s:s,s:b,s:s}", "name", t[i].name, "value", setting_value(&t[i], &cur),
                                             "type", t[i].type == MOE_SETTING_INT ? "int" : t[i].type == MOE_SETTING_FLOAT ? "number" : "string",
                                             "reloadable", t[i].reloadable, "help", t[i].help));
    json_t *o = arr ? json_pack("{s:o}", "settings", arr) : NULL;
    char *out = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return send_json(k, c, 200, out);
}

/* ---- client liveness ---- */

static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd pf = {.fd = fd, .events = POLLRDHUP};
    if (poll(&pf, 1, 0) <= 0) return 0;
    return (pf.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

static void abs_in(struct timespec *ts, long ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += ms * 1000000L;
    ts->tv_sec += ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

static void cancel_req(moe_server *s, srv_req *r) {
    atomic_store(&r->cancel, 1);
    srv_sched_poke(s->sched);
}

/* 1 when the request should get more tokens now (tpm quota; see GRANT_TOKENS). */
static int grant_due(const conn *k) {
    const srv_req *r = k->req;
    if (!k->s->gate || !k->tk.admitted || k->tk.limits.tpm <= 0 || !r) return 0;
    int32_t allow = atomic_load(&((srv_req *)r)->allow), gen = atomic_load(&((srv_req *)r)->gen_pub);
    return allow < r->max_tokens && allow - gen < GRANT_TOKENS / 2 && srv_now() >= k->t_grant;
}

/* Charge the next grant and let the engine use it. Call without r->mu. */
static void grant(conn *k) {
    srv_req *r = k->req;
    int32_t allow = atomic_load(&r->allow);
    if (allow == INT32_MAX) allow = 0; /* the first grant */
    int32_t n = r->max_tokens - allow < GRANT_TOKENS ? r->max_tokens - allow : GRANT_TOKENS;
    if (n <= 0) return;
    double wait = moe_tenant_gate_charge(k->s->gate, &k->tk, n);
    k->t_grant = srv_now() + wait;
    atomic_store(&r->allow, allow + n);
    srv_sched_poke(k->s->sched);
}

static const char *finish_name(srv_finish f) {
    return f == SRV_FINISH_STOP ? "stop" : f == SRV_FINISH_LENGTH ? "length" : f == SRV_FINISH_CANCEL ? "cancelled" : "error";
}

/* ---- streaming ---- */

static void stream_fill(conn *k, const char *text, size_t len, int done) {
    moe_server *s = k->s;
    srv_req *r = k->req;
    srv_usage u = {r->out_prompt, r->out_gen};
    int um = k->include_usage ? 1 : 0;
    char *j;
    if (k->kind == SRV_KIND_CHAT && !k->sent_role) {
        k->sent_role = 1;
        if ((j = srv_api_chunk(k->kind, k->id, s->created, s->model_name, "assistant", "", 0, NULL, um, &u))) {
            srv_sse_data(&k->pending, j);
            free(j);
        }
    }
    if (len && (j = srv_api_chunk(k->kind, k->id, s->created, s->model_name, NULL, text, len, NULL, um, &u))) {
        srv_sse_data(&k->pending, j);
        free(j);
    }
    if (!done) return;
    k->finished = 1;
    k->prompt_tokens = r->out_prompt;
    k->gen_tokens = r->out_gen;
    k->finish = finish_name(r->finish);
    if (r->finish == SRV_FINISH_STOP || r->finish == SRV_FINISH_LENGTH) {
        if ((j = srv_api_chunk(k->kind, k->id, s->created, s->model_name, NULL, k->kind == SRV_KIND_CHAT ? NULL : "", 0,
                               k->finish, um, &u))) {
            srv_sse_data(&k->pending, j);
            free(j);
        }
        if (k->include_usage &&
            (j = srv_api_chunk(k->kind, k->id, s->created, s->model_name, NULL, NULL, 0, NULL, 2, &u))) {
            srv_sse_data(&k->pending, j);
            free(j);
        }
        srv_sse_done(&k->pending);
    } else {
        srv_error e;
        srv_error_set(&e, r->finish == SRV_FINISH_ERROR ? 500 : 503, "server_error", NULL, NULL, "%s",
                      r->errmsg[0] ? r->errmsg : "the request was cancelled");
        if ((j = srv_error_json(&e))) {
            srv_sse_data(&k->pending, j);
            free(j);
        }
    }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    conn *k = cls;
    srv_req *r = k->req;
    (void)pos;
    for (;;) {
        if (k->pending.len) {
            size_t n = k->pending.len < max ? k->pending.len : max;
            memcpy(buf, k->pending.p, n);
            srv_buf_consume(&k->pending, n);
            return (ssize_t)n;
        }
        if (k->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        if (k->pending.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (k->kind == SRV_KIND_CHAT && !k->sent_role) { /* headers and the role chunk go out at once */
            stream_fill(k, NULL, 0, 0);
            continue;
        }
        if (grant_due(k)) grant(k); /* also while text flows, so the engine never waits for it */
        pthread_mutex_lock(&r->mu);
        while (!r->out.len && !r->done) {
            if (grant_due(k)) { /* tpm quota: charge the next tokens (may call Redis: not under mu) */
                pthread_mutex_unlock(&r->mu);
                grant(k);
                pthread_mutex_lock(&r->mu);
                continue;
            }
            struct timespec ts;
            abs_in(&ts, 20);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
            if (!r->out.len && !r->done && client_gone(k->fd)) {
                pthread_mutex_unlock(&r->mu);
                cancel_req(k->s, r);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
        }
        srv_buf text = r->out; /* take the text, leave an empty buffer */
        memset(&r->out, 0, sizeof r->out);
        int done = r->done;
        pthread_mutex_unlock(&r->mu);
        stream_fill(k, text.p, text.len, done);
        srv_buf_free(&text);
    }
}

/* ---- generation ---- */

static enum MHD_Result generate(conn *k, struct MHD_Connection *c) {
    moe_server *s = k->s;
    srv_params rp;
    srv_error e;
    char err[256];
    pthread_mutex_lock(&s->pmu);
    int64_t max_prompt = s->p.max_prompt_tokens, max_tokens_cap = s->p.max_tokens, queue = s->p.queue;
    int retry_after = (int)s->p.retry_after;
    pthread_mutex_unlock(&s->pmu);
    if (max_prompt <= 0 || max_prompt > s->ctx - 1) max_prompt = s->ctx - 1;

    if (atomic_load(&s->draining))
        return fail(k, c, 503, "server_error", "shutting_down", NULL, "The server is shutting down; retry on another replica.");
    if (s->gate) { /* tenants (issue 9): the same 401 for a missing, unknown or revoked key */
        const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (moe_tenant_gate_auth(s->gate, auth, &k->tk) != MOE_OK) {
            moe_tenant_gate_count_unauthorized(s->gate);
            return send_json(k, c, 401, moe_tenant_gate_unauthorized());
        }
    }
    if (k->body.oom) return send_json(k, c, 503, NULL);
    if (srv_request_parse(k->kind, k->body.p, k->body.len, &rp, &e)) return send_error(k, c, &e, -1);
    if (rp.model && strcmp(rp.model, s->model_name) != 0) {
        srv_error_set(&e, 404, NULL, "model_not_found", "model", "The model '%.100s' does not exist; this server serves '%.100s'.",
                      rp.model, s->model_name);
        srv_params_free(&rp);
        return send_error(k, c, &e, -1);
    }
    k->stream = rp.stream;
    k->include_usage = rp.include_usage;

    /* prompt tokens (the tokenizer is read-only and shared; no model memory is touched) */
    int32_t *ids = NULL;
    size_t n_ids = 0;
    moe_status st = MOE_OK;
    if (k->kind == SRV_KIND_CHAT) {
        moe_chat_msg *msgs = calloc(rp.n_msgs, sizeof *msgs);
        char *text = NULL;
        if (!msgs) st = MOE_ERR_NOMEM;
        for (size_t i = 0; msgs && i < rp.n_msgs; i++) msgs[i] = (moe_chat_msg){rp.msgs[i].role, rp.msgs[i].content};
        pthread_mutex_lock(&s->pmu);
        char tmpl[256];
        snprintf(tmpl, sizeof tmpl, "%s", s->p.chat_template);
        pthread_mutex_unlock(&s->pmu);
        if (msgs && (st = moe_chat_apply_ex(s->tok, tmpl[0] ? tmpl : NULL, msgs, rp.n_msgs, 1, &text, err, sizeof err))) {
            free(msgs);
            srv_params_free(&rp);
            if (st == MOE_ERR_NOMEM) return send_json(k, c, 503, NULL);
            return fail(k, c, 500, "server_error", NULL, NULL, err);
        }
        free(msgs);
        if (st == MOE_OK) st = moe_tok_encode(s->tok, text, strlen(text), moe_tok_add_bos(s->tok), 1, &ids, &n_ids);
        free(text);
    } else if (rp.prompt) {
        st = moe_tok_encode(s->tok, rp.prompt, rp.prompt_len, moe_tok_add_bos(s->tok), 1, &ids, &n_ids);
    } else {
        for (size_t i = 0; i < rp.n_prompt_ids; i++)
            if (rp.prompt_ids[i] >= s->V) {
                srv_error_set(&e, 400, NULL, "invalid_value", "prompt", "Token id %d is outside the vocabulary (%d ids).",
                              rp.prompt_ids[i], s->V);
                srv_params_free(&rp);
                return send_error(k, c, &e, -1);
            }
        ids = rp.prompt_ids;
        n_ids = rp.n_prompt_ids;
        rp.prompt_ids = NULL;
        rp.n_prompt_ids = 0;
    }
    if (st != MOE_OK) {
        free(ids);
        srv_params_free(&rp);
        return st == MOE_ERR_NOMEM ? send_json(k, c, 503, NULL) : fail(k, c, 400, NULL, NULL, "prompt", "The prompt could not be tokenized.");
    }
    if (n_ids == 0) {
        srv_params_free(&rp);
        return fail(k, c, 400, NULL, "invalid_value", k->kind == SRV_KIND_CHAT ? "messages" : "prompt", "The prompt is empty.");
    }
    int64_t n_prompt = (int64_t)n_ids, max_tokens = rp.max_tokens;
    if (n_prompt > max_prompt) {
        free(ids);
        srv_params_free(&rp);
        srv_error_set(&e, 400, NULL, "context_length_exceeded", k->kind == SRV_KIND_CHAT ? "messages" : "prompt",
                      "The prompt has %lld tokens; this server accepts at most %lld (ctx %d). Please shorten it.",
                      (long long)n_prompt, (long long)max_prompt, s->ctx);
        return send_error(k, c, &e, -1);
    }
    if (max_tokens > max_tokens_cap) {
        free(ids);
        srv_params_free(&rp);
        srv_error_set(&e, 400, NULL, "invalid_value", "max_tokens", "max_tokens is %lld; this server allows at most %lld.",
                      (long long)max_tokens, (long long)max_tokens_cap);
        return send_error(k, c, &e, -1);
    }
    if (max_tokens < 0) max_tokens = max_tokens_cap < s->ctx - n_prompt ? max_tokens_cap : s->ctx - n_prompt;
    if (n_prompt + max_tokens > s->ctx || n_prompt + max_tokens > s->kv_budget) {
        int64_t lim = s->ctx < s->kv_budget ? s->ctx : s->kv_budget;
        free(ids);
        srv_params_free(&rp);
        srv_error_set(&e, 400, NULL, "context_length_exceeded", "max_tokens",
                      "This model's maximum context length is %lld tokens. However, you requested %lld tokens (%lld in "
                      "the prompt, %lld in the completion). Please reduce the length of the prompt or completion.",
                      (long long)lim, (long long)(n_prompt + max_tokens), (long long)n_prompt, (long long)max_tokens);
        return send_error(k, c, &e, -1);
    }

    if (s->gate) { /* tenants (issue 9): quota check; the prompt is charged now, generation at the end */
        if (moe_tenant_gate_admit(s->gate, &k->tk, s->model_name, n_prompt, k->id) != MOE_QUOTA_OK) {
            free(ids);
            srv_params_free(&rp);
            int qstatus = 429;
            char *body = moe_tenant_gate_refusal(&k->tk, &qstatus);
            if (!body) return send_json(k, c, 503, NULL);
            enum MHD_Result qrc = send_buf(k, c, qstatus, "application/json", body, strlen(body), -1);
            free(body);
            return qrc;
        }
    }
    srv_req *r = srv_req_new();
    if (!r) {
        free(ids);
        srv_params_free(&rp);
        return send_json(k, c, 503, NULL);
    }
    r->priority = k->tk.priority;
    k->req = r;
    snprintf(r->id, sizeof r->id, "%s", k->id);
    r->kind = k->kind;
    r->stream = rp.stream;
    r->include_usage = rp.include_usage;
    r->ignore_eos = rp.ignore_eos;
    r->prompt = ids;
    r->n_prompt = (int32_t)n_prompt;
    r->max_tokens = (int32_t)max_tokens;
    r->t_arrive = k->t0;
    for (size_t i = 0; i < rp.n_stop; i++) {
        r->stop_len[i] = strlen(rp.stop[i]);
        if (!(r->stop[i] = strdup(rp.stop[i]))) break;
        r->n_stop = i + 1;
    }
    uint64_t seed = rp.has_seed ? rp.seed : mix64(s->id_salt ^ atomic_fetch_add(&s->counter, 1));
    moe_sampler_params sp = {(float)rp.temperature, (float)rp.top_p, (int32_t)rp.top_k, seed};
    int nomem = r->n_stop != rp.n_stop;
    srv_params_free(&rp);
    if (nomem || moe_sampler_init(&sp, s->V, &r->smp) || moe_tok_stream_init(s->tok, 0, &r->ts))
        return send_json(k, c, 503, NULL);
    k->prompt_tokens = n_prompt;
    if (s->gate && k->tk.limits.tpm > 0) grant(k); /* the first tokens are charged before they are made */

    int rc = srv_sched_submit(s->sched, r, queue);
    k->submitted = rc == 0;
    if (rc == 429) {
        srv_error_set(&e, 429, "rate_limit_error", "queue_full", NULL,
                      "The server is busy: %lld requests are waiting. Retry after %d s.", (long long)queue, retry_after);
        return send_error(k, c, &e, retry_after);
    }
    if (rc) return fail(k, c, 503, "server_error", "shutting_down", NULL, "The server is shutting down; retry on another replica.");

    if (k->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, k, NULL);
        if (!resp) {
            cancel_req(s, r);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "X-Request-Id", k->id);
        if (k->tk.authed) moe_tenant_gate_headers(&k->tk, add_header, resp); /* issue 9 */
        k->status = 200;
        enum MHD_Result q = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return q;
    }
    pthread_mutex_lock(&r->mu);
    while (!r->done) {
        if (grant_due(k)) {
            pthread_mutex_unlock(&r->mu);
            grant(k);
            pthread_mutex_lock(&r->mu);
            continue;
        }
        struct timespec ts;
        abs_in(&ts, 20);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        if (!r->done && client_gone(k->fd)) {
            pthread_mutex_unlock(&r->mu);
            cancel_req(s, r);
            k->status = 499; /* nginx's "client closed request", for the log only */
            return MHD_NO;
        }
    }
    pthread_mutex_unlock(&r->mu);
    k->gen_tokens = r->out_gen;
    k->finish = finish_name(r->finish);
    if (r->finish == SRV_FINISH_ERROR) return fail(k, c, 500, "server_error", NULL, NULL, r->errmsg);
    if (r->finish == SRV_FINISH_CANCEL)
        return fail(k, c, 503, "server_error", "shutting_down", NULL, r->errmsg[0] ? r->errmsg : "cancelled");
    srv_usage u = {r->out_prompt, r->out_gen};
    return send_json(k, c, 200,
                     srv_api_response(k->kind, k->id, s->created, s->model_name, r->out.p, r->out.len,
                                      finish_name(r->finish), &u));
}

/* ---- routing ---- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    moe_server *s = cls;
    conn *k = *con_cls;
    if (!k) {
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *con_cls = k;
        k->s = s;
        k->t0 = srv_now();
        k->fd = -1;
        snprintf(k->path, sizeof k->path, "%s", url);
        snprintf(k->method, sizeof k->method, "%s", method);
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) k->fd = ci->connect_fd;
        int chat = !strcmp(url, "/v1/chat/completions"), cmpl = !strcmp(url, "/v1/completions");
        if (chat || cmpl) {
            k->is_gen = 1;
            k->kind = chat ? SRV_KIND_CHAT : SRV_KIND_COMPLETION;
            snprintf(k->id, sizeof k->id, "%s-%016llx%08llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)s->id_salt,
                     (unsigned long long)atomic_fetch_add(&s->counter, 1));
            atomic_fetch_add(&s->inflight, 1);
        }
        if (!strcmp(method, "POST")) {
            const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
            pthread_mutex_lock(&s->pmu);
            int64_t max_body = s->p.max_body;
            pthread_mutex_unlock(&s->pmu);
            if (cl && strtoull(cl, NULL, 10) > (unsigned long long)max_body) {
                char msg[160];
                snprintf(msg, sizeof msg, "The request body is larger than %lld bytes.", (long long)max_body);
                k->too_big = 1;
                return fail(k, c, 413, NULL, "request_too_large", NULL, msg);
            }
        }
        return MHD_YES;
    }
    if (*upload_size) {
        pthread_mutex_lock(&s->pmu);
        int64_t max_body = s->p.max_body;
        pthread_mutex_unlock(&s->pmu);
        if (!k->too_big && k->body.len + *upload_size > (size_t)max_body) {
            k->too_big = 1;
            srv_buf_free(&k->body);
        }
        if (!k->too_big) srv_buf_add(&k->body, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (k->status) return MHD_YES; /* already answered (413 on Content-Length) */
    if (k->too_big) {
        char msg[160];
        snprintf(msg, sizeof msg, "The request body is larger than %lld bytes.", (long long)s->p.max_body);
        return fail(k, c, 413, NULL, "request_too_large", NULL, msg);
    }
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (k->is_gen) {
        if (!post) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use POST for this endpoint.");
        return generate(k, c);
    }
    if (!strcmp(url, "/health")) {
        if (!get) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use GET for this endpoint.");
        return send_buf(k, c, 200, "application/json", "{\"status\":\"ok\"}", 15, -1);
    }
    if (!strcmp(url, "/ready")) {
        if (!get) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use GET for this endpoint.");
        pthread_mutex_lock(&s->metrics.mu);
        int ready = s->metrics.ready;
        pthread_mutex_unlock(&s->metrics.mu);
        if (atomic_load(&s->draining)) return send_buf(k, c, 503, "application/json", "{\"status\":\"draining\"}", 21, -1);
        if (!ready) return send_buf(k, c, 503, "application/json", "{\"status\":\"loading\"}", 20, -1);
        return send_buf(k, c, 200, "application/json", "{\"status\":\"ready\"}", 18, -1);
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use GET for this endpoint.");
        if (!operator_ok(k, c)) {
            moe_tenant_gate_count_unauthorized(s->gate);
            return send_json(k, c, 401, moe_tenant_gate_unauthorized());
        }
        srv_buf b = {0};
        if (srv_metrics_render(&s->metrics, &b)) {
            srv_buf_free(&b);
            return send_json(k, c, 503, NULL);
        }
        if (s->gate) { /* tenants (issue 9) */
            size_t tl = 0;
            char *tm = moe_tenant_gate_metrics(s->gate, &tl);
            if (tm) srv_buf_add(&b, tm, tl);
            free(tm);
        }
        enum MHD_Result rc = send_buf(k, c, 200, "text/plain; version=0.0.4; charset=utf-8", b.p ? b.p : "", b.len, -1);
        srv_buf_free(&b);
        return rc;
    }
    if (!strcmp(url, "/admin/config")) {
        int put = !strcmp(method, "PUT");
        if (!get && !put) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use GET or PUT for this endpoint.");
        if (s->gate ? !operator_ok(k, c) : !peer_loopback(c)) {
            if (s->gate) moe_tenant_gate_count_unauthorized(s->gate);
            if (s->gate) return send_json(k, c, 401, moe_tenant_gate_unauthorized());
            return fail(k, c, 403, NULL, "forbidden", NULL, "/admin/config answers loopback clients only.");
        }
        return admin_config(k, c, get);
    }
    if (!strcmp(url, "/v1/models")) {
        if (!get) return fail(k, c, 405, NULL, "method_not_allowed", NULL, "Use GET for this endpoint.");
        return send_json(k, c, 200, srv_api_models(s->model_name, s->created));
    }
    char msg[160];
    snprintf(msg, sizeof msg, "Unknown request URL: %s %.96s.", method, url);
    return fail(k, c, 404, NULL, "unknown_url", NULL, msg);
}

static void access_log(moe_server *s, conn *k, enum MHD_RequestTerminationCode toe) {
    if (!s->access) return;
    double now = srv_now();
    char ts[40];
    double wall = srv_wall();
    time_t sec = (time_t)wall;
    struct tm tm;
    gmtime_r(&sec, &tm);
    size_t tl = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tl, sizeof ts - tl, ".%03dZ", (int)((wall - (double)sec) * 1000));
    json_t *o = json_pack("{s:s,s:s,s:s,s:i}", "ts", ts, "method", k->method, "path", k->path, "status",
                          toe == MHD_REQUEST_TERMINATED_COMPLETED_OK || k->status == 0 ? k->status : (k->status == 200 && k->is_gen ? 499 : k->status));
    if (!o) return;
    if (k->id[0]) json_object_set_new(o, "id", json_string(k->id));
    if (k->tk.authed) json_object_set_new(o, "tenant", json_string(k->tk.name)); /* issue 9; never the key */
    if (k->is_gen) {
        json_object_set_new(o, "stream", json_boolean(k->stream));
        json_object_set_new(o, "prompt_tokens", json_integer(k->prompt_tokens));
        json_object_set_new(o, "completion_tokens", json_integer(k->gen_tokens));
        if (k->finish) json_object_set_new(o, "finish_reason", json_string(k->finish));
        srv_req *r = k->req;
        if (r) {
            pthread_mutex_lock(&r->mu);
            int done = r->done;
            pthread_mutex_unlock(&r->mu);
            if (done && r->t_admit > 0) json_object_set_new(o, "queue_ms", json_real(1e3 * (r->t_admit - r->t_arrive)));
            if (done && r->t_first > 0) json_object_set_new(o, "ttft_ms", json_real(1e3 * (r->t_first - r->t_arrive)));
        }
    }
    json_object_set_new(o, "latency_ms", json_real(1e3 * (now - k->t0)));
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) json_object_set_new(o, "client_gone", json_true());
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
    json_decref(o);
    if (!line) return;
    pthread_mutex_lock(&s->log_mu);
    fprintf(s->access, "%s\n", line);
    fflush(s->access);
    pthread_mutex_unlock(&s->log_mu);
    free(line);
}

/* tenants (issue 9): charge exactly what the request used — the prompt tokens it processed
 * (the rest is refunded) and the tokens it generated (the grants charged ahead are corrected)
 * — and give the concurrency lease back. A cancelled request is waited for (the engine drops
 * it before its next step) so that its last tokens are counted. */
static void tenant_settle(moe_server *s, conn *k) {
    srv_req *r = k->req;
    int64_t gen = 0, prefilled = 0;
    if (r && k->submitted) {
        pthread_mutex_lock(&r->mu);
        for (int i = 0; !r->done && i < 500; i++) { /* at most 10 s (one engine step) */
            struct timespec ts;
            abs_in(&ts, 20);
            pthread_cond_timedwait(&r->cv, &r->mu, &ts);
        }
        int done = r->done;
        gen = done ? r->out_gen : atomic_load(&r->gen_pub);
        prefilled = done ? r->out_prefilled : r->n_prompt;
        pthread_mutex_unlock(&r->mu);
    }
    if (prefilled < k->tk.prompt) moe_tenant_gate_refund_prompt(s->gate, &k->tk, k->tk.prompt - prefilled);
    moe_tenant_gate_finish(s->gate, &k->tk, gen);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    moe_server *s = cls;
    conn *k = *con_cls;
    (void)c;
    if (!k) return;
    *con_cls = NULL;
    if (k->req) {
        pthread_mutex_lock(&k->req->mu);
        int done = k->req->done;
        pthread_mutex_unlock(&k->req->mu);
        if (!done) cancel_req(s, k->req);
    }
    if (s->gate && k->tk.admitted) tenant_settle(s, k);
    int code = k->status;
    if (k->is_gen && k->status == 200 && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) code = 499;
    if (code) srv_metrics_code(&s->metrics, code);
    access_log(s, k, toe);
    if (k->is_gen) atomic_fetch_sub(&s->inflight, 1);
    srv_req_unref(k->req);
    srv_buf_free(&k->body);
    srv_buf_free(&k->pending);
    free(k);
}

/* ---- lifecycle ---- */

static void model_name_from_path(const char *path, char *out, size_t n) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t len = strlen(b);
    if (len > 5 && !strcmp(b + len - 5, ".gguf")) len -= 5;
    if (len >= n) len = n - 1;
    memcpy(out, b, len);
    out[len] = 0;
}

moe_status moe_server_start(const moe_server_params *p, moe_server **out, char *err, size_t errlen) {
    *out = NULL;
    if (!p->model[0]) {
        snprintf(err, errlen, "no model: give -m MODEL.gguf (or model: in the config)");
        return MOE_ERR_INVAL;
    }
    if (p->batch < p->parallel) {
        snprintf(err, errlen, "batch (%lld) must be at least parallel (%lld): every running sequence decodes one token per step",
                 (long long)p->batch, (long long)p->parallel);
        return MOE_ERR_INVAL;
    }
    moe_server *s = calloc(1, sizeof *s);
    if (!s) return MOE_ERR_NOMEM;
    s->p = *p;
    pthread_mutex_init(&s->pmu, NULL);
    pthread_mutex_init(&s->log_mu, NULL);
    s->created = (int64_t)srv_wall();
    s->id_salt = mix64((uint64_t)(srv_wall() * 1e9) ^ ((uint64_t)getpid() << 32));
    moe_status st;
    if ((st = moe_model_open(p->model, &s->model, err, errlen)) != MOE_OK) goto fail;
    char tmp[256];
    if ((st = moe_tok_init_from_gguf(moe_model_gguf(s->model), &s->tok, tmp, sizeof tmp)) != MOE_OK) {
        snprintf(err, errlen, "tokenizer: %s", tmp);
        goto fail;
    }
    const moe_hparams *hp = moe_model_hparams(s->model);
    s->V = hp->n_vocab;
    s->ctx = (int32_t)p->ctx;
    if (hp->n_ctx_train > 0 && s->ctx > hp->n_ctx_train) s->ctx = hp->n_ctx_train;
    if (p->model_name[0]) snprintf(s->model_name, sizeof s->model_name, "%s", p->model_name);
    else model_name_from_path(p->model, s->model_name, sizeof s->model_name);
    st = MOE_ERR_NOMEM;
    if (srv_metrics_init(&s->metrics, hp->n_layer, hp->n_expert)) goto fail;
    s->metrics_ok = 1;
    srv_sched_params sp = {(int32_t)p->parallel, s->ctx, (int32_t)p->batch, (int32_t)p->prefill_chunk,
                           (int32_t)p->threads, p->kv_tokens, p->tenants[0] ? p->priority_aging : 0};
    if (p->tenants[0]) { /* tenants (issue 9) */
        if (strcmp(p->quota_fail, "open") && strcmp(p->quota_fail, "closed")) {
            snprintf(err, errlen, "quota_fail must be open or closed, got '%s'", p->quota_fail);
            st = MOE_ERR_INVAL;
            goto fail;
        }
        moe_tenant_gate_params gp = moe_tenant_gate_default_params();
        gp.db = p->tenants;
        gp.backend = p->quota_backend;
        gp.fail_open = !strcmp(p->quota_fail, "open");
        gp.metrics_max = (int)p->tenant_metrics;
        gp.aging = p->priority_aging;
        if ((st = moe_tenant_gate_open(&gp, &s->gate, err, errlen)) != MOE_OK) goto fail;
    }
    if ((st = srv_sched_start(s->model, s->tok, &sp, &s->metrics, &s->sched, err, errlen)) != MOE_OK) goto fail;
    s->kv_budget = srv_sched_kv_budget(s->sched);
    if (!strcmp(p->access_log, "-")) s->access = stderr;
    else if (p->access_log[0] && !(s->access = fopen(p->access_log, "a"))) {
        snprintf(err, errlen, "cannot open access log '%s': %s", p->access_log, strerror(errno));
        st = MOE_ERR_IO;
        goto fail;
    }
    /* the listen address */
    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_POLL;
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    const char *host = !strcmp(p->host, "localhost") ? "127.0.0.1" : p->host;
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)p->port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)p->port);
        sa = (struct sockaddr *)&a6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(err, errlen, "host '%s' is not an IPv4 or IPv6 address", p->host);
        st = MOE_ERR_INVAL;
        goto fail;
    }
    s->d = MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, sa,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)p->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)p->connection_timeout, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%lld (address in use or not permitted)", p->host, (long long)p->port);
        st = MOE_ERR_IO;
        goto fail;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : (int)p->port;
    *out = s;
    return MOE_OK;
fail:
    moe_server_free(s);
    return st;
}

int moe_server_port(const moe_server *s) { return s->port; }

const char *moe_server_model_name(const moe_server *s) { return s->model_name; }

void moe_server_reload(moe_server *s, const moe_server_params *p) {
    size_t n;
    const moe_setting *t = moe_server_settings(&n);
    pthread_mutex_lock(&s->pmu);
    for (size_t i = 0; i < n; i++)
        if (t[i].reloadable) memcpy((char *)&s->p + t[i].offset, (const char *)p + t[i].offset, t[i].size);
    pthread_mutex_unlock(&s->pmu);
    srv_sched_set_prefill_chunk(s->sched, (int32_t)p->prefill_chunk);
}

int moe_server_drain(moe_server *s) {
    atomic_store(&s->draining, 1);
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.ready = 0;
    pthread_mutex_unlock(&s->metrics.mu);
    srv_sched_close(s->sched);
    if (s->d) {
        MHD_socket ls = MHD_quiesce_daemon(s->d);
        if (ls != MHD_INVALID_SOCKET) close(ls);
    }
    pthread_mutex_lock(&s->pmu);
    double limit = s->p.shutdown_timeout;
    pthread_mutex_unlock(&s->pmu);
    double t0 = srv_now();
    while ((srv_sched_active(s->sched) || atomic_load(&s->inflight)) && srv_now() - t0 < limit) usleep(10000);
    int left = srv_sched_active(s->sched);
    if (left) srv_sched_cancel_all(s->sched);
    t0 = srv_now();
    while ((srv_sched_active(s->sched) || atomic_load(&s->inflight)) && srv_now() - t0 < 5) usleep(10000);
    return left;
}

void moe_server_free(moe_server *s) {
    if (!s) return;
    if (s->d) MHD_stop_daemon(s->d);
    srv_sched_free(s->sched);
    moe_tenant_gate_close(s->gate); /* writes the pending usage (issue 9) */
    if (s->access && s->access != stderr) fclose(s->access);
    if (s->metrics_ok) srv_metrics_free(&s->metrics);
    moe_tok_free(s->tok);
    moe_model_close(s->model);
    pthread_mutex_destroy(&s->pmu);
    pthread_mutex_destroy(&s->log_mu);
    free(s);
}
