/* moekit tok: pre-tokenizer (spec deepseek2.md §5.3, §5.4).
 *
 * llama.cpp splits text with std::regex: each regex of the list is applied in order to every
 * current piece, and both matches and the gaps between them become pieces ("isolated"). The
 * regexes of the supported pre-tokenizers are written here as hand-made matchers over code
 * points: rx_*(c, i, e) returns the end of the ECMAScript match starting at code point i of
 * the piece [.., e) (alternatives tried in order, greedy quantifiers with backtracking worked
 * out by hand), or i if there is none; split() scans positions left to right like
 * std::regex_iterator. All matchers are linear in the piece length.
 *
 * Code points are classified once (moe_pretok_flags) into CF_* bits, mirroring how llama.cpp
 * feeds its two regex engines: non-ASCII whitespace (the fixed set of §5.4) counts as VT, i.e.
 * \s and nothing else; other non-ASCII code points carry their general category (utf8proc,
 * Unicode 15.0, plus the three additions of Unicode 15.1 that llama.cpp's tables have).
 *
 * Lenient decoding (§5.3): a byte that cannot start a sequence, a lead byte with missing or
 * bad continuation bytes, a byte >= 0xF8, or a 4-byte form above U+10FFFF gives U+FFFD and the
 * decoder moves on by one byte. Overlong forms and surrogates are decoded, not rejected. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok/tok_impl.h"

static int is_uws(uint32_t cp) {
    switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
        return 1;
    default:
        return cp >= 0x2000 && cp <= 0x200A;
    }
}

static uint16_t ascii_flags(uint32_t c) {
    uint16_t f = 0;
    if ((c >= 9 && c <= 13) || c == 32) f |= CF_WS;
    if (c == 32) f |= CF_SPACE;
    if (c == 13 || c == 10) f |= CF_CRLF;
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')) f |= CF_L | CF_ALPHA;
    if (c >= '0' && c <= '9') f |= CF_N | CF_DIGIT;
    if (c >= 0x21 && c <= 0x7E && !(f & (CF_L | CF_N))) {
        f |= CF_APUNCT;
        /* \p{S} among ASCII: $ + < = > ^ ` | ~ ; the other 23 are \p{P} */
        if (strchr("$+<=>^`|~", (int)c)) f |= CF_S;
        else f |= CF_P;
    }
    return f;
}

uint16_t moe_pretok_flags(uint32_t cp) {
    if (cp < 0x80) return ascii_flags(cp);
    if (is_uws(cp)) return CF_WS;
    int cat = cp <= 0x10FFFF ? (int)utf8proc_category((utf8proc_int32_t)cp) : 0;
    if (cat == UTF8PROC_CATEGORY_CN) {
        /* utf8proc 2.8 has Unicode 15.0; llama.cpp's tables are 15.1, which added CJK
         * extension I (Lo) and four IDCs plus one stroke (So). Nothing else changed. */
        if (cp >= 0x2EBF0 && cp <= 0x2EE5D) return CF_L;
        if ((cp >= 0x2FFC && cp <= 0x2FFF) || cp == 0x31EF) return CF_S;
        return 0;
    }
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return CF_L;
    if (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) return CF_M;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return CF_N;
    if (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO) return CF_P;
    if (cat >= UTF8PROC_CATEGORY_SM && cat <= UTF8PROC_CATEGORY_SO) return CF_S;
    return 0; /* separators that are not whitespace, controls, surrogates, private use */
}

