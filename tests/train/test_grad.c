/* Finite-difference checks of every backward function of the trainer, in float64 (the trainer
 * compiled with MOE_TRAIN_F64; spec training.md §1.4).
 *
 * Per function: a random input, the loss L = Σ c ⊙ f(input) with random c, the analytic
 * gradient against central differences (h = 1e-6). Whole model: tiny deepseek2 models in
 * several variants (q-LoRA or not, sigmoid + bias + groups + YaRN + auxiliary loss, softmax,
 * tied head, legacy attn_kv_b), every tensor, random coordinates, routing recorded in the base
 * forward and replayed for the ±h forwards (top-K is not differentiable). Error measure:
 * |a − n| / max(|a|, |n|, 1e-6); the bar is 1e-4, asserted at 1e-5. The largest
 * error per function and per model is printed. */
#define MOE_TRAIN_F64 1
#include "train/tmodel.c"

#include <unistd.h>

#include "moe/init.h"
#include "testutil.h"

#define TOL 1e-5

static uint64_t g_rng = 88172645463325252ull;
static double rnd(void) { /* uniform [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) * 0x1.0p-52 - 1.0;
}
static void fill(double *x, size_t n, double a) {
    for (size_t i = 0; i < n; i++) x[i] = a * rnd();
}
static double relerr(double a, double n) {
    double d = fabs(a - n), s = fmax(fmax(fabs(a), fabs(n)), 1e-6);
    return d / s;
}

/* Generic check: f(ctx) is the scalar loss; param points at the input being perturbed;
 * grad holds the analytic gradient. Returns the largest relative error. */
typedef double (*loss_fn)(void *ctx);
static double fd_check(loss_fn f, void *ctx, double *param, const double *grad, size_t n) {
    const double h = 1e-4;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + h;
        double lp = f(ctx);
        param[i] = keep - h;
        double lm = f(ctx);
        param[i] = keep;
        worst = fmax(worst, relerr(grad[i], (lp - lm) / (2 * h)));
    }
    return worst;
}

static void report(const char *what, double err) {
    printf("  %-40s max rel err %.2e\n", what, err);
    CHECK(err < TOL, "%s: relative error %.3e >= %.0e", what, err, TOL);
}

/* ---- rmsnorm ---- */
enum { NR = 37 };
typedef struct {
    double x[NR], w[NR], c[NR], y[NR];
} rn_ctx;
static double rn_loss(void *p) {
    rn_ctx *c = p;
    rmsnorm_fwd(c->y, c->x, c->w, NR, 1e-6);
    double L = 0;
    for (int i = 0; i < NR; i++) L += c->c[i] * c->y[i];
    return L;
}
static void test_rmsnorm(void) {
    rn_ctx c;
    fill(c.x, NR, 2);
    fill(c.w, NR, 1);
    fill(c.c, NR, 1);
    double r = rmsnorm_fwd(c.y, c.x, c.w, NR, 1e-6), dx[NR] = {0}, dw[NR] = {0};
    rmsnorm_bwd(dx, dw, c.c, c.x, c.w, r, NR);
    report("rmsnorm dx", fd_check(rn_loss, &c, c.x, dx, NR));
    report("rmsnorm dw", fd_check(rn_loss, &c, c.w, dw, NR));
}

/* ---- rope (with YaRN magnitude) ---- */
typedef struct {
    double z[16], c[16], y[16], cs[16];
} rp_ctx;
static double rp_loss(void *p) {
    rp_ctx *c = p;
    rope_fwd(c->y, c->z, c->cs, 16);
    double L = 0;
    for (int i = 0; i < 16; i++) L += c->c[i] * c->y[i];
    return L;
}
static void test_rope(void) {
    moe_hparams hp = {0};
    hp.n_rot = 16;
    hp.rope_freq_base = 10000;
    hp.rope_freq_scale = 0.25f; /* YaRN ×4 */
    hp.rope_ext_factor = 1;
    hp.rope_attn_factor = 0.9f;
    hp.n_ctx_orig_yarn = 64;
    double tab[8 * 16];
    rope_table(&hp, 8, tab);
    rp_ctx c;
    memcpy(c.cs, tab + 7 * 16, sizeof c.cs);
    fill(c.z, 16, 1);
    fill(c.c, 16, 1);
    double dz[16];
    rope_bwd(dz, c.c, c.cs, 16);
    report("rope (YaRN, position 7) dz", fd_check(rp_loss, &c, c.z, dz, 16));
}

