/* moekit tools: expert routing statistics, their summaries and the JSON report
 * (`moe experts stats`, spec training.md §9.1; formats in docs/experts.md).
 *
 * Collection uses the engine's routing observer (moe_ctx_set_route_observer): every token's
 * selected experts and final routing weights, batched or not, so counts, co-activation and
 * weight mass are exact. Statistics read from Prometheus counters (--from-metrics) have no
 * weights: mass[] then stays empty (has_mass = 0), summaries use counts as the mass and the
 * report says so ("mass_source").
 *
 * Invariants: count[l][e] == coact[l][e][e]; Σ_e count[l][e] == K · n_tokens for MoE layers
 * filled by moe_experts_collect. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/experts.h"

static void seterr(char *err, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void seterr(char *err, size_t n, const char *fmt, ...) {
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

moe_status moe_experts_stats_init(moe_experts_stats *s, int32_t n_layer, int32_t n_expert) {
    memset(s, 0, sizeof *s);
    if (n_layer <= 0 || n_expert <= 0 || n_layer > 4096 || n_expert > 4096) return MOE_ERR_INVAL;
    const size_t LE = (size_t)n_layer * (size_t)n_expert;
    s->n_layer = n_layer;
    s->n_expert = n_expert;
    s->is_moe = calloc((size_t)n_layer, 1);
    s->count = calloc(LE, sizeof *s->count);
    s->mass = calloc(LE, sizeof *s->mass);
    s->coact = calloc(LE * (size_t)n_expert, sizeof *s->coact);
    if (!s->is_moe || !s->count || !s->mass || !s->coact) {
        moe_experts_stats_free(s);
        return MOE_ERR_NOMEM;
    }
    return MOE_OK;
}

void moe_experts_stats_free(moe_experts_stats *s) {
    if (!s) return;
    free(s->is_moe);
    free(s->count);
    free(s->mass);
    free(s->coact);
    memset(s, 0, sizeof *s);
}

void moe_experts_stats_add(moe_experts_stats *s, int32_t layer, const int32_t *experts, const float *weights,
                           int32_t k) {
    const size_t E = (size_t)s->n_expert;
    if (layer < 0 || layer >= s->n_layer) return;
    s->is_moe[layer] = 1;
    for (int32_t a = 0; a < k; a++) {
        int32_t i = experts[a];
        if (i < 0 || (size_t)i >= E) continue;
        s->count[layer * E + (size_t)i]++;
        if (weights) s->mass[layer * E + (size_t)i] += weights[a];
        for (int32_t b = 0; b < k; b++) {
            int32_t j = experts[b];
            if (j >= 0 && (size_t)j < E) s->coact[((size_t)layer * E + (size_t)i) * E + (size_t)j]++;
        }
    }
}

/* Routing observer: every token's selected experts and final weights, as the engine routes. */
static void on_route(void *ud, int32_t layer, int32_t n_tokens, int32_t n_used, const int32_t *experts,
                     const float *weights) {
    moe_experts_stats *s = ud;
    for (int32_t t = 0; t < n_tokens; t++)
        moe_experts_stats_add(s, layer, experts + (size_t)t * n_used, weights + (size_t)t * n_used, n_used);
}

moe_status moe_experts_collect(moe_ctx *c, const moe_model *m, const int32_t *tokens, int32_t n, int per_token,
                               moe_experts_stats *s) {
    const moe_hparams *hp = moe_model_hparams(m);
    const int32_t L = hp->n_layer, E = hp->n_expert, K = hp->n_expert_used;
    if (s->n_layer != L || s->n_expert != E || n < 0) return MOE_ERR_INVAL;
    s->n_expert_used = K;
    if (!s->source[0]) snprintf(s->source, sizeof s->source, "model");
    /* weight mass is complete only if every token so far came with weights */
    if (s->n_tokens == 0) s->has_mass = 1;
    if (s->n_tokens == 0) s->has_coact = 1;
    moe_ctx_reset_expert_counts(c);
    for (int32_t l = 0; l < L; l++)
        if (moe_ctx_expert_counts(c, l)) s->is_moe[l] = 1;
    moe_ctx_set_route_observer(c, on_route, s);
    moe_status st = MOE_OK;
    if (per_token) {
        for (int32_t t = 0; t < n && !st; t++) st = moe_ctx_eval(c, &tokens[t], 1, NULL);
    } else if (n) {
        st = moe_ctx_eval(c, tokens, n, NULL);
    }
    moe_ctx_set_route_observer(c, NULL, NULL);
    if (!st) s->n_tokens += (uint64_t)n;
    return st;
}

