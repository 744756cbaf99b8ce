/* tests/tenant helpers: a real redis-server on a free 127.0.0.1 port in a mkdtemp folder,
 * a fake clock, running the moe binary. */
#ifndef MOE_TENANT_TEST_UTIL_H
#define MOE_TENANT_TEST_UTIL_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "redis_util.h"
#include "testutil.h"

typedef struct fake_clock {
    double t;
} fake_clock;

static inline double fake_now(void *ctx) { return ((fake_clock *)ctx)->t; }

static inline double tt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#endif
