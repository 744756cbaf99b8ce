/* libFuzzer target: the safetensors header parser (moe_st_open_mem) and every accessor of an
 * accepted file (find by name, metadata, float conversion of every tensor in bounded pieces).
 * Build: CC=clang cmake -DMOE_FUZZ=ON; run: scripts/run-fuzz.sh BUILD_DIR. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "moe/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe_st *f = NULL;
    char err[256];
    if (moe_st_open_mem(data, size, &f, err, sizeof err) != MOE_OK) return 0;
    float buf[64];
    for (int64_t i = 0; i < moe_st_n_tensors(f); i++) {
        const moe_st_tensor *t = moe_st_tensor_at(f, i);
        if (moe_st_find(f, t->name) == NULL) abort(); /* every tensor is findable by name */
        if (t->offset + t->nbytes > size) abort();   /* and lies inside the input */
        for (int64_t k = 0; k < t->n_elem && k < 4096; k += 64) {
            int64_t n = t->n_elem - k < 64 ? t->n_elem - k : 64;
            moe_st_read_f32(t, k, n, buf);
        }
    }
    moe_st_metadata(f, "format");
    moe_st_close(f);
    return 0;
}