/* mass of expert e in layer l: routing weight if recorded, else selections */
static double mass_of(const moe_experts_stats *s, int32_t l, int32_t e) {
    size_t i = (size_t)l * (size_t)s->n_expert + (size_t)e;
    return s->has_mass ? s->mass[i] : (double)s->count[i];
}

/* experts of layer l by descending mass, ties by lower index (a stable insertion sort: E is
 * at most a few hundred, and C11 qsort has no user pointer for the comparator) */
static void order_by_mass(const moe_experts_stats *s, int32_t l, int32_t *order) {
    const int32_t E = s->n_expert;
    for (int32_t e = 0; e < E; e++) {
        int32_t j = e;
        double me = mass_of(s, l, e);
        while (j > 0 && mass_of(s, l, order[j - 1]) < me) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = e;
    }
}

moe_status moe_experts_summarize(const moe_experts_stats *s, int32_t layer, moe_experts_layer_summary *out,
                                 int32_t *order) {
    memset(out, 0, sizeof *out);
    if (layer < 0 || layer >= s->n_layer || !s->is_moe[layer]) return MOE_ERR_INVAL;
    const int32_t E = s->n_expert;
    int32_t *ord = order ? order : malloc(sizeof(int32_t) * (size_t)E);
    if (!ord) return MOE_ERR_NOMEM;
    const uint64_t *cnt = s->count + (size_t)layer * E;
    uint64_t sum = 0, mx = 0, idle = 0;
    for (int32_t e = 0; e < E; e++) {
        sum += cnt[e];
        if (cnt[e] > mx) mx = cnt[e];
        idle += cnt[e] == 0;
    }
    out->n_select = sum;
    out->idle_fraction = (double)idle / E;
    if (sum) {
        double mean = (double)sum / E, var = 0, h = 0;
        for (int32_t e = 0; e < E; e++) {
            double d = (double)cnt[e] - mean, p = (double)cnt[e] / (double)sum;
            var += d * d;
            if (p > 0) h -= p * log2(p);
        }
        out->max_over_mean = (double)mx / mean;
        out->cv = sqrt(var / E) / mean;
        out->entropy = h;
        out->entropy_norm = E > 1 ? h / log2((double)E) : 1.0;
    }
    order_by_mass(s, layer, ord);
    double total = 0;
    for (int32_t e = 0; e < E; e++) total += mass_of(s, layer, e);
    static const double k_levels[3] = {0.5, 0.9, 0.99};
    for (int q = 0; q < 3; q++) {
        if (total <= 0) {
            out->cover[q] = 0;
            continue;
        }
        double acc = 0;
        int32_t n = 0;
        /* the smallest prefix whose mass reaches the level (relative slack for rounding) */
        while (n < E && acc < k_levels[q] * total * (1 - 1e-12)) acc += mass_of(s, layer, ord[n++]);
        out->cover[q] = n;
    }
    if (!order) free(ord);
    return MOE_OK;
}

/* ---- JSON report ---- */

static json_t *u64_array(const uint64_t *v, int32_t n) {
    json_t *a = json_array();
    for (int32_t i = 0; i < n; i++) json_array_append_new(a, json_integer((json_int_t)v[i]));
    return a;
}

/* JSON has no NaN/Inf; 9 significant digits (JSON_REAL_PRECISION) keep the file readable */
static json_t *num(double v) { return json_real(isfinite(v) ? v : 0.0); }

