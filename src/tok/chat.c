/* moekit tok: chat templates (spec deepseek2.md §6, llama.cpp src/llama-chat.cpp).
 *
 * Detection mirrors llm_chat_detect_template: a string that is exactly a template name is
 * that template; otherwise the same chain of substring tests, in the same order, so a
 * template that llama.cpp would render as ChatML is reported as "chatml" here too (and
 * refused, since moekit only renders the DeepSeek formats). Renderers never emit BOS. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tok/tok_impl.h"

#define FW_BAR "\xef\xbd\x9c" /* U+FF5C FULLWIDTH VERTICAL LINE */
#define LOW8 "\xe2\x96\x81"   /* U+2581 LOWER ONE EIGHTH BLOCK */
#define DS_USER "<" FW_BAR "User" FW_BAR ">"
#define DS_ASSISTANT "<" FW_BAR "Assistant" FW_BAR ">"
#define DS_EOS "<" FW_BAR "end" LOW8 "of" LOW8 "sentence" FW_BAR ">"

static const char *const k_names[] = {
    "chatml", "llama2", "llama2-sys", "llama2-sys-bos", "llama2-sys-strip", "mistral-v1",
    "mistral-v3", "mistral-v3-tekken", "mistral-v7", "mistral-v7-tekken", "phi3", "phi4",
    "falcon3", "zephyr", "monarch", "gemma", "orion", "openchat", "vicuna", "vicuna-orca",
    "deepseek", "deepseek2", "deepseek3", "command-r", "llama3", "chatglm3", "chatglm4",
    "glmedge", "minicpm", "exaone3", "exaone4", "rwkv-world", "granite", "gigachat", "megrez",
    "yandex", "bailing", "llama4", "smolvlm", "hunyuan-moe", "hunyuan-dense", "kimi-k2",
};

const char *moe_chat_detect(const char *tmpl) {
    if (!tmpl) return NULL;
    for (size_t i = 0; i < sizeof k_names / sizeof k_names[0]; i++)
        if (!strcmp(tmpl, k_names[i])) return k_names[i];
#define HAS(s) (strstr(tmpl, (s)) != NULL)
    if (HAS("<|im_start|>")) return HAS("<|im_sep|>") ? "phi4" : HAS("<end_of_utterance>") ? "smolvlm" : "chatml";
    if (!strncmp(tmpl, "mistral", 7) || HAS("[INST]")) {
        if (HAS("[SYSTEM_PROMPT]")) return "mistral-v7";
        if (HAS("' [INST] ' + system_message") || HAS("[AVAILABLE_TOOLS]"))
            return HAS(" [INST]") ? "mistral-v1" : HAS("\"[INST]\"") ? "mistral-v3-tekken" : "mistral-v3";
        return "llama2";
    }
    if (HAS("<|assistant|>") && HAS("<|end|>")) return "phi3";
    if (HAS("[gMASK]<sop>")) return "chatglm4";
    if (HAS("<|assistant|>") && HAS("<|user|>")) return HAS("</s>") ? "falcon3" : "glmedge";
    if (HAS("<|{{ item['role'] }}|>") && HAS("<|begin_of_image|>")) return "glmedge";
    if (HAS("<|user|>") && HAS("<|endoftext|>")) return "zephyr";
    if (HAS("bos_token + message['role']")) return "monarch";
    if (HAS("<start_of_turn>")) return "gemma";
    if (HAS("'\\n\\nAssistant: ' + eos_token")) return "orion";
    if (HAS("GPT4 Correct ")) return "openchat";
    if (HAS("USER: ") && HAS("ASSISTANT: ")) return HAS("SYSTEM: ") ? "vicuna-orca" : "vicuna";
    if (HAS("### Instruction:") && HAS("<|EOT|>")) return "deepseek";
    if (HAS("<|START_OF_TURN_TOKEN|>") && HAS("<|USER_TOKEN|>")) return "command-r";
    if (HAS("<|start_header_id|>") && HAS("<|end_header_id|>")) return "llama3";
    if (HAS("[gMASK]sop")) return "chatglm3";
    if (HAS("<\xe7\x94\xa8\xe6\x88\xb7>")) return "minicpm"; /* <用户> */
    if (HAS("'Assistant: ' + message['content'] + eos_token")) return "deepseek2";
    if (HAS(DS_ASSISTANT) && HAS(DS_USER) && HAS(DS_EOS)) return "deepseek3";
    if (HAS("[|system|]") && HAS("[|assistant|]") && HAS("[|endofturn|]"))
        return HAS("[|tool|]") ? "exaone4" : "exaone3";
    if (HAS("rwkv-world") || HAS("{{- 'User: ' + message['content']|trim + '\\n\\n' -}}")) return "rwkv-world";
    if (HAS("<|start_of_role|>")) return "granite";
    if (HAS("message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1]"))
        return "gigachat";
    if (HAS("<|role_start|>")) return "megrez";
    if (HAS(" \xd0\x90\xd1\x81\xd1\x81\xd0\xb8\xd1\x81\xd1\x82\xd0\xb5\xd0\xbd\xd1\x82:")) return "yandex";
    if (HAS("<role>ASSISTANT</role>") && HAS("'HUMAN'")) return "bailing";
    if (HAS("<|header_start|>") && HAS("<|header_end|>")) return "llama4";
    if (HAS("<|endofuserprompt|>")) return "dots1";
    if (HAS("<|startoftext|>") && HAS("<|extra_4|>")) return "hunyuan-moe";
    if (HAS("<" FW_BAR "hy_place" LOW8 "holder" LOW8 "no" LOW8 "2" FW_BAR ">") &&
        HAS("<" FW_BAR "hy_place" LOW8 "holder" LOW8 "no" LOW8 "3" FW_BAR ">"))
        return "hunyuan-dense";
    if (HAS("<|im_assistant|>assistant<|im_middle|>")) return "kimi-k2";
#undef HAS
    return NULL;
}

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s) {
    size_t l = strlen(s);
    if (b->oom) return;
    if (b->n + l + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + l + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, l + 1);
    b->n += l;
}

