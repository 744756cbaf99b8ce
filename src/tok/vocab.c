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

int moe_strvec_add(moe_strvec *v, const char *s, size_t len) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? 2 * v->cap : 1024;
        char **a = realloc(v->s, cap * sizeof *a);
        if (!a) return -1;
        v->s = a;
        uint64_t *l = realloc(v->len, cap * sizeof *l);
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

void moe_strvec_free(moe_strvec *v) {
    for (size_t i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    free(v->len);
    memset(v, 0, sizeof *v);
}

static const char k_builtin_template[] =
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<" FW_BAR "User" FW_BAR ">' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<" FW_BAR "Assistant" FW_BAR ">' + message['content'] + '<" FW_BAR
    "end" LOW8 "of" LOW8 "sentence" FW_BAR ">' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<" FW_BAR "Assistant" FW_BAR ">' }}{% endif %}";

typedef struct bword {
    int32_t *ids; /* current symbols */
    uint32_t n, count;
} bword;

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Distinct pre-tokenized words of text with their counts, as byte-symbol ids (2 + byte). */
static moe_status learn_words(const char *text, size_t len, int by_paragraph, size_t max_word, bword **out,
                              size_t *n_out) {
    moe_status st = MOE_ERR_NOMEM;
    pt_buf pb;
    memset(&pb, 0, sizeof pb);
    bword *words = NULL;
    size_t n_words = 0, wcap = 0, hn = 1 << 12;
    uint32_t *wh = calloc(hn, sizeof *wh); /* word hash: index + 1 */
    uint8_t *buf = NULL;
    if (!wh) goto out;
    for (size_t p = 0; p < len;) {
        size_t q = len;
        if (by_paragraph) {
            const char *e = memmem(text + p, len - p, "\n\n", 2);
            if (e) q = (size_t)(e - text) + 2;
        }
        long nc = moe_pretok_decode(NULL, &pb, (const uint8_t *)text + p, q - p);
        size_t nb;
        if (nc < 0 || moe_pretok_split(PT_DEEPSEEK_V3, &pb, (size_t)nc, &nb)) goto out;
        for (size_t k = 0; k + 1 < nb; k++) {
            const uint8_t *wp = (const uint8_t *)text + p + pb.off[pb.bnd[k]];
            size_t wl = pb.off[pb.bnd[k + 1]] - pb.off[pb.bnd[k]];
            if (!wl || (max_word && wl > max_word)) continue; /* long runs of symbols teach nothing */
            size_t x = hash_bytes(wp, wl) & (hn - 1);
            for (; wh[x]; x = (x + 1) & (hn - 1)) {
                const bword *bw = &words[wh[x] - 1];
                size_t j = 0;
                if (bw->n == wl)
                    while (j < wl && bw->ids[j] == 2 + wp[j]) j++;
                if (bw->n == wl && j == wl) break;
            }
            if (wh[x]) {
                words[wh[x] - 1].count++;
                continue;
            }
            if (n_words == wcap) {
                wcap = wcap ? 2 * wcap : 1024;
                bword *nw = realloc(words, wcap * sizeof *nw);
                if (!nw) goto out;
                words = nw;
            }
            bword *bw = &words[n_words];
            bw->ids = malloc(wl * sizeof(int32_t));
            if (!bw->ids) goto out;
            for (size_t j = 0; j < wl; j++) bw->ids[j] = 2 + wp[j];
            bw->n = (uint32_t)wl;
            bw->count = 1;
            wh[x] = (uint32_t)++n_words;
            if (n_words * 2 > hn) { /* grow and rehash */
                size_t nhn = hn * 2;
                uint32_t *nwh = calloc(nhn, sizeof *nwh);
                uint8_t *nbuf = realloc(buf, wl > 4096 ? wl : 4096);
                if (!nwh || !nbuf) {
                    free(nwh);
                    if (nbuf) buf = nbuf;
                    goto out;
                }
                buf = nbuf;
                for (size_t i = 0; i < n_words; i++) {
                    if (words[i].n > 4096 && !(buf = realloc(buf, words[i].n))) {
                        free(nwh);
                        goto out;
                    }
                    for (uint32_t j = 0; j < words[i].n; j++) buf[j] = (uint8_t)(words[i].ids[j] - 2);
                    size_t y = hash_bytes(buf, words[i].n) & (nhn - 1);
                    while (nwh[y]) y = (y + 1) & (nhn - 1);
                    nwh[y] = (uint32_t)i + 1;
                }
                free(wh);
                wh = nwh;
                hn = nhn;
            }
        }
        p = q;
    }
    st = MOE_OK;
out:
    if (st) {
        for (size_t k = 0; k < n_words; k++) free(words[k].ids);
        free(words);
        words = NULL;
        n_words = 0;
    }
    free(buf);
    free(wh);
    moe_pretok_buf_free(&pb);
    *out = words;
    *n_out = n_words;
    return st;
}

moe_status moe_tok_bpe_learn(const char *text, size_t len, int by_paragraph, size_t max_word, size_t n_merged_to,
                             moe_strvec *tok, moe_strvec *mer) {
    static const char bos[] = "<" FW_BAR "begin" LOW8 "of" LOW8 "sentence" FW_BAR ">",
                      eos[] = "<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">",
                      user[] = "<" FW_BAR "User" FW_BAR ">", assistant[] = "<" FW_BAR "Assistant" FW_BAR ">";
    moe_status st = MOE_ERR_NOMEM;
    bword *words = NULL;
    size_t n_words = 0;
    char *tmp = NULL;
    struct pc {
        int32_t a, b;
        uint64_t c;
    } *ph = NULL;
    if (moe_strvec_add(tok, bos, sizeof bos - 1) || moe_strvec_add(tok, eos, sizeof eos - 1)) goto out;
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int ul;
        moe_tok_byte_to_unicode((uint8_t)b, u, &ul);
        if (moe_strvec_add(tok, (const char *)u, (size_t)ul)) goto out;
    }
    if ((st = learn_words(text, len, by_paragraph, max_word, &words, &n_words))) goto out;
    st = MOE_ERR_NOMEM;
    /* pair table: twice the pairs there are (capped), so a round only stops early on huge texts */
    size_t n_pairs = 0, phn = 1 << 10;
    for (size_t k = 0; k < n_words; k++) n_pairs += words[k].n ? words[k].n - 1 : 0;
    while (phn < 2 * n_pairs && phn < (1u << 18)) phn <<= 1;
    ph = malloc(phn * sizeof *ph);
    if (!ph) goto out;
    while (tok->n < n_merged_to) {
        for (size_t i = 0; i < phn; i++) ph[i].c = 0;
        struct pc best = {-1, -1, 0};
        size_t used = 0;
        for (size_t k = 0; k < n_words; k++) {
            const bword *bw = &words[k];
            for (uint32_t j = 0; j + 1 < bw->n; j++) {
                int32_t a = bw->ids[j], b = bw->ids[j + 1];
                size_t x = ((size_t)a * 0x9E3779B1u ^ (size_t)b * 0x85EBCA77u) & (phn - 1);
                while (ph[x].c && (ph[x].a != a || ph[x].b != b)) x = (x + 1) & (phn - 1);
                if (!ph[x].c) {
                    ph[x].a = a;
                    ph[x].b = b;
                    used++;
                }
                ph[x].c += bw->count;
                const struct pc *e = &ph[x];
                if (e->c > best.c || (e->c == best.c && (e->a < best.a || (e->a == best.a && e->b < best.b)))) best = *e;
            }
            if (used * 2 > phn) break; /* table half full: enough statistics this round */
        }
        if (!best.c) break; /* every word is one token */
        size_t la = tok->len[best.a], lb = tok->len[best.b];
        free(tmp);
        tmp = malloc(la + lb + 2);
        if (!tmp) goto out;
        memcpy(tmp, tok->s[best.a], la);
        tmp[la] = ' ';
        memcpy(tmp + la + 1, tok->s[best.b], lb);
        if (moe_strvec_add(mer, tmp, la + lb + 1)) goto out;
        memmove(tmp + la, tmp + la + 1, lb);
        int32_t r = -1;
        for (size_t k = 258; k < tok->n && r < 0; k++) /* a merge is never one byte symbol or a special */
            if (tok->len[k] == la + lb && !memcmp(tok->s[k], tmp, la + lb)) r = (int32_t)k;
        if (r < 0) {
            if (moe_strvec_add(tok, tmp, la + lb)) goto out;
            r = (int32_t)tok->n - 1;
        }
        for (size_t k = 0; k < n_words; k++) {
            bword *bw = &words[k];
            uint32_t o = 0;
            for (uint32_t j = 0; j < bw->n; j++) {
                if (j + 1 < bw->n && bw->ids[j] == best.a && bw->ids[j + 1] == best.b) {
                    bw->ids[o++] = r;
                    j++;
                } else {
                    bw->ids[o++] = bw->ids[j];
                }
            }
            bw->n = o;
        }
    }
    if (moe_strvec_add(tok, user, sizeof user - 1) || moe_strvec_add(tok, assistant, sizeof assistant - 1)) goto out;
    st = MOE_OK;
out:
    free(tmp);
    free(ph);
    for (size_t k = 0; k < n_words; k++) free(words[k].ids);
    free(words);
    return st;
}

