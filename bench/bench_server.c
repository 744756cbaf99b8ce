/* bench_server: the server's own overhead on generation throughput (issue 5).
 *
 * Measures, in one run and with the same model, threads and token counts:
 *   engine  `moe bench -m MODEL -p 0 -n N -t T -r 3 --batch S1,S2,... --json`: S sequences
 *           decode N tokens each through moe_engine_step (the batch[].tg figures, median of 3:
 *           the weights the run touches are mapped in by then);
 *   server  the real `moe serve -m MODEL --threads T --parallel S --batch S` (started fresh for
 *           each S on a free 127.0.0.1 port) with S concurrent streaming clients, each asking
 *           /v1/completions for N tokens (ignore_eos, so every stream makes exactly N) and
 *           reading the SSE stream to its [DONE]; total generated tokens / wall time from the
 *           moment all requests are sent to the last [DONE].
 * overhead % = (engine − server) / engine × 100 (issue 5's target: < 10 %). For each level the two
 * are measured back to back, -r times (default 2), and the best of each is kept.
 * The server's own counters (GET /metrics before and after the timed round) split its wall time:
 * "server steps" (moe_engine_steps_total) and "outside steps" = the share of the wall time not
 * spent in moe_engine_step (moe_engine_step_seconds_sum): sampling, scheduling, and HTTP from the
 * first request to the last [DONE]. Unlike the overhead, it compares nothing across processes, so
 * a busy machine moves it little: it tells the server's cost apart from noise in the engine runs.
 *
 * Fairness: both sides run N steps per N tokens (the engine's first, untimed step is the page-in
 * of the caches; the server's first token comes out of its one-token prefill step), and both are
 * measured warm: the server gets one untimed round of the same streams first, as `moe bench`
 * warms up (a fresh process maps each expert's pages on first use; timing that against a warm
 * engine measured page faults, not the server). Prompts are
 * one pseudo-random token per stream (the LCG of `moe bench`) and sampling is temperature 1 with
 * a seed per stream, so the tokens fed back are as random as `moe bench`'s and a step selects as
 * many distinct experts (identical greedy streams would share experts and flatter the server).
 * --temperature 0 samples greedily (an argmax over the vocabulary); at temperature > 0 the sampler
 * costs O(V) per token (SIMD, on the engine's pool threads; src/sample/sample.c).
 * The server's figure includes what a user pays: HTTP, JSON, tokenization, scheduling, sampling,
 * detokenization and SSE, and any step that runs before every stream has joined the batch.
 *
 *   build/bench_server -m /tmp/bench-q8.gguf [-t 2] [-n 32] [-r 2] [--streams 1,4,16] [--moe build/moe] [--json]
 *
 * Clients are blocking sockets, one thread per stream; only 127.0.0.1 is used. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "moe/model.h"

#define MAX_STREAMS 256
#define MAX_LEVELS 16

static double g_temperature = 1.0; /* --temperature */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the server process ---- */

typedef struct child {
    pid_t pid;
    int port;
    char log[512];
} child;

