/* tl_bench: tailor's side of the CPU benchmark (scripts/bench_cpu.sh). It times the LoRA SFT training step the
 * trainer runs (zero grads, forward + backward through tl_model_step, per-adapter clipping + AdamW through
 * tl_optim_step) on a SmolLM2-135M-shaped model (or any model: the vocabulary is read from it), and reports
 * tokens/s, peak RSS and, on a GPU backend, the peak device memory the backend held (scripts/bench_gpu.sh).
 *
 *   tl_bench --make-model DIR      writes a random SmolLM2-135M-shaped model (HF layout, fp32, std 0.02)
 *   tl_bench --model DIR [--threads N] [--adapters A] [--seqs S] [--seq-len T] [--rank R] [--warmup W]
 *            [--steps N] [--backend cpu|cuda|auto]
 *
 * The batch: S sequences of T tokens in one micro-batch, token i = ((i * 2654435761) mod 2^32) / 128 mod V
 * (scripts/bench_cpu_torch.py uses the same formula), no prompt (every next token is a target), sequence k on
 * adapter k mod A, loss = per-adapter mean cross-entropy summed over adapters. The model is written by a
 * separate invocation so that its generation buffers do not count in the measured process's peak RSS.
 * Each step is timed in wall-clock and in process CPU time (the steadier figure on a shared machine), the CPU time
 * also split into zeroing the gradients, the model step and the optimizer step (printed per step). After the
 * steps the machine's own sgemm rate is measured (OpenBLAS threaded, 1024 x 1536 x 576) and the step's FLOP rate
 * is reported as a fraction of it, by wall-clock and by CPU time.
 * The last line is machine-readable: "RESULT key=value ...". */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "data/tl_safetensors.h"
#include "trainer/model/tl_model.h"
#include "trainer/step/tl_optim.h"

enum { D = 576, F = 1536, L = 30, HQ = 9, HKV = 3, HD = 64, V = 49152 };

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* N(0, std^2) by Box-Muller, or the constant `base` when std == 0 */
static float *rand_tensor(size_t n, float std, float base, uint64_t *rng) {
    float *a = malloc(n * sizeof(float));
    if (!a) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (std == 0.0f) {
            a[i] = base;
            continue;
        }
        double u1 = ((double)(splitmix(rng) >> 11) + 1.0) * 0x1.0p-53, u2 = (double)(splitmix(rng) >> 11) * 0x1.0p-53;
        a[i] = base + std * (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
    return a;
}

static const char *const smollm2_config =
    "{\n"
    "  \"architectures\": [\"LlamaForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 576,\n"
    "  \"intermediate_size\": 1536,\n"
    "  \"max_position_embeddings\": 8192,\n"
    "  \"model_type\": \"llama\",\n"
    "  \"num_attention_heads\": 9,\n"
    "  \"num_hidden_layers\": 30,\n"
    "  \"num_key_value_heads\": 3,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_scaling\": null,\n"
    "  \"rope_theta\": 100000,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"float32\",\n"
    "  \"vocab_size\": 49152\n"
    "}\n";

static tl_status make_model(const char *dir, tl_error *err) {
    if (mkdir(dir, 0755) != 0) {
        struct stat st;
        if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
            return tl_fail(err, TL_ERR_RUNTIME, "%s: cannot create the model directory", dir);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    TL_TRY(tl_write_file_atomic(path, smollm2_config, strlen(smollm2_config), err));

    enum { MAXT = 4 + L * 9 };
    float *bufs[MAXT];
    int nb = 0;
    tl_status s = TL_OK;
    uint64_t rng = 0x5eed5eedULL;
    tl_st_writer *w = tl_st_writer_new();
    if (!w) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    char name[128];
#define ADD(nm, d0, d1, nd, std, base)                                                          \
    do {                                                                                        \
        int64_t shp[2] = {(d0), (d1)};                                                          \
        float *a = rand_tensor((size_t)(d0) * (size_t)((nd) == 2 ? (d1) : 1), std, base, &rng); \
        if (!a) {                                                                               \
            s = tl_fail(err, TL_ERR_RUNTIME, "out of memory for %s", nm);                       \
            goto done;                                                                          \
        }                                                                                       \
        bufs[nb++] = a;                                                                         \
        s = tl_st_writer_add_f32(w, nm, shp, nd, a, err);                                       \
        if (s) goto done;                                                                       \
    } while (0)
    ADD("model.embed_tokens.weight", V, D, 2, 0.02f, 0.0f);
    ADD("model.norm.weight", D, 1, 1, 0.0f, 1.0f);
    for (int l = 0; l < L; l++) {
#define LN(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        ADD(LN("input_layernorm.weight"), D, 1, 1, 0.0f, 1.0f);
        ADD(LN("post_attention_layernorm.weight"), D, 1, 1, 0.0f, 1.0f);
        ADD(LN("self_attn.q_proj.weight"), HQ * HD, D, 2, 0.02f, 0.0f);
        ADD(LN("self_attn.k_proj.weight"), HKV * HD, D, 2, 0.02f, 0.0f);
        ADD(LN("self_attn.v_proj.weight"), HKV * HD, D, 2, 0.02f, 0.0f);
        ADD(LN("self_attn.o_proj.weight"), D, HQ * HD, 2, 0.02f, 0.0f);
        ADD(LN("mlp.gate_proj.weight"), F, D, 2, 0.02f, 0.0f);
        ADD(LN("mlp.up_proj.weight"), F, D, 2, 0.02f, 0.0f);
        ADD(LN("mlp.down_proj.weight"), D, F, 2, 0.02f, 0.0f);
#undef LN
    }
#undef ADD
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    s = tl_st_writer_write(w, path, err);
done:
    tl_st_writer_free(w);
    for (int i = 0; i < nb; i++) free(bufs[i]);
    return s;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static long rss_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n)) v = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return v;
}

