/* moe experts stats --html: the report holds the layer × expert heatmap (one cell per MoE
 * layer and expert, titled with its count), one Lorenz curve per MoE layer, the co-activation
 * table, references nothing outside the file, and renders in headless Chromium (Debian's
 * `chromium`, scripts/deps.txt): the screenshot is a 1200 × 900 PNG with real content. */
#include <stdint.h>

#include "experts_fixture.h"
#include "moe/experts.h"
#include "moe/model.h"
#include "testutil.h"

static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

int main(void) {
    char dir[512], model[1024], html[1024], png[1024], cmd[8192], err[512];
    tu_tmpdir(dir, sizeof dir);
    moe_init_config cfg = fx_config();
    cfg.n_expert = 16;
    cfg.n_expert_used = 2;
    cfg.n_layer = 4;
    CHECK(fx_make(dir, "routed", &cfg, 1, NULL, model, sizeof model) == 0, "fixture");
    snprintf(html, sizeof html, "%s/report.html", dir);
    snprintf(png, sizeof png, "%s/report.png", dir);
    moe_model *m;
    CHECK(moe_model_open(model, &m, err, sizeof err) == MOE_OK, "open: %s", err);
    const moe_hparams *hp = moe_model_hparams(m);
    moe_ctx_params p = moe_ctx_default_params();
    p.n_ctx = 256;
    moe_ctx *c;
    CHECK(moe_ctx_init(m, &p, &c, err, sizeof err) == MOE_OK, "ctx");
    int32_t tok[200];
    for (int i = 0; i < 200; i++) tok[i] = (int32_t)((i * i * 7 + i) % 300); /* uneven classes */
    moe_experts_stats s;
    moe_experts_stats_init(&s, hp->n_layer, hp->n_expert);
    CHECK(moe_experts_collect(c, m, tok, 200, 1, &s) == MOE_OK, "collect");
    CHECK(moe_experts_write_html(&s, "routed <test> & co", html, err, sizeof err) == MOE_OK, "html: %s", err);
    const int n_moe = hp->n_layer - hp->n_layer_dense_lead;
    char *t = tu_read_file(html, NULL);
    CHECK(t != NULL, "report written");
    if (t) {
        CHECK(strstr(t, "<svg id=\"heatmap\"") != NULL, "heatmap SVG present");
        CHECK(count_of(t, "class=\"cell\"") == n_moe * hp->n_expert, "%d heatmap cells", count_of(t, "class=\"cell\""));
        CHECK(count_of(t, "class=\"lorenz\"") == n_moe, "%d Lorenz curves", count_of(t, "class=\"lorenz\""));
        CHECK(strstr(t, "Most co-activated pairs") != NULL, "co-activation table");
        CHECK(strstr(t, "routed &lt;test&gt; &amp; co") != NULL, "model label escaped");
        CHECK(!strstr(t, "<script") && !strstr(t, "src=") && !strstr(t, "href=") && !strstr(t, "@import") &&
                  !strstr(t, "url("),
              "self-contained (no script, no external resource)");
        char title[128];
        snprintf(title, sizeof title, "layer 1 expert 0: %llu tokens", (unsigned long long)s.count[1 * hp->n_expert + 0]);
        CHECK(strstr(t, title) != NULL, "cell title carries the count (%s)", title);
        free(t);
    }
    moe_experts_stats_free(&s);
    moe_ctx_free(c);
    moe_model_close(m);

    /* render: headless Chromium, no network, a throwaway profile under our temp dir */
    CHECK(fx_sh("command -v chromium >/dev/null 2>&1") == 0, "chromium installed (scripts/install-deps.sh)");
    snprintf(cmd, sizeof cmd,
             "timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking "
             "--disable-component-update --disable-sync --no-first-run --user-data-dir=%s/profile "
             "--screenshot=%s --window-size=1200,900 file://%s > %s/chromium.log 2>&1",
             dir, png, html, dir);
    int rc = fx_sh(cmd);
    CHECK(rc == 0, "chromium exit %d (log: %s/chromium.log)", rc, dir);
    size_t n = 0;
    unsigned char *b = (unsigned char *)tu_read_file(png, &n);
    CHECK(b && n > 33 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8) && !memcmp(b + 12, "IHDR", 4), "screenshot is a PNG");
    if (b && n > 33) {
        uint32_t w = be32(b + 16), h = be32(b + 20);
        printf("screenshot %s: %u × %u, %zu bytes\n", png, w, h, n);
        CHECK(w == 1200 && h == 900, "window size %u × %u", w, h);
        /* a blank 1200×900 page compresses to ~5 KB; the report's text, table and heatmap do not */
        CHECK(n > 20000, "non-trivial screenshot (%zu bytes)", n);
    }
    free(b);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (!tu_fail) fx_sh(cmd);
    return test_done();
}
