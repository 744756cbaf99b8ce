/* moekit server: the scheduler — one engine thread, continuous batching over a moe_engine.
 *
 * State of a request:
 *   queued  (sched->queue, FIFO)  --admit-->  prefill (slot, n_done_prompt < n_prompt)
 *   --last prompt chunk-->  decode (one token per step)  --EOS / stop / length / cancel-->  done
 * Admission (engine thread, under sched->mu): the head of the queue gets a free slot once its
 * reservation (prompt + max_tokens tokens) fits in the KV budget; the queue is FIFO, so a big
 * request is not starved by small ones. The HTTP side refuses a request that could never fit.
 *
 * A step: every decoding slot contributes its last token; the remaining room (batch − decode
 * tokens) goes to prompt chunks of at most prefill_chunk tokens, oldest admission first. So a
 * long prompt is prefilled over several steps while running streams keep getting a token
 * each step (the bound per turn, as redis bounds rehash work).
 *
 * Sampling: after a step, the tokens of the step's sequences are drawn on the engine's own
 * pool threads (moe_engine_parallel; each sequence has its own sampler and logits, so draws are
 * independent and a seeded request gets the same tokens whatever else is in the batch), handed
 * out one sequence at a time from a shared counter so a preempted thread holds up at most one.
 * Everything after the draw (text, stop strings, metrics, releases) stays on the engine thread.
 *
 * Output: generated text passes the streaming detokenizer (valid UTF-8) and the stop-string
 * matcher, which holds back the longest tail that could still begin a stop string, then goes
 * to req->out under req->mu and wakes the HTTP thread. Cancellation (client gone, shutdown)
 * is a flag the engine checks before every step: the slot and its reservation are freed at
 * once, and the sequence's cache is truncated for the next request.
 *
 * Tokens-per-minute quotas (issue 9): a request decodes only while n_gen < r->allow. The HTTP
 * thread charges tokens to the tenant a few at a time ahead of use and raises allow (then
 * pokes); a slot out of granted tokens simply sits out steps, and an engine with nothing to
 * run sleeps until a poke. Without a quota allow is INT32_MAX.
 *
 * Lock order: sched->mu, then req->mu, then metrics->mu. The engine thread never blocks on
 * an HTTP thread. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "moe/batch.h"
#include "moe/tenant.h"
#include "server/server_impl.h"

typedef struct srv_slot {
    moe_seq *seq;   /* owned */
    srv_req *req;   /* reference held while running; NULL = free */
    float *logits;  /* owned, (V) */
    int64_t need;   /* tokens reserved in the KV budget */
    uint64_t order; /* admission number (prefill order) */
    int32_t next;   /* the token just sampled from logits */
} srv_slot;

struct srv_sched {
    moe_model *model; /* borrowed */
    const moe_tok *tok; /* borrowed */
    moe_engine *eng;  /* owned; engine thread only */
    srv_metrics *metrics; /* borrowed */
    srv_slot *slots;
    int32_t n_slots, ctx, batch, V;
    atomic_int prefill_chunk;
    int64_t kv_budget, kv_reserved;
    double aging; /* tenants (issue 9): 0 = FIFO */
    uint64_t n_admitted;
    moe_batch_item *items; /* (n_slots) */
    int *item_slot;
    int *sample_slot; /* (n_slots): slots whose token is sampled after this step */
    double t_counts;
    pthread_t thread;
    int started;
    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    srv_req *q_head, *q_tail;
    int64_t n_queued, n_running;
    uint64_t pokes; /* srv_sched_poke calls: an engine with nothing to run sleeps until it changes */
    int closed, quit, cancel_all;
};

srv_req *srv_req_new(void) {
    srv_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    atomic_init(&r->refs, 1);
    atomic_init(&r->cancel, 0);
    atomic_init(&r->allow, INT32_MAX);
    atomic_init(&r->gen_pub, 0);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->slot = -1;
    return r;
}

void srv_req_ref(srv_req *r) { atomic_fetch_add(&r->refs, 1); }