/* Append [PAD<id>] tokens up to pad_to. */
static moe_status pad_tokens(moe_strvec *tok, uint32_t pad_to) {
    char name[32];
    while (tok->n < pad_to) {
        int k = snprintf(name, sizeof name, "[PAD%zu]", tok->n);
        if (moe_strvec_add(tok, name, (size_t)k)) return MOE_ERR_NOMEM;
    }
    return MOE_OK;
}

moe_status moe_tok_write_vocab_keys(moe_gguf_writer *w, const moe_strvec *tok, size_t n_real, const moe_strvec *mer,
                                    const char *chat_template) {
    moe_status st;
    int32_t *types = malloc((tok->n ? tok->n : 1) * sizeof *types);
    if (!types) return MOE_ERR_NOMEM;
    for (size_t i = 0; i < tok->n; i++)
        types[i] = i >= n_real ? MOE_TOK_TYPE_UNUSED
                   : (i < 2 || i >= n_real - 2) ? MOE_TOK_TYPE_CONTROL
                                                : MOE_TOK_TYPE_NORMAL;
    (void)((st = moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
           (st = moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "deepseek-v3")) ||
           (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok->s, tok->len, tok->n)) ||
           (st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, types, tok->n)) ||
           (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mer->s, mer->len, mer->n)) ||
           (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0)) ||
           (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1)) ||
           (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 1)) ||
           (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
           (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0)) ||
           (st = moe_gguf_writer_set_str(w, "tokenizer.chat_template",
                                          chat_template ? chat_template : k_builtin_template)));
    free(types);
    return st;
}

moe_status moe_tok_write_builtin_vocab(moe_gguf_writer *w, uint32_t pad_to, uint32_t *n_vocab) {
    moe_status st;
    moe_strvec tok = {0}, mer = {0};
    if (!w) return MOE_ERR_INVAL;
    /* the built-in text is small: one pre-tokenizer pass over all of it, no word-length limit */
    if ((st = moe_tok_bpe_learn(k_text, sizeof k_text - 1, 0, 0, BUILTIN_N_BPE, &tok, &mer))) goto cleanup;
    if (tok.n != BUILTIN_N_BPE + 2) { /* the text must teach enough merges */
        st = MOE_ERR_INTERNAL;
        goto cleanup;
    }
    size_t n_real = tok.n;
    if ((st = pad_tokens(&tok, pad_to)) || (st = moe_tok_write_vocab_keys(w, &tok, n_real, &mer, NULL))) goto cleanup;
    if (n_vocab) *n_vocab = (uint32_t)tok.n;
cleanup:
    moe_strvec_free(&tok);
    moe_strvec_free(&mer);
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
