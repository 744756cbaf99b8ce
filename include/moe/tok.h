/* moekit: byte-level BPE tokenizer (DeepSeek-V2/V3 "gpt2" vocabularies), streaming
 * detokenizer and the DeepSeek chat templates (spec deepseek2.md §5, §6).
 *
 * A moe_tok is built from the tokenizer.* keys of a GGUF file and is read-only afterwards:
 * every const function may be called from any number of threads at once. It borrows the
 * token strings from the moe_gguf mapping, so the moe_gguf must outlive the moe_tok.
 *
 * Encoding follows llama.cpp's llama_tokenize(text, add_special, parse_special) exactly,
 * including its lenient UTF-8 decoding (an undecodable byte becomes U+FFFD, i.e. the bytes
 * EF BF BD). moe_tok_encode_ex with MOE_TOK_BYTE_EXACT keeps such bytes as themselves, so
 * decode(encode(x)) == x for any byte string x. */
#ifndef MOE_TOK_H
#define MOE_TOK_H

#include <stddef.h>
#include <stdint.h>

#include "moe/gguf.h"
#include "moe/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct moe_tok moe_tok;
typedef struct moe_tok_stream moe_tok_stream;

/* Token types as stored in tokenizer.ggml.token_type (values are on disk: never renumber). */
typedef enum moe_tok_type {
    MOE_TOK_TYPE_UNDEFINED = 0,
    MOE_TOK_TYPE_NORMAL = 1,
    MOE_TOK_TYPE_UNKNOWN = 2,
    MOE_TOK_TYPE_CONTROL = 3,
    MOE_TOK_TYPE_USER_DEFINED = 4,
    MOE_TOK_TYPE_UNUSED = 5,
    MOE_TOK_TYPE_BYTE = 6,
} moe_tok_type;

/* Flags of moe_tok_encode_ex. */
typedef enum moe_tok_flag {
    MOE_TOK_ADD_BOS = 1,       /* llama.cpp add_special: BOS first if the vocab's add_bos_token
                                  is true (and EOS last if add_eos_token is true) */
    MOE_TOK_PARSE_SPECIAL = 2, /* texts of CONTROL/UNKNOWN tokens in the input become those tokens */
    MOE_TOK_BYTE_EXACT = 4,    /* invalid UTF-8 bytes are encoded as themselves, not as U+FFFD */
} moe_tok_flag;

/* Build a tokenizer from the tokenizer.* keys of `g` (which must outlive it). On failure *out
 * is NULL and `err` receives a one-line message naming the key (MOE_ERR_FORMAT for malformed
 * keys, MOE_ERR_UNSUPPORTED for a tokenizer model or pre-tokenizer this build lacks). */
moe_status moe_tok_init_from_gguf(const moe_gguf *g, moe_tok **out, char *err, size_t errlen);
/* NULL is allowed. */
void moe_tok_free(moe_tok *t);

int32_t moe_tok_n_vocab(const moe_tok *t);
/* BOS / EOS ids, or -1 if the vocabulary has none. */
int32_t moe_tok_bos(const moe_tok *t);
int32_t moe_tok_eos(const moe_tok *t);
/* Non-zero if `id` ends generation (EOS, EOT/EOM, or an end-of-turn text such as
 * <｜end▁of▁sentence｜>). */
int moe_tok_is_eog(const moe_tok *t, int32_t id);
/* moe_tok_type of `id` (MOE_TOK_TYPE_UNDEFINED if out of range). */
int moe_tok_type_of(const moe_tok *t, int32_t id);
/* Token text as stored (byte-level alphabet for BPE tokens; borrowed), or len 0 if out of range. */
moe_str moe_tok_text(const moe_tok *t, int32_t id);
/* Pre-tokenizer name ("deepseek-v3", "deepseek-llm", "default"). */
const char *moe_tok_pre(const moe_tok *t);
/* tokenizer.chat_template of the GGUF (borrowed, len 0 if absent). */
moe_str moe_tok_chat_template(const moe_tok *t);
/* Whether the vocabulary asks for BOS (tokenizer.ggml.add_bos_token). */
int moe_tok_add_bos(const moe_tok *t);

/* Text (len bytes, any bytes) to ids; *ids is malloc'd (caller frees; NULL if *n_ids is 0).
 * add_bos: llama.cpp's add_special (BOS only if the vocabulary's add_bos_token is true).
 * parse_special: recognise CONTROL token texts (USER_DEFINED ones are always recognised). */