void srv_req_unref(srv_req *r) {
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
    free(r->prompt);
    for (size_t i = 0; i < r->n_stop; i++) free(r->stop[i]);
    moe_sampler_free(r->smp);
    moe_tok_stream_free(r->ts);
    srv_buf_free(&r->hold);
    srv_buf_free(&r->out);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r);
}

static void publish(srv_req *r, const char *p, size_t n) {
    if (!n) return;
    pthread_mutex_lock(&r->mu);
    srv_buf_add(&r->out, p, n);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Add generated text; returns 1 if a stop string was found (text before it is published). */
static int emit_text(srv_req *r, const char *p, size_t n) {
    if (!r->n_stop) {
        publish(r, p, n);
        return 0;
    }
    if (n) srv_buf_add(&r->hold, p, n);
    const char *h = r->hold.p;
    size_t hl = r->hold.len;
    size_t first = (size_t)-1;
    for (size_t i = 0; i < r->n_stop; i++) {
        const char *at = hl ? memmem(h, hl, r->stop[i], r->stop_len[i]) : NULL;
        if (at && (size_t)(at - h) < first) first = (size_t)(at - h);
    }
    if (first != (size_t)-1) {
        publish(r, h, first);
        srv_buf_consume(&r->hold, hl);
        return 1;
    }
    size_t keep = 0; /* longest tail of hold that is a proper prefix of some stop string */
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t m = r->stop_len[i] - 1 < hl ? r->stop_len[i] - 1 : hl;
        for (size_t k = m; k > keep; k--)
            if (!memcmp(h + hl - k, r->stop[i], k)) {
                keep = k;
                break;
            }
    }
    publish(r, h, hl - keep);
    srv_buf_consume(&r->hold, hl - keep);
    return 0;
}

static void metrics_finish(srv_sched *s, srv_req *r, srv_finish f) {
    srv_metrics *m = s->metrics;
    pthread_mutex_lock(&m->mu);
    if (f == SRV_FINISH_STOP) m->finish_stop++;
    else if (f == SRV_FINISH_LENGTH) m->finish_length++;
    else if (f == SRV_FINISH_CANCEL) m->finish_cancel++;
    else m->finish_error++;
    if (f == SRV_FINISH_STOP || f == SRV_FINISH_LENGTH) srv_hist_observe(&m->e2e, srv_now() - r->t_arrive);
    m->requests_done++;
    pthread_mutex_unlock(&m->mu);
}

/* Mark r done (engine thread; r holds no slot any more). Drops the engine's reference. */
static void req_done(srv_sched *s, srv_req *r, srv_finish f, const char *msg) {
    if (f == SRV_FINISH_STOP || f == SRV_FINISH_LENGTH) {
        const char *p;
        size_t n;
        if (r->ts && f == SRV_FINISH_LENGTH && !moe_tok_stream_flush(r->ts, &p, &n) && n) {
            if (emit_text(r, p, n)) f = SRV_FINISH_STOP;
        }
        if (r->hold.len) publish(r, r->hold.p, r->hold.len);
        srv_buf_consume(&r->hold, r->hold.len);
    }
    pthread_mutex_lock(&r->mu);
    r->finish = f;
    r->done = 1;
    r->out_prompt = r->n_prompt;
    r->out_gen = r->n_gen;
    r->out_prefilled = r->n_done_prompt;
    if (msg) snprintf(r->errmsg, sizeof r->errmsg, "%s", msg);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    metrics_finish(s, r, f);
    srv_req_unref(r);
}

static void slot_release(srv_sched *s, int i, srv_finish f, const char *msg) {
    srv_slot *sl = &s->slots[i];
    srv_req *r = sl->req;
    sl->req = NULL;
    moe_seq_truncate(sl->seq, 0);
    s->kv_reserved -= sl->need;
    sl->need = 0;
    pthread_mutex_lock(&s->mu);
    s->n_running--;
    pthread_mutex_unlock(&s->mu);
    if (r) req_done(s, r, f, msg);
}

