/* test_dist: rank discovery from each launcher's environment, device and thread placement, adapter ownership,
 * and the one-process world (no transport: every collective leaves the data as it is). The transports
 * themselves are exercised across real processes by tests/e2e/dist_collectives.sh (tl_dist_check under mpirun). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/lib/tl_check.h"
#include "trainer/dist/tl_dist.h"

static const char *const VARS[] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                                   "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
                                   "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_STEP_TASKS_PER_NODE",
                                   "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                   "LOCAL_WORLD_SIZE", "OMPI_MCA_orte_ess_jobid", "TORCHELASTIC_RUN_ID", NULL};

static void clear_env(void) {
    for (int i = 0; VARS[i]; i++) unsetenv(VARS[i]);
}

static tl_status detect(tl_dist_env *e, tl_error *err) {
    memset(e, 0x5a, sizeof *e); /* poison: every field must be written */
    return tl_dist_env_detect(e, err);
}

static void test_env(void) {
    tl_dist_env e;
    tl_error err = {0};
    clear_env();
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.rank == 0 && e.world == 1 && e.local_rank == 0 && e.local_world == 1 && !strcmp(e.source, "single"));

    setenv("OMPI_COMM_WORLD_RANK", "3", 1), setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1), setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2", 1);
    setenv("SLURM_PROCID", "0", 1), setenv("SLURM_STEP_NUM_TASKS", "9", 1); /* OpenMPI's names win */
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.rank == 3 && e.world == 4 && e.local_rank == 1 && e.local_world == 2 && !strcmp(e.source, "openmpi"),
          "openmpi: rank %d world %d local %d/%d source %s", e.rank, e.world, e.local_rank, e.local_world, e.source);

    clear_env(); /* a Slurm step: 2 tasks on each of 2 nodes, this is the second node's second task */
    setenv("SLURM_PROCID", "3", 1), setenv("SLURM_STEP_NUM_TASKS", "4", 1), setenv("SLURM_LOCALID", "1", 1);
    setenv("SLURM_NODEID", "1", 1), setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)", 1);
    setenv("SLURM_JOB_ID", "777", 1), setenv("SLURM_RESTART_COUNT", "2", 1);
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.rank == 3 && e.world == 4 && e.local_rank == 1 && e.local_world == 2 && !strcmp(e.source, "slurm"),
          "slurm: rank %d world %d local %d/%d source %s", e.rank, e.world, e.local_rank, e.local_world, e.source);
    CHECK(!strcmp(e.job_id, "777.2"), "job id %s", e.job_id); /* a requeued job gets a fresh rendezvous name */
    setenv("SLURM_STEP_TASKS_PER_NODE", "3,1", 1), setenv("SLURM_PROCID", "3", 1), setenv("SLURM_LOCALID", "0", 1);
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.local_world == 1, "uneven nodes: node 1 of \"3,1\" has 1 task, got %d", e.local_world);
    /* a malformed or absurd per-node count is not trusted: the node's share falls back to the whole step, and the
     * repeat count never overflows (9223372036854775807 + the index was signed overflow under UBSan) */
    static const char *const bad_tpn[] = {"9223372036854775807(x9223372036854775807)", "1(x99999999999999999999)",
                                          "2(x", "2(x2", "2x2", "-1", "2,,1", ""};
    for (size_t i = 0; i < sizeof bad_tpn / sizeof bad_tpn[0]; i++) {
        setenv("SLURM_STEP_TASKS_PER_NODE", bad_tpn[i], 1), setenv("SLURM_PROCID", "3", 1);
        setenv("SLURM_LOCALID", "3", 1);
        CHECK_OK(detect(&e, &err), err);
        CHECK(e.local_world == 4, "malformed tasks per node \"%s\": local world %d, expected the step's 4", bad_tpn[i],
              e.local_world);
    }

    clear_env(); /* the batch script itself is one process even though the job has two tasks */
    setenv("SLURM_PROCID", "0", 1), setenv("SLURM_NTASKS", "2", 1), setenv("SLURM_JOB_ID", "5", 1);
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.world == 1 && !strcmp(e.source, "single"), "batch shell: world %d source %s", e.world, e.source);

    clear_env();
    setenv("RANK", "1", 1), setenv("WORLD_SIZE", "2", 1);
    CHECK_OK(detect(&e, &err), err);
    CHECK(e.rank == 1 && e.world == 2 && e.local_rank == 1 && e.local_world == 2 && !strcmp(e.source, "env"));

    /* bad environments: one clear input error naming the variable */
    struct { const char *r, *w, *want; } bad[] = {
        {"2", "2", "RANK=2 is not below WORLD_SIZE=2"},
        {"x", "2", "RANK=x"},
        {"0", "0", "WORLD_SIZE=0"},
        {NULL, "2", "RANK is not"},
        {"-1", "2", "RANK=-1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        clear_env();
        if (bad[i].r) setenv("RANK", bad[i].r, 1);
        setenv("WORLD_SIZE", bad[i].w, 1);
        err = (tl_error){0};
        tl_status s = detect(&e, &err);
        CHECK(s == TL_ERR_INPUT && strstr(err.msg, bad[i].want), "case %zu: status %d, message '%s' (want '%s')", i,
              (int)s, err.msg, bad[i].want);
    }
    clear_env();
    setenv("RANK", "0", 1), setenv("WORLD_SIZE", "4", 1), setenv("LOCAL_RANK", "2", 1);
    setenv("LOCAL_WORLD_SIZE", "2", 1);
    err = (tl_error){0};
    CHECK(detect(&e, &err) == TL_ERR_INPUT && strstr(err.msg, "local rank 2"), "local rank check: '%s'", err.msg);
    clear_env();
}

