/* moekit tools: the HTML report of `moe experts stats --html` (docs/experts.md).
 *
 * One self-contained file: inline CSS and inline SVG only (no script, font or image fetched),
 * so it opens offline and renders in a headless browser. Sections: per-layer summary table,
 * a layer × expert heatmap of token shares (<svg id="heatmap">), one Lorenz curve per MoE
 * layer (<svg class="lorenz">, with its Gini coefficient) and, when per-token selections were
 * recorded, the most co-activated expert pairs with their lift over independence. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/experts.h"

static void esc(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static double share(const moe_experts_stats *s, int32_t l, int32_t e) {
    const uint64_t *c = s->count + (size_t)l * s->n_expert;
    uint64_t sum = 0;
    for (int32_t i = 0; i < s->n_expert; i++) sum += c[i];
    return sum ? (double)c[e] / (double)sum : 0.0;
}

/* white → deep blue, t in [0, 1] */
static void color(FILE *f, double t) {
    if (!(t > 0)) t = 0;
    if (t > 1) t = 1;
    int r = (int)lround(247 - t * (247 - 8)), g = (int)lround(251 - t * (251 - 48)), b = (int)lround(255 - t * (255 - 107));
    fprintf(f, "#%02x%02x%02x", r, g, b);
}

static void heatmap(FILE *f, const moe_experts_stats *s) {
    const int32_t L = s->n_layer, E = s->n_expert;
    int32_t nm = 0;
    double mx = 0;
    for (int32_t l = 0; l < L; l++) {
        if (!s->is_moe[l]) continue;
        nm++;
        for (int32_t e = 0; e < E; e++) mx = fmax(mx, share(s, l, e));
    }
    double cw = 880.0 / E;
    if (cw > 40) cw = 40;
    if (cw < 3) cw = 3;
    const double ch = nm > 40 ? 10 : 22, x0 = 60, y0 = 30;
    const double W = fmax(x0 + cw * E + 20, 620), H = y0 + ch * nm + 40; /* room for the legend */
    fprintf(f, "<svg id=\"heatmap\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"token share per layer and expert\">\n",
            W, H, W, H);
    int step = E <= 16 ? 1 : E <= 64 ? 4 : E <= 128 ? 8 : 16;
    for (int32_t e = 0; e < E; e += step)
        fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" font-size=\"10\" text-anchor=\"middle\">%d</text>\n", x0 + cw * (e + 0.5),
                y0 - 6, e);
    int32_t row = 0;
    for (int32_t l = 0; l < L; l++) {
        if (!s->is_moe[l]) continue;
        double y = y0 + ch * row++;
        fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">layer %d</text>\n", x0 - 6,
                y + ch * 0.7, l);
        for (int32_t e = 0; e < E; e++) {
            double sh = share(s, l, e);
            fprintf(f, "<rect class=\"cell\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"", x0 + cw * e, y, cw,
                    ch);
            color(f, mx > 0 ? sh / mx : 0);
            fprintf(f, "\"><title>layer %d expert %d: %llu tokens (%.2f%%)</title></rect>\n", l, e,
                    (unsigned long long)s->count[(size_t)l * E + e], 100 * sh);
        }
    }
    /* colour scale */
    double ly = y0 + ch * nm + 14;
    for (int i = 0; i < 50; i++) {
        fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"4\" height=\"10\" fill=\"", x0 + 4 * i, ly);
        color(f, i / 49.0);
        fprintf(f, "\"/>");
    }
    fprintf(f, "\n<text x=\"%.0f\" y=\"%.0f\" font-size=\"10\">0 … %.2f%% of the layer's selections</text>\n", x0 + 210,
            ly + 9, 100 * mx);
    fprintf(f, "</svg>\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void lorenz(FILE *f, const moe_experts_stats *s, int32_t l, double *tmp) {
    const int32_t E = s->n_expert;
    for (int32_t e = 0; e < E; e++) tmp[e] = share(s, l, e);
    qsort(tmp, (size_t)E, sizeof *tmp, cmp_double);
    const double S = 200, pad = 24;
    double area = 0, acc = 0;
    fprintf(f, "<figure><svg class=\"lorenz\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\">\n",
            S + 2 * pad, S + 2 * pad);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#999\"/>\n", pad, pad, S, S);
    fprintf(f, "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#bbb\" stroke-dasharray=\"4 3\"/>\n", pad,
            pad + S, pad + S, pad);
    fprintf(f, "<polyline fill=\"none\" stroke=\"#08306b\" stroke-width=\"2\" points=\"%.1f,%.1f", pad, pad + S);
    for (int32_t i = 0; i < E; i++) {
        double prev = acc;
        acc += tmp[i];
        area += (prev + acc) / (2.0 * E);
        fprintf(f, " %.1f,%.1f", pad + S * (i + 1) / E, pad + S * (1 - acc));
    }
    double gini = acc > 0 ? 1 - 2 * area / acc : 0;
    fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" font-size=\"10\">share of experts →</text>\n", pad, pad + S + 16);
    fprintf(f, "</svg><figcaption>layer %d · Gini %.3f</figcaption></figure>\n", l, gini);
}

