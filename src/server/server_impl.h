/* moekit server internals shared by the files of src/server.
 *
 * Ownership and threads:
 * - srv_req is shared by one HTTP thread and the engine thread; it is reference counted
 *   (srv_req_unref frees at zero). Inputs are written by the HTTP thread before submit and
 *   read-only after; the engine-private part is touched by the engine thread only; the
 *   output part is guarded by req->mu (the engine appends text, the HTTP thread takes it).
 * - srv_sched owns the engine, the sequences, the queue (guarded by sched->mu) and the
 *   engine thread.
 * - srv_metrics is guarded by its own mutex; every thread may update it. */
#ifndef MOE_SERVER_IMPL_H
#define MOE_SERVER_IMPL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "moe/model.h"
#include "moe/sample.h"
#include "moe/server.h"
#include "moe/tok.h"
#include "server/request.h"

/* ---- growable byte buffer (util.c) ---- */
typedef struct srv_buf {
    char *p; /* owned, NUL-terminated when len > 0 */
    size_t len, cap;
    int oom; /* an append failed: contents are incomplete */
} srv_buf;
int srv_buf_add(srv_buf *b, const void *data, size_t n);
int srv_buf_str(srv_buf *b, const char *s);
int srv_buf_fmt(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_consume(srv_buf *b, size_t n); /* drop the first n bytes */
void srv_buf_free(srv_buf *b);
double srv_now(void);      /* monotonic seconds */
double srv_wall(void);     /* Unix time, seconds */

/* ---- SSE framing and response bodies (api.c) ---- */
/* "data: <json>\n\n" (json must be one line: compact jansson output always is). */
int srv_sse_data(srv_buf *b, const char *json);
int srv_sse_done(srv_buf *b); /* "data: [DONE]\n\n" */

typedef struct srv_usage {
    int64_t prompt_tokens, completion_tokens;
} srv_usage;
/* The whole non-streaming response. finish: "stop" / "length". malloc'd JSON. */
char *srv_api_response(srv_kind kind, const char *id, int64_t created, const char *model, const char *text,
                       size_t text_len, const char *finish, const srv_usage *u);
/* One stream chunk. role: first chat chunk ("assistant"); text may be NULL (no content);
 * finish NULL = null; usage_mode: 0 no "usage" key, 1 "usage": null, 2 the usage object with
 * empty choices (the final usage chunk). malloc'd JSON. */
char *srv_api_chunk(srv_kind kind, const char *id, int64_t created, const char *model, const char *role,
                    const char *text, size_t text_len, const char *finish, int usage_mode, const srv_usage *u);
/* {"object":"list","data":[{"id":model,...}]} */
char *srv_api_models(const char *model, int64_t created);

/* ---- metrics (metrics.c) ---- */
typedef struct srv_hist {
    const double *le; /* upper bounds, ascending (static) */
    int n;
    uint64_t counts[32]; /* per bucket, not cumulative; [n] = +Inf */
    double sum;
    uint64_t count;
} srv_hist;

typedef struct srv_metrics {
    pthread_mutex_t mu;
    srv_hist queue, ttft, itl, e2e, step, step_tokens;
    uint64_t prompt_tokens, gen_tokens, steps, requests_done;
    uint64_t by_code[600];       /* HTTP status → responses */
    uint64_t finish_stop, finish_length, finish_cancel, finish_error;
    int64_t running, waiting;
    int64_t kv_used, kv_reserved, kv_capacity; /* tokens */
    double kv_bytes_per_token;
    int32_t n_layer, n_expert;
    uint8_t *is_moe;   /* owned, [n_layer] */
    uint64_t *expert;  /* owned, [n_layer][n_expert] totals */
    int ready;         /* a step completed (or the engine answered an idle probe) */
    double t_start;
} srv_metrics;

int srv_metrics_init(srv_metrics *m, int32_t n_layer, int32_t n_expert);
void srv_metrics_free(srv_metrics *m);
void srv_hist_observe(srv_hist *h, double v); /* caller holds m->mu */
void srv_metrics_code(srv_metrics *m, int status);
/* Prometheus text exposition format 0.0.4. */
int srv_metrics_render(srv_metrics *m, srv_buf *out);

/* ---- requests and the scheduler (sched.c) ---- */
typedef enum srv_finish {
    SRV_FINISH_NONE = 0,
    SRV_FINISH_STOP = 1,   /* end of sequence or a stop string */
    SRV_FINISH_LENGTH = 2, /* max_tokens or the context */
    SRV_FINISH_CANCEL = 3, /* client gone or shutdown */
    SRV_FINISH_ERROR = 4,  /* engine error (500) */
} srv_finish;

typedef struct srv_req {
    atomic_int refs;
    struct srv_req *next; /* queue link (sched->mu) */
    char id[48];
    srv_kind kind;
    int stream, include_usage, ignore_eos;
    /* inputs (HTTP thread before submit; read-only after) */
    int32_t *prompt; /* owned */
    int32_t n_prompt;
    int32_t max_tokens;
    char *stop[SRV_MAX_STOP]; /* owned copies */
    size_t stop_len[SRV_MAX_STOP];
    size_t n_stop;
    moe_sampler *smp;   /* owned; used by the engine thread after submit */
    moe_tok_stream *ts; /* owned; idem */
    double t_arrive;
    int32_t priority;   /* tenant's class (issue 9): higher is admitted first, with aging */
    atomic_int cancel;  /* set by the HTTP thread (client gone) or the drain */
    /* tokens-per-minute quota (issue 9): the engine generates at most `allow` tokens (the HTTP
     * thread raises it as it charges them; INT32_MAX without a quota) and publishes its count */
    atomic_int allow;
    atomic_int gen_pub; /* = n_gen, stored by the engine after each token */
    /* engine-private */
    int slot;
    int32_t n_done_prompt, n_gen, last;
    srv_buf hold; /* text that may be the start of a stop string */
    double t_admit, t_first, t_last;
    /* output (mu) */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_buf out; /* text not yet sent */
    srv_finish finish;
    int done, started;
    char errmsg[160];
    int32_t out_prompt, out_gen;
    int32_t out_prefilled; /* prompt tokens processed before the end (< out_prompt if cancelled early) */
} srv_req;

srv_req *srv_req_new(void);
void srv_req_ref(srv_req *r);
void srv_req_unref(srv_req *r);

typedef struct srv_sched srv_sched;
typedef struct srv_sched_params {
    int32_t parallel, ctx, batch, prefill_chunk, threads;
    int64_t kv_tokens;
    double aging; /* tenants (issue 9): > 0 admits by moe_tenant_prio_score; 0 = FIFO */
} srv_sched_params;

/* Create the engine and sequences and start the engine thread. */
moe_status srv_sched_start(moe_model *m, const moe_tok *tok, const srv_sched_params *p, srv_metrics *metrics, srv_sched **out,
                           char *err, size_t errlen);
/* Queue a request (takes a reference). 0 ok; 429 queue full; 503 draining. */
int srv_sched_submit(srv_sched *s, srv_req *r, int64_t queue_limit);
/* Wake the engine (after setting r->cancel or raising r->allow). */
void srv_sched_poke(srv_sched *s);
/* Reject new requests from now on. */
void srv_sched_close(srv_sched *s);
/* Requests queued or running. */
int srv_sched_active(srv_sched *s);
/* Cancel everything queued or running. */
void srv_sched_cancel_all(srv_sched *s);
void srv_sched_set_prefill_chunk(srv_sched *s, int32_t n);
/* Stop the thread and free (requests still held are finished as cancelled). */
void srv_sched_free(srv_sched *s);
int64_t srv_sched_kv_budget(const srv_sched *s);

#endif
