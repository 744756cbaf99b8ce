/* moekit core: map a regular file read-only (internal; the GGUF and safetensors readers).
 *
 * Opening never blocks (a FIFO is refused as "not a regular file"); an empty file maps to a
 * static empty buffer. Messages name the path and the system error. */
#ifndef MOE_MAPFILE_H
#define MOE_MAPFILE_H

#include <stddef.h>

#include "moe/status.h"

/* On success base and size describe the mapping; free it with moe_unmap_file(base, size). */
moe_status moe_map_file(const char *path, const void **base, size_t *size, char *err, size_t errlen);
void moe_unmap_file(const void *base, size_t size);

#endif
