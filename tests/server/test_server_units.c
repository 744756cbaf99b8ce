/* Server units: request JSON parsing (types, nulls, bounds, malformed bytes), SSE framing and
 * chunk shapes, error JSON shape, the settings table (defaults within bounds, flags, YAML with
 * line numbers, reloadable subset), docs/server.md lists every setting, stop-string holding
 * and metrics text. Includes the .c files to reach statics. */
#include "../../src/server/api.c"
#include "../../src/server/metrics.c"
#include "../../src/server/request.c"
#include "../../src/server/sched.c"
#include "../../src/server/settings.c"
#include "../../src/server/util.c"
#include "testutil.h"

static int parse(srv_kind k, const char *body, srv_params *p, srv_error *e) {
    return srv_request_parse(k, body, strlen(body), p, e);
}

static void expect_400(srv_kind k, const char *body, const char *param, const char *needle) {
    srv_params p;
    srv_error e;
    int rc = parse(k, body, &p, &e);
    CHECK(rc == -1, "accepted %s", body);
    if (rc) {
        CHECK(e.status == 400, "status %d for %s", e.status, body);
        CHECK(!param || !strcmp(e.param, param), "param '%s' want '%s' for %s", e.param, param, body);
        CHECK(!needle || strstr(e.message, needle), "message '%s' lacks '%s'", e.message, needle);
        char *j = srv_error_json(&e);
        json_error_t je;
        json_t *o = j ? json_loads(j, 0, &je) : NULL;
        json_t *err = json_object_get(o, "error");
        CHECK(json_is_string(json_object_get(err, "message")) && json_is_string(json_object_get(err, "type")) &&
                  json_object_get(err, "param") && json_object_get(err, "code"),
              "error shape: %s", j ? j : "(null)");
        json_decref(o);
        free(j);
    } else {
        srv_params_free(&p);
    }
}

