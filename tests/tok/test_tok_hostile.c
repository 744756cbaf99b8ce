/* tok: malformed tokenizer keys give a clean error (status + one-line message), never a crash.
 * Each case writes a small GGUF with moe_gguf_writer into a temporary folder. */
#include <unistd.h>

#include "moe/tok.h"
#include "testutil.h"

enum { K_MODEL = 1, K_PRE = 2, K_TOKENS = 4, K_TYPES = 8, K_MERGES = 16, K_BOS = 32, K_ADDBOS = 64 };

typedef struct hcase {
    const char *name;
    unsigned omit;                 /* keys not written by the default builder */
    void (*mutate)(moe_gguf_writer *w);
    moe_status want;               /* MOE_OK for cases that must load */
} hcase;

static const char *k_tokens[] = {"a", "b", "ab", "<s>", "</s>"};
static const int32_t k_types[] = {1, 1, 1, 3, 3};
static const char *k_merges[] = {"a b"};

static void m_model_int(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.ggml.model", 7); }
static void m_model_llama(moe_gguf_writer *w) { moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"); }
static void m_pre_bad(moe_gguf_writer *w) { moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen-9000"); }
static void m_pre_int(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.ggml.pre", 1); }
static void m_tokens_int(moe_gguf_writer *w) {
    int32_t v[3] = {1, 2, 3};
    moe_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", MOE_GGUF_TYPE_INT32, v, 3);
}
static void m_tokens_str(moe_gguf_writer *w) { moe_gguf_writer_set_str(w, "tokenizer.ggml.tokens", "abc"); }
static void m_tokens_empty(moe_gguf_writer *w) {
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", NULL, NULL, 0);
}
static void m_types_short(moe_gguf_writer *w) {
    moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, k_types, 3);
}
static void m_types_float(moe_gguf_writer *w) {
    float v[5] = {1, 1, 1, 3, 3};
    moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_FLOAT32, v, 5);
}
static void m_types_wild(moe_gguf_writer *w) { /* unknown values load as UNDEFINED */
    int32_t v[5] = {-5, 1, 99, 3, 0x7fffffff};
    moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, v, 5);
}
static void m_merges_unknown(moe_gguf_writer *w) {
    const char *m[] = {"a b", "ab zz"};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 2);
}
static void m_merges_result_unknown(moe_gguf_writer *w) {
    const char *m[] = {"b a"};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 1);
}
static void m_merges_nospace(moe_gguf_writer *w) {
    const char *m[] = {"ab"};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 1);
}
static void m_merges_leading_space(moe_gguf_writer *w) {
    const char *m[] = {" "};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 1);
}
static void m_merges_empty_str(moe_gguf_writer *w) {
    const char *m[] = {""};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", m, NULL, 1);
}
static void m_merges_int(moe_gguf_writer *w) {
    int32_t v[1] = {0};
    moe_gguf_writer_set_arr(w, "tokenizer.ggml.merges", MOE_GGUF_TYPE_INT32, v, 1);
}
static void m_bos_range(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 5); }
static void m_bos_huge(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 0xFFFFFFFFu); }
static void m_bos_str(moe_gguf_writer *w) { moe_gguf_writer_set_str(w, "tokenizer.ggml.bos_token_id", "3"); }
static void m_bos_i32(moe_gguf_writer *w) { moe_gguf_writer_set_i32(w, "tokenizer.ggml.bos_token_id", 3); }
static void m_eos_range(moe_gguf_writer *w) {
    moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 3);
    moe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 1000);
}
static void m_eot_range(moe_gguf_writer *w) { /* optional ids out of range are ignored (llama.cpp) */
    moe_gguf_writer_set_u32(w, "tokenizer.ggml.eot_token_id", 1000);
}
static void m_addbos_u32(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.ggml.add_bos_token", 1); }
static void m_tmpl_int(moe_gguf_writer *w) { moe_gguf_writer_set_u32(w, "tokenizer.chat_template", 1); }
static void m_tokens_with_empty(moe_gguf_writer *w) { /* empty texts load as [EMPTY_<id>] */
    const char *t[] = {"a", "b", "ab", "", ""};
    moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", t, NULL, 5);
}

static moe_status build(const char *path, const hcase *c) {
    moe_gguf_writer *w;
    char err[256];
    moe_status st = moe_gguf_writer_init(&w);
    if (st) return st;
    if (!(c->omit & K_MODEL)) moe_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (!(c->omit & K_PRE)) moe_gguf_writer_set_str(w, "tokenizer.ggml.pre", "deepseek-v3");
    if (!(c->omit & K_TOKENS)) moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", k_tokens, NULL, 5);
    if (!(c->omit & K_TYPES)) moe_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", MOE_GGUF_TYPE_INT32, k_types, 5);
    if (!(c->omit & K_MERGES)) moe_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", k_merges, NULL, 1);
    if (!(c->omit & K_BOS)) {
        moe_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 3);
        moe_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 4);
    }
    if (!(c->omit & K_ADDBOS)) moe_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    if (c->mutate) c->mutate(w);
    st = moe_gguf_writer_write(w, path, NULL, NULL, NULL, NULL, err, sizeof err);
    moe_gguf_writer_free(w);
    return st;
}