int moe_utf8_put(uint32_t cp, uint8_t *o) {
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

static int grow(pt_buf *b, size_t n) {
    if (n <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < n) cap *= 2;
    uint32_t *cp = realloc(b->cp, cap * sizeof *cp);
    if (!cp) return -1;
    b->cp = cp;
    uint16_t *fl = realloc(b->fl, cap * sizeof *fl);
    if (!fl) return -1;
    b->fl = fl;
    uint32_t *off = realloc(b->off, (cap + 1) * sizeof *off);
    if (!off) return -1;
    b->off = off;
    uint32_t *bnd = realloc(b->bnd, (cap + 1) * sizeof *bnd);
    if (!bnd) return -1;
    b->bnd = bnd;
    uint32_t *bnd2 = realloc(b->bnd2, (cap + 1) * sizeof *bnd2);
    if (!bnd2) return -1;
    b->bnd2 = bnd2;
    b->cap = cap;
    return 0;
}

void moe_pretok_buf_free(pt_buf *b) {
    free(b->cp);
    free(b->fl);
    free(b->off);
    free(b->bnd);
    free(b->bnd2);
    memset(b, 0, sizeof *b);
}

static int utf8_len_of(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

long moe_pretok_decode(const moe_tok *t, pt_buf *b, const uint8_t *s, size_t n) {
    if (n > 0xFFFFFFF0u) return -1; /* offsets are 32-bit */
    if (grow(b, n + 1)) return -1;
    size_t k = 0, i = 0;
    b->irregular = 0;
    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp = 0xFFFD;
        size_t adv = 1;
        if (c < 0x80) {
            cp = c;
        } else if ((c & 0xE0) == 0xC0) {
            if (i + 1 < n && (s[i + 1] & 0xC0) == 0x80) {
                cp = ((uint32_t)(c & 0x1F) << 6) | (s[i + 1] & 0x3F);
                adv = 2;
            }
        } else if ((c & 0xF0) == 0xE0) {
            if (i + 2 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80) {
                cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[i + 1] & 0x3F) << 6) |
                     (s[i + 2] & 0x3F);
                adv = 3;
            }
        } else if ((c & 0xF8) == 0xF0) {
            if (i + 3 < n && (s[i + 1] & 0xC0) == 0x80 && (s[i + 2] & 0xC0) == 0x80 &&
                (s[i + 3] & 0xC0) == 0x80) {
                uint32_t v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[i + 1] & 0x3F) << 12) |
                             ((uint32_t)(s[i + 2] & 0x3F) << 6) | (s[i + 3] & 0x3F);
                /* above U+10FFFF llama.cpp throws later and aborts: treat as invalid bytes */
                if (v <= 0x10FFFF) {
                    cp = v;
                    adv = 4;
                }
            }
        }
        if ((size_t)utf8_len_of(cp) != adv || (cp == 0xFFFD && adv == 1)) b->irregular = 1;
        b->cp[k] = cp;
        b->fl[k] = (t && t->bmp_fl && cp < 0x10000) ? t->bmp_fl[cp] : moe_pretok_flags(cp);
        b->off[k] = (uint32_t)i;
        k++;
        i += adv;
    }
    b->off[k] = (uint32_t)n;
    return (long)k;
}

/* ---- matchers ---- */
typedef struct pt_ctx {
    const uint32_t *cp;
    const uint16_t *fl;
} pt_ctx;

typedef size_t (*rx_fn)(const pt_ctx *c, size_t i, size_t e);

#define FL(k) (c->fl[k])

static size_t run(const pt_ctx *c, size_t i, size_t e, uint16_t mask) {
    while (i < e && (FL(i) & mask)) i++;
    return i;
}

/* code point as std::wregex sees it: non-ASCII whitespace replaced by VT */
static uint32_t wcp(const pt_ctx *c, size_t i) {
    return (c->cp[i] > 0x7F && (FL(i) & CF_WS)) ? 0x0B : c->cp[i];
}

/* deepseek-v3 #1: \p{N}{1,3} */
static size_t rx_num3(const pt_ctx *c, size_t i, size_t e) {
    size_t j = i;
    while (j < e && j - i < 3 && (FL(j) & CF_N)) j++;
    return j;
}

/* \p{N}+ */
static size_t rx_num(const pt_ctx *c, size_t i, size_t e) { return run(c, i, e, CF_N); }

static int cjk_v3(uint32_t u) {
    return (u >= 0x4E00 && u <= 0x9FA5) || (u >= 0x3040 && u <= 0x309F) ||
           (u >= 0x30A0 && u <= 0x30FF);
}

/* deepseek-v3 #2: [一-龥぀-ゟ゠-ヿ]+ */
static size_t rx_cjk_v3(const pt_ctx *c, size_t i, size_t e) {
    size_t j = i;
    while (j < e && cjk_v3(wcp(c, j))) j++;
    return j;
}

/* deepseek-v3 #3, six alternatives tried in order:
 *  A1 [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
 *  A2 [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
 *  A3  ?[\p{P}\p{S}]+[\r\n]*
 *  A4 \s*[\r\n]+
 *  A5 \s+(?!\S)
 *  A6 \s+ */
