/* tok: pre-tokenizer splits worked out by hand from the regexes of spec §5.4, for the
 * pre-tokenizers the reference vectors do not cover (deepseek-llm, default) and a few
 * deepseek-v3 edge cases. Pieces are written joined by '|'. */
#include "moe/tok.h"
#include "testutil.h"
#include "tok/tok_impl.h"

static void expect(int kind, const char *text, const char *want) {
    pt_buf b;
    memset(&b, 0, sizeof b);
    size_t len = strlen(text), nb = 0;
    long n = moe_pretok_decode(NULL, &b, (const uint8_t *)text, len);
    char got[1024];
    size_t o = 0;
    if (n >= 0 && !moe_pretok_split(kind, &b, (size_t)n, &nb)) {
        for (size_t p = 0; p + 1 < nb; p++) {
            if (p) got[o++] = '|';
            size_t a = b.off[b.bnd[p]], e = b.off[b.bnd[p + 1]];
            memcpy(got + o, text + a, e - a);
            o += e - a;
        }
    }
    got[o] = 0;
    CHECK(!strcmp(got, want), "kind %d '%s': got '%s' want '%s'", kind, text, got, want);
    moe_pretok_buf_free(&b);
}

int main(void) {
    /* deepseek-llm: [\r\n] | \s?LETTERS+ | \s?PUNCT+ | \s+$ | CJK+ | \p{N}+ */
    expect(PT_DEEPSEEK_LLM, "Hello, world! 123\n", "Hello|,| world|!| |123|\n");
    expect(PT_DEEPSEEK_LLM, "a\r\nb", "a|\r|\n|b");
    expect(PT_DEEPSEEK_LLM, "end   ", "end|   ");
    expect(PT_DEEPSEEK_LLM, "x  y", "x| | y");
    /* U+3000 is whitespace to the regex engine: \s? takes it, the punct class does not */
    expect(PT_DEEPSEEK_LLM, "a\xe3\x80\x80" "b", "a|\xe3\x80\x80" "b");
    expect(PT_DEEPSEEK_LLM, "\xe4\xbd\xa0\xe5\xa5\xbd\xe3\x80\x82", "\xe4\xbd\xa0\xe5\xa5\xbd|\xe3\x80\x82");
    expect(PT_DEEPSEEK_LLM, "\xed\x95\x9c\xea\xb8\x80 12345", "\xed\x95\x9c\xea\xb8\x80| |12345");
    /* regex 3's class [!-/:-~] also holds A-Z a-z, and every regex applies to every piece:
     * the letter piece "café" is split again into "caf" (ASCII run) and "é" */
    expect(PT_DEEPSEEK_LLM, "caf\xc3\xa9 \xce\xb1\xce\xb2", "caf|\xc3\xa9| \xce\xb1\xce\xb2");
    expect(PT_DEEPSEEK_LLM, "(x)=>{}", "(|x|)=>{}");
    /* default (GPT-2): [\p{P}$+<=>^~|]+ | 's|'t|...| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S) | \p{N}+ | [0-9]{3} */
    expect(PT_DEFAULT, "I'm here", "I|'|m| here");
    expect(PT_DEFAULT, "a 1234567 b", "a| |123|456|7| b");
    expect(PT_DEFAULT, "x   y", "x|  | y");
    expect(PT_DEFAULT, "x\ty", "x|\t|y");
    /* deepseek-v3 edge cases */
    expect(PT_DEEPSEEK_V3, "1234567", "123|456|7");
    expect(PT_DEEPSEEK_V3, "x   y", "x|  | y");
    expect(PT_DEEPSEEK_V3, "a \n\n b", "a| \n\n| b");
    expect(PT_DEEPSEEK_V3, "it's.com", "it|'s|.com");
    expect(PT_DEEPSEEK_V3, "\xe3\x81\x93\xe3\x82\x8c\xe6\xbc\xa2\xe5\xad\x97" "abc", "\xe3\x81\x93\xe3\x82\x8c\xe6\xbc\xa2\xe5\xad\x97|abc");
    expect(PT_DEEPSEEK_V3, " \xf0\x9f\x9a\x80!\n", " \xf0\x9f\x9a\x80!\n");
    /* Unicode 15.1 additions are categorised like llama.cpp's tables: CJK ext. I is a letter */
    expect(PT_DEEPSEEK_V3, " \xf0\xae\xaf\xb0", " \xf0\xae\xaf\xb0");
    /* >U+10FFFF: each byte is U+FFFD (a symbol), no crash */
    expect(PT_DEEPSEEK_V3, "a\xf4\x90\x80\x80" "b", "a|\xf4\x90\x80\x80|b");
    CHECK((moe_pretok_flags(0x2EBF0) & CF_L) && (moe_pretok_flags(0x31EF) & CF_S), "15.1 patch");
    CHECK(moe_pretok_flags(0x1FA89) == 0 && moe_pretok_flags(0x1C89) == 0, "Unicode 16 code points unassigned");
    CHECK(moe_pretok_flags(0x3000) == CF_WS && moe_pretok_flags(0x85) == CF_WS, "non-ASCII whitespace");
    return test_done();
}
