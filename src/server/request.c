/* moekit server: OpenAI request bodies into srv_params, every field checked.
 *
 * Rules (OpenAI's, as its API answers): the body is one JSON object; unknown fields are
 * ignored; an optional field given as null counts as absent; a wrong type is a 400 naming the
 * field ("Invalid type for 'temperature': expected a number, but got a string instead.");
 * out-of-range values are 400 with the bounds. jansson rejects malformed JSON, invalid UTF-8
 * and \u0000 in strings, and nesting deeper than 2048, so no string we keep holds a NUL or
 * invalid UTF-8. Nothing here touches the model: token limits are checked after tokenizing. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/request.h"

void srv_error_set(srv_error *e, int status, const char *type, const char *code, const char *param,
                   const char *fmt, ...) {
    e->status = status;
    e->type = type ? type : "invalid_request_error";
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

/* Messages may quote client bytes cut at a byte count: replace what is not valid UTF-8 by '?'
 * so the error JSON can always be built. */
static void utf8_clean(const char *in, char *out, size_t n) {
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)in;
    while (*p && o + 1 < n) {
        unsigned c = *p;
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        uint32_t cp = len == 2 ? c & 0x1f : len == 3 ? c & 0x0f : c & 0x07;
        size_t k = 1;
        for (; len > 1 && k < len && (p[k] & 0xc0) == 0x80; k++) cp = (cp << 6) | (p[k] & 0x3f);
        int ok = len == 1 || (len > 1 && k == len && !(len == 2 && cp < 0x80) && !(len == 3 && cp < 0x800) &&
                              !(len == 4 && (cp < 0x10000 || cp > 0x10ffff)) && !(cp >= 0xd800 && cp <= 0xdfff));
        if (!ok || o + len >= n) {
            out[o++] = '?';
            p += ok ? len : 1;
            if (ok) break;
            continue;
        }
        memcpy(out + o, p, len);
        o += len;
        p += len;
    }
    out[o] = 0;
}

char *srv_error_json(const srv_error *e) {
    char msg[sizeof e->message], param[sizeof e->param];
    utf8_clean(e->message, msg, sizeof msg);
    utf8_clean(e->param, param, sizeof param);
    json_t *o = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", msg, "type", e->type, "param",
                          param[0] ? json_string(param) : json_null(), "code",
                          e->code ? json_string(e->code) : json_null());
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static const char *type_of(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static int bad_type(srv_error *err, const char *param, const char *want, const json_t *v) {
    srv_error_set(err, 400, NULL, "invalid_type", param,
                  "Invalid type for '%s': expected %s, but got %s instead.", param, want, type_of(v));
    return -1;
}

/* Field `name` of obj, NULL if absent or null. */
static json_t *opt(json_t *obj, const char *name) {
    json_t *v = json_object_get(obj, name);
    return v && !json_is_null(v) ? v : NULL;
}

static int get_number(json_t *root, const char *name, double lo, double hi, double *out, srv_error *err) {
    json_t *v = opt(root, name);
    if (!v) return 0;
    if (!json_is_number(v)) return bad_type(err, name, "a number", v);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        srv_error_set(err, 400, NULL, "invalid_value", name, "'%s' must be between %g and %g, got %g.", name, lo,
                      hi, x);
        return -1;
    }
    *out = x;
    return 0;
}

static int get_int(json_t *root, const char *name, int64_t lo, int64_t hi, int64_t *out, int *given,
                   srv_error *err) {
    json_t *v = opt(root, name);
    if (!v) return 0;
    if (!json_is_integer(v)) return bad_type(err, name, "an integer", v);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        srv_error_set(err, 400, NULL, "invalid_value", name, "'%s' must be between %lld and %lld, got %lld.",
                      name, (long long)lo, (long long)hi, (long long)x);
        return -1;
    }
    *out = (int64_t)x;
    if (given) *given = 1;
    return 0;
}

static int get_bool(json_t *obj, const char *name, const char *param, int *out, srv_error *err) {
    json_t *v = opt(obj, name);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_type(err, param, "a boolean", v);
    *out = json_is_true(v);
    return 0;
}