int main(void) {
    static const hcase cases[] = {
        {"valid", 0, NULL, MOE_OK},
        {"no pre (default regexes)", K_PRE, NULL, MOE_OK},
        {"no token_type", K_TYPES, NULL, MOE_OK},
        {"no bos/eos (default 11 is out of range)", K_BOS, NULL, MOE_OK},
        {"unknown token types", K_TYPES, m_types_wild, MOE_OK},
        {"empty token texts", K_TOKENS, m_tokens_with_empty, MOE_OK},
        {"eot out of range", 0, m_eot_range, MOE_OK},
        {"no model", K_MODEL, NULL, MOE_ERR_FORMAT},
        {"model not a string", K_MODEL, m_model_int, MOE_ERR_FORMAT},
        {"model llama", K_MODEL, m_model_llama, MOE_ERR_UNSUPPORTED},
        {"unknown pre", K_PRE, m_pre_bad, MOE_ERR_UNSUPPORTED},
        {"pre not a string", K_PRE, m_pre_int, MOE_ERR_FORMAT},
        {"no tokens", K_TOKENS | K_TYPES, NULL, MOE_ERR_FORMAT},
        {"tokens of int32", K_TOKENS | K_TYPES, m_tokens_int, MOE_ERR_FORMAT},
        {"tokens a string", K_TOKENS | K_TYPES, m_tokens_str, MOE_ERR_FORMAT},
        {"empty vocabulary", K_TOKENS | K_TYPES | K_MERGES | K_BOS, m_tokens_empty, MOE_ERR_FORMAT},
        {"token_type too short", K_TYPES, m_types_short, MOE_ERR_FORMAT},
        {"token_type of float", K_TYPES, m_types_float, MOE_ERR_FORMAT},
        {"no merges", K_MERGES, NULL, MOE_ERR_FORMAT},
        {"merges of int32", K_MERGES, m_merges_int, MOE_ERR_FORMAT},
        {"merge names unknown token", K_MERGES, m_merges_unknown, MOE_ERR_FORMAT},
        {"merge result not a token", K_MERGES, m_merges_result_unknown, MOE_ERR_FORMAT},
        {"merge without space", K_MERGES, m_merges_nospace, MOE_ERR_FORMAT},
        {"merge is one space", K_MERGES, m_merges_leading_space, MOE_ERR_FORMAT},
        {"merge empty", K_MERGES, m_merges_empty_str, MOE_ERR_FORMAT},
        {"bos out of range", K_BOS, m_bos_range, MOE_ERR_FORMAT},
        {"bos 0xffffffff", K_BOS, m_bos_huge, MOE_ERR_FORMAT},
        {"bos a string", K_BOS, m_bos_str, MOE_ERR_FORMAT},
        {"bos int32", K_BOS, m_bos_i32, MOE_ERR_FORMAT},
        {"eos out of range", K_BOS, m_eos_range, MOE_ERR_FORMAT},
        {"add_bos not bool", K_ADDBOS, m_addbos_u32, MOE_ERR_FORMAT},
        {"chat_template not a string", 0, m_tmpl_int, MOE_ERR_FORMAT},
    };
    char dir[512], path[600];
    tu_tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/h.gguf", dir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const hcase *c = &cases[i];
        unlink(path);
        moe_status st = build(path, c);
        CHECK(st == MOE_OK, "%s: writing the file failed", c->name);
        if (st) continue;
        moe_gguf *g = NULL;
        char err[256];
        st = moe_gguf_open(path, &g, err, sizeof err);
        CHECK(st == MOE_OK, "%s: gguf open: %s", c->name, err);
        if (st) continue;
        moe_tok *t = (moe_tok *)&err; /* must be reset to NULL on failure */
        strcpy(err, "");
        st = moe_tok_init_from_gguf(g, &t, err, sizeof err);
        CHECK(st == c->want, "%s: status %s, want %s (%s)", c->name, moe_status_str(st), moe_status_str(c->want), err);
        if (st) {
            CHECK(t == NULL, "%s: *out not NULL", c->name);
            CHECK(err[0] && !strchr(err, '\n'), "%s: message '%s'", c->name, err);
            printf("  %-40s -> %s: %s\n", c->name, moe_status_str(st), err);
        } else if (t) {
            /* a loaded hostile vocabulary still encodes anything without crashing */
            int32_t *ids = NULL;
            size_t n = 0;
            const char *s = "ab ba <s>\xff\xfe abab </s> \xf4\x90\x80\x80";
            CHECK(moe_tok_encode(t, s, strlen(s), 1, 1, &ids, &n) == MOE_OK, "%s: encode", c->name);
            for (size_t k = 0; k < n; k++) CHECK(ids[k] >= 0 && ids[k] < moe_tok_n_vocab(t), "%s: id range", c->name);
            char *d = NULL;
            CHECK(moe_tok_decode(t, ids, n, 1, &d, NULL) == MOE_OK, "%s: decode", c->name);
            free(d);
            free(ids);
            moe_tok_free(t);
        }
        moe_gguf_close(g);
    }
    unlink(path);
    rmdir(dir);
    /* argument errors */
    moe_tok *t = NULL;
    CHECK(moe_tok_init_from_gguf(NULL, &t, NULL, 0) == MOE_ERR_INVAL && !t, "NULL gguf");
    moe_tok_free(NULL);
    moe_tok_stream_free(NULL);
    return test_done();
}
