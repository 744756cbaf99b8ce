/* moe CLI: small helpers shared by the subcommands (argument parsing, errors, timing). */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdint.h>
#include <stdio.h>

/* Print "moe <cmd>: <message>" to stderr and return 1 (user error exit status). */
int cli_fail(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse integer/float option values; on error print a message naming the option and return -1. */
int cli_int(const char *cmd, const char *opt, const char *val, long long lo, long long hi, long long *out);
int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, double *out);
/* Value of option argv[*i] (advances *i), or prints "option needs a value" and returns NULL. */
const char *cli_val(const char *cmd, int argc, char **argv, int *i);
/* Parse "1,2,3" into a malloc'd array; returns count or -1 with a message. */
int cli_ids(const char *cmd, const char *s, int32_t **out);
/* Read a JSON array of token ids from a file. */
int cli_ids_file(const char *cmd, const char *path, int32_t **out);
/* Monotonic seconds. */
double cli_now(void);
/* A progress line on stderr for long work (init, convert, quantize): rewritten in place on a
 * terminal, one line per update otherwise; at most two updates a second, plus the final one. */
typedef struct cli_progress {
    const char *what; /* "init", "convert", ... */
    double t0, last;
    int tty, quiet;
} cli_progress;
void cli_progress_start(cli_progress *p, const char *what, int quiet);
/* item: what is being worked on (may be NULL); done/total in bytes. */
void cli_progress_update(cli_progress *p, const char *item, uint64_t done, uint64_t total);
/* Ends the line on a terminal. */
void cli_progress_end(cli_progress *p);
/* "12.3 MB" style formatting into buf. */
const char *cli_bytes(double bytes, char *buf, size_t n);

#endif