static void test_request(void) {
    srv_params p;
    srv_error e;
    CHECK(parse(SRV_KIND_CHAT,
                "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\","
                "\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]}],"
                "\"max_tokens\":7,\"temperature\":0,\"top_p\":0.5,\"seed\":-3,\"stop\":[\"x\",\"\",\"yz\"],"
                "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"unknown\":{\"deep\":[1,2]},"
                "\"presence_penalty\":null,\"n\":1}",
                &p, &e) == 0,
          "valid chat rejected: %s", e.message);
    CHECK(p.n_msgs == 2 && !strcmp(p.msgs[1].content, "ab") && !strcmp(p.msgs[0].role, "system"), "messages");
    CHECK(p.max_tokens == 7 && p.temperature == 0 && p.top_p == 0.5 && p.has_seed && p.seed == (uint64_t)-3,
          "numbers");
    CHECK(p.n_stop == 2 && !strcmp(p.stop[1], "yz"), "stop (empty ignored): %zu", p.n_stop);
    CHECK(p.stream && p.include_usage && !strcmp(p.model, "m"), "stream flags");
    srv_params_free(&p);

    CHECK(parse(SRV_KIND_COMPLETION, "{\"prompt\":\"hi\",\"stop\":\"\\n\",\"max_tokens\":null,\"seed\":null}", &p, &e) == 0,
          "valid completion: %s", e.message);
    CHECK(p.prompt_len == 2 && p.n_stop == 1 && p.max_tokens == -1 && !p.has_seed && p.temperature == 1, "completion defaults");
    srv_params_free(&p);
    CHECK(parse(SRV_KIND_COMPLETION, "{\"prompt\":[5,6,7]}", &p, &e) == 0 && p.n_prompt_ids == 3 && p.prompt_ids[2] == 7,
          "token id prompt");
    srv_params_free(&p);
    CHECK(parse(SRV_KIND_COMPLETION, "{\"prompt\":[\"only\"]}", &p, &e) == 0 && p.prompt_len == 4, "[string] prompt");
    srv_params_free(&p);
    CHECK(parse(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"content\":null}],\"max_completion_tokens\":3}", &p, &e) == 0 &&
              p.msgs[0].content[0] == 0 && p.max_tokens == 3,
          "null content, max_completion_tokens");
    srv_params_free(&p);

    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", "temperature", "expected a number");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens", "integer");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", "max_tokens", "between");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", "stream", "boolean");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n", "n = 1");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_p\":0}", "top_p", NULL);
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":3}", "temperature", "between");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[1]}", "stop[0]", NULL);
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop", "at most");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":{\"include_usage\":true}}", "stream_options", NULL);
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"model\":5}", "model", NULL);
    expect_400(SRV_KIND_CHAT, "{\"messages\":[]}", "messages", "empty");
    expect_400(SRV_KIND_CHAT, "{\"messages\":\"hi\"}", "messages", "array");
    expect_400(SRV_KIND_CHAT, "{}", "messages", "Missing");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0].role", "Missing");
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content", NULL);
    expect_400(SRV_KIND_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", NULL, "not supported");
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "one string");
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":[1,-2]}", "prompt[1]", NULL);
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":{}}", "prompt", NULL);
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":[]}", "prompt", NULL);
    expect_400(SRV_KIND_COMPLETION, "[1,2]", "body", "object");
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":\"x\"", NULL, "could not parse");
    expect_400(SRV_KIND_COMPLETION, "", NULL, "could not parse");
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":\"\xff\xfe\"}", NULL, "could not parse");       /* invalid UTF-8 */
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":\"a\\u0000b\"}", NULL, "could not parse");     /* NUL */
    expect_400(SRV_KIND_COMPLETION, "{\"prompt\":\"\\ud800\"}", NULL, "could not parse");       /* lone surrogate */
    /* deep nesting is an error, not a stack overflow */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 32);
    strcpy(deep, "{\"prompt\":\"x\",\"a\":");
    size_t o = strlen(deep);
    for (size_t i = 0; i < depth; i++) deep[o++] = '[';
    for (size_t i = 0; i < depth; i++) deep[o++] = ']';
    deep[o++] = '}';
    deep[o] = 0;
    expect_400(SRV_KIND_COMPLETION, deep, NULL, NULL);
    free(deep);
    /* a message quoting client bytes cut inside a UTF-8 character still makes valid error JSON */
    CHECK(parse(SRV_KIND_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u20ac\"}]}]}", &p, &e) == -1, "image part");
    char *ej = srv_error_json(&e);
    CHECK(ej && strstr(ej, "aaa?"), "cut character replaced: %s", ej ? ej : "(null)");
    free(ej);
    srv_error_set(&e, 400, NULL, NULL, "p\xff", "bad \xc3 byte \xed\xa0\x80 and \xf0\x9f\x98\x80 ok");
    ej = srv_error_json(&e);
    CHECK(ej && strstr(ej, "bad ? byte ??? and \xf0\x9f\x98\x80 ok") && strstr(ej, "\"p?\""), "utf8 clean: %s", ej ? ej : "(null)");
    free(ej);
    /* body bytes need not be NUL-terminated */
    const char raw[] = "{\"prompt\":\"ok\"}GARBAGE";
    CHECK(srv_request_parse(SRV_KIND_COMPLETION, raw, 15, &p, &e) == 0, "length-delimited body");
    srv_params_free(&p);
}

