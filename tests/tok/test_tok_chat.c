/* tok: chat templates (spec deepseek2.md §6) and their detection from tokenizer.chat_template. */
#include "moe/tok.h"
#include "testutil.h"

#define FW "\xef\xbd\x9c"
#define L8 "\xe2\x96\x81"
#define USER "<" FW "User" FW ">"
#define ASSIST "<" FW "Assistant" FW ">"
#define EOS "<" FW "end" L8 "of" L8 "sentence" FW ">"

static void expect(const moe_tok *t, const char *tmpl, const moe_chat_msg *m, size_t n, int gen, const char *want) {
    char *out = NULL;
    char err[256] = "";
    moe_status st = moe_chat_apply_ex(t, tmpl, m, n, gen, &out, err, sizeof err);
    CHECK(st == MOE_OK && out && !strcmp(out, want), "template %s: got '%s' want '%s' (%s)", tmpl ? tmpl : "(model)",
          out ? out : "(null)", want, err);
    free(out);
}

int main(void) {
    moe_chat_msg sys_user[] = {{"system", "You are helpful."}, {"user", "Hi"}};
    /* the spec's example */
    expect(NULL, "deepseek3", sys_user, 2, 1, "You are helpful.\n\n" USER "Hi" ASSIST);
    expect(NULL, "deepseek3", sys_user, 2, 0, "You are helpful.\n\n" USER "Hi");
    moe_chat_msg conv[] = {{"system", "S"}, {"user", "Q1"}, {"assistant", "A1"}, {"user", "Q2"}};
    expect(NULL, "deepseek3", conv, 4, 1, "S\n\n" USER "Q1" ASSIST "A1" EOS USER "Q2" ASSIST);
    expect(NULL, "deepseek2", conv, 4, 1, "S\n\nUser: Q1\n\nAssistant: A1" EOS "User: Q2\n\nAssistant:");
    expect(NULL, "deepseek2", sys_user, 2, 0, "You are helpful.\n\nUser: Hi\n\n");
    /* content verbatim, no trimming; unknown roles skipped like llama.cpp */
    moe_chat_msg odd[] = {{"user", "  spaced \n"}, {"tool", "ignored"}, {"assistant", ""}};
    expect(NULL, "deepseek3", odd, 3, 0, USER "  spaced \n" ASSIST EOS);
    expect(NULL, "deepseek3", NULL, 0, 1, ASSIST);

    /* detection like llama.cpp */
    CHECK(!strcmp(moe_chat_detect("deepseek3"), "deepseek3"), "name");
    CHECK(!strcmp(moe_chat_detect("{% if x %}" USER "{{c}}" ASSIST "{{c}}" EOS), "deepseek3"), "v3 markers");
    const char *v2 = "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + "
                     "'\\n\\n' }}{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
                     "{% endif %}{% endfor %}" USER ASSIST EOS;
    CHECK(!strcmp(moe_chat_detect(v2), "deepseek2"), "v2 is checked before v3");
    CHECK(!strcmp(moe_chat_detect("<|im_start|>" USER ASSIST EOS), "chatml"), "earlier tests take precedence");
    CHECK(moe_chat_detect("hello {{ x }}") == NULL, "unknown");
    expect(NULL, "{% x %}" USER ASSIST EOS, sys_user, 2, 1, "You are helpful.\n\n" USER "Hi" ASSIST);

    char *out = (char *)1;
    char err[256] = "";
    moe_status st = moe_chat_apply_ex(NULL, "hello {{ x }}", sys_user, 2, 1, &out, err, sizeof err);
    CHECK(st == MOE_ERR_UNSUPPORTED && out == NULL && strstr(err, "deepseek3"), "unknown template error: %s", err);
    st = moe_chat_apply_ex(NULL, "chatml", sys_user, 2, 1, &out, err, sizeof err);
    CHECK(st == MOE_ERR_UNSUPPORTED && strstr(err, "chatml"), "chatml refused: %s", err);
    st = moe_chat_apply_ex(NULL, NULL, sys_user, 2, 1, &out, err, sizeof err);
    CHECK(st == MOE_ERR_UNSUPPORTED, "no model, no template");

    /* the real DeepSeek-V3 template (HF tokenizer_config.json, converted into the GGUF) */
    char path[1024];
    tu_shared("vectors/tokenizer/deepseek-v3-vocab.gguf", path, sizeof path);
    moe_gguf *g = NULL;
    moe_tok *t = NULL;
    if (moe_gguf_open(path, &g, err, sizeof err) == MOE_OK && moe_tok_init_from_gguf(g, &t, err, sizeof err) == MOE_OK) {
        moe_str ct = moe_tok_chat_template(t);
        CHECK(ct.len > 0, "template present");
        expect(t, NULL, sys_user, 2, 1, "You are helpful.\n\n" USER "Hi" ASSIST);
        /* and it tokenizes with BOS and the control tokens */
        char *p = NULL;
        moe_chat_apply(t, NULL, sys_user, 2, 1, &p);
        int32_t *ids = NULL;
        size_t n = 0;
        moe_tok_encode(t, p, strlen(p), 1, 1, &ids, &n);
        CHECK(n >= 4 && ids[0] == 0 && ids[n - 1] == 128804, "BOS ... <｜Assistant｜>");
        int has_user = 0;
        for (size_t i = 0; i < n; i++) has_user |= ids[i] == 128803;
        CHECK(has_user, "<｜User｜> token");
        free(ids);
        free(p);
    } else {
        CHECK(0, "load %s: %s", path, err);
    }
    moe_tok_free(t);
    moe_gguf_close(g);
    return test_done();
}