typedef struct {
    const char *model, *backend;
    int threads, adapters, seqs, seq_len, rank, warmup, steps;
} bench_opts;

typedef struct {
    tl_backend *be;
    tl_model m;
    int have_model;
    tl_lora_pool p;
    int have_pool;
    tl_workspace *ws;
    tl_host_mb mb;
    char **names;
    float *logp;
} bench_ctx;

static void bench_free(bench_ctx *c, int n_names) {
    if (c->ws) tl_workspace_free(c->ws, c->be);
    if (c->have_pool) tl_lora_pool_free(&c->p, c->be);
    if (c->have_model) tl_model_free(&c->m);
    if (c->be) c->be->destroy(c->be);
    tl_host_mb *mb = &c->mb;
    free(mb->tokens), free(mb->pos), free(mb->cu_seqlens), free(mb->targets), free(mb->weight);
    free(mb->adapter), free(mb->row_seed), free(mb->segs), free(mb->example), free(c->logp);
    if (c->names)
        for (int i = 0; i < n_names; i++) free(c->names[i]);
    free(c->names);
}

/* S sequences of T tokens; sequence k on adapter k mod A, sorted so that each adapter is one segment */
static tl_status build_batch(bench_ctx *c, const bench_opts *o, tl_error *err) {
    tl_host_mb *mb = &c->mb;
    int n = o->seqs * o->seq_len, S = o->seqs, T = o->seq_len, A = o->adapters, vocab = c->m.cfg.vocab_size;
    mb->tokens = malloc((size_t)n * sizeof(int32_t));
    mb->pos = malloc((size_t)n * sizeof(int32_t));
    mb->targets = malloc((size_t)n * sizeof(int32_t));
    mb->adapter = malloc((size_t)n * sizeof(int32_t));
    mb->weight = malloc((size_t)n * sizeof(float));
    mb->row_seed = malloc((size_t)n * sizeof(uint64_t));
    mb->cu_seqlens = malloc((size_t)(S + 1) * sizeof(int32_t));
    mb->segs = malloc((size_t)S * sizeof(tl_seg));
    mb->example = malloc((size_t)S * sizeof(int64_t));
    c->logp = malloc((size_t)n * sizeof(float));
    if (!mb->tokens || !mb->pos || !mb->targets || !mb->adapter || !mb->weight || !mb->row_seed ||
        !mb->cu_seqlens || !mb->segs || !mb->example || !c->logp)
        return tl_fail(err, TL_ERR_RUNTIME, "out of memory for the batch");
    mb->n_tok = n, mb->n_seq = S, mb->max_seqlen = T, mb->n_seg = 0;
    int row = 0, k = 0;
    mb->cu_seqlens[0] = 0;
    for (int a = 0; a < A; a++) {
        int r0 = row, count = 0;
        for (int q = a; q < S; q += A, k++) {
            for (int j = 0; j < T; j++, row++) {
                mb->tokens[row] = (int32_t)((((uint64_t)row * 2654435761ULL) & 0xffffffffULL) / 128 % (uint64_t)vocab);
                mb->pos[row] = j;
                mb->adapter[row] = a;
                mb->row_seed[row] = (uint64_t)row + 1;
            }
            mb->example[k] = q;
            mb->cu_seqlens[k + 1] = row;
        }
        for (int i = r0; i < row; i++) {
            int last = (i + 1 == row) || (mb->pos[i + 1] == 0);
            mb->targets[i] = last ? -1 : mb->tokens[i + 1];
            count += !last;
        }
        for (int i = r0; i < row; i++) mb->weight[i] = mb->targets[i] >= 0 ? 1.0f / (float)count : 0.0f;
        if (row > r0) mb->segs[mb->n_seg++] = (tl_seg){.row0 = r0, .row1 = row, .slot = a};
    }
    return TL_OK;
}