moe_status moe_experts_write_json(const moe_experts_stats *s, const char *model, const char *path, char *err,
                                  size_t errlen) {
    const int32_t L = s->n_layer, E = s->n_expert;
    static const double k_levels[3] = {0.5, 0.9, 0.99};
    int32_t *ord = malloc(sizeof(int32_t) * (size_t)E);
    json_t *root = json_object(), *layers = json_array();
    if (!ord || !root || !layers) {
        free(ord);
        json_decref(root);
        json_decref(layers);
        return MOE_ERR_NOMEM;
    }
    json_object_set_new(root, "format", json_string("moekit.experts.stats"));
    json_object_set_new(root, "version", json_integer(1));
    json_object_set_new(root, "model", json_string(model ? model : ""));
    json_object_set_new(root, "source", json_string(s->source[0] ? s->source : "model"));
    json_object_set_new(root, "n_layer", json_integer(L));
    json_object_set_new(root, "n_expert", json_integer(E));
    json_object_set_new(root, "n_expert_used", json_integer(s->n_expert_used));
    json_object_set_new(root, "n_tokens", json_integer((json_int_t)s->n_tokens));
    json_object_set_new(root, "mass_source", json_string(s->has_mass ? "routing_weight" : "selections"));
    for (int32_t l = 0; l < L; l++) {
        if (!s->is_moe[l]) continue;
        moe_experts_layer_summary sm;
        moe_experts_summarize(s, l, &sm, ord);
        json_t *o = json_object();
        const uint64_t *cnt = s->count + (size_t)l * E;
        json_object_set_new(o, "layer", json_integer(l));
        json_object_set_new(o, "n_select", json_integer((json_int_t)sm.n_select));
        json_object_set_new(o, "counts", u64_array(cnt, E));
        json_t *share = json_array(), *wm = s->has_mass ? json_array() : json_null(), *ms = json_array();
        double total = 0;
        for (int32_t e = 0; e < E; e++) total += mass_of(s, l, e);
        for (int32_t e = 0; e < E; e++) {
            json_array_append_new(share, num(sm.n_select ? (double)cnt[e] / (double)sm.n_select : 0.0));
            if (s->has_mass) json_array_append_new(wm, num(s->mass[(size_t)l * E + e]));
            json_array_append_new(ms, num(total > 0 ? mass_of(s, l, e) / total : 0.0));
        }
        json_object_set_new(o, "token_share", share);
        json_object_set_new(o, "weight_mass", wm);
        json_object_set_new(o, "mass_share", ms);
        json_object_set_new(o, "max_over_mean", num(sm.max_over_mean));
        json_object_set_new(o, "cv", num(sm.cv));
        json_object_set_new(o, "entropy_bits", num(sm.entropy));
        json_object_set_new(o, "entropy_norm", num(sm.entropy_norm));
        json_object_set_new(o, "idle_fraction", num(sm.idle_fraction));
        json_t *cov = json_array();
        for (int q = 0; q < 3; q++) {
            json_t *c = json_object(), *ex = json_array();
            json_object_set_new(c, "level", num(k_levels[q]));
            json_object_set_new(c, "n", json_integer(sm.cover[q]));
            for (int32_t i = 0; i < sm.cover[q]; i++) json_array_append_new(ex, json_integer(ord[i]));
            json_object_set_new(c, "experts", ex);
            json_array_append_new(cov, c);
        }
        json_object_set_new(o, "coverage", cov);
        json_t *ranked = json_array();
        for (int32_t i = 0; i < E; i++) json_array_append_new(ranked, json_integer(ord[i]));
        json_object_set_new(o, "ranked", ranked);
        if (s->has_coact) {
            json_t *m = json_array();
            for (int32_t i = 0; i < E; i++)
                json_array_append_new(m, u64_array(s->coact + ((size_t)l * E + i) * E, E));
            json_object_set_new(o, "coactivation", m);
        } else {
            json_object_set_new(o, "coactivation", json_null());
        }
        json_array_append_new(layers, o);
    }
    json_object_set_new(root, "layers", layers);
    free(ord);
    int rc = json_dump_file(root, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (rc) {
        seterr(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    return MOE_OK;
}

static int read_u64_array(json_t *a, uint64_t *out, int32_t n) {
    if (!json_is_array(a) || json_array_size(a) != (size_t)n) return -1;
    for (int32_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
        out[i] = (uint64_t)json_integer_value(v);
    }
    return 0;
}

moe_status moe_experts_read_json(const char *path, moe_experts_stats *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        seterr(err, errlen, "%s:%d: %s", path, je.line, je.text);
        return MOE_ERR_FORMAT;
    }
    moe_status st = MOE_ERR_FORMAT;
    json_t *fmt = json_object_get(root, "format"), *layers = json_object_get(root, "layers");
    json_t *jl = json_object_get(root, "n_layer"), *je_ = json_object_get(root, "n_expert");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), "moekit.experts.stats") || !json_is_integer(jl) ||
        !json_is_integer(je_) || !json_is_array(layers)) {
        seterr(err, errlen, "%s: not a moe experts stats report (format, n_layer, n_expert, layers)", path);
        goto out;
    }
    st = moe_experts_stats_init(s, (int32_t)json_integer_value(jl), (int32_t)json_integer_value(je_));
    if (st) {
        seterr(err, errlen, "%s: bad n_layer/n_expert", path);
        if (st == MOE_ERR_INVAL) st = MOE_ERR_FORMAT;
        goto out;
    }
    st = MOE_ERR_FORMAT;
    const int32_t E = s->n_expert;
    s->n_expert_used = (int32_t)json_integer_value(json_object_get(root, "n_expert_used"));
    s->n_tokens = (uint64_t)json_integer_value(json_object_get(root, "n_tokens"));
    snprintf(s->source, sizeof s->source, "json");
    s->has_mass = 1;
    s->has_coact = 1;
    size_t i;
    json_t *o;
    json_array_foreach(layers, i, o) {
        json_t *jlay = json_object_get(o, "layer");
        if (!json_is_integer(jlay) || json_integer_value(jlay) < 0 || json_integer_value(jlay) >= s->n_layer) {
            seterr(err, errlen, "%s: layers[%zu].layer missing or out of range", path, i);
            goto out;
        }
        int32_t l = (int32_t)json_integer_value(jlay);
        s->is_moe[l] = 1;
        if (read_u64_array(json_object_get(o, "counts"), s->count + (size_t)l * E, E)) {
            seterr(err, errlen, "%s: layers[%zu].counts must be %d non-negative integers", path, i, E);
            goto out;
        }
        json_t *wm = json_object_get(o, "weight_mass");
        if (json_is_array(wm) && json_array_size(wm) == (size_t)E) {
            for (int32_t e = 0; e < E; e++) s->mass[(size_t)l * E + e] = json_number_value(json_array_get(wm, (size_t)e));
        } else {
            s->has_mass = 0;
        }
        json_t *ca = json_object_get(o, "coactivation");
        if (json_is_array(ca) && json_array_size(ca) == (size_t)E) {
            for (int32_t r = 0; r < E; r++)
                if (read_u64_array(json_array_get(ca, (size_t)r), s->coact + ((size_t)l * E + r) * E, E)) {
                    seterr(err, errlen, "%s: layers[%zu].coactivation row %d is malformed", path, i, r);
                    goto out;
                }
        } else {
            s->has_coact = 0;
        }
    }
    st = MOE_OK;