/* ---- swiglu ---- */
typedef struct {
    double g[20], u[20], c[20], a[20];
} sw_ctx;
static double sw_loss(void *p) {
    sw_ctx *c = p;
    swiglu_fwd(c->a, c->g, c->u, 20);
    double L = 0;
    for (int i = 0; i < 20; i++) L += c->c[i] * c->a[i];
    return L;
}
static void test_swiglu(void) {
    sw_ctx c;
    fill(c.g, 20, 4);
    fill(c.u, 20, 2);
    fill(c.c, 20, 1);
    double dg[20], du[20];
    swiglu_bwd(dg, du, c.c, c.g, c.u, 20);
    report("swiglu dgate", fd_check(sw_loss, &c, c.g, dg, 20));
    report("swiglu dup", fd_check(sw_loss, &c, c.u, du, 20));
}

/* ---- router: scores (softmax / sigmoid) → weights (norm, scale), selection fixed ---- */
typedef struct {
    moe_hparams hp;
    double logit[16], s[16], w[8], c[8];
    int32_t sel[8];
} rt_ctx;
static double rt_loss(void *p) {
    rt_ctx *c = p;
    router_scores(c->hp.gating_func, c->logit, c->s, c->hp.n_expert);
    router_weights(&c->hp, c->s, c->sel, c->w);
    double L = 0;
    for (int k = 0; k < c->hp.n_expert_used; k++) L += c->c[k] * c->w[k];
    return L;
}
static void test_router(int gating, int norm, float scale, const char *label) {
    rt_ctx c;
    memset(&c, 0, sizeof c);
    c.hp.n_expert = 16;
    c.hp.n_expert_used = 4;
    c.hp.gating_func = gating;
    c.hp.expert_weights_norm = norm;
    c.hp.expert_weights_scale = scale;
    fill(c.logit, 16, 2);
    fill(c.c, 8, 1);
    double bias[16], sigma[16];
    fill(bias, 16, 0.3);
    router_scores(gating, c.logit, c.s, 16);
    router_select(&c.hp, c.s, bias, c.sel, sigma);
    double z = router_weights(&c.hp, c.s, c.sel, c.w);
    double ds[16] = {0}, dl[16];
    router_weights_bwd(&c.hp, c.s, c.sel, z, c.c, ds);
    router_scores_bwd(gating, c.s, ds, dl, 16);
    report(label, fd_check(rt_loss, &c, c.logit, dl, 16));
}

/* ---- sequence-wise auxiliary loss ---- */
typedef struct {
    double logit[12 * 8], s[12 * 8];
    int32_t sel[12 * 2];
    int gating;
} ax_ctx;
static double ax_loss(void *p) {
    ax_ctx *c = p;
    for (int t = 0; t < 12; t++) router_scores(c->gating, c->logit + t * 8, c->s + t * 8, 8);
    return aux_seq(c->s, c->sel, 12, 8, 2, 0.01, NULL, 0);
}
static void test_aux(int gating, const char *label) {
    ax_ctx c;
    c.gating = gating;
    fill(c.logit, 12 * 8, 2);
    for (int t = 0; t < 12; t++) {
        c.sel[t * 2] = (t * 3) % 8;
        c.sel[t * 2 + 1] = (t * 5 + 1) % 8 == c.sel[t * 2] ? (t * 5 + 2) % 8 : (t * 5 + 1) % 8;
    }
    ax_loss(&c);
    double ds[12 * 8] = {0}, dl[12 * 8];
    aux_seq(c.s, c.sel, 12, 8, 2, 0.01, ds, 1.0);
    for (int t = 0; t < 12; t++) router_scores_bwd(gating, c.s + t * 8, ds + t * 8, dl + t * 8, 8);
    report(label, fd_check(ax_loss, &c, c.logit, dl, 12 * 8));
}

