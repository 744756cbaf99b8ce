/* moekit train: text → corpus file, and the BPE vocabulary trainer.
 *
 * Text normalisation (both): paragraphs are separated by blank lines; inside a paragraph
 * single line breaks (hard wrapping, as in Project Gutenberg files) become spaces; '\r' is
 * dropped; paragraphs are joined with "\n\n". Corpus file layout (little-endian):
 *   "MOETOK01" | u32 n_vocab | u64 n_tokens | u32 reserved | n_tokens × u32 ids
 * written to path.tmp, fsynced and renamed.
 *
 * BPE trainer: the deepseek-v3 pre-tokenizer splits the text into words (tok/pretok.c),
 * words are counted, then the most frequent adjacent pair of symbols is merged until the
 * vocabulary has n_vocab ids (ties: smallest left id, then right id — deterministic). Ids are
 * laid out as the built-in vocabulary (src/tok/vocab.c): 0 BOS, 1 EOS, 2..257 the 256 byte
 * symbols, merges, <｜User｜>, <｜Assistant｜> (CONTROL). Each iteration recounts pairs over the
 * distinct words (O(symbols) per merge): a few MB of text and 8k merges take tens of seconds. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe/gguf.h"
#include "moe/tok.h"
#include "moe/train.h"
#include "tok/tok_impl.h"

#define FW_BAR "\xef\xbd\x9c"
#define LOW8 "\xe2\x96\x81"

static moe_status dfail(char *err, size_t errlen, moe_status st, const char *msg, const char *path) {
    if (err && errlen) snprintf(err, errlen, "train: %s '%s'%s%s", msg, path, errno ? ": " : "", errno ? strerror(errno) : "");
    return st;
}

/* Read up to max bytes (0 = all) of a file, normalised as described above. *len out. */
static char *read_norm(const char *path, uint64_t max, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, n = 0;
    char *out = malloc(cap);
    int nl = 0, c; /* pending newlines */
    while (out && (c = fgetc(f)) != EOF) {
        if (c == '\r') continue;
        if (c == '\n') {
            nl++;
            continue;
        }
        if (n + 4 >= cap) {
            char *o = realloc(out, cap *= 2);
            if (!o) {
                free(out);
                out = NULL;
                break;
            }
            out = o;
        }
        if (nl) {
            if (n > 0) {
                if (nl >= 2) {
                    out[n++] = '\n';
                    out[n++] = '\n';
                } else if (c != ' ' && out[n - 1] != ' ') {
                    out[n++] = ' ';
                }
            }
            nl = 0;
        }
        out[n++] = (char)c;
        if (max && n >= max && c == ' ') break;
    }
    fclose(f);
    if (out) {
        out[n] = 0;
        *len = n;
    }
    return out;
}

