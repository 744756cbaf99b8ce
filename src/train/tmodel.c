/* moekit train: deepseek2 forward with stored activations and its backward pass.
 *
 * The math is spec deepseek2.md §4 as src/model/forward.c computes it, in the naive MLA form
 * (keys and values decompressed per head through attn_k_b / attn_v_b — the same function as
 * the engine's absorbed form, spec training.md §1.2):
 *   x = embd[tok]; per layer: h1 = rmsnorm(x); q (q-LoRA or not), kv = kv_a·h1,
 *   c = rmsnorm(kv[:Lkv]), k_pe = rope(kv[Lkv:]), k_nope_h = k_b_hᵀ·c, v_h = v_b_h·c,
 *   softmax(kq_scale·(q_nope·k_nope + rope(q_pe)·k_pe)) causal, o = P·v, x += attn_out·o;
 *   h2 = rmsnorm(x); x += dense SwiGLU(h2) or shared(h2) + Σ_k w_k·expert_k(h2);
 *   logits = out·rmsnorm(x); loss = mean cross-entropy (+ sequence-wise aux loss).
 * Router (§4.11): softmax or sigmoid scores s, selection by s + exp_probs_b (bias only picks;
 * it gets no gradient), group-limited top-K with the engine's tie rule (lower index first),
 * weights s_k (/ max(Σ s_k, 6.1e-5) when normalised) × expert_weights_scale. Top-K is not
 * differentiable: gradients flow through the selected scores only (spec training.md §1.3).
 *
 * Backward functions accumulate (+=) into gradient buffers (llm.c); frozen tensors get no
 * weight gradient but still pass gradients to their inputs. Only experts that received tokens
 * are computed, forward and backward, and only their gradient slices are written.
 * Buffers are sized once by TM(alloc_acts); forward and backward allocate nothing.
 * Element type `treal`: float, or double when compiled with MOE_TRAIN_F64 (tests). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/dtype.h"
#include "train/tmodel.h"

#ifdef MOE_TRAIN_F64
#define TEXP exp
#define TSQRT sqrt
#define TCOS cos
#define TSIN sin
#else
#define TEXP expf
#define TSQRT sqrtf
#define TCOS cosf
#define TSIN sinf
#endif

/* Hot kernels get an AVX2+FMA clone picked at load time (ifunc); the default clone is plain x86-64. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MOE_TRAIN_F64)
#define TM_HOT __attribute__((target_clones("arch=haswell", "default")))
#else
#define TM_HOT
#endif

static moe_status tfail(char *err, size_t errlen, moe_status st, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* ================================================================ kernels */

static inline treal dot(const treal *restrict a, const treal *restrict b, int64_t n) {
    treal acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    treal s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy(treal *restrict y, treal a, const treal *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

typedef struct {
    int64_t N, OUT, IN;
    const treal *X, *W;
    int64_t ldx, ldw;
    treal *Y;
    int64_t ldy;
    int acc;
} mm_job;

/* Y[n][o] (+)= Σ_i X[n][i]·W[o][i] over rows n ∈ [n0, n1), outputs o ∈ [o0, o1). */
TM_HOT static void mm_nt_block(const mm_job *j, int64_t n0, int64_t n1, int64_t o0, int64_t o1) {
    for (int64_t ob = o0; ob < o1; ob += 32) {
        int64_t oe = ob + 32 < o1 ? ob + 32 : o1;
        for (int64_t n = n0; n < n1; n++) {
            const treal *x = j->X + n * j->ldx;
            treal *y = j->Y + n * j->ldy;
            for (int64_t o = ob; o < oe; o++) {
                treal v = dot(x, j->W + o * j->ldw, j->IN);
                y[o] = j->acc ? y[o] + v : v;
            }
        }
    }
}

static void mm_nt_worker(void *arg, int ith, int nth) {
    const mm_job *j = arg;
    if (j->N >= 4 * nth) {
        mm_nt_block(j, j->N * ith / nth, j->N * (ith + 1) / nth, 0, j->OUT);
    } else {
        mm_nt_block(j, 0, j->N, j->OUT * ith / nth, j->OUT * (ith + 1) / nth);
    }
}

/* Y (N, OUT) (+)= X (N, IN) · W (OUT, IN)ᵀ */
static void mm_nt(TM(model) *m, int64_t N, int64_t OUT, int64_t IN, const treal *X, int64_t ldx, const treal *W,
                  int64_t ldw, treal *Y, int64_t ldy, int acc) {
    mm_job j = {N, OUT, IN, X, W, ldx, ldw, Y, ldy, acc};
    if (m->pool && (double)N * (double)OUT * (double)IN > 65536.0)
        moe_pool_run(m->pool, mm_nt_worker, &j);
    else
        mm_nt_block(&j, 0, N, 0, OUT);
}

/* Y[n] (+)= Σ_i X[n][i]·M[i] over rows [n0, n1); M (IN, OUT) rows ldw apart. Four rows of Y
 * share each M row read. */
TM_HOT static void mm_nn_block(const mm_job *j, int64_t n0, int64_t n1) {
    const int64_t OUT = j->OUT, IN = j->IN;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
        treal *restrict y0 = j->Y + n * j->ldy, *restrict y1 = y0 + j->ldy, *restrict y2 = y1 + j->ldy,
                        *restrict y3 = y2 + j->ldy;
        if (!j->acc)
            for (int64_t o = 0; o < OUT; o++) y0[o] = y1[o] = y2[o] = y3[o] = 0;
        const treal *x0 = j->X + n * j->ldx, *x1 = x0 + j->ldx, *x2 = x1 + j->ldx, *x3 = x2 + j->ldx;
        for (int64_t i = 0; i < IN; i++) {
            const treal *restrict w = j->W + i * j->ldw;
            treal a0 = x0[i], a1 = x1[i], a2 = x2[i], a3 = x3[i];
            if (a0 == 0 && a1 == 0 && a2 == 0 && a3 == 0) continue;
            for (int64_t o = 0; o < OUT; o++) {
                treal wv = w[o];
                y0[o] += a0 * wv;
                y1[o] += a1 * wv;
                y2[o] += a2 * wv;
                y3[o] += a3 * wv;
            }
        }
    }
    for (; n < n1; n++) {
        treal *y = j->Y + n * j->ldy;
        if (!j->acc)
            for (int64_t o = 0; o < OUT; o++) y[o] = 0;
        const treal *x = j->X + n * j->ldx;
        for (int64_t i = 0; i < IN; i++)
            if (x[i] != 0) axpy(y, x[i], j->W + i * j->ldw, OUT);
    }
}

static void mm_nn_worker(void *arg, int ith, int nth) {
    const mm_job *j = arg;
    /* split on multiples of 4 rows so the blocked path does the work */
    int64_t nb = (j->N + 3) / 4;
    int64_t a = nb * ith / nth * 4, b = nb * (ith + 1) / nth * 4;
    mm_nn_block(j, a, b < j->N ? b : j->N);
}

/* Y (N, OUT) (+)= X (N, IN) · M (IN, OUT) */
static void mm_nn(TM(model) *m, int64_t N, int64_t OUT, int64_t IN, const treal *X, int64_t ldx, const treal *M,
                  int64_t ldm, treal *Y, int64_t ldy, int acc) {
    mm_job j = {N, OUT, IN, X, M, ldx, ldm, Y, ldy, acc};
    if (m->pool && N >= 8 && (double)N * (double)OUT * (double)IN > 65536.0)
        moe_pool_run(m->pool, mm_nn_worker, &j);
    else
        mm_nn_block(&j, 0, N);
}

/* C[a] += Σ_n A[n][a]·Bm[n] for a ∈ [a0, a1): C (NA, NB), A (N, NA), Bm (N, NB). Four rows of
 * C share each Bm row read. Job fields: N=N, OUT=NB, IN=NA, X=A, W=Bm, Y=C. */
TM_HOT static void mm_tn_block(const mm_job *j, int64_t a0, int64_t a1) {
    const int64_t NB = j->OUT, N = j->N;
    int64_t a = a0;
    for (; a + 4 <= a1; a += 4) {
        treal *restrict c0 = j->Y + a * j->ldy, *restrict c1 = c0 + j->ldy, *restrict c2 = c1 + j->ldy,
                        *restrict c3 = c2 + j->ldy;
        for (int64_t n = 0; n < N; n++) {
            const treal *an = j->X + n * j->ldx + a;
            treal v0 = an[0], v1 = an[1], v2 = an[2], v3 = an[3];
            if (v0 == 0 && v1 == 0 && v2 == 0 && v3 == 0) continue;
            const treal *restrict bn = j->W + n * j->ldw;
            for (int64_t k = 0; k < NB; k++) {
                treal bv = bn[k];
                c0[k] += v0 * bv;
                c1[k] += v1 * bv;
                c2[k] += v2 * bv;
                c3[k] += v3 * bv;
            }
        }
    }
    for (; a < a1; a++) {
        treal *c = j->Y + a * j->ldy;
        for (int64_t n = 0; n < N; n++) {
            treal v = j->X[n * j->ldx + a];
            if (v != 0) axpy(c, v, j->W + n * j->ldw, NB);
        }
    }
}

static void mm_tn_worker(void *arg, int ith, int nth) {
    const mm_job *j = arg;
    int64_t nb = (j->IN + 3) / 4;
    int64_t a = nb * ith / nth * 4, b = nb * (ith + 1) / nth * 4;
    mm_tn_block(j, a, b < j->IN ? b : j->IN);
}

/* C (NA, NB) += A (N, NA)ᵀ · Bm (N, NB); C == NULL (frozen weight) does nothing. */
static void mm_tn(TM(model) *m, int64_t NA, int64_t NB, int64_t N, const treal *A, int64_t lda, const treal *Bm,
                  int64_t ldb, treal *C, int64_t ldc) {
    if (!C) return;
    mm_job j = {N, NB, NA, A, Bm, lda, ldb, C, ldc, 1};
    if (m->pool && NA >= 8 && (double)N * (double)NA * (double)NB > 65536.0)
        moe_pool_run(m->pool, mm_tn_worker, &j);
    else
        mm_tn_block(&j, 0, NA);
}

/* ================================================================ small ops (each has an FD test) */

/* y = w ⊙ x · r, r = 1/sqrt(mean(x²) + eps) with the sum of squares in double (spec §4.2). Returns r. */
static treal rmsnorm_fwd(treal *y, const treal *x, const treal *w, int64_t n, treal eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    treal mean = (treal)(ss / (double)n);
    treal r = (treal)1 / TSQRT(mean + eps);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] * r) * w[i];
    return r;
}

