/* Interop: llama.cpp loads the GGUF files moekit writes, and computes the same distributions.
 *
 * The reference is the llama.cpp build that node-llama-cpp 3.21.1 bundles (the one that made
 * ../shared/vectors); tests/interop/llama_probs.mjs runs it (CPU, F32 KV cache, flash attention
 * off) and writes its next-token probabilities at every position. For models written by
 * `moe init` (every variant of the spec and every dtype), `moe quantize`, `moe experts prune` and
 * `moe convert` (from a Hugging Face checkpoint with the real DeepSeek-V3 tokenizer) and
 * `moe train` (the bundled default model),
 * this test compares them with moekit's: KL(llama.cpp || moekit) mean over positions and argmax
 * agreement. F32 files must agree to float rounding; for F16/BF16/Q8_0/Q4 files llama.cpp rounds
 * activations before its matrix products (spec deepseek2.md §4.14), which on random weights
 * sometimes flips a router choice, so those get a looser bound — still far below the KL of two
 * unrelated models (≈ 1 nat), so a wrong layout or a misread key fails. */
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "moe/dtype.h"
#include "moe/init.h"
#include "moe/model.h"
#include "testutil.h"
#include "tools/hf_build.h"

static char g_dir[512];
static const char *g_bin, *g_src;

#define T 24

