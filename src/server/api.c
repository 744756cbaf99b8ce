/* moekit server: OpenAI response bodies, stream chunks and SSE framing.
 *
 * Shapes follow OpenAI's API reference (chat.completion, chat.completion.chunk,
 * text_completion). A stream is:
 *   data: {chunk}\n\n   ... (first chat chunk carries delta.role = "assistant")
 *   data: {chunk with finish_reason}\n\n
 *   data: {usage chunk, choices: []}\n\n        only with stream_options.include_usage
 *   data: [DONE]\n\n
 * With include_usage every other chunk carries "usage": null, as OpenAI sends. Generated text
 * is valid UTF-8 (the streaming detokenizer guarantees it), and compact jansson output escapes
 * control characters, so a JSON payload never contains a raw newline that would break SSE. */
#include <stdlib.h>
#include <string.h>

#include "server/server_impl.h"

int srv_sse_data(srv_buf *b, const char *json) {
    if (srv_buf_add(b, "data: ", 6) || srv_buf_str(b, json) || srv_buf_add(b, "\n\n", 2)) return -1;
    return 0;
}

int srv_sse_done(srv_buf *b) { return srv_buf_str(b, "data: [DONE]\n\n"); }

static json_t *usage_obj(const srv_usage *u) {
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)u->prompt_tokens, "completion_tokens",
                     (json_int_t)u->completion_tokens, "total_tokens",
                     (json_int_t)(u->prompt_tokens + u->completion_tokens));
}

static char *dump(json_t *o) {
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* JSON string of text bytes (valid UTF-8 expected; invalid input yields NULL → "") */
static json_t *text_str(const char *text, size_t len) {
    json_t *s = json_stringn(text ? text : "", text ? len : 0);
    return s ? s : json_string("");
}

char *srv_api_response(srv_kind kind, const char *id, int64_t created, const char *model, const char *text,
                       size_t text_len, const char *finish, const srv_usage *u) {
    json_t *choice;
    if (kind == SRV_KIND_CHAT)
        choice = json_pack("{s:i,s:{s:s,s:o},s:n,s:s}", "index", 0, "message", "role", "assistant", "content",
                           text_str(text, text_len), "logprobs", "finish_reason", finish);
    else
        choice = json_pack("{s:i,s:o,s:n,s:s}", "index", 0, "text", text_str(text, text_len), "logprobs",
                           "finish_reason", finish);
    if (!choice) return NULL;
    return dump(json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o,s:s}", "id", id, "object",
                          kind == SRV_KIND_CHAT ? "chat.completion" : "text_completion", "created",
                          (json_int_t)created, "model", model, "choices", choice, "usage", usage_obj(u),
                          "system_fingerprint", "moekit"));
}

char *srv_api_chunk(srv_kind kind, const char *id, int64_t created, const char *model, const char *role,
                    const char *text, size_t text_len, const char *finish, int usage_mode, const srv_usage *u) {
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", id, "object",
                          kind == SRV_KIND_CHAT ? "chat.completion.chunk" : "text_completion", "created",
                          (json_int_t)created, "model", model, "system_fingerprint", "moekit");
    if (!o) return NULL;
    json_t *choices = json_array();
    if (usage_mode != 2) {
        json_t *c = json_pack("{s:i}", "index", 0);
        if (kind == SRV_KIND_CHAT) {
            json_t *delta = json_object();
            if (role) json_object_set_new(delta, "role", json_string(role));
            if (text) json_object_set_new(delta, "content", text_str(text, text_len));
            json_object_set_new(c, "delta", delta);
        } else {
            json_object_set_new(c, "text", text_str(text, text_len));
        }
        json_object_set_new(c, "logprobs", json_null());
        json_object_set_new(c, "finish_reason", finish ? json_string(finish) : json_null());
        json_array_append_new(choices, c);
    }
    json_object_set_new(o, "choices", choices);
    if (usage_mode == 1) json_object_set_new(o, "usage", json_null());
    if (usage_mode == 2) json_object_set_new(o, "usage", usage_obj(u));
    return dump(o);
}

char *srv_api_models(const char *model, int64_t created) {
    return dump(json_pack("{s:s,s:[{s:s,s:s,s:I,s:s}]}", "object", "list", "data", "id", model, "object", "model",
                          "created", (json_int_t)created, "owned_by", "moekit"));
}
