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
            /* whole lines, however long (an adapter record holds a user's name); "step" is every record's first key,
             * so the first "step": of a line is its own */
            char *line = NULL;
            size_t cap = 0;
            while (getline(&line, &cap, in) > 0) {
                const char *q = strstr(line, "\"step\":");
                long long st = q ? atoll(q + 7) : 0;
                if (st <= keep_upto) fputs(line, o);
            }
            free(line);
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
    for (int i = 0; i < M->n_sample; i++) free(M->sample_name[i]);
    M->n_sample = 0;
}

uint64_t tl_metrics_name_hash(const char *name) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) h = (h ^ *c) * 0x100000001b3ULL;
    h ^= h >> 33; /* murmur3's finalizer: names that differ in one letter land far apart */
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* (hash, name) order */
static int sample_less(uint64_t ha, const char *a, uint64_t hb, const char *b) {
    return ha != hb ? ha < hb : strcmp(a, b) < 0;
}

tl_status tl_metrics_sample_init(tl_metrics *M, char *const *names, int n, tl_error *err) {
    for (int i = 0; i < M->n_sample; i++) free(M->sample_name[i]);
    M->n_sample = 0;
    const char *pick[TL_METRICS_SAMPLE];
    uint64_t ph[TL_METRICS_SAMPLE];
    int k = 0;
    for (int i = 0; i < n; i++) { /* insertion into the sorted bottom-k */
        uint64_t h = tl_metrics_name_hash(names[i]);
        if (k == TL_METRICS_SAMPLE && !sample_less(h, names[i], ph[k - 1], pick[k - 1])) continue;
        int j = k < TL_METRICS_SAMPLE ? k : k - 1;
        while (j > 0 && sample_less(h, names[i], ph[j - 1], pick[j - 1])) j--;
        if (j > 0 && ph[j - 1] == h && !strcmp(pick[j - 1], names[i])) continue; /* a duplicate name */
        int last = k < TL_METRICS_SAMPLE ? k : k - 1;
        memmove(pick + j + 1, pick + j, (size_t)(last - j) * sizeof *pick);
        memmove(ph + j + 1, ph + j, (size_t)(last - j) * sizeof *ph);
        pick[j] = names[i], ph[j] = h;
        if (k < TL_METRICS_SAMPLE) k++;
    }
    for (int i = 0; i < k; i++) {
        M->sample_name[i] = strdup(pick[i]);
        M->sample_hash[i] = ph[i];
        if (!M->sample_name[i]) {
            M->n_sample = i;
            return tl_fail(err, TL_ERR_RUNTIME, "out of memory (metrics sample)");
        }
        M->n_sample = i + 1;
    }
    return TL_OK;
}

int tl_metrics_sample_index(const tl_metrics *M, const char *name) {
    if (!M->n_sample) return -1;
    uint64_t h = tl_metrics_name_hash(name);
    for (int i = 0; i < M->n_sample; i++)
        if (M->sample_hash[i] == h && !strcmp(M->sample_name[i], name)) return i;
    return -1;
}

double tl_metrics_rss_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return NAN;
    unsigned long long size = 0, resident = 0;
    int got = fscanf(f, "%llu %llu", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    if (got != 2 || page <= 0) return NAN;
    return (double)resident * (double)page / (1024.0 * 1024.0);
}

/* name as a JSON string: quotes, backslashes and control characters escaped */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7F)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
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
        char j[5][48];
        fprintf(M->f,
                "{\"step\": %lld, \"loss\": %s, \"lr\": %s, \"grad_norm\": %s, \"tokens\": %lld, "
                "\"tokens_per_s\": %s, \"elapsed_s\": %.3f, \"adapters\": %d, \"truncated\": %lld, \"rss_mib\": %s",
                (long long)r->done_steps, tl_json_num(j[0], "%.6f", r->loss), tl_json_num(j[1], "%.6g", r->lr),
                tl_json_num(j[2], "%.6f", r->grad_norm), (long long)r->tokens,
                tl_json_num(j[3], "%.1f", r->tokens_per_s), t - M->t0, r->adapters, (long long)r->truncated,
                tl_json_num(j[4], "%.1f", r->rss_mib));
        if (r->pref) { /* TRL's batch means over the step's pairs */
            double mean[TL_PREF_N_METRICS];
            tl_pref_stats_mean(r->pref, mean);
            for (int k = 1; k < TL_PREF_N_METRICS; k++)
                if (isfinite(mean[k])) fprintf(M->f, ", \"%s\": %.6f", tl_pref_metric_names[k], mean[k]);
        }
        if (r->extra) fputs(r->extra, M->f);
        fputs("}\n", M->f);
        for (int i = 0; r->sample_loss && r->sample_trained && i < M->n_sample; i++) {
            if (!r->sample_trained[i]) continue;
            fprintf(M->f, "{\"step\": %lld, \"adapter\": ", (long long)r->done_steps);
            json_str(M->f, M->sample_name[i]);
            fprintf(M->f, ", \"adapter_loss\": %s}\n", tl_json_num(j[0], "%.6f", r->sample_loss[i]));
        }
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
