/* moe tokenize / moe detokenize: text <-> token ids with a model's (or vocab-only GGUF's)
 * tokenizer. Thin over include/moe/tok.h. Exit 0 ok, 1 user error (one line), 2 internal. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cmds.h"
#include "moe/tok.h"


static void tok_usage(FILE *f) {
    fprintf(f,
            "usage: moe tokenize -m MODEL [--no-bos] [--no-special] (TEXT | --jsonl FILE | -f FILE)\n"
            "\n"
            "Print the token ids of TEXT as a JSON array, e.g. [0, 19923, 2058].\n"
            "  -m, --model MODEL  GGUF file with tokenizer.* keys (a model or a vocab-only file)\n"
            "  --no-bos           do not prepend BOS (default: as the vocabulary's add_bos_token)\n"
            "  --no-special       treat texts of control tokens such as <\xef\xbd\x9cUser\xef\xbd\x9c> as plain text\n"
            "  --byte-exact       keep invalid UTF-8 bytes as themselves (default: U+FFFD, as llama.cpp)\n"
            "  -f, --file FILE    tokenize the raw bytes of FILE ('-' for stdin)\n"
            "  --jsonl FILE       one input per line: a JSON string, or an object with \"text\" (or\n"
            "                     \"text_hex\") and optional \"bos\"/\"special\" booleans; prints one\n"
            "                     JSON array per line\n");
}

static void detok_usage(FILE *f) {
    fprintf(f,
            "usage: moe detokenize -m MODEL (IDS... | --ids 1,2,3)\n"
            "\n"
            "Print the text of token ids (ids may be separated by spaces or commas, [ ] allowed).\n"
            "  -m, --model MODEL  GGUF file with tokenizer.* keys\n"
            "  --no-special       leave out the text of control tokens (BOS, EOS, <\xef\xbd\x9cUser\xef\xbd\x9c>, ...)\n");
}

static int load(const char *cmd, const char *path, moe_gguf **g, moe_tok **t) {
    char err[512];
    if (!path) return cli_fail(cmd, "no model given (-m MODEL)");
    if (moe_gguf_open(path, g, err, sizeof err)) return cli_fail(cmd, "%s: %s", path, err);
    moe_status st = moe_tok_init_from_gguf(*g, t, err, sizeof err);
    if (st) {
        moe_gguf_close(*g);
        return st == MOE_ERR_NOMEM ? (fprintf(stderr, "moe %s: out of memory\n", cmd), 2) : cli_fail(cmd, "%s: %s", path, err);
    }
    return 0;
}

static void print_ids(FILE *f, const int32_t *ids, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++) fprintf(f, i ? ", %d" : "%d", ids[i]);
    fputs("]\n", f);
}

static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(b, cap *= 2);
            if (!nb) {
                free(b);
                return NULL;
            }
            b = nb;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    *len = n;
    return b;
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static int run_jsonl(const moe_tok *t, const char *path, unsigned flags) {
    FILE *f = fopen(path, "rb");
    if (!f) return cli_fail("tokenize", "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t ll;
    long lineno = 0;
    int rc = 0;
    while ((ll = getline(&line, &cap, f)) > 0) {
        lineno++;
        while (ll > 0 && (line[ll - 1] == '\n' || line[ll - 1] == '\r')) ll--;
        if (ll == 0) continue;
        json_error_t je;
        json_t *o = json_loadb(line, (size_t)ll, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!o) {
            rc = cli_fail("tokenize", "%s:%ld: %s", path, lineno, je.text);
            break;
        }
        unsigned fl = flags;
        const char *txt = NULL;
        size_t tl = 0;
        char *own = NULL;
        json_t *jt = json_is_string(o) ? o : json_object_get(o, "text");
        if (json_is_string(jt)) {
            txt = json_string_value(jt);
            tl = json_string_length(jt);
        } else if (json_is_string(json_object_get(o, "text_hex"))) {
            const char *h = json_string_value(json_object_get(o, "text_hex"));
            size_t hl = strlen(h);
            own = malloc(hl / 2 + 1);
            for (size_t i = 0; own && i + 1 < hl; i += 2) {
                int a = hexval(h[i]), b = hexval(h[i + 1]);
                if (a < 0 || b < 0) {
                    free(own);
                    own = NULL;
                    break;
                }
                own[tl++] = (char)(a * 16 + b);
            }
            if (!own) {
                json_decref(o);
                rc = cli_fail("tokenize", "%s:%ld: bad text_hex", path, lineno);
                break;
            }
            txt = own;
        } else {
            json_decref(o);
            rc = cli_fail("tokenize", "%s:%ld: expected a JSON string or an object with \"text\"", path, lineno);
            break;
        }
        if (json_is_object(o)) {
            json_t *b = json_object_get(o, "bos"), *s = json_object_get(o, "special");
            if (json_is_boolean(b)) fl = json_is_true(b) ? (fl | MOE_TOK_ADD_BOS) : (fl & ~(unsigned)MOE_TOK_ADD_BOS);
            if (json_is_boolean(s))
                fl = json_is_true(s) ? (fl | MOE_TOK_PARSE_SPECIAL) : (fl & ~(unsigned)MOE_TOK_PARSE_SPECIAL);
        }
        int32_t *ids = NULL;
        size_t n = 0;
        moe_status st = moe_tok_encode_ex(t, txt, tl, fl, &ids, &n);
        free(own);
        json_decref(o);
        if (st) {
            fprintf(stderr, "moe tokenize: %s\n", moe_status_str(st));
            rc = 2;
            break;
        }
        print_ids(stdout, ids, n);
        free(ids);
    }
    free(line);
    fclose(f);
    return rc;
}

int moe_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *jsonl = NULL, *file = NULL, *text = NULL;
    unsigned flags = MOE_TOK_ADD_BOS | MOE_TOK_PARSE_SPECIAL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tok_usage(stdout);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--jsonl") || !strcmp(a, "-f") ||
                   !strcmp(a, "--file")) {
            if (i + 1 >= argc) return cli_fail("tokenize", "option %s needs a value", a);
            const char *v = argv[++i];
            if (a[1] == 'm' || !strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--jsonl")) jsonl = v;
            else file = v;
        } else if (!strcmp(a, "--no-bos")) {
            flags &= ~(unsigned)MOE_TOK_ADD_BOS;
        } else if (!strcmp(a, "--no-special")) {
            flags &= ~(unsigned)MOE_TOK_PARSE_SPECIAL;
        } else if (!strcmp(a, "--byte-exact")) {
            flags |= MOE_TOK_BYTE_EXACT;
        } else if (a[0] == '-' && a[1] && strcmp(a, "--")) {
            return cli_fail("tokenize", "unknown option '%s' (try --help)", a);
        } else {
            if (!strcmp(a, "--")) {
                if (i + 1 >= argc) break;
                a = argv[++i];
            }
            if (text) return cli_fail("tokenize", "more than one TEXT argument (quote the text)");
            text = a;
        }
    }
    if (!!text + !!jsonl + !!file != 1) return cli_fail("tokenize", "give exactly one of TEXT, --jsonl FILE or -f FILE");
    moe_gguf *g;
    moe_tok *t;
    int rc = load("tokenize", model, &g, &t);
    if (rc) return rc;
    if (jsonl) {
        rc = run_jsonl(t, jsonl, flags);
    } else {
        char *buf = NULL;
        size_t len = 0;
        if (file) {
            FILE *f = !strcmp(file, "-") ? stdin : fopen(file, "rb");
            if (!f) {
                rc = cli_fail("tokenize", "%s: %s", file, strerror(errno));
                goto done;
            }
            buf = read_all(f, &len);
            if (f != stdin) fclose(f);
            if (!buf) {
                fprintf(stderr, "moe tokenize: out of memory\n");
                rc = 2;
                goto done;
            }
        }
        int32_t *ids = NULL;
        size_t n = 0;
        moe_status st = moe_tok_encode_ex(t, buf ? buf : text, buf ? len : strlen(text), flags, &ids, &n);
        free(buf);
        if (st) {
            fprintf(stderr, "moe tokenize: %s\n", moe_status_str(st));
            rc = 2;
            goto done;
        }
        print_ids(stdout, ids, n);
        free(ids);
    }
done:
    moe_tok_free(t);
    moe_gguf_close(g);
    return rc;
}

/* Append the ids in s ("1,2 3", "[1, 2]") to *ids; -1 on a bad number. */
static int parse_ids(const char *s, int32_t **ids, size_t *n, size_t *cap, const char **bad) {
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == ',' || *p == '[' || *p == ']' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *e;
        errno = 0;
        long long v = strtoll(p, &e, 10);
        if (e == p || errno || v < 0 || v > INT32_MAX || (*e && !strchr(" ,[]\t\n", *e))) {
            *bad = p;
            return -1;
        }
        if (*n == *cap) {
            size_t nc = *cap ? 2 * *cap : 64;
            int32_t *nv = realloc(*ids, nc * sizeof *nv);
            if (!nv) return -2;
            *ids = nv;
            *cap = nc;
        }
        (*ids)[(*n)++] = (int32_t)v;
        p = e;
    }
    return 0;
}

