/* libFuzzer target: the BPE encoder and the streaming decoder over arbitrary bytes, on the real
 * DeepSeek-V3 vocabulary (../shared/vectors/tokenizer/deepseek-v3-vocab.gguf, or $MOE_SHARED).
 *
 * Properties checked for every input x (issue 3): encoding never crashes; with
 * MOE_TOK_BYTE_EXACT, decode(encode(x)) == x byte for byte (with and without special-token
 * parsing); every id is inside the vocabulary; the streaming detokenizer fed the same ids emits
 * only complete, valid UTF-8. Anything else aborts (a finding).
 * Run: scripts/run-fuzz.sh build-fuzz. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe/gguf.h"
#include "moe/tok.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static moe_gguf *g_gguf;
static moe_tok *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char path[1024], err[512];
    const char *shared = getenv("MOE_SHARED");
    snprintf(path, sizeof path, "%s/vectors/tokenizer/deepseek-v3-vocab.gguf", shared ? shared : "../shared");
    if (moe_gguf_open(path, &g_gguf, err, sizeof err) || moe_tok_init_from_gguf(g_gguf, &g_tok, err, sizeof err)) {
        fprintf(stderr, "fuzz_tok: cannot load the vocabulary: %s (set MOE_SHARED)\n", err);
        exit(1);
    }
    return 0;
}

/* 1 if s[0..n) is valid UTF-8 (no surrogates, no overlongs, <= U+10FFFF) */
static int valid_utf8(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k;
        if (c < 0x80) k = 0;
        else if ((c & 0xE0) == 0xC0) k = 1;
        else if ((c & 0xF0) == 0xE0) k = 2;
        else if ((c & 0xF8) == 0xF0) k = 3;
        else return 0;
        if (i + k >= n && k) return 0;
        uint32_t cp = k ? c & (0x3Fu >> k) : c;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3Fu);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += k + 1;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 4096) return 0;
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        size_t n = 0;
        unsigned flags = MOE_TOK_BYTE_EXACT | (special ? MOE_TOK_PARSE_SPECIAL : 0);
        if (moe_tok_encode_ex(g_tok, (const char *)data, size, flags, &ids, &n) != MOE_OK) abort();
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= moe_tok_n_vocab(g_tok)) abort();
        char *text = NULL;
        size_t len = 0;
        if (moe_tok_decode(g_tok, ids, n, 1, &text, &len) != MOE_OK) abort();
        if (len != size || (size && memcmp(text, data, size) != 0)) abort(); /* byte-exact round trip */
        free(text);
        moe_tok_stream *st = NULL;
        if (moe_tok_stream_init(g_tok, MOE_TOK_STREAM_SPECIAL, &st) != MOE_OK) abort();
        for (size_t i = 0; i <= n; i++) {
            const char *out;
            size_t olen;
            moe_status s = i < n ? moe_tok_stream_push(st, ids[i], &out, &olen) : moe_tok_stream_flush(st, &out, &olen);
            if (s != MOE_OK || !valid_utf8((const unsigned char *)out, olen)) abort();
        }
        moe_tok_stream_free(st);
        free(ids);
    }
    return 0;
}