static int run(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* moekit's probabilities (double) for the token ids */
static double *moe_probs(const char *path, const int32_t *tok, int *V_out) {
    char err[512];
    moe_model *m;
    if (moe_model_open(path, &m, err, sizeof err)) {
        fprintf(stderr, "moekit open %s: %s\n", path, err);
        return NULL;
    }
    int V = moe_model_hparams(m)->n_vocab;
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 64;
    p.n_threads = 2;
    moe_ctx *c;
    float *lg = malloc(sizeof(float) * T * (size_t)V);
    double *pr = NULL;
    if (!moe_ctx_init(m, &p, &c, err, sizeof err) && !moe_ctx_eval(c, tok, T, lg)) {
        pr = malloc(sizeof(double) * T * (size_t)V);
        for (int t = 0; t < T; t++) {
            const float *row = lg + (size_t)t * V;
            double mx = -INFINITY, s = 0;
            for (int i = 0; i < V; i++) mx = fmax(mx, row[i]);
            for (int i = 0; i < V; i++) s += exp(row[i] - mx);
            for (int i = 0; i < V; i++) pr[(size_t)t * V + i] = exp(row[i] - mx) / s;
        }
        moe_ctx_free(c);
    }
    free(lg);
    moe_model_close(m);
    *V_out = V;
    return pr;
}

static void compare(const char *label, const char *path, double kl_max, double agree_min) {
    int32_t tok[T];
    char ids[512] = "", out[1024], cmd[4096];
    for (int i = 0; i < T; i++) {
        tok[i] = i == 0 ? 0 : (i * 37 + 11) % 500;
        snprintf(ids + strlen(ids), sizeof ids - strlen(ids), i ? ",%d" : "%d", tok[i]);
    }
    snprintf(out, sizeof out, "%s/%s.llama.f32", g_dir, label);
    snprintf(cmd, sizeof cmd, "node %s/tests/interop/llama_probs.mjs %s %s %s > /dev/null", g_src, path, ids, out);
    int rc = run(cmd);
    CHECK(rc == 0, "%s: llama.cpp could not load or run %s (exit %d)", label, path, rc);
    if (rc) return;
    int V = 0;
    double *pm = moe_probs(path, tok, &V);
    size_t len = 0;
    char *lb = tu_read_file(out, &len);
    CHECK(pm && lb && len == sizeof(float) * T * (size_t)V, "%s: both sides produced %d × %d probabilities", label, T, V);
    if (pm && lb && len == sizeof(float) * T * (size_t)V) {
        const float *pl = (const float *)lb;
        double kl = 0;
        int agree = 0;
        for (int t = 0; t < T; t++) {
            double k = 0, z = 0; /* llama.cpp's rows are float32: renormalise in double */
            int al = 0, am = 0;
            for (int i = 0; i < V; i++) z += pl[(size_t)t * V + i];
            for (int i = 0; i < V; i++) {
                double a = pl[(size_t)t * V + i] / z, b = pm[(size_t)t * V + i];
                if (a > 0) k += a * (log(a) - log(fmax(b, 1e-300)));
                if (a > pl[(size_t)t * V + al]) al = i;
                if (b > pm[(size_t)t * V + am]) am = i;
            }
            kl += k;
            agree += al == am;
        }
        kl /= T;
        printf("%-16s KL(llama.cpp || moekit) %.3e  argmax agreement %5.1f%%\n", label, kl, 100.0 * agree / T);
        CHECK(kl <= kl_max, "%s: KL %.3e > %.1e", label, kl, kl_max);
        CHECK((double)agree / T >= agree_min, "%s: argmax agreement %d/%d", label, agree, T);
    }
    free(pm);
    free(lb);
}

static void variant(const char *label, const moe_init_config *cfg, double kl_max, double agree_min) {
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/%s.gguf", g_dir, label);
    moe_status st = moe_init_write(cfg, NULL, path, NULL, NULL, err, sizeof err);
    CHECK(st == MOE_OK, "%s: init: %s", label, err);
    if (!st) compare(label, path, kl_max, agree_min);
}

int main(void) {
    g_bin = getenv("MOE_BIN");
    g_src = getenv("MOE_SRC");
    if (!g_bin || !g_src) {
        fprintf(stderr, "MOE_BIN and MOE_SRC must be set (ctest sets them)\n");
        return 2;
    }
    tu_tmpdir(g_dir, sizeof g_dir);
    moe_init_config base, c;
    moe_init_preset("tiny", &base);
    /* exact: F32 weights, F32 KV cache on both sides */
    variant("tiny-f32", &base, 1e-9, 1.0);
    c = base; c.q_lora_rank = 0; c.gating = 1; c.exp_probs_b = 0; c.norm_topk = 0; c.scale = 1.0f; c.n_expert_shared = 2;
    variant("v2like-f32", &c, 1e-9, 1.0);
    c = base; c.n_expert = 16; c.n_expert_used = 4; c.n_group = 4; c.n_group_used = 2; variant("grouped-f32", &c, 1e-9, 1.0);
    c = base; c.legacy_kv_b = 1; c.tied = 1; variant("legacy-tied-f32", &c, 1e-9, 1.0);
    c = base; c.yarn_factor = 40.0f; c.mscale_all_dim = 0.707f; c.n_ctx = 163840; variant("yarn-f32", &c, 1e-9, 1.0);
    /* half precision and quantized weights: llama.cpp rounds activations too */
    c = base; c.dtype = MOE_DTYPE_F16; variant("tiny-f16", &c, 1e-2, 0.75);
    c = base; c.dtype = MOE_DTYPE_BF16; variant("tiny-bf16", &c, 5e-2, 0.75);
    c = base; c.dtype = MOE_DTYPE_Q8_0; variant("tiny-q8_0", &c, 5e-2, 0.75);
    c = base; c.dtype = MOE_DTYPE_Q4_0; variant("tiny-q4_0", &c, 1e-1, 0.6);

    /* files other commands write */
    char cmd[4096], in[1024], out[1024];
    snprintf(in, sizeof in, "%s/tiny-f32.gguf", g_dir);
    snprintf(out, sizeof out, "%s/tiny-q4_k.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s q4_k > /dev/null 2>&1", g_bin, in, out);
    CHECK(run(cmd) == 0, "moe quantize q4_k");
    compare("quantized-q4_k", out, 1e-1, 0.6);
    snprintf(out, sizeof out, "%s/tiny-q5_k.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s q5_k > /dev/null 2>&1", g_bin, in, out);
    CHECK(run(cmd) == 0, "moe quantize q5_k");
    compare("quantized-q5_k", out, 1e-1, 0.6);
    snprintf(out, sizeof out, "%s/tiny-q6_k.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s q6_k > /dev/null 2>&1", g_bin, in, out);
    CHECK(run(cmd) == 0, "moe quantize q6_k");
    compare("quantized-q6_k", out, 5e-2, 0.75);
    snprintf(out, sizeof out, "%s/tiny-q8.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s quantize %s %s q8_0 > /dev/null 2>&1", g_bin, in, out);
    CHECK(run(cmd) == 0, "moe quantize q8_0");
    compare("quantized-q8_0", out, 5e-2, 0.75);
    char data[1024];
    snprintf(data, sizeof data, "%s/data.txt", g_dir);
    FILE *f = fopen(data, "w");
    for (int i = 0; f && i < 20; i++) fprintf(f, "The experts of a mixture route each token to a few of their number. %d\n", i);
    if (f) fclose(f);
    snprintf(out, sizeof out, "%s/tiny-pruned.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s experts prune -m %s --keep-per-layer 4 --data %s -o %s > /dev/null 2>&1", g_bin, in,
             data, out);
    CHECK(run(cmd) == 0, "moe experts prune");
    compare("pruned-4of8", out, 1e-9, 1.0);

    /* moe convert: a BF16 Hugging Face checkpoint (sharded safetensors, config.json, the real
     * DeepSeek-V3 tokenizer files) converted to F32 (the BF16 values exactly) */
    char shared_hf[1024], vocab[1024], orig[1024], hf[1024];
    tu_shared("vectors/tokenizer/hf", shared_hf, sizeof shared_hf);
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", vocab, sizeof vocab);
    c = base;
    c.dtype = MOE_DTYPE_BF16;
    c.n_vocab = 129280;
    snprintf(orig, sizeof orig, "%s/hf-src.gguf", g_dir);
    char err[512];
    CHECK(moe_init_write(&c, vocab, orig, NULL, NULL, err, sizeof err) == MOE_OK, "init with the V3 vocabulary: %s", err);
    snprintf(hf, sizeof hf, "%s/hf", g_dir);
    mkdir(hf, 0755);
    CHECK(hf_build(orig, &c, hf, 0, shared_hf) == 0, "building the HF checkpoint");
    snprintf(out, sizeof out, "%s/converted.gguf", g_dir);
    snprintf(cmd, sizeof cmd, "%s convert %s -o %s --dtype f32 > /dev/null 2>&1", g_bin, hf, out);
    CHECK(run(cmd) == 0, "moe convert");
    compare("converted-hf", out, 1e-9, 1.0);

    /* the bundled default model: trained and exported by moe train (F32 export) */
    char def[1024];
    snprintf(def, sizeof def, "%s/models/default.gguf", g_src);
    compare("default-model", def, 1e-9, 1.0);
    return test_done();
}