moe_status moe_tok_encode(const moe_tok *t, const char *text, size_t len, int add_bos,
                          int parse_special, int32_t **ids, size_t *n_ids);
/* The same with moe_tok_flag bits. */
moe_status moe_tok_encode_ex(const moe_tok *t, const char *text, size_t len, unsigned flags,
                             int32_t **ids, size_t *n_ids);

/* Bytes of one token (borrowed from t). NORMAL tokens map back through the byte-level table;
 * CONTROL and UNKNOWN tokens give their text if `special`, else nothing; USER_DEFINED give
 * their text; UNUSED/BYTE/UNDEFINED nothing. MOE_ERR_INVAL if id is out of range. */
moe_status moe_tok_piece(const moe_tok *t, int32_t id, int special, const char **out,
                         size_t *len);
/* Concatenated pieces of ids[0..n) (may be invalid UTF-8 if the ids are), NUL-terminated,
 * malloc'd. `special` as in moe_tok_piece. */
moe_status moe_tok_decode(const moe_tok *t, const int32_t *ids, size_t n, int special,
                          char **out, size_t *len);

/* Streaming detokenizer: push ids one at a time and print what comes back. Output is always
 * valid UTF-8: a character split across tokens is held until complete; bytes that can never
 * form a character become U+FFFD. One stream per sequence; not thread-safe. */
#define MOE_TOK_STREAM_SPECIAL 1u /* render CONTROL tokens' text */
moe_status moe_tok_stream_init(const moe_tok *t, unsigned flags, moe_tok_stream **out);
void moe_tok_stream_free(moe_tok_stream *s);
/* Bytes ready to print (borrowed, valid until the next call on s; *len may be 0). */
moe_status moe_tok_stream_push(moe_tok_stream *s, int32_t id, const char **out, size_t *len);
/* At the end of a sequence: any held incomplete character comes out as U+FFFD. */
moe_status moe_tok_stream_flush(moe_tok_stream *s, const char **out, size_t *len);
/* Forget held bytes (start a new sequence). */
void moe_tok_stream_reset(moe_tok_stream *s);

/* ---- chat templates (src/tok/chat.c) ---- */
typedef struct moe_chat_msg {
    const char *role;    /* "system", "user", "assistant" (others are skipped, as llama.cpp) */
    const char *content; /* inserted verbatim */
} moe_chat_msg;

/* Template name llama.cpp would detect for a template text or name ("deepseek2",
 * "deepseek3", "chatml", "llama3", ...), or NULL if unknown. */
const char *moe_chat_detect(const char *tmpl);
/* Render msgs[0..n) (+ the generation prompt if add_generation_prompt) into a malloc'd,
 * NUL-terminated *out. template_name_or_NULL: NULL uses the model's tokenizer.chat_template;
 * "deepseek2"/"deepseek3" pick a built-in; any other string is a template text to detect.
 * MOE_ERR_UNSUPPORTED if the template is unknown or not a DeepSeek one. BOS is never added
 * here (encode with add_bos). */
moe_status moe_chat_apply(const moe_tok *t, const char *template_name_or_NULL,
                          const moe_chat_msg *msgs, size_t n, int add_generation_prompt,
                          char **out);
/* The same with a one-line message in err on failure. */
moe_status moe_chat_apply_ex(const moe_tok *t, const char *template_name_or_NULL,
                             const moe_chat_msg *msgs, size_t n, int add_generation_prompt,
                             char **out, char *err, size_t errlen);

/* ---- vocabularies for new GGUF files (src/tok/vocab.c) ---- */
/* Write all tokenizer.* keys of the small built-in byte-level BPE vocabulary (deepseek-v3
 * pre-tokenizer, ids: 0 BOS, 1 EOS, 2..257 the 256 bytes, learned merges, <｜User｜>,
 * <｜Assistant｜>; at least 512 ids), padded with [PAD<id>] UNUSED tokens up to pad_to.
 * *n_vocab (may be NULL) receives the id count written. Deterministic. */
moe_status moe_tok_write_builtin_vocab(moe_gguf_writer *w, uint32_t pad_to, uint32_t *n_vocab);
/* Copy the tokenizer.* keys of src, padding tokens (and token_type, scores) with [PAD<id>]
 * UNUSED entries up to pad_to if it is larger than src's vocabulary. */
moe_status moe_tok_copy_vocab(moe_gguf_writer *w, const moe_gguf *src, uint32_t pad_to,
                              uint32_t *n_vocab);

#ifdef __cplusplus
}
#endif
#endif