/* Under s->mu: drop cancelled queued requests, admit the head while it fits. */
static void admit_locked(srv_sched *s) {
    srv_req **pp = &s->q_head, *prev = NULL;
    while (*pp) {
        srv_req *r = *pp;
        if (atomic_load(&r->cancel) || s->cancel_all) {
            *pp = r->next;
            if (s->q_tail == r) s->q_tail = prev;
            s->n_queued--;
            req_done(s, r, SRV_FINISH_CANCEL, "cancelled while queued");
            continue;
        }
        prev = r;
        pp = &r->next;
    }
    while (s->q_head && !s->quit) {
        /* tenants (issue 9): with priorities the candidate is the best moe_tenant_prio_score
         * (class + waited / aging; ties first come), else the head. It waits for room like the
         * head does, so neither a big request nor a low class is starved. */
        srv_req **pick = &s->q_head, *pick_prev = NULL;
        if (s->aging > 0) {
            double now = srv_now(), best = -1e300;
            for (srv_req **qq = &s->q_head, *qprev = NULL; *qq; qprev = *qq, qq = &(*qq)->next) {
                double sc = moe_tenant_prio_score((*qq)->priority, now - (*qq)->t_arrive, s->aging);
                if (sc > best) {
                    best = sc;
                    pick = qq;
                    pick_prev = qprev;
                }
            }
        }
        srv_req *r = *pick;
        int64_t need = (int64_t)r->n_prompt + r->max_tokens;
        if (s->kv_reserved + need > s->kv_budget) break;
        int free_slot = -1;
        for (int i = 0; i < s->n_slots && free_slot < 0; i++)
            if (!s->slots[i].req) free_slot = i;
        if (free_slot < 0) break;
        *pick = r->next;
        if (s->q_tail == r) s->q_tail = pick_prev;
        r->next = NULL;
        s->n_queued--;
        s->n_running++;
        srv_slot *sl = &s->slots[free_slot];
        sl->req = r;
        sl->need = need;
        sl->order = s->n_admitted++;
        s->kv_reserved += need;
        r->slot = free_slot;
        r->t_admit = srv_now();
        pthread_mutex_lock(&s->metrics->mu);
        srv_hist_observe(&s->metrics->queue, r->t_admit - r->t_arrive);
        pthread_mutex_unlock(&s->metrics->mu);
    }
    pthread_mutex_lock(&s->metrics->mu);
    s->metrics->waiting = s->n_queued;
    s->metrics->running = s->n_running;
    s->metrics->kv_reserved = s->kv_reserved;
    pthread_mutex_unlock(&s->metrics->mu);
}

/* The draws of one step, spread over the engine's pool threads. */
typedef struct {
    srv_slot *slots;
    const int *slot; /* (n) slots to sample */
    int32_t n;
    atomic_int next_job;
} sample_job;

static void sample_worker(void *arg, int ith, int nth) {
    sample_job *j = arg;
    (void)ith;
    (void)nth;
    for (int32_t k; (k = atomic_fetch_add_explicit(&j->next_job, 1, memory_order_relaxed)) < j->n;) {
        srv_slot *sl = &j->slots[j->slot[k]];
        sl->next = moe_sampler_sample(sl->req->smp, sl->logits);
    }
}

static void sample_step(srv_sched *s, int32_t n) {
    if (n == 1) { /* nothing to share: no hand-off */
        srv_slot *sl = &s->slots[s->sample_slot[0]];
        sl->next = moe_sampler_sample(sl->req->smp, sl->logits);
        return;
    }
    sample_job j = {s->slots, s->sample_slot, n, 0};
    moe_engine_parallel(s->eng, sample_worker, &j);
}

