/* dtype: float conversions and block (de)quantization against independent computations.
 *
 * - F16 -> F32 over all 65536 patterns, against the value built in double from the fields.
 * - F32 -> F16 round-to-nearest-even against a search over the (verified) F16 values with
 *   distances in double: every F16 value, every midpoint (ties), midpoints +- 1 float ulp,
 *   subnormal and overflow boundaries, and 2^21 pseudo-random bit patterns.
 * - BF16 both ways per spec gguf.md §8 (all 65536 patterns; RNE against a double search).
 * - Q8_0 and Q4_0 quantization against small implementations of spec §9.1 / §9.2 written here.
 * - Dequantization of hand-built Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K blocks against values
 *   computed element by element from the spec formulas (powers-of-two scales: exact, tolerance 0).
 * Tolerance everywhere: 0 (bit-exact); the largest difference is printed. */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include "moe/dtype.h"
#include "moe/status.h"
#include "testutil.h"

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng >> 32);
}

/* value of an F16 pattern, built in double from its fields (independent of the code) */
static double f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16_to_f32(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = moe_f16_to_f32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        uint32_t u = f2u(f);
        if (e == 31) {
            /* inf or NaN with the payload moved up unchanged */
            uint32_t want = ((h & 0x8000u) << 16) | 0x7f800000u | ((uint32_t)m << 13);
            if (u != want) bad++;
        } else {
            double v = f16_value((uint16_t)h);
            if ((double)f != v || !!signbit(f) != (int)(h >> 15)) bad++;
        }
    }
    CHECK(bad == 0, "F16->F32 exact over all 65536 patterns (%d wrong)", bad);
    CHECK(moe_f16_to_f32(0x0001) == ldexpf(1, -24) && moe_f16_to_f32(0x03ff) == ldexpf(1023, -24), "subnormals");
    CHECK(moe_f16_to_f32(0x7bff) == 65504.0f && isinf(moe_f16_to_f32(0x7c00)) && isnan(moe_f16_to_f32(0x7e00)),
          "max, inf, nan");
    CHECK(signbit(moe_f16_to_f32(0x8000)) && moe_f16_to_f32(0x8000) == 0.0f, "-0");
}

/* Round to nearest even by search: the largest positive F16 pattern whose value <= |x|, then
 * the nearer of it and the next one (0x7c00 = inf stands for 65536, the next value on the
 * F16 grid, which is exactly how IEEE overflow rounding behaves); ties pick the even pattern. */
static uint16_t f16_rne_ref(float x) {
    uint32_t u = f2u(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    if (isnan(x)) return sign | 0x7e00;
    double a = fabs((double)x);
    if (isinf(x) || a >= 65536.0) return sign | 0x7c00;
    int lo = 0, hi = 0x7c00; /* invariant: val(lo) <= a < val(hi) (val(0x7c00) = 65536) */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (f16_value((uint16_t)mid) <= a) lo = mid;
        else hi = mid;
    }
    double vlo = f16_value((uint16_t)lo), vhi = hi == 0x7c00 ? 65536.0 : f16_value((uint16_t)hi);
    double dl = a - vlo, dh = vhi - a;
    int r = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
    return sign | (uint16_t)r;
}

static int n_f16_checked;
static int check_f16(float x) {
    n_f16_checked++;
    uint16_t got = moe_f32_to_f16(x), want = f16_rne_ref(x);
    if (got != want) {
        static int shown;
        if (shown++ < 5) fprintf(stderr, "  f32->f16(%a) = 0x%04x, expected 0x%04x\n", (double)x, got, want);
        return 1;
    }
    return 0;
}

