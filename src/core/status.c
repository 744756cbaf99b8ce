/* moekit core: names of status codes. */
#include "moe/status.h"

const char *moe_status_str(moe_status st) {
    switch (st) {
    case MOE_OK: return "MOE_OK";
    case MOE_ERR_NOMEM: return "MOE_ERR_NOMEM";
    case MOE_ERR_IO: return "MOE_ERR_IO";
    case MOE_ERR_FORMAT: return "MOE_ERR_FORMAT";
    case MOE_ERR_INVAL: return "MOE_ERR_INVAL";
    case MOE_ERR_BUSY: return "MOE_ERR_BUSY";
    case MOE_ERR_NOTFOUND: return "MOE_ERR_NOTFOUND";
    case MOE_ERR_RANGE: return "MOE_ERR_RANGE";
    case MOE_ERR_UNSUPPORTED: return "MOE_ERR_UNSUPPORTED";
    case MOE_ERR_INTERNAL: return "MOE_ERR_INTERNAL";
    }
    return "MOE_ERR_UNKNOWN";
}
