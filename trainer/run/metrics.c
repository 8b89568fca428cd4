/* metrics: metrics.jsonl records, the progress line and its ETA (see tl_metrics.h). */
#include "trainer/run/tl_metrics.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data/tl_io.h"

const char *tl_json_num(char *buf, const char *fmt, double v) {
    if (!isfinite(v)) return "null";
    snprintf(buf, 48, fmt, v);
    return buf;
}

tl_status tl_metrics_open(tl_metrics *M, const char *run_dir, int64_t keep_upto, tl_error *err) {
    char path[TL_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    if (keep_upto >= 0) {
        FILE *in = fopen(path, "r");
        if (in) {
            char tmp[TL_PATH_MAX + 48];
            snprintf(tmp, sizeof tmp, "%s.tmp", path);
            FILE *o = fopen(tmp, "w");
            if (!o) {
                fclose(in);
                return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot write: %s", tmp, strerror(errno));
            }
            char line[8192];
            while (fgets(line, sizeof line, in)) {
                const char *q = strstr(line, "\"step\":");
                long long st = q ? atoll(q + 7) : 0;
                if (st <= keep_upto) fputs(line, o);
            }
            fclose(in);
            int synced = fflush(o) == 0 && fsync(fileno(o)) == 0; /* on disk before it replaces the old file */
            if (fclose(o) || !synced || rename(tmp, path))
                return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot rewrite: %s", path, strerror(errno));
        }
    }
    M->f = fopen(path, keep_upto >= 0 ? "a" : "w");
    if (!M->f) return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot open for writing: %s", path, strerror(errno));
    return TL_OK;
}

void tl_metrics_start(tl_metrics *M, int64_t start, int64_t steps) {
    M->t0 = M->t_last = tl_now_s();
    M->start = start, M->steps = steps;
}

void tl_metrics_close(tl_metrics *M) {
    if (M->f) fclose(M->f);
    M->f = NULL;
}

void tl_format_eta(char *buf, size_t cap, double s) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else
        snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

void tl_metrics_step(tl_metrics *M, const tl_ui *ui, const tl_step_record *r, double t) {
    if (M->f) {
        char j[4][48];
        fprintf(M->f,
                "{\"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, \"tokens\": %lld, "
                "\"tokens_per_s\": %s, \"elapsed_s\": %.3f, \"adapters\": %d, \"truncated\": %lld",
                (long long)r->done_steps, tl_json_num(j[0], "%.6f", r->loss), tl_json_num(j[1], "%.6g", r->lr),
                tl_json_num(j[2], "%.6f", r->grad_norm), (long long)r->tokens,
                tl_json_num(j[3], "%.1f", r->tokens_per_s), t - M->t0, r->adapters, (long long)r->truncated);
        if (r->pref) { /* TRL's batch means over the step's pairs */
            double mean[TL_PREF_N_METRICS];
            tl_pref_stats_mean(r->pref, mean);
            for (int k = 1; k < TL_PREF_N_METRICS; k++)
                if (isfinite(mean[k])) fprintf(M->f, ", \"%s\": %.6f", tl_pref_metric_names[k], mean[k]);
        }
        if (r->extra) fputs(r->extra, M->f);
        fputs("}\n", M->f);
        fflush(M->f);
    }
    char eta[32];
    tl_format_eta(eta, sizeof eta,
                  (t - M->t0) / (double)(r->done_steps - M->start) * (double)(M->steps - r->done_steps));
    if (!ui->quiet) {
        if (ui->is_tty)
            fprintf(ui->out, "\rstep %lld/%lld  loss %.4f  lr %.2e  %.0f tok/s  ETA %s   ", (long long)r->done_steps,
                    (long long)M->steps, r->loss, r->lr, r->tokens_per_s, eta);
        else
            fprintf(ui->out, "step %lld/%lld loss %.4f lr %.3e grad_norm %.4f tokens/s %.0f eta %s\n",
                    (long long)r->done_steps, (long long)M->steps, r->loss, r->lr, r->grad_norm, r->tokens_per_s,
                    eta);
        fflush(ui->out);
    }
    M->t_last = t;
}

void tl_metrics_eval_sft(tl_metrics *M, int64_t step, double loss, double base_loss, int64_t tokens) {
    if (!M || !M->f) return;
    char j[2][48];
    fprintf(M->f, "{\"step\": %lld, \"eval_loss\": %s, \"eval_base_loss\": %s, \"eval_tokens\": %lld}\n",
            (long long)step, tl_json_num(j[0], "%.6f", loss), tl_json_num(j[1], "%.6f", base_loss), (long long)tokens);
    fflush(M->f);
}

void tl_metrics_eval_pref(tl_metrics *M, int64_t step, double loss, double accuracy, double margin) {
    if (!M || !M->f) return;
    char j[3][48];
    fprintf(M->f, "{\"step\": %lld, \"eval_loss\": %s, \"eval_accuracy\": %s, \"eval_margin\": %s}\n",
            (long long)step, tl_json_num(j[0], "%.6f", loss), tl_json_num(j[1], "%.6f", accuracy),
            tl_json_num(j[2], "%.6f", margin));
    fflush(M->f);
}