static void test_f32_to_f16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) {
        double v = f16_value((uint16_t)h), next = h + 1 < 0x7c00 ? f16_value((uint16_t)(h + 1)) : 65536.0;
        float x = (float)v, mid = (float)((v + next) / 2); /* midpoints need 12 bits: exact in float */
        bad += check_f16(x) + check_f16(-x);
        bad += check_f16(mid) + check_f16(-mid);
        bad += check_f16(nextafterf(mid, 0)) + check_f16(nextafterf(mid, INFINITY));
    }
    const float edges[] = {0.0f, ldexpf(1, -25), nextafterf(ldexpf(1, -25), 1), nextafterf(ldexpf(1, -25), 0),
                           ldexpf(3, -26), ldexpf(1, -24), ldexpf(1, -14), nextafterf(ldexpf(1, -14), 0),
                           ldexpf(2047, -25), ldexpf(1, -149), FLT_MIN, 65504.0f, 65519.996f, 65520.0f,
                           nextafterf(65520.0f, 0), 65536.0f, 1e10f, 3.4e38f, INFINITY, 1.0f / 3.0f, 0.1f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) bad += check_f16(edges[i]) + check_f16(-edges[i]);
    for (int i = 0; i < (1 << 21); i++) {
        uint32_t u = rnd();
        float x = u2f(u);
        if (isnan(x)) continue;
        bad += check_f16(x);
        /* concentrate on the F16 range too */
        bad += check_f16(u2f((u & 0x80ffffffu) | ((uint32_t)(100 + u % 45) << 23)));
    }
    CHECK(bad == 0, "F32->F16 round-to-nearest-even over %d values (%d wrong)", n_f16_checked, bad);
    CHECK(moe_f32_to_f16(ldexpf(1, -25)) == 0x0000, "2^-25 is a tie: rounds to even 0");
    CHECK(moe_f32_to_f16(ldexpf(3, -25)) == 0x0002, "3*2^-25 is a tie: rounds to even 2");
    CHECK(moe_f32_to_f16(65520.0f) == 0x7c00 && moe_f32_to_f16(nextafterf(65520.0f, 0)) == 0x7bff, "overflow edge");
    CHECK(moe_f32_to_f16(-NAN) == 0xfe00 && moe_f32_to_f16(NAN) == 0x7e00, "NaN -> sign | 0x7e00");
    CHECK(moe_f32_to_f16(u2f(0x7f800001u)) == 0x7e00, "signalling NaN quieted");
    printf("F32->F16: %d values, 0 ulp tolerance, largest difference %d patterns\n", n_f16_checked, bad ? 1 : 0);
}

static uint16_t bf16_rne_ref(float x) {
    uint32_t u = f2u(x);
    if (isnan(x)) return (uint16_t)((u >> 16) | 0x40);
    if (isinf(x)) return (uint16_t)(u >> 16);
    uint32_t lo = u & 0xffff0000u, hi = lo + 0x10000u;
    double a = fabs((double)x), vl = fabs((double)u2f(lo));
    /* the pattern above the largest finite BF16 is inf, whose grid value is 2^128 */
    double vh = (hi & 0x7fffffffu) == 0x7f800000u ? ldexp(1, 128) : fabs((double)u2f(hi));
    double dl = a - vl, dh = vh - a;
    uint32_t r = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1 ? hi : lo);
    return (uint16_t)(r >> 16);
}

static void test_bf16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = moe_bf16_to_f32((uint16_t)h);
        if (f2u(f) != h << 16) bad++;
        /* exact values convert back unchanged (NaN: quiet bit forced) */
        uint16_t back = moe_f32_to_bf16(f);
        if (!isnan(f) && back != h) bad++;
        if (isnan(f) && back != (h | 0x40)) bad++;
        /* ties between h and h+1 */
        if (!isnan(f) && !isinf(f) && (h & 0x7fff) != 0x7f7f) {
            float mid = u2f((h << 16) | 0x8000u);
            if (moe_f32_to_bf16(mid) != bf16_rne_ref(mid)) bad++;
        }
    }
    for (int i = 0; i < (1 << 20); i++) {
        float x = u2f(rnd());
        if (moe_f32_to_bf16(x) != bf16_rne_ref(x)) bad++;
    }
    CHECK(bad == 0, "BF16 both ways: all patterns, ties and 2^20 random values (%d wrong)", bad);
    CHECK(moe_f32_to_bf16(u2f(0x7f7fffffu)) == 0x7f80, "FLT_MAX rounds to inf");
    CHECK(moe_f32_to_bf16(u2f(0x3f808000u)) == 0x3f80 && moe_f32_to_bf16(u2f(0x3f818000u)) == 0x3f82, "ties to even");
    CHECK(moe_f32_to_bf16(u2f(0x7f800001u)) == 0x7fc0, "NaN quieted");
}

