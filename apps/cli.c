/* moe CLI helpers (see cli.h). */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "cli.h"

int cli_fail(const char *cmd, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "moe %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

int cli_int(const char *cmd, const char *opt, const char *val, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (errno || end == val || *end || v < lo || v > hi) {
        cli_fail(cmd, "%s expects an integer in [%lld, %lld], got '%s'", opt, lo, hi, val);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *cmd, const char *opt, const char *val, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (errno || end == val || *end || !(v >= lo && v <= hi)) {
        cli_fail(cmd, "%s expects a number in [%g, %g], got '%s'", opt, lo, hi, val);
        return -1;
    }
    *out = v;
    return 0;
}

const char *cli_val(const char *cmd, int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_fail(cmd, "option %s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_ids(const char *cmd, const char *s, int32_t **out) {
    size_t cap = 16, n = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    const char *p = s;
    while (ids && *p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 0x7fffffff || (*end && *end != ',')) {
            free(ids);
            cli_fail(cmd, "token ids must be comma-separated non-negative integers, got '%s'", s);
            return -1;
        }
        if (n == cap) {
            int32_t *nn = realloc(ids, 2 * cap * sizeof *ids);
            if (!nn) break;
            ids = nn;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (!ids) return cli_fail(cmd, "out of memory"), -1;
    if (!n) {
        free(ids);
        cli_fail(cmd, "no token ids given");
        return -1;
    }
    *out = ids;
    return (int)n;
}

int cli_ids_file(const char *cmd, const char *path, int32_t **out) {
    json_error_t je;
    json_t *a = json_load_file(path, 0, &je);
    if (!a) return cli_fail(cmd, "%s:%d: %s", path, je.line, je.text), -1;
    if (!json_is_array(a) || json_array_size(a) == 0) {
        json_decref(a);
        return cli_fail(cmd, "%s: expected a non-empty JSON array of token ids", path), -1;
    }
    size_t n = json_array_size(a);
    int32_t *ids = malloc(n * sizeof *ids);
    for (size_t i = 0; ids && i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 0x7fffffff) {
            free(ids);
            json_decref(a);
            return cli_fail(cmd, "%s: element %zu is not a token id", path, i), -1;
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    json_decref(a);
    *out = ids;
    return (int)n;
}

double cli_now(void) { return moe_now(); }

const char *cli_bytes(double b, char *buf, size_t n) {
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    int i = 0;
    while (b >= 1000 && i < 4) {
        b /= 1000;
        i++;
    }
    snprintf(buf, n, "%.1f %s", b, u[i]);
    return buf;
}

void cli_progress_start(cli_progress *p, const char *what, int quiet) {
    p->what = what;
    p->t0 = p->last = cli_now();
    p->tty = isatty(2);
    p->quiet = quiet;
}

void cli_progress_update(cli_progress *p, const char *item, uint64_t done, uint64_t total) {
    double now = cli_now();
    if (p->quiet || (now - p->last < 0.5 && done < total)) return;
    p->last = now;
    char a[32], b[32];
    double el = now - p->t0, eta = done ? el * (double)(total - done) / (double)done : 0;
    fprintf(stderr, "%s%s: %-32.32s %s / %s (%.0f%%), %.0f s elapsed, ETA %.0f s%s", p->tty ? "\r" : "", p->what,
            item ? item : "", cli_bytes((double)done, a, sizeof a), cli_bytes((double)total, b, sizeof b),
            total ? 100.0 * (double)done / (double)total : 100.0, el, eta, p->tty ? "   " : "\n");
}

void cli_progress_end(cli_progress *p) {
    if (p->tty && !p->quiet) fputc('\n', stderr);
}
