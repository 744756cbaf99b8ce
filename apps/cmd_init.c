/* moe init: placeholder, filled in by the engine core work. */
#include <stdio.h>

#include "cmds.h"

int moe_cmd_init(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe init: not available yet\n");
    return 2;
}
