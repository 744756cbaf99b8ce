/* moekit tok: vocabularies for new GGUF files (moe init).
 *
 * The built-in vocabulary is a byte-level BPE learned, at call time and deterministically, by
 * a plain BPE trainer over the English text below (pre-tokenized with the deepseek-v3 rules):
 *   id 0 <｜begin▁of▁sentence｜> CONTROL, 1 <｜end▁of▁sentence｜> CONTROL,
 *   2..257 the 256 byte symbols (byte b -> id 2 + b, in the GPT-2 byte-level alphabet),
 *   258..509 the merge results, 510 <｜User｜>, 511 <｜Assistant｜> (CONTROL),
 *   then [PAD<id>] UNUSED up to pad_to.
 * The trainer picks the most frequent adjacent pair (ties: smallest left id, then right id),
 * so the same build always writes the same vocabulary. Every merge's parts and result are
 * tokens and token texts are unique. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_impl.h"

#define FW_BAR "\xef\xbd\x9c"
#define LOW8 "\xe2\x96\x81"

#define BUILTIN_N_BPE 510 /* specials at the front + bytes + merges; + 2 chat specials = 512 */

static const char k_text[] =
    "The quick brown fox jumps over the lazy dog. A language model reads text as a sequence of "
    "tokens, and every token is a piece of a word, a whole word, a number or a mark of "
    "punctuation. Before the model sees anything, the tokenizer splits the text into words, "
    "turns each word into bytes, and then joins the most common pairs of bytes into larger "
    "pieces, one merge at a time, in the order in which they were learned.\n\n"
    "This small vocabulary exists so that a model made from random weights can still speak. "
    "It was learned from the paragraphs you are reading now, which is why the words of this "
    "text are cheap and every other word is spelled out from smaller parts. Nothing is lost: "
    "any string of bytes can be written with the two hundred and fifty six byte symbols, so "
    "encoding and decoding give back exactly what went in.\n\n"
    "A mixture of experts is a layer in which a router sends each token to a few of many "
    "small networks. The experts that are not chosen do no work for that token, so the model "
    "can hold a great deal of knowledge while the cost of each step stays small. The router "
    "learns which expert is good at what; some experts like numbers, others like code, and "
    "others like the plain words of everyday speech. When many requests arrive at the same "
    "time, the server groups the tokens by expert, so that the weights of each expert are "
    "read from memory once per step, however many people are waiting for an answer.\n\n"
    "Attention lets every token look back at the tokens before it. In the latent form used "
    "here, the keys and values are squeezed into a short vector for each position, which "
    "keeps the cache small enough that long conversations still fit in memory. The position "
    "of a token is told to the model by rotating pairs of numbers through an angle that "
    "grows with the distance from the start of the text.\n\n"
    "To chat with the model, the messages of the user and of the assistant are written one "
    "after the other with special markers between them, and the model is asked to continue "
    "the text after the last marker of the assistant. It stops when it writes the end of "
    "sentence token. Good tools should be simple to use, quick to start, and honest about "
    "what they measure: the number of tokens per second, the memory that was used, and the "
    "time that passed between the question and the first word of the answer.\n\n"
    "def add(a, b):\n    return a + b\n\nfor (int i = 0; i < n; i++) {\n    sum += x[i] * 2;\n}\n"
    "{\"name\": \"moekit\", \"version\": 1, \"tags\": [\"moe\", \"gguf\"]}\n"
    "Numbers like 3.14, 2024, 100% and 1,000,000 appear in text as well, and so do questions? "
    "Yes! Also quotes, 'single' and \"double\", and dashes - like this - or lists: one, two, "
    "three. The end.\n";

typedef struct tvec {
    char **s;
    size_t *len;
    size_t n, cap;
} tvec;

