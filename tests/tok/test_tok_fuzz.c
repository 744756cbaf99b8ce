/* tok: randomized checks on the real DeepSeek-V3 vocabulary.
 *  - random bytes never crash; decode(encode(x)) equals x with undecodable bytes replaced as
 *    spec §5.3 says (one U+FFFD per byte, overlongs decoded), and equals x exactly with
 *    MOE_TOK_BYTE_EXACT;
 *  - the short-word BPE scan gives the same ids as the llama.cpp-style heap BPE
 *    (MOE_TOK_FLAG_HEAP_ONLY), on random words and long letter runs;
 *  - the streaming detokenizer never emits an incomplete or invalid UTF-8 sequence, whatever
 *    the ids, and reproduces valid text exactly. */
#include <stdint.h>

#include "moe/tok.h"
#include "testutil.h"
#include "tok/tok_impl.h"

static uint64_t rng = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* reference lenient normalization (§5.3), written independently of pretok.c */
static size_t normalize(const uint8_t *s, size_t n, uint8_t *o) {
    size_t i = 0, k = 0;
    while (i < n) {
        uint32_t c = s[i], cp = 0xFFFD;
        size_t need = c < 0x80 ? 1 : c < 0xC0 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 0;
        size_t adv = 1;
        if (need == 1) cp = c;
        else if (need && i + need <= n) {
            int ok = 1;
            for (size_t j = 1; j < need; j++) ok &= (s[i + j] & 0xC0) == 0x80;
            if (ok) {
                uint32_t v = c & (0x7F >> need);
                for (size_t j = 1; j < need; j++) v = (v << 6) | (s[i + j] & 0x3F);
                if (v <= 0x10FFFF) {
                    cp = v;
                    adv = need;
                }
            }
        }
        k += (size_t)moe_utf8_put(cp, o + k);
        i += adv;
    }
    return k;
}

static int valid_utf8(const uint8_t *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        int need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!need || i + (size_t)need > n) return 0;
        uint8_t lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80, hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        if (p[i + 1] < lo || p[i + 1] > hi) return 0;
        for (int k = 2; k < need; k++)
            if ((p[i + (size_t)k] & 0xC0) != 0x80) return 0;
        i += (size_t)need;
    }
    return 1;
}

static size_t gen(uint8_t *b, size_t max) {
    static const char *frag[] = {"the", " ", "  ", "\n", "\r\n", "123456", "\xe4\xbd\xa0\xe5\xa5\xbd", "\xf0\x9f\x9a\x80",
                                 "<\xef\xbd\x9cUser\xef\xbd\x9c>", "<|EOT|>", "'s", "...", "\xcc\x81", "\xd0\xbf\xd1\x80",
                                 "\xe3\x81\x82", "\xc2\xa0", "\xe3\x80\x80", "\t", "Hello", ".com", "aaaaaaaaaaaa"};
    size_t n = 0, len = rnd() % max;
    while (n < len) {
        uint32_t r = rnd() % 8;
        if (r < 3) {
            b[n++] = (uint8_t)rnd();
        } else {
            const char *f = frag[rnd() % (sizeof frag / sizeof frag[0])];
            size_t l = strlen(f);
            if (n + l > max) break;
            memcpy(b + n, f, l);
            n += l;
        }
    }
    return n;
}

