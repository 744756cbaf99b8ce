/* tok: the DeepSeek-V3 reference vectors (shared/vectors/tokenizer/deepseek-v3.public.jsonl)
 * and the prompts of the tiny real-vocabulary model.
 *
 * Every line: encode(text, bos, special) must equal `ids` exactly; decode(ids, special=1) must
 * equal pieces_concat (or pieces_concat_hex); streaming the ids one at a time must give only
 * complete UTF-8 chunks whose concatenation equals pieces_concat when that is valid UTF-8.
 * Prints how many cases (lines) passed. */
#include <jansson.h>
#include <stdint.h>

#include "moe/tok.h"
#include "testutil.h"

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static char *unhex(const char *h, size_t *n) {
    size_t l = strlen(h);
    char *b = malloc(l / 2 + 1);
    for (size_t i = 0; i + 1 < l; i += 2) b[i / 2] = (char)(hexval(h[i]) * 16 + hexval(h[i + 1]));
    *n = l / 2;
    b[*n] = 0;
    return b;
}

/* strict UTF-8 validity */
static int valid_utf8(const unsigned char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need;
        unsigned lo = 0x80, hi = 0xBF;
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
            return 0;
        if (i + (size_t)need > n) return 0;
        for (int k = 1; k < need; k++) {
            unsigned b = p[i + (size_t)k];
            if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
        }
        i += (size_t)need;
    }
    return 1;
}

static void print_ids(const char *what, const int32_t *v, size_t n) {
    fprintf(stderr, "  %s:", what);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", v[i]);
    fprintf(stderr, "%s\n", n > 40 ? " ..." : "");
}

