/* Schedules against HF transformers' formulas, and the per-adapter optimizer step: clipping, bias correction
 * and step counts of one adapter must not depend on another adapter's gradients. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/tl_backend.h"
#include "trainer/step/tl_optim.h"
#include "tests/lib/tl_check.h"


static void test_schedules(void) {
    tl_config c;
    tl_config_defaults(&c);
    c.lr = 2e-3;
    c.warmup_steps = 10;
    int64_t total = 110;
    const char *names[] = {"constant", "linear", "cosine"};
    for (int k = 0; k < 3; k++) {
        c.schedule = (tl_schedule)k; /* names[k] */
        tl_optim_opts o = tl_optim_opts_of(&c);
        for (int64_t s = 0; s <= total; s++) {
            double want;
            if (s < 10) {
                want = c.lr * (double)s / 10.0;
            } else if (k == 0) {
                want = c.lr;
            } else if (k == 1) {
                want = c.lr * fmax(0.0, (double)(total - s) / 100.0);
            } else {
                double progress = (double)(s - 10) / 100.0;
                want = c.lr * fmax(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
            }
            double got = tl_schedule_lr(&o, s, total);
            CHECK(fabs(got - want) <= 1e-15 + 1e-12 * fabs(want), "%s step %lld: %.17g vs %.17g", names[k],
                  (long long)s, got, want);
        }
    }
    c.warmup_steps = 0;
    c.schedule = TL_SCHEDULE_COSINE;
    tl_optim_opts o = tl_optim_opts_of(&c);
    CHECK(tl_schedule_lr(&o, 0, 50) == c.lr, "cosine starts at lr without warmup");
}

/* Two adapters; adapter 1's gradient is huge. Adapter 0's update must equal the update it gets alone. */
static void test_isolated_step(void) {
    tl_backend *be;
    tl_error err = {0};
    if (tl_backend_cpu_create(1, &be, &err)) {
        fprintf(stderr, "FAIL: cpu backend: %s\n", err.msg);
        g_fail++;
        return;
    }
    tl_config c;
    tl_config_defaults(&c);
    c.lr = 1e-2, c.grad_clip = 1.0, c.weight_decay = 0.01;
    c.schedule = TL_SCHEDULE_CONSTANT;
    tl_optim_opts o = tl_optim_opts_of(&c);
    enum { P = 37 };
    char n0[] = "a", n1[] = "b";
    char *names[] = {n0, n1};
    float results[2][P];
    for (int run = 0; run < 2; run++) {
        tl_lora_pool p;
        memset(&p, 0, sizeof p);
        p.n_slots = 2, p.P = P, p.names = names;
        int64_t steps[2] = {3, 0};
        p.steps = steps;
        float params[2 * P], grads[2 * P], m[2 * P], v[2 * P];
        srand(7);
        for (int i = 0; i < 2 * P; i++) {
            params[i] = (float)rand() / (float)RAND_MAX - 0.5f;
            grads[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * (i >= P ? 1000.0f : 1.0f);
            m[i] = 0.01f * ((float)rand() / (float)RAND_MAX - 0.5f);
            v[i] = 0.001f * (float)rand() / (float)RAND_MAX;
        }
        p.params = params, p.grads = grads, p.m = m, p.v = v;
        int32_t active_both[2] = {0, 1}, active_one[1] = {0};
        int64_t total[2] = {10, 10};
        float gn[2], lr[2];
        tl_adam_slot hs[2];
        tl_status s = tl_optim_step(&p, be, &o, run ? active_one : active_both, run ? 1 : 2, total, gn, lr, hs, &err);
        CHECK(s == TL_OK, "optim step: %s", err.msg);
        memcpy(results[run], params, sizeof results[run]);
        CHECK(steps[0] == 4, "adapter 0 step count %lld", (long long)steps[0]);
        CHECK(steps[1] == (run ? 0 : 1), "adapter 1 step count %lld in run %d", (long long)steps[1], run);
        if (run == 0) CHECK(gn[1] > 100.0f && gn[0] < 10.0f, "norms %g %g", gn[0], gn[1]);
    }
    for (int i = 0; i < P; i++)
        CHECK(results[0][i] == results[1][i], "param %d of adapter 0 depends on adapter 1: %.9g vs %.9g", i,
              results[0][i], results[1][i]);
    be->destroy(be);
}

int main(void) {
    test_schedules();
    test_isolated_step();
    return tl_check_done("test_optim");
}