/* dx += ∂/∂x, dw += ∂/∂w (dw may be NULL) of y = rmsnorm(x; w) given dy:
 * dx_i = r·w_i·dy_i − r³/n · x_i · Σ_j w_j·dy_j·x_j. */
static void rmsnorm_bwd(treal *dx, treal *dw, const treal *dy, const treal *x, const treal *w, treal r, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)(w[i] * dy[i]) * (double)x[i];
    treal c = (treal)(s * (double)r * (double)r * (double)r / (double)n);
    for (int64_t i = 0; i < n; i++) dx[i] += r * w[i] * dy[i] - c * x[i];
    if (dw)
        for (int64_t i = 0; i < n; i++) dw[i] += dy[i] * x[i] * r;
}

/* RoPE cos/sin table (T, R) for positions 0..T−1, llama.cpp's binary32 arithmetic (spec §4.5). */
static void rope_table(const moe_hparams *hp, int32_t T, treal *cs) {
    const int R = hp->n_rot;
    const float theta_scale = powf(hp->rope_freq_base, -2.0f / (float)R);
    const float fs = hp->rope_freq_scale, ext = hp->rope_ext_factor, base = hp->rope_freq_base;
    const int n_orig = hp->n_ctx_orig_yarn;
#define CORR(nrot) ((float)R * logf((float)n_orig / ((nrot) * 2.0f * (float)M_PI)) / (2.0f * logf(base)))
    float lo = floorf(CORR(32.0f)), hi = ceilf(CORR(1.0f));
#undef CORR
    lo = lo > 0.0f ? lo : 0.0f;
    hi = hi < (float)(R - 1) ? hi : (float)(R - 1);
    float mag = hp->rope_attn_factor;
    if (ext != 0.0f) mag *= 1.0f + 0.1f * logf(1.0f / fs);
    for (int32_t t = 0; t < T; t++) {
        float theta_extrap = (float)t;
        for (int j = 0; j < R / 2; j++) {
            float theta_interp = fs * theta_extrap, theta = theta_interp;
            if (ext != 0.0f) {
                float y = ((float)j - lo) / fmaxf(0.001f, hi - lo);
                float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, y));
                float mix = ramp * ext;
                theta = theta_interp * (1.0f - mix) + theta_extrap * mix;
            }
            cs[(size_t)t * R + 2 * j] = (treal)(cosf(theta) * mag);
            cs[(size_t)t * R + 2 * j + 1] = (treal)(sinf(theta) * mag);
            theta_extrap *= theta_scale;
        }
    }
}

/* z' = rope(z): adjacent pairs rotated (GGML_ROPE_TYPE_NORMAL). out may equal in. */
static void rope_fwd(treal *out, const treal *in, const treal *cs, int R) {
    for (int j = 0; j < R / 2; j++) {
        treal c = cs[2 * j], s = cs[2 * j + 1], a = in[2 * j], b = in[2 * j + 1];
        out[2 * j] = a * c - b * s;
        out[2 * j + 1] = a * s + b * c;
    }
}

/* dz = Rᵀ·dz' (the rotation scaled by mag; its transpose is the backward). dst may equal src. */
static void rope_bwd(treal *dz, const treal *dzr, const treal *cs, int R) {
    for (int j = 0; j < R / 2; j++) {
        treal c = cs[2 * j], s = cs[2 * j + 1], a = dzr[2 * j], b = dzr[2 * j + 1];
        dz[2 * j] = a * c + b * s;
        dz[2 * j + 1] = -a * s + b * c;
    }
}

static inline treal sigm(treal x) { return (treal)1 / ((treal)1 + TEXP(-x)); }

/* a = silu(g)·u */
static void swiglu_fwd(treal *a, const treal *g, const treal *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = g[i] * sigm(g[i]) * u[i];
}

/* From da: dg = da·u·silu'(g), du = da·silu(g), silu'(g) = σ(g)(1 + g(1 − σ(g))). dg/du may alias da. */
static void swiglu_bwd(treal *dg, treal *du, const treal *da, const treal *g, const treal *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        treal sg = sigm(g[i]), a = da[i];
        treal dgi = a * u[i] * sg * ((treal)1 + g[i] * ((treal)1 - sg));
        du[i] = a * g[i] * sg;
        dg[i] = dgi;
    }
}

/* ---- router (spec §4.11 steps 2–6), one token ---- */

static void router_scores(int gating, const treal *logit, treal *s, int E) {
    if (gating == 2) {
        for (int e = 0; e < E; e++) s[e] = sigm(logit[e]);
    } else {
        treal mx = logit[0];
        for (int e = 1; e < E; e++) mx = logit[e] > mx ? logit[e] : mx;
        double sum = 0;
        for (int e = 0; e < E; e++) sum += (double)(s[e] = TEXP(logit[e] - mx));
        treal inv = (treal)(1.0 / sum);
        for (int e = 0; e < E; e++) s[e] *= inv;
    }
}

/* Selection as the engine does it (groups by the sum of their two best, top-K descending,
 * ties to the lower index). sigma: (E) scratch. */
static void router_select(const moe_hparams *hp, const treal *s, const treal *bias, int32_t *sel, treal *sigma) {
    const int E = hp->n_expert, K = hp->n_expert_used, G = hp->n_expert_groups;
    for (int e = 0; e < E; e++) sigma[e] = bias ? s[e] + bias[e] : s[e];
    if (G > 1) {
        const int per = E / G;
        treal gscore[1024];
        int keep[1024] = {0};
        for (int g = 0; g < G; g++) {
            treal a = -INFINITY, b = -INFINITY;
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (sigma[e] > a) {
                    b = a;
                    a = sigma[e];
                } else if (sigma[e] > b) {
                    b = sigma[e];
                }
            }
            gscore[g] = per > 1 ? a + b : a;
        }
        for (int k = 0; k < hp->n_group_used; k++) {
            int best = -1;
            for (int g = 0; g < G; g++)
                if (!keep[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            keep[best] = 1;
        }
        for (int g = 0; g < G; g++)
            if (!keep[g])
                for (int e = g * per; e < (g + 1) * per; e++) sigma[e] = -INFINITY;
    }
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int q = 0; q < k; q++) taken |= sel[q] == e;
            if (!taken && (best < 0 || sigma[e] > sigma[best])) best = e;
        }
        sel[k] = best;
    }
}

#define WNORM_MIN ((treal)6.103515625e-5)

/* Weights of the selected experts: w_k = s[sel_k] (/ Z, Z = max(Σ s_sel, 6.1e-5)) · scale.
 * Returns Z (0 without normalisation). */
