/* libFuzzer target: moe_gguf_open_mem over arbitrary bytes, then every accessor.
 *
 * A file either fails with MOE_ERR_FORMAT and a message "gguf: at byte N: ..." or opens, and
 * then every key, array element, string, getter and tensor is read (gh_touch_all) and the
 * first row of each tensor of a supported type is dequantized. Anything else (crash, ASan or
 * UBSan report, an empty message, another status) is a finding. libFuzzer hands us an
 * exact-size heap copy, so any read past the end is caught.
 * Run: scripts/run-fuzz.sh build-fuzz (see docs/gguf.md). */
#include <stdlib.h>

#include "fmt/gguf_hostile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    moe_gguf *g = NULL;
    char err[256] = "";
    moe_status st = moe_gguf_open_mem(data, size, &g, err, sizeof err);
    if (st != MOE_OK) {
        if (st != MOE_ERR_FORMAT || g != NULL || strncmp(err, "gguf: at byte ", 14) != 0) abort();
        return 0;
    }
    volatile uint64_t sum = gh_touch_all(g);
    static float row[4096];
    for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
        const moe_gguf_tensor *t = moe_gguf_tensor_at(g, i);
        int64_t n = t->ne[0];
        if (!moe_dtype_supported(t->type) || n <= 0 || n > 4096) continue;
        if (moe_dtype_row_bytes(t->type, n) > t->nbytes) continue; /* zero rows */
        if (moe_dtype_dequant_row(t->type, t->data, row, n) != 0) abort();
        uint32_t bits; /* garbage weights are any float, NaN included: add the bits */
        memcpy(&bits, &row[n - 1], 4);
        sum += bits;
    }
    (void)sum;
    moe_gguf_close(g);
    return 0;
}