/* After a step: slot i's token (sl->next) was sampled from its logits. */
static void on_token(srv_sched *s, int i) {
    srv_slot *sl = &s->slots[i];
    srv_req *r = sl->req;
    double now = srv_now();
    int32_t id = sl->next;
    r->n_gen++;
    atomic_store_explicit(&r->gen_pub, r->n_gen, memory_order_release);
    if (r->n_gen == atomic_load_explicit(&r->allow, memory_order_acquire) && r->n_gen < r->max_tokens) {
        pthread_mutex_lock(&r->mu); /* out of granted tokens: wake the HTTP thread to charge more */
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
    pthread_mutex_lock(&s->metrics->mu);
    s->metrics->gen_tokens++;
    if (r->n_gen == 1) srv_hist_observe(&s->metrics->ttft, now - r->t_arrive);
    else srv_hist_observe(&s->metrics->itl, now - r->t_last);
    pthread_mutex_unlock(&s->metrics->mu);
    if (r->n_gen == 1) r->t_first = now;
    r->t_last = now;
    if (!r->ignore_eos && moe_tok_is_eog(s->tok, id)) {
        slot_release(s, i, SRV_FINISH_STOP, NULL);
        return;
    }
    const char *p;
    size_t n = 0;
    if (!moe_tok_stream_push(r->ts, id, &p, &n) && n && emit_text(r, p, n)) {
        slot_release(s, i, SRV_FINISH_STOP, NULL);
        return;
    }
    if (r->n_gen >= r->max_tokens || moe_seq_pos(sl->seq) + 1 > moe_seq_n_ctx(sl->seq)) {
        slot_release(s, i, SRV_FINISH_LENGTH, NULL);
        return;
    }
    r->last = id;
}

static void update_metrics(srv_sched *s, double dt, int32_t n_tok, int32_t n_prompt_tok) {
    srv_metrics *m = s->metrics;
    int64_t used = 0;
    for (int i = 0; i < s->n_slots; i++) used += moe_seq_pos(s->slots[i].seq);
    double now = srv_now();
    int copy = now - s->t_counts > 0.1 || n_tok == 0;
    pthread_mutex_lock(&m->mu);
    if (n_tok) {
        m->steps++;
        srv_hist_observe(&m->step, dt);
        srv_hist_observe(&m->step_tokens, n_tok);
        m->prompt_tokens += (uint64_t)n_prompt_tok;
        m->ready = 1;
    }
    m->kv_used = used;
    if (copy) {
        for (int32_t l = 0; l < m->n_layer; l++) {
            const uint64_t *c = moe_engine_expert_counts(s->eng, l);
            if (c) memcpy(m->expert + (size_t)l * (size_t)m->n_expert, c, (size_t)m->n_expert * sizeof *c);
        }
    }
    pthread_mutex_unlock(&m->mu);
    if (copy) s->t_counts = now;
}

static void *engine_main(void *arg) {
    srv_sched *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int any;
        for (;;) {
            admit_locked(s);
            any = 0;
            for (int i = 0; i < s->n_slots; i++) any |= s->slots[i].req != NULL;
            if (any || s->quit) break;
            pthread_mutex_unlock(&s->mu);
            update_metrics(s, 0, 0, 0);
            pthread_mutex_lock(&s->mu);
            if (s->q_head || s->quit) continue;
            pthread_cond_wait(&s->cv, &s->mu);
        }
        int quit = s->quit, kill = s->cancel_all;
        uint64_t pokes = s->pokes;
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < s->n_slots; i++) {
            srv_req *r = s->slots[i].req;
            if (r && (quit || kill || atomic_load(&r->cancel)))
                slot_release(s, i, SRV_FINISH_CANCEL, quit || kill ? "server shutting down" : "client gone");
        }
        if (quit) break;
        /* build the step: decode tokens first, then prompt chunks, oldest admission first */
        int32_t n_items = 0, n_tok = 0, n_prompt_tok = 0;
        for (int i = 0; i < s->n_slots; i++) {
            srv_req *r = s->slots[i].req;
            if (!r || r->n_done_prompt < r->n_prompt) continue;
            if (r->n_gen >= atomic_load_explicit(&r->allow, memory_order_acquire)) continue; /* tpm: wait */
            s->items[n_items] = (moe_batch_item){s->slots[i].seq, &r->last, 1, s->slots[i].logits};
            s->item_slot[n_items++] = i;
            n_tok++;
        }
        int32_t chunk_max = atomic_load(&s->prefill_chunk);
        for (;;) {
            int best = -1;
            for (int i = 0; i < s->n_slots; i++) {
                srv_req *r = s->slots[i].req;
                if (!r || r->n_done_prompt >= r->n_prompt) continue;
                int taken = 0;
                for (int j = 0; j < n_items; j++) taken |= s->item_slot[j] == i;
                if (taken) continue;
                if (best < 0 || s->slots[i].order < s->slots[best].order) best = i;
            }
            if (best < 0 || n_tok >= s->batch) break;
            srv_req *r = s->slots[best].req;
            int32_t left = r->n_prompt - r->n_done_prompt, room = s->batch - n_tok;
            int32_t n = left < chunk_max ? left : chunk_max;
            if (n > room) n = room;
            int last = n == left;
            s->items[n_items] = (moe_batch_item){s->slots[best].seq, r->prompt + r->n_done_prompt, n,
                                                 last ? s->slots[best].logits : NULL};
            s->item_slot[n_items++] = best;
            n_tok += n;
            n_prompt_tok += n;
        }
        if (!n_items) { /* every running request waits for tokens to be granted (tpm quota) */
            pthread_mutex_lock(&s->mu);
            if (s->pokes == pokes && !s->quit && !s->cancel_all) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += 100 * 1000000L; /* a bound, in case a wake-up is missed */
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            }
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        double t0 = srv_now();
        moe_status st = moe_engine_step(s->eng, s->items, n_items);
        double dt = srv_now() - t0;
        if (st != MOE_OK) {
            char msg[160];
            snprintf(msg, sizeof msg, "engine step failed: %s", moe_engine_errmsg(s->eng));
            fprintf(stderr, "moe serve: %s\n", msg);
            for (int j = 0; j < n_items; j++) slot_release(s, s->item_slot[j], SRV_FINISH_ERROR, msg);
            continue;
        }
        int32_t n_sample = 0;
        for (int j = 0; j < n_items; j++) {
            int i = s->item_slot[j];
            srv_req *r = s->slots[i].req;
            if (r->n_done_prompt < r->n_prompt) {
                r->n_done_prompt += s->items[j].n_tokens;
                if (r->n_done_prompt < r->n_prompt) continue;
            }
            s->sample_slot[n_sample++] = i;
        }
        if (n_sample) sample_step(s, n_sample);
        for (int j = 0; j < n_sample; j++) on_token(s, s->sample_slot[j]);
        update_metrics(s, dt, n_tok, n_prompt_tok);
    }
    return NULL;
}

