/* rouge: ROUGE-1 and ROUGE-L as rouge-score 0.1.2 computes them (see tl_rouge.h for the tokenization). Tokens
 * are interned to integer ids by sorting both sides together, so overlap counting is a merge and the LCS compares
 * integers; the LCS keeps two rows of the shorter side. */
#include "trainer/eval/tl_rouge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s; /* into the lowercased copy */
    int len, side, idx;
} rtok;

/* Lowercased ASCII copy in which every separator is a space (U+0130 -> "i", U+212A -> "k", as Python's lower()
 * gives them). The copy is never longer than the input. */
static char *normalize(const char *t, size_t n) {
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)t[i];
        if (c >= 'A' && c <= 'Z') o[j++] = (char)(c - 'A' + 'a'), i++;
        else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) o[j++] = (char)c, i++;
        else if (c == 0xC4 && i + 1 < n && (unsigned char)t[i + 1] == 0xB0) o[j++] = 'i', o[j++] = ' ', i += 2;
        else if (c == 0xE2 && i + 2 < n && (unsigned char)t[i + 1] == 0x84 && (unsigned char)t[i + 2] == 0xAA)
            o[j++] = 'k', i += 3;
        else o[j++] = ' ', i++;
    }
    o[j] = 0;
    return o;
}

/* tokens of a normalized string appended to v (capacity checked by the caller: at most strlen/2+1 tokens) */
static int split(const char *s, int side, rtok *v, int n) {
    int idx = 0;
    for (const char *p = s; *p;) {
        if (*p == ' ') { p++; continue; }
        const char *q = p;
        while (*q && *q != ' ') q++;
        v[n++] = (rtok){p, (int)(q - p), side, idx++};
        p = q;
    }
    return n;
}

static int by_text(const void *a, const void *b) {
    const rtok *x = a, *y = b;
    int l = x->len < y->len ? x->len : y->len, c = memcmp(x->s, y->s, (size_t)l);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    if (x->side != y->side) return x->side - y->side;
    return x->idx - y->idx;
}

static double fmeasure(double p, double r) { return p + r > 0 ? 2 * p * r / (p + r) : 0.0; }

void tl_rouge(const char *prediction, const char *reference, tl_rouge_score *out) {
    size_t lp = strlen(prediction), lr = strlen(reference);
    char *np = normalize(prediction, lp), *nr = normalize(reference, lr);
    /* a normalized string of length L holds at most (L + 1) / 2 tokens; U+0130 may double a byte pair's length,
     * still within 2 bytes for 2 input bytes */
    rtok *v = malloc(((lp + 1) / 2 + (lr + 1) / 2 + 2) * sizeof(rtok));
    int *pid = NULL, *rid = NULL, *row = NULL;
    if (!np || !nr || !v) goto oom;
    int n = split(np, 0, v, 0), npred = n;
    n = split(nr, 1, v, n);
    int nref = n - npred;
    pid = malloc(((size_t)npred + 1) * sizeof(int));
    rid = malloc(((size_t)nref + 1) * sizeof(int));
    if (!pid || !rid) goto oom;
    qsort(v, (size_t)n, sizeof *v, by_text);
    /* ids, and the clipped overlap: per distinct token min(count in prediction, count in reference) */
    long inter = 0;
    for (int i = 0, id = 0; i < n; id++) {
        int j = i, cp = 0, cr = 0;
        while (j < n && v[j].len == v[i].len && memcmp(v[j].s, v[i].s, (size_t)v[i].len) == 0) {
            if (v[j].side == 0) pid[v[j].idx] = id, cp++;
            else rid[v[j].idx] = id, cr++;
            j++;
        }
        inter += cp < cr ? cp : cr;
        i = j;
    }
    double p1 = (double)inter / (double)(npred > 1 ? npred : 1), r1 = (double)inter / (double)(nref > 1 ? nref : 1);
    out->rouge1 = (tl_rouge_prf){p1, r1, fmeasure(p1, r1)};
    if (npred == 0 || nref == 0) {
        out->rougeL = (tl_rouge_prf){0.0, 0.0, 0.0};
    } else {
        /* rows over the shorter sequence */
        const int *a = pid, *b = rid;
        int na = npred, nb = nref;
        if (nb > na) a = rid, b = pid, na = nref, nb = npred;
        row = calloc((size_t)nb + 1, sizeof(int));
        if (!row) goto oom;
        for (int i = 0; i < na; i++) {
            int diag = 0; /* row[j-1] of the previous i */
            for (int j = 1; j <= nb; j++) {
                int up = row[j];
                row[j] = a[i] == b[j - 1] ? diag + 1 : (up > row[j - 1] ? up : row[j - 1]);
                diag = up;
            }
        }
        double lcs = row[nb], pl = lcs / (double)npred, rl = lcs / (double)nref;
        out->rougeL = (tl_rouge_prf){pl, rl, fmeasure(pl, rl)};
    }
    free(np), free(nr), free(v), free(pid), free(rid), free(row);
    return;
oom:
    free(np), free(nr), free(v), free(pid), free(rid), free(row);
    out->rouge1 = out->rougeL = (tl_rouge_prf){NAN, NAN, NAN};
}