static treal router_weights(const moe_hparams *hp, const treal *s, const int32_t *sel, treal *w) {
    const int K = hp->n_expert_used;
    treal z = 0;
    for (int k = 0; k < K; k++) w[k] = s[sel[k]];
    if (hp->expert_weights_norm) {
        treal sum = 0;
        for (int k = 0; k < K; k++) sum += w[k];
        z = sum > WNORM_MIN ? sum : WNORM_MIN;
        for (int k = 0; k < K; k++) w[k] /= z;
    }
    if (hp->expert_weights_scale != 0.0f && hp->expert_weights_scale != 1.0f)
        for (int k = 0; k < K; k++) w[k] *= (treal)hp->expert_weights_scale;
    return z;
}

/* ds (E) += ∂/∂s of the weights given dw (K); z as returned by router_weights. */
static void router_weights_bwd(const moe_hparams *hp, const treal *s, const int32_t *sel, treal z, const treal *dw,
                               treal *ds) {
    const int K = hp->n_expert_used;
    treal g[64];
    treal sc = (hp->expert_weights_scale != 0.0f && hp->expert_weights_scale != 1.0f) ? (treal)hp->expert_weights_scale
                                                                                          : (treal)1;
    for (int k = 0; k < K; k++) g[k] = dw[k] * sc;
    if (hp->expert_weights_norm) {
        treal sum = 0;
        for (int k = 0; k < K; k++) sum += s[sel[k]];
        treal corr = 0;
        if (sum > WNORM_MIN) /* Z = Σ s_sel depends on s; when clamped it is a constant */
            for (int k = 0; k < K; k++) corr += g[k] * s[sel[k]] / z;
        for (int k = 0; k < K; k++) ds[sel[k]] += (g[k] - corr) / z;
    } else {
        for (int k = 0; k < K; k++) ds[sel[k]] += g[k];
    }
}

/* dlogit (E) = ∂/∂logit given ds (E). */
static void router_scores_bwd(int gating, const treal *s, const treal *ds, treal *dlogit, int E) {
    if (gating == 2) {
        for (int e = 0; e < E; e++) dlogit[e] = ds[e] * s[e] * ((treal)1 - s[e]);
    } else {
        double d = 0;
        for (int e = 0; e < E; e++) d += (double)s[e] * (double)ds[e];
        for (int e = 0; e < E; e++) dlogit[e] = s[e] * (ds[e] - (treal)d);
    }
}

/* Sequence-wise balance loss of one sequence (spec training.md §3.2): s (T, E) scores,
 * sel (T, K). L = α Σ_i f_i P_i, f_i = E/(K·T)·count_i, P_i = mean_t s_i,t / Σ_j s_j,t.
 * If ds is not NULL, ds (T, E) += scale·∂L/∂s. Returns L. */
static double aux_seq(const treal *s, const int32_t *sel, int T, int E, int K, double alpha, treal *ds,
                      double scale) {
    double f[1024] = {0}, P[1024] = {0};
    for (int t = 0; t < T; t++)
        for (int k = 0; k < K; k++) f[sel[t * K + k]] += 1.0;
    for (int e = 0; e < E; e++) f[e] *= (double)E / ((double)K * (double)T);
    for (int t = 0; t < T; t++) {
        double z = 0;
        for (int e = 0; e < E; e++) z += s[t * E + e];
        for (int e = 0; e < E; e++) P[e] += s[t * E + e] / z / T;
    }
    double L = 0;
    for (int e = 0; e < E; e++) L += alpha * f[e] * P[e];
    if (ds) {
        for (int t = 0; t < T; t++) {
            double z = 0, c = 0;
            for (int e = 0; e < E; e++) z += s[t * E + e];
            /* ∂L/∂s'_i = α f_i / T; ∂s'_i/∂s_j = (δ_ij − s'_i)/z */
            for (int e = 0; e < E; e++) c += alpha * f[e] / T * (s[t * E + e] / z);
            for (int e = 0; e < E; e++) ds[t * E + e] += (treal)(scale * (alpha * f[e] / T - c) / z);
        }
    }
    return L;
}

/* Mean cross-entropy over rows with target ≥ 0 (n_valid of them); if dlogits is not NULL it
 * receives (softmax − onehot)/n_valid (rows without a target: 0). dlogits may alias logits. */
