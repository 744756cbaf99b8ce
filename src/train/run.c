/* moekit train: train.yaml and the whole `moe train` run (model creation, corpus, loop,
 * progress lines, loss.csv, loss.svg, checkpoints, export).
 *
 * Settings live in one table (key, type, offset, bounds) that drives the YAML reader and
 * docs/training.md. Output directory layout:
 *   OUT/vocab.gguf       the learned BPE (model.init.vocab_size > 0)
 *   OUT/init.gguf        the randomly initialised model (model.init.*)
 *   OUT/corpus.tok       the tokenized text (unless data.tokens names another file)
 *   OUT/checkpoint.gguf  latest checkpoint (atomic), resumed with output.resume: true
 *   OUT/loss.csv         one row per step; OUT/loss.svg the curve
 *   OUT/model.gguf       the exported model (output.export overrides) */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <yaml.h>

#include "core/clock.h"
#include "moe/dtype.h"
#include "moe/init.h"
#include "train/train_impl.h"

typedef struct {
    const char *key;
    char kind; /* s string, i int32, I int64, u uint64, d double, o optimizer, t dtype, b bool, p patterns */
    size_t off, len;
    double lo, hi;
} tkey;

#define K(k, kind, f, lo, hi) {k, kind, offsetof(moe_train_params, f), sizeof(((moe_train_params *)0)->f), lo, hi}
static const tkey k_keys[] = {
    K("model.base", 's', model, 0, 0),
    K("model.init.preset", 's', init_preset, 0, 0),
    K("model.init.config", 's', init_config, 0, 0),
    K("model.init.seed", 'u', init_seed, 0, 1e18),
    K("model.init.vocab_size", 'i', vocab_size, 0, 1 << 20),
    K("model.init.bpe_sample_mb", 'i', bpe_sample_mb, 1, 4096),
    K("data.text", 's', text, 0, 0),
    K("data.tokens", 's', tokens, 0, 0),
    K("data.seq_len", 'i', seq_len, 2, 65536),
    K("data.batch_size", 'i', batch_size, 1, 65536),
    K("data.val_fraction", 'd', val_fraction, 0, 0.5),
    K("optim.steps", 'I', steps, 1, 1e12),
    K("optim.warmup", 'I', warmup, 0, 1e12),
    K("optim.lr", 'd', lr, 0, 10),
    K("optim.min_lr", 'd', min_lr, 0, 10),
    K("optim.weight_decay", 'd', weight_decay, 0, 10),
    K("optim.beta1", 'd', beta1, 0, 0.999999),
    K("optim.beta2", 'd', beta2, 0, 0.999999999),
    K("optim.eps", 'd', eps, 0, 1),
    K("optim.grad_clip", 'd', grad_clip, 0, 1e9),
    K("optim.mode", 'o', optimizer, 0, 0),
    K("optim.seed", 'u', seed, 0, 1e18),
    K("optim.threads", 'i', threads, 0, 1024),
    K("balance.bias_update", 'd', bias_gamma, 0, 1),
    K("balance.aux_loss", 'd', aux_alpha, 0, 10),
    K("freeze", 'p', freeze, 0, 0),
    K("train_only", 'p', train_only, 0, 0),
    K("output.dir", 's', out_dir, 0, 0),
    K("output.export", 's', export_path, 0, 0),
    K("output.export_dtype", 't', export_dtype, 0, 0),
    K("output.checkpoint_every", 'I', checkpoint_every, 0, 1e12),
    K("output.log_every", 'I', log_every, 1, 1e12),
    K("output.eval_every", 'I', eval_every, 0, 1e12),
    K("output.eval_batches", 'i', eval_batches, 1, 1 << 20),
    K("output.resume", 'b', resume, 0, 0),
};
#undef K

