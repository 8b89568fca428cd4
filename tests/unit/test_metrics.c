/* The run's metrics module (trainer/run/metrics.c): metrics.jsonl records (null for a non-finite number), the
 * resume rule that drops records past the resumed step, the progress line with its ETA; and the small option
 * helpers the train loop uses (tl_optim_opts_of, the config choice words). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/run/tl_metrics.h"
#include "trainer/step/tl_optim.h"
#include "tests/lib/tl_check.h"

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

static void test_json_num_and_eta(void) {
    char b[48], eta[32];
    CHECK(!strcmp(tl_json_num(b, "%.6f", 1.5), "1.500000"));
    CHECK(!strcmp(tl_json_num(b, "%.6f", NAN), "null"));
    CHECK(!strcmp(tl_json_num(b, "%.1f", -INFINITY), "null"));
    tl_format_eta(eta, sizeof eta, 65.4);
    CHECK(!strcmp(eta, "1m05s"), "eta %s", eta);
    tl_format_eta(eta, sizeof eta, 3725);
    CHECK(!strcmp(eta, "1h02m"), "eta %s", eta);
    tl_format_eta(eta, sizeof eta, NAN);
    CHECK(!strcmp(eta, "0m00s"), "eta %s", eta);
    tl_format_eta(eta, sizeof eta, -3);
    CHECK(!strcmp(eta, "0m00s"), "eta %s", eta);
}

static void test_records_and_resume(const char *dir) {
    tl_error err = {0};
    tl_metrics M = {0};
    CHECK_OK(tl_metrics_open(&M, dir, -1, &err), err);
    tl_metrics_start(&M, 0, 4);
    FILE *out = tmpfile();
    tl_ui ui = {.out = out, .log = out, .is_tty = 0, .quiet = 0};
    for (int64_t s = 1; s <= 3; s++) {
        tl_step_record r = {.done_steps = s, .loss = s == 2 ? NAN : 0.5, .lr = 1e-4, .grad_norm = 2.0,
                            .tokens_per_s = 100.0, .tokens = 64, .truncated = 0, .adapters = 3,
                            .rss_mib = s == 3 ? NAN : 512.25};
        tl_metrics_step(&M, &ui, &r, M.t0 + (double)s);
    }
    tl_metrics_eval_sft(&M, 3, 1.25, 2.5, 99);
    tl_metrics_close(&M);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    const char *text = slurp(path);
    CHECK(text != NULL);
    if (!text) return;
    CHECK(strstr(text, "{\"step\": 1, \"loss\": 0.500000, \"lr\": 0.0001, \"grad_norm\": 2.000000, \"tokens\": 64, "
                       "\"tokens_per_s\": 100.0, \"elapsed_s\": 1.000, \"adapters\": 3, \"truncated\": 0, \"rss_mib\": 512.2}\n") == text,
          "first record: %s", text);
    CHECK(strstr(text, "{\"step\": 2, \"loss\": null,") != NULL, "a NaN loss is null: %s", text);
    CHECK(strstr(text, "\"truncated\": 0, \"rss_mib\": null}\n") != NULL, "an unknown rss is null: %s", text);
    CHECK(!strstr(text, "\"adapter\""), "no sample, no adapter records: %s", text);
    CHECK(strstr(text, "{\"step\": 3, \"eval_loss\": 1.250000, \"eval_base_loss\": 2.500000, \"eval_tokens\": 99}\n"),
          "eval record: %s", text);
    /* the progress lines (not a terminal): one per log step, with the ETA of the remaining steps */
    rewind(out);
    char line[256] = "";
    CHECK(fgets(line, sizeof line, out) != NULL);
    CHECK(!strcmp(line, "step 1/4 loss 0.5000 lr 1.000e-04 grad_norm 2.0000 tokens/s 100 eta 0m03s\n"), "line %s",
          line);
    fclose(out);

    /* resume at step 1: the records of steps 2 and 3 go, the file is appended to */
    CHECK_OK(tl_metrics_open(&M, dir, 1, &err), err);
    tl_metrics_close(&M);
    text = slurp(path);
    CHECK(text && strstr(text, "\"step\": 1,") && !strstr(text, "\"step\": 2,") && !strstr(text, "\"step\": 3,"),
          "after resume at 1: %s", text ? text : "(none)");
    unlink(path);
}

