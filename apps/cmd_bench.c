/* moe bench: placeholder, filled in by the engine core work. */
#include <stdio.h>

#include "cmds.h"

int moe_cmd_bench(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "moe bench: not available yet\n");
    return 2;
}