static void pairs(FILE *f, const moe_experts_stats *s, int32_t l) {
    const int32_t E = s->n_expert;
    enum { TOP = 5 };
    int32_t bi[TOP], bj[TOP];
    uint64_t bc[TOP];
    int n = 0;
    for (int32_t i = 0; i < E; i++)
        for (int32_t j = i + 1; j < E; j++) {
            uint64_t c = s->coact[((size_t)l * E + i) * E + j];
            if (!c) continue;
            int at = n < TOP ? n++ : TOP;
            if (at == TOP && c <= bc[TOP - 1]) continue;
            if (at == TOP) at = TOP - 1;
            while (at > 0 && bc[at - 1] < c) {
                bi[at] = bi[at - 1], bj[at] = bj[at - 1], bc[at] = bc[at - 1];
                at--;
            }
            bi[at] = i, bj[at] = j, bc[at] = c;
        }
    fprintf(f, "<tr><td>%d</td><td>", l);
    for (int k = 0; k < n; k++) {
        double ci = (double)s->count[(size_t)l * E + bi[k]], cj = (double)s->count[(size_t)l * E + bj[k]];
        double lift = ci > 0 && cj > 0 && s->n_tokens ? (double)bc[k] * (double)s->n_tokens / (ci * cj) : 0;
        fprintf(f, "%s%d+%d: %llu (lift %.2f)", k ? "; " : "", bi[k], bj[k], (unsigned long long)bc[k], lift);
    }
    fprintf(f, "</td></tr>\n");
}

moe_status moe_experts_write_html(const moe_experts_stats *s, const char *model, const char *path, char *err,
                                  size_t errlen) {
    const int32_t L = s->n_layer, E = s->n_expert;
    FILE *f = fopen(path, "w");
    if (!f) {
        if (err && errlen) snprintf(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    double *tmp = malloc(sizeof(double) * (size_t)E);
    int32_t *ord = malloc(sizeof(int32_t) * (size_t)E);
    if (!tmp || !ord) {
        free(tmp);
        free(ord);
        fclose(f);
        return MOE_ERR_NOMEM;
    }
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>moe experts: ", f);
    esc(f, model);
    fputs("</title>\n<style>body{font:14px sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
          "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eef}"
          "figure{display:inline-block;margin:6px}figcaption{text-align:center;font-size:12px}"
          ".note{color:#666}</style></head><body>\n<h1>Expert routing report</h1>\n<p>model <b>",
          f);
    esc(f, model);
    fprintf(f, "</b> · %d layers · %d experts (top-%d) · %llu tokens · source %s · mass = %s</p>\n", L, E,
            s->n_expert_used, (unsigned long long)s->n_tokens, s->source[0] ? s->source : "model",
            s->has_mass ? "routing weight" : "selections (routing weights need the engine's routing observer)");
    fputs("<h2>Summary</h2>\n<table><tr><th>layer</th><th>selections</th><th>max/mean</th><th>CV</th>"
          "<th>entropy (bits)</th><th>entropy / log2 E</th><th>idle</th><th>cover 50%</th><th>cover 90%</th>"
          "<th>cover 99%</th></tr>\n",
          f);
    for (int32_t l = 0; l < L; l++) {
        moe_experts_layer_summary sm;
        if (!s->is_moe[l] || moe_experts_summarize(s, l, &sm, ord)) continue;
        fprintf(f,
                "<tr><td>%d</td><td>%llu</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.1f%%</td>"
                "<td>%d</td><td>%d</td><td>%d</td></tr>\n",
                l, (unsigned long long)sm.n_select, sm.max_over_mean, sm.cv, sm.entropy, sm.entropy_norm,
                100 * sm.idle_fraction, sm.cover[0], sm.cover[1], sm.cover[2]);
    }
    fputs("</table>\n<h2>Token share: layer × expert</h2>\n", f);
    heatmap(f, s);
    fputs("<h2>Lorenz curves</h2>\n<p class=\"note\">Experts sorted by load; the dashed diagonal is perfect "
          "balance.</p>\n<div>",
          f);
    for (int32_t l = 0; l < L; l++)
        if (s->is_moe[l]) lorenz(f, s, l, tmp);
    fputs("</div>\n", f);
    if (s->has_coact) {
        fputs("<h2>Most co-activated pairs</h2>\n<p class=\"note\">Tokens that chose both experts; lift = observed "
              "/ expected if choices were independent.</p>\n<table><tr><th>layer</th><th>pairs</th></tr>\n",
              f);
        for (int32_t l = 0; l < L; l++)
            if (s->is_moe[l]) pairs(f, s, l);
        fputs("</table>\n", f);
    }
    fputs("</body></html>\n", f);
    free(tmp);
    free(ord);
    if (ferror(f) | fclose(f)) {
        if (err && errlen) snprintf(err, errlen, "cannot write '%s'", path);
        return MOE_ERR_IO;
    }
    return MOE_OK;
}
