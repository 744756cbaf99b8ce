/* libFuzzer target: the server's request-JSON parser (src/server/request.c) over arbitrary bytes.
 *
 * The first byte picks the endpoint (chat or completions), the rest is the body. A body is either
 * accepted, and then every field obeys its documented bounds, or refused with a 4xx/503 status
 * and a non-empty message whose error JSON parses back. Anything else (crash, sanitizer report,
 * a broken invariant) is a finding. Run: scripts/run-fuzz.sh build-fuzz (see docs/server.md). */
#include <stdlib.h>
#include <string.h>

#include "server/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    srv_kind kind = (data[0] & 1) ? SRV_KIND_CHAT : SRV_KIND_COMPLETION;
    srv_params p;
    srv_error e;
    if (srv_request_parse(kind, (const char *)data + 1, size - 1, &p, &e) == 0) {
        if (p.n_stop > SRV_MAX_STOP || !(p.temperature >= 0 && p.temperature <= 2) || !(p.top_p > 0 && p.top_p <= 1) ||
            (p.max_tokens != -1 && p.max_tokens < 1) || p.top_k < 0)
            abort();
        for (size_t i = 0; i < p.n_stop; i++)
            if (!p.stop[i] || !p.stop[i][0] || strlen(p.stop[i]) > SRV_MAX_STOP_BYTES) abort();
        if (kind == SRV_KIND_CHAT) {
            if (!p.n_msgs || !p.msgs) abort();
            for (size_t i = 0; i < p.n_msgs; i++)
                if (!p.msgs[i].role || !p.msgs[i].content) abort();
        } else if (!p.prompt && !p.n_prompt_ids) {
            abort();
        }
        for (size_t i = 0; i < p.n_prompt_ids; i++)
            if (p.prompt_ids[i] < 0) abort();
        srv_params_free(&p);
        return 0;
    }
    if ((e.status != 400 && e.status != 503) || !e.message[0] || !e.type) abort();
    char *j = srv_error_json(&e); /* the message may quote input bytes: the JSON must still build */
    if (!j) abort();
    json_t *o = json_loads(j, 0, NULL);
    if (!o || !json_is_object(json_object_get(o, "error"))) abort();
    json_decref(o);
    free(j);
    return 0;
}
