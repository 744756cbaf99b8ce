/* moekit core: a fixed thread pool for data-parallel steps (internal API).
 *
 * moe_pool_run(p, fn, arg) calls fn(arg, ith, nth) on nth threads (the caller is thread 0)
 * and returns when all have finished. Workers spin briefly between jobs (a decode step issues
 * a few dozen jobs; a hand-off between spinning threads makes no system call) and then sleep on
 * a condition variable. One caller at a time. */
#ifndef MOE_POOL_H
#define MOE_POOL_H

typedef struct moe_pool moe_pool;
typedef void (*moe_pool_fn)(void *arg, int ith, int nth);

/* n_threads <= 0 means the number of online CPUs. */
moe_pool *moe_pool_init(int n_threads);
void moe_pool_free(moe_pool *p);
int moe_pool_n_threads(const moe_pool *p);
void moe_pool_run(moe_pool *p, moe_pool_fn fn, void *arg);
/* Number of online CPUs. */
int moe_pool_n_cpus(void);

#endif
