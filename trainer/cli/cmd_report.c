/* `tailor report RUN_DIR [--out FILE]`: its arguments and messages; the page is tl_report_write (eval/tl_report.h).
 * Prints the path written on stdout. */
#include <stdio.h>
#include <string.h>

#include "data/tl_io.h"
#include "trainer/cli/cli.h"
#include "trainer/eval/tl_report.h"

int tl_cmd_report(int argc, char **argv) {
    const char *run = NULL, *out = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--out")) {
            if (i + 1 >= argc) return tl_cli_usage_error(NULL, "report: --out needs a FILE", NULL);
            out = argv[++i];
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            fputs("usage: tailor report RUN_DIR [--out FILE]   (default RUN_DIR/report.html)\n", stdout);
            return 0;
        } else if (argv[i][0] != '-' && !run) {
            run = argv[i];
        } else {
            return tl_cli_usage_error(NULL, "report: unexpected argument '%s'", argv[i]);
        }
    }
    if (!run) return tl_cli_usage_error(NULL, "report needs a RUN_DIR", NULL);
    tl_error err = {0};
    char def[4096];
    if (!out) {
        if (tl_path_join(def, sizeof def, run, "report.html", &err)) {
            tl_cli_fail(&err);
            return 1;
        }
        out = def;
    }
    if (tl_report_write(run, out, &err)) return tl_cli_fail(&err);
    printf("%s\n", out);
    return 0;
}
