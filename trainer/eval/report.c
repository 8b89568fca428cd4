/* report: `tailor report RUN_DIR` renders metrics.jsonl and eval.json as one self-contained HTML page.
 *
 * Everything is inline (SVG charts, one <style> block, no scripts) so the page works offline and cannot load
 * anything. Every string that comes from the data (user and adapter names, the run path) is HTML-escaped,
 * because user names are chosen by whoever supplied the data. The page is built in memory and written with
 * tl_write_file_atomic, so a reader never sees half a report. */
#include "trainer/eval/tl_report.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_text.h"
#include "data/tl_io.h"

#define REPORT_MAX_INPUT ((size_t)1 << 30)
#define REPORT_MAX_STEP ((int64_t)1 << 53) /* steps are exact in a double up to here */
#define REPORT_MAX_VALUE 1e300             /* |metric| bound: chart ranges stay finite */
#define REPORT_MAX_TICKS 64                /* grid lines per axis, whatever the data */
#define REPORT_MAX_POINTS 1000             /* points drawn per curve: longer curves are thinned evenly */
#define REPORT_MAX_DOTS 64                 /* a per-adapter curve of at most this many points shows them as dots */
#define REPORT_MAX_CURVES 16               /* per-adapter loss curves (metrics.jsonl's sample, tl_metrics.h) */
#define REPORT_MAX_ROWS 200                /* rows of a full per-adapter or per-user table; the rest: eval.json */
#define REPORT_TOP 10                      /* best and worst adapters listed */
#define REPORT_BINS 40                     /* bars of the improvement histogram */
#define REPORT_NAME_CHARS 256              /* a name's code points shown in a table cell */
#define REPORT_HEATMAP_MAX 32              /* adapters of the adapter x user heatmap (TL_EVAL_CROSS_MAX) */

/* ---- growing output buffer; an allocation failure is remembered and reported once at the end ---- */
typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra) {
    if (b->oom || b->n + extra + 1 <= b->cap) return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra + 1) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
        b->oom = 1;
        return;
    }
    b->p = np;
    b->cap = cap;
}

static void sb_put(sbuf *b, const char *s, size_t len) {
    sb_reserve(b, len);
    if (b->oom) return;
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
static void sb_printf(sbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)k < sizeof tmp) {
        sb_put(b, tmp, (size_t)k);
        return;
    }
    sb_reserve(b, (size_t)k);
    if (b->oom) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

/* HTML-escapes s (text and attribute values alike); control characters, which HTML forbids, become U+FFFD. At
 * most max_chars code points are written (0: all), then an ellipsis. */
static void sb_esc_n(sbuf *b, const char *s, size_t max_chars) {
    size_t chars = 0;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        if ((*q & 0xC0) != 0x80) {
            if (max_chars && chars == max_chars) {
                sb_puts(b, "\xE2\x80\xA6");
                return;
            }
            chars++;
        }
        switch (*q) {
        case '&': sb_puts(b, "&amp;"); break;
        case '<': sb_puts(b, "&lt;"); break;
        case '>': sb_puts(b, "&gt;"); break;
        case '"': sb_puts(b, "&quot;"); break;
        case '\'': sb_puts(b, "&#39;"); break;
        default:
            if ((*q < 0x20 && *q != '\n' && *q != '\t') || *q == 0x7F)
                sb_puts(b, "&#xFFFD;");
            else
                sb_put(b, (const char *)q, 1);
        }
    }
}

static void sb_esc(sbuf *b, const char *s) { sb_esc_n(b, s, 0); }

/* ---- metrics.jsonl ---- */
enum { S_LOSS, S_EVAL_LOSS, S_EVAL_ACC, S_ACC, S_MARGIN, S_REWARD, S_TOKS, S_RSS, S_COUNT };
static const char *const series_key[S_COUNT] = {"loss", "eval_loss", "eval_accuracy", "rewards/accuracies",
                                                "rewards/margins", "reward", "tokens_per_s", "rss_mib"};
static const char *const series_title[S_COUNT] = {"Training loss", "Eval loss", "Eval preference accuracy",
                                                  "Training preference accuracy (rewards/accuracies)",
                                                  "Training reward margin (rewards/margins)",
                                                  "Mean reward of the step's sampled answers (grpo / rloo)",
                                                  "Throughput (tokens/s since the previous record)",
                                                  "Resident memory of the training process (MiB)"};

typedef struct {
    double *x, *y;
    size_t n, cap;
} series;

static int series_push(series *s, double x, double y) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        double *nx = realloc(s->x, cap * sizeof *nx);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, cap * sizeof *ny);
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
    return 0;
}

static void series_free(series *s, int n) {
    for (int k = 0; k < n; k++) {
        free(s[k].x);
        free(s[k].y);
    }
}

/* The per-adapter records of metrics.jsonl ({"step", "adapter", "adapter_loss"}): one curve per adapter name, for
 * the first REPORT_MAX_CURVES names met; the records of any further names are counted, not drawn. */
typedef struct {
    char *name[REPORT_MAX_CURVES];
    series s[REPORT_MAX_CURVES];
    int n;
    size_t dropped; /* records of adapters past the first REPORT_MAX_CURVES */
} curves;

static void curves_free(curves *c) {
    for (int i = 0; i < c->n; i++) free(c->name[i]);
    series_free(c->s, c->n);
}

static int curves_push(curves *c, const char *name, double x, double y) {
    int i = 0;
    while (i < c->n && strcmp(c->name[i], name)) i++;
    if (i == c->n) {
        if (c->n == REPORT_MAX_CURVES) {
            c->dropped++;
            return 0;
        }
        if (!(c->name[i] = strdup(name))) return -1;
        memset(&c->s[i], 0, sizeof c->s[i]);
        c->n++;
    }
    return series_push(&c->s[i], x, y);
}