/* ---- Q8_0 / Q4_0 quantization: small independent implementations of spec §9.1, §9.2 ---- */

/* in double, where v + 0.5 is exact for every float v (floorf(v + 0.5f) would round first) */
static double round_half_away(float v) { return v < 0 ? -floor(-(double)v + 0.5) : floor((double)v + 0.5); }

static void q8_0_ref(const float *x, uint8_t *out) {
    float amax = 0;
    for (int j = 0; j < 32; j++) {
        float a = x[j] < 0 ? -x[j] : x[j];
        if (a > amax) amax = a;
    }
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t h = f16_rne_ref(d);
    out[0] = (uint8_t)h;
    out[1] = (uint8_t)(h >> 8);
    for (int j = 0; j < 32; j++) {
        volatile float p = x[j] * id; /* binary32 product, then round half away from zero */
        out[2 + j] = (uint8_t)(int8_t)(int)round_half_away(p);
    }
}

static void q4_0_ref(const float *x, uint8_t *out) {
    int imax = 0;
    for (int j = 1; j < 32; j++)
        if (fabsf(x[j]) > fabsf(x[imax])) imax = j; /* strict: first occurrence wins */
    float d = x[imax] / -8.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t h = f16_rne_ref(d);
    out[0] = (uint8_t)h;
    out[1] = (uint8_t)(h >> 8);
    int q[32];
    for (int j = 0; j < 32; j++) {
        volatile float s = x[j] * id;
        volatile float t = s + 8.5f;
        int v = (int)t; /* C truncation toward zero */
        q[j] = v > 15 ? 15 : v;
    }
    for (int j = 0; j < 16; j++) out[2 + j] = (uint8_t)(q[j] | (q[j + 16] << 4));
}

static void fill_block(float *x, int kind) {
    for (int j = 0; j < 32; j++) {
        switch (kind % 6) {
        case 0: x[j] = (float)(int)(rnd() % 2001 - 1000) / 37.0f; break;
        case 1: x[j] = u2f((rnd() & 0x807fffffu) | (uint32_t)(120 + rnd() % 14) << 23); break;
        case 2: x[j] = 0.0f; break; /* all zero: d = 0 */
        case 3: x[j] = (float)j - 16.0f; break;
        case 4: x[j] = (j == 5 || j == 9) ? 4.0f : 1.0f; break; /* ties on the largest magnitude */
        default: x[j] = (float)((int)(rnd() % 255) - 127) * 0.0625f + (j % 2 ? 0.5f : -0.5f) * 0.0625f; break;
        }
    }
    if (kind % 6 == 4 && kind % 12 >= 6) x[9] = -4.0f; /* same magnitude, other sign: first wins */
}