moe_status srv_sched_start(moe_model *m, const moe_tok *tok, const srv_sched_params *p, srv_metrics *metrics,
                           srv_sched **out, char *err, size_t errlen) {
    *out = NULL;
    srv_sched *s = calloc(1, sizeof *s);
    if (!s) return MOE_ERR_NOMEM;
    s->model = m;
    s->tok = tok;
    s->metrics = metrics;
    s->n_slots = p->parallel;
    s->ctx = p->ctx;
    s->batch = p->batch;
    s->aging = p->aging;
    s->V = moe_model_hparams(m)->n_vocab;
    atomic_init(&s->prefill_chunk, p->prefill_chunk);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    moe_status st;
    moe_engine_params ep = moe_engine_default_params();
    ep.n_batch = p->batch;
    ep.n_seq_max = p->parallel;
    ep.n_threads = p->threads;
    if ((st = moe_engine_init(m, &ep, &s->eng, err, errlen)) != MOE_OK) goto fail;
    s->slots = calloc((size_t)s->n_slots, sizeof *s->slots);
    s->items = calloc((size_t)s->n_slots, sizeof *s->items);
    s->item_slot = calloc((size_t)s->n_slots, sizeof *s->item_slot);
    s->sample_slot = calloc((size_t)s->n_slots, sizeof *s->sample_slot);
    st = MOE_ERR_NOMEM;
    if (!s->slots || !s->items || !s->item_slot || !s->sample_slot) goto fail;
    for (int i = 0; i < s->n_slots; i++) {
        if ((st = moe_seq_init(s->eng, p->ctx, &s->slots[i].seq)) != MOE_OK) {
            snprintf(err, errlen, "cannot create sequence %d of %d with %d tokens: %s", i + 1, s->n_slots, p->ctx,
                     moe_engine_errmsg(s->eng));
            goto fail;
        }
        st = MOE_ERR_NOMEM;
        if (!(s->slots[i].logits = malloc((size_t)s->V * sizeof(float)))) goto fail;
    }
    /* warm-up: one token through the whole model, so /ready means a step has completed */
    int32_t bos = moe_tok_bos(tok) >= 0 && moe_tok_bos(tok) < s->V ? moe_tok_bos(tok) : 0;
    moe_batch_item warm = {s->slots[0].seq, &bos, 1, s->slots[0].logits};
    if ((st = moe_engine_step(s->eng, &warm, 1)) != MOE_OK) {
        snprintf(err, errlen, "warm-up step failed: %s", moe_engine_errmsg(s->eng));
        goto fail;
    }
    moe_seq_truncate(s->slots[0].seq, 0);
    moe_engine_reset_expert_counts(s->eng);
    int64_t all = (int64_t)p->parallel * p->ctx;
    s->kv_budget = p->kv_tokens > 0 && p->kv_tokens < all ? p->kv_tokens : all;
    pthread_mutex_lock(&metrics->mu);
    metrics->kv_capacity = s->kv_budget;
    metrics->kv_bytes_per_token = (double)moe_seq_bytes(s->slots[0].seq) / (double)p->ctx;
    for (int32_t l = 0; l < metrics->n_layer; l++) metrics->is_moe[l] = moe_engine_expert_counts(s->eng, l) != NULL;
    metrics->ready = 1;
    pthread_mutex_unlock(&metrics->mu);
    if (pthread_create(&s->thread, NULL, engine_main, s)) {
        snprintf(err, errlen, "cannot start the engine thread");
        st = MOE_ERR_INTERNAL;
        goto fail;
    }
    s->started = 1;
    *out = s;
    return MOE_OK;
fail:
    srv_sched_free(s);
    return st;
}

