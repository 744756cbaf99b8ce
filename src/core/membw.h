/* moekit core: memory read-bandwidth probe (internal; used by `moe bench`).
 *
 * Reads a buffer much larger than the last-level cache with all threads of a pool, several
 * times and in several access patterns (1, 2, 4 and 8 streams per thread on AVX-512), and
 * returns the best observed rate in bytes/s. This is the roofline's denominator:
 * decoding a MoE model cannot go faster than bandwidth ÷ bytes read per token. */
#ifndef MOE_MEMBW_H
#define MOE_MEMBW_H

#include <stddef.h>
#include <stdint.h>

#include "core/pool.h"

/* The buffer (bytes; 0 = 1 GiB) is committed once, so the probe can run next to every timed run
 * (the bandwidth of a shared machine drifts by tens of percent within minutes). */
typedef struct moe_membw moe_membw;
moe_membw *moe_membw_new(size_t bytes); /* NULL when out of memory */
/* reps rounds of passes over the buffer on every pool thread (one pass per pattern); the best rate in bytes/s */
double moe_membw_run(moe_membw *b, moe_pool *pool, int reps);
void moe_membw_free(moe_membw *b);

/* The ceiling of a traced run (`moe bench --ceiling`): reads the weight spans a trace recorded
 * (moe_kern_set_trace) set after set, each set one pool job as in the engine, with no
 * arithmetic: a set's bytes (its spans end to end) are cut into one equal part per thread, read
 * by `streams` (1-8) cursors in lockstep, 512 bytes at a time, 2 KB prefetched ahead (the probe's
 * loop). tile 0: the cursors start at equal slices of the part; tile > 0: the part is read in
 * tiles of streams·tile bytes, the cursors `tile` bytes apart (as the R16 kernels read 4
 * neighbouring row groups). Returns the seconds it took; *sum (may be NULL) gets the sum of every
 * byte read, so a caller can check that everything was read once; set_s (may be NULL, else
 * t->n_set entries) each set's seconds. */
struct moe_kern_trace;
double moe_membw_replay(moe_pool *pool, const struct moe_kern_trace *t, int streams, size_t tile, uint64_t *sum,
                        double *set_s);

#endif