static double ce_fwd_bwd(const treal *logits, const int32_t *targets, int64_t N, int64_t V, treal *dlogits) {
    int64_t nv = 0;
    for (int64_t n = 0; n < N; n++) nv += targets[n] >= 0;
    double loss = 0;
    for (int64_t n = 0; n < N; n++) {
        const treal *l = logits + n * V;
        treal *d = dlogits ? dlogits + n * V : NULL;
        if (targets[n] < 0) {
            if (d) memset(d, 0, (size_t)V * sizeof(treal));
            continue;
        }
        treal mx = l[0];
        for (int64_t v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double sum = 0;
        for (int64_t v = 0; v < V; v++) sum += exp((double)(l[v] - mx));
        double lse = log(sum) + (double)mx;
        loss += lse - (double)l[targets[n]];
        if (d) {
            double inv = 1.0 / (double)nv;
            for (int64_t v = 0; v < V; v++) d[v] = (treal)(exp((double)l[v] - lse) * inv);
            d[targets[n]] -= (treal)inv;
        }
    }
    return nv ? loss / (double)nv : 0.0;
}

/* ---- attention core, one (sequence, head): positions 0..T−1 ---- */
typedef struct {
    const treal *qn;  /* (T) rows ldq apart, Dn values */
    const treal *qp;  /* rows ldqp apart, R values (roped) */
    const treal *kn;  /* rows ldk apart, Dn */
    const treal *kp;  /* rows ldkp apart, R (roped, shared by heads) */
    const treal *v;   /* rows ldv apart, Dv */
    int64_t ldq, ldqp, ldk, ldkp, ldv, ldo;
    int T, Dn, R, Dv;
    treal scale;
} attn_args;

/* P (T, T) probabilities (zero above the diagonal), o (T rows ldo apart, Dv). */
static void attn_fwd(const attn_args *a, treal *P, treal *o) {
    for (int t = 0; t < a->T; t++) {
        treal *p = P + (size_t)t * a->T;
        treal mx = -INFINITY;
        for (int s = 0; s <= t; s++) {
            treal v = a->scale * (dot(a->qn + t * a->ldq, a->kn + s * a->ldk, a->Dn) +
                                  dot(a->qp + t * a->ldqp, a->kp + s * a->ldkp, a->R));
            p[s] = v;
            mx = v > mx ? v : mx;
        }
        double sum = 0;
        for (int s = 0; s <= t; s++) sum += (double)(p[s] = TEXP(p[s] - mx));
        treal inv = (treal)(1.0 / sum);
        for (int s = 0; s <= t; s++) p[s] *= inv;
        for (int s = t + 1; s < a->T; s++) p[s] = 0;
        treal *ot = o + t * a->ldo;
        memset(ot, 0, (size_t)a->Dv * sizeof(treal));
        for (int s = 0; s <= t; s++) axpy(ot, p[s], a->v + s * a->ldv, a->Dv);
    }
}

/* Gradients (+=) into dqn, dqp, dkn, dkp, dv (same strides as the inputs) from dout; dp: (T) scratch. */
static void attn_bwd(const attn_args *a, const treal *P, const treal *dout, treal *dqn, treal *dqp, treal *dkn,
                     treal *dkp, treal *dv, treal *dp) {
    for (int t = 0; t < a->T; t++) {
        const treal *p = P + (size_t)t * a->T, *dot_ = dout + t * a->ldo;
        double sdp = 0;
        for (int s = 0; s <= t; s++) {
            dp[s] = dot(dot_, a->v + s * a->ldv, a->Dv);
            sdp += (double)p[s] * (double)dp[s];
        }
        for (int s = 0; s <= t; s++) {
            axpy(dv + s * a->ldv, p[s], dot_, a->Dv);
            treal g = a->scale * p[s] * (dp[s] - (treal)sdp);
            if (g == 0) continue;
            axpy(dqn + t * a->ldq, g, a->kn + s * a->ldk, a->Dn);
            axpy(dqp + t * a->ldqp, g, a->kp + s * a->ldkp, a->R);
            axpy(dkn + s * a->ldk, g, a->qn + t * a->ldq, a->Dn);
            axpy(dkp + s * a->ldkp, g, a->qp + t * a->ldqp, a->R);
        }
    }
}

/* ================================================================ model layout */

static int add_tensor(TM(model) *m, int *cap, const char *name, int n_dims, int64_t a, int64_t b, int64_t c, int kind,
                      int layer) {
    if (m->n_tensors == *cap) {
        int nc = *cap ? 2 * *cap : 64;
        tm_tensor *t = realloc(m->tensors, sizeof(tm_tensor) * (size_t)nc);
        if (!t) return -1;
        m->tensors = t;
        *cap = nc;
    }
    tm_tensor *t = &m->tensors[m->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->ne[0] = a;
    t->ne[1] = b;
    t->ne[2] = c;
    t->numel = (size_t)(a * b * c);
    t->off = m->n_params;
    t->kind = kind;
    t->layer = layer;
    t->frozen = kind == TM_KIND_BIAS;
    m->n_params += (t->numel + 15) & ~(size_t)15; /* 64-byte aligned starts */
    return m->n_tensors++;
}

moe_status TM(create)(const moe_hparams *hp, int tied, TM(model) **out, char *err, size_t errlen) {
    *out = NULL;
    TM(model) *m = calloc(1, sizeof *m);
    if (!m) return MOE_ERR_NOMEM;
    m->hp = *hp;
    m->hp.tied_output = tied;
    m->dn = hp->n_embd_head_k - hp->n_rot;
    if (hp->gating_func != 1 && hp->gating_func != 2) {
        free(m);
        return tfail(err, errlen, MOE_ERR_UNSUPPORTED, "train: expert_gating_func %d (only softmax 1 and sigmoid 2 are trainable)",
                     hp->gating_func);
    }
    if (hp->n_expert > 1024 || hp->n_expert_used > 64) {
        free(m);
        return tfail(err, errlen, MOE_ERR_UNSUPPORTED, "train: at most 1024 experts and 64 per token");
    }
    const int64_t D = hp->n_embd, V = hp->n_vocab, H = hp->n_head, Lq = hp->q_lora_rank, Lkv = hp->kv_lora_rank,
                  R = hp->n_rot, Dk = hp->n_embd_head_k, Dv = hp->n_embd_head_v, Dn = m->dn, F = hp->n_ff,
                  Fe = hp->n_ff_exp, E = hp->n_expert, S = hp->n_expert_shared;
    int cap = 0, bad = 0;
    char nm[64];
    m->layers = calloc((size_t)hp->n_layer, sizeof(tm_layer));
    if (!m->layers) goto nomem;
    m->ti_embd = add_tensor(m, &cap, "token_embd.weight", 2, D, V, 1, TM_KIND_DENSE, -1);
    m->ti_out_norm = add_tensor(m, &cap, "output_norm.weight", 1, D, 1, 1, TM_KIND_NORM, -1);
    m->ti_out = tied ? -1 : add_tensor(m, &cap, "output.weight", 2, D, V, 1, TM_KIND_DENSE, -1);
    bad |= m->ti_embd < 0 || m->ti_out_norm < 0 || (!tied && m->ti_out < 0);
    for (int il = 0; il < hp->n_layer && !bad; il++) {
        tm_layer *ly = &m->layers[il];
        for (int k = 0; k < W_COUNT; k++) ly->ti[k] = -1;
#define A(slot, s, nd, a, b, c, kind)                                                                             \
    do {                                                                                                          \
        snprintf(nm, sizeof nm, "blk.%d.%s", il, s);                                                              \
        ly->ti[slot] = add_tensor(m, &cap, nm, nd, a, b, c, kind, il);                                            \
        bad |= ly->ti[slot] < 0;                                                                                  \
    } while (0)
        A(W_ATTN_NORM, "attn_norm.weight", 1, D, 1, 1, TM_KIND_NORM);
        if (Lq > 0) {
            A(W_Q_A, "attn_q_a.weight", 2, D, Lq, 1, TM_KIND_DENSE);
            A(W_Q_A_NORM, "attn_q_a_norm.weight", 1, Lq, 1, 1, TM_KIND_NORM);
            A(W_Q_B, "attn_q_b.weight", 2, Lq, H * Dk, 1, TM_KIND_DENSE);
        } else {
            A(W_Q, "attn_q.weight", 2, D, H * Dk, 1, TM_KIND_DENSE);
        }
        A(W_KV_A, "attn_kv_a_mqa.weight", 2, D, Lkv + R, 1, TM_KIND_DENSE);
        A(W_KV_A_NORM, "attn_kv_a_norm.weight", 1, Lkv, 1, 1, TM_KIND_NORM);
        A(W_K_B, "attn_k_b.weight", 3, Dn, Lkv, H, TM_KIND_DENSE);
        A(W_V_B, "attn_v_b.weight", 3, Lkv, Dv, H, TM_KIND_DENSE);
        A(W_ATTN_OUT, "attn_output.weight", 2, H * Dv, D, 1, TM_KIND_DENSE);
        A(W_FFN_NORM, "ffn_norm.weight", 1, D, 1, 1, TM_KIND_NORM);
        if (il < hp->n_layer_dense_lead) {
            A(W_GATE, "ffn_gate.weight", 2, D, F, 1, TM_KIND_DENSE);
            A(W_UP, "ffn_up.weight", 2, D, F, 1, TM_KIND_DENSE);
            A(W_DOWN, "ffn_down.weight", 2, F, D, 1, TM_KIND_DENSE);
        } else {
            ly->is_moe = 1;
            A(W_GATE_INP, "ffn_gate_inp.weight", 2, D, E, 1, TM_KIND_ROUTER);
            if (hp->has_exp_probs_b) A(W_EXP_B, "exp_probs_b.bias", 1, E, 1, 1, TM_KIND_BIAS);
            A(W_GATE_EXPS, "ffn_gate_exps.weight", 3, D, Fe, E, TM_KIND_EXPERTS);
            A(W_UP_EXPS, "ffn_up_exps.weight", 3, D, Fe, E, TM_KIND_EXPERTS);
            A(W_DOWN_EXPS, "ffn_down_exps.weight", 3, Fe, D, E, TM_KIND_EXPERTS);
            if (S > 0) {
                A(W_GATE_SH, "ffn_gate_shexp.weight", 2, D, Fe * S, 1, TM_KIND_DENSE);
                A(W_UP_SH, "ffn_up_shexp.weight", 2, D, Fe * S, 1, TM_KIND_DENSE);
                A(W_DOWN_SH, "ffn_down_shexp.weight", 2, Fe * S, D, 1, TM_KIND_DENSE);
            }
        }
#undef A
    }
    if (bad) goto nomem;
    m->params = calloc(m->n_params ? m->n_params : 1, sizeof(treal));
    m->grads = calloc(m->n_params ? m->n_params : 1, sizeof(treal));
    size_t LE = (size_t)hp->n_layer * (size_t)(E > 0 ? E : 1);
    m->active = calloc(LE, 1);
    m->counts = calloc(LE, sizeof(uint64_t));
    if (!m->params || !m->grads || !m->active || !m->counts) goto nomem;
    *out = m;
    return MOE_OK;
nomem:
    TM(free)(m);
    return tfail(err, errlen, MOE_ERR_NOMEM, "train: out of memory");
}

void TM(free)(TM(model) *m) {
    if (!m) return;
    free(m->tensors);
    free(m->layers);
    free(m->params);
    free(m->grads);
    free(m->active);
    free(m->counts);
    free(m->acts);
    free(m->amem);
    free(m);
}

int TM(find)(const TM(model) *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return i;
    return -1;
}

/* Copy a GGUF tensor (any readable dtype) into params at tensor ti. */
static moe_status load_tensor(TM(model) *m, const moe_gguf *g, int ti, char *err, size_t errlen) {
    tm_tensor *t = &m->tensors[ti];
    const moe_gguf_tensor *gt = moe_gguf_find_tensor(g, t->name);
    if (!gt) return tfail(err, errlen, MOE_ERR_FORMAT, "train: tensor '%s' is missing", t->name);
    if (gt->ne[0] != t->ne[0] || gt->ne[1] != t->ne[1] || gt->ne[2] != t->ne[2])
        return tfail(err, errlen, MOE_ERR_FORMAT, "train: tensor '%s' has an unexpected shape", t->name);
    int64_t in = t->ne[0], rows = t->ne[1] * t->ne[2];
    size_t rb = moe_dtype_row_bytes(gt->type, in);
    float *row = malloc(sizeof(float) * (size_t)in);
    if (!row) return MOE_ERR_NOMEM;
    for (int64_t r = 0; r < rows; r++) {
        if (moe_dtype_dequant_row(gt->type, (const uint8_t *)gt->data + (size_t)r * rb, row, in)) {
            free(row);
            return tfail(err, errlen, MOE_ERR_UNSUPPORTED, "train: tensor '%s' has a type this build cannot read", t->name);
        }
        treal *dst = m->params + t->off + (size_t)r * (size_t)in;
        for (int64_t i = 0; i < in; i++) dst[i] = (treal)row[i];
    }
    free(row);
    return MOE_OK;
}

moe_status TM(load_gguf)(const moe_gguf *g, TM(model) **out, char *err, size_t errlen) {
    moe_model *mm = NULL;
    *out = NULL;
    /* the engine's loader validates keys, shapes and types, and computes rope/YaRN values */
    moe_status st = moe_model_open_gguf(g, &mm, err, errlen);
    if (st) return st;
    moe_hparams hp = *moe_model_hparams(mm);
    moe_model_close(mm);
    TM(model) *m;
    if ((st = TM(create)(&hp, hp.tied_output, &m, err, errlen))) return st;
    const int64_t H = hp.n_head, Lkv = hp.kv_lora_rank, Dn = m->dn, Dv = hp.n_embd_head_v;
    for (int i = 0; i < m->n_tensors && !st; i++) {
        tm_tensor *t = &m->tensors[i];
        size_t nl = strlen(t->name);
        int is_kb = nl > 15 && !strcmp(t->name + nl - 15, "attn_k_b.weight");
        int is_vb = nl > 15 && !strcmp(t->name + nl - 15, "attn_v_b.weight");
        if ((is_kb || is_vb) && !hp.is_mla) {
            /* legacy attn_kv_b [Lkv, H·(Dn+Dv)]: head h rows h(Dn+Dv)+d (keys) then +Dn+e (values) */
            char nm[64];
            snprintf(nm, sizeof nm, "blk.%d.attn_kv_b.weight", t->layer);
            const moe_gguf_tensor *gt = moe_gguf_find_tensor(g, nm);
            if (!gt) {
                st = tfail(err, errlen, MOE_ERR_FORMAT, "train: tensor '%s' is missing", nm);
                break;
            }
            size_t rb = moe_dtype_row_bytes(gt->type, Lkv);
            float *row = malloc(sizeof(float) * (size_t)Lkv);
            if (!row) {
                st = MOE_ERR_NOMEM;
                break;
            }
            treal *dst = m->params + t->off;
            for (int64_t h = 0; h < H; h++)
                for (int64_t j = 0; j < (is_kb ? Dn : Dv); j++) {
                    int64_t r = h * (Dn + Dv) + (is_kb ? j : Dn + j);
                    moe_dtype_dequant_row(gt->type, (const uint8_t *)gt->data + (size_t)r * rb, row, Lkv);
                    for (int64_t c = 0; c < Lkv; c++) {
                        if (is_kb) /* k_b (H, Lkv, Dn) */
                            dst[(h * Lkv + c) * Dn + j] = (treal)row[c];
                        else /* v_b (H, Dv, Lkv) */
                            dst[(h * Dv + j) * Lkv + c] = (treal)row[c];
                    }
                }
            free(row);
            continue;
        }
        st = load_tensor(m, g, i, err, errlen);
    }
    if (st) {
        TM(free)(m);
        return st;
    }
    m->hp.is_mla = 1; /* what TM(model) holds (and exports) */
    *out = m;
    return MOE_OK;
}

moe_status TM(load)(const char *path, TM(model) **out, char *err, size_t errlen) {
    moe_gguf *g;
    *out = NULL;
    moe_status st = moe_gguf_open(path, &g, err, errlen);
    if (st) return st;
    st = TM(load_gguf)(g, out, err, errlen);
    moe_gguf_close(g);
    return st;
}

/* ================================================================ activations */

moe_status TM(alloc_acts)(TM(model) *m, int32_t B, int32_t T) {
    const moe_hparams *hp = &m->hp;
    const size_t N = (size_t)B * (size_t)T, D = (size_t)hp->n_embd, H = (size_t)hp->n_head,
                 Lq = (size_t)hp->q_lora_rank, Lkv = (size_t)hp->kv_lora_rank, R = (size_t)hp->n_rot,
                 Dk = (size_t)hp->n_embd_head_k, Dv = (size_t)hp->n_embd_head_v, Dn = (size_t)m->dn,
                 F = (size_t)hp->n_ff, Fe = (size_t)hp->n_ff_exp, E = (size_t)hp->n_expert,
                 K = (size_t)hp->n_expert_used, S = (size_t)hp->n_expert_shared, V = (size_t)hp->n_vocab,
                 L = (size_t)hp->n_layer;
    m->n_thr = m->pool ? moe_pool_n_threads(m->pool) : 1;
    free(m->amem);
    free(m->acts);
    m->amem = NULL;
    m->acts = calloc(L, sizeof(TM(lact)));
    if (!m->acts) return MOE_ERR_NOMEM;
    size_t maxw = D;
    size_t ws[] = {H * Dk, Lkv + R, H * Dv, H * Dn, F, Fe * S, Fe, E, Lq};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) maxw = ws[i] > maxw ? ws[i] : maxw;
    /* two passes: count, then carve */
    for (int pass = 0; pass < 2; pass++) {
        size_t used = 0;
        char *base = m->amem;
#define TAKE(ptr, count, type)                                                                                    \
    do {                                                                                                          \
        size_t b_ = ((size_t)(count) * sizeof(type) + 63) & ~(size_t)63;                                          \
        if (pass) ptr = (type *)(void *)(base + used);                                                            \
        used += b_;                                                                                               \
    } while (0)
        for (size_t il = 0; il < L; il++) {
            TM(lact) *a = &m->acts[il];
            int moe = il >= (size_t)hp->n_layer_dense_lead;
            TAKE(a->x_in, N * D, treal);
            TAKE(a->h1, N * D, treal);
            TAKE(a->r1, N, treal);
            if (Lq) {
                TAKE(a->qa_raw, N * Lq, treal);
                TAKE(a->qa, N * Lq, treal);
                TAKE(a->rq, N, treal);
            }
            TAKE(a->q, N * H * Dk, treal);
            TAKE(a->kv, N * (Lkv + R), treal);
            TAKE(a->ckv, N * Lkv, treal);
            TAKE(a->rkv, N, treal);
            TAKE(a->kpe, N * R, treal);
            TAKE(a->qpe, N * H * R, treal);
            TAKE(a->kn, N * H * Dn, treal);
            TAKE(a->v, N * H * Dv, treal);
            TAKE(a->P, (size_t)B * H * (size_t)T * (size_t)T, treal);
            TAKE(a->o, N * H * Dv, treal);
            TAKE(a->x_mid, N * D, treal);
            TAKE(a->h2, N * D, treal);
            TAKE(a->r2, N, treal);
            if (!moe) {
                TAKE(a->fg, N * F, treal);
                TAKE(a->fu, N * F, treal);
            } else {
                TAKE(a->logit, N * E, treal);
                TAKE(a->s, N * E, treal);
                TAKE(a->sel, N * K, int32_t);
                TAKE(a->w, N * K, treal);
                TAKE(a->wz, N, treal);
                if (S) {
                    TAKE(a->sg, N * Fe * S, treal);
                    TAKE(a->su, N * Fe * S, treal);
                }
                TAKE(a->ex_off, E + 1, int32_t);
                TAKE(a->ex_asg, N * K, int32_t);
                TAKE(a->eg, N * K * Fe, treal);
                TAKE(a->eu, N * K * Fe, treal);
                TAKE(a->ey, N * K * D, treal);
            }
        }
        TAKE(m->tokens, N, int32_t);
        TAKE(m->targets, N, int32_t);
        TAKE(m->rope, (size_t)T * R, treal);
        TAKE(m->x_fin, N * D, treal);
        TAKE(m->hf, N * D, treal);
        TAKE(m->rf, N, treal);
        TAKE(m->logits, N * V, treal);
        TAKE(m->gx, N * D, treal);
        TAKE(m->gres, N * D, treal);
        TAKE(m->gh, N * D, treal);
        TAKE(m->gt0, N * maxw, treal);
        TAKE(m->gt1, N * maxw, treal);
        TAKE(m->gt2, N * maxw, treal);
        TAKE(m->gbig, N * (H * Dk + H * R + H * Dn + H * Dv + R + Lkv + Lkv + R + D), treal);
        TAKE(m->gattn, (size_t)m->n_thr * ((size_t)T + 16) + E * N * 2 + 64, treal);
#undef TAKE
        if (!pass) {
            m->amem = calloc(1, used);
            if (!m->amem) return MOE_ERR_NOMEM;
        }
    }
    m->B = B;
    m->T = T;
    m->N = (int32_t)N;
    rope_table(hp, T, m->rope);
    return MOE_OK;
}

/* ================================================================ forward */

#define PW(ly, slot) (m->params + m->tensors[(ly)->ti[slot]].off)
/* gradient of a weight, NULL when frozen */
#define GW(ly, slot) (m->tensors[(ly)->ti[slot]].frozen ? NULL : m->grads + m->tensors[(ly)->ti[slot]].off)

typedef struct {
    TM(model) *m;
    const TM(lact) *a;
    const tm_layer *ly;
    const treal *dout;
    treal *dqn, *dqp, *dkn, *dkp, *dv;
} attn_job;

static attn_args attn_args_for(const TM(model) *m, const TM(lact) *a, int b, int h) {
    const moe_hparams *hp = &m->hp;
    const int64_t H = hp->n_head, Dk = hp->n_embd_head_k, R = hp->n_rot, Dn = m->dn, Dv = hp->n_embd_head_v, T = m->T;
    attn_args x;
    x.qn = a->q + (size_t)b * T * H * Dk + h * Dk;
    x.qp = a->qpe + ((size_t)b * T * H + h) * R;
    x.kn = a->kn + ((size_t)b * T * H + h) * Dn;
    x.kp = a->kpe + (size_t)b * T * R;
    x.v = a->v + ((size_t)b * T * H + h) * Dv;
    x.ldq = H * Dk;
    x.ldqp = H * R;
    x.ldk = H * Dn;
    x.ldkp = R;
    x.ldv = H * Dv;
    x.ldo = H * Dv;
    x.T = (int)T;
    x.Dn = (int)Dn;
    x.R = (int)R;
    x.Dv = (int)Dv;
    x.scale = (treal)hp->kq_scale;
    return x;
}

static void attn_fwd_worker(void *arg, int ith, int nth) {
    attn_job *j = arg;
    TM(model) *m = j->m;
    const int64_t H = m->hp.n_head, Dv = m->hp.n_embd_head_v, T = m->T;
    int64_t items = (int64_t)m->B * H;
    for (int64_t it = items * ith / nth; it < items * (ith + 1) / nth; it++) {
        int b = (int)(it / H), h = (int)(it % H);
        attn_args x = attn_args_for(m, j->a, b, h);
        attn_fwd(&x, j->a->P + (size_t)it * T * T, j->a->o + (size_t)b * T * H * Dv + h * Dv);
    }
}

/* backward over whole sequences (heads of a sequence share k_pe's gradient) */
static void attn_bwd_worker(void *arg, int ith, int nth) {
    attn_job *j = arg;
    TM(model) *m = j->m;
    const int64_t H = m->hp.n_head, Dk = m->hp.n_embd_head_k, R = m->hp.n_rot, Dn = m->dn, Dv = m->hp.n_embd_head_v,
                  T = m->T;
    treal *dp = m->gattn + (size_t)ith * ((size_t)T + 16);
    for (int64_t b = (int64_t)m->B * ith / nth; b < (int64_t)m->B * (ith + 1) / nth; b++)
        for (int h = 0; h < H; h++) {
            attn_args x = attn_args_for(m, j->a, (int)b, h);
            attn_bwd(&x, j->a->P + ((size_t)b * H + h) * T * T, j->dout + (size_t)b * T * H * Dv + h * Dv,
                     j->dqn + (size_t)b * T * H * Dk + h * Dk, j->dqp + ((size_t)b * T * H + h) * R,
                     j->dkn + ((size_t)b * T * H + h) * Dn, j->dkp + (size_t)b * T * R,
                     j->dv + ((size_t)b * T * H + h) * Dv, dp);
        }
}

static void attention_fwd(TM(model) *m, const tm_layer *ly, TM(lact) *a) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, T = m->T, D = hp->n_embd, H = hp->n_head, Lq = hp->q_lora_rank, Lkv = hp->kv_lora_rank,
                  R = hp->n_rot, Dk = hp->n_embd_head_k, Dv = hp->n_embd_head_v, Dn = m->dn, W = Lkv + R;
    const treal eps = (treal)hp->rms_eps;
    for (int64_t n = 0; n < N; n++) a->r1[n] = rmsnorm_fwd(a->h1 + n * D, a->x_in + n * D, PW(ly, W_ATTN_NORM), D, eps);
    if (Lq > 0) {
        mm_nt(m, N, Lq, D, a->h1, D, PW(ly, W_Q_A), D, a->qa_raw, Lq, 0);
        for (int64_t n = 0; n < N; n++)
            a->rq[n] = rmsnorm_fwd(a->qa + n * Lq, a->qa_raw + n * Lq, PW(ly, W_Q_A_NORM), Lq, eps);
        mm_nt(m, N, H * Dk, Lq, a->qa, Lq, PW(ly, W_Q_B), Lq, a->q, H * Dk, 0);
    } else {
        mm_nt(m, N, H * Dk, D, a->h1, D, PW(ly, W_Q), D, a->q, H * Dk, 0);
    }
    mm_nt(m, N, W, D, a->h1, D, PW(ly, W_KV_A), D, a->kv, W, 0);
    for (int64_t n = 0; n < N; n++) {
        const treal *cs = m->rope + (n % T) * R;
        a->rkv[n] = rmsnorm_fwd(a->ckv + n * Lkv, a->kv + n * W, PW(ly, W_KV_A_NORM), Lkv, eps);
        rope_fwd(a->kpe + n * R, a->kv + n * W + Lkv, cs, (int)R);
        for (int64_t h = 0; h < H; h++) rope_fwd(a->qpe + (n * H + h) * R, a->q + n * H * Dk + h * Dk + Dn, cs, (int)R);
    }
    const treal *kb = PW(ly, W_K_B), *vb = PW(ly, W_V_B);
    for (int64_t h = 0; h < H; h++) {
        mm_nn(m, N, Dn, Lkv, a->ckv, Lkv, kb + h * Lkv * Dn, Dn, a->kn + h * Dn, H * Dn, 0);
        mm_nt(m, N, Dv, Lkv, a->ckv, Lkv, vb + h * Dv * Lkv, Lkv, a->v + h * Dv, H * Dv, 0);
    }
    attn_job j = {m, a, ly, NULL, NULL, NULL, NULL, NULL, NULL};
    if (m->pool)
        moe_pool_run(m->pool, attn_fwd_worker, &j);
    else
        attn_fwd_worker(&j, 0, 1);
    memcpy(a->x_mid, a->x_in, sizeof(treal) * (size_t)(N * D));
    mm_nt(m, N, D, H * Dv, a->o, H * Dv, PW(ly, W_ATTN_OUT), H * Dv, a->x_mid, D, 1);
}

