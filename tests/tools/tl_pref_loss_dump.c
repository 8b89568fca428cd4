/* tl_pref_loss_dump: evaluates tailor's preference losses (trainer/pref_loss.c) on pairs given as text, so that
 * tests/torch/test_pref_loss_vs_trl.py can compare them with TRL's formulas in torch.
 *
 *   tl_pref_loss_dump [FILE]        (standard input without FILE)
 *
 * One command per line (blank lines and lines starting with # are skipped), numbers as strtod reads them:
 *   pref KIND BETA LABEL_SMOOTHING GAMMA SFT_WEIGHT PC PR RC RR NC NR
 *        -> LOSS DPC DPR REWARD_CHOSEN REWARD_REJECTED LOGP_CHOSEN LOGP_REJECTED
 *   bt R_CHOSEN R_REJECTED CENTER_REWARDS
 *        -> LOSS D_RC D_RR
 *   stats
 *        -> stats and the 7 means of tl_pref_stats_mean (loss, rewards/chosen, rewards/rejected,
 *           rewards/accuracies, rewards/margins, logps/chosen, logps/rejected) over the pref and bt lines since
 *           the previous stats line; the accumulator then restarts
 * Output: one line per command, numbers in %.17g (exact round trip). A malformed line stops the tool with one
 * line on stderr naming the line and exit code 2. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trainer/step/tl_pref_loss.h"

#define MAX_FIELDS 16

static int parse_double(const char *s, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    return end != s && *end == '\0' && errno != ERANGE;
}

static int parse_i64(const char *s, int64_t *v) {
    char *end;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    *v = (int64_t)x;
    return end != s && *end == '\0' && errno != ERANGE;
}

/* Splits line in place on blanks; returns the number of fields (MAX_FIELDS + 1 when there are too many). */
static int split(char *line, char **f) {
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
        if (n == MAX_FIELDS) return MAX_FIELDS + 1;
        f[n++] = tok;
    }
    return n;
}

static int bad(const char *file, long line, const char *what) {
    fprintf(stderr, "tl_pref_loss_dump: %s:%ld: %s\n", file, line, what);
    return 2;
}

static int run(FILE *in, const char *name) {
    char buf[4096];
    char *f[MAX_FIELDS];
    long ln = 0;
    tl_pref_stats st;
    tl_pref_stats_init(&st);
    while (fgets(buf, sizeof buf, in)) {
        ln++;
        if (!strchr(buf, '\n') && !feof(in)) return bad(name, ln, "line longer than 4095 bytes");
        int n = split(buf, f);
        if (n == 0 || f[0][0] == '#') continue;
        if (strcmp(f[0], "pref") == 0) {
            if (n != 12) return bad(name, ln, "pref needs 11 values: KIND BETA LS GAMMA SFT PC PR RC RR NC NR");
            tl_pref_opts o;
            tl_pref_logps p;
            tl_error err;
            if (tl_pref_kind_parse(f[1], &o.kind, &err) != TL_OK) return bad(name, ln, err.msg);
            double *d[] = {&o.beta, &o.label_smoothing, &o.gamma, &o.sft_weight, &p.pc, &p.pr, &p.rc, &p.rr};
            for (int i = 0; i < 8; i++)
                if (!parse_double(f[2 + i], d[i])) return bad(name, ln, "pref: a value is not a number");
            if (!parse_i64(f[10], &p.nc) || !parse_i64(f[11], &p.nr))
                return bad(name, ln, "pref: NC and NR must be integers");
            if (tl_pref_opts_check(&o, &err) != TL_OK) return bad(name, ln, err.msg);
            tl_pref_out out;
            tl_pref_loss(&o, &p, &out);
            tl_pref_stats_add(&st, &out);
            printf("%.17g %.17g %.17g %.17g %.17g %.17g %.17g\n", out.loss, out.dpc, out.dpr, out.reward_chosen,
                   out.reward_rejected, out.logp_chosen, out.logp_rejected);
        } else if (strcmp(f[0], "bt") == 0) {
            double rc, rr, c, loss, dc, dr;
            if (n != 4) return bad(name, ln, "bt needs 3 values: R_CHOSEN R_REJECTED CENTER_REWARDS");
            if (!parse_double(f[1], &rc) || !parse_double(f[2], &rr) || !parse_double(f[3], &c))
                return bad(name, ln, "bt: a value is not a number");
            tl_bt_loss(rc, rr, c, &loss, &dc, &dr);
            tl_pref_stats_add_bt(&st, loss, rc, rr);
            printf("%.17g %.17g %.17g\n", loss, dc, dr);
        } else if (strcmp(f[0], "stats") == 0) {
            if (n != 1) return bad(name, ln, "stats takes no value");
            double m[TL_PREF_N_METRICS];
            tl_pref_stats_mean(&st, m);
            printf("stats");
            for (int i = 0; i < TL_PREF_N_METRICS; i++) printf(" %.17g", m[i]);
            printf("\n");
            tl_pref_stats_init(&st);
        } else {
            return bad(name, ln, "unknown command (expected pref, bt or stats)");
        }
    }
    if (ferror(in)) return bad(name, ln, "read error");
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 2) {
        fprintf(stderr, "usage: tl_pref_loss_dump [FILE]\n");
        return 2;
    }
    FILE *in = stdin;
    const char *name = "<stdin>";
    if (argc == 2) {
        name = argv[1];
        in = fopen(name, "r");
        if (!in) {
            fprintf(stderr, "tl_pref_loss_dump: %s: cannot open: %s\n", name, strerror(errno));
            return 2;
        }
    }
    int rc = run(in, name);
    if (in != stdin) fclose(in);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "tl_pref_loss_dump: error writing the results\n");
        return 1;
    }
    return rc;
}
