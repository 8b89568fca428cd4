/* tl_rl_loss_dump: evaluates tailor's GRPO / RLOO math (trainer/step/rl_loss.c) on batches given as text, so
 * that tests/torch/test_rl_loss_vs_trl.py can compare it with TRL's formulas in torch.
 *
 *   tl_rl_loss_dump [FILE]        (standard input without FILE)
 *
 * A stream of whitespace-separated words (numbers as strtod reads them), one command after another:
 *   adv KIND NG G SCALE r[NG*G]              KIND grpo | rloo
 *        -> one line: the NG*G advantages, then the NG group stds
 *   loss NORM BETA EPS_LOW EPS_HIGH MAXC NSEQ len[NSEQ] adv[NSEQ] logp[T] old[T] ref[T]   (T = sum of len)
 *        -> one line: LOSS TOKENS KL LOW_CLIPPED HIGH_CLIPPED dlogp[T]
 * Output numbers in %.17g (exact round trip). A malformed command stops the tool with one line on stderr and exit
 * code 2. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/step/tl_rl_loss.h"

static FILE *g_in;

static int word(char *buf, size_t cap) {
    int c;
    size_t n = 0;
    while ((c = fgetc(g_in)) != EOF && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
    }
    if (c == EOF) return 0;
    do {
        if (n + 1 < cap) buf[n++] = (char)c;
    } while ((c = fgetc(g_in)) != EOF && !(c == ' ' || c == '\t' || c == '\n' || c == '\r'));
    buf[n] = '\0';
    return 1;
}

static int num(double *v) {
    char buf[128], *end;
    if (!word(buf, sizeof buf)) return 0;
    errno = 0;
    *v = strtod(buf, &end);
    return end != buf && *end == '\0' && errno != ERANGE;
}

static int inum(int64_t *v, int64_t lo, int64_t hi) {
    double d;
    if (!num(&d) || d != (double)(int64_t)d || d < (double)lo || d > (double)hi) return 0;
    *v = (int64_t)d;
    return 1;
}

static int bad(const char *what) {
    fprintf(stderr, "tl_rl_loss_dump: %s\n", what);
    return 2;
}

static int read_n(double *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!num(&x[i])) return 0;
    return 1;
}

static int cmd_adv(void) {
    char kind[32];
    int64_t ng, g, scale;
    if (!word(kind, sizeof kind) || !inum(&ng, 1, 1 << 16) || !inum(&g, 1, 1 << 16) || !inum(&scale, 0, 1))
        return bad("adv needs KIND NG G SCALE");
    tl_rl_adv_kind k;
    if (strcmp(kind, "grpo") == 0) k = TL_RL_ADV_GRPO;
    else if (strcmp(kind, "rloo") == 0) k = TL_RL_ADV_RLOO;
    else return bad("adv: KIND must be grpo or rloo");
    int64_t n = ng * g;
    double *r = malloc((size_t)n * sizeof *r), *a = malloc((size_t)n * sizeof *a), *s = malloc((size_t)ng * sizeof *s);
    int rc = 0;
    if (!r || !a || !s) rc = bad("out of memory");
    else if (!read_n(r, n)) rc = bad("adv: a reward is missing or not a number");
    else {
        tl_rl_advantages(k, (int)ng, (int)g, (int)scale, r, a, s);
        for (int64_t i = 0; i < n; i++) printf("%.17g ", a[i]);
        for (int64_t i = 0; i < ng; i++) printf("%.17g ", s[i]);
        printf("\n");
    }
    free(r), free(a), free(s);
    return rc;
}

static int cmd_loss(void) {
    char norm[32];
    tl_rl_loss_opts o;
    int64_t maxc, nseq;
    if (!word(norm, sizeof norm) || !num(&o.beta) || !num(&o.eps_low) || !num(&o.eps_high) ||
        !inum(&maxc, 1, 1 << 20) || !inum(&nseq, 1, 1 << 20))
        return bad("loss needs NORM BETA EPS_LOW EPS_HIGH MAXC NSEQ");
    tl_error err;
    if (tl_rl_norm_parse(norm, &o.norm, &err) != TL_OK) return bad(err.msg);
    o.max_completion = (int)maxc;
    if (tl_rl_loss_opts_check(&o, &err) != TL_OK) return bad(err.msg);
    int rc = 0;
    int64_t *off = malloc((size_t)(nseq + 1) * sizeof *off);
    double *adv = malloc((size_t)nseq * sizeof *adv), *buf = NULL, *d = NULL;
    if (!off || !adv) {
        rc = bad("out of memory");
        goto done;
    }
    off[0] = 0;
    for (int64_t s = 0; s < nseq; s++) {
        int64_t len;
        if (!inum(&len, 0, 1 << 20)) {
            rc = bad("loss: a length is missing or not an integer >= 0");
            goto done;
        }
        off[s + 1] = off[s] + len;
    }
    int64_t t = off[nseq];
    buf = malloc((size_t)(3 * t + 1) * sizeof *buf);
    d = malloc((size_t)(t + 1) * sizeof *d);
    if (!buf || !d) {
        rc = bad("out of memory");
        goto done;
    }
    if (!read_n(adv, nseq) || !read_n(buf, 3 * t)) {
        rc = bad("loss: a value is missing or not a number");
        goto done;
    }
    tl_rl_batch b = {(int)nseq, off, buf, buf + t, buf + 2 * t, adv, 0, 0};
    tl_rl_loss_out out;
    tl_rl_loss(&o, &b, d, &out);
    printf("%.17g %lld %.17g %lld %lld", out.loss, (long long)out.tokens, out.kl, (long long)out.low_clipped,
           (long long)out.high_clipped);
    for (int64_t i = 0; i < t; i++) printf(" %.17g", d[i]);
    printf("\n");
done:
    free(off), free(adv), free(buf), free(d);
    return rc;
}

int main(int argc, char **argv) {
    g_in = argc > 1 ? fopen(argv[1], "r") : stdin;
    if (!g_in) return bad("cannot open the input");
    char cmd[32];
    int rc = 0;
    while (rc == 0 && word(cmd, sizeof cmd)) {
        if (strcmp(cmd, "adv") == 0) rc = cmd_adv();
        else if (strcmp(cmd, "loss") == 0) rc = cmd_loss();
        else rc = bad("unknown command (expected adv or loss)");
    }
    if (g_in != stdin) fclose(g_in);
    return rc;
}