/* v: absent or null (no value: *have = 0), or a finite number of magnitude <= 1e300 */
static int metric_value(const cJSON *v, double *y, int *have) {
    *have = 0;
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > REPORT_MAX_VALUE) return 0;
    *y = v->valuedouble, *have = 1;
    return 1;
}

/* grpo / rloo records carry "users": {name: {"reward": ...}, ...} (a sample of the step's adapters, docs/rl.md) */
static tl_status push_user_rewards(const char *path, size_t line_no, const cJSON *users, double x, curves *rw,
                                   tl_error *err) {
    const cJSON *u;
    cJSON_ArrayForEach(u, users) {
        double y = 0;
        int have = 0;
        if (!cJSON_IsObject(u) || !u->string) continue;
        if (!metric_value(cJSON_GetObjectItemCaseSensitive(u, "reward"), &y, &have))
            return tl_fail(err, TL_ERR_INPUT, "%s line %zu: users.*.reward is not a finite number of magnitude "
                           "<= 1e300 (or null)", path, line_no);
        if (have && curves_push(rw, u->string, x, y)) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    return TL_OK;
}

static tl_status read_metrics(const char *path, series *s, curves *cv, curves *rw, size_t *records, tl_error *err) {
    if (!tl_is_file(path)) return tl_fail(err, TL_ERR_INPUT, "%s: missing (not a tailor run directory?)", path);
    char *text;
    size_t len;
    TL_TRY(tl_read_file(path, REPORT_MAX_INPUT, &text, &len, err));
    tl_status st = TL_OK;
    size_t line_no = 0;
    *records = 0;
    for (char *line = text; line < text + len && st == TL_OK;) {
        char *nl = memchr(line, '\n', (size_t)(text + len - line));
        char *next = nl ? nl + 1 : text + len;
        if (nl) *nl = '\0';
        line_no++;
        const char *c = line;
        while (*c == ' ' || *c == '\t' || *c == '\r') c++;
        if (*c) {
            const char *end = NULL;
            cJSON *o = cJSON_ParseWithOpts(line, &end, 1);
            const cJSON *step = o ? cJSON_GetObjectItemCaseSensitive(o, "step") : NULL;
            if (!o) {
                st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: not valid JSON (near column %zu)", path, line_no,
                             end ? (size_t)(end - line) + 1 : (size_t)1);
            } else if (!cJSON_IsObject(o) || !cJSON_IsNumber(step)) {
                st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: expected a JSON object with a numeric \"step\"", path,
                             line_no);
            } else if (!tl_json_int(step->valuedouble, 0, REPORT_MAX_STEP, &(int64_t){0})) {
                st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: \"step\" is %g, expected an integer in [0, 2^53]", path,
                             line_no, step->valuedouble);
            } else if (cJSON_GetObjectItemCaseSensitive(o, "adapter")) { /* one sampled adapter's loss */
                (*records)++;
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "adapter");
                double y = 0;
                int have = 0;
                if (!cJSON_IsString(name))
                    st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: \"adapter\" is not a string", path, line_no);
                else if (!metric_value(cJSON_GetObjectItemCaseSensitive(o, "adapter_loss"), &y, &have))
                    st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: \"adapter_loss\" is not a finite number of "
                                 "magnitude <= 1e300 (or null)", path, line_no);
                else if (have && curves_push(cv, name->valuestring, step->valuedouble, y))
                    st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
            } else {
                (*records)++;
                for (int k = 0; k < S_COUNT && st == TL_OK; k++) {
                    double y = 0;
                    int have = 0;
                    if (!metric_value(cJSON_GetObjectItemCaseSensitive(o, series_key[k]), &y, &have))
                        st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: \"%s\" is not a finite number of magnitude "
                                     "<= 1e300 (or null)", path, line_no, series_key[k]);
                    else if (have && series_push(&s[k], step->valuedouble, y))
                        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
                }
                const cJSON *users = cJSON_GetObjectItemCaseSensitive(o, "users");
                if (st == TL_OK && cJSON_IsObject(users))
                    st = push_user_rewards(path, line_no, users, step->valuedouble, rw, err);
            }
            cJSON_Delete(o);
        }
        line = next;
    }
    free(text);
    return st;
}

/* ---- SVG line chart ---- */
static double nice_step(double range, int target) {
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

/* distinct line colours of the per-adapter curves */
static const char *const palette[REPORT_MAX_CURVES] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                                                       "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939",
                                                       "#8c6d31", "#843c39", "#7b4173", "#3182bd"};

/* the i-th of at most REPORT_MAX_POINTS points drawn of n (all of them when n is small; else evenly spaced, the
 * first and the last always) */
static size_t drawn_count(size_t n) { return n < REPORT_MAX_POINTS ? n : REPORT_MAX_POINTS; }
static size_t drawn_index(size_t n, size_t i) {
    size_t m = drawn_count(n);
    return m == n || m < 2 ? i : (size_t)((double)i * (double)(n - 1) / (double)(m - 1) + 0.5);
}

/* One line chart of ns series (ns >= 1, each with points). names == NULL: one unnamed series, drawn as
 * <polyline class="line" data-key=KEY>; else one coloured polyline per name (data-adapter) and a legend. */
static void chart(sbuf *b, const series *s, int ns, char *const *names, const char *key, const char *title) {
    const double W = 640, H = 260, L = 64, R = 16, T = 28, B = 44;
    double x0 = s[0].x[0], x1 = s[0].x[0], y0 = s[0].y[0], y1 = s[0].y[0];
    for (int k = 0; k < ns; k++)
        for (size_t i = 0; i < s[k].n; i++) {
            x0 = fmin(x0, s[k].x[i]), x1 = fmax(x1, s[k].x[i]);
            y0 = fmin(y0, s[k].y[i]), y1 = fmax(y1, s[k].y[i]);
        }
    if (x1 <= x0) x0 -= 1, x1 += 1;
    if (!(y1 - y0 > 1e-12 * fmax(fabs(y0), fabs(y1)))) {
        double d = fabs(y0) > 0 ? fabs(y0) * 0.1 : 1;
        y0 -= d, y1 += d;
    }
    double ys = nice_step(y1 - y0, 5);
    y0 = floor(y0 / ys) * ys, y1 = ceil(y1 / ys) * ys;
    double xs = fmax(1, nice_step(x1 - x0, 6));
    double pw = W - L - R, ph = H - T - B;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * pw)
