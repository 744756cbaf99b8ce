/* moe CLI: one function per subcommand (apps/cmd_*.c). Each returns the process exit status:
 * 0 success, 1 user error (one-line message on stderr), 2 internal error. */
#ifndef MOE_CMDS_H
#define MOE_CMDS_H

int moe_cmd_init(int argc, char **argv);
int moe_cmd_eval(int argc, char **argv);
int moe_cmd_run(int argc, char **argv);
int moe_cmd_bench(int argc, char **argv);
int moe_cmd_info(int argc, char **argv);
int moe_cmd_convert(int argc, char **argv);
int moe_cmd_quantize(int argc, char **argv);
int moe_cmd_tokenize(int argc, char **argv);
int moe_cmd_detokenize(int argc, char **argv);
int moe_cmd_serve(int argc, char **argv);
int moe_cmd_experts(int argc, char **argv);
int moe_cmd_train(int argc, char **argv);
int moe_cmd_tenants(int argc, char **argv);

#endif
