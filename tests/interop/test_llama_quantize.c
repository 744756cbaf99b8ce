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
#include <math.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdint.h>
#include <sys/wait.h>

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/model.h"
#include "testutil.h"

typedef struct {
    unsigned char b[512]; /* larger than llama_model_quantize_params: returned by value into it */
} qparams;

static char g_dir[512];

/* logits of tokens 0..n-1 (n × V) on a model file, 2 threads */
static float *eval_file(const char *path, const int32_t *tok, int n, int *V_out, char *types, size_t types_len) {
    char err[512];
    moe_model *m = NULL;
    if (moe_model_open(path, &m, err, sizeof err)) {
        CHECK(0, "moekit opens %s: %s", path, err);
        return NULL;
    }
    if (types) { /* the distinct tensor types of the file, by name */
        moe_gguf *g = NULL;
        int seen[64] = {0};
        types[0] = 0;
        if (moe_gguf_open(path, &g, err, sizeof err) == MOE_OK) {
            for (int64_t i = 0; i < moe_gguf_n_tensors(g); i++) {
                const int t = moe_gguf_tensor_at(g, i)->type;
                if (t >= 0 && t < 64 && !seen[t]++)
                    snprintf(types + strlen(types), types_len - strlen(types), "%s%s", types[0] ? " " : "", moe_dtype_name(t));
            }
            moe_gguf_close(g);
        }
    }
    const int V = moe_model_hparams(m)->n_vocab;
    moe_ctx_params cp = moe_ctx_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    moe_ctx *c = NULL;
    float *l = malloc(sizeof(float) * (size_t)n * (size_t)V);
    if (moe_ctx_init(m, &cp, &c, err, sizeof err) || moe_ctx_eval(c, tok, n, l)) {
        CHECK(0, "moekit evaluates %s: %s", path, err);
        free(l);
        l = NULL;
    }
    moe_ctx_free(c);
    moe_model_close(m);
    *V_out = V;
    return l;
}

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

    /* llama.cpp's own mixes (not pure: Q6_K and Q5_0/Q8_0 where llama.cpp puts them, as in the files
     * users download): moekit loads them and its logits stay near the F32 model's */
    const int32_t tok[] = {1, 300, 301, 5, 77, 260, 499, 12, 13, 400, 401, 3};
    const int n = (int)(sizeof tok / sizeof tok[0]);
    int V = 0;
    float *ref = eval_file(in, tok, n, &V, NULL, 0);
    struct {
        const char *name;
        int32_t ftype; /* MOSTLY_Q4_K_M = 15, MOSTLY_Q5_K_M = 17 */
    } mixes[] = {{"q4_k_m", 15}, {"q5_k_m", 17}};
    for (size_t k = 0; k < sizeof mixes / sizeof mixes[0] && ref; k++) {
        char lpath[1024], types[256];
        snprintf(lpath, sizeof lpath, "%s/llama-%s.gguf", g_dir, mixes[k].name);
        qparams q = defaults();
        memcpy(q.b + 4, &mixes[k].ftype, 4);
        int saved = dup(2), devnull = open("/dev/null", 1);
        dup2(devnull, 2);
        uint32_t rc = quantize(in, lpath, &q);
        dup2(saved, 2);
        close(devnull);
        close(saved);
        CHECK(rc == 0, "llama.cpp quantize %s: %u", mixes[k].name, rc);
        int V2 = 0;
        float *l = rc == 0 ? eval_file(lpath, tok, n, &V2, types, sizeof types) : NULL;
        if (!l) continue;
        double se = 0, sv = 0;
        int finite = V2 == V;
        for (size_t i = 0; finite && i < (size_t)n * V; i++) {
            finite &= isfinite(l[i]);
            se += ((double)l[i] - ref[i]) * ((double)l[i] - ref[i]);
            sv += (double)ref[i] * ref[i];
        }
        const double rel = sqrt(se / sv);
        printf("llama.cpp %s (%s): moekit logits, relative RMS difference to f32 %.4f\n", mixes[k].name, types, rel);
        CHECK(finite && rel < 1.0, "%s: logits finite and near f32 (%.4f)", mixes[k].name, rel);
        CHECK(strstr(types, "q6_k") != NULL, "%s holds q6_k tensors (%s)", mixes[k].name, types);
        free(l);
    }
    free(ref);
    return test_done();
}