/* SwiGLU MLP on n rows: y (+)= down·(silu(gate·x) ⊙ up·x); g, u (n, F) stored; act: (n, F) scratch. */
static void mlp_fwd(TM(model) *m, int64_t n, int64_t F, const treal *x, const treal *Wg, const treal *Wu,
                    const treal *Wd, treal *g, treal *u, treal *act, treal *y, int64_t ldy, int acc) {
    const int64_t D = m->hp.n_embd;
    mm_nt(m, n, F, D, x, D, Wg, D, g, F, 0);
    mm_nt(m, n, F, D, x, D, Wu, D, u, F, 0);
    swiglu_fwd(act, g, u, n * F);
    mm_nt(m, n, D, F, act, F, Wd, F, y, ldy, acc);
}

/* Backward of mlp_fwd given dy (n, D): dx (n, D) += ...; weight grads (NULL = frozen).
 * Scratch t1, t2: (n, F). */
static void mlp_bwd(TM(model) *m, int64_t n, int64_t F, const treal *x, const treal *g, const treal *u,
                    const treal *Wg, const treal *Wu, const treal *Wd, treal *dWg, treal *dWu, treal *dWd,
                    const treal *dy, treal *dx, treal *t1, treal *t2) {
    const int64_t D = m->hp.n_embd;
    swiglu_fwd(t1, g, u, n * F);                         /* act */
    mm_tn(m, D, F, n, dy, D, t1, F, dWd, F);             /* dWd (D, F) += dyᵀ·act */
    mm_nn(m, n, F, D, dy, D, Wd, F, t2, F, 0);           /* da = dy·Wd */
    swiglu_bwd(t1, t2, t2, g, u, n * F);                 /* t1 = dg, t2 = du */
    mm_tn(m, F, D, n, t1, F, x, D, dWg, D);
    mm_tn(m, F, D, n, t2, F, x, D, dWu, D);
    mm_nn(m, n, D, F, t1, F, Wg, D, dx, D, 1);
    mm_nn(m, n, D, F, t2, F, Wu, D, dx, D, 1);
}