/* ---- cross-entropy ---- */
typedef struct {
    double l[5 * 11];
    int32_t tg[5];
} ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = p;
    return ce_fwd_bwd(c->l, c->tg, 5, 11, NULL);
}
static void test_ce(void) {
    ce_ctx c;
    fill(c.l, 55, 3);
    int32_t tg[5] = {3, -1, 10, 0, 7};
    memcpy(c.tg, tg, sizeof tg);
    double d[55];
    ce_fwd_bwd(c.l, c.tg, 5, 11, d);
    report("cross-entropy dlogits (one ignored row)", fd_check(ce_loss, &c, c.l, d, 55));
}

/* ---- attention core (one sequence, one head; causal) ---- */
enum { AT = 7, ADN = 5, AR = 4, ADV = 6 };
typedef struct {
    double qn[AT * ADN], qp[AT * AR], kn[AT * ADN], kp[AT * AR], v[AT * ADV], c[AT * ADV], P[AT * AT], o[AT * ADV];
} at_ctx;
static attn_args at_args(at_ctx *c) {
    attn_args a = {c->qn, c->qp, c->kn, c->kp, c->v, ADN, AR, ADN, AR, ADV, ADV, AT, ADN, AR, ADV, 0.37};
    return a;
}
static double at_loss(void *p) {
    at_ctx *c = p;
    attn_args a = at_args(c);
    attn_fwd(&a, c->P, c->o);
    double L = 0;
    for (int i = 0; i < AT * ADV; i++) L += c->c[i] * c->o[i];
    return L;
}
static void test_attention(void) {
    at_ctx c;
    fill(c.qn, sizeof c.qn / 8, 1);
    fill(c.qp, sizeof c.qp / 8, 1);
    fill(c.kn, sizeof c.kn / 8, 1);
    fill(c.kp, sizeof c.kp / 8, 1);
    fill(c.v, sizeof c.v / 8, 1);
    fill(c.c, sizeof c.c / 8, 1);
    at_loss(&c);
    double dqn[AT * ADN] = {0}, dqp[AT * AR] = {0}, dkn[AT * ADN] = {0}, dkp[AT * AR] = {0}, dv[AT * ADV] = {0}, dp[AT];
    attn_args a = at_args(&c);
    attn_bwd(&a, c.P, c.c, dqn, dqp, dkn, dkp, dv, dp);
    report("attention dq_nope", fd_check(at_loss, &c, c.qn, dqn, AT * ADN));
    report("attention dq_pe", fd_check(at_loss, &c, c.qp, dqp, AT * AR));
    report("attention dk_nope", fd_check(at_loss, &c, c.kn, dkn, AT * ADN));
    report("attention dk_pe", fd_check(at_loss, &c, c.kp, dkp, AT * AR));
    report("attention dv", fd_check(at_loss, &c, c.v, dv, AT * ADV));
}

/* ---- whole model ---- */
typedef struct {
    moe_tm64_model *m;
} wm_ctx;
static double wm_loss(void *p) { return moe_tm64_forward(((wm_ctx *)p)->m); }