#define PY(v) (T + (y1 - (v)) / (y1 - y0) * ph)
    sb_printf(b, "<figure><svg class=\"chart\" data-key=\"%s\" xmlns=\"http://www.w3.org/2000/svg\" "
                 "width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">\n",
              key, W, H, W, H);
    sb_printf(b, "<text class=\"title\" x=\"%.0f\" y=\"18\">", L);
    sb_esc(b, title);
    sb_puts(b, "</text>\n<g class=\"grid\">\n");
    /* ticks by count, never by adding a step that may vanish next to a huge value */
    double nyt = (y1 - y0) / ys, nxt0 = ceil(x0 / xs), nxt = floor((x1 + xs * 1e-9) / xs) - nxt0;
    int ny = isfinite(nyt) && nyt >= 0 ? (int)fmin(REPORT_MAX_TICKS, floor(nyt + 0.5)) : 0;
    int nx = isfinite(nxt) && nxt >= 0 ? (int)fmin(REPORT_MAX_TICKS, nxt) : -1;
    for (int i = 0; i <= ny; i++) {
        double v = y0 + i * ys;
        double y = PY(v);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                     "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.4g</text>\n",
                  L, y, W - R, y, L - 6, y + 4, fabs(v) < ys * 1e-9 ? 0.0 : v);
    }
    for (int i = 0; i <= nx; i++) {
        double v = (nxt0 + i) * xs;
        double x = PX(v);
        sb_printf(b, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                     "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.6g</text>\n",
                  x, T, x, T + ph, x, T + ph + 16, v);
    }
    sb_printf(b, "</g>\n<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                 "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n",
              L, T, L, T + ph, L, T + ph, W - R, T + ph);
    sb_printf(b, "<text class=\"label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", L + pw / 2,
              H - 6);
    size_t points = 0, drawn = 0;
    for (int k = 0; k < ns; k++) {
        const series *c = &s[k];
        size_t m = drawn_count(c->n);
        points += c->n, drawn += m;
        sb_printf(b, "<polyline class=\"line\" data-key=\"%s\"", key);
        if (names) {
            sb_puts(b, " data-adapter=\"");
            sb_esc_n(b, names[k], REPORT_NAME_CHARS);
            sb_printf(b, "\" style=\"stroke:%s\"", palette[k % REPORT_MAX_CURVES]);
        }
        sb_puts(b, " points=\"");
        for (size_t i = 0; i < m; i++) {
            size_t j = drawn_index(c->n, i);
            sb_printf(b, "%s%.2f,%.2f", i ? " " : "", PX(c->x[j]), PY(c->y[j]));
        }
        if (names) {
            sb_puts(b, "\"><title>");
            sb_esc_n(b, names[k], REPORT_NAME_CHARS);
            sb_puts(b, "</title></polyline>\n");
        } else {
            sb_puts(b, "\"/>\n");
        }
        if (c->n == 1 && !names)
            sb_printf(b, "<circle class=\"dot\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\"/>\n", PX(c->x[0]), PY(c->y[0]));
        else if (names && c->n <= REPORT_MAX_DOTS) /* a sparse curve (an adapter trains in few steps): its points */
            for (size_t i = 0; i < c->n; i++)
                sb_printf(b, "<circle class=\"dot\" cx=\"%.2f\" cy=\"%.2f\" r=\"2.5\" style=\"fill:%s\"/>\n",
                          PX(c->x[i]), PY(c->y[i]), palette[k % REPORT_MAX_CURVES]);
    }
    sb_puts(b, "</svg><figcaption>");
    if (drawn < points)
        sb_printf(b, "%zu points (%zu drawn, evenly spaced)", points, drawn);
    else
        sb_printf(b, "%zu points", points);
    if (!names) sb_printf(b, "; last: step %.6g, %.6g", s->x[s->n - 1], s->y[s->n - 1]);
    sb_puts(b, "</figcaption>");
    if (names) {
        sb_puts(b, "<ul class=\"legend\">");
        for (int k = 0; k < ns; k++) {
            sb_printf(b, "<li><span style=\"background:%s\"></span>", palette[k % REPORT_MAX_CURVES]);
            sb_esc_n(b, names[k], 64);
            sb_printf(b, " (last: step %.6g, %.4g)</li>", s[k].x[s[k].n - 1], s[k].y[s[k].n - 1]);
        }
        sb_puts(b, "</ul>");
    }
    sb_puts(b, "</figure>\n");
#undef PX
#undef PY
}

/* ---- eval.json ---- */
static const char *str_or(const cJSON *o, const char *key, const char *dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

static void num_cell(sbuf *b, const cJSON *o, const char *key, int integer) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsNumber(v))
        sb_printf(b, integer ? "<td class=\"num\">%.0f</td>" : "<td class=\"num\">%.4f</td>", v->valuedouble);
    else
        sb_puts(b, cJSON_IsNull(v) ? "<td class=\"num\">n/a</td>" : "<td></td>");
}

typedef struct {
    const char *key, *head;
    int integer;
} column;

/* The rows of `rows` in eval.json order, at most REPORT_MAX_ROWS of them, then a line that says how many more
 * eval.json holds; the total row after them. */