static void moe_fwd(TM(model) *m, int il, const tm_layer *ly, TM(lact) *a, treal *x /* (N, D) += */) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, D = hp->n_embd, E = hp->n_expert, K = hp->n_expert_used, Fe = hp->n_ff_exp,
                  S = hp->n_expert_shared;
    if (S > 0)
        mlp_fwd(m, N, Fe * S, a->h2, PW(ly, W_GATE_SH), PW(ly, W_UP_SH), PW(ly, W_DOWN_SH), a->sg, a->su, m->gt0, x, D, 1);
    mm_nt(m, N, E, D, a->h2, D, PW(ly, W_GATE_INP), D, a->logit, E, 0);
    const treal *bias = ly->ti[W_EXP_B] >= 0 ? PW(ly, W_EXP_B) : NULL;
    treal *sigma = m->gattn; /* (E) scratch */
    for (int64_t n = 0; n < N; n++) {
        router_scores(hp->gating_func, a->logit + n * E, a->s + n * E, (int)E);
        if (!m->replay) router_select(hp, a->s + n * E, bias, a->sel + n * K, sigma);
        a->wz[n] = router_weights(hp, a->s + n * E, a->sel + n * K, a->w + n * K);
    }
    /* group assignments by expert, tokens ascending (the engine's order) */
    int32_t *off = a->ex_off;
    uint8_t *act = m->active + (size_t)il * (size_t)E;
    uint64_t *cnt = m->counts + (size_t)il * (size_t)E;
    for (int64_t e = 0; e <= E; e++) off[e] = 0;
    for (int64_t i = 0; i < N * K; i++) off[a->sel[i] + 1]++;
    for (int64_t e = 0; e < E; e++) {
        cnt[e] = (uint64_t)off[e + 1];
        act[e] = off[e + 1] > 0;
        off[e + 1] += off[e];
    }
    int32_t fill[1024];
    for (int64_t e = 0; e < E; e++) fill[e] = off[e];
    for (int64_t i = 0; i < N * K; i++) a->ex_asg[fill[a->sel[i]]++] = (int32_t)i;
    const tm_tensor *tg = &m->tensors[ly->ti[W_GATE_EXPS]], *tu = &m->tensors[ly->ti[W_UP_EXPS]],
                    *td = &m->tensors[ly->ti[W_DOWN_EXPS]];
    for (int64_t e = 0; e < E; e++) {
        int64_t n = off[e + 1] - off[e];
        if (!n) continue; /* idle expert: no work at all */
        if (m->touch_expert) m->touch_expert(m->touch_ud, il, (int)e);
        treal *xe = m->gt1;
        for (int64_t j = 0; j < n; j++)
            memcpy(xe + j * D, a->h2 + (size_t)(a->ex_asg[off[e] + j] / K) * D, sizeof(treal) * (size_t)D);
        const treal *Wg = m->params + tg->off + (size_t)e * Fe * D, *Wu = m->params + tu->off + (size_t)e * Fe * D,
                    *Wd = m->params + td->off + (size_t)e * D * Fe;
        treal *ey = a->ey + (size_t)off[e] * D;
        mlp_fwd(m, n, Fe, xe, Wg, Wu, Wd, a->eg + (size_t)off[e] * Fe, a->eu + (size_t)off[e] * Fe, m->gt0, ey, D, 0);
        for (int64_t j = 0; j < n; j++) {
            int32_t as = a->ex_asg[off[e] + j];
            axpy(x + (size_t)(as / K) * D, a->w[as], ey + j * D, D);
        }
    }
}