/* brute force: the k names of smallest (hash, name), duplicates once */
static int in_bottom_k(char *const *names, int n, const char *name) {
    uint64_t h = tl_metrics_name_hash(name);
    int below = 0;
    for (int i = 0; i < n; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++) dup |= !strcmp(names[j], names[i]);
        if (dup) continue;
        uint64_t g = tl_metrics_name_hash(names[i]);
        below += g < h || (g == h && strcmp(names[i], name) < 0);
    }
    return below < TL_METRICS_SAMPLE;
}

static void test_sample(void) {
    enum { N = 600 };
    static char store[N][24];
    char *names[N], *rev[N];
    for (int i = 0; i < N; i++) {
        snprintf(store[i], sizeof store[i], "user%04d", i % 500); /* 100 duplicates */
        names[i] = store[i], rev[N - 1 - i] = store[i];
    }
    tl_error err = {0};
    tl_metrics A = {0}, B = {0};
    CHECK_OK(tl_metrics_sample_init(&A, names, N, &err), err);
    CHECK_OK(tl_metrics_sample_init(&B, rev, N, &err), err); /* the order of the adapters does not matter */
    CHECK(A.n_sample == TL_METRICS_SAMPLE && B.n_sample == TL_METRICS_SAMPLE, "%d %d", A.n_sample, B.n_sample);
    int members = 0;
    for (int i = 0; i < 500; i++) {
        int in = tl_metrics_sample_index(&A, store[i]) >= 0;
        members += in;
        CHECK(in == in_bottom_k(names, N, store[i]), "%s: in sample %d", store[i], in);
    }
    CHECK(members == TL_METRICS_SAMPLE, "%d members", members);
    for (int j = 0; j < A.n_sample; j++) {
        CHECK(!strcmp(A.sample_name[j], B.sample_name[j]), "%d: %s vs %s", j, A.sample_name[j], B.sample_name[j]);
        CHECK(tl_metrics_sample_index(&A, A.sample_name[j]) == j);
        CHECK(j == 0 || A.sample_hash[j - 1] <= A.sample_hash[j]);
    }
    CHECK(tl_metrics_sample_index(&A, "nobody") == -1);
    /* fewer adapters than the sample: every one of them, once */
    char *few[3] = {store[1], store[2], store[1]};
    CHECK_OK(tl_metrics_sample_init(&A, few, 3, &err), err);
    CHECK(A.n_sample == 2 && tl_metrics_sample_index(&A, store[1]) >= 0 && tl_metrics_sample_index(&A, store[2]) >= 0);
    tl_metrics_close(&A);
    tl_metrics_close(&B);
    CHECK(A.n_sample == 0);
    /* the hash is fixed: a change would move every run's sample */
    /* the hash is fixed (an independent Python FNV-1a + murmur3 finalizer gave these): a change would move every
     * run's sample */
    CHECK(tl_metrics_name_hash("") == 0xefd01f60ba992926ULL);
    CHECK(tl_metrics_name_hash("user0001") == 0xb1d21e04216455bbULL);
    CHECK(tl_metrics_name_hash("\xE6\x97\xA5\xE6\x9C\xAC") == 0x1230c55089fe4e43ULL);
    double rss = tl_metrics_rss_mib();
    CHECK(isfinite(rss) && rss > 0.1 && rss < 1e6, "rss %f MiB", rss);
}

/* adapter records: written for the sampled adapters that trained, names escaped as JSON; a resume drops them with
 * their step, however long their lines */
