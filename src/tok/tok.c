/* moekit tok: byte-level BPE from GGUF keys, encode, decode, streaming detokenizer
 * (spec deepseek2.md §5; behaviour pinned to llama.cpp by shared/vectors/tokenizer).
 *
 * Encode pipeline (llama_tokenize):
 *   1. special-token partition: occurrences of special token texts (longest text first, each
 *      token taking the leftmost non-overlapping occurrences in what is still raw text) become
 *      tokens; implemented by finding every occurrence once (hash lookups per distinct length)
 *      and claiming them in that priority order, which gives the same result as llama.cpp's
 *      repeated string searches without their cost;
 *   2. BOS (add_special && add_bos_token);
 *   3. each raw fragment: lenient UTF-8 decode, pre-tokenizer splits (pretok.c), words
 *      re-encoded to UTF-8 and mapped byte-by-byte to the GPT-2 byte-level alphabet;
 *   4. BPE per word with a binary heap of candidate merges (lowest rank, then leftmost);
 *   5. EOS (add_special && add_eos_token).
 * Symbols of a word are spans of its bytes; a merge table keyed by (left id, right id) gives
 * rank and result id, so no strings are built while encoding. Load-time checks guarantee every
 * merge's parts and result are tokens.
 *
 * Deliberate deviation: a BPE symbol whose text equals a CONTROL/UNKNOWN token's text is
 * emitted through the byte fallback instead of as that token, so ordinary text can never
 * produce a control token. Real DeepSeek vocabularies never reach this path.
 *
 * Ownership: texts are borrowed from the moe_gguf; everything else is owned. After init the
 * object is immutable; encode allocates its own scratch, so calls may run concurrently. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_impl.h"

/* ---- small helpers ---- */

static void set_err(char *err, size_t n, const char *fmt, ...) {
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const void *p, size_t n, uint64_t h) {
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}
#define HASH_SEED 0xcbf29ce484222325ull

static size_t pow2_at_least(size_t n) {
    size_t k = 16;
    while (k < n) k <<= 1;
    return k;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

void moe_tok_byte_to_unicode(uint8_t b, uint8_t *out, int *len) {
    uint32_t cp;
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) {
        cp = b;
    } else {
        /* the 68 others in byte order: 0x00-0x20, 0x7F-0xA0, 0xAD -> U+0100.. */
        uint32_t k = b <= 0x20 ? b : b <= 0xA0 ? 0x21u + (b - 0x7Fu) : 0x43u;
        cp = 0x100 + k;
    }
    *len = moe_utf8_put(cp, out);
}

/* inverse: code point -> byte, or -1 */
static int unicode_to_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 0x100 || cp > 0x143) return -1;
    uint32_t k = cp - 0x100;
    if (k <= 0x20) return (int)k;
    if (k <= 0x42) return (int)(0x7F + (k - 0x21));
    return 0xAD;
}

static int32_t text_lookup2(const moe_tok *t, const char *a, size_t na, const char *b, size_t nb) {
    uint64_t h = hash_bytes(b, nb, hash_bytes(a, na, HASH_SEED));
    size_t m = t->tok_hash_n - 1;
    for (size_t k = (size_t)mix64(h) & m;; k = (k + 1) & m) {
        uint32_t v = t->tok_hash[k];
        if (!v) return -1;
        const moe_str *s = &t->text[v - 1];
        if (s->len == na + nb && !memcmp(s->ptr, a, na) && !memcmp(s->ptr + na, b, nb))
            return (int32_t)(v - 1);
    }
}

static int32_t text_lookup(const moe_tok *t, const char *a, size_t na) {
    return text_lookup2(t, a, na, "", 0);
}

/* ---- accessors ---- */

int32_t moe_tok_n_vocab(const moe_tok *t) { return t->n_vocab; }
int32_t moe_tok_bos(const moe_tok *t) { return t->bos; }
int32_t moe_tok_eos(const moe_tok *t) { return t->eos; }
int moe_tok_add_bos(const moe_tok *t) { return t->add_bos; }
int moe_tok_is_eog(const moe_tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->eog[id];
}
int moe_tok_type_of(const moe_tok *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->type[id] : MOE_TOK_TYPE_UNDEFINED;
}
moe_str moe_tok_text(const moe_tok *t, int32_t id) {
    moe_str s = {"", 0};
    if (id >= 0 && id < t->n_vocab) s = t->text[id];
    return s;
}
const char *moe_tok_pre(const moe_tok *t) {
    return t->pre == PT_DEEPSEEK_V3 ? "deepseek-v3" : t->pre == PT_DEEPSEEK_LLM ? "deepseek-llm" : "default";
}
moe_str moe_tok_chat_template(const moe_tok *t) { return t->chat_template; }

static int is_special_type(int ty) {
    return ty == MOE_TOK_TYPE_CONTROL || ty == MOE_TOK_TYPE_USER_DEFINED || ty == MOE_TOK_TYPE_UNKNOWN;
}

/* ---- init ---- */

void moe_tok_free(moe_tok *t) {
    if (!t) return;
    free(t->text);
    free(t->owned);
    free(t->type);
    free(t->eog);
    free(t->tok_hash);
    free(t->merge);
    free(t->piece);
    free(t->piece_off);
    free(t->special);
    free(t->spec_hash);
    free(t->spec_lens);
    free(t->bmp_fl);
    free(t->word_hash);
    free(t);
}

