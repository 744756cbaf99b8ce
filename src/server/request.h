/* moekit server: parsing and validating OpenAI request bodies (request.c), and the JSON of
 * responses, stream chunks and errors (api.c).
 *
 * request.c depends on jansson and libc only, so the fuzzer (tests/fuzz/fuzz_request.c)
 * builds it alone. */
#ifndef MOE_SERVER_REQUEST_H
#define MOE_SERVER_REQUEST_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef enum srv_kind {
    SRV_KIND_CHAT = 1,       /* POST /v1/chat/completions */
    SRV_KIND_COMPLETION = 2, /* POST /v1/completions */
} srv_kind;

#define SRV_MAX_STOP 4
#define SRV_MAX_STOP_BYTES 256

typedef struct srv_msg {
    const char *role; /* borrowed from root */
    char *content;    /* owned, NUL-terminated (text parts joined) */
} srv_msg;

/* A validated request. Strings are borrowed from `root` unless said otherwise. */
typedef struct srv_params {
    srv_kind kind;
    json_t *root;          /* owned: the parsed body */
    const char *model;     /* NULL if absent */
    srv_msg *msgs;         /* owned array (chat) */
    size_t n_msgs;
    const char *prompt;    /* completions: text prompt (NULL if ids) */
    size_t prompt_len;
    int32_t *prompt_ids;   /* owned: completions given as token ids */
    size_t n_prompt_ids;
    int64_t max_tokens;    /* -1 = not given */
    double temperature;    /* default 1 */
    double top_p;          /* default 1 */
    int64_t top_k;         /* extension; 0 = off */
    int has_seed;
    uint64_t seed;
    const char *stop[SRV_MAX_STOP];
    size_t n_stop;
    int stream;
    int include_usage;     /* stream_options.include_usage */
    int ignore_eos;        /* extension (as vLLM): generate through end-of-sequence tokens */
} srv_params;

/* An error as OpenAI shapes it: {"error": {"message", "type", "param", "code"}}. */
typedef struct srv_error {
    int status;            /* HTTP status */
    const char *type;      /* "invalid_request_error", ... (static) */
    const char *code;      /* static or NULL */
    char param[64];        /* "" = null */
    char message[320];
} srv_error;

/* Parse and validate a body. 0 on success (free with srv_params_free), else -1 with *err set
 * (status 400). Unknown fields are ignored; null counts as absent. Never crashes on any bytes. */
int srv_request_parse(srv_kind kind, const char *body, size_t len, srv_params *out, srv_error *err);
void srv_params_free(srv_params *p);
void srv_error_set(srv_error *e, int status, const char *type, const char *code, const char *param,
                   const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* {"error": {...}} as a malloc'd compact JSON string. */
char *srv_error_json(const srv_error *e);

#endif