double TM(forward)(TM(model) *m) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, T = m->T, D = hp->n_embd, V = hp->n_vocab, E = hp->n_expert, K = hp->n_expert_used,
                  L = hp->n_layer;
    const treal eps = (treal)hp->rms_eps;
    const treal *embd = m->params + m->tensors[m->ti_embd].off;
    treal *x = L > 0 ? m->acts[0].x_in : m->x_fin;
    for (int64_t n = 0; n < N; n++) memcpy(x + n * D, embd + (size_t)m->tokens[n] * D, sizeof(treal) * (size_t)D);
    m->loss_aux = 0;
    for (int il = 0; il < L; il++) {
        const tm_layer *ly = &m->layers[il];
        TM(lact) *a = &m->acts[il];
        attention_fwd(m, ly, a);
        for (int64_t n = 0; n < N; n++) a->r2[n] = rmsnorm_fwd(a->h2 + n * D, a->x_mid + n * D, PW(ly, W_FFN_NORM), D, eps);
        treal *xo = il + 1 < L ? m->acts[il + 1].x_in : m->x_fin;
        memcpy(xo, a->x_mid, sizeof(treal) * (size_t)(N * D));
        if (ly->is_moe) {
            moe_fwd(m, il, ly, a, xo);
            if (m->aux_alpha > 0)
                for (int b = 0; b < m->B; b++)
                    m->loss_aux += aux_seq(a->s + (size_t)b * T * E, a->sel + (size_t)b * T * K, (int)T, (int)E, (int)K,
                                           m->aux_alpha, NULL, 0) / m->B;
        } else {
            mlp_fwd(m, N, hp->n_ff, a->h2, PW(ly, W_GATE), PW(ly, W_UP), PW(ly, W_DOWN), a->fg, a->fu, m->gt0, xo, D, 1);
        }
    }
    const treal *onorm = m->params + m->tensors[m->ti_out_norm].off;
    for (int64_t n = 0; n < N; n++) m->rf[n] = rmsnorm_fwd(m->hf + n * D, m->x_fin + n * D, onorm, D, eps);
    const treal *Wout = m->params + m->tensors[m->ti_out >= 0 ? m->ti_out : m->ti_embd].off;
    mm_nt(m, N, V, D, m->hf, D, Wout, D, m->logits, V, 0);
    m->loss_ce = ce_fwd_bwd(m->logits, m->targets, N, V, NULL);
    return m->loss_ce + m->loss_aux;
}

/* ================================================================ backward */

void TM(zero_grads)(TM(model) *m) {
    const int64_t E = m->hp.n_expert;
    for (int i = 0; i < m->n_tensors; i++) {
        const tm_tensor *t = &m->tensors[i];
        if (t->frozen) continue;
        if (t->kind != TM_KIND_EXPERTS) {
            memset(m->grads + t->off, 0, sizeof(treal) * t->numel);
            continue;
        }
        size_t per = t->numel / (size_t)E;
        for (int64_t e = 0; e < E; e++)
            if (m->active[(size_t)t->layer * (size_t)E + (size_t)e])
                memset(m->grads + t->off + (size_t)e * per, 0, sizeof(treal) * per);
    }
}

static void attention_bwd(TM(model) *m, const tm_layer *ly, const TM(lact) *a, treal *dx /* (N, D) in/out */) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, T = m->T, D = hp->n_embd, H = hp->n_head, Lq = hp->q_lora_rank, Lkv = hp->kv_lora_rank,
                  R = hp->n_rot, Dk = hp->n_embd_head_k, Dv = hp->n_embd_head_v, Dn = m->dn, W = Lkv + R;
    treal *dq = m->gbig, *dqp = dq + N * H * Dk, *dkn = dqp + N * H * R, *dv = dkn + N * H * Dn, *dkp = dv + N * H * Dv,
          *dckv = dkp + N * R, *dkv = dckv + N * Lkv, *dO = dkv + N * W;
    (void)dO;
    treal *d_o = m->gt0; /* (N, H·Dv) */
    /* a = o·Woutᵀ: do = dx·Wout, dWout += dxᵀ·o */
    mm_nn(m, N, H * Dv, D, dx, D, PW(ly, W_ATTN_OUT), H * Dv, d_o, H * Dv, 0);
    mm_tn(m, D, H * Dv, N, dx, D, a->o, H * Dv, GW(ly, W_ATTN_OUT), H * Dv);
    memset(dq, 0, sizeof(treal) * (size_t)(N * (H * Dk + H * R + H * Dn + H * Dv + R)));
    attn_job j = {m, a, ly, d_o, dq, dqp, dkn, dkp, dv};
    if (m->pool)
        moe_pool_run(m->pool, attn_bwd_worker, &j);
    else
        attn_bwd_worker(&j, 0, 1);
    for (int64_t n = 0; n < N; n++) {
        const treal *cs = m->rope + (n % T) * R;
        for (int64_t h = 0; h < H; h++) rope_bwd(dq + n * H * Dk + h * Dk + Dn, dqp + (n * H + h) * R, cs, (int)R);
    }
    /* k_nope_h = ckv·kb_h, v_h = ckv·vb_hᵀ */
    const treal *kb = PW(ly, W_K_B), *vb = PW(ly, W_V_B);
    treal *dkb = GW(ly, W_K_B), *dvb = GW(ly, W_V_B);
    for (int64_t h = 0; h < H; h++) {
        mm_nt(m, N, Lkv, Dn, dkn + h * Dn, H * Dn, kb + h * Lkv * Dn, Dn, dckv, Lkv, h > 0);
        mm_tn(m, Lkv, Dn, N, a->ckv, Lkv, dkn + h * Dn, H * Dn, dkb ? dkb + h * Lkv * Dn : NULL, Dn);
        mm_nn(m, N, Lkv, Dv, dv + h * Dv, H * Dv, vb + h * Dv * Lkv, Lkv, dckv, Lkv, 1);
        mm_tn(m, Dv, Lkv, N, dv + h * Dv, H * Dv, a->ckv, Lkv, dvb ? dvb + h * Dv * Lkv : NULL, Lkv);
    }
    memset(dkv, 0, sizeof(treal) * (size_t)(N * W));
    treal *dkvn = GW(ly, W_KV_A_NORM);
    for (int64_t n = 0; n < N; n++) {
        rmsnorm_bwd(dkv + n * W, dkvn, dckv + n * Lkv, a->kv + n * W, PW(ly, W_KV_A_NORM), a->rkv[n], Lkv);
        rope_bwd(dkv + n * W + Lkv, dkp + n * R, m->rope + (n % T) * R, (int)R);
    }
    treal *dh = m->gh;
    mm_nn(m, N, D, W, dkv, W, PW(ly, W_KV_A), D, dh, D, 0);
    mm_tn(m, W, D, N, dkv, W, a->h1, D, GW(ly, W_KV_A), D);
    if (Lq > 0) {
        treal *dqa = m->gt1, *dqar = m->gt2; /* (N, Lq) */
        mm_nn(m, N, Lq, H * Dk, dq, H * Dk, PW(ly, W_Q_B), Lq, dqa, Lq, 0);
        mm_tn(m, H * Dk, Lq, N, dq, H * Dk, a->qa, Lq, GW(ly, W_Q_B), Lq);
        memset(dqar, 0, sizeof(treal) * (size_t)(N * Lq));
        treal *dqn = GW(ly, W_Q_A_NORM);
        for (int64_t n = 0; n < N; n++)
            rmsnorm_bwd(dqar + n * Lq, dqn, dqa + n * Lq, a->qa_raw + n * Lq, PW(ly, W_Q_A_NORM), a->rq[n], Lq);
        mm_nn(m, N, D, Lq, dqar, Lq, PW(ly, W_Q_A), D, dh, D, 1);
        mm_tn(m, Lq, D, N, dqar, Lq, a->h1, D, GW(ly, W_Q_A), D);
    } else {
        mm_nn(m, N, D, H * Dk, dq, H * Dk, PW(ly, W_Q), D, dh, D, 1);
        mm_tn(m, H * Dk, D, N, dq, H * Dk, a->h1, D, GW(ly, W_Q), D);
    }
    treal *dan = GW(ly, W_ATTN_NORM);
    for (int64_t n = 0; n < N; n++)
        rmsnorm_bwd(dx + n * D, dan, dh + n * D, a->x_in + n * D, PW(ly, W_ATTN_NORM), a->r1[n], D);
}