/* Start `moe serve`; its stderr goes to a file that is read until "listening on". */
static int serve_start(const char *moe, const char *model, int threads, int parallel, int ctx, child *c) {
    char tmpl[] = "/tmp/bench-server-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) return -1;
    snprintf(c->log, sizeof c->log, "%s", tmpl);
    char th[16], par[16], cx[16];
    snprintf(th, sizeof th, "%d", threads);
    snprintf(par, sizeof par, "%d", parallel);
    snprintf(cx, sizeof cx, "%d", ctx);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd, 2);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1);
        execl(moe, moe, "serve", "-m", model, "--host", "127.0.0.1", "--port", "0", "--threads", th, "--parallel", par,
              "--batch", par, "--prefill-chunk", par, "--ctx", cx, "--queue", "1024", "--max-connections", "1024",
              "--access-log", "", (char *)NULL);
        _exit(127);
    }
    close(fd);
    c->pid = pid;
    for (int i = 0; i < 6000; i++) { /* up to 60 s for the model to load */
        FILE *f = fopen(c->log, "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            const char *p = strstr(line, "listening on http://");
            const char *colon = p ? strrchr(p, ':') : NULL;
            if (colon && (c->port = atoi(colon + 1)) > 0) {
                fclose(f);
                return 0;
            }
        }
        if (f) fclose(f);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) break;
        usleep(10000);
    }
    fprintf(stderr, "bench_server: moe serve did not start (log: %s)\n", c->log);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static int serve_stop(child *c) {
    int st = 0;
    kill(c->pid, SIGTERM);
    waitpid(c->pid, &st, 0);
    unlink(c->log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- clients ---- */

typedef struct client {
    int port, n_tokens, tok;
    unsigned seed;
    pthread_barrier_t *go;
    double t_send, t_first, t_done;
    long long completion; /* usage.completion_tokens, -1 if the stream failed */
    char err[160];
} client;

static void *client_main(void *arg) {
    client *c = arg;
    c->completion = -1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)c->port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    char body[256], req[512];
    int bl = snprintf(body, sizeof body,
                      "{\"prompt\":[%d],\"max_tokens\":%d,\"ignore_eos\":true,\"temperature\":%g,\"seed\":%u,"
                      "\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                      c->tok, c->n_tokens, g_temperature, c->seed);
    int rl = snprintf(req, sizeof req,
                      "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                      bl, body);
    pthread_barrier_wait(c->go);
    if (!ok) {
        snprintf(c->err, sizeof c->err, "connect: %s", strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    c->t_send = now_s();
    if (write(fd, req, (size_t)rl) != rl) {
        snprintf(c->err, sizeof c->err, "write: %s", strerror(errno));
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len - 1);
        if (n <= 0) break;
        if (!c->t_first && len == 0) c->t_first = now_s();
        len += (size_t)n;
        buf[len] = 0;
        if (len > 16 && strstr(buf + (len > 4096 ? len - 4096 : 0), "data: [DONE]")) break;
    }
    c->t_done = now_s();
    close(fd);
    if (buf) {
        buf[len] = 0;
        const char *u = strstr(buf, "\"completion_tokens\":");
        if (u && strstr(buf, "data: [DONE]")) c->completion = atoll(u + 20);
        else snprintf(c->err, sizeof c->err, "no [DONE]: %.120s", buf);
    }
    free(buf);
    return NULL;
}

/* S concurrent streams; total generated tokens / seconds (wall time in *wall). */
static double run_streams(int port, int S, int n_tokens, const int32_t *toks, int *bad, double *wall) {
    client cl[MAX_STREAMS];
    pthread_t th[MAX_STREAMS];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)S + 1);
    memset(cl, 0, sizeof cl);
    for (int i = 0; i < S; i++) {
        cl[i] = (client){.port = port, .n_tokens = n_tokens, .tok = toks[i], .seed = 1000u + (unsigned)i, .go = &go};
        pthread_create(&th[i], NULL, client_main, &cl[i]);
    }
    usleep(20000); /* every client connected (the server's connection threads are up) */
    pthread_barrier_wait(&go);
    double t0 = now_s(), t_end = t0;
    long long total = 0;
    *bad = 0;
    for (int i = 0; i < S; i++) {
        pthread_join(th[i], NULL);
        if (cl[i].completion != n_tokens) {
            fprintf(stderr, "bench_server: stream %d of %d: %lld tokens (%s)\n", i, S, cl[i].completion, cl[i].err);
            (*bad)++;
        }
        if (cl[i].completion > 0) total += cl[i].completion;
        if (cl[i].t_done > t_end) t_end = cl[i].t_done;
    }
    pthread_barrier_destroy(&go);
    *wall = t_end - t0;
    return (double)total / (t_end - t0);
}

/* The server's own step counters (GET /metrics): steps run and seconds inside moe_engine_step.
 * Their change over the timed round splits the server's wall time into the engine's steps and
 * everything around them (sampling, scheduling, HTTP until the last [DONE]). */
static int scrape_steps(int port, double *steps, double *step_s) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) || write(fd, req, sizeof req - 1) != sizeof req - 1) {
        if (fd >= 0) close(fd);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    for (ssize_t n; buf; len += (size_t)n) {
        if (len + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) break;
            buf = nb;
        }
        if ((n = read(fd, buf + len, cap - len - 1)) <= 0) break;
    }
    close(fd);
    if (!buf) return -1;
    buf[len] = 0;
    static const char k1[] = "\nmoe_engine_steps_total ", k2[] = "\nmoe_engine_step_seconds_sum ";
    const char *a1 = strstr(buf, k1), *a2 = strstr(buf, k2);
    int rc = a1 && a2 ? 0 : -1;
    if (!rc) {
        *steps = atof(a1 + sizeof k1 - 1);
        *step_s = atof(a2 + sizeof k2 - 1);
    }
    free(buf);
    return rc;
}