static void test_quant(void) {
    float x[32 * 4], y[32 * 4];
    uint8_t got[34 * 4], want[34 * 4];
    int bad8 = 0, bad4 = 0, n = 0;
    double maxerr8 = 0, maxerr4 = 0;
    for (int it = 0; it < 20000; it++) {
        for (int b = 0; b < 4; b++) fill_block(x + 32 * b, it + b);
        n += 4;
        CHECK(moe_dtype_quant_row(MOE_DTYPE_Q8_0, x, got, 128) == 0, "q8_0 quant");
        for (int b = 0; b < 4; b++) q8_0_ref(x + 32 * b, want + 34 * b);
        bad8 += memcmp(got, want, 34 * 4) != 0;
        moe_dtype_dequant_row(MOE_DTYPE_Q8_0, got, y, 128);
        for (int b = 0; b < 4; b++) {
            float d = moe_f16_to_f32((uint16_t)(got[34 * b] | got[34 * b + 1] << 8));
            for (int j = 0; j < 32; j++) {
                double e = fabs((double)y[32 * b + j] - x[32 * b + j]) / (d > 0 ? d : 1);
                if (e > maxerr8) maxerr8 = e;
            }
        }
        CHECK(moe_dtype_quant_row(MOE_DTYPE_Q4_0, x, got, 128) == 0, "q4_0 quant");
        for (int b = 0; b < 4; b++) q4_0_ref(x + 32 * b, want + 18 * b);
        bad4 += memcmp(got, want, 18 * 4) != 0;
        moe_dtype_dequant_row(MOE_DTYPE_Q4_0, got, y, 128);
        for (int b = 0; b < 4; b++) {
            float d = fabsf(moe_f16_to_f32((uint16_t)(got[18 * b] | got[18 * b + 1] << 8)));
            for (int j = 0; j < 32; j++) {
                double e = fabs((double)y[32 * b + j] - x[32 * b + j]) / (d > 0 ? d : 1);
                if (e > maxerr4) maxerr4 = e;
            }
        }
    }
    CHECK(bad8 == 0, "Q8_0 bit-identical to spec §9.1 over %d blocks (%d rows differ)", n, bad8);
    CHECK(bad4 == 0, "Q4_0 bit-identical to spec §9.2 over %d blocks (%d rows differ)", n, bad4);
    /* q is chosen with the unrounded d but read back with F16(d): |err| <= d/2 + 127 * d * 2^-11 */
    printf("Q8_0: %d blocks bit-exact; round trip max |err|/d = %.4f (bound 0.5 + 127/2048)\n", n, maxerr8);
    printf("Q4_0: %d blocks bit-exact; round trip max |err|/d = %.4f (the top code is clamped: bound 1)\n", n,
           maxerr4);
    CHECK(maxerr4 < 1.01, "Q4_0 round trip within one step (%.4f)", maxerr4);
    CHECK(maxerr8 <= 0.5 + 127.0 / 2048 + 1e-6, "Q8_0 round trip within its bound (%.4f)", maxerr8);

    /* a hand-checked Q4_0 block: x = j - 16 -> max = -16 (j=0), d = 2, id = 0.5,
     * q = (int)(x/2 + 8.5) = floor(j/2 + 0.5) for j<16 ... clamped at 15 */
    for (int j = 0; j < 32; j++) x[j] = (float)j - 16.0f;
    moe_dtype_quant_row(MOE_DTYPE_Q4_0, x, got, 32);
    CHECK(got[0] == 0x00 && got[1] == 0x40, "Q4_0 d = F16(2.0) = 0x4000 (got 0x%02x%02x)", got[1], got[0]);
    int okq = 1;
    for (int j = 0; j < 16; j++) {
        int lo = (int)(((float)j - 16) * 0.5f + 8.5f), hi = (int)(((float)j) * 0.5f + 8.5f);
        if (hi > 15) hi = 15;
        okq &= got[2 + j] == (uint8_t)(lo | hi << 4);
    }
    CHECK(okq && got[2] == 0x80 && got[17] == 0xf8, "Q4_0 nibbles (qs[0]=0x%02x qs[15]=0x%02x)", got[2], got[17]);
    CHECK(moe_dtype_quant_row(MOE_DTYPE_Q4_0, x, got, 31) == MOE_ERR_INVAL, "Q4_0 needs whole blocks");
    CHECK(moe_dtype_quant_row(MOE_DTYPE_Q3_K, x, got, 256) == MOE_ERR_UNSUPPORTED, "Q3_K has no quantizer: unsupported");
}

/* ---- dequantization of hand-built blocks ---- */

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static int cmp_rows(const char *what, const float *got, const float *want, int n) {
    double maxd = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (d > maxd || got[i] != want[i]) maxd = d > maxd ? d : (d == 0 ? 1 : d);
    }
    printf("%-5s dequant: %d values, max |diff| = %g (tolerance 0)\n", what, n, maxd);
    return maxd == 0;
}

/* F16 patterns of exact small powers of two */
#define H_0_25 0x3400
#define H_0_5 0x3800
#define H_2 0x4000
#define H_NEG_0_125 0xb000