static void test_placement(void) {
    tl_dist_env e = {.rank = 5, .world = 8, .local_rank = 5, .local_world = 8};
    CHECK(tl_dist_cuda_device(&e, 1) == 0, "--gpus-per-task: the one visible device");
    CHECK(tl_dist_cuda_device(&e, 8) == 5, "whole node visible: device = local rank");
    CHECK(tl_dist_cuda_device(&e, 4) == 1, "fewer devices than local ranks: local rank modulo devices");
    tl_dist_env one = {.world = 1, .local_world = 1};
    int t1 = tl_dist_cpu_threads(&one), t8 = tl_dist_cpu_threads(&e);
    CHECK(t1 >= 1 && t8 >= 1 && t8 <= t1, "threads: alone %d, one of 8 on the node %d", t1, t8);
}

static void test_owners(void) {
    /* a worked case of the longest-processing-time rule */
    double c[5] = {5, 4, 3, 3, 3};
    int own[5];
    memset(own, 0x7f, sizeof own);
    tl_dist_assign_owners(c, 5, 2, own);
    int want[5] = {0, 1, 1, 0, 1};
    CHECK(!memcmp(own, want, sizeof want), "owners %d %d %d %d %d, want 0 1 1 0 1", own[0], own[1], own[2], own[3],
          own[4]);
    /* zero costs (adapters the round robin never reaches in a short run) still spread over the ranks */
    double z[5] = {0, 0, 0, 0, 0};
    int zo[5], seen[3] = {0};
    tl_dist_assign_owners(z, 5, 3, zo);
    for (int a = 0; a < 5; a++)
        if (zo[a] >= 0 && zo[a] < 3) seen[zo[a]]++;
    CHECK(seen[0] == 2 && seen[1] == 2 && seen[2] == 1, "zero costs: %d %d %d adapters per rank", seen[0], seen[1],
          seen[2]);
    /* random costs: everyone owned, loads within one adapter's cost of each other, deterministic */
    unsigned long long seed = (unsigned long long)time(NULL);
    srand((unsigned)seed);
    for (int trial = 0; trial < 50; trial++) {
        int n = 1 + rand() % 300, world = 1 + rand() % 17;
        double *cost = malloc((size_t)n * sizeof *cost), load[17] = {0}, cmax = 0;
        int *o1 = malloc((size_t)n * sizeof *o1), *o2 = malloc((size_t)n * sizeof *o2);
        for (int a = 0; a < n; a++) cost[a] = (double)(rand() % 1000), cmax = cost[a] > cmax ? cost[a] : cmax;
        for (int a = 0; a < n; a++) o1[a] = -7;
        tl_dist_assign_owners(cost, n, world, o1);
        tl_dist_assign_owners(cost, n, world, o2);
        CHECK(!memcmp(o1, o2, (size_t)n * sizeof *o1), "trial %d: not deterministic", trial);
        int ok = 1;
        for (int a = 0; a < n; a++) {
            if (o1[a] < 0 || o1[a] >= world) ok = 0;
            else load[o1[a]] += cost[a];
        }
        CHECK(ok, "trial %d: an owner out of [0, %d)", trial, world);
        if (n >= world) {
            int per[17] = {0}, empty = 0;
            for (int a = 0; a < n; a++) per[o1[a]]++;
            for (int r = 0; r < world; r++) empty += per[r] == 0;
            CHECK(!empty, "trial %d (n %d, world %d): %d rank(s) own nothing", trial, n, world, empty);
        }
        double lo = load[0], hi = load[0];
        for (int r = 1; r < world; r++) lo = load[r] < lo ? load[r] : lo, hi = load[r] > hi ? load[r] : hi;
        CHECK(hi - lo <= cmax, "trial %d (n %d, world %d): loads %g..%g differ by more than the largest cost %g",
              trial, n, world, lo, hi, cmax);
        free(cost), free(o1), free(o2);
    }
}