static size_t rx_v3_main(const pt_ctx *c, size_t i, size_t e) {
    uint16_t f = FL(i);
    /* A1 */
    if ((f & CF_APUNCT) && i + 1 < e && (FL(i + 1) & CF_ALPHA)) return run(c, i + 1, e, CF_ALPHA);
    /* A2: the optional char greedily first, then without it */
    if (!(f & (CF_CRLF | CF_L | CF_P | CF_S)) && i + 1 < e && (FL(i + 1) & (CF_L | CF_M)))
        return run(c, i + 1, e, CF_L | CF_M);
    if (f & (CF_L | CF_M)) return run(c, i, e, CF_L | CF_M);
    /* A3 */
    {
        size_t j = i;
        if ((f & CF_SPACE) && i + 1 < e && (FL(i + 1) & (CF_P | CF_S))) j = i + 1;
        if (FL(j) & (CF_P | CF_S)) {
            j = run(c, j, e, CF_P | CF_S);
            return run(c, j, e, CF_CRLF);
        }
    }
    if (!(f & CF_WS)) return i;
    size_t we = run(c, i, e, CF_WS);
    /* A4: \s* backs off to the last CR/LF of the whitespace run; [\r\n]+ then takes it */
    for (size_t k = we; k > i; k--)
        if (FL(k - 1) & CF_CRLF) return k;
    /* A5: at the end of the piece the lookahead holds; else give back one character */
    if (we == e) return we;
    if (we - i >= 2) return we - 1;
    /* A6 */
    return we;
}

/* deepseek-llm #1: [\r\n] */
static size_t rx_crlf(const pt_ctx *c, size_t i, size_t e) {
    (void)e;
    return (FL(i) & CF_CRLF) ? i + 1 : i;
}

