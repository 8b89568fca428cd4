/* `tailor generate`: its arguments, usage and messages; the generation itself is tl_generate (eval/tl_generate.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_text.h"
#include "trainer/cli/cli.h"
#include "trainer/eval/tl_generate.h"

static const char *gen_usage =
    "usage: tailor generate --model PATH (--adapter DIR ... | --run DIR (--user NAME ... | --all-users)) [--base]\n"
    "                       --prompt TEXT [--chat] [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n"
    "                       [--backend cpu|cuda|auto] [--threads N]\n";

static int gen_usage_error(const char *fmt, const char *arg) { return tl_cli_usage_error("generate", fmt, arg); }

/* Option values go through the strict parsers of tl_text.h: "1e3", "12abc" or 2^64 for an integer option and
 * "nan" or "inf" for a float one are refused, naming the option, never truncated. */
static int parse_int_opt(const char *flag, const char *v, int64_t lo, int64_t hi, int *out) {
    char what[64];
    int64_t x = 0; /* set by tl_cli_parse_i64 on success, the only path that reads it */
    snprintf(what, sizeof what, "generate: %s", flag);
    int rc = tl_cli_parse_i64(what, v, lo, hi, &x);
    if (!rc) *out = (int)x;
    return rc;
}

static int parse_float_opt(const char *flag, const char *v, double lo, double hi, int open_lo, float *out) {
    char what[64];
    double x = 0.0; /* set by tl_cli_parse_f64 on success, the only path that reads it */
    snprintf(what, sizeof what, "generate: %s", flag);
    int rc = tl_cli_parse_f64(what, v, lo, hi, &x);
    if (rc) return rc;
    if (open_lo && !(x > lo)) {
        char b[96];
        fprintf(stderr, "tailor: error: generate: %s: expected a number in (%g, %g], got '%s'\n", flag, lo, hi,
                tl_escape(b, sizeof b, v));
        return 2;
    }
    *out = (float)x;
    return 0;
}

static int parse_args(int argc, char **argv, const char **adapters, const char **users, tl_generate_opts *g,
                      int *help) {
    int rc = 0;
    for (int i = 0; i < argc && rc == 0; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = 1;
            return 0;
        }
        if (!strcmp(a, "--chat")) { g->chat = 1; continue; }
        if (!strcmp(a, "--base")) { g->base = 1; continue; }
        if (!strcmp(a, "--all-users")) { g->all_users = 1; continue; }
        int known = !strcmp(a, "--model") || !strcmp(a, "--adapter") || !strcmp(a, "--run") || !strcmp(a, "--user") ||
                    !strcmp(a, "--prompt") || !strcmp(a, "--max-new-tokens") || !strcmp(a, "--temperature") ||
                    !strcmp(a, "--top-p") || !strcmp(a, "--seed") || !strcmp(a, "--backend") ||
                    !strcmp(a, "--threads");
        if (!known) return gen_usage_error("generate: unknown argument %s", a);
        if (i + 1 >= argc) return gen_usage_error("generate: needs a value: %s", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--model")) g->model = v;
        else if (!strcmp(a, "--adapter")) adapters[g->n_adapters++] = v;
        else if (!strcmp(a, "--run")) g->run = v;
        else if (!strcmp(a, "--user")) users[g->n_users++] = v;
        else if (!strcmp(a, "--prompt")) g->prompt = v;
        else if (!strcmp(a, "--backend")) g->backend = v;
        else if (!strcmp(a, "--max-new-tokens")) rc = parse_int_opt(a, v, 0, 1 << 24, &g->max_new_tokens);
        else if (!strcmp(a, "--threads")) rc = parse_int_opt(a, v, 0, 1024, &g->threads); /* TL_MAX_THREADS */
        else if (!strcmp(a, "--temperature")) rc = parse_float_opt(a, v, 0, 1e6, 0, &g->temperature);
        else if (!strcmp(a, "--top-p")) rc = parse_float_opt(a, v, 0, 1, 1, &g->top_p);
        else rc = tl_cli_parse_u64("generate: --seed", v, 0, UINT64_MAX, &g->seed);
    }
    if (rc) return rc;
    if (!g->model) return gen_usage_error("generate: needs --model PATH", NULL);
    if (!g->prompt) return gen_usage_error("generate: needs --prompt TEXT", NULL);
    if ((g->n_users || g->all_users) && !g->run) return gen_usage_error("generate: --user and --all-users need --run DIR", NULL);
    if (g->run && !g->n_users && !g->all_users) return gen_usage_error("generate: --run needs --user NAME or --all-users", NULL);
    if (g->n_users && g->all_users) return gen_usage_error("generate: --user and --all-users exclude each other", NULL);
    if (!g->n_adapters && !g->run && !g->base) return gen_usage_error("generate: needs --adapter DIR, --run DIR or --base", NULL);
    return 0;
}

int tl_cmd_generate(int argc, char **argv) {
    tl_generate_opts g = {.backend = "auto", .temperature = 0.0f, .top_p = 1.0f, .max_new_tokens = 64};
    const char **adapters = calloc((size_t)argc + 1, sizeof(char *));
    const char **users = calloc((size_t)argc + 1, sizeof(char *));
    int rc = 0, help = 0;
    if (!adapters || !users) {
        fprintf(stderr, "tailor: error: generate: out of memory\n");
        rc = 1;
    } else if ((rc = parse_args(argc, argv, adapters, users, &g, &help)) == 0 && help) {
        fputs(gen_usage, stdout);
    } else if (rc == 0) {
        g.adapters = adapters, g.users = users;
        tl_error err = {0};
        if (tl_generate(&g, stdout, &err) != TL_OK) rc = tl_cli_fail(&err);
    }
    free(adapters), free(users);
    return rc;
}