int srv_sched_submit(srv_sched *s, srv_req *r, int64_t queue_limit) {
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->closed) rc = 503;
    else if (s->n_queued >= queue_limit && s->n_running + s->n_queued >= s->n_slots) rc = 429;
    if (!rc) {
        srv_req_ref(r);
        r->next = NULL;
        if (s->q_tail) s->q_tail->next = r;
        else s->q_head = r;
        s->q_tail = r;
        s->n_queued++;
        pthread_mutex_lock(&s->metrics->mu);
        s->metrics->waiting = s->n_queued;
        pthread_mutex_unlock(&s->metrics->mu);
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

void srv_sched_poke(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->pokes++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv_sched_close(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->closed = 1;
    pthread_mutex_unlock(&s->mu);
}

int srv_sched_active(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    int n = (int)(s->n_queued + s->n_running);
    pthread_mutex_unlock(&s->mu);
    return n;
}

void srv_sched_cancel_all(srv_sched *s) {
    pthread_mutex_lock(&s->mu);
    s->cancel_all = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void srv_sched_set_prefill_chunk(srv_sched *s, int32_t n) { atomic_store(&s->prefill_chunk, n > 0 ? n : 1); }

int64_t srv_sched_kv_budget(const srv_sched *s) { return s->kv_budget; }

void srv_sched_free(srv_sched *s) {
    if (!s) return;
    if (s->started) {
        pthread_mutex_lock(&s->mu);
        s->quit = 1;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thread, NULL);
    }
    while (s->q_head) {
        srv_req *r = s->q_head;
        s->q_head = r->next;
        req_done(s, r, SRV_FINISH_CANCEL, "server shutting down");
    }
    for (int i = 0; s->slots && i < s->n_slots; i++) {
        if (s->slots[i].req) req_done(s, s->slots[i].req, SRV_FINISH_CANCEL, "server shutting down");
        moe_seq_free(s->slots[i].seq);
        free(s->slots[i].logits);
    }
    free(s->slots);
    free(s->items);
    free(s->item_slot);
    free(s->sample_slot);
    moe_engine_free(s->eng);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}