/* The letter class of deepseek-llm #2 (the 87 items of §5.4, inclusive ranges). */
static const uint32_t k_llm_letters[][2] = {
    {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA},
    {0x1BC, 0x1BF}, {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377},
    {0x37B, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C},
    {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556},
    {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF},
    {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
    {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE},
    {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC},
    {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113},
    {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
    {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
    {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
    {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787},
    {0xA78B, 0xA78E}, {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

static int in_ranges(uint32_t u, const uint32_t (*r)[2], size_t n) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t m = (lo + hi) / 2;
        if (u < r[m][0]) hi = m;
        else if (u > r[m][1]) lo = m + 1;
        else return 1;
    }
    return 0;
}

static int llm_letter(const pt_ctx *c, size_t i) {
    uint32_t u = wcp(c, i);
    if (u < 0x80) return (FL(i) & CF_ALPHA) != 0;
    return in_ranges(u, k_llm_letters, sizeof k_llm_letters / sizeof k_llm_letters[0]);
}

static int llm_punct(const pt_ctx *c, size_t i) {
    uint32_t u = wcp(c, i);
    return (u >= 0x21 && u <= 0x2F) || (u >= 0x3A && u <= 0x7E) || (u >= 0xFF01 && u <= 0xFF0F) ||
           (u >= 0xFF1A && u <= 0xFF5E) || (u >= 0x2018 && u <= 0x201F) ||
           (u >= 0x3000 && u <= 0x3002);
}

static int llm_cjk(const pt_ctx *c, size_t i) {
    uint32_t u = wcp(c, i);
    return (u >= 0x4E00 && u <= 0x9FA5) || (u >= 0x0800 && u <= 0x4E00) ||
           (u >= 0xAC00 && u <= 0xD7FF);
}

/* \s?X+ for a class predicate X that never contains whitespace */
static size_t opt_ws_then(const pt_ctx *c, size_t i, size_t e, int (*cls)(const pt_ctx *, size_t)) {
    size_t j = i;
    if ((FL(i) & CF_WS) && i + 1 < e && cls(c, i + 1)) j = i + 1;
    if (!cls(c, j)) return i;
    while (j < e && cls(c, j)) j++;
    return j;
}

static size_t rx_llm_letters(const pt_ctx *c, size_t i, size_t e) {
    return opt_ws_then(c, i, e, llm_letter);
}
static size_t rx_llm_punct(const pt_ctx *c, size_t i, size_t e) {
    return opt_ws_then(c, i, e, llm_punct);
}
static size_t rx_llm_cjk(const pt_ctx *c, size_t i, size_t e) {
    size_t j = i;
    while (j < e && llm_cjk(c, j)) j++;
    return j;
}

/* default (GPT-2) #1: [\p{P}\$\+<=>\^~\|]+ */
static int def_punct(const pt_ctx *c, size_t i) {
    uint32_t u = c->cp[i];
    return (FL(i) & CF_P) || u == '$' || u == '+' || u == '<' || u == '=' || u == '>' ||
           u == '^' || u == '~' || u == '|';
}
static size_t rx_def_punct(const pt_ctx *c, size_t i, size_t e) {
    size_t j = i;
    while (j < e && def_punct(c, j)) j++;
    return j;
}

/* default #2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) */
static size_t rx_def_main(const pt_ctx *c, size_t i, size_t e) {
    const uint32_t *p = c->cp;
    if (p[i] == '\'' && i + 1 < e) {
        uint32_t a = p[i + 1], b = i + 2 < e ? p[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    size_t j = (FL(i) & CF_SPACE) && i + 1 < e ? i + 1 : i;
    static const uint16_t cls[2] = {CF_L, CF_N};
    for (int k = 0; k < 2; k++) {
        if (FL(j) & cls[k]) return run(c, j, e, cls[k]);
        if (j != i && (FL(i) & cls[k])) return run(c, i, e, cls[k]);
    }
    if (!(FL(j) & (CF_WS | CF_L | CF_N))) {
        while (j < e && !(FL(j) & (CF_WS | CF_L | CF_N))) j++;
        return j;
    }
    if (j != i && !(FL(i) & (CF_WS | CF_L | CF_N))) {
        j = i;
        while (j < e && !(FL(j) & (CF_WS | CF_L | CF_N))) j++;
        return j;
    }
    if (!(FL(i) & CF_WS)) return i;
    size_t we = run(c, i, e, CF_WS);
    if (we == e) return we;
    if (we - i >= 2) return we - 1;
    return i;
}

/* default #4: [0-9][0-9][0-9] */
static size_t rx_def_digits3(const pt_ctx *c, size_t i, size_t e) {
    if (i + 2 < e && (FL(i) & CF_DIGIT) && (FL(i + 1) & CF_DIGIT) && (FL(i + 2) & CF_DIGIT))
        return i + 3;
    return i;
}

/* ---- splitting ---- */

/* Apply one regex to every piece of bnd[0..nb) into out; returns the new count. */
static size_t split(const pt_ctx *c, rx_fn fn, const uint32_t *bnd, size_t nb, uint32_t *out) {
    size_t no = 0;
    out[no++] = 0;
#define PUSH(x)                                          \
    do {                                                 \
        if ((uint32_t)(x) > out[no - 1]) out[no++] = (uint32_t)(x); \
    } while (0)
    for (size_t p = 0; p + 1 < nb; p++) {
        size_t s = bnd[p], e = bnd[p + 1];
        for (size_t i = s; i < e;) {
            size_t m = fn(c, i, e);
            if (m > i) {
                PUSH(i);
                PUSH(m);
                i = m;
            } else {
                i++;
            }
        }
        PUSH(e);
    }
#undef PUSH
    return no;
}

/* deepseek-llm #4: \s+$ — only the trailing whitespace run of a piece can match */
static size_t split_trailing_ws(const pt_ctx *c, const uint32_t *bnd, size_t nb, uint32_t *out) {
    size_t no = 0;
    out[no++] = 0;
    for (size_t p = 0; p + 1 < nb; p++) {
        size_t s = bnd[p], e = bnd[p + 1], k = e;
        while (k > s && (FL(k - 1) & CF_WS)) k--;
        if (k > s && k < e) out[no++] = (uint32_t)k;
        out[no++] = (uint32_t)e;
    }
    return no;
}

int moe_pretok_split(int kind, pt_buf *b, size_t n, size_t *nb) {
    pt_ctx c = {b->cp, b->fl};
    size_t k = 0;
    b->bnd[k++] = 0;
    if (n == 0) {
        *nb = 1;
        return 0;
    }
    b->bnd[k++] = (uint32_t)n;
    uint32_t *cur = b->bnd, *nxt = b->bnd2;
#define STEP(expr)                 \
    do {                           \
        k = (expr);                \
        uint32_t *tmp_ = cur;      \
        cur = nxt;                 \
        nxt = tmp_;                \
    } while (0)
    switch (kind) {
    case PT_DEEPSEEK_V3:
        STEP(split(&c, rx_num3, cur, k, nxt));
        STEP(split(&c, rx_cjk_v3, cur, k, nxt));
        STEP(split(&c, rx_v3_main, cur, k, nxt));
        break;
    case PT_DEEPSEEK_LLM:
        STEP(split(&c, rx_crlf, cur, k, nxt));
        STEP(split(&c, rx_llm_letters, cur, k, nxt));
        STEP(split(&c, rx_llm_punct, cur, k, nxt));
        STEP(split_trailing_ws(&c, cur, k, nxt));
        STEP(split(&c, rx_llm_cjk, cur, k, nxt));
        STEP(split(&c, rx_num, cur, k, nxt));
        break;
    default:
        STEP(split(&c, rx_def_punct, cur, k, nxt));
        STEP(split(&c, rx_def_main, cur, k, nxt));
        STEP(split(&c, rx_num, cur, k, nxt));
        STEP(split(&c, rx_def_digits3, cur, k, nxt));
        break;
    }
#undef STEP
    if (cur != b->bnd) memcpy(b->bnd, cur, k * sizeof *cur);
    *nb = k;
    return 0;
}