static void moe_bwd(TM(model) *m, int il, const tm_layer *ly, const TM(lact) *a, const treal *dx, treal *dh) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, T = m->T, D = hp->n_embd, E = hp->n_expert, K = hp->n_expert_used, Fe = hp->n_ff_exp,
                  S = hp->n_expert_shared;
    if (S > 0)
        mlp_bwd(m, N, Fe * S, a->h2, a->sg, a->su, PW(ly, W_GATE_SH), PW(ly, W_UP_SH), PW(ly, W_DOWN_SH),
                GW(ly, W_GATE_SH), GW(ly, W_UP_SH), GW(ly, W_DOWN_SH), dx, dh, m->gt0, m->gt1);
    treal *dw = m->gattn, *ds = dw + N * K; /* (N, K), (N, E) */
    const tm_tensor *tg = &m->tensors[ly->ti[W_GATE_EXPS]], *tu = &m->tensors[ly->ti[W_UP_EXPS]],
                    *td = &m->tensors[ly->ti[W_DOWN_EXPS]];
    const int32_t *off = a->ex_off;
    for (int64_t e = 0; e < E; e++) {
        int64_t n = off[e + 1] - off[e];
        if (!n) continue;
        const int32_t *asg = a->ex_asg + off[e];
        const treal *ey = a->ey + (size_t)off[e] * D;
        treal *xe = m->gx, *dy = m->gt2, *dxe = m->gbig; /* (n, D) each */
        for (int64_t j = 0; j < n; j++) {
            int64_t t = asg[j] / K;
            memcpy(xe + j * D, a->h2 + t * D, sizeof(treal) * (size_t)D);
            dw[asg[j]] = dot(dx + t * D, ey + j * D, D);
            for (int64_t i = 0; i < D; i++) dy[j * D + i] = a->w[asg[j]] * dx[t * D + i];
        }
        memset(dxe, 0, sizeof(treal) * (size_t)(n * D));
        size_t eo = (size_t)e * (size_t)Fe * (size_t)D;
        mlp_bwd(m, n, Fe, xe, a->eg + (size_t)off[e] * Fe, a->eu + (size_t)off[e] * Fe, m->params + tg->off + eo,
                m->params + tu->off + eo, m->params + td->off + eo, tg->frozen ? NULL : m->grads + tg->off + eo,
                tu->frozen ? NULL : m->grads + tu->off + eo, td->frozen ? NULL : m->grads + td->off + eo, dy, dxe,
                m->gt0, m->gt1);
        for (int64_t j = 0; j < n; j++) axpy(dh + (size_t)(asg[j] / K) * D, 1, dxe + j * D, D);
    }
    /* router: weights → scores → logits (+ the auxiliary loss) */
    memset(ds, 0, sizeof(treal) * (size_t)(N * E));
    for (int64_t n = 0; n < N; n++) router_weights_bwd(hp, a->s + n * E, a->sel + n * K, a->wz[n], dw + n * K, ds + n * E);
    if (m->aux_alpha > 0)
        for (int b = 0; b < m->B; b++)
            aux_seq(a->s + (size_t)b * T * E, a->sel + (size_t)b * T * K, (int)T, (int)E, (int)K, m->aux_alpha,
                    ds + (size_t)b * T * E, 1.0 / m->B);
    treal *dl = m->gt0; /* (N, E) */
    for (int64_t n = 0; n < N; n++) router_scores_bwd(hp->gating_func, a->s + n * E, ds + n * E, dl + n * E, (int)E);
    mm_nn(m, N, D, E, dl, E, PW(ly, W_GATE_INP), D, dh, D, 1);
    mm_tn(m, E, D, N, dl, E, a->h2, D, GW(ly, W_GATE_INP), D);
    (void)il;
}

void TM(backward)(TM(model) *m) {
    const moe_hparams *hp = &m->hp;
    const int64_t N = m->N, D = hp->n_embd, V = hp->n_vocab, L = hp->n_layer;
    /* head: dlogits over the logits buffer */
    ce_fwd_bwd(m->logits, m->targets, N, V, m->logits);
    const tm_tensor *to = &m->tensors[m->ti_out >= 0 ? m->ti_out : m->ti_embd];
    treal *dh = m->gh, *dx = m->gx;
    mm_nn(m, N, D, V, m->logits, V, m->params + to->off, D, dh, D, 0);
    mm_tn(m, V, D, N, m->logits, V, m->hf, D, to->frozen ? NULL : m->grads + to->off, D);
    const tm_tensor *tn = &m->tensors[m->ti_out_norm];
    treal *gres = m->gres; /* the running gradient of the residual stream */
    (void)dx;
    memset(gres, 0, sizeof(treal) * (size_t)(N * D));
    for (int64_t n = 0; n < N; n++)
        rmsnorm_bwd(gres + n * D, tn->frozen ? NULL : m->grads + tn->off, dh + n * D, m->x_fin + n * D,
                    m->params + tn->off, m->rf[n], D);
    for (int il = (int)L - 1; il >= 0; il--) {
        const tm_layer *ly = &m->layers[il];
        const TM(lact) *a = &m->acts[il];
        memset(dh, 0, sizeof(treal) * (size_t)(N * D));
        if (ly->is_moe)
            moe_bwd(m, il, ly, a, gres, dh);
        else
            mlp_bwd(m, N, hp->n_ff, a->h2, a->fg, a->fu, PW(ly, W_GATE), PW(ly, W_UP), PW(ly, W_DOWN), GW(ly, W_GATE),
                    GW(ly, W_UP), GW(ly, W_DOWN), gres, dh, m->gt0, m->gt1);
        treal *dfn = GW(ly, W_FFN_NORM);
        for (int64_t n = 0; n < N; n++)
            rmsnorm_bwd(gres + n * D, dfn, dh + n * D, a->x_mid + n * D, PW(ly, W_FFN_NORM), a->r2[n], D);
        attention_bwd(m, ly, a, gres);
    }
    const tm_tensor *te = &m->tensors[m->ti_embd];
    if (!te->frozen)
        for (int64_t n = 0; n < N; n++) axpy(m->grads + te->off + (size_t)m->tokens[n] * D, 1, gres + n * D, D);
}
