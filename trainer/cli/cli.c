/* cli: error lines, usage errors and option numbers, shared by every command (cli.h). */
#include "trainer/cli/cli.h"

#include <stdio.h>

#include "kernels/tl_text.h"

int tl_cli_fail(const tl_error *e) {
    fprintf(stderr, "tailor: error: %s\n", e->msg);
    return e->code == TL_OK ? 1 : (int)e->code;
}

int tl_cli_usage_error(const char *command, const char *fmt, const char *arg) {
    char b[TL_ESC_CAP];
    fprintf(stderr, "tailor: error: ");
    fprintf(stderr, fmt, arg ? tl_escape(b, sizeof b, arg) : "");
    if (command)
        fprintf(stderr, " (run 'tailor %s --help' for usage)\n", command);
    else
        fprintf(stderr, " (run 'tailor help' for usage)\n");
    return 2;
}

int tl_cli_parse_i64(const char *what, const char *v, int64_t lo, int64_t hi, int64_t *out) {
    tl_error err = {0};
    return tl_parse_i64(what, v, lo, hi, out, &err) == TL_OK ? 0 : tl_cli_fail(&err);
}

int tl_cli_parse_u64(const char *what, const char *v, uint64_t lo, uint64_t hi, uint64_t *out) {
    tl_error err = {0};
    return tl_parse_u64(what, v, lo, hi, out, &err) == TL_OK ? 0 : tl_cli_fail(&err);
}

int tl_cli_parse_f64(const char *what, const char *v, double lo, double hi, double *out) {
    tl_error err = {0};
    return tl_parse_f64(what, v, lo, hi, out, &err) == TL_OK ? 0 : tl_cli_fail(&err);
}