/* Message content: a string, or an array of {"type": "text", "text": "..."} parts (joined). */
static int parse_content(json_t *c, size_t i, char **out, srv_error *err) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!c) {
        *out = strdup("");
        goto check;
    }
    if (json_is_string(c)) {
        *out = strndup(json_string_value(c), json_string_length(c));
        goto check;
    }
    if (!json_is_array(c)) return bad_type(err, param, "a string or an array of content parts", c);
    size_t total = 0, j;
    json_t *part;
    json_array_foreach(c, j, part) {
        char pp[80];
        snprintf(pp, sizeof pp, "%s[%zu]", param, j);
        if (!json_is_object(part)) return bad_type(err, pp, "an object", part);
        json_t *ty = json_object_get(part, "type");
        if (!json_is_string(ty)) return bad_type(err, pp, "a content part with a string 'type'", ty ? ty : part);
        if (strcmp(json_string_value(ty), "text") != 0) {
            srv_error_set(err, 400, NULL, "invalid_value", pp,
                          "Content parts of type '%.40s' are not supported; this model takes text only.",
                          json_string_value(ty));
            return -1;
        }
        json_t *tx = json_object_get(part, "text");
        if (!json_is_string(tx)) return bad_type(err, pp, "a string 'text'", tx ? tx : part);
        total += json_string_length(tx);
    }
    *out = malloc(total + 1);
    if (*out) {
        size_t off = 0;
        json_array_foreach(c, j, part) {
            json_t *tx = json_object_get(part, "text");
            memcpy(*out + off, json_string_value(tx), json_string_length(tx));
            off += json_string_length(tx);
        }
        (*out)[off] = 0;
    }