static moe_status set_key(moe_train_params *p, const char *key, yaml_document_t *doc, yaml_node_t *v, char *err,
                          size_t errlen) {
    const tkey *k = NULL;
    for (size_t i = 0; i < sizeof k_keys / sizeof k_keys[0]; i++)
        if (!strcmp(k_keys[i].key, key)) k = &k_keys[i];
    if (!k) {
        snprintf(err, errlen, "line %zu: unknown key '%s' (see docs/training.md)", v->start_mark.line + 1, key);
        return MOE_ERR_FORMAT;
    }
    char *dst = (char *)p + k->off;
    if (k->kind == 'p') {
        if (v->type != YAML_SEQUENCE_NODE) {
            snprintf(err, errlen, "line %zu: '%s' must be a list of tensor name patterns", v->start_mark.line + 1, key);
            return MOE_ERR_FORMAT;
        }
        int32_t *n = (int32_t *)(void *)(dst + k->len);
        char(*pats)[64] = (char(*)[64])(void *)dst;
        *n = 0;
        for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
            yaml_node_t *s = yaml_document_get_node(doc, *it);
            if (!s || s->type != YAML_SCALAR_NODE || s->data.scalar.length >= 64 || *n >= MOE_TRAIN_MAX_PATTERNS) {
                snprintf(err, errlen, "line %zu: '%s': at most %d patterns of < 64 bytes", v->start_mark.line + 1, key,
                         MOE_TRAIN_MAX_PATTERNS);
                return MOE_ERR_FORMAT;
            }
            snprintf(pats[(*n)++], 64, "%s", (const char *)s->data.scalar.value);
        }
        return MOE_OK;
    }
    if (v->type != YAML_SCALAR_NODE) {
        snprintf(err, errlen, "line %zu: '%s' must be a scalar", v->start_mark.line + 1, key);
        return MOE_ERR_FORMAT;
    }
    const char *s = (const char *)v->data.scalar.value;
    char *end = NULL;
    int ok = 1;
    switch (k->kind) {
    case 's':
        ok = strlen(s) < k->len;
        if (ok) snprintf(dst, k->len, "%s", s);
        break;
    case 'b':
        ok = !strcmp(s, "true") || !strcmp(s, "false");
        *(int32_t *)(void *)dst = !strcmp(s, "true");
        break;
    case 'o':
        ok = !strcmp(s, "dense") || !strcmp(s, "exact") || !strcmp(s, "lazy");
        *(int32_t *)(void *)dst = !strcmp(s, "dense") ? MOE_TRAIN_OPT_DENSE
                                  : !strcmp(s, "exact") ? MOE_TRAIN_OPT_EXACT
                                                        : MOE_TRAIN_OPT_LAZY;
        break;
    case 't': {
        int t = moe_dtype_from_name(s);
        ok = t == MOE_DTYPE_F32 || t == MOE_DTYPE_F16 || t == MOE_DTYPE_BF16 || t == MOE_DTYPE_Q8_0;
        *(int32_t *)(void *)dst = t;
        break;
    }
    default: {
        errno = 0;
        double d = strtod(s, &end);
        ok = end != s && !*end && !errno && d >= k->lo && d <= k->hi;
        if (k->kind != 'd') ok = ok && d == floor(d);
        if (!ok) break;
        if (k->kind == 'i') *(int32_t *)(void *)dst = (int32_t)d;
        if (k->kind == 'I') *(int64_t *)(void *)dst = (int64_t)d;
        if (k->kind == 'u') *(uint64_t *)(void *)dst = (uint64_t)d;
        if (k->kind == 'd') *(double *)(void *)dst = d;
    }
    }
    if (!ok) {
        if (k->kind == 'o')
            snprintf(err, errlen, "line %zu: '%s' must be dense, exact or lazy", v->start_mark.line + 1, key);
        else if (k->kind == 't')
            snprintf(err, errlen, "line %zu: '%s' must be f32, f16, bf16 or q8_0", v->start_mark.line + 1, key);
        else if (k->kind == 'b')
            snprintf(err, errlen, "line %zu: '%s' must be true or false", v->start_mark.line + 1, key);
        else if (k->kind == 's')
            snprintf(err, errlen, "line %zu: '%s' is too long", v->start_mark.line + 1, key);
        else
            snprintf(err, errlen, "line %zu: '%s' = '%s' is not a %s in [%g, %g]", v->start_mark.line + 1, key, s,
                     k->kind == 'd' ? "number" : "whole number", k->lo, k->hi);
        return MOE_ERR_FORMAT;
    }
    return MOE_OK;
}