/* optional u32 id key: -1 if absent; error if wrong type or out of range */
static moe_status get_id(const moe_gguf *g, const char *key, int32_t n_vocab, int32_t dflt,
                         int required_in_range, int32_t *out, char *err, size_t errlen) {
    uint32_t v;
    moe_status st = moe_gguf_get_u32(g, key, &v);
    if (st == MOE_ERR_NOTFOUND) {
        *out = dflt < n_vocab ? dflt : -1;
        return MOE_OK;
    }
    if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        return MOE_ERR_FORMAT;
    }
    if (v >= (uint32_t)n_vocab) {
        if (required_in_range) {
            set_err(err, errlen, "tokenizer: %s = %u is out of range (vocabulary has %d tokens)", key,
                    v, n_vocab);
            return MOE_ERR_FORMAT;
        }
        *out = -1; /* llama.cpp ignores bad optional ids with a warning */
        return MOE_OK;
    }
    *out = (int32_t)v;
    return MOE_OK;
}

static moe_status get_bool(const moe_gguf *g, const char *key, int dflt, int *out, char *err,
                           size_t errlen) {
    moe_status st = moe_gguf_get_bool(g, key, out);
    if (st == MOE_ERR_NOTFOUND) {
        *out = dflt;
        return MOE_OK;
    }
    if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        return MOE_ERR_FORMAT;
    }
    return MOE_OK;
}

static int str_is(moe_str s, const char *z) { return s.len == strlen(z) && !memcmp(s.ptr, z, s.len); }

static moe_status build_pieces(moe_tok *t) {
    /* pass 1: size; pass 2: fill */
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t o = 0;
        for (int32_t id = 0; id < t->n_vocab; id++) {
            if (pass) t->piece_off[id] = (uint32_t)o;
            moe_str s = t->text[id];
            int ty = t->type[id];
            if (is_special_type(ty)) {
                if (pass) memcpy(t->piece + o, s.ptr, s.len);
                o += s.len;
            } else if (ty == MOE_TOK_TYPE_NORMAL) {
                const uint8_t *p = (const uint8_t *)s.ptr;
                size_t i = 0;
                while (i < s.len) {
                    /* llama.cpp decodes the text leniently, then maps each code point */
                    uint32_t cp = 0xFFFD;
                    size_t adv = 1;
                    uint8_t c = p[i];
                    if (c < 0x80) cp = c;
                    else if ((c & 0xE0) == 0xC0 && i + 1 < s.len && (p[i + 1] & 0xC0) == 0x80) {
                        cp = ((uint32_t)(c & 0x1F) << 6) | (p[i + 1] & 0x3F);
                        adv = 2;
                    } else if ((c & 0xF0) == 0xE0 && i + 2 < s.len && (p[i + 1] & 0xC0) == 0x80 &&
                               (p[i + 2] & 0xC0) == 0x80) {
                        cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F);
                        adv = 3;
                    } else if ((c & 0xF8) == 0xF0 && i + 3 < s.len && (p[i + 1] & 0xC0) == 0x80 &&
                               (p[i + 2] & 0xC0) == 0x80 && (p[i + 3] & 0xC0) == 0x80) {
                        uint32_t v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[i + 1] & 0x3F) << 12) |
                                     ((uint32_t)(p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F);
                        if (v <= 0x10FFFF) {
                            cp = v;
                            adv = 4;
                        }
                    }
                    int b = unicode_to_byte(cp);
                    if (b >= 0) {
                        if (pass) t->piece[o] = (char)b;
                        o++;
                    } else {
                        /* llama.cpp: "[UNK_BYTE_0x" + hex of the UTF-8 + whole text + "]" */
                        uint8_t u[4];
                        int ul = moe_utf8_put(cp, u);
                        char tmp[32];
                        int k = snprintf(tmp, sizeof tmp, "[UNK_BYTE_0x");
                        for (int j = 0; j < ul; j++) k += snprintf(tmp + k, sizeof tmp - (size_t)k, "%02x", u[j]);
                        if (pass) memcpy(t->piece + o, tmp, (size_t)k);
                        o += (size_t)k;
                        if (pass) memcpy(t->piece + o, s.ptr, s.len);
                        o += s.len;
                        if (pass) t->piece[o] = ']';
                        o++;
                    }
                    i += adv;
                }
            }
            if (o > 0xFFFFFFF0u) return MOE_ERR_RANGE;
        }
        if (pass) {
            t->piece_off[t->n_vocab] = (uint32_t)o;
        } else {
            total = o;
            t->piece = malloc(total ? total : 1);
            t->piece_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->piece_off);
            if (!t->piece || !t->piece_off) return MOE_ERR_NOMEM;
        }
    }
    return MOE_OK;
}

static moe_status build_word_cache(moe_tok *t);

static int cmp_special(const void *a, const void *b, void *ud) {
    const moe_tok *t = ud;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (t->text[x].len != t->text[y].len) return t->text[x].len > t->text[y].len ? -1 : 1;
    return x < y ? -1 : x > y;
}

static moe_status build_specials(moe_tok *t) {
    uint32_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id]) && t->text[id].len) n++;
    t->n_special = n;
    t->special = malloc((n ? n : 1) * sizeof *t->special);
    t->spec_lens = malloc((n ? n : 1) * sizeof *t->spec_lens);
    t->spec_hash_n = pow2_at_least(2 * (size_t)n + 2);
    t->spec_hash = calloc(t->spec_hash_n, sizeof *t->spec_hash);
    if (!t->special || !t->spec_lens || !t->spec_hash) return MOE_ERR_NOMEM;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        if (is_special_type(t->type[id]) && t->text[id].len) t->special[n++] = id;
    qsort_r(t->special, n, sizeof *t->special, cmp_special, t);
    size_t m = t->spec_hash_n - 1;
    for (uint32_t i = 0; i < n; i++) t->n_user_defined += t->type[t->special[i]] == MOE_TOK_TYPE_USER_DEFINED;
    for (uint32_t i = 0; i < n; i++) {
        moe_str s = t->text[t->special[i]];
        t->spec_first[(uint8_t)s.ptr[0]] = 1;
        if (!t->n_spec_lens || t->spec_lens[t->n_spec_lens - 1] != s.len)
            t->spec_lens[t->n_spec_lens++] = (uint32_t)s.len;
        size_t k = (size_t)mix64(hash_bytes(s.ptr, s.len, HASH_SEED)) & m;
        for (;; k = (k + 1) & m) {
            uint32_t v = t->spec_hash[k];
            if (!v) {
                t->spec_hash[k] = i + 1;
                break;
            }
            moe_str o = t->text[t->special[v - 1]];
            if (o.len == s.len && !memcmp(o.ptr, s.ptr, s.len)) break; /* first in order wins */
        }
    }
    return MOE_OK;
}

