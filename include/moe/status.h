/* moekit: status codes shared by every module.
 *
 * Library calls return moe_status: MOE_OK (0) or a negative error. The values are
 * part of the ABI and never renumbered. */
#ifndef MOE_STATUS_H
#define MOE_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moe_status {
    MOE_OK = 0,
    MOE_ERR_NOMEM = -1,    /* allocation failed */
    MOE_ERR_IO = -2,       /* open/read/write/mmap failed */
    MOE_ERR_FORMAT = -3,   /* a file or payload is malformed */
    MOE_ERR_INVAL = -4,    /* the caller passed an invalid argument */
    MOE_ERR_BUSY = -5,     /* resource in use */
    MOE_ERR_NOTFOUND = -6, /* a key, tensor or item does not exist */
    MOE_ERR_RANGE = -7,    /* a value is outside what is supported (context full, ...) */
    MOE_ERR_UNSUPPORTED = -8, /* valid input this build cannot handle (unknown dtype, ...) */
    MOE_ERR_INTERNAL = -9, /* a bug: should never happen */
} moe_status;

/* Short static name of a status, e.g. "MOE_ERR_FORMAT". Thread-safe. */
const char *moe_status_str(moe_status st);

#ifdef __cplusplus
}
#endif
#endif
