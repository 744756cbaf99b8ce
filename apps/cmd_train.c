/* moe train: train or fine-tune a deepseek2 model from a train.yaml (docs/training.md). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe train --config train.yaml [--steps N] [--out DIR] [--threads N] [--resume] [--quiet]\n\n"
            "Trains (from a preset or JSON shape, optionally with a BPE learned from the data) or fine-tunes\n"
            "(model.base) a deepseek2 model on a text file. Prints one progress line per output.log_every\n"
            "steps (step, loss, lr, gradient norm, expert load, tokens/s, ETA) and writes into output.dir:\n"
            "loss.csv, loss.svg, checkpoint.gguf (atomic; --resume continues bit-exactly), model.gguf.\n\n"
            "config keys (YAML, nested by the dots; docs/training.md has the reference):\n"
            "  model.base | model.init.{preset,config,seed,vocab_size,bpe_sample_mb}\n"
            "  data.{text,tokens,seq_len,batch_size,val_fraction}\n"
            "  optim.{steps,warmup,lr,min_lr,weight_decay,beta1,beta2,eps,grad_clip,mode,seed,threads}\n"
            "      mode: lazy (default; idle experts untouched) | exact (= dense AdamW, idle experts caught up)\n"
            "            | dense (every expert updated every step)\n"
            "  balance.{bias_update,aux_loss}   freeze: [patterns]   train_only: [patterns]\n"
            "  output.{dir,export,export_dtype,checkpoint_every,log_every,eval_every,eval_batches,resume}\n\n"
            "  --steps N     override optim.steps      --out DIR   override output.dir\n"
            "  --threads N   override optim.threads    --resume    continue from DIR/checkpoint.gguf\n");
}

int moe_cmd_train(int argc, char **argv) {
    const char *config = NULL, *out = NULL;
    long long steps = -1, threads = -1;
    int resume = 0, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--config") || !strcmp(a, "-c")) {
            if (!(config = cli_val("train", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--out")) {
            if (!(out = cli_val("train", argc, argv, &i))) return 1;
        } else if (!strcmp(a, "--steps")) {
            const char *v = cli_val("train", argc, argv, &i);
            if (!v || cli_int("train", "--steps", v, 1, 1000000000000LL, &steps)) return 1;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            const char *v = cli_val("train", argc, argv, &i);
            if (!v || cli_int("train", "--threads", v, 0, 1024, &threads)) return 1;
        } else if (!strcmp(a, "--resume")) {
            resume = 1;
        } else if (!strcmp(a, "--quiet") || !strcmp(a, "-q")) {
            quiet = 1;
        } else {
            return cli_fail("train", "unknown option '%s' (try moe train --help)", a);
        }
    }
    if (!config) return cli_fail("train", "--config FILE is required (try moe train --help)");
    moe_train_params p = moe_train_default_params();
    char err[1024];
    if (moe_train_load_yaml(config, &p, err, sizeof err)) return cli_fail("train", "%s", err);
    if (steps > 0) p.steps = steps;
    if (threads >= 0) p.threads = (int32_t)threads;
    if (out) snprintf(p.out_dir, sizeof p.out_dir, "%s", out);
    if (resume) p.resume = 1;
    p.quiet = quiet;
    moe_status st = moe_train_run(&p, stderr, err, sizeof err);
    if (st == MOE_ERR_NOMEM || st == MOE_ERR_INTERNAL) {
        fprintf(stderr, "moe train: %s\n", err);
        return 2;
    }
    if (st) return cli_fail("train", "%s", err);
    return 0;
}
