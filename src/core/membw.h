/* moekit core: memory read-bandwidth probe (internal; used by `moe bench`).
 *
 * Reads a buffer much larger than the last-level cache with all threads of a pool, several
 * times and in several access patterns (1, 2, 4 and 8 streams per thread on AVX-512), and
 * returns the best observed rate in bytes/s. This is the roofline's denominator:
 * decoding a MoE model cannot go faster than bandwidth ÷ bytes read per token. */
#ifndef MOE_MEMBW_H
#define MOE_MEMBW_H

#include <stddef.h>

#include "core/pool.h"

/* The buffer (bytes; 0 = 1 GiB) is committed once, so the probe can run next to every timed run
 * (the bandwidth of a shared machine drifts by tens of percent within minutes). */
typedef struct moe_membw moe_membw;
moe_membw *moe_membw_new(size_t bytes); /* NULL when out of memory */
/* reps rounds of passes over the buffer on every pool thread (one pass per pattern); the best rate in bytes/s */
double moe_membw_run(moe_membw *b, moe_pool *pool, int reps);
void moe_membw_free(moe_membw *b);

#endif