moe_status moe_train_tokenize_file(const char *model_gguf, const char *text_path, const char *out_path,
                                   uint64_t *n_tokens, char *err, size_t errlen) {
    moe_gguf *g = NULL;
    moe_tok *tk = NULL;
    char *text = NULL, tmp[1100];
    uint32_t *ids = NULL;
    FILE *f = NULL;
    moe_status st = moe_gguf_open(model_gguf, &g, err, errlen);
    if (st) return st;
    if ((st = moe_tok_init_from_gguf(g, &tk, err, errlen))) goto out;
    size_t len = 0;
    errno = 0;
    text = read_norm(text_path, 0, &len);
    if (!text) {
        st = dfail(err, errlen, MOE_ERR_IO, "cannot read text", text_path);
        goto out;
    }
    size_t cap = len / 2 + 1024, n = 0;
    ids = malloc(cap * sizeof *ids);
    if (!ids) {
        st = MOE_ERR_NOMEM;
        goto out;
    }
    /* encode paragraph by paragraph (keeps the tokenizer's buffers small), "\n\n" kept at the end of each */
    for (size_t p = 0; p < len;) {
        char *e = strstr(text + p, "\n\n");
        size_t q = e ? (size_t)(e - text) + 2 : len;
        int32_t *pid;
        size_t np;
        if ((st = moe_tok_encode_ex(tk, text + p, q - p, MOE_TOK_BYTE_EXACT, &pid, &np))) goto out;
        if (n + np > cap) {
            cap = (n + np) * 2;
            uint32_t *ni = realloc(ids, cap * sizeof *ids);
            if (!ni) {
                free(pid);
                st = MOE_ERR_NOMEM;
                goto out;
            }
            ids = ni;
        }
        for (size_t i = 0; i < np; i++) ids[n++] = (uint32_t)pid[i];
        free(pid);
        p = q;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
    errno = 0;
    f = fopen(tmp, "wb");
    if (!f) {
        st = dfail(err, errlen, MOE_ERR_IO, "cannot write", tmp);
        goto out;
    }
    uint32_t nv = (uint32_t)moe_tok_n_vocab(tk), res = 0;
    uint64_t n64 = n;
    if (fwrite("MOETOK01", 1, 8, f) != 8 || fwrite(&nv, 4, 1, f) != 1 || fwrite(&n64, 8, 1, f) != 1 ||
        fwrite(&res, 4, 1, f) != 1 || (n && fwrite(ids, 4, n, f) != n) || fflush(f) || fsync(fileno(f))) {
        st = dfail(err, errlen, MOE_ERR_IO, "cannot write", tmp);
        goto out;
    }
    fclose(f);
    f = NULL;
    if (rename(tmp, out_path)) {
        st = dfail(err, errlen, MOE_ERR_IO, "cannot rename to", out_path);
        goto out;
    }
    if (n_tokens) *n_tokens = n;
out:
    if (f) fclose(f);
    free(ids);
    free(text);
    moe_tok_free(tk);
    moe_gguf_close(g);
    return st;
}

/* ---- BPE trainer ---- */
typedef struct {
    int32_t *ids;
    uint32_t n, count;
} bword;

typedef struct {
    char **s;
    uint32_t *len;
    size_t n, cap;
} svec;

static int svec_add(svec *v, const char *s, size_t len) {
    if (v->n == v->cap) {
        size_t c = v->cap ? 2 * v->cap : 1024;
        char **a = realloc(v->s, c * sizeof *a);
        uint32_t *l = a ? realloc(v->len, c * sizeof *l) : NULL;
        if (a) v->s = a;
        if (!a || !l) return -1;
        v->len = l;
        v->cap = c;
    }
    char *d = malloc(len + 1);
    if (!d) return -1;
    memcpy(d, s, len);
    d[len] = 0;
    v->s[v->n] = d;
    v->len[v->n++] = (uint32_t)len;
    return 0;
}

static void svec_free(svec *v) {
    for (size_t i = 0; i < v->n; i++) free(v->s[i]);
    free(v->s);
    free(v->len);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static const char k_template[] =
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<" FW_BAR "User" FW_BAR ">' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<" FW_BAR "Assistant" FW_BAR ">' + message['content'] + '<" FW_BAR
    "end" LOW8 "of" LOW8 "sentence" FW_BAR ">' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<" FW_BAR "Assistant" FW_BAR ">' }}{% endif %}";

moe_status moe_train_bpe(const char *text_path, uint64_t sample_bytes, int32_t n_vocab, const char *out_gguf,
                         char *err, size_t errlen) {
    moe_status st = MOE_ERR_NOMEM;
    pt_buf pb;
    memset(&pb, 0, sizeof pb);
    svec tok = {0}, mer = {0};
    bword *words = NULL;
    size_t n_words = 0, wcap = 0, hn = 0;
    uint32_t *wh = NULL; /* word hash: index + 1 */
    char *text = NULL, *tmp = NULL;
    int32_t *types = NULL;
    struct pc {
        int32_t a, b;
        uint64_t c;
    } *ph = NULL;
    size_t phn = 0;
    moe_gguf_writer *w = NULL;
    if (n_vocab < 512 || n_vocab > (1 << 20)) {
        snprintf(err, errlen, "train: vocab_size must be in 512..1048576");
        return MOE_ERR_INVAL;
    }
    size_t len = 0;
    errno = 0;
    text = read_norm(text_path, sample_bytes, &len);
    if (!text) return dfail(err, errlen, MOE_ERR_IO, "cannot read text", text_path);
    if (svec_add(&tok, "<" FW_BAR "begin" LOW8 "of" LOW8 "sentence" FW_BAR ">", strlen("<" FW_BAR "begin" LOW8 "of" LOW8 "sentence" FW_BAR ">")) ||
        svec_add(&tok, "<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">", strlen("<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">")))
        goto out;
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        int ul;
        moe_tok_byte_to_unicode((uint8_t)b, u, &ul);
        if (svec_add(&tok, (const char *)u, (size_t)ul)) goto out;
    }
    /* distinct words with counts (paragraph by paragraph through the pre-tokenizer) */
    hn = 1 << 16;
    wh = calloc(hn, sizeof *wh);
    if (!wh) goto out;
    for (size_t p = 0; p < len;) {
        char *e = strstr(text + p, "\n\n");
        size_t q = e ? (size_t)(e - text) + 2 : len;
        long nc = moe_pretok_decode(NULL, &pb, (const uint8_t *)text + p, q - p);
        size_t nb;
        if (nc < 0 || moe_pretok_split(PT_DEEPSEEK_V3, &pb, (size_t)nc, &nb)) goto out;
        for (size_t k = 0; k + 1 < nb; k++) {
            const uint8_t *wp = (const uint8_t *)text + p + pb.off[pb.bnd[k]];
            size_t wl = pb.off[pb.bnd[k + 1]] - pb.off[pb.bnd[k]];
            if (!wl || wl > 64) continue; /* very long pieces (runs of symbols) teach nothing */
            size_t x = hash_bytes(wp, wl) & (hn - 1);
            for (;;) {
                uint32_t wi = wh[x];
                if (!wi) break;
                bword *bw = &words[wi - 1];
                if (bw->n == wl) {
                    size_t j = 0;
                    while (j < wl && bw->ids[j] == 2 + wp[j]) j++;
                    if (j == wl) break;
                }
                x = (x + 1) & (hn - 1);
            }
            if (wh[x]) {
                words[wh[x] - 1].count++;
                continue;
            }
            if (n_words == wcap) {
                wcap = wcap ? 2 * wcap : 4096;
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
                if (!nwh) goto out;
                for (size_t i = 0; i < n_words; i++) {
                    uint8_t buf[64];
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
    /* merges */
    phn = 1 << 18;
    ph = malloc(phn * sizeof *ph);
    if (!ph) goto out;
    while ((int32_t)tok.n < n_vocab - 2) {
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
            if (used * 2 > phn) break; /* table nearly full: enough statistics this round */
        }
        if (!best.c) break;
        size_t la = tok.len[best.a], lb = tok.len[best.b];
        free(tmp);
        tmp = malloc(la + lb + 2);
        if (!tmp) goto out;
        memcpy(tmp, tok.s[best.a], la);
        tmp[la] = ' ';
        memcpy(tmp + la + 1, tok.s[best.b], lb);
        if (svec_add(&mer, tmp, la + lb + 1)) goto out;
        memmove(tmp + la, tmp + la + 1, lb);
        int32_t r = -1;
        for (size_t k = 258; k < tok.n && r < 0; k++)
            if (tok.len[k] == la + lb && !memcmp(tok.s[k], tmp, la + lb)) r = (int32_t)k;
        if (r < 0) {
            if (svec_add(&tok, tmp, la + lb)) goto out;
            r = (int32_t)tok.n - 1;
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
    if (svec_add(&tok, "<" FW_BAR "User" FW_BAR ">", strlen("<" FW_BAR "User" FW_BAR ">")) ||
        svec_add(&tok, "<" FW_BAR "Assistant" FW_BAR ">", strlen("<" FW_BAR "Assistant" FW_BAR ">")))
        goto out;
    types = malloc(tok.n * sizeof *types);
    if (!types) goto out;
    for (size_t i = 0; i < tok.n; i++) types[i] = (i < 2 || i >= tok.n - 2) ? MOE_TOK_TYPE_CONTROL : MOE_TOK_TYPE_NORMAL;
    uint64_t *lens = malloc(tok.n * sizeof *lens), *mlens = malloc((mer.n + 1) * sizeof *mlens);
    if (!lens || !mlens) {
        free(lens);
        free(mlens);
        goto out;
    }
    for (size_t i = 0; i < tok.n; i++) lens[i] = tok.len[i];
    for (size_t i = 0; i < mer.n; i++) mlens[i] = mer.len[i];
    if ((st = moe_gguf_writer_init(&w)) || (st = moe_gguf_writer_set_str(w, "general.name", "moekit BPE vocabulary")) ||
        (st = moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2")) ||
        (st = moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "deepseek-v3")) ||
        (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok.s, lens, tok.n)) ||
        (st = moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, types, tok.n)) ||
        (st = moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mer.s, mlens, mer.n)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1)) ||
        (st = moe_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", 1)) ||
        (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1)) ||
        (st = moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0)) ||
        (st = moe_gguf_writer_set_str(w, "tokenizer.chat_template", k_template))) {
        free(lens);
        free(mlens);
        goto out;
    }
    free(lens);
    free(mlens);
    st = moe_gguf_writer_write(w, out_gguf, NULL, NULL, NULL, NULL, err, errlen);
out:
    if (st == MOE_ERR_NOMEM && err && errlen) snprintf(err, errlen, "train: out of memory in the BPE trainer");
    moe_gguf_writer_free(w);
    free(types);
    free(tmp);
    free(ph);
    free(wh);
    for (size_t k = 0; k < n_words; k++) free(words[k].ids);
    free(words);
    svec_free(&tok);
    svec_free(&mer);
    free(text);
    moe_pretok_buf_free(&pb);
    return st;
}
