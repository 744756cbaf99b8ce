/* moe: the moekit command. One subcommand per job; each lives in apps/cmd_<name>.c and is thin
 * over the library. Exit status: 0 success, 1 user error, 2 internal error. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/model.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command k_cmds[] = {
    {"init", moe_cmd_init, "create a random-weight deepseek2 model (presets or JSON config)"},
    {"eval", moe_cmd_eval, "evaluate token ids and write all positions' logits"},
    {"run", moe_cmd_run, "generate text from a prompt, streaming to stdout"},
    {"bench", moe_cmd_bench, "prefill/decode speed and % of the memory-bandwidth roofline"},
    {"convert", moe_cmd_convert, "import a Hugging Face DeepSeek-V2/V3 checkpoint into GGUF"},
    {"quantize", moe_cmd_quantize, "requantize a GGUF model (q8_0, q4_0, q4_k, q5_k, q6_k) with an error report"},
    {"info", moe_cmd_info, "print a GGUF file's metadata and tensors"},
    {"tokenize", moe_cmd_tokenize, "text to token ids"},
    {"detokenize", moe_cmd_detokenize, "token ids to text"},
    {"serve", moe_cmd_serve, "OpenAI-compatible HTTP server with continuous batching and metrics"},
    {"experts", moe_cmd_experts, "expert routing statistics, pruning and pruned-vs-base comparison"},
    {"train", moe_cmd_train, "train or fine-tune a model (YAML config; sparse expert updates, checkpoints)"},
    {"tenants", moe_cmd_tenants, "tenants, API keys, quotas and usage for moe serve --tenants"},
};

/* Loading a model (run, bench, serve, eval, ...): a progress line for the weights' repacking,
 * shown only when it takes more than a second (the 2.4 GB bench model: ~5 s here). */
static cli_progress g_load;
static int g_load_on, g_load_shown;
static void load_progress(void *ud, uint64_t done, uint64_t total) {
    (void)ud;
    if (!g_load_on) {
        cli_progress_start(&g_load, "load", 0);
        g_load_on = 1;
        g_load_shown = 0;
    }
    if (cli_now() - g_load.t0 >= 1.0) {
        cli_progress_update(&g_load, "repacking the weights", done, total);
        g_load_shown = 1;
    }
    if (done >= total) {
        if (g_load_shown) cli_progress_end(&g_load);
        g_load_on = 0;
    }
}

static void usage(FILE *f) {
    fprintf(f, "usage: moe <command> [options]   (moe <command> --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        fprintf(f, "  %-11s %s\n", k_cmds[i].name, k_cmds[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    moe_model_set_load_progress(load_progress, NULL);
    for (size_t i = 0; i < sizeof k_cmds / sizeof k_cmds[0]; i++)
        if (!strcmp(argv[1], k_cmds[i].name)) return k_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moe: unknown command '%s' (try moe --help)\n", argv[1]);
    return 1;
}
