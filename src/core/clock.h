/* moekit core: the monotonic wall clock in seconds, for timings and throughputs. */
#ifndef MOE_CORE_CLOCK_H
#define MOE_CORE_CLOCK_H

#include <time.h>

static inline double moe_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