static void test_adapter_records(const char *dir) {
    tl_error err = {0};
    tl_metrics M = {0};
    char longname[20000];
    memset(longname, 'y', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    char *names[4] = {"a\"b\\c\n<d>", "plain", longname, "other"};
    CHECK_OK(tl_metrics_open(&M, dir, -1, &err), err);
    CHECK_OK(tl_metrics_sample_init(&M, names, 4, &err), err);
    CHECK(M.n_sample == 4);
    tl_metrics_start(&M, 0, 3);
    FILE *out = tmpfile();
    tl_ui ui = {.out = out, .log = out, .is_tty = 0, .quiet = 1};
    for (int64_t s = 1; s <= 3; s++) {
        double loss[TL_METRICS_SAMPLE];
        uint8_t trained[TL_METRICS_SAMPLE] = {0};
        for (int j = 0; j < M.n_sample; j++) {
            int which = strcmp(M.sample_name[j], "other") == 0 ? 3 : strcmp(M.sample_name[j], "plain") == 0 ? 1
                        : M.sample_name[j][0] == 'a' ? 0 : 2;
            loss[j] = which == 0 && s == 2 ? NAN : 1.0 + which + 0.125 * (double)s;
            trained[j] = which != 3 || s == 1; /* "other" trains only in step 1 */
        }
        tl_step_record r = {.done_steps = s, .loss = 1, .lr = 1e-4, .grad_norm = 1, .tokens_per_s = 1, .tokens = 1,
                            .adapters = 4, .rss_mib = 100, .sample_loss = loss, .sample_trained = trained};
        tl_metrics_step(&M, &ui, &r, M.t0 + (double)s);
    }
    tl_metrics_close(&M);
    fclose(out);
    char path[512];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    const char *text = slurp(path);
    CHECK(text != NULL);
    if (!text) return;
    CHECK(strstr(text, "{\"step\": 1, \"adapter\": \"a\\\"b\\\\c\\u000a<d>\", \"adapter_loss\": 1.125000}\n"),
          "escaped name: %.300s", text);
    CHECK(strstr(text, "{\"step\": 2, \"adapter\": \"a\\\"b\\\\c\\u000a<d>\", \"adapter_loss\": null}\n"),
          "a NaN adapter loss is null");
    CHECK(strstr(text, "{\"step\": 3, \"adapter\": \"plain\", \"adapter_loss\": 2.375000}\n"), "plain");
    CHECK(strstr(text, "{\"step\": 1, \"adapter\": \"other\", \"adapter_loss\": 4.125000}\n"), "other, step 1");
    CHECK(!strstr(text, "{\"step\": 2, \"adapter\": \"other\""), "other did not train in step 2");
    int lines = 0;
    for (const char *c = text; *c; c++) lines += *c == '\n';
    CHECK(lines == 3 + 4 + 3 + 3, "%d lines", lines); /* 3 step records, 4 + 3 + 3 adapter records */
    /* the step record comes first, so a reader of the first line still gets a step record */
    CHECK(!strncmp(text, "{\"step\": 1, \"loss\":", 19));
    /* resume at step 2: step 3's records go, the 20 KB lines of steps 1 and 2 stay whole */
    CHECK_OK(tl_metrics_open(&M, dir, 2, &err), err);
    tl_metrics_close(&M);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL);
    int n = 0, bad = 0, longs = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while (f && (len = getline(&line, &cap, f)) > 0) {
        n++;
        bad += strncmp(line, "{\"step\": ", 9) != 0 || line[len - 1] != '\n' || atoi(line + 9) > 2;
        longs += len > 20000;
    }
    free(line);
    if (f) fclose(f);
    CHECK(n == 3 + 4 + 2 && !bad && longs == 2, "after resume at 2: %d lines, %d bad, %d long", n, bad, longs);
    unlink(path);
}

static void test_optim_opts_and_choices(void) {
    tl_config c;
    tl_config_defaults(&c);
    c.lr = 3e-4, c.warmup_steps = 7, c.grad_clip = 0.5, c.beta1 = 0.8, c.beta2 = 0.95, c.adam_eps = 1e-6;
    c.weight_decay = 0.01, c.schedule = TL_SCHEDULE_LINEAR;
    tl_optim_opts o = tl_optim_opts_of(&c);
    CHECK(o.lr == c.lr && o.warmup_steps == 7 && o.grad_clip == 0.5 && o.beta1 == 0.8 && o.beta2 == 0.95 &&
          o.adam_eps == 1e-6 && o.weight_decay == 0.01 && o.schedule == TL_SCHEDULE_LINEAR);
    CHECK(!strcmp(tl_task_type_names[TL_TASK_REWARD], "reward"));
    CHECK(!strcmp(tl_task_loss_names[TL_LOSS_SIMPO], "simpo"));
    CHECK(!strcmp(tl_dist_strategy_names[TL_STRATEGY_DATA_PARALLEL], "data_parallel"));
    CHECK(!strcmp(tl_adapter_key_names[TL_KEY_GLOBAL], "global"));
    CHECK(!strcmp(tl_backend_choice_names[TL_BACKEND_CUDA], "cuda"));
    CHECK(!strcmp(tl_schedule_names[TL_SCHEDULE_COSINE], "cosine"));
}

int main(void) {
    char dir[] = "/tmp/tl_test_metrics.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_json_num_and_eta();
    test_records_and_resume(dir);
    test_sample();
    test_adapter_records(dir);
    test_optim_opts_and_choices();
    rmdir(dir);
    return tl_check_done("test_metrics");
}