/* ---- the engine figures: moe bench --batch ---- */

static int engine_figures(const char *moe, const char *model, int threads, int n, const int *levels, int n_levels,
                          double *tg) {
    char cmd[2048], list[256] = "";
    for (int i = 0; i < n_levels; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? "," : "", levels[i]);
    snprintf(cmd, sizeof cmd, "'%s' bench -m '%s' -p 0 -n %d -t %d -r 3 --batch %s --json", moe, model, n, threads, list);
    fprintf(stderr, "bench_server: %s\n", cmd);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char out[65536];
    size_t len = fread(out, 1, sizeof out - 1, p);
    out[len] = 0;
    if (pclose(p) != 0) return -1;
    json_error_t je;
    json_t *j = json_loads(out, 0, &je), *b = j ? json_object_get(j, "batch") : NULL;
    int rc = -1;
    if (b && json_array_size(b) == (size_t)n_levels) {
        for (int i = 0; i < n_levels; i++) tg[i] = json_number_value(json_object_get(json_array_get(b, (size_t)i), "tg"));
        rc = 0;
    }
    json_decref(j);
    return rc;
}

int main(int argc, char **argv) {
    const char *model = NULL, *moe = NULL;
    int threads = 2, n = 32, reps = 2, json = 0, levels[MAX_LEVELS] = {1, 4, 16}, n_levels = 3;
    char moe_default[1024];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-m") && v) model = argv[++i];
        else if (!strcmp(a, "-t") && v) threads = atoi(argv[++i]);
        else if (!strcmp(a, "-n") && v) n = atoi(argv[++i]);
        else if (!strcmp(a, "-r") && v) reps = atoi(argv[++i]);
        else if (!strcmp(a, "--temperature") && v) g_temperature = atof(argv[++i]);
        else if (!strcmp(a, "--moe") && v) moe = argv[++i];
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--streams") && v) {
            n_levels = 0;
            for (char *s = argv[++i]; *s && n_levels < MAX_LEVELS;) {
                levels[n_levels++] = (int)strtol(s, &s, 10);
                if (*s == ',') s++;
                else break;
            }
        } else {
            fprintf(stderr, "usage: bench_server -m MODEL [-t THREADS=2] [-n TOKENS=32] [-r REPS=2] [--temperature 1] [--streams 1,4,16] "
                            "[--moe PATH (default: moe next to this program)] [--json]\n");
            return 2;
        }
    }
    if (!model || threads < 1 || n < 2 || reps < 1) {
        fprintf(stderr, "bench_server: give -m MODEL.gguf (and -n >= 2, -t >= 1)\n");
        return 2;
    }
    for (int i = 0; i < n_levels; i++)
        if (levels[i] < 1 || levels[i] > MAX_STREAMS) {
            fprintf(stderr, "bench_server: --streams: 1..%d\n", MAX_STREAMS);
            return 2;
        }
    if (!moe) {
        const char *slash = strrchr(argv[0], '/');
        snprintf(moe_default, sizeof moe_default, "%.*smoe", slash ? (int)(slash - argv[0] + 1) : 0, argv[0]);
        moe = moe_default;
    }
    signal(SIGPIPE, SIG_IGN);
    /* the vocabulary size, for the prompts (the same LCG as moe bench) */
    moe_model *m = NULL;
    char err[512];
    if (moe_model_open(model, &m, err, sizeof err)) {
        fprintf(stderr, "bench_server: %s\n", err);
        return 1;
    }
    uint32_t V = (uint32_t)moe_model_hparams(m)->n_vocab, x = 12345;
    moe_model_close(m);
    int32_t toks[MAX_STREAMS];
    for (int i = 0; i < MAX_STREAMS; i++) {
        x = x * 1664525u + 1013904223u;
        toks[i] = (int32_t)((x >> 8) % V);
    }

    /* engine and server alternate, level by level, reps times; the best of each is kept (a busy
     * machine only ever slows a run down, and pairing in time keeps both under similar load) */
    double eng[MAX_LEVELS] = {0}, srv[MAX_LEVELS] = {0}, n_steps[MAX_LEVELS] = {0}, outside[MAX_LEVELS] = {0};
    int failures = 0;
    for (int i = 0; i < n_levels; i++)
        for (int r = 0; r < reps; r++) {
            double e;
            if (engine_figures(moe, model, threads, n, &levels[i], 1, &e)) {
                fprintf(stderr, "bench_server: moe bench failed\n");
                return 1;
            }
            child c;
            if (serve_start(moe, model, threads, levels[i], n + 16, &c)) return 1;
            int bad = 0;
            double wall, st0[2] = {0}, st1[2] = {0};
            run_streams(c.port, levels[i], n, toks, &bad, &wall); /* warm-up round, untimed */
            int scraped = !scrape_steps(c.port, &st0[0], &st0[1]);
            double v = run_streams(c.port, levels[i], n, toks, &bad, &wall);
            scraped &= !scrape_steps(c.port, &st1[0], &st1[1]);
            failures += bad;
            int code = serve_stop(&c);
            if (code != 0) {
                fprintf(stderr, "bench_server: moe serve exited with %d\n", code);
                failures++;
            }
            double steps = st1[0] - st0[0], in_steps = st1[1] - st0[1];
            fprintf(stderr, "bench_server: %d streams, run %d: engine %.2f, server %.2f tokens/s", levels[i], r + 1, e, v);
            if (scraped)
                fprintf(stderr, " (%.0f steps, %.3f of %.3f s in steps: %.1f%% outside)", steps, in_steps, wall,
                        100.0 * (wall - in_steps) / wall);
            fprintf(stderr, "\n");
            if (e > eng[i]) eng[i] = e;
            if (v > srv[i]) {
                srv[i] = v;
                n_steps[i] = scraped ? steps : -1;
                outside[i] = scraped ? 100.0 * (wall - in_steps) / wall : -1;
            }
        }
    if (json) {
        printf("{\"model\": \"%s\", \"threads\": %d, \"n_tokens\": %d, \"reps\": %d, \"levels\": [", model, threads, n,
               reps);
        for (int i = 0; i < n_levels; i++)
            printf("%s{\"streams\": %d, \"engine_tg\": %.3f, \"server_tg\": %.3f, \"overhead_pct\": %.2f, "
                   "\"server_steps\": %.0f, \"outside_steps_pct\": %.2f}",
                   i ? ", " : "", levels[i], eng[i], srv[i], 100.0 * (eng[i] - srv[i]) / eng[i], n_steps[i], outside[i]);
        printf("], \"failed_streams\": %d}\n", failures);
    } else {
        printf("model %s, %d threads, %d tokens per stream, best of %d paired runs\n", model, threads, n, reps);
        printf("streams  engine tokens/s  server tokens/s  overhead  server steps  outside steps\n");
        for (int i = 0; i < n_levels; i++)
            printf("%7d  %15.2f  %15.2f  %7.1f%%  %12.0f  %12.1f%%\n", levels[i], eng[i], srv[i],
                   100.0 * (eng[i] - srv[i]) / eng[i], n_steps[i], outside[i]);
    }
    return failures ? 1 : 0;
}