static void table(sbuf *b, const char *cls, const cJSON *rows, const cJSON *total, const column *cols, int ncols,
                  int with_group) {
    sb_printf(b, "<table class=\"%s\"><thead><tr><th>name</th>%s", cls, with_group ? "<th>group</th>" : "");
    for (int c = 0; c < ncols; c++) sb_printf(b, "<th>%s</th>", cols[c].head);
    sb_puts(b, "</tr></thead><tbody>\n");
    const cJSON *r;
    int shown = 0, all = cJSON_GetArraySize(rows);
    cJSON_ArrayForEach(r, rows) {
        if (shown == REPORT_MAX_ROWS) break;
        shown++;
        sb_puts(b, "<tr><td class=\"name\">");
        sb_esc_n(b, str_or(r, "name", "?"), REPORT_NAME_CHARS);
        sb_puts(b, "</td>");
        if (with_group) {
            sb_puts(b, "<td>");
            sb_esc_n(b, str_or(r, "group", ""), REPORT_NAME_CHARS);
            sb_puts(b, "</td>");
        }
        for (int c = 0; c < ncols; c++) num_cell(b, r, cols[c].key, cols[c].integer);
        sb_puts(b, "</tr>\n");
    }
    if (total) {
        sb_printf(b, "<tr class=\"total\"><td>(all)</td>%s", with_group ? "<td></td>" : "");
        for (int c = 0; c < ncols; c++) num_cell(b, total, cols[c].key, cols[c].integer);
        sb_puts(b, "</tr>\n");
    }
    sb_puts(b, "</tbody></table>\n");
    if (shown < all)
        sb_printf(b, "<p class=\"more\" data-shown=\"%d\" data-total=\"%d\">The first %d of %d rows; every row is in "
                     "eval.json (\"%s\").</p>\n",
                  shown, all, shown, all, cls);
}

/* ---- many users: the distribution of the per-adapter improvement, the best and the worst ---- */
typedef struct {
    double v;
    int i; /* the row in eval.json's adapters */
} scored;

static int by_value_desc(const void *pa, const void *pb) { /* best first; ties in eval.json order */
    const scored *a = pa, *b = pb;
    return a->v != b->v ? (a->v < b->v ? 1 : -1) : (a->i > b->i) - (a->i < b->i);
}

/* The histogram of v[0..n) (sorted descending) in REPORT_BINS equal bins over [lo, hi]; a value goes to the bin
 * whose edges [e_k, e_k+1) hold it (the last bin closed), the edges printed exactly (%.17g). */