/* The machine's sgemm rate (GFLOP/s) at the shape of the MLP's products, 1024 x 1536 x 576, with OpenBLAS's own
 * threading at `threads` threads: the median of 7 timed calls after 2 warmup calls. Measured after the steps, so
 * the backend's setting of OpenBLAS's thread count is overridden here and no step depends on it. */
static double sgemm_rate(int threads, double *cpu_rate) {
    enum { M = 1024, N = 1536, K = 576 };
    float *a = malloc((size_t)M * K * sizeof(float)), *b = malloc((size_t)N * K * sizeof(float));
    float *cc = malloc((size_t)M * N * sizeof(float));
    if (!a || !b || !cc) {
        free(a), free(b), free(cc);
        return 0.0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (float)((i * 7919) % 1000) * 1e-3f - 0.5f;
    for (size_t i = 0; i < (size_t)N * K; i++) b[i] = (float)((i * 104729) % 1000) * 1e-3f - 0.5f;
    openblas_set_num_threads(threads);
    double t[9], tc[9];
    for (int i = 0; i < 9; i++) {
        double t0 = now_s(), c0 = cpu_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, cc, N);
        t[i] = now_s() - t0, tc[i] = cpu_s() - c0;
    }
    openblas_set_num_threads(1);
    qsort(t + 2, 7, sizeof(double), cmp_double);
    qsort(tc + 2, 7, sizeof(double), cmp_double);
    free(a), free(b), free(cc);
    *cpu_rate = 2.0 * M * N * K / tc[2 + 3] * 1e-9;
    return 2.0 * M * N * K / t[2 + 3] * 1e-9;
}

