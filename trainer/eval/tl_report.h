/* tl_report: `tailor report RUN_DIR` renders one self-contained HTML page for a finished (or running) run:
 * training curves from metrics.jsonl, the adapter x user heatmap from eval.json's cross matrix and the eval
 * tables, all inline (SVG + HTML, no scripts, no network), so the file can be mailed or opened offline. */
#ifndef TL_REPORT_H
#define TL_REPORT_H

#include "kernels/tl_status.h"

/* Reads run_dir/metrics.jsonl (required) and run_dir/eval.json (optional) and writes the page atomically to
 * out_path. TL_ERR_INPUT for a missing or malformed input file (the message names the file and line). */
tl_status tl_report_write(const char *run_dir, const char *out_path, tl_error *err);

/* CLI: `RUN_DIR [--out FILE]` (default RUN_DIR/report.html). Prints the path written on stdout, errors as one
 * line on stderr; returns the exit code (0 ok, 1 runtime failure, 2 bad usage or input). */
int tl_report_main(int argc, char **argv);

#endif