static moe_status walk(moe_train_params *p, yaml_document_t *doc, yaml_node_t *n, const char *prefix, char *err,
                       size_t errlen) {
    for (yaml_node_pair_t *pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(doc, pr->key), *v = yaml_document_get_node(doc, pr->value);
        if (!k || !v || k->type != YAML_SCALAR_NODE) {
            snprintf(err, errlen, "line %zu: keys must be plain names", n->start_mark.line + 1);
            return MOE_ERR_FORMAT;
        }
        char key[128];
        snprintf(key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", (const char *)k->data.scalar.value);
        moe_status st = v->type == YAML_MAPPING_NODE ? walk(p, doc, v, key, err, errlen) : set_key(p, key, doc, v, err, errlen);
        if (st) return st;
    }
    return MOE_OK;
}

moe_status moe_train_load_yaml(const char *path, moe_train_params *p, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    moe_status st = MOE_OK;
    char msg[400];
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "%s:%zu: %s", path, parser.problem_mark.line + 1, parser.problem ? parser.problem : "YAML error");
        yaml_parser_delete(&parser);
        fclose(f);
        return MOE_ERR_FORMAT;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root && root->type != YAML_MAPPING_NODE) {
        snprintf(err, errlen, "%s: the top level must be a mapping", path);
        st = MOE_ERR_FORMAT;
    } else if (root && (st = walk(p, &doc, root, "", msg, sizeof msg))) {
        snprintf(err, errlen, "%s: %s", path, msg);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return st;
}

/* ---- loss curve ---- */
typedef struct {
    int64_t step;
    double loss, val; /* val NAN when not evaluated */
} pt;

static void write_svg(const char *path, const pt *h, size_t n) {
    if (!n) return;
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    const double W = 800, H = 480, x0 = 70, y0 = 20, pw = 700, ph = 400;
    double lo = INFINITY, hi = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        lo = fmin(lo, h[i].loss);
        hi = fmax(hi, h[i].loss);
        if (!isnan(h[i].val)) {
            lo = fmin(lo, h[i].val);
            hi = fmax(hi, h[i].val);
        }
    }
    if (hi - lo < 1e-9) hi = lo + 1;
    lo = floor(lo);
    hi = ceil(hi);
    double smax = (double)h[n - 1].step, smin = (double)h[0].step;
    if (smax <= smin) smax = smin + 1;
