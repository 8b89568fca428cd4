/* tl_report: `tailor report RUN_DIR` renders one self-contained HTML page for a finished (or running) run:
 * training curves from metrics.jsonl, the adapter x user heatmap from eval.json's cross matrix and the eval
 * tables, all inline (SVG + HTML, no scripts, no network), so the file can be mailed or opened offline. Its command
 * line (`RUN_DIR [--out FILE]`, default RUN_DIR/report.html): trainer/cli/cmd_report.c. */
#ifndef TL_REPORT_H
#define TL_REPORT_H

#include "kernels/tl_status.h"

/* Reads run_dir/metrics.jsonl (required) and run_dir/eval.json (optional) and writes the page atomically to
 * out_path. TL_ERR_INPUT for a missing or malformed input file (the message names the file and line). */
tl_status tl_report_write(const char *run_dir, const char *out_path, tl_error *err);

#endif
