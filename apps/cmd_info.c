/* moe info: placeholder, filled in by the engine core work. */
#include <stdio.h>

#include "cmds.h"

int moe_cmd_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe info: not available yet\n");
    return 2;
}