/* index into special[] of a special token whose text is p[0..n), or -1 */
static int32_t special_lookup(const moe_tok *t, const char *p, size_t n) {
    size_t m = t->spec_hash_n - 1;
    for (size_t k = (size_t)mix64(hash_bytes(p, n, HASH_SEED)) & m;; k = (k + 1) & m) {
        uint32_t v = t->spec_hash[k];
        if (!v) return -1;
        moe_str o = t->text[t->special[v - 1]];
        if (o.len == n && !memcmp(o.ptr, p, n)) return (int32_t)(v - 1);
    }
}

static moe_status add_merge(moe_tok *t, int32_t l, int32_t r, int32_t rank, int32_t res) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t m = t->merge_n - 1;
    for (size_t k = (size_t)mix64(key) & m;; k = (k + 1) & m) {
        if (t->merge[k].key == UINT64_MAX) {
            t->merge[k].key = key;
            t->merge[k].rank = rank;
            t->merge[k].result = res;
            return MOE_OK;
        }
        if (t->merge[k].key == key) return MOE_OK; /* first rank wins (std::map::emplace) */
    }
}

static inline const struct merge_ent *merge_find(const moe_tok *t, int32_t l, int32_t r) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t m = t->merge_n - 1;
    for (size_t k = (size_t)mix64(key) & m;; k = (k + 1) & m) {
        const struct merge_ent *e = &t->merge[k];
        if (e->key == key) return e;
        if (e->key == UINT64_MAX) return NULL;
    }
}

static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
    "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>",
};
static const char *const k_fim_texts[] = {
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "hole\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
};