#define X(s) (x0 + pw * ((double)(s) - smin) / (smax - smin))
#define Y(v) (y0 + ph * (1.0 - ((v) - lo) / (hi - lo)))
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H);
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#888\"/>\n", x0, y0, pw, ph);
    for (int i = 0; i <= 5; i++) {
        double v = lo + (hi - lo) * i / 5.0;
        fprintf(f, "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", x0, x0 + pw, Y(v), Y(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", x0 - 6, Y(v) + 4, v);
        double s = smin + (smax - smin) * i / 5.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.0f</text>\n", X(s), y0 + ph + 16, s);
    }
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", x0 + pw / 2, H - 6);
    fprintf(f, "<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">loss (nats/token)</text>\n",
            y0 + ph / 2);
    fprintf(f, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.2\" points=\"");
    size_t stride = n > 2000 ? n / 2000 : 1;
    for (size_t i = 0; i < n; i += stride) fprintf(f, "%.1f,%.1f ", X(h[i].step), Y(h[i].loss));
    fprintf(f, "\"/>\n");
    for (size_t i = 0; i < n; i++)
        if (!isnan(h[i].val))
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#d62728\"/>\n", X(h[i].step), Y(h[i].val));
    fprintf(f,
            "<text x=\"%.0f\" y=\"%.0f\" fill=\"#1f77b4\">train loss</text><text x=\"%.0f\" y=\"%.0f\" "
            "fill=\"#d62728\">held-out loss</text>\n</svg>\n",
            x0 + pw - 170, y0 + 16, x0 + pw - 80, y0 + 16);
#undef X
#undef Y
    fclose(f);
    rename(tmp, path);
}

static void fmt_time(double s, char *buf, size_t n) {
    if (s < 0 || !isfinite(s)) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, n, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

moe_status moe_train_run(const moe_train_params *pin, FILE *log, char *err, size_t errlen) {
    moe_train_params p = *pin;
    moe_status st = MOE_OK;
    moe_trainer *t = NULL;
    pt *hist = NULL;
    size_t nh = 0;
    FILE *csv = NULL;
    char model[1100], corpus[1100], path[1100], ckpt[1100], csvp[1100], svgp[1100];
    if (!p.out_dir[0]) snprintf(p.out_dir, sizeof p.out_dir, "train-out");
    if (mkdir(p.out_dir, 0755) && errno != EEXIST) {
        snprintf(err, errlen, "cannot create output directory '%s': %s", p.out_dir, strerror(errno));
        return MOE_ERR_IO;
    }
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.gguf", p.out_dir);
    snprintf(csvp, sizeof csvp, "%s/loss.csv", p.out_dir);
    snprintf(svgp, sizeof svgp, "%s/loss.svg", p.out_dir);
    /* 1. the model */
    if (p.model[0]) {
        snprintf(model, sizeof model, "%s", p.model);
    } else {
        snprintf(model, sizeof model, "%s/init.gguf", p.out_dir);
        if (!(p.resume && file_exists(model))) {
            moe_init_config cfg;
            if (moe_init_preset(p.init_preset[0] ? p.init_preset : "tiny", &cfg)) {
                snprintf(err, errlen, "model.init.preset '%s' is unknown", p.init_preset);
                return MOE_ERR_INVAL;
            }
            if (p.init_config[0] && (st = moe_init_from_json(p.init_config, &cfg, err, errlen))) return st;
            cfg.seed = p.init_seed;
            char vocab[1100];
            const char *vf = NULL;
            if (p.vocab_size > 0) {
                if (!p.text[0]) {
                    snprintf(err, errlen, "model.init.vocab_size needs data.text to learn the vocabulary from");
                    return MOE_ERR_INVAL;
                }
                snprintf(vocab, sizeof vocab, "%s/vocab.gguf", p.out_dir);
                if (!p.quiet && log) fprintf(log, "train: learning a %d-id BPE from %s ...\n", p.vocab_size, p.text);
                double t0 = moe_now();
                if ((st = moe_train_bpe(p.text, (uint64_t)p.bpe_sample_mb << 20, p.vocab_size, vocab, err, errlen))) return st;
                if (!p.quiet && log) fprintf(log, "train: BPE done in %.1f s\n", moe_now() - t0);
                vf = vocab;
                cfg.n_vocab = 0;
            }
            if ((st = moe_init_write(&cfg, vf, model, NULL, NULL, err, errlen))) return st;
        }
    }
    /* 2. the corpus */
    if (p.tokens[0])
        snprintf(corpus, sizeof corpus, "%s", p.tokens);
    else
        snprintf(corpus, sizeof corpus, "%s/corpus.tok", p.out_dir);
    if (!file_exists(corpus)) {
        if (!p.text[0]) {
            snprintf(err, errlen, "data: the corpus '%s' does not exist and no data.text is given", corpus);
            return MOE_ERR_INVAL;
        }
        uint64_t nt = 0;
        double t0 = moe_now();
        if ((st = moe_train_tokenize_file(model, p.text, corpus, &nt, err, errlen))) return st;
        if (!p.quiet && log)
            fprintf(log, "train: tokenized %s into %s: %llu tokens (%.1f s)\n", p.text, corpus, (unsigned long long)nt,
                    moe_now() - t0);
    }
    /* 3. the trainer */
    if ((st = moe_trainer_init(&p, model, corpus, &t, err, errlen))) return st;
    if (p.resume && file_exists(ckpt)) {
        if ((st = moe_trainer_resume(t, ckpt))) {
            snprintf(err, errlen, "%s", moe_trainer_errmsg(t));
            goto out;
        }
        if (!p.quiet && log) fprintf(log, "train: resumed from %s at step %lld\n", ckpt, (long long)t->step);
    }
    /* history: rows of an earlier run up to the resumed step */
    size_t hcap = (size_t)p.steps + 16;
    hist = calloc(hcap, sizeof *hist);
    if (!hist) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    if (t->step > 0) {
        FILE *old = fopen(csvp, "r");
        char line[512];
        while (old && fgets(line, sizeof line, old)) {
            long long s;
            double l, v = NAN;
            char *c = line;
            if (sscanf(line, "%lld,%lf", &s, &l) != 2 || s > t->step || nh >= hcap) continue;
            for (int k = 0; k < 9 && c; k++) c = strchr(c + 1, ',');
            if (c && c[1] != ',' && c[1] != '\n') v = strtod(c + 1, NULL);
            hist[nh++] = (pt){s, l, v};
        }
        if (old) fclose(old);
    }
    csv = fopen(csvp, "w");
    if (!csv) {
        snprintf(err, errlen, "cannot write '%s'", csvp);
        st = MOE_ERR_IO;
        goto out;
    }
    fprintf(csv, "step,loss,loss_ce,loss_aux,lr,grad_norm,load_max_mean,load_cv,idle_experts,val_loss,tokens_per_s\n");
    for (size_t i = 0; i < nh; i++) {
        fprintf(csv, "%lld,%.6f,,,,,,,,", (long long)hist[i].step, hist[i].loss);
        if (!isnan(hist[i].val)) fprintf(csv, "%.6f", hist[i].val);
        fprintf(csv, ",\n");
    }
    if (!p.quiet && log) {
        const moe_hparams *hp = &t->m->hp;
        fprintf(log,
                "train: %llu parameters (L=%d D=%d H=%d E=%d K=%d V=%d), %llu corpus tokens (%llu train), batch %d x %d, "
                "%d threads, optimizer %s\n",
                (unsigned long long)moe_trainer_n_params(t), hp->n_layer, hp->n_embd, hp->n_head, hp->n_expert,
                hp->n_expert_used, hp->n_vocab, (unsigned long long)t->n_tok, (unsigned long long)t->n_train,
                p.batch_size, p.seq_len, moe_pool_n_threads(t->pool),
                p.optimizer == MOE_TRAIN_OPT_DENSE ? "dense" : p.optimizer == MOE_TRAIN_OPT_EXACT ? "exact" : "lazy");
    }
    double t_start = moe_now(), t_log = t_start, tok_s = 0;
    int64_t s_start = t->step, s_log = t->step;
    double acc_loss = 0;
    int n_acc = 0;
    while (t->step < p.steps) {
        moe_train_stats ss;
        if ((st = moe_trainer_step(t, &ss))) {
            snprintf(err, errlen, "%s", moe_trainer_errmsg(t));
            goto out;
        }
        acc_loss += ss.loss;
        n_acc++;
        double val = NAN;
        if (p.eval_every > 0 && (ss.step % p.eval_every == 0 || ss.step == p.steps))
            val = moe_trainer_eval(t, p.eval_batches);
        double now = moe_now();
        tok_s = (double)((ss.step - s_start) * p.batch_size * p.seq_len) / (now - t_start);
        fprintf(csv, "%lld,%.6f,%.6f,%.6g,%.6g,%.4f,%.4f,%.4f,%d,", (long long)ss.step, ss.loss, ss.loss_ce,
                ss.loss_aux, ss.lr, ss.grad_norm, ss.load_maxmean, ss.load_cv, ss.idle_experts);
        if (!isnan(val)) fprintf(csv, "%.6f", val);
        fprintf(csv, ",%.1f\n", tok_s);
        fflush(csv);
        if (nh < hcap) hist[nh++] = (pt){ss.step, ss.loss, val};
        if (log && !p.quiet && (ss.step % p.log_every == 0 || ss.step == p.steps || !isnan(val))) {
            char eta[32], el[32];
            double rate = (now - t_log) / (double)(ss.step - s_log ? ss.step - s_log : 1);
            fmt_time(rate * (double)(p.steps - ss.step), eta, sizeof eta);
            fmt_time(now - t_start, el, sizeof el);
            fprintf(log,
                    "step %6lld/%lld  loss %.4f  lr %.2e  |g| %.3f  load max/mean %.2f cv %.2f idle %d  %.0f tok/s  "
                    "%s elapsed  ETA %s",
                    (long long)ss.step, (long long)p.steps, acc_loss / n_acc, ss.lr, ss.grad_norm, ss.load_maxmean,
                    ss.load_cv, ss.idle_experts, tok_s, el, eta);
            if (!isnan(val)) fprintf(log, "  val %.4f (ppl %.1f)", val, exp(val));
            fprintf(log, "\n");
            fflush(log);
            acc_loss = 0;
            n_acc = 0;
            t_log = now;
            s_log = ss.step;
        }
        if (p.checkpoint_every > 0 && ss.step % p.checkpoint_every == 0 && ss.step < p.steps) {
            if ((st = moe_trainer_save(t, ckpt))) {
                snprintf(err, errlen, "%s", moe_trainer_errmsg(t));
                goto out;
            }
            write_svg(svgp, hist, nh);
        }
    }
    if ((st = moe_trainer_save(t, ckpt))) {
        snprintf(err, errlen, "%s", moe_trainer_errmsg(t));
        goto out;
    }
    write_svg(svgp, hist, nh);
    if (p.export_path[0])
        snprintf(path, sizeof path, "%s", p.export_path);
    else
        snprintf(path, sizeof path, "%s/model.gguf", p.out_dir);
    if ((st = moe_trainer_export(t, path, p.export_dtype))) {
        snprintf(err, errlen, "%s", moe_trainer_errmsg(t));
        goto out;
    }
    if (log && !p.quiet)
        fprintf(log, "train: %lld steps, exported %s; loss curve %s, %s\n", (long long)t->step, path, csvp, svgp);
out:
    if (csv) fclose(csv);
    free(hist);
    moe_trainer_free(t);
    return st;
}
