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

#define FW_BAR "\xef\xbd\x9c"
#define LOW8 "\xe2\x96\x81"
static const char k_template[] =
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<" FW_BAR "User" FW_BAR ">' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<" FW_BAR "Assistant" FW_BAR ">' + message['content'] + '<" FW_BAR
    "end" LOW8 "of" LOW8 "sentence" FW_BAR ">' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<" FW_BAR "Assistant" FW_BAR ">' }}{% endif %}";

/* ---- BPE vocabulary: the tokenizer module's learner (src/tok/vocab.c), on a sample of the text ---- */
moe_status moe_train_bpe(const char *text_path, uint64_t sample_bytes, int32_t n_vocab, const char *out_gguf,
                         char *err, size_t errlen) {
    moe_status st = MOE_ERR_NOMEM;
    moe_strvec tok = {0}, mer = {0};
    moe_gguf_writer *w = NULL;
    if (n_vocab < 512 || n_vocab > (1 << 20)) {
        snprintf(err, errlen, "train: vocab_size must be in 512..1048576");
        return MOE_ERR_INVAL;
    }
    size_t len = 0;
    errno = 0;
    char *text = read_norm(text_path, sample_bytes, &len);
    if (!text) return dfail(err, errlen, MOE_ERR_IO, "cannot read text", text_path);
    /* paragraph by paragraph; pieces over 64 bytes (runs of symbols) teach nothing */
    if ((st = moe_tok_bpe_learn(text, len, 1, 64, (size_t)n_vocab - 2, &tok, &mer))) goto out;
    if ((st = moe_gguf_writer_init(&w)) || (st = moe_gguf_writer_set_str(w, "general.name", "moekit BPE vocabulary")) ||
        (st = moe_tok_write_vocab_keys(w, &tok, tok.n, &mer, k_template)))
        goto out;
    st = moe_gguf_writer_write(w, out_gguf, NULL, NULL, NULL, NULL, err, errlen);
out:
    if (st == MOE_ERR_NOMEM && err && errlen) snprintf(err, errlen, "train: out of memory in the BPE trainer");
    moe_gguf_writer_free(w);
    moe_strvec_free(&tok);
    moe_strvec_free(&mer);
    free(text);
    return st;
}
