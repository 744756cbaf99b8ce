/* `moe train` as a user runs it (MOE_BIN): a tiny model with a BPE learned from a text file,
 * 60 steps; the loss falls (mean of the last 10 steps well below the first 10), loss.csv and
 * loss.svg exist, the exported model runs with `moe run`, --resume to more steps continues
 * from the checkpoint, --help exits 0, a wrong key or value exits 1 naming it. */
#include <math.h>
#include <sys/stat.h>

#include "testutil.h"

static const char *g_bin;
static char g_dir[512];

static int sh(const char *fmt, const char *a) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, fmt, g_bin, a);
    int r = system(cmd);
    return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static void write_file(const char *name, const char *text) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

int main(void) {
    g_bin = getenv("MOE_BIN");
    if (!g_bin) g_bin = "./moe";
    tu_tmpdir(g_dir, sizeof g_dir);
    char p[800];
    snprintf(p, sizeof p, "%s/text.txt", g_dir);
    FILE *f = fopen(p, "w");
    for (int i = 0; i < 60; i++)
        fprintf(f,
                "The router sends each token to two experts out of eight. Expert %d likes numbers such as %d, "
                "and the shared expert sees every token.\n\nA small model learns the words of this text quickly, "
                "one step at a time.\n\n",
                i % 8, i * 7);
    fclose(f);
    write_file("train.yaml",
               "model:\n  init:\n    preset: tiny\n    vocab_size: 600\n    bpe_sample_mb: 1\n"
               "data:\n  text: text.txt\n  seq_len: 32\n  batch_size: 4\n  val_fraction: 0.05\n"
               "optim:\n  steps: 60\n  warmup: 5\n  lr: 3e-3\n  min_lr: 3e-4\n  mode: lazy\n  threads: 2\n"
               "balance:\n  bias_update: 0.001\n  aux_loss: 0.0001\n"
               "output:\n  dir: out\n  log_every: 20\n  eval_every: 30\n  checkpoint_every: 25\n");
    CHECK(sh("cd %2$s && %1$s train --config train.yaml 2> log.txt", g_dir) == 0, "moe train runs");
    snprintf(p, sizeof p, "%s/log.txt", g_dir);
    char *log = tu_read_file(p, NULL);
    CHECK(log && strstr(log, "step     60/60") && strstr(log, "tok/s") && strstr(log, "ETA"), "progress lines: %s",
          log ? log : "(none)");
    if (log) fputs(log, stdout);
    free(log);
    snprintf(p, sizeof p, "%s/out/loss.csv", g_dir);
    char *csv = tu_read_file(p, NULL);
    CHECK(csv != NULL, "loss.csv written");
    double first = 0, last = 0;
    int rows = 0;
    for (char *line = csv ? strchr(csv, '\n') : NULL; line && line[1]; line = strchr(line + 1, '\n')) {
        long long s;
        double l;
        if (sscanf(line + 1, "%lld,%lf", &s, &l) != 2) continue;
        if (s <= 10) first += l / 10;
        if (s > 50) last += l / 10;
        rows++;
    }
    printf("loss: first 10 steps %.3f, last 10 steps %.3f (%d rows)\n", first, last, rows);
    CHECK(rows == 60, "60 rows (%d)", rows);
    CHECK(last < first - 1.0, "loss falls by more than 1 nat (%.3f -> %.3f)", first, last);
    free(csv);
    struct stat sb;
    snprintf(p, sizeof p, "%s/out/loss.svg", g_dir);
    CHECK(stat(p, &sb) == 0 && sb.st_size > 500, "loss.svg written");
    snprintf(p, sizeof p, "%s/out/checkpoint.gguf.tmp", g_dir);
    CHECK(stat(p, &sb) != 0, "no temporary checkpoint left");
    CHECK(sh("cd %2$s && %1$s run -m out/model.gguf -p 'The router' -n 8 --seed 1 > run.txt 2>/dev/null", g_dir) == 0,
          "the exported model runs");
    CHECK(sh("cd %2$s && %1$s train --config train.yaml --resume --steps 70 2> log2.txt", g_dir) == 0, "resume runs");
    snprintf(p, sizeof p, "%s/log2.txt", g_dir);
    log = tu_read_file(p, NULL);
    CHECK(log && strstr(log, "resumed from") && strstr(log, "step     70/70"), "resumed to 70: %s", log ? log : "");
    free(log);
    CHECK(sh("%s train --help > /dev/null", "") == 0, "--help exits 0");
    write_file("bad.yaml", "optim:\n  stepz: 3\n");
    CHECK(sh("cd %2$s && %1$s train --config bad.yaml 2> err.txt", g_dir) == 1, "unknown key exits 1");
    snprintf(p, sizeof p, "%s/err.txt", g_dir);
    char *e = tu_read_file(p, NULL);
    CHECK(e && strstr(e, "optim.stepz") && strstr(e, "line 2"), "message names key and line: %s", e ? e : "");
    free(e);
    write_file("bad2.yaml", "optim:\n  mode: sloppy\n");
    CHECK(sh("cd %2$s && %1$s train --config bad2.yaml 2> /dev/null", g_dir) == 1, "bad value exits 1");
    CHECK(sh("%s train 2> /dev/null", "") == 1, "missing --config exits 1");
    return test_done();
}