static tl_status bench(bench_ctx *c, const bench_opts *o, tl_error *err) {
    double t0 = now_s();
    TL_TRY(tl_backend_open(o->backend, o->threads, &c->be, err));
    TL_TRY(tl_model_load(o->model, c->be, &c->m, err));
    c->have_model = 1;
    double t_load = now_s() - t0;
    long rss_load = rss_kb("VmRSS:");
    c->names = calloc((size_t)o->adapters, sizeof(char *));
    if (!c->names) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    for (int a = 0; a < o->adapters; a++) {
        c->names[a] = malloc(32);
        if (!c->names[a]) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
        snprintf(c->names[a], 32, "user%d", a);
    }
    tl_lora_opts lo = {.rank = o->rank, .alpha = 2.0f * (float)o->rank, .targets = (1u << TL_N_TARGETS) - 1};
    TL_TRY(tl_lora_pool_init(&c->p, &c->m, o->adapters, c->names, &lo, err));
    c->have_pool = 1;
    TL_TRY(build_batch(c, o, err));
    TL_TRY(tl_workspace_create(&c->m, &c->p, c->mb.n_tok, c->mb.n_seq, &c->ws, err));

    tl_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.lr = 1e-4, cfg.grad_clip = 1.0, cfg.beta1 = 0.9, cfg.beta2 = 0.999, cfg.adam_eps = 1e-8;
    cfg.weight_decay = 0.0, cfg.warmup_steps = 0;
    cfg.schedule = TL_SCHEDULE_CONSTANT;
    tl_optim_opts optim = tl_optim_opts_of(&cfg);
    int32_t active[64];
    int64_t total[64];
    float gnorm[64], lr[64];
    tl_adam_slot adam[64];
    for (int a = 0; a < o->adapters; a++) active[a] = a, total[a] = o->warmup + o->steps;

    size_t gbytes = (size_t)o->adapters * c->p.P * sizeof(float);
    double timed = 0.0, loss0 = 0.0, loss_last = 0.0;
    double *times = malloc(2 * (size_t)o->steps * sizeof(double)), *ctimes = times + o->steps;
    if (!times) return tl_fail(err, TL_ERR_RUNTIME, "out of memory");
    printf("tailor: backend %s, %d threads, %d layers, %d tokens in %d sequences, %d adapter(s), rank %d, "
           "%zu LoRA params per adapter; load %.1f s, workspace %.0f MiB\n",
           c->be->name, o->threads, c->m.cfg.num_hidden_layers, c->mb.n_tok, c->mb.n_seq, o->adapters, o->rank,
           c->p.P, t_load, (double)tl_workspace_bytes(c->ws) / 1048576.0);
    if (!strcmp(c->be->name, "cpu")) printf("tl_bench: products: %s\n", tl_backend_cpu_products());
    for (int step = 0; step < o->warmup + o->steps; step++) {
        double ts = now_s(), cs = cpu_s();
        c->be->zero(c->be, c->p.grads, gbytes);
        double cz = cpu_s();
        tl_status s = tl_model_step(&c->m, &c->p, c->ws, &c->mb, 1, c->logp, err);
        double cm = cpu_s();
        if (!s) s = tl_optim_step(&c->p, c->be, &optim, active, o->adapters, total, gnorm, lr, adam, err);
        if (s) {
            free(times);
            return s;
        }
        double dt = now_s() - ts, dc = cpu_s() - cs;
        double loss = 0.0;
        for (int i = 0; i < c->mb.n_tok; i++) loss -= (double)c->mb.weight[i] * (double)c->logp[i];
        if (step == 0) loss0 = loss;
        loss_last = loss;
        if (step >= o->warmup) timed += dt, times[step - o->warmup] = dt, ctimes[step - o->warmup] = dc;
        /* where the CPU time goes: the many-adapter cost is in zeroing and the optimizer, not the model */
        printf("tailor: step %d%s %.3f s (cpu %.3f s: zero grads %.3f, model %.3f, optimizer %.3f)  loss %.6f  "
               "grad-norm[0] %.4g\n",
               step, step < o->warmup ? " (warmup)" : "", dt, dc, cz - cs, cm - cz, cs + dc - cm, loss, gnorm[0]);
        fflush(stdout);
    }
    /* the median step is robust to a step slowed by other processes on a shared machine */
    qsort(times, (size_t)o->steps, sizeof(double), cmp_double);
    double med = o->steps % 2 ? times[o->steps / 2] : 0.5 * (times[o->steps / 2 - 1] + times[o->steps / 2]);
    qsort(ctimes, (size_t)o->steps, sizeof(double), cmp_double);
    double cmed = o->steps % 2 ? ctimes[o->steps / 2] : 0.5 * (ctimes[o->steps / 2 - 1] + ctimes[o->steps / 2]);
    free(times);
    /* the step's floating-point work: 2 flops per multiply-add of the frozen products, forward (6 per layer +
     * LM head) and backward input gradients (the same again), plus attention's four products per (query, key)
     * pair forward and backward; LoRA and elementwise work are left out (under 1%) */
    double Lf = (double)c->m.cfg.num_hidden_layers, Dd = D, Ff = F, qd = HQ * HD, kvd = HKV * HD;
    double per_tok = Lf * (Dd * qd * 2 + Dd * kvd * 2 + 3 * Dd * Ff) + Dd * V;
    double pairs = (double)o->seqs * o->seq_len * (o->seq_len + 1) / 2.0;
    double flops = 2.0 * 2.0 * per_tok * c->mb.n_tok + Lf * HQ * pairs * HD * 2.0 * (2 + 5);
    double gflops_wall = flops / med * 1e-9;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return tl_fail(err, TL_ERR_RUNTIME, "getrusage failed");
    double sg_cpu = 0.0, sg = sgemm_rate(o->threads, &sg_cpu);
    size_t dev_now = 0, dev_peak = 0; /* device bytes held by the backend (GPU backends; 0 on the CPU) */
    if (c->be->mem_stats) c->be->mem_stats(c->be, &dev_now, &dev_peak);
    printf("RESULT impl=tailor tokens_per_s=%.2f tokens_per_s_mean=%.2f step_s_median=%.4f cpu_s_median=%.4f "
           "peak_rss_mb=%.1f rss_after_load_mb=%.1f loss0=%.6f loss_last=%.6f threads=%d adapters=%d tokens=%d "
           "peak_dev_mb=%.1f lora_params=%zu step_gflops=%.1f gflops=%.1f sgemm_gflops=%.1f sgemm_fraction=%.3f "
           "gflops_per_cpu_s=%.1f sgemm_gflops_per_cpu_s=%.1f sgemm_cpu_fraction=%.3f\n",
           (double)c->mb.n_tok / med, (double)c->mb.n_tok * o->steps / timed, med, cmed,
           (double)ru.ru_maxrss / 1024.0, (double)rss_load / 1024.0, loss0, loss_last, o->threads, o->adapters,
           c->mb.n_tok, (double)dev_peak / 1048576.0, c->p.P, flops * 1e-9, gflops_wall, sg,
           sg > 0 ? gflops_wall / sg : 0.0, flops / cmed * 1e-9, sg_cpu, sg_cpu > 0 ? flops / cmed * 1e-9 / sg_cpu : 0.0);
    return TL_OK;
}