static void test_single_world(void) {
    tl_dist_env e;
    tl_error err = {0};
    clear_env();
    CHECK_OK(tl_dist_env_detect(&e, &err), err);
    tl_dist *d = NULL;
    tl_dist_opts o = {.transport = TL_DIST_MPI, .timeout_s = 1};
    CHECK_OK(tl_dist_init(&e, &o, &d, &err), err);
    if (!d) return;
    CHECK(tl_dist_rank(d) == 0 && tl_dist_world(d) == 1 && !strcmp(tl_dist_transport(d), "none"));
    float f[3] = {1.5f, -2.0f, 3.25f};
    double g[2] = {0.1, 7};
    int64_t i64[2] = {-5, 1LL << 40};
    int mx[2] = {4, -3};
    char b[4] = "abc";
    CHECK_OK(tl_dist_allreduce_f32(d, f, 3, "t", &err), err);
    CHECK_OK(tl_dist_allreduce_f64_host(d, g, 2, "t", &err), err);
    CHECK_OK(tl_dist_allreduce_i64_host(d, i64, 2, "t", &err), err);
    CHECK_OK(tl_dist_allreduce_max_int_host(d, mx, 2, "t", &err), err);
    CHECK_OK(tl_dist_bcast_host(d, b, 4, 0, "t", &err), err);
    CHECK_OK(tl_dist_barrier(d, "t", &err), err);
    CHECK(f[0] == 1.5f && f[1] == -2.0f && f[2] == 3.25f && g[0] == 0.1 && g[1] == 7 && i64[0] == -5 &&
          i64[1] == 1LL << 40 && mx[0] == 4 && mx[1] == -3 && !strcmp(b, "abc"), "a world of one changed data");
    tl_dist_abort(d, 1); /* returns for a world of one */
    tl_dist_free(d);
    tl_dist_opts bad = {.transport = TL_DIST_MPI, .timeout_s = 0};
    d = NULL;
    CHECK(tl_dist_init(&e, &bad, &d, &err) == TL_ERR_INPUT && !d && strstr(err.msg, "dist.timeout_s"));
}

/* A transport whose library this build lacks: its creator refuses a world of two, naming what is missing, and
 * tl_dist_init leaves nothing behind. (In a build with both libraries there is nothing to check here: the e2e
 * dist tests connect them.) */
static void test_not_built(void) {
    tl_dist_env e = {.rank = 0, .world = 2, .local_rank = 0, .local_world = 2};
    snprintf(e.source, sizeof e.source, "env");
    tl_error err = {0};
    tl_dist *d = NULL;
    (void)e, (void)err, (void)d;
#ifndef TL_HAVE_MPI
    tl_dist_opts cpu = {.transport = TL_DIST_MPI, .timeout_s = 1};
    CHECK(tl_dist_init(&e, &cpu, &d, &err) == TL_ERR_INPUT && !d && strstr(err.msg, "built without MPI"),
          "cpu, 2 ranks, no MPI: %s", err.msg);
#endif
#ifndef TL_HAVE_NCCL
    tl_dist_opts cuda = {.transport = TL_DIST_NCCL, .timeout_s = 1};
    CHECK(tl_dist_init(&e, &cuda, &d, &err) == TL_ERR_INPUT && !d && strstr(err.msg, "built without NCCL"),
          "cuda, 2 ranks, no NCCL: %s", err.msg);
#endif
}

int main(void) {
    test_env();
    test_placement();
    test_owners();
    test_single_world();
    test_not_built();
    return tl_check_done("test_dist");
}
