/* GGUF reader over the shared test models: every file opens, keys and tensors read back. */
#include "moe/gguf.h"
#include "testutil.h"

int main(void) {
    const char *files[] = {"vectors/models/v3-f32.gguf", "vectors/models/v3-q8_0.gguf",
                           "vectors/models/v3tied-bf16.gguf", "vectors/models/tiny-v3-realvocab-f16.gguf",
                           "vectors/tokenizer/deepseek-v3-vocab.gguf"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char p[1024], err[256];
        moe_gguf *g;
        moe_status st = moe_gguf_open(tu_shared(files[i], p, sizeof p), &g, err, sizeof err);
        CHECK(st == MOE_OK, "%s: %s", files[i], err);
        if (st) continue;
        moe_str arch;
        CHECK(moe_gguf_get_str(g, "general.architecture", &arch) == MOE_OK && arch.len == 9 &&
                  !memcmp(arch.ptr, "deepseek2", 9), "%s: architecture", files[i]);
        int64_t ki;
        uint64_t n;
        CHECK(moe_gguf_get_arr(g, "tokenizer.ggml.tokens", MOE_GGUF_TYPE_STRING, &ki, &n) == MOE_OK && n >= 512,
              "%s: tokens", files[i]);
        uint32_t u;
        CHECK(moe_gguf_get_u32(g, "deepseek2.block_count", &u) == MOE_OK && u > 0, "%s: block_count", files[i]);
        CHECK(moe_gguf_get_i32(g, "deepseek2.block_count", (int32_t *)&u) == MOE_ERR_FORMAT, "%s: wrong type is an error", files[i]);
        CHECK(strstr(moe_gguf_errmsg(g), "expected int32") != NULL, "message: %s", moe_gguf_errmsg(g));
        if (moe_gguf_n_tensors(g) > 0) {
            const moe_gguf_tensor *t = moe_gguf_find_tensor(g, "token_embd.weight");
            CHECK(t && t->ne[1] == (int64_t)n, "%s: token_embd [D, V]", files[i]);
            for (int64_t j = 0; j < moe_gguf_n_tensors(g); j++) {
                const moe_gguf_tensor *tj = moe_gguf_tensor_at(g, j);
                char name[80];
                snprintf(name, sizeof name, "%.*s", (int)tj->name.len, tj->name.ptr);
                CHECK(moe_gguf_find_tensor(g, name) == tj, "find %s", name);
                CHECK(((uintptr_t)tj->data - (uintptr_t)moe_gguf_base(g)) % moe_gguf_alignment(g) == 0, "aligned %s", name);
            }
        }
        moe_gguf_close(g);
    }
    return test_done();
}