static void histogram(sbuf *b, const scored *v, int n, const char *what, int zero_line) {
    const double W = 640, H = 240, L = 64, R = 16, T = 28, B = 44;
    double lo = v[n - 1].v, hi = v[0].v;
    int nb = hi > lo ? REPORT_BINS : 1;
    double edge[REPORT_BINS + 1];
    for (int k = 0; k <= nb; k++) edge[k] = k == nb ? hi : lo + (hi - lo) * ((double)k / nb);
    int count[REPORT_BINS] = {0}, top = 0;
    for (int i = 0; i < n; i++) {
        double x = v[i].v;
        int k = nb > 1 ? (int)((x - lo) / (hi - lo) * nb) : 0;
        if (k < 0) k = 0;
        if (k > nb - 1) k = nb - 1;
        while (k > 0 && x < edge[k]) k--;
        while (k < nb - 1 && x >= edge[k + 1]) k++;
        count[k]++;
    }
    for (int k = 0; k < nb; k++) top = count[k] > top ? count[k] : top;
    double pw = W - L - R, ph = H - T - B, bw = pw / nb;
    sb_printf(b, "<figure><svg class=\"histogram\" data-bins=\"%d\" xmlns=\"http://www.w3.org/2000/svg\" "
                 "width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">\n",
              nb, W, H, W, H);
    sb_printf(b, "<text class=\"title\" x=\"%.0f\" y=\"18\">", L);
    sb_esc(b, what);
    sb_printf(b, " (%d adapters)</text>\n", n);
    /* count ticks: whole numbers, a nice step, at most 5 intervals */
    double cs = top > 4 ? ceil(nice_step((double)top, 4)) : 1;
    for (int t = 0; t <= REPORT_MAX_TICKS && t * cs <= top; t++) {
        double c = t * cs, y = T + ph - (top ? c / top * ph : 0);
        sb_printf(b, "<line class=\"gridline\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                     "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.0f</text>\n",
                  L, y, W - R, y, L - 6, y + 4, c);
    }
    /* value ticks at a nice step inside [lo, hi], counted (never stepped towards a bound) */
    if (hi > lo) {
        double xs = nice_step(hi - lo, 6), k0 = ceil(lo / xs), nk = floor(hi / xs) - k0;
        int nt = isfinite(nk) && nk >= 0 ? (int)fmin(REPORT_MAX_TICKS, nk) : -1;
        for (int t = 0; t <= nt; t++) {
            double val = (k0 + t) * xs, x = L + (val - lo) / (hi - lo) * pw;
            sb_printf(b, "<line class=\"gridline\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>"
                         "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.4g</text>\n",
                      x, T + ph, x, T + ph + 4, x, T + ph + 16, fabs(val) < xs * 1e-9 ? 0.0 : val);
        }
    }
    for (int k = 0; k < nb; k++) {
        double h = top ? (double)count[k] / top * ph : 0;
        sb_printf(b, "<rect class=\"bar\" data-lo=\"%.17g\" data-hi=\"%.17g\" data-count=\"%d\" x=\"%.2f\" "
                     "y=\"%.2f\" width=\"%.2f\" height=\"%.2f\"><title>[%.4g, %.4g%s: %d</title></rect>\n",
                  edge[k], edge[k + 1], count[k], L + k * bw, T + ph - h, bw > 1 ? bw - 0.5 : bw, h, edge[k],
                  edge[k + 1], k == nb - 1 ? "]" : ")", count[k]);
    }
    sb_printf(b, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>\n", L, T + ph, W - R, T + ph);
    if (zero_line && lo < 0 && hi > 0) {
        double x = L + (0 - lo) / (hi - lo) * pw;
        sb_printf(b, "<line class=\"zero\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"><title>0: no change"
                     "</title></line>\n",
                  x, T, x, T + ph);
    }
    sb_printf(b, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\">min %.4g</text><text class=\"tick\" x=\"%.1f\" "
                 "y=\"%.1f\" text-anchor=\"end\">max %.4g</text>\n",
              L, T + ph + 32, lo, W - R, T + ph + 32, hi);
    sb_puts(b, "</svg><figcaption>adapters per bin; hover a bar for its range</figcaption></figure>\n");
}

static double num_or_nan(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void top_table(sbuf *b, const char *cls, const cJSON *const *rows, const scored *v, int n, int from_end,
                      const char *what, const column *cols, int ncols) {
    sb_printf(b, "<table class=\"%s\"><thead><tr><th>#</th><th>name</th><th>%s</th>", cls, what);
    for (int c = 0; c < ncols; c++) sb_printf(b, "<th>%s</th>", cols[c].head);
    sb_puts(b, "</tr></thead><tbody>\n");
    int m = n < REPORT_TOP ? n : REPORT_TOP;
    for (int k = 0; k < m; k++) {
        const scored *e = from_end ? &v[n - 1 - k] : &v[k];
        sb_printf(b, "<tr><td class=\"num\">%d</td><td class=\"name\">", k + 1);
        sb_esc_n(b, str_or(rows[e->i], "name", "?"), REPORT_NAME_CHARS);
        sb_printf(b, "</td><td class=\"num gain\">%.4f</td>", e->v);
        for (int c = 0; c < ncols; c++) num_cell(b, rows[e->i], cols[c].key, cols[c].integer);
        sb_puts(b, "</tr>\n");
    }
    sb_puts(b, "</tbody></table>\n");
}

/* sft: base_loss - loss of every adapter that has both (positive: the adapter does better than the base model on
 * its users' held-out data); preference: the held-out accuracy (rewards/accuracies), as eval.json has no base
 * accuracy. A value of magnitude above 1e300 (or an overflow) counts as no value. A histogram, the share improved,
 * and the REPORT_TOP best and worst. */
static tl_status improvement_section(sbuf *b, const char *path, const cJSON *adapters, int pref, const column *cols,
                                     int ncols, tl_error *err) {
    int n = cJSON_GetArraySize(adapters), m = 0;
    scored *v = malloc((size_t)(n ? n : 1) * sizeof *v);
    const cJSON **rows = malloc((size_t)(n ? n : 1) * sizeof *rows);
    if (!v || !rows) {
        free(v), free(rows);
        return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
    }
    const cJSON *r;
    int i = 0;
    cJSON_ArrayForEach(r, adapters) {
        rows[i] = r;
        double x = pref ? num_or_nan(r, "rewards/accuracies") : num_or_nan(r, "base_loss") - num_or_nan(r, "loss");
        if (isfinite(x) && fabs(x) <= REPORT_MAX_VALUE) v[m].v = x, v[m].i = i, m++; /* sums and ranges stay finite */
        i++;
    }
    const char *what = pref ? "held-out preference accuracy" : "improvement over the base model (base_loss - loss)";
    sb_printf(b, "<h3>Per-adapter %s</h3>\n", pref ? "accuracy" : "improvement");
    if (!m) {
        sb_puts(b, "<p class=\"note\">No adapter has the numbers for this (every value is null).</p>\n");
        free(v), free(rows);
        return TL_OK;
    }
    qsort(v, (size_t)m, sizeof *v, by_value_desc);
    int better = 0;
    double sum = 0;
    for (int k = 0; k < m; k++) better += pref ? v[k].v > 0.5 : v[k].v > 0, sum += v[k].v;
    double median = m % 2 ? v[m / 2].v : (v[m / 2 - 1].v + v[m / 2].v) / 2;
    sb_printf(b, "<p class=\"summary\" data-n=\"%d\" data-better=\"%d\" data-mean=\"%.17g\" data-median=\"%.17g\">"
                 "%d of %d adapters have a value; %d (%.1f%%) %s; mean %.4f, median %.4f, best %.4f, worst "
                 "%.4f.%s</p>\n",
              m, better, sum / m, median, m, n, better, 100.0 * better / m,
              pref ? "prefer the chosen answer more often than not (accuracy above 0.5)"
                   : "do better than the base model (improvement above 0)",
              sum / m, median, v[0].v, v[m - 1].v,
              pref ? " eval.json holds no base-model accuracy, so this is the accuracy itself (0.5: chance)." : "");
    histogram(b, v, m, what, !pref);
    sb_printf(b, "<h3>Best %d</h3>\n", m < REPORT_TOP ? m : REPORT_TOP);
    top_table(b, "best", rows, v, m, 0, pref ? "accuracy" : "improvement", cols, ncols);
    sb_printf(b, "<h3>Worst %d</h3>\n", m < REPORT_TOP ? m : REPORT_TOP);
    top_table(b, "worst", rows, v, m, 1, pref ? "accuracy" : "improvement", cols, ncols);
    free(v), free(rows);
    return TL_OK;
}

/* t in [0, 1], 1 = best: pale yellow (worst) to deep blue (best) */
static void cell_color(double t, int *r, int *g, int *bl) {
    static const int stops[3][3] = {{255, 247, 188}, {65, 182, 196}, {8, 48, 107}};
    double u = t * 2;
    int i = u >= 1 ? 1 : 0;
    double f = u - i;
    if (f > 1) f = 1;
    *r = (int)lround(stops[i][0] + (stops[i + 1][0] - stops[i][0]) * f);
    *g = (int)lround(stops[i][1] + (stops[i + 1][1] - stops[i][1]) * f);
    *bl = (int)lround(stops[i][2] + (stops[i + 1][2] - stops[i][2]) * f);
}

static tl_status heatmap(sbuf *b, const char *path, const cJSON *adapters, const cJSON *matrix, const char *what,
                         int higher_better, tl_error *err) {
    int n = cJSON_GetArraySize(adapters);
    if (!cJSON_IsArray(matrix) || cJSON_GetArraySize(matrix) != n)
        return tl_fail(err, TL_ERR_INPUT, "%s: cross.%s: expected %d rows (one per adapter)", path, what, n);
    double lo = INFINITY, hi = -INFINITY;
    for (int a = 0; a < n; a++) {
        const cJSON *row = cJSON_GetArrayItem(matrix, a);
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != n)
            return tl_fail(err, TL_ERR_INPUT, "%s: cross.%s[%d]: expected an array of %d numbers", path, what, a, n);
        for (int u = 0; u < n; u++) {
            const cJSON *v = cJSON_GetArrayItem(row, u);
            if (cJSON_IsNumber(v) && isfinite(v->valuedouble))
                lo = fmin(lo, v->valuedouble), hi = fmax(hi, v->valuedouble);
            else if (!cJSON_IsNull(v))
                return tl_fail(err, TL_ERR_INPUT, "%s: cross.%s[%d][%d]: expected a number or null", path, what, a, u);
        }
    }
    for (int a = 0; a < n; a++)
        if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(adapters, a), "name")))
            return tl_fail(err, TL_ERR_INPUT, "%s: adapters[%d].name: expected a string", path, a);
    const int label = 150, cs = n <= 10 ? 44 : n <= 40 ? 20 : 12;
    const int W = label + n * cs + 20, H = label + n * cs + 70;
    sb_printf(b, "<p>Row: adapter; column: whose held-out data (the users of that adapter). Cell: %s, %s is "
                 "better. Hover a cell for its value.</p>\n",
              what, higher_better ? "higher" : "lower");
    sb_printf(b, "<svg class=\"heatmap\" data-metric=\"%s\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
                 "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n",
              what, W, H, W, H);
    sb_puts(b, "<defs><linearGradient id=\"scale\" x1=\"0\" x2=\"1\" y1=\"0\" y2=\"0\">");
    for (int k = 0; k <= 4; k++) {
        int r, g, bl;
        cell_color(k / 4.0, &r, &g, &bl);
        sb_printf(b, "<stop offset=\"%d%%\" stop-color=\"#%02x%02x%02x\"/>", k * 25, r, g, bl);
    }
    sb_puts(b, "</linearGradient></defs>\n");
    for (int i = 0; i < n; i++) {
        const char *name = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(adapters, i), "name")->valuestring;
        sb_printf(b, "<text class=\"rowlabel\" x=\"%d\" y=\"%d\" text-anchor=\"end\"><title>", label - 6,
                  label + i * cs + cs / 2 + 4);
        sb_esc(b, name);
        sb_puts(b, "</title>");
        sb_esc_n(b, name, 18);
        sb_printf(b, "</text>\n<text class=\"collabel\" transform=\"translate(%d,%d) rotate(-45)\"><title>",
                  label + i * cs + cs / 2 + 4, label - 6);
        sb_esc(b, name);
        sb_puts(b, "</title>");
        sb_esc_n(b, name, 18);
        sb_puts(b, "</text>\n");
    }
    for (int a = 0; a < n; a++) {
        const char *an = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(adapters, a), "name")->valuestring;
        const cJSON *row = cJSON_GetArrayItem(matrix, a);
        for (int u = 0; u < n; u++) {
            const char *un = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(adapters, u), "name")->valuestring;
            const cJSON *v = cJSON_GetArrayItem(row, u);
            int have = cJSON_IsNumber(v) && isfinite(v->valuedouble);
            int r = 204, g = 204, bl = 204;
            double t = 0;
            if (have) {
                t = hi > lo ? (v->valuedouble - lo) / (hi - lo) : 1;
                if (!higher_better) t = 1 - t;
                cell_color(t, &r, &g, &bl);
            }
            sb_puts(b, "<rect class=\"cell\" data-adapter=\"");
            sb_esc(b, an);
            sb_puts(b, "\" data-user=\"");
            sb_esc(b, un);
            sb_printf(b, "\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#%02x%02x%02x\"><title>adapter ",
                      label + u * cs, label + a * cs, cs - 1, cs - 1, r, g, bl);
            sb_esc(b, an);
            sb_puts(b, ", user ");
            sb_esc(b, un);
            if (have)
                sb_printf(b, ": %s %.4f</title></rect>\n", what, v->valuedouble);
            else
                sb_printf(b, ": %s n/a</title></rect>\n", what);
            if (have && cs >= 40)
                sb_printf(b, "<text class=\"val\" x=\"%d\" y=\"%d\" text-anchor=\"middle\" style=\"fill:%s\">%.3g</text>\n",
                          label + u * cs + cs / 2, label + a * cs + cs / 2 + 4, t > 0.55 ? "#fff" : "#000",
                          v->valuedouble);
        }
    }
    int ly = label + n * cs + 24;
    double worst = higher_better ? lo : hi, best = higher_better ? hi : lo;
    sb_printf(b, "<rect class=\"scale\" x=\"%d\" y=\"%d\" width=\"200\" height=\"12\" fill=\"url(#scale)\"/>\n",
              label, ly);
    if (isfinite(lo))
        sb_printf(b, "<text class=\"tick\" x=\"%d\" y=\"%d\">%.4g (worst)</text><text class=\"tick\" x=\"%d\" y=\"%d\" "
                     "text-anchor=\"end\">%.4g (best)</text>\n",
                  label, ly + 28, worst, label + 200, ly + 42, best);
    sb_puts(b, "</svg>\n");
    return TL_OK;
}

