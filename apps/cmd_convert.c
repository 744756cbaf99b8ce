/* moe convert: import a Hugging Face DeepSeek-V2/V3 checkpoint directory into a deepseek2 GGUF. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/dtype.h"
#include "moe/tools.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe convert HF_DIR -o OUT.gguf [--dtype f32|f16|bf16|q8_0] [--pre NAME] [--name NAME] [-q]\n\n"
            "Reads HF_DIR/config.json (DeepseekV2ForCausalLM or DeepseekV3ForCausalLM), tokenizer.json,\n"
            "tokenizer_config.json and model.safetensors or model.safetensors.index.json + shards\n"
            "(F32, F16, BF16 or FP8 e4m3 with weight_scale_inv), and writes a GGUF that moekit and\n"
            "llama.cpp load. Tensors are converted one at a time (a checkpoint larger than RAM converts).\n"
            "  --dtype T   type of the weight matrices (default f16); norms, router and biases stay f32;\n"
            "              q8_0 falls back to f16 for rows that are not a multiple of 32\n"
            "  --pre NAME  tokenizer.ggml.pre (default: detected, deepseek-v3 or deepseek-llm)\n"
            "  --name NAME general.name (default: the directory name)\n"
            "  -q          no progress line\n");
}

static void progress(void *ud, int64_t i, int64_t n, const char *name, uint64_t done, uint64_t total) {
    char item[96];
    snprintf(item, sizeof item, "[%lld/%lld] %s", (long long)(i + 1), (long long)n, name);
    cli_progress_update(ud, item, done, total);
}

static void note(void *ud, const char *msg) {
    (void)ud;
    fprintf(stderr, "convert: %s\n", msg);
}

int moe_cmd_convert(int argc, char **argv) {
    const char *dir = NULL, *out = NULL;
    moe_convert_params cp = moe_convert_default_params();
    cli_progress pr;
    cli_progress_start(&pr, "convert", 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            pr.quiet = 1;
            continue;
        }
        if (a[0] != '-') {
            if (dir) return cli_fail("convert", "give one HF_DIR (got '%s' and '%s')", dir, a);
            dir = a;
            continue;
        }
        if (!(v = cli_val("convert", argc, argv, &i))) return 1;
        if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--dtype")) {
            cp.dtype = moe_dtype_from_name(v);
            if (cp.dtype != 0 && cp.dtype != 1 && cp.dtype != 30 && cp.dtype != 8)
                return cli_fail("convert", "--dtype must be f32, f16, bf16 or q8_0 (got '%s')", v);
        } else if (!strcmp(a, "--pre")) cp.pre = v;
        else if (!strcmp(a, "--name")) cp.name = v;
        else return cli_fail("convert", "unknown option '%s' (see moe convert --help)", a);
    }
    if (!dir) return cli_fail("convert", "give the Hugging Face checkpoint directory (see moe convert --help)");
    if (!out) return cli_fail("convert", "give the output with -o OUT.gguf");
    cp.progress = progress;
    cp.note = note;
    cp.ud = &pr;
    char err[1024];
    moe_status st = moe_convert(dir, out, &cp, err, sizeof err);
    cli_progress_end(&pr);
    if (st) {
        fprintf(stderr, "moe convert: %s\n", err);
        return st == MOE_ERR_NOMEM || st == MOE_ERR_INTERNAL ? 2 : 1;
    }
    fprintf(stderr, "convert: wrote %s in %.1f s\n", out, cli_now() - pr.t0);
    return 0;
}
