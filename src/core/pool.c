/* moekit core: thread pool (see pool.h).
 *
 * State: `gen` counts jobs. Workers wait for gen to change, run their share, then increment
 * `done`. The caller publishes (fn, arg), bumps gen, runs share 0 and waits for done = nth-1.
 * Waiting is a spin with pause (about 100 µs: a decode step hands off a few dozen jobs, a few
 * µs of serial work apart) and then a condition variable, so idle pools use no CPU. The mutex
 * and the condition variables are touched only when somebody sleeps: a sleeper registers in
 * `n_sleep` (or `caller_sleep`) under the mutex and re-checks its condition there; the waker
 * changes the condition, then reads the registration (both seq_cst, so one of the two sees
 * the other's write) and only then locks and signals. A hand-off between spinning threads is
 * therefore two cache-line transfers, no system call. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/pool.h"

#define SPIN_ITERS 4000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

struct moe_pool {
    int n;
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv_job, cv_done;
    _Atomic unsigned gen;
    _Alignas(64) _Atomic int done;
    _Atomic int n_sleep;      /* workers registered as sleeping on cv_job */
    _Atomic int caller_sleep; /* the caller sleeps on cv_done */
    _Atomic int quit;
    moe_pool_fn fn;
    void *arg;
};

typedef struct {
    moe_pool *p;
    int ith;
} worker_arg;

static void *worker(void *va) {
    worker_arg *wa = va;
    moe_pool *p = wa->p;
    int ith = wa->ith;
    free(wa);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&p->quit, memory_order_relaxed)) return NULL;
            if (++spins < SPIN_ITERS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleep, 1);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->cv_job, &p->mu);
            atomic_fetch_sub(&p->n_sleep, 1);
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        p->fn(p->arg, ith, p->n);
        if (atomic_fetch_add(&p->done, 1) + 1 == p->n - 1 && atomic_load(&p->caller_sleep)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

int moe_pool_n_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

moe_pool *moe_pool_init(int n_threads) {
    moe_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads > 0 ? n_threads : moe_pool_n_cpus();
    if (p->n > 256) p->n = 256;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_job, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    p->th = calloc((size_t)p->n, sizeof(pthread_t));
    if (!p->th) {
        free(p);
        return NULL;
    }
    for (int i = 1; i < p->n; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (!wa) {
            p->n = i;
            break;
        }
        wa->p = p;
        wa->ith = i;
        if (pthread_create(&p->th[i], NULL, worker, wa) != 0) {
            free(wa);
            p->n = i;
            break;
        }
    }
    return p;
}

void moe_pool_free(moe_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->cv_job);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_job);
    pthread_cond_destroy(&p->cv_done);
    free(p->th);
    free(p);
}

int moe_pool_n_threads(const moe_pool *p) { return p->n; }

void moe_pool_run(moe_pool *p, moe_pool_fn fn, void *arg) {
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_fetch_add(&p->gen, 1); /* seq_cst: publishes fn/arg/done, ordered before the n_sleep read */
    if (atomic_load(&p->n_sleep)) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv_job);
        pthread_mutex_unlock(&p->mu);
    }
    fn(arg, 0, p->n);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) != p->n - 1) {
        if (++spins < SPIN_ITERS) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleep, 1);
        while (atomic_load(&p->done) != p->n - 1) pthread_cond_wait(&p->cv_done, &p->mu);
        atomic_store(&p->caller_sleep, 0);
        pthread_mutex_unlock(&p->mu);
    }
}
