/* moe quantize against llama.cpp's own quantizer, byte for byte.
 *
 * llama.cpp's `llama_model_quantize` is called from the libllama that node-llama-cpp 3.21.1
 * ships (installed by scripts/install-deps.sh into tests/interop/node_modules) through dlopen,
 * with `pure` set (every quantizable tensor to the one target type, as `moe quantize` does).
 * The params struct is not in any header we ship, so its layout is checked first from the
 * defaults llama.cpp returns (nthread 0, ftype, two GGML_TYPE_COUNT type overrides, then the
 * flags allow_requantize 0, quantize_output_tensor 1, only_copy 0, pure 0, keep_split 0); a
 * different layout fails the test instead of being guessed at. Then, for Q8_0, Q4_0, Q4_K and Q5_K,
 * every tensor of both outputs must have the same type and the same bytes. */
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/wait.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "testutil.h"

typedef struct {
    unsigned char b[512]; /* larger than llama_model_quantize_params: returned by value into it */
} qparams;

static char g_dir[512];

int main(void) {
    const char *src = getenv("MOE_SRC"), *bin = getenv("MOE_BIN");
    if (!src || !bin) {
        fprintf(stderr, "MOE_SRC and MOE_BIN must be set (ctest sets them)\n");
        return 2;
    }
    char lib[1024];
    snprintf(lib, sizeof lib, "%s/tests/interop/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libllama.v0.4.0.so", src);
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL, "dlopen %s: %s (scripts/install-deps.sh installs it)", lib, dlerror());
    if (!h) return test_done();
    void (*backend_init)(void) = (void (*)(void))dlsym(h, "llama_backend_init");
    void (*log_set)(void *, void *) = (void (*)(void *, void *))dlsym(h, "llama_log_set");
    qparams (*defaults)(void) = (qparams(*)(void))dlsym(h, "llama_model_quantize_default_params");
    uint32_t (*quantize)(const char *, const char *, const qparams *) =
        (uint32_t(*)(const char *, const char *, const qparams *))dlsym(h, "llama_model_quantize");
    CHECK(backend_init && defaults && quantize && log_set, "llama.cpp symbols");
    if (!backend_init || !defaults || !quantize || !log_set) return test_done();
    backend_init();
    qparams p = defaults();
    int32_t nthread, out_type, emb_type;
    memcpy(&nthread, p.b, 4);
    memcpy(&out_type, p.b + 8, 4);
    memcpy(&emb_type, p.b + 12, 4);
    int layout_ok = nthread == 0 && out_type == MOE_DTYPE_COUNT && emb_type == MOE_DTYPE_COUNT && p.b[16] == 0 &&
                    p.b[17] == 1 && p.b[18] == 0 && p.b[19] == 0 && p.b[20] == 0;
    CHECK(layout_ok, "llama_model_quantize_params has the expected layout");
    if (!layout_ok) return test_done();

    /* a model whose rows suit every target: widths multiples of 256 where possible */
    tu_tmpdir(g_dir, sizeof g_dir);
    moe_init_config cfg;
    char err[512], in[1024];
    moe_init_preset("tiny", &cfg);
    cfg.n_embd = 256;
    cfg.q_lora_rank = 256;
    cfg.kv_lora_rank = 256;
    cfg.qk_nope = 64;
    cfg.qk_rope = 32;
    cfg.v_head = 64;
    cfg.n_ff = 512;
    cfg.n_ff_exp = 256;
    cfg.seed = 11;
    snprintf(in, sizeof in, "%s/f32.gguf", g_dir);
    CHECK(moe_init_write(&cfg, NULL, in, NULL, NULL, err, sizeof err) == MOE_OK, "init: %s", err);

    struct {
        const char *name;
        int32_t ftype; /* llama_ftype: MOSTLY_Q8_0 = 7, MOSTLY_Q4_0 = 2, MOSTLY_Q4_K_S = 14, MOSTLY_Q5_K_S = 16 */
    } targets[] = {{"q8_0", 7}, {"q4_0", 2}, {"q4_k", 14}, {"q5_k", 16}};
    for (size_t k = 0; k < sizeof targets / sizeof targets[0]; k++) {
        char lpath[1024], mpath[1024], cmd[4096];
        snprintf(lpath, sizeof lpath, "%s/llama-%s.gguf", g_dir, targets[k].name);
        snprintf(mpath, sizeof mpath, "%s/moe-%s.gguf", g_dir, targets[k].name);
        qparams q = defaults();
        memcpy(q.b + 4, &targets[k].ftype, 4);
        q.b[19] = 1; /* pure */
        int saved = dup(2), devnull = open("/dev/null", 1);
        dup2(devnull, 2); /* llama.cpp logs every tensor */
        uint32_t rc = quantize(in, lpath, &q);
        dup2(saved, 2);
        close(devnull);
        close(saved);
        CHECK(rc == 0, "llama.cpp quantize %s: %u", targets[k].name, rc);
        snprintf(cmd, sizeof cmd, "%s quantize %s %s %s > /dev/null 2>&1", bin, in, mpath, targets[k].name);
        int st = system(cmd);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "moe quantize %s", targets[k].name);
        moe_gguf *gl = NULL, *gm = NULL;
        CHECK(moe_gguf_open(lpath, &gl, err, sizeof err) == MOE_OK, "open llama.cpp output: %s", err);
        CHECK(moe_gguf_open(mpath, &gm, err, sizeof err) == MOE_OK, "open moe output: %s", err);
        if (gl && gm) {
            int64_t n = moe_gguf_n_tensors(gl), same = 0, quantized = 0, fallback = 0;
            CHECK(n == moe_gguf_n_tensors(gm), "%s: tensor counts %lld vs %lld", targets[k].name, (long long)n,
                  (long long)moe_gguf_n_tensors(gm));
            for (int64_t i = 0; i < n; i++) {
                const moe_gguf_tensor *a = moe_gguf_tensor_at(gl, i);
                char name[80];
                snprintf(name, sizeof name, "%.*s", (int)a->name.len, a->name.ptr);
                const moe_gguf_tensor *b = moe_gguf_find_tensor(gm, name);
                int eq = b && a->type == b->type && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes);
                same += eq;
                quantized += a->type != MOE_DTYPE_F32;
                fallback += a->type == MOE_DTYPE_Q5_0 || a->type == MOE_DTYPE_Q5_1;
                CHECK(eq, "%s: %s: llama.cpp %s vs moekit %s%s", targets[k].name, name, moe_dtype_name(a->type),
                      b ? moe_dtype_name(b->type) : "missing", b && a->type == b->type ? " (bytes differ)" : "");
            }
            printf("%-5s %lld/%lld tensors byte-identical to llama.cpp (%lld quantized, %lld of them Q5_0/Q5_1 "
                   "fallbacks)\n",
                   targets[k].name, (long long)same, (long long)n, (long long)quantized, (long long)fallback);
        }
        moe_gguf_close(gl);
        moe_gguf_close(gm);
    }
    return test_done();
}