int main(void) {
    char path[1024], err[256];
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", path, sizeof path);
    moe_gguf *g = NULL;
    moe_tok *t = NULL;
    if (moe_gguf_open(path, &g, err, sizeof err) || moe_tok_init_from_gguf(g, &t, err, sizeof err)) {
        CHECK(0, "load: %s", err);
        return test_done();
    }
    enum { MAX = 400 };
    uint8_t buf[MAX], norm[MAX * 3 + 8];
    int bad_norm = 0, bad_exact = 0, bad_heap = 0, bad_stream = 0, iters = 3000;
    for (int it = 0; it < iters; it++) {
        size_t n = gen(buf, MAX);
        unsigned fl = it & 1 ? MOE_TOK_PARSE_SPECIAL : 0;
        int32_t *ids = NULL, *ids2 = NULL;
        size_t ni = 0, ni2 = 0;
        char *d = NULL;
        size_t dl = 0;
        moe_tok_encode_ex(t, (char *)buf, n, fl, &ids, &ni);
        moe_tok_decode(t, ids, ni, 1, &d, &dl);
        size_t nl = normalize(buf, n, norm);
        if (!d || dl != nl || memcmp(d, norm, nl)) bad_norm++;
        free(d);
        moe_tok_encode_ex(t, (char *)buf, n, fl | MOE_TOK_FLAG_HEAP_ONLY, &ids2, &ni2);
        if (ni != ni2 || (ni && memcmp(ids, ids2, ni * sizeof *ids))) bad_heap++;
        free(ids2);
        /* stream the ids (special text on for odd iterations) */
        moe_tok_stream *s;
        moe_tok_stream_init(t, (unsigned)(it & 1), &s);
        size_t tot = 0;
        for (size_t i = 0; i <= ni; i++) {
            const char *o;
            size_t l;
            if (i < ni) moe_tok_stream_push(s, ids[i], &o, &l);
            else moe_tok_stream_flush(s, &o, &l);
            if (!valid_utf8((const uint8_t *)o, l)) bad_stream++;
            tot += l;
        }
        moe_tok_stream_free(s);
        (void)tot;
        free(ids);
        ids = NULL;
        moe_tok_encode_ex(t, (char *)buf, n, fl | MOE_TOK_BYTE_EXACT, &ids, &ni);
        d = NULL;
        moe_tok_decode(t, ids, ni, 1, &d, &dl);
        if (!d || dl != n || memcmp(d, buf, n)) bad_exact++;
        free(d);
        free(ids);
    }
    CHECK(bad_norm == 0, "%d of %d: decode(encode(x)) != normalize(x)", bad_norm, iters);
    CHECK(bad_exact == 0, "%d of %d: byte-exact round trip failed", bad_exact, iters);
    CHECK(bad_heap == 0, "%d of %d: scan BPE != heap BPE", bad_heap, iters);
    CHECK(bad_stream == 0, "%d invalid UTF-8 chunks from the stream", bad_stream);

    /* long single words: the heap path for both, then short/long boundary lengths */
    for (int it = 0; it < 200; it++) {
        size_t n = 1 + rnd() % 60;
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)("aaabxyzetn"[rnd() % (it % 2 ? 2 : 10)]);
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        moe_tok_encode_ex(t, (char *)buf, n, 0, &a, &na);
        moe_tok_encode_ex(t, (char *)buf, n, MOE_TOK_FLAG_HEAP_ONLY, &b, &nb);
        CHECK(na == nb && !memcmp(a, b, na * sizeof *a), "word of %zu letters: scan != heap", n);
        free(a);
        free(b);
    }

    /* streaming: a multi-byte character split over byte tokens is held until complete */
    {
        const char *txt = "\xf0\x9f\x9a\x80 \xe4\xbd\xa0\xe5\xa5\xbd";
        int32_t *ids = NULL;
        size_t ni = 0;
        moe_tok_encode(t, txt, strlen(txt), 0, 0, &ids, &ni);
        moe_tok_stream *s;
        moe_tok_stream_init(t, 0, &s);
        char acc[64];
        size_t al = 0;
        int split = 0;
        for (size_t i = 0; i <= ni; i++) {
            const char *o;
            size_t l;
            if (i < ni) moe_tok_stream_push(s, ids[i], &o, &l);
            else moe_tok_stream_flush(s, &o, &l);
            split |= !valid_utf8((const uint8_t *)o, l);
            memcpy(acc + al, o, l);
            al += l;
        }
        CHECK(ni > 3 && !split && al == strlen(txt) && !memcmp(acc, txt, al), "stream of %zu ids", ni);
        /* an id cut off mid-character: flush gives U+FFFD; bad ids are rejected */
        const char *o;
        size_t l;
        moe_tok_stream_reset(s);
        moe_tok_stream_push(s, ids[0], &o, &l);
        CHECK(l == 0, "first byte of a 4-byte character is held");
        moe_tok_stream_flush(s, &o, &l);
        CHECK(l == 3 && !memcmp(o, "\xef\xbf\xbd", 3), "flush of an incomplete character");
        CHECK(moe_tok_stream_push(s, -1, &o, &l) == MOE_ERR_INVAL && l == 0, "bad id");
        CHECK(moe_tok_stream_push(s, 1 << 30, &o, &l) == MOE_ERR_INVAL, "bad id");
        /* control tokens: hidden by default, shown with MOE_TOK_STREAM_SPECIAL */
        moe_tok_stream_push(s, 1, &o, &l);
        CHECK(l == 0, "EOS hidden");
        moe_tok_stream_free(s);
        moe_tok_stream_init(t, MOE_TOK_STREAM_SPECIAL, &s);
        moe_tok_stream_push(s, 1, &o, &l);
        CHECK(l == 27, "EOS shown (%zu bytes)", l);
        moe_tok_stream_free(s);
        free(ids);
    }
    moe_tok_free(t);
    moe_gguf_close(g);
    return test_done();
}
