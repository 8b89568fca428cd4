/* cli: the one voice of tailor to the user. Only trainer/cli/ prints errors and usage; the library returns a
 * tl_status with its message in a tl_error, and these helpers turn it into one line on stderr and the exit code
 * (0 success, 1 runtime failure, 2 bad usage or bad input). */
#ifndef TL_CLI_H
#define TL_CLI_H

#include <stdint.h>

#include "kernels/tl_status.h"

/* "tailor: error: <e->msg>" on stderr; returns e's exit code (1 when e->code is TL_OK). */
int tl_cli_fail(const tl_error *e);

/* "tailor: error: " then fmt with arg (escaped: as typed it may hold control characters, tl_text.h; NULL for a fmt
 * without %s) then " (run 'tailor help' for usage)", or "'tailor <command> --help'" when command is not NULL, on
 * stderr; returns 2. */
int tl_cli_usage_error(const char *command, const char *fmt, const char *arg);

/* The strict number readers of tl_text.h ("1e3", "12abc", 2^64, nan, inf and values outside [lo, hi] refused,
 * naming `what`, never truncated), printing the error: each returns 0 or the exit code. */
int tl_cli_parse_i64(const char *what, const char *v, int64_t lo, int64_t hi, int64_t *out);
int tl_cli_parse_u64(const char *what, const char *v, uint64_t lo, uint64_t hi, uint64_t *out);
int tl_cli_parse_f64(const char *what, const char *v, double lo, double hi, double *out);

/* The commands of cli/cmd_*.c: argv holds the arguments after the command's name; each returns the exit code. */
int tl_cmd_generate(int argc, char **argv);
int tl_cmd_report(int argc, char **argv);
int tl_cmd_submit(int argc, char **argv);

#endif