static void test_sse(void) {
    srv_buf b = {0};
    srv_usage u = {5, 3};
    char *j = srv_api_chunk(SRV_KIND_CHAT, "chatcmpl-1", 7, "m", "assistant", "", 0, NULL, 1, &u);
    CHECK(j && strstr(j, "\"delta\":{\"role\":\"assistant\",\"content\":\"\"}") && strstr(j, "\"usage\":null") &&
              strstr(j, "\"finish_reason\":null") && strstr(j, "chat.completion.chunk"),
          "role chunk %s", j);
    srv_sse_data(&b, j);
    free(j);
    j = srv_api_chunk(SRV_KIND_CHAT, "chatcmpl-1", 7, "m", NULL, "a\nb\"\xe2\x82\xac", 7, NULL, 0, &u);
    CHECK(j && !strchr(j, '\n') && strstr(j, "a\\nb\\\"\xe2\x82\xac") && !strstr(j, "usage"), "newline escaped: %s", j);
    srv_sse_data(&b, j);
    free(j);
    j = srv_api_chunk(SRV_KIND_CHAT, "chatcmpl-1", 7, "m", NULL, NULL, 0, "stop", 1, &u);
    CHECK(j && strstr(j, "\"delta\":{}") && strstr(j, "\"finish_reason\":\"stop\""), "final chunk %s", j);
    free(j);
    j = srv_api_chunk(SRV_KIND_CHAT, "chatcmpl-1", 7, "m", NULL, NULL, 0, NULL, 2, &u);
    CHECK(j && strstr(j, "\"choices\":[]") && strstr(j, "\"total_tokens\":8"), "usage chunk %s", j);
    free(j);
    j = srv_api_chunk(SRV_KIND_COMPLETION, "cmpl-1", 7, "m", NULL, "hi", 2, NULL, 0, &u);
    CHECK(j && strstr(j, "\"text\":\"hi\"") && strstr(j, "\"object\":\"text_completion\""), "completion chunk %s", j);
    free(j);
    srv_sse_done(&b);
    /* framing: events separated by a blank line, each one "data: " line, last is [DONE] */
    int events = 0;
    const char *p = b.p;
    while (p && *p) {
        const char *end = strstr(p, "\n\n");
        CHECK(end && !strncmp(p, "data: ", 6), "event framing at '%.20s'", p);
        if (!end) break;
        CHECK(memchr(p, '\n', (size_t)(end - p)) == NULL, "one line per event");
        events++;
        p = end + 2;
    }
    CHECK(events == 3 && strstr(b.p, "data: [DONE]\n\n") == b.p + b.len - 14, "3 events ending in [DONE]: %d", events);
    srv_buf_free(&b);
    j = srv_api_response(SRV_KIND_CHAT, "chatcmpl-2", 7, "m", "hey", 3, "length", &u);
    json_t *o = json_loads(j, 0, NULL);
    CHECK(o && !strcmp(json_string_value(json_object_get(o, "object")), "chat.completion"), "response object");
    json_t *c0 = json_array_get(json_object_get(o, "choices"), 0);
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(c0, "message"), "content")), "hey") &&
              !strcmp(json_string_value(json_object_get(c0, "finish_reason")), "length"),
          "response choice");
    CHECK(json_integer_value(json_object_get(json_object_get(o, "usage"), "completion_tokens")) == 3, "usage");
    json_decref(o);
    free(j);
}

static void test_settings(void) {
    size_t n;
    const moe_setting *t = moe_server_settings(&n);
    moe_server_params p = moe_server_default_params();
    for (size_t i = 0; i < n; i++) {
        char err[256] = "";
        moe_server_params q = p;
        CHECK(moe_server_setting_set(&q, t[i].name, t[i].def, err, sizeof err) == MOE_OK, "default of %s: %s", t[i].name, err);
        CHECK(t[i].offset + t[i].size <= sizeof p, "offset of %s", t[i].name);
        CHECK(t[i].help && t[i].help[0], "help of %s", t[i].name);
        for (size_t j = 0; j < i; j++) CHECK(strcmp(t[i].name, t[j].name), "duplicate %s", t[i].name);
    }
    CHECK(p.port == 8080 && p.parallel == 4 && !strcmp(p.host, "127.0.0.1") && p.shutdown_timeout == 30, "defaults");
    char err[256];
    CHECK(moe_server_setting_set(&p, "port", "70000", err, sizeof err) == MOE_ERR_INVAL && strstr(err, "port"), "bounds: %s", err);
    CHECK(moe_server_setting_set(&p, "port", "12x", err, sizeof err) == MOE_ERR_INVAL, "junk int");
    CHECK(moe_server_setting_set(&p, "nope", "1", err, sizeof err) == MOE_ERR_NOTFOUND, "unknown");
    CHECK(moe_server_setting_set(&p, "shutdown_timeout", "nan", err, sizeof err) == MOE_ERR_INVAL, "nan");
    CHECK(moe_server_setting_set(&p, "shutdown_timeout", "2.5", err, sizeof err) == MOE_OK && p.shutdown_timeout == 2.5, "float");
    const char *y = "# comment\nport: 9000\nhost: \"::1\"\nparallel: 8\nshutdown_timeout: 1.5\n";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_OK && p.port == 9000 &&
              !strcmp(p.host, "::1") && p.parallel == 8,
          "yaml: %s", err);
    y = "port: 1\nparallel: 0\n";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_ERR_INVAL && strstr(err, "line 2") &&
              strstr(err, "parallel"),
          "yaml bounds names the line: %s", err);
    y = "port: 1\nbogus: 2\n";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_ERR_NOTFOUND && strstr(err, "line 2"), "unknown key: %s", err);
    y = "port: [1, 2]\n";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_ERR_FORMAT, "sequence value");
    y = "port: 1\n  - : :\n\t{";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_ERR_FORMAT, "bad yaml: %s", err);
    y = "- a\n- b\n";
    CHECK(moe_server_config_load_mem(&p, y, strlen(y), 0, err, sizeof err) == MOE_ERR_FORMAT, "not a mapping");
    CHECK(moe_server_config_load_mem(&p, "", 0, 0, err, sizeof err) == MOE_OK, "empty config");
    moe_server_params q = moe_server_default_params();
    y = "port: 1234\nqueue: 3\n";
    CHECK(moe_server_config_load_mem(&q, y, 10 + 9, 1, err, sizeof err) == MOE_OK && q.port == 8080 && q.queue == 3,
          "reloadable only: port %lld queue %lld", (long long)q.port, (long long)q.queue);
    /* docs/server.md carries every setting */
    const char *src = getenv("MOE_SRC");
    char path[1024];
    snprintf(path, sizeof path, "%s/docs/server.md", src ? src : "..");
    size_t len;
    char *doc = tu_read_file(path, &len);
    CHECK(doc != NULL, "cannot read %s", path);
    for (size_t i = 0; doc && i < n; i++) {
        char key[80];
        snprintf(key, sizeof key, "| `%s` |", t[i].name);
        CHECK(strstr(doc, key) != NULL, "docs/server.md lacks setting %s (regenerate with moe serve --settings-markdown)", t[i].name);
    }
    free(doc);
}

