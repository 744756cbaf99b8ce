/* moekit core: memory read-bandwidth probe (internal; used by `moe bench`).
 *
 * Reads a buffer much larger than the last-level cache with all threads of a pool, several
 * times, and returns the best observed rate in bytes/s. This is the roofline's denominator:
 * decoding a MoE model cannot go faster than bandwidth ÷ bytes read per token. */
#ifndef MOE_MEMBW_H
#define MOE_MEMBW_H

#include <stddef.h>

#include "core/pool.h"

/* bytes: buffer size (0 = 1 GiB); reps: passes (best one counts). Returns 0 on failure. */
double moe_membw_probe(moe_pool *pool, size_t bytes, int reps);

/* A probe whose buffer is committed once, for measurements repeated next to each timed run
 * (the bandwidth of a shared machine drifts by tens of percent within minutes). */
typedef struct moe_membw moe_membw;
moe_membw *moe_membw_new(size_t bytes); /* NULL when out of memory */
double moe_membw_run(moe_membw *b, moe_pool *pool, int reps);
void moe_membw_free(moe_membw *b);

#endif
