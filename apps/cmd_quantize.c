/* moe quantize: requantize a GGUF model (Q8_0, Q4_0, Q4_K) and report the error per tensor. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/dtype.h"
#include "moe/tools.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: moe quantize IN.gguf OUT.gguf TYPE [-t N] [-q] [--report]\n\n"
            "TYPE: q8_0, q4_0, q4_k, q5_k, q6_k (also f16, bf16, f32). Norms, router (ffn_gate_inp), exp_probs_b\n"
            "and 1-D tensors keep their type. Rows that are not a multiple of 256 fall back from q4_k to\n"
            "q5_0, from q5_k to q5_1 and from q6_k to q8_0 (as llama-quantize); rows that are not a\n"
            "multiple of 32 stay f16.\n"
            "Prints the output size and the RMS error of every requantized tensor (relative to the\n"
            "tensor's RMS); --report prints every tensor, otherwise a summary and the 5 worst.\n"
            "  -t N   threads (default: all CPUs)\n"
            "  -q     no progress line\n");
}

typedef struct {
    cli_progress pr; /* first: the progress callback gets the state */
    int all;
    uint64_t bytes_in, bytes_out, bytes_q;
    double se, sv;
    int64_t n_elem, n_quant;
    struct {
        char name[64];
        double rel;
    } worst[5];
} state;

static void progress(void *ud, int64_t i, int64_t n, const char *name, uint64_t done, uint64_t total) {
    state *p = ud;
    if (!p->all) cli_progress_update(&p->pr, name, done, total);
}

static void report(void *ud, const moe_quant_report *r) {
    state *p = ud;
    p->bytes_in += r->bytes_in;
    p->bytes_out += r->bytes_out;
    if (r->type_in == r->type_out) {
        if (p->all) printf("%-36s %-5s -> %-5s kept\n", r->name, moe_dtype_name(r->type_in), moe_dtype_name(r->type_out));
        return;
    }
    double rel = r->rms_val > 0 ? r->rms_err / r->rms_val : 0;
    p->se += r->rms_err * r->rms_err * (double)r->n_elem;
    p->sv += r->rms_val * r->rms_val * (double)r->n_elem;
    p->n_elem += r->n_elem;
    p->bytes_q += r->bytes_out;
    p->n_quant++;
    if (p->all)
        printf("%-36s %-5s -> %-5s rms err %.3e (%.2f%% of rms %.3e)\n", r->name, moe_dtype_name(r->type_in),
               moe_dtype_name(r->type_out), r->rms_err, 100 * rel, r->rms_val);
    for (int k = 0; k < 5; k++) {
        if (rel > p->worst[k].rel) {
            memmove(&p->worst[k + 1], &p->worst[k], sizeof p->worst[0] * (size_t)(4 - k));
            snprintf(p->worst[k].name, sizeof p->worst[k].name, "%s %s", r->name, moe_dtype_name(r->type_out));
            p->worst[k].rel = rel;
            break;
        }
    }
}

int moe_cmd_quantize(int argc, char **argv) {
    const char *pos[3] = {0};
    int n_pos = 0;
    long long threads = 0;
    state s = {0};
    cli_progress_start(&s.pr, "quantize", 0);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            s.pr.quiet = 1;
            continue;
        }
        if (!strcmp(a, "--report")) {
            s.all = 1;
            continue;
        }
        if (a[0] != '-') {
            if (n_pos == 3) return cli_fail("quantize", "unexpected argument '%s' (usage: moe quantize IN OUT TYPE)", a);
            pos[n_pos++] = a;
            continue;
        }
        if (!(v = cli_val("quantize", argc, argv, &i))) return 1;
        if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (cli_int("quantize", a, v, 1, 1024, &threads)) return 1;
        } else return cli_fail("quantize", "unknown option '%s' (see moe quantize --help)", a);
    }
    if (n_pos != 3) return cli_fail("quantize", "usage: moe quantize IN.gguf OUT.gguf TYPE (q8_0, q4_0, q4_k, q5_k, q6_k)");
    moe_quantize_params qp = moe_quantize_default_params();
    qp.type = moe_dtype_from_name(pos[2]);
    if (qp.type != MOE_DTYPE_Q8_0 && qp.type != MOE_DTYPE_Q4_0 && qp.type != MOE_DTYPE_Q4_K && qp.type != MOE_DTYPE_Q5_K &&
        qp.type != MOE_DTYPE_Q6_K && qp.type != MOE_DTYPE_F16 && qp.type != MOE_DTYPE_BF16 && qp.type != MOE_DTYPE_F32)
        return cli_fail("quantize", "TYPE must be q8_0, q4_0, q4_k, q5_k, q6_k, f16, bf16 or f32 (got '%s')", pos[2]);
    qp.n_threads = (int)threads;
    qp.progress = progress;
    qp.report = report;
    qp.ud = &s;
    char err[1024];
    moe_status st = moe_quantize(pos[0], pos[1], &qp, err, sizeof err);
    if (!s.all) cli_progress_end(&s.pr);
    if (st) {
        fprintf(stderr, "moe quantize: %s\n", err);
        return st == MOE_ERR_NOMEM || st == MOE_ERR_INTERNAL ? 2 : 1;
    }
    char a[32], b[32];
    printf("quantize: %s -> %s (%s): %s -> %s (%.2f bits/weight over requantized tensors), %.1f s\n", pos[0], pos[1],
           moe_dtype_name(qp.type), cli_bytes((double)s.bytes_in, a, sizeof a), cli_bytes((double)s.bytes_out, b, sizeof b),
           s.n_elem ? 8.0 * (double)s.bytes_q / (double)s.n_elem : 0.0, cli_now() - s.pr.t0);
    printf("quantize: %lld tensors requantized, overall RMS error %.3e (%.3f%% of the weights' RMS)\n",
           (long long)s.n_quant, s.n_elem ? sqrt(s.se / (double)s.n_elem) : 0.0, s.sv > 0 ? 100 * sqrt(s.se / s.sv) : 0.0);
    for (int k = 0; k < 5 && s.worst[k].rel > 0; k++)
        printf("quantize:   worst %d: %-40s %.2f%% RMS error\n", k + 1, s.worst[k].name, 100 * s.worst[k].rel);
    return 0;
}