/* The counts of eval.json (step, examples, tokens, pairs) are integers in [0, 2^53] (or null): a count shown as
 * "%.0f" must be exactly what the file claims; the other cells are finite numbers or null. */
static tl_status check_eval_numbers(const char *path, const cJSON *ev, tl_error *err) {
    static const char *const counts[] = {"step", "examples", "tokens", "pairs"};
    const char *lists[2] = {"adapters", "users"};
    int64_t ignored;
    for (int l = -1; l < 2; l++) {
        const cJSON *arr = l < 0 ? NULL : cJSON_GetObjectItemCaseSensitive(ev, lists[l]);
        int n = l < 0 ? 1 : cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
        const cJSON *row = l < 0 ? ev : arr ? arr->child : NULL;
        for (int i = 0; i < n && row; i++, row = row->next) {
            const cJSON *v;
            cJSON_ArrayForEach(v, row) {
                if (!cJSON_IsNumber(v)) continue;
                int count = 0;
                for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++) count |= v->string && !strcmp(v->string, counts[k]);
                int ok = count ? tl_json_int(v->valuedouble, 0, REPORT_MAX_STEP, &ignored)
                               : isfinite(v->valuedouble);
                if (ok) continue;
                const char *want = count ? "an integer in [0, 2^53]" : "a finite number";
                if (l < 0)
                    return tl_fail(err, TL_ERR_INPUT, "%s: \"%.64s\" is %g, expected %s", path, v->string,
                                   v->valuedouble, want);
                return tl_fail(err, TL_ERR_INPUT, "%s: %s[%d].%.64s is %g, expected %s", path, lists[l], i, v->string,
                               v->valuedouble, want);
            }
        }
    }
    return TL_OK;
}

