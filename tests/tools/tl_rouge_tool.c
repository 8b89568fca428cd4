/* tl_rouge_tool: scores (prediction, reference) pairs with tl_rouge for tests/torch/test_rouge_vs_package.py.
 * Input file: per pair a line "LEN_PRED LEN_REF\n" followed by exactly those bytes of the prediction and then of
 * the reference (so any text, newlines included, travels as it is). Output: one line per pair,
 * "r1_p r1_r r1_f rL_p rL_r rL_f" with %.17g. */
#include <stdio.h>
#include <stdlib.h>

#include "trainer/eval/tl_rouge.h"

static char *read_n(FILE *f, long n) {
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    if (fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        return NULL;
    }
    s[n] = 0;
    return s;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tl_rouge_tool PAIRS_FILE\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        fprintf(stderr, "tl_rouge_tool: cannot open %s\n", argv[1]);
        return 2;
    }
    long lp, lr;
    int rc = 0, k = 0;
    while (fscanf(f, "%ld %ld", &lp, &lr) == 2) {
        if (fgetc(f) != '\n' || lp < 0 || lr < 0) {
            fprintf(stderr, "tl_rouge_tool: %s: pair %d: bad header\n", argv[1], k);
            rc = 2;
            break;
        }
        char *p = read_n(f, lp), *r = p ? read_n(f, lr) : NULL;
        if (!p || !r) {
            fprintf(stderr, "tl_rouge_tool: %s: pair %d: short text\n", argv[1], k);
            free(p), free(r);
            rc = 2;
            break;
        }
        tl_rouge_score s;
        tl_rouge(p, r, &s);
        printf("%.17g %.17g %.17g %.17g %.17g %.17g\n", s.rouge1.precision, s.rouge1.recall, s.rouge1.fmeasure,
               s.rougeL.precision, s.rougeL.recall, s.rougeL.fmeasure);
        free(p), free(r);
        k++;
    }
    if (!rc && !feof(f)) {
        fprintf(stderr, "tl_rouge_tool: %s: pair %d: bad header\n", argv[1], k);
        rc = 2;
    }
    fclose(f);
    if (fflush(stdout) != 0) rc = 1;
    return rc;
}