moe_status moe_tok_init_from_gguf(const moe_gguf *g, moe_tok **out, char *err, size_t errlen) {
    moe_status st = MOE_OK;
    moe_tok *t = NULL;
    if (out) *out = NULL;
    if (!g || !out) return MOE_ERR_INVAL;
    t = calloc(1, sizeof *t);
    if (!t) return MOE_ERR_NOMEM;
    t->g = g;

    moe_str model;
    st = moe_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (st) {
        set_err(err, errlen, "tokenizer: %s", st == MOE_ERR_NOTFOUND ? "key 'tokenizer.ggml.model' not found" : moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    if (!str_is(model, "gpt2")) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.model '%.*s' is not supported (only gpt2)",
                (int)(model.len > 64 ? 64 : model.len), model.ptr);
        st = MOE_ERR_UNSUPPORTED;
        goto fail;
    }
    moe_str pre;
    st = moe_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
    if (st == MOE_ERR_NOTFOUND) {
        t->pre = PT_DEFAULT;
    } else if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    } else if (str_is(pre, "deepseek-v3")) {
        t->pre = PT_DEEPSEEK_V3;
    } else if (str_is(pre, "deepseek-llm")) {
        t->pre = PT_DEEPSEEK_LLM;
    } else if (str_is(pre, "default")) {
        t->pre = PT_DEFAULT;
    } else {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.pre '%.*s' is not supported (deepseek-v3, deepseek-llm, default)",
                (int)(pre.len > 64 ? 64 : pre.len), pre.ptr);
        st = MOE_ERR_UNSUPPORTED;
        goto fail;
    }

    int64_t ki;
    uint64_t n;
    st = moe_gguf_get_arr(g, "tokenizer.ggml.tokens", MOE_GGUF_TYPE_STRING, &ki, &n);
    if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    if (n == 0 || n > 0x7FFFFFFF) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.tokens has %llu entries", (unsigned long long)n);
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    t->n_vocab = (int32_t)n;
    t->text = malloc(n * sizeof *t->text);
    t->type = malloc(n);
    t->eog = calloc(n, 1);
    if (!t->text || !t->type || !t->eog) goto nomem;
    size_t n_empty = 0;
    for (uint64_t i = 0; i < n; i++) {
        t->text[i] = moe_gguf_arr_str(g, ki, i);
        if (!t->text[i].len) n_empty++;
    }
    if (n_empty) { /* llama.cpp: empty strings become [EMPTY_<id>] */
        t->owned = malloc(n_empty * 24);
        if (!t->owned) goto nomem;
        size_t o = 0;
        for (uint64_t i = 0; i < n; i++) {
            if (t->text[i].len) continue;
            int k = snprintf(t->owned + o, 24, "[EMPTY_%llu]", (unsigned long long)i);
            t->text[i].ptr = t->owned + o;
            t->text[i].len = (uint64_t)k;
            o += 24;
        }
    }

    int64_t ti;
    uint64_t tn;
    st = moe_gguf_get_arr(g, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, &ti, &tn);
    if (st == MOE_ERR_NOTFOUND) {
        memset(t->type, MOE_TOK_TYPE_NORMAL, n);
        st = MOE_OK;
    } else if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    } else if (tn != n) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.token_type has %llu entries, tokenizer.ggml.tokens %llu",
                (unsigned long long)tn, (unsigned long long)n);
        st = MOE_ERR_FORMAT;
        goto fail;
    } else {
        const uint8_t *p = moe_gguf_arr_data(g, ti);
        for (uint64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            t->type[i] = (uint8_t)(v >= 1 && v <= 6 ? v : MOE_TOK_TYPE_UNDEFINED);
        }
    }

    /* text -> id */
    t->tok_hash_n = pow2_at_least(2 * n);
    t->tok_hash = calloc(t->tok_hash_n, sizeof *t->tok_hash);
    if (!t->tok_hash) goto nomem;
    for (uint64_t i = 0; i < n; i++) {
        moe_str s = t->text[i];
        size_t m = t->tok_hash_n - 1;
        for (size_t k = (size_t)mix64(hash_bytes(s.ptr, s.len, HASH_SEED)) & m;; k = (k + 1) & m) {
            uint32_t v = t->tok_hash[k];
            if (!v) {
                t->tok_hash[k] = (uint32_t)i + 1;
                break;
            }
            moe_str o = t->text[v - 1];
            if (o.len == s.len && !memcmp(o.ptr, s.ptr, s.len)) {
                t->tok_hash[k] = (uint32_t)i + 1; /* last wins, as token_to_id[text] = id */
                break;
            }
        }
    }

    /* llama.cpp forces CONTROL on end-of-turn and FIM tokens found by text */
    for (size_t k = 0; k < sizeof k_eog_texts / sizeof k_eog_texts[0]; k++) {
        int32_t id = text_lookup(t, k_eog_texts[k], strlen(k_eog_texts[k]));
        if (id >= 0 && t->type[id] != MOE_TOK_TYPE_CONTROL) t->type[id] = MOE_TOK_TYPE_CONTROL;
    }
    for (size_t k = 0; k < sizeof k_fim_texts / sizeof k_fim_texts[0]; k++) {
        int32_t id = text_lookup(t, k_fim_texts[k], strlen(k_fim_texts[k]));
        if (id >= 0) t->type[id] = MOE_TOK_TYPE_CONTROL;
    }

    /* special ids */
    if ((st = get_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, 11, 1, &t->bos, err, errlen))) goto fail;
    if ((st = get_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, 11, 1, &t->eos, err, errlen))) goto fail;
    if ((st = get_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, -1, 0, &t->eot, err, errlen))) goto fail;
    if ((st = get_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, -1, 0, &t->eom, err, errlen))) goto fail;
    if ((st = get_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, -1, 0, &t->pad, err, errlen))) goto fail;
    if ((st = get_bool(g, "tokenizer.ggml.add_bos_token", 0, &t->add_bos, err, errlen))) goto fail;
    if ((st = get_bool(g, "tokenizer.ggml.add_eos_token", 0, &t->add_eos, err, errlen))) goto fail;
    st = moe_gguf_get_str(g, "tokenizer.chat_template", &t->chat_template);
    if (st == MOE_ERR_NOTFOUND) {
        t->chat_template.ptr = "";
        t->chat_template.len = 0;
        st = MOE_OK;
    } else if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    if (t->eos >= 0) t->eog[t->eos] = 1;
    if (t->eot >= 0) t->eog[t->eot] = 1;
    if (t->eom >= 0) t->eog[t->eom] = 1;
    for (size_t k = 0; k < sizeof k_eog_texts / sizeof k_eog_texts[0]; k++) {
        int32_t id = text_lookup(t, k_eog_texts[k], strlen(k_eog_texts[k]));
        if (id >= 0) t->eog[id] = 1;
    }

    /* byte-level alphabet */
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int ul;
        moe_tok_byte_to_unicode((uint8_t)b, u, &ul);
        t->unicode_of[b][0] = (uint8_t)ul;
        t->unicode_of[b][1] = u[0];
        t->unicode_of[b][2] = ul > 1 ? u[1] : 0;
        t->byte_id[b] = text_lookup(t, (const char *)u, (size_t)ul);
        char c = (char)b;
        t->onebyte_id[b] = text_lookup(t, &c, 1);
    }

    /* merges */
    int64_t mi;
    uint64_t mn;
    st = moe_gguf_get_arr(g, "tokenizer.ggml.merges", MOE_GGUF_TYPE_STRING, &mi, &mn);
    if (st) {
        set_err(err, errlen, "tokenizer: %s", moe_gguf_errmsg(g));
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    if (mn > 0x7FFFFFFF) {
        set_err(err, errlen, "tokenizer: tokenizer.ggml.merges has too many entries");
        st = MOE_ERR_FORMAT;
        goto fail;
    }
    t->n_merges = (uint32_t)mn;
    t->merge_n = pow2_at_least(2 * mn + 2);
    t->merge = malloc(t->merge_n * sizeof *t->merge);
    if (!t->merge) goto nomem;
    for (size_t k = 0; k < t->merge_n; k++) t->merge[k].key = UINT64_MAX;
    for (uint64_t i = 0; i < mn; i++) {
        moe_str s = moe_gguf_arr_str(g, mi, i);
        const char *sp = s.len > 1 ? memchr(s.ptr + 1, ' ', s.len - 1) : NULL;
        if (!sp) {
            set_err(err, errlen, "tokenizer: tokenizer.ggml.merges[%llu] '%.*s' is not \"A B\"",
                    (unsigned long long)i, (int)(s.len > 64 ? 64 : s.len), s.ptr);
            st = MOE_ERR_FORMAT;
            goto fail;
        }
        size_t la = (size_t)(sp - s.ptr), lb = s.len - la - 1;
        int32_t a = text_lookup(t, s.ptr, la), b = text_lookup(t, sp + 1, lb);
        int32_t r = text_lookup2(t, s.ptr, la, sp + 1, lb);
        if (a < 0 || b < 0 || r < 0) {
            set_err(err, errlen, "tokenizer: tokenizer.ggml.merges[%llu] '%.*s' names a token not in the vocabulary",
                    (unsigned long long)i, (int)(s.len > 64 ? 64 : s.len), s.ptr);
            st = MOE_ERR_FORMAT;
            goto fail;
        }
        if ((st = add_merge(t, a, b, (int32_t)i, r))) goto fail;
    }

    for (int a = 0; a < 256; a++)
        for (int b = 0; b < 256; b++) {
            const struct merge_ent *e =
                t->byte_id[a] >= 0 && t->byte_id[b] >= 0 ? merge_find(t, t->byte_id[a], t->byte_id[b]) : NULL;
            t->byte_pair[a][b].rank = e ? e->rank : -1;
            t->byte_pair[a][b].result = e ? e->result : -1;
        }

    t->bmp_fl = malloc(65536 * sizeof *t->bmp_fl);
    if (!t->bmp_fl) goto nomem;
    for (uint32_t cp = 0; cp < 65536; cp++) t->bmp_fl[cp] = moe_pretok_flags(cp);

    if ((st = build_pieces(t))) {
        set_err(err, errlen, "tokenizer: %s building token pieces", moe_status_str(st));
        goto fail;
    }
    if ((st = build_specials(t))) goto nomem;
    if ((st = build_word_cache(t))) goto nomem;
    *out = t;
    return MOE_OK;
nomem:
    st = MOE_ERR_NOMEM;
    set_err(err, errlen, "tokenizer: out of memory");
fail:
    moe_tok_free(t);
    return st;
}