static tl_status eval_section(sbuf *b, const char *path, const cJSON *ev, tl_error *err) {
    const cJSON *adapters = cJSON_GetObjectItemCaseSensitive(ev, "adapters");
    if (!cJSON_IsObject(ev) || !cJSON_IsArray(adapters))
        return tl_fail(err, TL_ERR_INPUT, "%s: expected an object with an \"adapters\" array", path);
    TL_TRY(check_eval_numbers(path, ev, err));
    const cJSON *cross = cJSON_GetObjectItemCaseSensitive(ev, "cross");
    const cJSON *acc = cJSON_GetObjectItemCaseSensitive(cross, "accuracy");
    const cJSON *first = cJSON_GetArrayItem(adapters, 0);
    int pref = acc != NULL || cJSON_GetObjectItemCaseSensitive(first, "rewards/accuracies") != NULL ||
               cJSON_GetObjectItemCaseSensitive(ev, "rewards/accuracies") != NULL;
    static const column pc[] = {{"pairs", "pairs", 1},
                                {"loss", "loss", 0},
                                {"rewards/accuracies", "accuracy", 0},
                                {"rewards/margins", "margin", 0}};
    static const column sc[] = {{"examples", "examples", 1}, {"tokens", "tokens", 1}, {"loss", "loss", 0},
                                {"ppl", "ppl", 0},           {"base_loss", "base_loss", 0}};
    const column *cols = pref ? pc : sc;
    int ncols = pref ? 4 : 5, n = cJSON_GetArraySize(adapters);
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(ev, "step");
    sb_puts(b, "<h2>Evaluation</h2>\n");
    if (cJSON_IsNumber(step)) sb_printf(b, "<p>Held-out evaluation at step %.0f.</p>\n", step->valuedouble);
    sb_printf(b, "<p class=\"count\" data-adapters=\"%d\">%d adapter(s) in eval.json.</p>\n", n, n);
    if (n > 0) TL_TRY(improvement_section(b, path, adapters, pref, cols, ncols, err));
    sb_puts(b, "<h3>Adapter x user</h3>\n");
    if (n > REPORT_HEATMAP_MAX) {
        sb_printf(b, "<p class=\"note\">%d adapters: the adapter x user heatmap is drawn for up to %d (eval.json "
                     "has its cross matrix only up to the same number).</p>\n",
                  n, REPORT_HEATMAP_MAX);
    } else if (pref && acc) {
        TL_TRY(heatmap(b, path, adapters, acc, "accuracy", 1, err));
    } else if (!pref && cJSON_GetObjectItemCaseSensitive(cross, "loss")) {
        TL_TRY(heatmap(b, path, adapters, cJSON_GetObjectItemCaseSensitive(cross, "loss"), "loss", 0, err));
    } else {
        sb_puts(b, "<p class=\"note\">eval.json has no cross matrix (a single adapter, or cross evaluation was "
                   "off).</p>\n");
    }
    sb_puts(b, "<h3>Per adapter</h3>\n");
    table(b, "adapters", adapters, ev, cols, ncols, 0);
    const cJSON *users = cJSON_GetObjectItemCaseSensitive(ev, "users");
    if (cJSON_IsArray(users)) {
        int groups = 0;
        const cJSON *u;
        if (pref) cJSON_ArrayForEach(u, users) groups |= cJSON_GetObjectItemCaseSensitive(u, "group") != NULL;
        sb_puts(b, "<h3>Per user</h3>\n");
        table(b, "users", users, NULL, cols, ncols, groups);
    }
    return TL_OK;
}