static void test_metrics(void) {
    srv_metrics m;
    CHECK(srv_metrics_init(&m, 3, 4) == 0, "init");
    m.is_moe[1] = m.is_moe[2] = 1;
    m.expert[1 * 4 + 2] = 9;
    srv_hist_observe(&m.ttft, 0.2);
    srv_hist_observe(&m.ttft, 1000);
    srv_metrics_code(&m, 200);
    srv_metrics_code(&m, 429);
    srv_buf b = {0};
    CHECK(srv_metrics_render(&m, &b) == 0, "render");
    CHECK(strstr(b.p, "moe_expert_tokens_total{layer=\"1\",expert=\"2\"} 9\n") != NULL, "expert counter");
    CHECK(strstr(b.p, "layer=\"0\"") == NULL, "dense layer has no experts");
    CHECK(strstr(b.p, "moe_time_to_first_token_seconds_bucket{le=\"0.25\"} 1\n") && strstr(b.p, "moe_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n") &&
              strstr(b.p, "moe_time_to_first_token_seconds_count 2\n"),
          "cumulative buckets");
    CHECK(strstr(b.p, "moe_http_requests_total{code=\"429\"} 1\n") != NULL, "codes");
    srv_buf_free(&b);
    srv_metrics_free(&m);
}

/* stop strings: text is held while it may start a stop string, cut before the first match */
static void test_stop(void) {
    struct {
        const char *stops[2];
        const char *pieces[6];
        const char *want_out; /* published text */
        int stopped;
    } cases[] = {
        {{"END", NULL}, {"ab", "cE", "N", "Dxx", NULL}, "abc", 1},
        {{"END", NULL}, {"abE", "Nx", "E", NULL}, "abENxE", 0}, /* the trailing E is held until the end */
        {{"\n\n", "##"}, {"a\n", "b#", "#c", NULL}, "a\nb", 1},
        {{"xyz", "y"}, {"aaxy", NULL}, "aax", 1}, /* earliest match wins */
        {{"\xe2\x82\xac", NULL}, {"1\xe2\x82", "\xac" "2", NULL}, "1", 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        srv_req *r = srv_req_new();
        for (int i = 0; i < 2 && cases[c].stops[i]; i++) {
            r->stop[i] = strdup(cases[c].stops[i]);
            r->stop_len[i] = strlen(r->stop[i]);
            r->n_stop = (size_t)i + 1;
        }
        int stopped = 0;
        for (int i = 0; cases[c].pieces[i] && !stopped; i++) stopped = emit_text(r, cases[c].pieces[i], strlen(cases[c].pieces[i]));
        if (!stopped && r->hold.len) publish(r, r->hold.p, r->hold.len); /* what req_done does at the end */
        CHECK(stopped == cases[c].stopped, "case %zu stopped %d", c, stopped);
        CHECK(r->out.len == strlen(cases[c].want_out) && !memcmp(r->out.p ? r->out.p : "", cases[c].want_out, r->out.len),
              "case %zu out '%.*s' want '%s'", c, (int)r->out.len, r->out.p ? r->out.p : "", cases[c].want_out);
        srv_req_unref(r);
    }
}

int main(void) {
    test_stop();
    test_request();
    test_sse();
    test_settings();
    test_metrics();
    return test_done();
}
