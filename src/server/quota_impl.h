/* moekit quota internals: the backend table shared by quota.c (dispatch, bucket maths, the
 * local backend) and quota_redis.c (the Redis backend). */
#ifndef MOE_QUOTA_IMPL_H
#define MOE_QUOTA_IMPL_H

#include <pthread.h>
#include <stdatomic.h>

#include "moe/quota.h"

typedef struct quota_ops {
    const char *name;
    /* now: seconds from the injected clock, or 0 = the backend's own clock (Redis TIME) */
    int (*admit)(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t prompt, const char *lease,
                 double now, moe_quota_result *res);
    /* left: the tpm bucket's level after the charge (set only when l->tpm > 0) */
    int (*charge)(moe_quota *q, const char *bucket, const moe_quota_limits *l, int64_t n, double now, double *left);
    int (*release)(moe_quota *q, const char *bucket, const char *lease);
    int64_t (*budget_used)(moe_quota *q, const char *bucket, double now);
    int (*budget_seed)(moe_quota *q, const char *bucket, int64_t used, double now);
    void (*close)(moe_quota *q);
} quota_ops;

struct moe_quota {
    const quota_ops *ops;
    moe_quota_params p;
    char prefix[64];
    atomic_int up;
    atomic_ullong errors, policy;
    void *impl; /* owned by the backend */
};

/* the Redis backend (quota_redis.c): host and port parsed from the spec */
int quota_redis_open(moe_quota *q, const char *host, int port, char *err, size_t errlen);
double quota_wall(void);
double quota_burst(const moe_quota_limits *l);

#endif
