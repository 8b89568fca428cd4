/* tl_data_scale: measures tailor's data layer on a large SFT dataset (issue 13, "data at scale"): the time to
 * open and validate it (tl_sft_open, with the HDF5 isolation child as `train` runs it), the time and resident
 * memory of the adapter map (one adapter per user) and of the batcher, and the time of a few batcher steps.
 *
 *   tl_data_scale FILE.h5 [--adapters-per-step N] [--steps N] [--micro-batch-tokens N] [--max-seq-len N]
 *
 * Resident memory is VmRSS from /proc/self/status before and after each stage (so it counts pages touched, the
 * memory a stage really costs); bytes per user divide that by the number of users. The last line is
 * machine-readable: "RESULT key=value ...". scripts/make_scale_data.py writes such datasets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "data/tl_batcher.h"
#include "data/tl_dataset.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static long rss_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) v = strtol(line + 6, NULL, 10);
    fclose(f);
    return v;
}

static int arg_int(const char *flag, const char *v, int *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < 0 || x > (1L << 30)) {
        fprintf(stderr, "tl_data_scale: %s expects a non-negative integer\n", flag);
        return 0;
    }
    *out = (int)x;
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tl_data_scale FILE.h5 [--adapters-per-step N] [--steps N] [--micro-batch-tokens N] "
                        "[--max-seq-len N]\n");
        return 2;
    }
    int aps = 64, steps = 20, mbt = 4096, msl = 64;
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = !strcmp(a, "--adapters-per-step")    ? arg_int(a, v, &aps)
                 : !strcmp(a, "--steps")              ? arg_int(a, v, &steps)
                 : !strcmp(a, "--micro-batch-tokens") ? arg_int(a, v, &mbt)
                 : !strcmp(a, "--max-seq-len")        ? arg_int(a, v, &msl)
                                                      : (fprintf(stderr, "tl_data_scale: unknown %s\n", a), 0);
        if (!ok) return 2;
    }
    tl_error err = {0};
    tl_sft_dataset ds;
    long r0 = rss_kb();
    double t0 = now_s();
    if (tl_sft_open(argv[1], 0, &ds, &err)) {
        fprintf(stderr, "tl_data_scale: %s\n", err.msg);
        return 2;
    }
    double t_open = now_s() - t0;
    long r1 = rss_kb();
    tl_adapter_map map;
    t0 = now_s();
    if (tl_adapter_map_build(&ds, TL_KEY_USER, NULL, 0, &map, &err)) {
        fprintf(stderr, "tl_data_scale: %s\n", err.msg);
        return 1;
    }
    double t_map = now_s() - t0;
    long r2 = rss_kb();
    tl_batcher_opts o = {.examples_per_adapter = 1, .adapters_per_step = aps, .micro_batch_tokens = mbt,
                         .max_seq_len = msl, .seed = 1};
    tl_batcher *b;
    t0 = now_s();
    if (tl_batcher_init(&ds, &map, &o, &b, &err)) {
        fprintf(stderr, "tl_data_scale: %s\n", err.msg);
        return 1;
    }
    double t_init = now_s() - t0;
    long r3 = rss_kb();
    t0 = now_s();
    int64_t toks = 0;
    for (int s = 0; s < steps; s++) {
        tl_step_batch *sb;
        if (tl_batcher_next(b, s, &sb, &err)) {
            fprintf(stderr, "tl_data_scale: %s\n", err.msg);
            return 1;
        }
        toks += sb->n_tokens;
    }
    double t_steps = now_s() - t0;
    long r4 = rss_kb();
    double U = ds.n_users;
    printf("%s: %d users, %lld examples, %lld tokens\n", argv[1], ds.n_users, (long long)ds.n_examples,
           (long long)ds.n_tokens);
    printf("open + validate %.2f s (+%.1f MiB resident); adapter map %.3f s (+%.1f MiB, %.0f bytes/user); "
           "batcher init %.3f s (+%.1f MiB, %.0f bytes/user); %d steps of %d adapters %.3f s (%.2f ms/step, "
           "%lld tokens, +%.1f MiB)\n",
           t_open, (r1 - r0) / 1024.0, t_map, (r2 - r1) / 1024.0, (r2 - r1) * 1024.0 / U, t_init,
           (r3 - r2) / 1024.0, (r3 - r2) * 1024.0 / U, steps, aps, t_steps, 1e3 * t_steps / (steps ? steps : 1),
           (long long)toks, (r4 - r3) / 1024.0);
    printf("RESULT users=%d examples=%lld tokens=%lld open_s=%.3f open_rss_mb=%.1f map_s=%.4f map_bytes_per_user=%.0f "
           "batcher_s=%.4f batcher_bytes_per_user=%.0f step_ms=%.3f\n",
           ds.n_users, (long long)ds.n_examples, (long long)ds.n_tokens, t_open, (r1 - r0) / 1024.0, t_map,
           (r2 - r1) * 1024.0 / U, t_init, (r3 - r2) * 1024.0 / U, 1e3 * t_steps / (steps ? steps : 1));
    tl_batcher_free(b);
    tl_adapter_map_free(&map);
    tl_sft_free(&ds);
    return 0;
}