check:
    if (!*out) {
        srv_error_set(err, 503, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    return 0;
}

static int parse_messages(json_t *root, srv_params *p, srv_error *err) {
    json_t *m = json_object_get(root, "messages");
    if (!m || json_is_null(m)) {
        srv_error_set(err, 400, NULL, "missing_required_parameter", "messages",
                      "Missing required parameter: 'messages'.");
        return -1;
    }
    if (!json_is_array(m)) return bad_type(err, "messages", "an array", m);
    size_t n = json_array_size(m);
    if (!n) {
        srv_error_set(err, 400, NULL, "empty_array", "messages",
                      "Invalid 'messages': empty array. Expected an array with minimum length 1.");
        return -1;
    }
    p->msgs = calloc(n, sizeof *p->msgs);
    if (!p->msgs) {
        srv_error_set(err, 503, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *msg = json_array_get(m, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(msg)) return bad_type(err, param, "an object", msg);
        json_t *role = json_object_get(msg, "role");
        snprintf(param, sizeof param, "messages[%zu].role", i);
        if (!role) {
            srv_error_set(err, 400, NULL, "missing_required_parameter", param,
                          "Missing required parameter: '%s'.", param);
            return -1;
        }
        if (!json_is_string(role)) return bad_type(err, param, "a string", role);
        p->msgs[i].role = json_string_value(role);
        p->n_msgs = i + 1;
        if (parse_content(opt(msg, "content"), i, &p->msgs[i].content, err)) return -1;
    }
    return 0;
}

static int parse_prompt(json_t *root, srv_params *p, srv_error *err) {
    json_t *v = json_object_get(root, "prompt");
    if (!v || json_is_null(v)) {
        srv_error_set(err, 400, NULL, "missing_required_parameter", "prompt",
                      "Missing required parameter: 'prompt'.");
        return -1;
    }
    if (json_is_string(v)) {
        p->prompt = json_string_value(v);
        p->prompt_len = json_string_length(v);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(err, "prompt", "a string, an array of one string or an array of token ids", v);
    size_t n = json_array_size(v);
    if (n == 0) {
        srv_error_set(err, 400, NULL, "invalid_value", "prompt", "'prompt' must not be an empty array.");
        return -1;
    }
    json_t *first = json_array_get(v, 0);
    if (json_is_string(first)) {
        if (n != 1) {
            srv_error_set(err, 400, NULL, "invalid_value", "prompt",
                          "'prompt' may hold one string only (batches of prompts are not supported; send one request each).");
            return -1;
        }
        p->prompt = json_string_value(first);
        p->prompt_len = json_string_length(first);
        return 0;
    }
    p->prompt_ids = malloc(n * sizeof *p->prompt_ids);
    if (!p->prompt_ids) {
        srv_error_set(err, 503, "server_error", NULL, NULL, "Out of memory.");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        char param[48];
        snprintf(param, sizeof param, "prompt[%zu]", i);
        if (!json_is_integer(e)) return bad_type(err, param, "an integer token id", e);
        json_int_t id = json_integer_value(e);
        if (id < 0 || id > INT32_MAX) {
            srv_error_set(err, 400, NULL, "invalid_value", param, "Token id %lld is out of range.", (long long)id);
            return -1;
        }
        p->prompt_ids[i] = (int32_t)id;
    }
    p->n_prompt_ids = n;
    return 0;
}

static int parse_stop(json_t *root, srv_params *p, srv_error *err) {
    json_t *v = opt(root, "stop");
    if (!v) return 0;
    json_t *one[1] = {v};
    json_t **items = one;
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > SRV_MAX_STOP) {
            srv_error_set(err, 400, NULL, "invalid_value", "stop", "'stop' may hold at most %d sequences, got %zu.",
                          SRV_MAX_STOP, n);
            return -1;
        }
        items = NULL;
    } else if (!json_is_string(v)) {
        return bad_type(err, "stop", "a string or an array of strings", v);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = items ? items[i] : json_array_get(v, i);
        char param[32];
        snprintf(param, sizeof param, items ? "stop" : "stop[%zu]", i);
        if (!json_is_string(s)) return bad_type(err, param, "a string", s);
        size_t len = json_string_length(s);
        if (len == 0) continue; /* an empty stop sequence would stop at once: ignore it */
        if (len > SRV_MAX_STOP_BYTES) {
            srv_error_set(err, 400, NULL, "invalid_value", param, "Stop sequences are limited to %d bytes.",
                          SRV_MAX_STOP_BYTES);
            return -1;
        }
        p->stop[p->n_stop++] = json_string_value(s);
    }
    return 0;
}

int srv_request_parse(srv_kind kind, const char *body, size_t len, srv_params *p, srv_error *err) {
    memset(p, 0, sizeof *p);
    memset(err, 0, sizeof *err);
    p->kind = kind;
    p->max_tokens = -1;
    p->temperature = 1.0;
    p->top_p = 1.0;
    json_error_t je;
    p->root = json_loadb(body ? body : "", body ? len : 0, 0, &je);
    if (!p->root) {
        srv_error_set(err, 400, NULL, "invalid_json", NULL,
                      "We could not parse the JSON body of your request: %s (at byte %d). The body must be a JSON object.",
                      je.text, je.position);
        return -1;
    }
    json_t *r = p->root;
    if (!json_is_object(r)) {
        bad_type(err, "body", "a JSON object", r);
        goto fail;
    }
    json_t *model = opt(r, "model");
    if (model && !json_is_string(model)) {
        bad_type(err, "model", "a string", model);
        goto fail;
    }
    p->model = model ? json_string_value(model) : NULL;
    if (kind == SRV_KIND_CHAT ? parse_messages(r, p, err) : parse_prompt(r, p, err)) goto fail;

    int64_t n = 1;
    if (get_int(r, "n", 1, 128, &n, NULL, err)) goto fail;
    if (n != 1) {
        srv_error_set(err, 400, NULL, "invalid_value", "n", "Only n = 1 is supported, got %lld.", (long long)n);
        goto fail;
    }
    /* max_completion_tokens is the newer chat name; it wins when both are given */
    if (get_int(r, "max_tokens", 1, INT32_MAX, &p->max_tokens, NULL, err)) goto fail;
    if (kind == SRV_KIND_CHAT &&
        get_int(r, "max_completion_tokens", 1, INT32_MAX, &p->max_tokens, NULL, err))
        goto fail;
    if (get_number(r, "temperature", 0, 2, &p->temperature, err)) goto fail;
    if (get_number(r, "top_p", 0, 1, &p->top_p, err)) goto fail;
    if (p->top_p <= 0) {
        srv_error_set(err, 400, NULL, "invalid_value", "top_p", "'top_p' must be greater than 0.");
        goto fail;
    }
    if (get_int(r, "top_k", 0, 1 << 20, &p->top_k, NULL, err)) goto fail;
    int64_t seed = 0;
    if (get_int(r, "seed", INT64_MIN, INT64_MAX, &seed, &p->has_seed, err)) goto fail;
    p->seed = (uint64_t)seed;
    if (parse_stop(r, p, err)) goto fail;
    if (get_bool(r, "stream", "stream", &p->stream, err)) goto fail;
    if (get_bool(r, "ignore_eos", "ignore_eos", &p->ignore_eos, err)) goto fail;
    json_t *so = opt(r, "stream_options");
    if (so) {
        if (!json_is_object(so)) {
            bad_type(err, "stream_options", "an object", so);
            goto fail;
        }
        if (get_bool(so, "include_usage", "stream_options.include_usage", &p->include_usage, err)) goto fail;
        if (!p->stream) {
            srv_error_set(err, 400, NULL, "invalid_value", "stream_options",
                          "'stream_options' is only allowed when 'stream' is true.");
            goto fail;
        }
    }
    return 0;
fail:
    srv_params_free(p);
    return -1;
}

void srv_params_free(srv_params *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n_msgs; i++) free(p->msgs[i].content);
    free(p->msgs);
    free(p->prompt_ids);
    json_decref(p->root);
    srv_kind k = p->kind;
    memset(p, 0, sizeof *p);
    p->kind = k;
}