out:
    json_decref(root);
    if (st) moe_experts_stats_free(s);
    return st;
}

/* ---- Prometheus text ---- */

typedef struct {
    long layer, expert;
    double v;
} sample;

/* parse `{k="v",...}` starting at p (after the metric name); sets layer/expert; returns the
 * position after '}' or NULL */
static const char *parse_labels(const char *p, const char *end, long *layer, long *expert) {
    *layer = *expert = -1;
    if (p >= end || *p != '{') return NULL;
    p++;
    while (p < end && *p != '}') {
        const char *k = p;
        while (p < end && *p != '=') p++;
        if (p + 1 >= end || p[1] != '"') return NULL;
        size_t klen = (size_t)(p - k);
        p += 2;
        char val[64];
        size_t n = 0;
        while (p < end && *p != '"') {
            if (*p == '\\' && p + 1 < end) p++;
            if (n + 1 < sizeof val) val[n++] = *p;
            p++;
        }
        if (p >= end) return NULL;
        val[n] = 0;
        p++; /* closing quote */
        long *dst = klen == 5 && !memcmp(k, "layer", 5) ? layer : klen == 6 && !memcmp(k, "expert", 6) ? expert : NULL;
        if (dst) {
            char *e;
            errno = 0;
            long x = strtol(val, &e, 10);
            if (e == val || *e || errno || x < 0 || x >= 4096) return NULL;
            *dst = x;
        }
        if (p < end && *p == ',') p++;
    }
    if (p >= end) return NULL;
    return p + 1;
}