static const char *style =
    "<style>\n"
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\n"
    "h1{font-size:1.4em;word-break:break-all}figure{display:inline-block;margin:0 1em 1em 0}\n"
    "figcaption{font-size:.8em;color:#666}svg text{font-size:11px;fill:#333}svg text.title{font-size:13px;"
    "font-weight:600}\n"
    ".grid line{stroke:#e4e4e4}.axis{stroke:#444}.line{fill:none;stroke:#1f77b4;stroke-width:1.6}"
    ".dot{fill:#1f77b4}\n"
    ".bar{fill:#4c8fc4}.bar:hover{fill:#08306b}.zero{stroke:#a33;stroke-dasharray:4 3}.gridline{stroke:#e4e4e4}\n"
    ".legend{list-style:none;padding:0;margin:.2em 0;font-size:.8em;max-width:640px}.legend li{display:inline-block;"
    "margin-right:1em;word-break:break-all}.legend span{display:inline-block;width:10px;height:10px;margin-right:4px}\n"
    ".cell:hover{stroke:#000;stroke-width:1.5}table{border-collapse:collapse;margin:.5em 0 1.5em}\n"
    "td,th{border:1px solid #ccc;padding:3px 8px}td.num{text-align:right;font-variant-numeric:tabular-nums}\n"
    "td.name{max-width:28em;word-break:break-all}tr.total{font-weight:600}.note{color:#a33}\n"
    "</style>\n";

static tl_status build(sbuf *b, const char *run_dir, tl_error *err) {
    char mpath[4096], epath[4096];
    TL_TRY(tl_path_join(mpath, sizeof mpath, run_dir, "metrics.jsonl", err));
    TL_TRY(tl_path_join(epath, sizeof epath, run_dir, "eval.json", err));
    series s[S_COUNT];
    memset(s, 0, sizeof s);
    curves cv, rw;
    memset(&cv, 0, sizeof cv);
    memset(&rw, 0, sizeof rw);
    size_t records = 0;
    tl_status st = read_metrics(mpath, s, &cv, &rw, &records, err);
    if (st) {
        series_free(s, S_COUNT);
        curves_free(&cv);
        curves_free(&rw);
        return st;
    }
    sb_puts(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>tailor report: ");
    sb_esc(b, run_dir);
    sb_printf(b, "</title>\n%s</head><body>\n<h1>tailor run ", style);
    sb_esc(b, run_dir);
    sb_printf(b, "</h1>\n<h2>Training curves</h2>\n<p>%zu records in metrics.jsonl.</p>\n", records);
    int any = 0;
    for (int k = 0; k < S_TOKS; k++)
        if (s[k].n) chart(b, &s[k], 1, NULL, series_key[k], series_title[k]), any = 1;
    if (!any) sb_puts(b, "<p class=\"note\">metrics.jsonl holds no loss records yet.</p>\n");
    sb_puts(b, "<h2>Per-adapter training loss (a sample)</h2>\n");
    if (cv.n) {
        sb_printf(b, "<p>The training loss of %d sampled adapter(s) at each logged step in which they trained (the "
                     "adapters of smallest name hash, the same in every run over the same users).</p>\n",
                  cv.n);
        chart(b, cv.s, cv.n, cv.name, "adapter_loss", "Training loss per sampled adapter");
        if (cv.dropped)
            sb_printf(b, "<p class=\"note\">%zu record(s) of further adapters not drawn (at most %d curves).</p>\n",
                      cv.dropped, REPORT_MAX_CURVES);
    } else {
        sb_puts(b, "<p class=\"note\">metrics.jsonl holds no per-adapter records (a run from before they were "
                   "written, or no logged step yet).</p>\n");
    }
    if (rw.n) { /* grpo / rloo */
        sb_printf(b, "<h2>Per-user reward (a sample)</h2>\n<p>The mean reward of each user's sampled answers under "
                     "their own reward model at each logged step, for %d user(s) (the first met in metrics.jsonl's "
                     "per-step samples).</p>\n", rw.n);
        chart(b, rw.s, rw.n, rw.name, "user_reward", "Reward per user");
        if (rw.dropped)
            sb_printf(b, "<p class=\"note\">%zu point(s) of further users not drawn (at most %d curves).</p>\n",
                      rw.dropped, REPORT_MAX_CURVES);
    }
    curves_free(&rw);
    sb_puts(b, "<h2>Throughput and memory</h2>\n");
    if (!s[S_TOKS].n && !s[S_RSS].n) sb_puts(b, "<p class=\"note\">metrics.jsonl holds no throughput or memory "
                                                "records.</p>\n");
    for (int k = S_TOKS; k < S_COUNT; k++)
        if (s[k].n) chart(b, &s[k], 1, NULL, series_key[k], series_title[k]);
    series_free(s, S_COUNT);
    curves_free(&cv);

    if (!tl_path_exists(epath)) {
        sb_puts(b, "<h2>Evaluation</h2>\n<p class=\"note\">No eval.json in this run directory: the run had no "
                   "data.eval, or has not finished. Only the training curves are shown.</p>\n");
    } else {
        char *text;
        size_t len;
        TL_TRY(tl_read_file(epath, REPORT_MAX_INPUT, &text, &len, err));
        const char *end = NULL;
        cJSON *ev = cJSON_ParseWithOpts(text, &end, 1);
        if (!ev) {
            size_t line = 1;
            for (const char *c = text; end && c < end && *c; c++) line += *c == '\n';
            free(text);
            return tl_fail(err, TL_ERR_INPUT, "%s line %zu: not valid JSON", epath, line);
        }
        free(text);
        st = eval_section(b, epath, ev, err);
        cJSON_Delete(ev);
        TL_TRY(st);
    }
    sb_puts(b, "</body></html>\n");
    return TL_OK;
}

tl_status tl_report_write(const char *run_dir, const char *out_path, tl_error *err) {
    if (!tl_is_dir(run_dir)) return tl_fail(err, TL_ERR_INPUT, "%s: not a directory (expected a run directory)", run_dir);
    sbuf b = {0};
    tl_status st = build(&b, run_dir, err);
    if (st == TL_OK && b.oom) st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory building the report", out_path);
    if (st == TL_OK) st = tl_write_file_atomic(out_path, b.p, b.n, err);
    free(b.p);
    return st;
}