static void test_model(const char *label, moe_init_config cfg, double aux, int per_tensor) {
    char dir[512], path[600], err[512];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    moe_status st = moe_init_write(&cfg, NULL, path, NULL, NULL, err, sizeof err);
    CHECK(st == MOE_OK, "%s: init: %s", label, err);
    if (st) return;
    moe_tm64_model *m;
    st = moe_tm64_load(path, &m, err, sizeof err);
    CHECK(st == MOE_OK, "%s: load: %s", label, err);
    unlink(path);
    rmdir(dir);
    if (st) return;
    /* larger router weights than init's so that routing is far from uniform */
    const int B = 2, T = 6;
    CHECK(moe_tm64_alloc_acts(m, B, T) == MOE_OK, "acts");
    for (int i = 0; i < B * T; i++) {
        m->tokens[i] = (int32_t)((i * 131 + 7) % m->hp.n_vocab);
        m->targets[i] = i % 5 == 4 ? -1 : (int32_t)((i * 71 + 3) % m->hp.n_vocab);
    }
    m->aux_alpha = aux;
    m->replay = 0;
    double L0 = moe_tm64_forward(m);
    moe_tm64_zero_grads(m);
    moe_tm64_backward(m);
    double *g = malloc(sizeof(double) * m->n_params);
    memcpy(g, m->grads, sizeof(double) * m->n_params);
    m->replay = 1;
    wm_ctx c = {m};
    double L1 = wm_loss(&c);
    CHECK(L0 == L1, "%s: replayed routing gives the same loss (%.17g vs %.17g)", label, L0, L1);
    double worst = 0;
    const char *worst_name = "";
    int n_checked = 0, idle_nonzero = 0;
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const tm_tensor *t = &m->tensors[ti];
        if (t->kind == TM_KIND_BIAS) continue;
        double tw = 0;
        for (int k = 0; k < per_tensor; k++) {
            size_t i = (size_t)((rnd() * 0.5 + 0.5) * (double)t->numel);
            if (i >= t->numel) i = t->numel - 1;
            double e = fd_check(wm_loss, &c, m->params + t->off + i, g + t->off + i, 1);
            tw = fmax(tw, e);
            n_checked++;
        }
        if (tw > worst) {
            worst = tw;
            worst_name = t->name;
        }
        CHECK(tw < TOL, "%s: tensor %s rel err %.3e", label, t->name, tw);
        if (t->kind == TM_KIND_EXPERTS) {
            size_t per = t->numel / (size_t)m->hp.n_expert;
            for (int e = 0; e < m->hp.n_expert; e++)
                if (!m->active[(size_t)t->layer * m->hp.n_expert + e])
                    for (size_t i = 0; i < per; i++) idle_nonzero += g[t->off + (size_t)e * per + i] != 0;
        }
    }
    printf("  model %-32s loss %.4f (aux %.2e), %d coordinates, max rel err %.2e (%s)\n", label, L0, m->loss_aux,
           n_checked, worst, worst_name);
    CHECK(idle_nonzero == 0, "%s: idle experts have zero gradient (%d nonzero)", label, idle_nonzero);
    free(g);
    moe_tm64_free(m);
}

static moe_init_config small_cfg(void) {
    moe_init_config c;
    moe_init_preset("tiny", &c);
    c.n_embd = 32;
    c.n_head = 2;
    c.q_lora_rank = 16;
    c.kv_lora_rank = 16;
    c.qk_nope = 8;
    c.qk_rope = 8;
    c.v_head = 8;
    c.n_ff = 48;
    c.n_ff_exp = 16;
    c.n_expert = 8;
    c.n_expert_used = 2;
    c.n_layer = 3;
    c.n_layer_dense = 1;
    c.seed = 7;
    return c;
}

int main(int argc, char **argv) {
    int per = argc > 1 ? atoi(argv[1]) : 24;
    printf("backward functions vs central differences (float64):\n");
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_router(2, 1, 2.5f, "router sigmoid + norm + scale 2.5");
    test_router(1, 0, 1.0f, "router softmax");
    test_router(1, 1, 1.0f, "router softmax + norm");
    test_router(2, 0, 1.0f, "router sigmoid, no norm");
    test_aux(2, "aux loss (sigmoid scores)");
    test_aux(1, "aux loss (softmax scores)");
    test_ce();
    test_attention();
    printf("whole model (routing replayed):\n");
    moe_init_config c = small_cfg();
    test_model("V3-like: q-LoRA, sigmoid+bias, aux", c, 0.01, per);
    c = small_cfg();
    c.n_group = 4;
    c.n_group_used = 2;
    c.yarn_factor = 4;
    c.yarn_orig_ctx = 64;
    c.mscale_all_dim = 1.0f;
    c.n_expert_shared = 2;
    test_model("groups 4/2, YaRN x4, 2 shared", c, 0.0, per);
    c = small_cfg();
    c.q_lora_rank = 0;
    c.gating = 1;
    c.exp_probs_b = 0;
    c.norm_topk = 0;
    c.scale = 1.0f;
    c.tied = 1;
    test_model("V2-like: no q-LoRA, softmax, tied", c, 0.01, per);
    c = small_cfg();
    c.legacy_kv_b = 1;
    c.n_layer_dense = 0;
    test_model("legacy attn_kv_b, all MoE", c, 0.0, per);
    return test_done();
}