static void test_dequant_32(void) {
    uint8_t b[24];
    float got[32], want[32];
    const float d = 0.5f, m = -0.125f;
    for (int i = 0; i < 24; i++) b[i] = (uint8_t)rnd();
    /* Q4_0: element i in qs[i % 16], low nibble for i < 16 */
    put16(b, H_0_5);
    for (int i = 0; i < 32; i++) {
        int q = i < 16 ? (b[2 + i] & 15) : (b[2 + i - 16] >> 4);
        want[i] = (float)(q - 8) * d;
    }
    moe_dtype_dequant_row(MOE_DTYPE_Q4_0, b, got, 32);
    CHECK(cmp_rows("q4_0", got, want, 32), "Q4_0");
    /* Q4_1: d, m, qs */
    put16(b, H_0_5);
    put16(b + 2, H_NEG_0_125);
    for (int i = 0; i < 32; i++) {
        int q = i < 16 ? (b[4 + i] & 15) : (b[4 + i - 16] >> 4);
        want[i] = (float)q * d + m;
    }
    moe_dtype_dequant_row(MOE_DTYPE_Q4_1, b, got, 32);
    CHECK(cmp_rows("q4_1", got, want, 32), "Q4_1");
    /* Q5_0: d, qh (LE u32: bit i is element i's fifth bit), qs */
    put16(b, H_0_5);
    uint32_t h = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)b[4] << 16 | (uint32_t)b[5] << 24;
    for (int i = 0; i < 32; i++) {
        int q = (i < 16 ? (b[6 + i] & 15) : (b[6 + i - 16] >> 4)) + (int)((h >> i) & 1) * 16;
        want[i] = (float)(q - 16) * d;
    }
    moe_dtype_dequant_row(MOE_DTYPE_Q5_0, b, got, 32);
    CHECK(cmp_rows("q5_0", got, want, 32), "Q5_0");
    /* Q5_1: d, m, qh, qs */
    put16(b, H_0_5);
    put16(b + 2, H_NEG_0_125);
    h = (uint32_t)b[4] | (uint32_t)b[5] << 8 | (uint32_t)b[6] << 16 | (uint32_t)b[7] << 24;
    for (int i = 0; i < 32; i++) {
        int q = (i < 16 ? (b[8 + i] & 15) : (b[8 + i - 16] >> 4)) + (int)((h >> i) & 1) * 16;
        want[i] = (float)q * d + m;
    }
    moe_dtype_dequant_row(MOE_DTYPE_Q5_1, b, got, 32);
    CHECK(cmp_rows("q5_1", got, want, 32), "Q5_1");
    /* a fixed Q4_0 block worked by hand: d = 2, qs[0] = 0x80 -> x[0] = (0-8)*2 = -16, x[16] = (8-8)*2 = 0 */
    memset(b, 0x88, sizeof b);
    put16(b, H_2);
    b[2] = 0x80;
    b[3] = 0xf1;
    moe_dtype_dequant_row(MOE_DTYPE_Q4_0, b, got, 32);
    CHECK(got[0] == -16 && got[16] == 0 && got[1] == -14 && got[17] == 14 && got[2] == 0, "Q4_0 by hand");
}

/* pack 6-bit scales/mins as spec §9.6 reads them (the inverse of the unpacking) */
static void pack_k_scales(const int *sc, const int *mn, uint8_t *q) {
    memset(q, 0, 12);
    for (int s = 0; s < 4; s++) {
        q[s] = (uint8_t)((sc[s] & 63) | ((sc[s + 4] >> 4) << 6));
        q[s + 4] = (uint8_t)((mn[s] & 63) | ((mn[s + 4] >> 4) << 6));
        q[s + 8] = (uint8_t)((sc[s + 4] & 15) | ((mn[s + 4] & 15) << 4));
    }
}

