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
    static char buf[8192];
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
                            .tokens_per_s = 100.0, .tokens = 64, .truncated = 0, .adapters = 3};
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
                       "\"tokens_per_s\": 100.0, \"elapsed_s\": 1.000, \"adapters\": 3, \"truncated\": 0}\n") == text,
          "first record: %s", text);
    CHECK(strstr(text, "{\"step\": 2, \"loss\": null,") != NULL, "a NaN loss is null: %s", text);
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
    test_optim_opts_and_choices();
    rmdir(dir);
    return tl_check_done("test_metrics");
}