static int parse_int(const char *flag, const char *v, int lo, int hi, int *out) {
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "tl_bench: %s expects an integer in [%d, %d]\n", flag, lo, hi);
        return 0;
    }
    *out = (int)x;
    return 1;
}

int main(int argc, char **argv) {
    bench_opts o = {.model = NULL, .backend = "cpu", .threads = 2, .adapters = 4, .seqs = 4, .seq_len = 256,
                    .rank = 8, .warmup = 2, .steps = 5};
    const char *make = NULL;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int ok = 1;
        if (!strcmp(a, "--make-model") && v) make = v;
        else if (!strcmp(a, "--model") && v) o.model = v;
        else if (!strcmp(a, "--backend") && v) o.backend = v;
        else if (!strcmp(a, "--threads")) ok = parse_int(a, v, 1, 1024, &o.threads);
        else if (!strcmp(a, "--adapters")) ok = parse_int(a, v, 1, 64, &o.adapters);
        else if (!strcmp(a, "--seqs")) ok = parse_int(a, v, 1, 4096, &o.seqs);
        else if (!strcmp(a, "--seq-len")) ok = parse_int(a, v, 2, 1 << 20, &o.seq_len);
        else if (!strcmp(a, "--rank")) ok = parse_int(a, v, 1, 1024, &o.rank);
        else if (!strcmp(a, "--warmup")) ok = parse_int(a, v, 0, 1000, &o.warmup);
        else if (!strcmp(a, "--steps")) ok = parse_int(a, v, 1, 100000, &o.steps);
        else {
            fprintf(stderr, "usage: tl_bench --make-model DIR | --model DIR [--threads N] [--adapters A] [--seqs S] "
                            "[--seq-len T] [--rank R] [--warmup W] [--steps N] [--backend cpu|cuda|auto]\n");
            return 2;
        }
        if (!ok) return 2;
    }
    tl_error err = {0};
    if (make) {
        tl_status s = make_model(make, &err);
        if (s) fprintf(stderr, "tl_bench: %s\n", err.msg);
        else printf("tl_bench: wrote a random SmolLM2-135M-shaped model to %s\n", make);
        return (int)s;
    }
    if (!o.model) {
        fprintf(stderr, "tl_bench: --model DIR is required (create one with --make-model DIR)\n");
        return 2;
    }
    if (o.adapters > o.seqs) {
        fprintf(stderr, "tl_bench: --adapters %d exceeds --seqs %d\n", o.adapters, o.seqs);
        return 2;
    }
    bench_ctx c;
    memset(&c, 0, sizeof c);
    tl_status s = bench(&c, &o, &err);
    bench_free(&c, o.adapters);
    if (s) {
        fprintf(stderr, "tl_bench: %s\n", err.msg);
        return (int)s;
    }
    return 0;
}