/* ---- encode ---- */

typedef struct idvec {
    int32_t *v;
    size_t n, cap;
} idvec;

static int idvec_push(idvec *a, int32_t x) {
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return 0;
}

typedef struct bpe_sym {
    int32_t id;
    uint32_t start, len; /* span in the word's bytes; len 0 = merged away */
    int32_t prev, next;
    int32_t rank, res; /* short-word path: pair (this, next) */
} bpe_sym;

typedef struct bpe_cand {
    int32_t rank;
    uint32_t left, right, len; /* len: left.len + right.len when pushed */
} bpe_cand;

typedef struct enc_scratch {
    pt_buf pt;
    uint8_t *word; /* re-encoded word bytes */
    size_t word_cap;
    bpe_sym *sym;
    bpe_cand *heap;
    size_t sym_cap;
    uint8_t *claimed; /* special partition */
    size_t claimed_cap;
} enc_scratch;

static int cand_less(const bpe_cand *a, const bpe_cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_cand *h, size_t *n, bpe_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static bpe_cand heap_pop(bpe_cand *h, size_t *n) {
    bpe_cand top = h[0], last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        const bpe_cand *best = &last;
        if (l < m && cand_less(&h[l], best)) {
            s = l;
            best = &h[l];
        }
        if (r < m && cand_less(&h[r], best)) s = r;
        if (s == i) break;
        h[i] = h[s];
        i = s;
    }
    if (m) h[i] = last;
    return top;
}

static int emit_symbol(const moe_tok *t, const uint8_t *w, const bpe_sym *s, idvec *out) {
    int32_t id = s->id;
    if (id >= 0 && t->type[id] != MOE_TOK_TYPE_CONTROL && t->type[id] != MOE_TOK_TYPE_UNKNOWN)
        return idvec_push(out, id);
    /* not a token: each byte of the symbol's byte-level text, if it is a one-byte token */
    for (uint32_t k = 0; k < s->len; k++) {
        const uint8_t *u = t->unicode_of[w[s->start + k]];
        for (int j = 0; j < u[0]; j++) {
            int32_t b = t->onebyte_id[u[1 + j]];
            if (b >= 0 && idvec_push(out, b)) return -1;
        }
    }
    return 0;
}

/* id of the token whose decoded bytes are w[0..n) and which BPE turns w into, or -1 */
static int32_t word_lookup(const moe_tok *t, const uint8_t *w, size_t n) {
    size_t m = t->word_hash_n - 1;
    for (size_t k = (size_t)mix64(hash_bytes(w, n, HASH_SEED)) & m;; k = (k + 1) & m) {
        uint32_t v = t->word_hash[k];
        if (!v) return -1;
        uint32_t o = t->piece_off[v - 1];
        if (t->piece_off[v] - o == n && !memcmp(t->piece + o, w, n)) return (int32_t)(v - 1);
    }
}

/* rank and result of merging symbols l and r of word w, or rank -1 */
static inline int32_t pair_rank(const moe_tok *t, const uint8_t *w, const bpe_sym *l, const bpe_sym *r,
                                int32_t *res) {
    if (l->len == 1 && r->len == 1) { /* both still single bytes: dense table, no hashing */
        const struct byte_pair *bp = &t->byte_pair[w[l->start]][w[r->start]];
        *res = bp->result;
        return bp->rank;
    }
    if (l->id < 0 || r->id < 0) return -1;
    const struct merge_ent *e = merge_find(t, l->id, r->id);
    if (!e) return -1;
    *res = e->result;
    return e->rank;
}

static void try_pair(const moe_tok *t, const uint8_t *w, bpe_sym *sym, bpe_cand *heap, size_t *hn,
                     int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    int32_t res;
    int32_t rank = pair_rank(t, w, &sym[l], &sym[r], &res);
    if (rank < 0) return;
    bpe_cand c = {rank, (uint32_t)l, (uint32_t)r, sym[l].len + sym[r].len};
    heap_push(heap, hn, c);
}

/* BPE over one word (its UTF-8 bytes); appends ids.
 * Short words: each step scans the live pairs for the lowest (rank, position); long words: a
 * binary heap with lazy deletion, as llama.cpp. Both pick the same merge at every step (the
 * live pair of lowest rank, leftmost on ties), which test_tok_bpe checks on random words. */