int main(void) {
    char path[1024], err[256];
    moe_gguf *g = NULL;
    moe_tok *t = NULL;
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", path, sizeof path);
    moe_status st = moe_gguf_open(path, &g, err, sizeof err);
    CHECK(st == MOE_OK, "open %s: %s", path, err);
    if (st) return test_done();
    st = moe_tok_init_from_gguf(g, &t, err, sizeof err);
    CHECK(st == MOE_OK, "tok init: %s", err);
    if (st) return test_done();
    CHECK(moe_tok_n_vocab(t) == 129280, "n_vocab %d", moe_tok_n_vocab(t));
    CHECK(moe_tok_bos(t) == 0 && moe_tok_eos(t) == 1, "bos/eos");
    CHECK(moe_tok_is_eog(t, 1) && !moe_tok_is_eog(t, 0), "eog");
    CHECK(!strcmp(moe_tok_pre(t), "deepseek-v3"), "pre");

    tu_shared("vectors/tokenizer/deepseek-v3.public.jsonl", path, sizeof path);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return test_done();
    char *line = NULL;
    size_t cap = 0;
    ssize_t ll;
    int n_cases = 0, n_ok = 0, n_enc_ok = 0, n_dec_ok = 0, n_stream_ok = 0;
    moe_tok_stream *s = NULL;
    moe_tok_stream_init(t, MOE_TOK_STREAM_SPECIAL, &s);
    while ((ll = getline(&line, &cap, f)) > 0) {
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)ll, JSON_ALLOW_NUL, &je);
        if (!o) fprintf(stderr, "bad json line: %s\n", je.text);
        if (!o) continue;
        n_cases++;
        const char *id = json_string_value(json_object_get(o, "id"));
        size_t tl;
        char *text;
        json_t *jt = json_object_get(o, "text");
        if (jt) {
            tl = json_string_length(jt);
            text = malloc(tl + 1);
            memcpy(text, json_string_value(jt), tl);
            text[tl] = 0;
        } else {
            text = unhex(json_string_value(json_object_get(o, "text_hex")), &tl);
        }
        int bos = json_is_true(json_object_get(o, "bos"));
        int special = json_is_true(json_object_get(o, "special"));
        json_t *jids = json_object_get(o, "ids");
        size_t n_exp = json_array_size(jids);
        int32_t *exp = malloc((n_exp + 1) * sizeof *exp);
        for (size_t i = 0; i < n_exp; i++) exp[i] = (int32_t)json_integer_value(json_array_get(jids, i));
        size_t pl;
        char *pieces;
        json_t *jp = json_object_get(o, "pieces_concat");
        if (jp) {
            pl = json_string_length(jp);
            pieces = malloc(pl + 1);
            memcpy(pieces, json_string_value(jp), pl);
        } else {
            pieces = unhex(json_string_value(json_object_get(o, "pieces_concat_hex")), &pl);
        }

        int32_t *ids = NULL;
        size_t n_ids = 0;
        st = moe_tok_encode(t, text, tl, bos, special, &ids, &n_ids);
        int enc_ok = st == MOE_OK && n_ids == n_exp && (n_ids == 0 || !memcmp(ids, exp, n_ids * sizeof *ids));
        if (!enc_ok) {
            fprintf(stderr, "FAIL encode %s bos=%d special=%d\n", id, bos, special);
            print_ids("want", exp, n_exp);
            print_ids("got ", ids, n_ids);
        }
        char *dec = NULL;
        size_t dl = 0;
        st = moe_tok_decode(t, exp, n_exp, 1, &dec, &dl);
        int dec_ok = st == MOE_OK && dl == pl && !memcmp(dec, pieces, pl);
        if (!dec_ok) fprintf(stderr, "FAIL decode %s\n", id);
        /* streaming */
        int stream_ok = 1;
        char *acc = malloc(pl * 3 + 16);
        size_t al = 0;
        moe_tok_stream_reset(s);
        for (size_t i = 0; i <= n_exp; i++) {
            const char *o2;
            size_t l2;
            if (i < n_exp) moe_tok_stream_push(s, exp[i], &o2, &l2);
            else moe_tok_stream_flush(s, &o2, &l2);
            if (!valid_utf8((const unsigned char *)o2, l2)) stream_ok = 0;
            memcpy(acc + al, o2, l2);
            al += l2;
        }
        if (valid_utf8((const unsigned char *)pieces, pl) && (al != pl || memcmp(acc, pieces, pl))) stream_ok = 0;
        if (!stream_ok) fprintf(stderr, "FAIL stream %s\n", id);
        n_enc_ok += enc_ok;
        n_dec_ok += dec_ok;
        n_stream_ok += stream_ok;
        n_ok += enc_ok && dec_ok && stream_ok;
        free(acc);
        free(dec);
        free(ids);
        free(exp);
        free(pieces);
        free(text);
        json_decref(o);
    }
    free(line);
    fclose(f);
    moe_tok_stream_free(s);
    printf("vectors: %d/%d cases passed (encode %d, decode %d, stream %d)\n", n_ok, n_cases, n_enc_ok, n_dec_ok,
           n_stream_ok);
    CHECK(n_cases == 1736, "expected 1736 lines, read %d", n_cases);
    CHECK(n_ok == n_cases, "%d of %d cases failed", n_cases - n_ok, n_cases);

    /* the tiny real-vocabulary model's prompts (bos=true, special=true) */
    for (int r = 1; r <= 3; r++) {
        char pp[1024], tp[1024], rel[128];
        snprintf(rel, sizeof rel, "vectors/models/tiny-v3-realvocab-f16.ref%d.prompt.txt", r);
        tu_shared(rel, pp, sizeof pp);
        snprintf(rel, sizeof rel, "vectors/models/tiny-v3-realvocab-f16.ref%d.tokens.json", r);
        tu_shared(rel, tp, sizeof tp);
        size_t plen;
        char *prompt = tu_read_file(pp, &plen);
        json_error_t je;
        json_t *jt = json_load_file(tp, 0, &je);
        CHECK(prompt && jt, "ref%d files", r);
        if (!prompt || !jt) continue;
        int32_t *ids = NULL;
        size_t n = 0;
        moe_tok_encode(t, prompt, plen, 1, 1, &ids, &n);
        int ok = n == json_array_size(jt);
        for (size_t i = 0; ok && i < n; i++) ok = ids[i] == json_integer_value(json_array_get(jt, i));
        CHECK(ok, "ref%d prompt tokens differ", r);
        free(ids);
        free(prompt);
        json_decref(jt);
    }

    /* > U+10FFFF 4-byte sequences: no crash, each byte is one U+FFFD */
    {
        static const char *cases[] = {"ok\xf4\x90\x80\x80ok", "\xf5\x80\x80\x80", "\xf7\xbf\xbf\xbf x",
                                      "\xf4\x90", "a\xf6\x80\x80\x80\xf4\x8f\xbf\xbf"};
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            int32_t *ids = NULL;
            size_t n = 0;
            st = moe_tok_encode(t, cases[k], strlen(cases[k]), 1, 1, &ids, &n);
            CHECK(st == MOE_OK && n > 0, "encode >U+10FFFF case %zu", k);
            char *d = NULL;
            moe_tok_decode(t, ids, n, 0, &d, NULL);
            size_t n_fffd = 0;
            for (const char *q = d; q && (q = strstr(q, "\xef\xbf\xbd")); q += 3) n_fffd++;
            CHECK(d && n_fffd >= 2, "case %zu: %zu U+FFFD", k, n_fffd);
            free(d);
            free(ids);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        moe_tok_encode(t, "ok\xf4\x90\x80\x80ok", 8, 0, 0, &ids, &n);
        char *d = NULL;
        moe_tok_decode(t, ids, n, 0, &d, NULL);
        CHECK(d && !strcmp(d, "ok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbdok"), "4 x U+FFFD");
        free(d);
        free(ids);
    }
    moe_tok_free(t);
    moe_gguf_close(g);
    return test_done();
}