static void set_err(char *err, size_t n, const char *fmt, ...) {
    if (!err || !n) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

moe_status moe_chat_apply_ex(const moe_tok *t, const char *name, const moe_chat_msg *msgs,
                             size_t n, int add_generation_prompt, char **out, char *err,
                             size_t errlen) {
    moe_status st = MOE_OK;
    char *own = NULL;
    sbuf b = {0};
    if (out) *out = NULL;
    if (!out || (n && !msgs)) return MOE_ERR_INVAL;
    const char *tmpl = name;
    if (!tmpl) {
        if (!t || !t->chat_template.len) {
            set_err(err, errlen, "the model has no tokenizer.chat_template; name a built-in template (deepseek2, deepseek3)");
            return MOE_ERR_UNSUPPORTED;
        }
        own = malloc(t->chat_template.len + 1);
        if (!own) return MOE_ERR_NOMEM;
        memcpy(own, t->chat_template.ptr, t->chat_template.len);
        own[t->chat_template.len] = 0;
        tmpl = own;
    }
    const char *kind = moe_chat_detect(tmpl);
    int v3;
    if (kind && !strcmp(kind, "deepseek3")) {
        v3 = 1;
    } else if (kind && !strcmp(kind, "deepseek2")) {
        v3 = 0;
    } else {
        if (kind)
            set_err(err, errlen, "chat template '%s' is not supported (built-in: deepseek2, deepseek3)", kind);
        else
            set_err(err, errlen, "unknown chat template; name a built-in one (deepseek2, deepseek3)");
        st = MOE_ERR_UNSUPPORTED;
        goto cleanup;
    }
    sb_add(&b, "");
    for (size_t i = 0; i < n; i++) {
        const char *role = msgs[i].role ? msgs[i].role : "";
        const char *content = msgs[i].content ? msgs[i].content : "";
        if (!strcmp(role, "system")) {
            sb_add(&b, content);
            sb_add(&b, "\n\n");
        } else if (!strcmp(role, "user")) {
            if (v3) {
                sb_add(&b, DS_USER);
                sb_add(&b, content);
            } else {
                sb_add(&b, "User: ");
                sb_add(&b, content);
                sb_add(&b, "\n\n");
            }
        } else if (!strcmp(role, "assistant")) {
            sb_add(&b, v3 ? DS_ASSISTANT : "Assistant: ");
            sb_add(&b, content);
            sb_add(&b, DS_EOS);
        }
        /* other roles are skipped, as llama.cpp does */
    }
    if (add_generation_prompt) sb_add(&b, v3 ? DS_ASSISTANT : "Assistant:");
    if (b.oom) {
        st = MOE_ERR_NOMEM;
        goto cleanup;
    }
    *out = b.p;
    b.p = NULL;
cleanup:
    free(b.p);
    free(own);
    return st;
}

moe_status moe_chat_apply(const moe_tok *t, const char *name, const moe_chat_msg *msgs, size_t n,
                          int add_generation_prompt, char **out) {
    return moe_chat_apply_ex(t, name, msgs, n, add_generation_prompt, out, NULL, 0);
}
