/* moekit tok: internals shared by the src/tok files (the moe_tok body, the pre-tokenizer). */
#ifndef MOE_TOK_IMPL_H
#define MOE_TOK_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "moe/tok.h"

/* Testing only: always use the heap BPE (the short-word scan is checked against it). */
#define MOE_TOK_FLAG_HEAP_ONLY (1u << 30)

/* Pre-tokenizer kinds (tokenizer.ggml.pre). */
enum { PT_DEFAULT = 0, PT_DEEPSEEK_LLM = 1, PT_DEEPSEEK_V3 = 2 };

/* Per-code-point flags used by the hand-written regex matchers (pretok.c). They describe the
 * code point as llama.cpp's regex engines see it: non-ASCII whitespace is VT (0x0B), and in the
 * "collapsed" byte regexes a non-ASCII code point is one byte standing for its category. */
enum {
    CF_WS = 1 << 0,     /* \s: TAB LF VT FF CR SPACE, or non-ASCII whitespace */
    CF_L = 1 << 1,      /* \p{L} */
    CF_N = 1 << 2,      /* \p{N} */
    CF_P = 1 << 3,      /* \p{P} */
    CF_S = 1 << 4,      /* \p{S} */
    CF_M = 1 << 5,      /* \p{M} */
    CF_CRLF = 1 << 6,   /* CR or LF */
    CF_APUNCT = 1 << 7, /* one of the 32 ASCII punctuation/symbol characters */
    CF_ALPHA = 1 << 8,  /* A-Z a-z */
    CF_DIGIT = 1 << 9,  /* 0-9 */
    CF_SPACE = 1 << 10, /* exactly U+0020 */
};

/* Scratch of one encode call (never shared between threads). */
typedef struct pt_buf {
    uint32_t *cp;   /* (n) code points of the fragment (U+FFFD for undecodable bytes) */
    uint16_t *fl;   /* (n) CF_* flags */
    uint32_t *off;  /* (n+1) byte offset of each code point in the fragment */
    uint32_t *bnd;  /* (<= n+1) piece boundaries, code point indices */
    uint32_t *bnd2; /* (<= n+1) scratch for the next split */
    size_t cap;     /* capacity of the arrays above, in code points */
    int irregular;  /* some code point does not re-encode to its source bytes */
} pt_buf;

struct moe_tok {
    const moe_gguf *g; /* borrowed */
    int32_t n_vocab;
    int pre; /* PT_* */
    moe_str *text;    /* owned array (n_vocab), strings borrowed from g or from `owned` */
    char *owned;      /* owned: replacement texts of empty tokens ("[EMPTY_<id>]") */
    uint8_t *type;    /* owned (n_vocab): moe_tok_type after llama.cpp's forced CONTROL */
    uint8_t *eog;     /* owned (n_vocab): 1 if end of generation */
    int32_t bos, eos, eot, eom, pad;
    int add_bos, add_eos;
    moe_str chat_template; /* borrowed, len 0 if absent */

    /* text -> id (open addressing, value id+1, 0 empty; last duplicate wins as llama.cpp) */
    uint32_t *tok_hash;
    size_t tok_hash_n; /* power of two */

    /* merges: (left id, right id) -> rank, result id */
    struct merge_ent {
        uint64_t key; /* left << 32 | right; UINT64_MAX empty */
        int32_t rank;
        int32_t result;
    } *merge;
    size_t merge_n; /* power of two */
    uint32_t n_merges;

    struct byte_pair {
        int32_t rank, result; /* rank -1: no merge */
    } byte_pair[256][256];    /* merges of two byte symbols, by byte (512 KiB, stays in cache) */
    int32_t byte_id[256];     /* id of the byte-level symbol of each byte, -1 if absent */
    int32_t onebyte_id[256];  /* id of the token whose text is exactly that one byte, or -1 */
    uint8_t unicode_of[256][3]; /* UTF-8 of each byte's byte-level symbol: len, b0, b1 */

    /* decoded piece of every token (special rendering); CONTROL/UNKNOWN hidden unless special */
    char *piece;          /* owned */
    uint32_t *piece_off;  /* owned (n_vocab + 1) */

    /* special tokens (CONTROL, USER_DEFINED, UNKNOWN) for the partition of §5.2 step 1 */
    int32_t *special;      /* owned: ids, longest text first (stable by id) */
    uint32_t n_special;
    uint32_t n_user_defined; /* USER_DEFINED among them (matched even without parse_special) */
    uint32_t *spec_hash;   /* owned: text -> index into special[] + 1 (first in order wins) */
    size_t spec_hash_n;
    uint32_t *spec_lens;   /* owned: distinct text lengths, descending */
    uint32_t n_spec_lens;
    uint8_t spec_first[256]; /* 1 if some special text starts with this byte */

    uint32_t *word_hash; /* owned: decoded bytes of a one-token word -> id + 1 (see tok.c) */
    size_t word_hash_n;
    uint32_t max_word_len;
    uint16_t *bmp_fl; /* owned (65536): CF_* flags of U+0000..U+FFFF */
};

/* pretok.c */
uint16_t moe_pretok_flags(uint32_t cp);
/* Decode text[0..len) leniently into b (grown as needed). Returns code point count or -1 on
 * allocation failure. */
long moe_pretok_decode(const moe_tok *t, pt_buf *b, const uint8_t *text, size_t len);
/* Split the n decoded code points into pieces; boundaries in b->bnd[0..*nb). 0 or -1. */
int moe_pretok_split(int kind, pt_buf *b, size_t n, size_t *nb);
void moe_pretok_buf_free(pt_buf *b);
/* Encode one code point as UTF-8 (no validation; surrogates allowed). Returns length 1..4. */
int moe_utf8_put(uint32_t cp, uint8_t *out);

/* tok.c helpers reused by vocab.c */
void moe_tok_byte_to_unicode(uint8_t b, uint8_t *out, int *len);

/* ---- learned byte-level BPE vocabularies (vocab.c; used by the built-in vocabulary and by
 * `moe train`). Layout: 0 BOS, 1 EOS, 2..257 the byte symbols, then merge results, then
 * <｜User｜>, <｜Assistant｜> (CONTROL), then optional [PADn] (UNUSED). ---- */
typedef struct moe_strvec {
    char **s;      /* owned, NUL-terminated copies */
    uint64_t *len;
    size_t n, cap;
} moe_strvec;
int moe_strvec_add(moe_strvec *v, const char *s, size_t len); /* 0 or -1 (out of memory) */
void moe_strvec_free(moe_strvec *v);
/* Learn merges on text[0..len) (deepseek-v3 pre-tokenizer) until tok has n_merged_to entries or no
 * pair is left: BOS, EOS and the byte symbols are added first, the chat specials after.
 * by_paragraph: pre-tokenize each "\n\n"-ended paragraph on its own (large texts); max_word:
 * skip longer pieces (0 = no limit). Ties go to the smaller (left, right) id pair. */
moe_status moe_tok_bpe_learn(const char *text, size_t len, int by_paragraph, size_t max_word, size_t n_merged_to,
                             moe_strvec *tok, moe_strvec *mer);
/* Write the tokenizer.* keys of such a vocabulary (entries from n_real on are [PADn], UNUSED),
 * with chat_template (NULL: the built-in vocabulary's DeepSeek-V3 template). */
struct moe_gguf_writer;
moe_status moe_tok_write_vocab_keys(struct moe_gguf_writer *w, const moe_strvec *tok, size_t n_real,
                                    const moe_strvec *mer, const char *chat_template);

#endif
