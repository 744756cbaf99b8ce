/* moekit tools: fetch a server's Prometheus text over HTTP(S) for `moe experts stats
 * --from-metrics URL` (libcurl), then parse it with moe_experts_parse_metrics. Only http and
 * https are allowed (no file://, no redirects to other schemes); the body is capped at 64 MiB. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/experts.h"

typedef struct {
    char *buf;
    size_t len, cap;
    int too_big;
} body;

static size_t on_data(char *p, size_t sz, size_t nm, void *ud) {
    body *b = ud;
    size_t n = sz * nm;
    if (b->len + n + 1 > ((size_t)64 << 20)) {
        b->too_big = 1;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        if (!nb) return 0;
        b->buf = nb;
        b->cap = cap;
    }
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->buf[b->len] = 0;
    return n;
}

moe_status moe_experts_fetch_metrics(const char *url, moe_experts_stats *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    CURL *h = curl_easy_init();
    if (!h) return MOE_ERR_NOMEM;
    body b = {0};
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, 60L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
    CURLcode rc = curl_easy_perform(h);
    moe_status st = MOE_OK;
    if (rc != CURLE_OK) {
        if (err && errlen)
            snprintf(err, errlen, "%s: %s", url,
                     b.too_big ? "response larger than 64 MiB" : cerr[0] ? cerr : curl_easy_strerror(rc));
        st = MOE_ERR_IO;
    } else {
        st = moe_experts_parse_metrics(b.buf ? b.buf : "", b.len, s, err, errlen);
    }
    curl_easy_cleanup(h);
    free(b.buf);
    return st;
}