static int tvec_add(tvec *v, const char *s, size_t len) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 1024;
        char **a = realloc(v->s, cap * sizeof *a);
        if (!a) return -1;
        v->s = a;
        size_t *l = realloc(v->len, cap * sizeof *l);
        if (!l) return -1;
        v->len = l;
        v->cap = cap;
    }
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, s, len);
    c[len] = 0;
    v->s[v->n] = c;
    v->len[v->n] = len;
    v->n++;
    return 0;
}

static void tvec_free(tvec *v) {
    for (size_t i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    free(v->len);
    memset(v, 0, sizeof *v);
}

typedef struct tword {
    int32_t *ids; /* current symbols */
    size_t n;
    uint32_t count;
} tword;

static const char k_builtin_template[] =
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<" FW_BAR "User" FW_BAR ">' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<" FW_BAR "Assistant" FW_BAR ">' + message['content'] + '<" FW_BAR
    "end" LOW8 "of" LOW8 "sentence" FW_BAR ">' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<" FW_BAR "Assistant" FW_BAR ">' }}{% endif %}";

/* Train; fills tokens (ids 0..) and merges ("A B"). */
static moe_status train_builtin(tvec *tok, tvec *mer) {
    moe_status st = MOE_ERR_NOMEM;
    pt_buf pb;
    memset(&pb, 0, sizeof pb);
    tword *words = NULL;
    size_t n_words = 0;
    char *tmp = NULL;

    if (tvec_add(tok, "<" FW_BAR "begin" LOW8 "of" LOW8 "sentence" FW_BAR ">", strlen("<" FW_BAR "begin" LOW8 "of" LOW8 "sentence" FW_BAR ">")) ||
        tvec_add(tok, "<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">", strlen("<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">")))
        goto cleanup;
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int ul;
        moe_tok_byte_to_unicode((uint8_t)b, u, &ul);
        if (tvec_add(tok, (const char *)u, (size_t)ul)) goto cleanup;
    }

    /* words of the text, deduplicated with counts (quadratic dedup is fine: ~600 words) */
    size_t len = sizeof k_text - 1;
    long nc = moe_pretok_decode(NULL, &pb, (const uint8_t *)k_text, len);
    size_t nb;
    if (nc < 0 || moe_pretok_split(PT_DEEPSEEK_V3, &pb, (size_t)nc, &nb)) goto cleanup;
    words = calloc(nb, sizeof *words);
    if (!words) goto cleanup;
    for (size_t p = 0; p + 1 < nb; p++) {
        const uint8_t *w = (const uint8_t *)k_text + pb.off[pb.bnd[p]];
        size_t wl = pb.off[pb.bnd[p + 1]] - pb.off[pb.bnd[p]];
        size_t k;
        for (k = 0; k < n_words; k++) {
            if (words[k].n != wl) continue;
            size_t j = 0;
            while (j < wl && words[k].ids[j] == 2 + w[j]) j++;
            if (j == wl) break;
        }
        if (k < n_words) {
            words[k].count++;
            continue;
        }
        words[n_words].ids = malloc(wl * sizeof(int32_t));
        if (!words[n_words].ids) goto cleanup;
        for (size_t j = 0; j < wl; j++) words[n_words].ids[j] = 2 + w[j];
        words[n_words].n = wl;
        words[n_words].count = 1;
        n_words++;
    }

    while (tok->n < BUILTIN_N_BPE) {
        /* most frequent pair; counts kept in a small open-addressing table */
        size_t hn = 1 << 14;
        struct pc {
            int32_t a, b;
            uint32_t c;
        } *h = calloc(hn, sizeof *h);
        if (!h) goto cleanup;
        struct pc best = {-1, -1, 0};
        for (size_t k = 0; k < n_words; k++) {
            for (size_t j = 0; j + 1 < words[k].n; j++) {
                int32_t a = words[k].ids[j], b = words[k].ids[j + 1];
                size_t x = ((size_t)a * 0x9E3779B1u ^ (size_t)b * 0x85EBCA77u) & (hn - 1);
                while (h[x].c && (h[x].a != a || h[x].b != b)) x = (x + 1) & (hn - 1);
                h[x].a = a;
                h[x].b = b;
                h[x].c += words[k].count;
                struct pc *e = &h[x];
                if (e->c > best.c || (e->c == best.c && (e->a < best.a || (e->a == best.a && e->b < best.b))))
                    best = *e;
            }
        }
        free(h);
        if (!best.c) break; /* every word is one token: the text is too short */
        size_t la = tok->len[best.a], lb = tok->len[best.b];
        free(tmp);
        tmp = malloc(la + lb + 2);
        if (!tmp) goto cleanup;
        memcpy(tmp, tok->s[best.a], la);
        tmp[la] = ' ';
        memcpy(tmp + la + 1, tok->s[best.b], lb);
        if (tvec_add(mer, tmp, la + lb + 1)) goto cleanup;
        memmove(tmp + la, tmp + la + 1, lb);
        int32_t r = -1;
        for (size_t k = 0; k < tok->n; k++)
            if (tok->len[k] == la + lb && !memcmp(tok->s[k], tmp, la + lb)) r = (int32_t)k;
        if (r < 0) {
            if (tvec_add(tok, tmp, la + lb)) goto cleanup;
            r = (int32_t)tok->n - 1;
        }
        for (size_t k = 0; k < n_words; k++) {
            size_t o = 0;
            for (size_t j = 0; j < words[k].n; j++) {
                if (j + 1 < words[k].n && words[k].ids[j] == best.a && words[k].ids[j + 1] == best.b) {
                    words[k].ids[o++] = r;
                    j++;
                } else {
                    words[k].ids[o++] = words[k].ids[j];
                }
            }
            words[k].n = o;
        }
    }
    if (tok->n < BUILTIN_N_BPE) {
        st = MOE_ERR_INTERNAL;
        goto cleanup;
    }
    if (tvec_add(tok, "<" FW_BAR "User" FW_BAR ">", strlen("<" FW_BAR "User" FW_BAR ">")) ||
        tvec_add(tok, "<" FW_BAR "Assistant" FW_BAR ">", strlen("<" FW_BAR "Assistant" FW_BAR ">")))
        goto cleanup;
    st = MOE_OK;