static int bpe_word(const moe_tok *t, enc_scratch *sc, const uint8_t *w, size_t n, int heap_only,
                    idvec *out) {
    if (n == 1) {
        bpe_sym s = {t->byte_id[w[0]], 0, 1, -1, -1, -1, -1};
        return emit_symbol(t, w, &s, out);
    }
    if (t->word_hash && n <= t->max_word_len && !heap_only) {
        int32_t id = word_lookup(t, w, n);
        if (id >= 0) return idvec_push(out, id);
    }
    if (n > sc->sym_cap) {
        size_t cap = sc->sym_cap ? sc->sym_cap : 64;
        while (cap < n) cap *= 2;
        bpe_sym *s = realloc(sc->sym, cap * sizeof *s);
        if (!s) return -1;
        sc->sym = s;
        /* at most n-1 initial pairs plus 2 per merge: < 3n */
        bpe_cand *h = realloc(sc->heap, 3 * cap * sizeof *h);
        if (!h) return -1;
        sc->heap = h;
        sc->sym_cap = cap;
    }
    bpe_sym *sym = sc->sym;
    for (size_t i = 0; i < n; i++) {
        sym[i].id = t->byte_id[w[i]];
        sym[i].start = (uint32_t)i;
        sym[i].len = 1;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    if (n <= 24 && !heap_only) {
        /* rank[i]/res[i]: pair (i, next(i)) */
        for (size_t i = 0; i + 1 < n; i++) sym[i].rank = pair_rank(t, w, &sym[i], &sym[i + 1], &sym[i].res);
        sym[n - 1].rank = -1;
        for (;;) {
            int32_t best = -1, br = INT32_MAX;
            for (int32_t i = 0; i >= 0; i = sym[i].next)
                if (sym[i].rank >= 0 && sym[i].rank < br) {
                    br = sym[i].rank;
                    best = i;
                }
            if (best < 0) break;
            bpe_sym *l = &sym[best], *r = &sym[l->next];
            l->id = l->res;
            l->len += r->len;
            r->len = 0;
            l->next = r->next;
            if (r->next >= 0) sym[r->next].prev = best;
            l->rank = l->next >= 0 ? pair_rank(t, w, l, &sym[l->next], &l->res) : -1;
            if (l->prev >= 0) sym[l->prev].rank = pair_rank(t, w, &sym[l->prev], l, &sym[l->prev].res);
        }
    } else {
        bpe_cand *heap = sc->heap;
        size_t hn = 0;
        for (size_t i = 0; i + 1 < n; i++) try_pair(t, w, sym, heap, &hn, (int32_t)i, (int32_t)i + 1);
        while (hn) {
            bpe_cand c = heap_pop(heap, &hn);
            bpe_sym *l = &sym[c.left], *r = &sym[c.right];
            if (!l->len || !r->len || l->len + r->len != c.len) continue; /* stale */
            int32_t res = -1;
            pair_rank(t, w, l, r, &res);
            l->id = res;
            l->len += r->len;
            r->len = 0;
            l->next = r->next;
            if (r->next >= 0) sym[r->next].prev = (int32_t)c.left;
            try_pair(t, w, sym, heap, &hn, l->prev, (int32_t)c.left);
            try_pair(t, w, sym, heap, &hn, (int32_t)c.left, l->next);
        }
    }
    for (int32_t i = 0; i >= 0; i = sym[i].next)
        if (emit_symbol(t, w, &sym[i], out)) return -1;
    return 0;
}

static int encode_raw(const moe_tok *t, enc_scratch *sc, const uint8_t *s, size_t n, int byte_exact,
                      int heap_only, idvec *out) {
    if (!n) return 0;
    long nc = moe_pretok_decode(t, &sc->pt, s, n);
    if (nc < 0) return -1;
    size_t nb;
    if (moe_pretok_split(t->pre, &sc->pt, (size_t)nc, &nb)) return -1;
    const uint32_t *bnd = sc->pt.bnd, *off = sc->pt.off;
    int reencode = sc->pt.irregular && !byte_exact;
    for (size_t p = 0; p + 1 < nb; p++) {
        uint32_t a = bnd[p], b = bnd[p + 1];
        if (!reencode) {
            if (bpe_word(t, sc, s + off[a], off[b] - off[a], heap_only, out)) return -1;
            continue;
        }
        size_t need = 4 * (size_t)(b - a);
        if (need > sc->word_cap) {
            uint8_t *w = realloc(sc->word, need);
            if (!w) return -1;
            sc->word = w;
            sc->word_cap = need;
        }
        size_t wl = 0;
        for (uint32_t k = a; k < b; k++) wl += (size_t)moe_utf8_put(sc->pt.cp[k], sc->word + wl);
        if (bpe_word(t, sc, sc->word, wl, heap_only, out)) return -1;
    }
    return 0;
}

/* Whole-word shortcut: most words of real text are one token. For every NORMAL token whose
 * BPE over its own decoded bytes gives back exactly that token, map those bytes to it; encode
 * then emits such words with one hash lookup. Exact by construction (checked with the BPE). */
static moe_status build_word_cache(moe_tok *t) {
    moe_status st = MOE_ERR_NOMEM;
    enc_scratch sc;
    memset(&sc, 0, sizeof sc);
    idvec v = {0};
    uint32_t *h = NULL;
    size_t hn = pow2_at_least(2 * (size_t)t->n_vocab);
    uint32_t maxl = 0;
    h = calloc(hn, sizeof *h);
    if (!h) goto cleanup;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != MOE_TOK_TYPE_NORMAL) continue;
        uint32_t o = t->piece_off[id], n = t->piece_off[id + 1] - o;
        if (n < 2 || n > 128) continue;
        const uint8_t *w = (const uint8_t *)t->piece + o;
        v.n = 0;
        if (bpe_word(t, &sc, w, n, 0, &v)) goto cleanup;
        if (v.n != 1 || v.v[0] != id) continue;
        size_t k = (size_t)mix64(hash_bytes(w, n, HASH_SEED)) & (hn - 1);
        while (h[k]) k = (k + 1) & (hn - 1); /* pieces of NORMAL tokens are distinct */
        h[k] = (uint32_t)id + 1;
        if (n > maxl) maxl = n;
    }
    t->word_hash = h;
    t->word_hash_n = hn;
    t->max_word_len = maxl;
    h = NULL;
    st = MOE_OK;
