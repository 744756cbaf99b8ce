/* moe eval: placeholder, filled in by the engine core work. */
#include <stdio.h>

#include "cmds.h"

int moe_cmd_eval(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe eval: not available yet\n");
    return 2;
}
