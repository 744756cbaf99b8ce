/* moe tokenize / detokenize: placeholder until the tokenizer lands (issue 3). */
#include <stdio.h>

#include "cmds.h"

int moe_cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe tokenize: not available in this build yet\n");
    return 2;
}

int moe_cmd_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe detokenize: not available in this build yet\n");
    return 2;
}