moe_status moe_experts_parse_metrics(const char *text, size_t len, moe_experts_stats *s, char *err, size_t errlen) {
    memset(s, 0, sizeof *s);
    static const char k_name[] = "moe_expert_tokens_total";
    const size_t nl = sizeof k_name - 1;
    sample *v = NULL;
    size_t n = 0, cap = 0;
    long maxl = -1, maxe = -1;
    const char *p = text, *end = text + len;
    int lineno = 0;
    moe_status st = MOE_OK;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) eol = end;
        lineno++;
        if ((size_t)(eol - p) > nl && !memcmp(p, k_name, nl) && p[nl] == '{') {
            sample sm;
            const char *q = parse_labels(p + nl, eol, &sm.layer, &sm.expert);
            char num[64];
            size_t m = 0;
            while (q && q < eol && (*q == ' ' || *q == '\t')) q++;
            while (q && q < eol && *q != ' ' && *q != '\t' && *q != '\r' && m + 1 < sizeof num) num[m++] = *q++;
            num[m] = 0;
            char *e = NULL;
            sm.v = m ? strtod(num, &e) : -1;
            if (!q || sm.layer < 0 || sm.expert < 0 || !m || *e || !(sm.v >= 0) || sm.v > 1.8e19) {
                seterr(err, errlen, "metrics line %d: malformed %s sample (want %s{layer=\"L\",expert=\"E\"} N)", lineno,
                       k_name, k_name);
                st = MOE_ERR_FORMAT;
                goto out;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                sample *nv = realloc(v, cap * sizeof *v);
                if (!nv) {
                    st = MOE_ERR_NOMEM;
                    goto out;
                }
                v = nv;
            }
            v[n++] = sm;
            if (sm.layer > maxl) maxl = sm.layer;
            if (sm.expert > maxe) maxe = sm.expert;
        }
        p = eol + 1;
    }
    if (!n) {
        seterr(err, errlen, "metrics: no %s{layer=...,expert=...} samples", k_name);
        st = MOE_ERR_FORMAT;
        goto out;
    }
    st = moe_experts_stats_init(s, (int32_t)maxl + 1, (int32_t)maxe + 1);
    if (st) goto out;
    snprintf(s->source, sizeof s->source, "metrics");
    for (size_t i = 0; i < n; i++) {
        size_t at = (size_t)v[i].layer * (size_t)s->n_expert + (size_t)v[i].expert;
        uint64_t c = (uint64_t)llround(v[i].v);
        s->is_moe[v[i].layer] = 1;
        s->count[at] += c; /* samples differing in other labels (model, replica) add up */
        s->coact[at * (size_t)s->n_expert + (size_t)v[i].expert] += c;
    }
out:
    free(v);
    return st;
}