int moe_cmd_detokenize(int argc, char **argv) {
    const char *model = NULL;
    int special = 1;
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            detok_usage(stdout);
            free(ids);
            return 0;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--ids")) {
            if (i + 1 >= argc) {
                free(ids);
                return cli_fail("detokenize", "option %s needs a value", a);
            }
            const char *v = argv[++i];
            if (strcmp(a, "--ids")) {
                model = v;
                continue;
            }
            a = v;
        } else if (!strcmp(a, "--no-special")) {
            special = 0;
            continue;
        } else if (a[0] == '-' && !(a[1] >= '0' && a[1] <= '9')) {
            free(ids);
            return cli_fail("detokenize", "unknown option '%s' (try --help)", a);
        }
        const char *bad = NULL;
        int r = parse_ids(a, &ids, &n, &cap, &bad);
        if (r == -2) {
            free(ids);
            fprintf(stderr, "moe detokenize: out of memory\n");
            return 2;
        }
        if (r) {
            rc = cli_fail("detokenize", "'%s' is not a token id", bad);
            free(ids);
            return rc;
        }
    }
    if (!n) {
        free(ids);
        return cli_fail("detokenize", "no token ids given (IDS... or --ids 1,2,3)");
    }
    moe_gguf *g;
    moe_tok *t;
    rc = load("detokenize", model, &g, &t);
    if (rc) {
        free(ids);
        return rc;
    }
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= moe_tok_n_vocab(t)) {
            rc = cli_fail("detokenize", "token id %d is out of range (vocabulary has %d tokens)", ids[i], moe_tok_n_vocab(t));
            goto done;
        }
    char *out = NULL;
    size_t len = 0;
    if (moe_tok_decode(t, ids, n, special, &out, &len)) {
        fprintf(stderr, "moe detokenize: out of memory\n");
        rc = 2;
        goto done;
    }
    fwrite(out, 1, len, stdout);
    fputc('\n', stdout);
    free(out);
done:
    free(ids);
    moe_tok_free(t);
    moe_gguf_close(g);
    return rc;
}