static void test_dequant_k(void) {
    static uint8_t b[2 * 210];
    float got[512], want[512];
    int sc[8], mn[8];
    for (int rep = 0; rep < 2; rep++) {
        /* Q4_K and Q5_K: d = 0.25, dmin = 0.5 (exact products) */
        for (int five = 0; five < 2; five++) {
            int bb = five ? 176 : 144;
            for (int k = 0; k < 2; k++) {
                uint8_t *p = b + k * bb;
                for (int i = 0; i < bb; i++) p[i] = (uint8_t)rnd();
                for (int s = 0; s < 8; s++) {
                    sc[s] = (int)(rnd() % 64);
                    mn[s] = (int)(rnd() % 64);
                }
                if (rep == 1) sc[7] = mn[7] = 63; /* all six bits */
                put16(p, H_0_25);
                put16(p + 2, H_0_5);
                pack_k_scales(sc, mn, p + 4);
                const uint8_t *qh = p + 16, *qs = p + (five ? 48 : 16);
                for (int i = 0; i < 256; i++) {
                    int g = i / 64, l = i % 64, upper = l >= 32, ll = l % 32, s = 2 * g + upper;
                    int q = upper ? qs[32 * g + ll] >> 4 : qs[32 * g + ll] & 15;
                    if (five) q += ((qh[ll] >> (2 * g + upper)) & 1) * 16;
                    want[256 * k + i] = 0.25f * (float)sc[s] * (float)q - 0.5f * (float)mn[s];
                }
            }
            moe_dtype_dequant_row(five ? MOE_DTYPE_Q5_K : MOE_DTYPE_Q4_K, b, got, 512);
            CHECK(cmp_rows(five ? "q5_k" : "q4_k", got, want, 512), "%s", five ? "Q5_K" : "Q4_K");
        }
        /* Q6_K: ql[128], qh[64], int8 scales[16], d = 0.5 at the end */
        for (int k = 0; k < 2; k++) {
            uint8_t *p = b + k * 210;
            for (int i = 0; i < 210; i++) p[i] = (uint8_t)rnd();
            if (rep == 1) p[192] = 0x80; /* scale -128 */
            put16(p + 208, H_0_5);
            for (int i = 0; i < 256; i++) {
                int n = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
                const uint8_t *ql = p + 64 * n, *qh = p + 128 + 32 * n;
                const int8_t *scl = (const int8_t *)(p + 192 + 8 * n);
                int lowsrc = (quarter & 1) ? ql[l + 32] : ql[l];
                int low = quarter >= 2 ? lowsrc >> 4 : lowsrc & 15;
                int high = (qh[l] >> (2 * quarter)) & 3;
                int q = (low | high << 4) - 32;
                want[256 * k + i] = 0.5f * (float)scl[l / 16 + 2 * quarter] * (float)q;
            }
        }
        moe_dtype_dequant_row(MOE_DTYPE_Q6_K, b, got, 512);
        CHECK(cmp_rows("q6_k", got, want, 512), "Q6_K");
    }
}

static void test_table(void) {
    CHECK(moe_dtype_block_size(MOE_DTYPE_Q8_0) == 32 && moe_dtype_block_bytes(MOE_DTYPE_Q8_0) == 34, "q8_0 size");
    CHECK(moe_dtype_block_size(MOE_DTYPE_Q6_K) == 256 && moe_dtype_block_bytes(MOE_DTYPE_Q6_K) == 210, "q6_k size");
    CHECK(moe_dtype_block_bytes(MOE_DTYPE_Q8_1) == 36, "q8_1 is 36 bytes (the C struct)");
    const int removed[] = {4, 5, 31, 32, 33, 36, 37, 38, 43, -1, 1000};
    for (size_t i = 0; i < sizeof removed / sizeof removed[0]; i++)
        CHECK(moe_dtype_block_size(removed[i]) == 0 && moe_dtype_name(removed[i]) == NULL, "id %d invalid", removed[i]);
    CHECK(moe_dtype_from_name("Q8_0") == MOE_DTYPE_Q8_0 && moe_dtype_from_name("bf16") == MOE_DTYPE_BF16 &&
              moe_dtype_from_name("nope") == -1, "names");
    CHECK(moe_dtype_row_bytes(MOE_DTYPE_Q4_0, 64) == 36 && moe_dtype_row_bytes(MOE_DTYPE_Q4_0, 33) == 0, "row bytes");
    float f[4] = {1, 2, 3, 4};
    CHECK(moe_dtype_dequant_row(MOE_DTYPE_Q2_K, f, f, 0) == MOE_ERR_UNSUPPORTED, "q2_k dequant unsupported");
}

int main(void) {
    test_table();
    test_f16_to_f32();
    test_f32_to_f16();
    test_bf16();
    test_quant();
    test_dequant_32();
    test_dequant_k();
    return test_done();
}