cleanup:
    free(h);
    free(v.v);
    free(sc.sym);
    free(sc.heap);
    return st;
}

moe_status moe_tok_encode_ex(const moe_tok *t, const char *text, size_t len, unsigned flags,
                             int32_t **ids, size_t *n_ids) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!t || !ids || !n_ids || (!text && len)) return MOE_ERR_INVAL;
    moe_status st = MOE_OK;
    enc_scratch sc;
    memset(&sc, 0, sizeof sc);
    idvec out = {0};
    const uint8_t *s = (const uint8_t *)text;
    int parse_special = (flags & MOE_TOK_PARSE_SPECIAL) != 0;
    int byte_exact = (flags & MOE_TOK_BYTE_EXACT) != 0;
    int heap_only = (flags & MOE_TOK_FLAG_HEAP_ONLY) != 0;

    if ((flags & MOE_TOK_ADD_BOS) && t->add_bos && t->bos >= 0 && idvec_push(&out, t->bos)) goto nomem;

    /* 1. special-token partition: claim occurrences in priority order */
    int any = 0;
    if (t->n_special && (parse_special || t->n_user_defined))
        for (size_t i = 0; i < len && !any; i++) any = t->spec_first[s[i]];
    if (any) {
        /* tok_at[i] = index into special[] + 1 of the occurrence claimed at byte i */
        sc.claimed = calloc(len, 1);
        int32_t *tok_at = calloc(len, sizeof *tok_at);
        /* occurrences as (priority index, position), grouped by priority via counting sort */
        uint32_t *cnt = NULL, *occ = NULL;
        size_t n_occ = 0, occ_cap = 0;
        uint32_t *occ_pri = NULL;
        if (!sc.claimed || !tok_at) {
            free(tok_at);
            goto nomem;
        }
        for (size_t i = 0; i < len; i++) {
            if (!t->spec_first[s[i]]) continue;
            for (uint32_t k = 0; k < t->n_spec_lens; k++) {
                size_t L = t->spec_lens[k];
                if (L > len - i) continue;
                int32_t pi = special_lookup(t, (const char *)s + i, L);
                if (pi < 0) continue;
                int ty = t->type[t->special[pi]];
                if (!parse_special && ty != MOE_TOK_TYPE_USER_DEFINED) continue;
                if (n_occ == occ_cap) {
                    size_t cap = occ_cap ? 2 * occ_cap : 64;
                    uint32_t *o1 = realloc(occ, cap * sizeof *o1);
                    if (!o1) goto part_nomem;
                    occ = o1;
                    uint32_t *o2 = realloc(occ_pri, cap * sizeof *o2);
                    if (!o2) goto part_nomem;
                    occ_pri = o2;
                    occ_cap = cap;
                }
                occ[n_occ] = (uint32_t)i;
                occ_pri[n_occ] = (uint32_t)pi;
                n_occ++;
            }
        }
        if (n_occ) {
            /* stable counting sort by priority keeps positions increasing within a token */
            cnt = calloc((size_t)t->n_special + 1, sizeof *cnt);
            uint32_t *sorted = malloc(n_occ * sizeof *sorted);
            if (!cnt || !sorted) {
                free(sorted);
                goto part_nomem;
            }
            for (size_t k = 0; k < n_occ; k++) cnt[occ_pri[k] + 1]++;
            for (uint32_t k = 0; k < t->n_special; k++) cnt[k + 1] += cnt[k];
            for (size_t k = 0; k < n_occ; k++) sorted[cnt[occ_pri[k]]++] = (uint32_t)k;
            for (size_t q = 0; q < n_occ; q++) {
                size_t k = sorted[q];
                size_t p = occ[k], L = t->text[t->special[occ_pri[k]]].len;
                size_t j = p;
                while (j < p + L && !sc.claimed[j]) j++;
                if (j < p + L) continue; /* overlaps something taken earlier */
                memset(sc.claimed + p, 1, L);
                tok_at[p] = (int32_t)occ_pri[k] + 1;
            }
            free(sorted);
        }
        free(cnt);
        free(occ);
        free(occ_pri);
        /* walk: raw runs between claimed tokens */
        size_t i = 0;
        while (i < len) {
            if (tok_at[i]) {
                int32_t id = t->special[tok_at[i] - 1];
                if (idvec_push(&out, id)) {
                    free(tok_at);
                    goto nomem;
                }
                i += t->text[id].len;
                continue;
            }
            size_t j = i;
            while (j < len && !sc.claimed[j]) j++;
            if (encode_raw(t, &sc, s + i, j - i, byte_exact, heap_only, &out)) {
                free(tok_at);
                goto nomem;
            }
            i = j;
        }
        free(tok_at);
        goto done;
    part_nomem:
        free(cnt);
        free(occ);
        free(occ_pri);
        free(tok_at);
        goto nomem;
    }
    if (encode_raw(t, &sc, s, len, byte_exact, heap_only, &out)) goto nomem;