cleanup:
    free(tmp);
    for (size_t k = 0; k < n_words; k++) free(words[k].ids);
    free(words);
    moe_pretok_buf_free(&pb);
    return st;
}

/* Append [PAD<id>] tokens up to pad_to. */
static moe_status pad_tokens(tvec *tok, uint32_t pad_to) {
    char name[32];
    while (tok->n < pad_to) {
        int k = snprintf(name, sizeof name, "[PAD%zu]", tok->n);
        if (tvec_add(tok, name, (size_t)k)) return MOE_ERR_NOMEM;
    }
    return MOE_OK;
}

moe_status moe_tok_write_builtin_vocab(moe_gguf_writer *w, uint32_t pad_to, uint32_t *n_vocab) {
    moe_status st;
    tvec tok = {0}, mer = {0};
    int32_t *types = NULL;
    if (!w) return MOE_ERR_INVAL;
    if ((st = train_builtin(&tok, &mer))) goto cleanup;
    size_t n_real = tok.n;
    if ((st = pad_tokens(&tok, pad_to))) goto cleanup;
    types = malloc(tok.n * sizeof *types);
    if (!types) {
        st = MOE_ERR_NOMEM;
        goto cleanup;
    }
    for (size_t i = 0; i < tok.n; i++)
        types[i] = i >= n_real ? MOE_TOK_TYPE_UNUSED
                   : (i < 2 || i >= n_real - 2) ? MOE_TOK_TYPE_CONTROL
                                                : MOE_TOK_TYPE_NORMAL;
    if ((st = moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (st = moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "deepseek-v3")) ||
        (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok.s, tok.len, tok.n)) ||
        (st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, types, tok.n)) ||
        (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mer.s, mer.len, mer.n)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 1)) ||
        (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
        (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0)) ||
        (st = moe_gguf_writer_set_str(w, "tokenizer.chat_template", k_builtin_template)))
        goto cleanup;
    if (n_vocab) *n_vocab = (uint32_t)tok.n;
