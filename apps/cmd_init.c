/* moe init: write a random-weight deepseek2 model (presets or a JSON config). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/dtype.h"
#include "moe/init.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe init (--preset NAME | --config FILE.json) [--dtype f32|f16|bf16|q8_0|q4_0] [--seed N]\n"
            "                [--vocab-from GGUF] -o OUT.gguf\n\n"
            "Writes a deepseek2 model with random weights (it loads in moekit and llama.cpp).\n"
            "  --preset NAME      tiny | bench-v2lite-4L | v2-lite | v3-mini (see DESIGN.md)\n"
            "  --config FILE      JSON object of shape fields; \"preset\" picks the base, e.g.\n"
            "                     {\"preset\": \"tiny\", \"n_expert\": 16, \"n_expert_used\": 4}\n"
            "  --dtype T          type of the weight matrices (norms, router and bias stay f32)\n"
            "  --seed N           random seed (same seed, same file)\n"
            "  --vocab-from GGUF  copy the tokenizer of another model (default: a built-in BPE vocabulary)\n"
            "  -o OUT.gguf        output path\n");
}

static void progress(void *ud, uint64_t done, uint64_t total) { cli_progress_update(ud, NULL, done, total); }

int moe_cmd_init(int argc, char **argv) {
    const char *preset = NULL, *config = NULL, *vocab = NULL, *out = NULL, *dtype = NULL;
    long long seed = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--preset")) {
            if (!(preset = cli_val("init", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--config")) {
            if (!(config = cli_val("init", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--vocab-from")) {
            if (!(vocab = cli_val("init", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!(out = cli_val("init", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--dtype")) {
            if (!(dtype = cli_val("init", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--seed")) {
            const char *v = cli_val("init", argc, argv, &i);
            if (!v || cli_int("init", "--seed", v, 0, 0x7fffffffffffffffLL, &seed)) return 1;
        } else {
            return cli_fail("init", "unknown option '%s' (see moe init --help)", a);
        }
    }
    if (!preset && !config) return cli_fail("init", "give --preset NAME or --config FILE.json (see moe init --help)");
    if (!out) return cli_fail("init", "give the output path with -o OUT.gguf");
    moe_init_config cfg;
    char err[512];
    if (moe_init_preset(preset ? preset : "tiny", &cfg) != MOE_OK)
        return cli_fail("init", "unknown preset '%s' (tiny, bench-v2lite-4L, v2-lite, v3-mini)", preset);
    if (config && moe_init_from_json(config, &cfg, err, sizeof err)) return cli_fail("init", "%s", err);
    if (dtype) {
        int t = moe_dtype_from_name(dtype);
        if (t != 0 && t != 1 && t != 30 && t != 8 && t != 2)
            return cli_fail("init", "--dtype must be f32, f16, bf16, q8_0 or q4_0, got '%s'", dtype);
        cfg.dtype = t;
    }
    if (seed >= 0) cfg.seed = (uint64_t)seed;
    if (moe_init_validate(&cfg, err, sizeof err)) return cli_fail("init", "invalid model shape: %s", err);
    cli_progress p;
    cli_progress_start(&p, "init", 0);
    moe_status st = moe_init_write(&cfg, vocab, out, progress, &p, err, sizeof err);
    cli_progress_end(&p);
    if (st) {
        fprintf(stderr, "moe init: %s\n", err);
        return st == MOE_ERR_INTERNAL || st == MOE_ERR_NOMEM ? 2 : 1;
    }
    fprintf(stderr, "init: wrote %s (%s, %s) in %.1f s\n", out, cfg.name, moe_dtype_name(cfg.dtype), cli_now() - p.t0);
    return 0;
}