done:
    if ((flags & MOE_TOK_ADD_BOS) && t->add_eos && t->eos >= 0 && idvec_push(&out, t->eos)) goto nomem;
    *ids = out.v;
    *n_ids = out.n;
    out.v = NULL;
    goto cleanup;
nomem:
    st = MOE_ERR_NOMEM;
cleanup:
    free(out.v);
    moe_pretok_buf_free(&sc.pt);
    free(sc.word);
    free(sc.sym);
    free(sc.heap);
    free(sc.claimed);
    return st;
}

moe_status moe_tok_encode(const moe_tok *t, const char *text, size_t len, int add_bos,
                          int parse_special, int32_t **ids, size_t *n_ids) {
    unsigned f = (add_bos ? MOE_TOK_ADD_BOS : 0u) | (parse_special ? MOE_TOK_PARSE_SPECIAL : 0u);
    return moe_tok_encode_ex(t, text, len, f, ids, n_ids);
}

/* ---- decode ---- */

moe_status moe_tok_piece(const moe_tok *t, int32_t id, int special, const char **out, size_t *len) {
    *out = "";
    *len = 0;
    if (id < 0 || id >= t->n_vocab) return MOE_ERR_INVAL;
    int ty = t->type[id];
    if (!special && (ty == MOE_TOK_TYPE_CONTROL || ty == MOE_TOK_TYPE_UNKNOWN)) return MOE_OK;
    *out = t->piece + t->piece_off[id];
    *len = t->piece_off[id + 1] - t->piece_off[id];
    return MOE_OK;
}

moe_status moe_tok_decode(const moe_tok *t, const int32_t *ids, size_t n, int special, char **out,
                          size_t *len) {
    *out = NULL;
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        if (moe_tok_piece(t, ids[i], special, &p, &l)) return MOE_ERR_INVAL;
        total += l;
    }
    char *b = malloc(total + 1);
    if (!b) return MOE_ERR_NOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t l;
        moe_tok_piece(t, ids[i], special, &p, &l);
        memcpy(b + o, p, l);
        o += l;
    }
    b[o] = 0;
    *out = b;
    if (len) *len = o;
    return MOE_OK;
}

/* ---- streaming detokenizer ---- */

struct moe_tok_stream {
    const moe_tok *t; /* borrowed */
    unsigned flags;
    uint8_t held[4]; /* incomplete character held back */
    size_t n_held;
    char *buf; /* owned output */
    size_t cap;
};

moe_status moe_tok_stream_init(const moe_tok *t, unsigned flags, moe_tok_stream **out) {
    *out = NULL;
    if (!t) return MOE_ERR_INVAL;
    moe_tok_stream *s = calloc(1, sizeof *s);
    if (!s) return MOE_ERR_NOMEM;
    s->t = t;
    s->flags = flags;
    *out = s;
    return MOE_OK;
}

void moe_tok_stream_free(moe_tok_stream *s) {
    if (!s) return;
    free(s->buf);
    free(s);
}

void moe_tok_stream_reset(moe_tok_stream *s) { s->n_held = 0; }

/* Length of the valid UTF-8 character at p[0..n) (strict: no overlongs, surrogates or
 * > U+10FFFF): k > 0 complete; 0 if p is a valid but incomplete prefix; -k if the first
 * k bytes are a maximal invalid subpart (replaced by one U+FFFD). */
static int utf8_char(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    int need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int k = 1; k < need; k++) {
        if ((size_t)k >= n) return 0;
        uint8_t b = p[k];
        if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return -k;
    }
    return need;
}

static moe_status stream_emit(moe_tok_stream *s, const uint8_t *p, size_t n, int final,
                              const char **out, size_t *len) {
    size_t need = (s->n_held + n) * 3 + 4;
    if (need > s->cap) {
        char *b = realloc(s->buf, need);
        if (!b) return MOE_ERR_NOMEM;
        s->buf = b;
        s->cap = need;
    }
    /* work on held + p without copying p: small held prefix is handled by a temp buffer */
    uint8_t tmp[8];
    size_t o = 0;
    size_t i = 0;
    size_t total = s->n_held + n;
#define AT(k) ((k) < s->n_held ? s->held[k] : p[(k) - s->n_held])
    while (i < total) {
        uint8_t c = AT(i);
        if (c < 0x80) {
            s->buf[o++] = (char)c;
            i++;
            continue;
        }
        size_t m = total - i < 4 ? total - i : 4;
        for (size_t k = 0; k < m; k++) tmp[k] = AT(i + k);
        int r = utf8_char(tmp, m);
        if (r > 0) {
            memcpy(s->buf + o, tmp, (size_t)r);
            o += (size_t)r;
            i += (size_t)r;
        } else if (r == 0 && !final) {
            break; /* hold the incomplete tail */
        } else {
            memcpy(s->buf + o, "\xef\xbf\xbd", 3);
            o += 3;
            i += r == 0 ? m : (size_t)(-r);
        }
    }
    size_t rest = total - i;
    uint8_t nh[4];
    for (size_t k = 0; k < rest; k++) nh[k] = AT(i + k);
#undef AT
    memcpy(s->held, nh, rest);
    s->n_held = rest;
    *out = s->buf;
    *len = o;
    return MOE_OK;
}

moe_status moe_tok_stream_push(moe_tok_stream *s, int32_t id, const char **out, size_t *len) {
    *out = "";
    *len = 0;
    const char *p;
    size_t l;
    moe_status st = moe_tok_piece(s->t, id, (s->flags & MOE_TOK_STREAM_SPECIAL) != 0, &p, &l);
    if (st) return st;
    return stream_emit(s, (const uint8_t *)p, l, 0, out, len);
}

moe_status moe_tok_stream_flush(moe_tok_stream *s, const char **out, size_t *len) {
    return stream_emit(s, NULL, 0, 1, out, len);
}
