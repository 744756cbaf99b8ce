/* tok: the built-in vocabulary (moe init) and moe_tok_copy_vocab, written through
 * moe_gguf_writer into a temporary folder and loaded back with moe_tok_init_from_gguf. */
#include <unistd.h>

#include "moe/tok.h"
#include "testutil.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static moe_status write_vocab(const char *path, uint32_t pad, uint32_t *nv, const moe_gguf *src) {
    moe_gguf_writer *w;
    char err[256];
    moe_status st = moe_gguf_writer_init(&w);
    if (st) return st;
    st = src ? moe_tok_copy_vocab(w, src, pad, nv) : moe_tok_write_builtin_vocab(w, pad, nv);
    if (!st) st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, err, sizeof err);
    moe_gguf_writer_free(w);
    return st;
}

int main(void) {
    char dir[512], path[600], path2[600], err[256];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/builtin.gguf", dir);
    uint32_t nv = 0;
    CHECK(write_vocab(path, 0, &nv, NULL) == MOE_OK, "write builtin");
    CHECK(nv == 512, "n_vocab %u", nv);

    moe_gguf *g = NULL;
    moe_tok *t = NULL;
    moe_status st = moe_gguf_open(path, &g, err, sizeof err);
    CHECK(st == MOE_OK, "open: %s", err);
    if (st) return test_done();
    st = moe_tok_init_from_gguf(g, &t, err, sizeof err);
    CHECK(st == MOE_OK, "init: %s", err);
    if (st) return test_done();
    CHECK(moe_tok_n_vocab(t) == 512 && moe_tok_bos(t) == 0 && moe_tok_eos(t) == 1, "ids");
    CHECK(moe_tok_is_eog(t, 1), "eos is eog");
    CHECK(moe_tok_type_of(t, 0) == MOE_TOK_TYPE_CONTROL && moe_tok_type_of(t, 511) == MOE_TOK_TYPE_CONTROL &&
              moe_tok_type_of(t, 300) == MOE_TOK_TYPE_NORMAL,
          "types");
    moe_str u = moe_tok_text(t, 510);
    CHECK(u.len == 12 && !memcmp(u.ptr, "<\xef\xbd\x9cUser\xef\xbd\x9c>", 12), "<｜User｜> at 510");
    CHECK(!strcmp(moe_tok_pre(t), "deepseek-v3"), "pre");
    /* tokens unique */
    int dup = 0;
    for (int32_t a = 0; a < 512 && !dup; a++)
        for (int32_t b = a + 1; b < 512; b++) {
            moe_str x = moe_tok_text(t, a), y = moe_tok_text(t, b);
            if (x.len == y.len && !memcmp(x.ptr, y.ptr, x.len)) dup = 1;
        }
    CHECK(!dup, "duplicate token texts");
    /* the chat template is detected as DeepSeek-V3 */
    char *p = NULL;
    moe_chat_msg m[] = {{"user", "hello"}};
    CHECK(moe_chat_apply(t, NULL, m, 1, 1, &p) == MOE_OK && p, "chat on builtin vocab");
    free(p);
    /* learned merges compress the training text's words */
    int32_t *ids = NULL;
    size_t n = 0;
    const char *txt = "The quick brown fox jumps over the lazy dog.";
    moe_tok_encode(t, txt, strlen(txt), 1, 1, &ids, &n);
    CHECK(n > 2 && n < strlen(txt) / 2, "merges used: %zu tokens for %zu bytes", n, strlen(txt));
    free(ids);

    /* round trip of arbitrary bytes: byte-exact mode for any bytes, default mode for valid UTF-8 */
    int bad_exact = 0, bad_utf8 = 0;
    char buf[300];
    for (int it = 0; it < 2000; it++) {
        size_t len = rnd() % 200;
        for (size_t i = 0; i < len; i++) {
            uint32_t r = rnd() % 10;
            buf[i] = r < 4 ? "ab <|\n\t.0\xef\xbd\x9c"[rnd() % 12] : (char)rnd();
        }
        ids = NULL;
        st = moe_tok_encode_ex(t, buf, len, MOE_TOK_BYTE_EXACT | ((it & 1) ? MOE_TOK_PARSE_SPECIAL : 0), &ids, &n);
        char *d = NULL;
        size_t dl = 0;
        if (!st) st = moe_tok_decode(t, ids, n, 1, &d, &dl);
        if (st || dl != len || memcmp(d, buf, len)) bad_exact++;
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= 512) bad_exact++;
        free(d);
        free(ids);
        /* valid UTF-8: keep ASCII and re-encode random code points */
        size_t vl = 0;
        while (vl < 200) {
            uint32_t cp = rnd() % 4 ? rnd() % 128 : rnd() % 0x10FFFF;
            if (cp >= 0xD800 && cp <= 0xDFFF) continue;
            if (cp < 0x80) buf[vl++] = (char)cp;
            else if (cp < 0x800) {
                buf[vl++] = (char)(0xC0 | (cp >> 6));
                buf[vl++] = (char)(0x80 | (cp & 63));
            } else if (cp < 0x10000) {
                buf[vl++] = (char)(0xE0 | (cp >> 12));
                buf[vl++] = (char)(0x80 | ((cp >> 6) & 63));
                buf[vl++] = (char)(0x80 | (cp & 63));
            } else {
                buf[vl++] = (char)(0xF0 | (cp >> 18));
                buf[vl++] = (char)(0x80 | ((cp >> 12) & 63));
                buf[vl++] = (char)(0x80 | ((cp >> 6) & 63));
                buf[vl++] = (char)(0x80 | (cp & 63));
            }
        }
        ids = NULL;
        st = moe_tok_encode(t, buf, vl, 0, 0, &ids, &n);
        d = NULL;
        if (!st) st = moe_tok_decode(t, ids, n, 1, &d, &dl);
        if (st || dl != vl || memcmp(d, buf, vl)) bad_utf8++;
        free(d);
        free(ids);
    }
    CHECK(bad_exact == 0, "%d byte-exact round trips failed", bad_exact);
    CHECK(bad_utf8 == 0, "%d UTF-8 round trips failed", bad_utf8);
    /* without parse_special the text of a control token is ordinary text */
    const char *ctl = "<\xef\xbd\x9cUser\xef\xbd\x9c>";
    moe_tok_encode(t, ctl, strlen(ctl), 0, 0, &ids, &n);
    int has_ctl = 0;
    for (size_t i = 0; i < n; i++) has_ctl |= moe_tok_type_of(t, ids[i]) == MOE_TOK_TYPE_CONTROL;
    CHECK(!has_ctl && n > 1, "no control token from plain text");
    free(ids);
    moe_tok_encode(t, ctl, strlen(ctl), 0, 1, &ids, &n);
    CHECK(n == 1 && ids[0] == 510, "parse_special gives <｜User｜>");
    free(ids);

    /* padding, deterministic output */
    snprintf(path2, sizeof path2, "%s/padded.gguf", dir);
    CHECK(write_vocab(path2, 1000, &nv, NULL) == MOE_OK && nv == 1000, "padded builtin");
    moe_gguf *g2 = NULL;
    moe_tok *t2 = NULL;
    if (moe_gguf_open(path2, &g2, err, sizeof err) == MOE_OK && moe_tok_init_from_gguf(g2, &t2, err, sizeof err) == MOE_OK) {
        moe_str pad = moe_tok_text(t2, 999);
        CHECK(moe_tok_n_vocab(t2) == 1000 && moe_tok_type_of(t2, 999) == MOE_TOK_TYPE_UNUSED && pad.len == 8 &&
                  !memcmp(pad.ptr, "[PAD999]", 8),
              "pad tokens");
        int same = 1;
        for (int32_t i = 0; i < 512; i++) {
            moe_str a = moe_tok_text(t, i), b = moe_tok_text(t2, i);
            same &= a.len == b.len && !memcmp(a.ptr, b.ptr, a.len);
        }
        CHECK(same, "deterministic vocabulary");
        moe_tok_free(t2);
    } else {
        CHECK(0, "padded load: %s", err);
    }
    moe_gguf_close(g2);
    unlink(path2);

    /* copy_vocab: of the builtin (padded) and of the real DeepSeek-V3 vocabulary */
    snprintf(path2, sizeof path2, "%s/copy.gguf", dir);
    CHECK(write_vocab(path2, 600, &nv, g) == MOE_OK && nv == 600, "copy padded");
    g2 = NULL;
    t2 = NULL;
    if (moe_gguf_open(path2, &g2, err, sizeof err) == MOE_OK && moe_tok_init_from_gguf(g2, &t2, err, sizeof err) == MOE_OK) {
        CHECK(moe_tok_n_vocab(t2) == 600 && moe_tok_type_of(t2, 599) == MOE_TOK_TYPE_UNUSED, "copy pads");
        moe_tok_encode(t2, txt, strlen(txt), 1, 1, &ids, &n);
        int32_t *ids1 = NULL;
        size_t n1 = 0;
        moe_tok_encode(t, txt, strlen(txt), 1, 1, &ids1, &n1);
        CHECK(n == n1 && !memcmp(ids, ids1, n * sizeof *ids), "copy encodes the same");
        free(ids);
        free(ids1);
        moe_tok_free(t2);
    } else {
        CHECK(0, "copy load: %s", err);
    }
    moe_gguf_close(g2);
    unlink(path2);

    char vp[1024];
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", vp, sizeof vp);
    moe_gguf *gv = NULL;
    if (moe_gguf_open(vp, &gv, err, sizeof err) == MOE_OK) {
        CHECK(write_vocab(path2, 0, &nv, gv) == MOE_OK && nv == 129280, "copy real vocab");
        g2 = NULL;
        t2 = NULL;
        if (moe_gguf_open(path2, &g2, err, sizeof err) == MOE_OK && moe_tok_init_from_gguf(g2, &t2, err, sizeof err) == MOE_OK) {
            moe_tok_encode(t2, "Hello world", 11, 1, 1, &ids, &n);
            CHECK(n == 3 && ids[0] == 0, "copied real vocab works");
            free(ids);
            CHECK(moe_tok_chat_template(t2).len > 0, "chat template copied");
            moe_tok_free(t2);
        } else {
            CHECK(0, "copied real vocab load: %s", err);
        }
        moe_gguf_close(g2);
        unlink(path2);
        moe_gguf_close(gv);
    }
    moe_tok_free(t);
    moe_gguf_close(g);
    unlink(path);
    rmdir(dir);
    return test_done();
}