cleanup:
    free(types);
    tvec_free(&tok);
    tvec_free(&mer);
    return st;
}

typedef struct copy_ctx {
    int padding;
} copy_ctx;

static int skip_key(const char *key, void *ud) {
    const copy_ctx *c = ud;
    if (strncmp(key, "tokenizer.", 10)) return 1;
    if (c->padding && (!strcmp(key, "tokenizer.ggml.tokens") || !strcmp(key, "tokenizer.ggml.token_type") ||
                       !strcmp(key, "tokenizer.ggml.scores")))
        return 1;
    return 0;
}

moe_status moe_tok_copy_vocab(moe_gguf_writer *w, const moe_gguf *src, uint32_t pad_to, uint32_t *n_vocab) {
    moe_status st;
    int64_t ki;
    uint64_t n;
    char **strs = NULL;
    uint64_t *lens = NULL;
    int32_t *types = NULL;
    float *scores = NULL;
    char *names = NULL;
    if (!w || !src) return MOE_ERR_INVAL;
    st = moe_gguf_get_arr(src, "tokenizer.ggml.tokens", MOE_GGUF_TYPE_STRING, &ki, &n);
    if (st) return st == MOE_ERR_NOTFOUND ? MOE_ERR_FORMAT : st;
    copy_ctx cc = {pad_to > n};
    if ((st = moe_gguf_writer_copy_kv(w, src, skip_key, &cc))) return st;
    if (!cc.padding) {
        if (n_vocab) *n_vocab = (uint32_t)n;
        return MOE_OK;
    }
    st = MOE_ERR_NOMEM;
    strs = malloc(pad_to * sizeof *strs);
    lens = malloc(pad_to * sizeof *lens);
    types = malloc(pad_to * sizeof *types);
    names = malloc((size_t)(pad_to - n) * 24);
    if (!strs || !lens || !types || !names) goto cleanup;
    int64_t ti;
    uint64_t tn;
    const uint8_t *tp = NULL;
    if (!moe_gguf_get_arr(src, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, &ti, &tn) && tn == n)
        tp = moe_gguf_arr_data(src, ti);
    for (uint64_t i = 0; i < pad_to; i++) {
        if (i < n) {
            moe_str s = moe_gguf_arr_str(src, ki, i);
            strs[i] = (char *)s.ptr;
            lens[i] = s.len;
            if (tp) memcpy(&types[i], tp + 4 * i, 4);
            else types[i] = MOE_TOK_TYPE_NORMAL;
        } else {
            char *nm = names + (i - n) * 24;
            lens[i] = (uint64_t)snprintf(nm, 24, "[PAD%llu]", (unsigned long long)i);
            strs[i] = nm;
            types[i] = MOE_TOK_TYPE_UNUSED;
        }
    }
    if ((st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)strs, lens, pad_to)) ||
        (st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, types, pad_to)))
        goto cleanup;
    int64_t si;
    uint64_t sn;
    if (!moe_gguf_get_arr(src, "tokenizer.ggml.scores", MOE_GGUF_TYPE_FLOAT32, &si, &sn) && sn == n) {
        scores = calloc(pad_to, sizeof *scores);
        if (!scores) {
            st = MOE_ERR_NOMEM;
            goto cleanup;
        }
        memcpy(scores, moe_gguf_arr_data(src, si), n * sizeof *scores);
        if ((st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.scores", MOE_GGUF_TYPE_FLOAT32, scores, pad_to)))
            goto cleanup;
    }
    if (n_vocab) *n_vocab = pad_to;
    st = MOE_OK;
cleanup:
    free(strs);
    free(lens);
    free(types);
    free(scores);
    free(names);
    return st;
}
