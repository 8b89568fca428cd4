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
enum { S_LOSS, S_EVAL_LOSS, S_EVAL_ACC, S_ACC, S_MARGIN, S_COUNT };
static const char *const series_key[S_COUNT] = {"loss", "eval_loss", "eval_accuracy", "rewards/accuracies",
                                                "rewards/margins"};
static const char *const series_title[S_COUNT] = {"Training loss", "Eval loss", "Eval preference accuracy",
                                                  "Training preference accuracy (rewards/accuracies)",
                                                  "Training reward margin (rewards/margins)"};

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

static void series_free(series *s) {
    for (int k = 0; k < S_COUNT; k++) {
        free(s[k].x);
        free(s[k].y);
    }
}

static tl_status read_metrics(const char *path, series *s, size_t *records, tl_error *err) {
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
            } else {
                (*records)++;
                for (int k = 0; k < S_COUNT && st == TL_OK; k++) {
                    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, series_key[k]);
                    if (!v || cJSON_IsNull(v)) continue;
                    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || fabs(v->valuedouble) > REPORT_MAX_VALUE)
                        st = tl_fail(err, TL_ERR_INPUT, "%s line %zu: \"%s\" is not a finite number of magnitude "
                                     "<= 1e300 (or null)", path, line_no, series_key[k]);
                    else if (series_push(&s[k], step->valuedouble, v->valuedouble))
                        st = tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory", path);
                }
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

static void chart(sbuf *b, const series *s, const char *key, const char *title) {
    const double W = 640, H = 260, L = 64, R = 16, T = 28, B = 44;
    double x0 = s->x[0], x1 = s->x[0], y0 = s->y[0], y1 = s->y[0];
    for (size_t i = 1; i < s->n; i++) {
        x0 = fmin(x0, s->x[i]), x1 = fmax(x1, s->x[i]);
        y0 = fmin(y0, s->y[i]), y1 = fmax(y1, s->y[i]);
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
    sb_printf(b, "<polyline class=\"line\" data-key=\"%s\" points=\"", key);
    for (size_t i = 0; i < s->n; i++) sb_printf(b, "%s%.2f,%.2f", i ? " " : "", PX(s->x[i]), PY(s->y[i]));
    sb_puts(b, "\"/>\n");
    if (s->n == 1) sb_printf(b, "<circle class=\"dot\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\"/>\n", PX(s->x[0]), PY(s->y[0]));
    sb_printf(b, "</svg><figcaption>%zu points; last: step %.6g, %.6g</figcaption></figure>\n", s->n,
              s->x[s->n - 1], s->y[s->n - 1]);
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

static void table(sbuf *b, const char *cls, const cJSON *rows, const cJSON *total, const column *cols, int ncols,
                  int with_group) {
    sb_printf(b, "<table class=\"%s\"><thead><tr><th>name</th>%s", cls, with_group ? "<th>group</th>" : "");
    for (int c = 0; c < ncols; c++) sb_printf(b, "<th>%s</th>", cols[c].head);
    sb_puts(b, "</tr></thead><tbody>\n");
    const cJSON *r;
    cJSON_ArrayForEach(r, rows) {
        sb_puts(b, "<tr><td class=\"name\">");
        sb_esc(b, str_or(r, "name", "?"));
        sb_puts(b, "</td>");
        if (with_group) {
            sb_puts(b, "<td>");
            sb_esc(b, str_or(r, "group", ""));
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
                if (l < 0)
                    return tl_fail(err, TL_ERR_INPUT, "%s: \"%.64s\" is %g, expected %s", path, v->string,
                                   v->valuedouble, count ? "an integer in [0, 2^53]" : "a finite number");
                return tl_fail(err, TL_ERR_INPUT, "%s: %s[%d].%.64s is %g, expected %s", path, lists[l], i, v->string,
                               v->valuedouble, count ? "an integer in [0, 2^53]" : "a finite number");
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
    const cJSON *step = cJSON_GetObjectItemCaseSensitive(ev, "step");
    sb_puts(b, "<h2>Evaluation</h2>\n");
    if (cJSON_IsNumber(step)) sb_printf(b, "<p>Held-out evaluation at step %.0f.</p>\n", step->valuedouble);
    sb_puts(b, "<h3>Adapter x user</h3>\n");
    if (pref && acc) {
        TL_TRY(heatmap(b, path, adapters, acc, "accuracy", 1, err));
    } else if (!pref && cJSON_GetObjectItemCaseSensitive(cross, "loss")) {
        TL_TRY(heatmap(b, path, adapters, cJSON_GetObjectItemCaseSensitive(cross, "loss"), "loss", 0, err));
    } else {
        sb_puts(b, "<p class=\"note\">eval.json has no cross matrix (a single adapter, or cross evaluation was "
                   "off).</p>\n");
    }
    sb_puts(b, "<h3>Per adapter</h3>\n");
    if (pref) {
        static const column pc[] = {{"pairs", "pairs", 1},
                                    {"loss", "loss", 0},
                                    {"rewards/accuracies", "accuracy", 0},
                                    {"rewards/margins", "margin", 0}};
        table(b, "adapters", adapters, ev, pc, 4, 0);
        const cJSON *users = cJSON_GetObjectItemCaseSensitive(ev, "users");
        if (cJSON_IsArray(users)) {
            int groups = 0;
            const cJSON *u;
            cJSON_ArrayForEach(u, users) groups |= cJSON_GetObjectItemCaseSensitive(u, "group") != NULL;
            sb_puts(b, "<h3>Per user</h3>\n");
            table(b, "users", users, NULL, pc, 4, groups);
        }
    } else {
        static const column sc[] = {{"examples", "examples", 1}, {"tokens", "tokens", 1}, {"loss", "loss", 0},
                                    {"ppl", "ppl", 0},           {"base_loss", "base_loss", 0}};
        table(b, "adapters", adapters, ev, sc, 5, 0);
        const cJSON *users = cJSON_GetObjectItemCaseSensitive(ev, "users");
        if (cJSON_IsArray(users)) {
            sb_puts(b, "<h3>Per user</h3>\n");
            table(b, "users", users, NULL, sc, 5, 0);
        }
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
    size_t records = 0;
    tl_status st = read_metrics(mpath, s, &records, err);
    if (st) {
        series_free(s);
        return st;
    }
    sb_puts(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>tailor report: ");
    sb_esc(b, run_dir);
    sb_printf(b, "</title>\n%s</head><body>\n<h1>tailor run ", style);
    sb_esc(b, run_dir);
    sb_printf(b, "</h1>\n<h2>Training curves</h2>\n<p>%zu records in metrics.jsonl.</p>\n", records);
    int any = 0;
    for (int k = 0; k < S_COUNT; k++)
        if (s[k].n) chart(b, &s[k], series_key[k], series_title[k]), any = 1;
    if (!any) sb_puts(b, "<p class=\"note\">metrics.jsonl holds no loss records yet.</p>\n");
    series_free(s);

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
