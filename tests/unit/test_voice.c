/* test_voice: only trainer/cli/ talks to the user. The library functions behind `tailor generate`, `report` and
 * `submit` (tl_generate, tl_report_write, tl_submit) return tl_status with the message in tl_error and write
 * nothing to stdout or stderr themselves, on success and on failure; what they produce goes to the stream or
 * result the caller gives. Also the named slot sentinels (data/tl_batcher.h) keep their contract values: the base
 * model is a slot < 0 (kernels/tl_backend.h), and -2 is what the eval iterators have always taken for "own". */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data/tl_batcher.h"
#include "tests/lib/tl_check.h"
#include "trainer/dist/tl_submit.h"
#include "trainer/eval/tl_generate.h"
#include "trainer/eval/tl_report.h"

/* Captures fds 1 and 2 into files while the library runs; quiet_end says how many bytes each received. */
typedef struct {
    int saved[2];
    char path[2][64];
} capture;

static void quiet_begin(capture *c) {
    fflush(stdout), fflush(stderr);
    for (int i = 0; i < 2; i++) {
        snprintf(c->path[i], sizeof c->path[i], "/tmp/test_voice_%d_%ld", i + 1, (long)getpid());
        int fd = open(c->path[i], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        c->saved[i] = dup(i + 1);
        if (fd < 0 || c->saved[i] < 0 || dup2(fd, i + 1) < 0) {
            fprintf(stderr, "test_voice: cannot redirect fd %d\n", i + 1);
            exit(1);
        }
        close(fd);
    }
}

static void quiet_end(capture *c, const char *what) {
    fflush(stdout), fflush(stderr);
    for (int i = 0; i < 2; i++) {
        dup2(c->saved[i], i + 1);
        close(c->saved[i]);
        struct stat st;
        long n = stat(c->path[i], &st) == 0 ? (long)st.st_size : -1;
        CHECK(n == 0, "%s: the library wrote %ld byte(s) to %s", what, n, i ? "stderr" : "stdout");
        unlink(c->path[i]);
    }
}

static void test_submit(void) {
    char *ov[] = {(char *)"model.path=/models/m", (char *)"cluster.nodes=2", (char *)"cluster.gpus_per_node=4",
                  (char *)"run.output_dir=/nonexistent/test_voice/run"};
    tl_submit_opts o = {.config = NULL, .overrides = ov, .n_overrides = 4, .dry_run = 1};
    tl_submit_result r;
    tl_error err = {0};
    capture c;
    quiet_begin(&c);
    tl_status s = tl_submit(&o, &r, &err);
    quiet_end(&c, "tl_submit --dry-run");
    CHECK_OK(s, err);
    CHECK(s != TL_OK || (r.script && !strncmp(r.script, "#!/bin/bash\n", 12)), "dry run: no script returned");
    CHECK(s != TL_OK || strstr(r.script, "#SBATCH --nodes=2\n"), "dry run: the script lacks --nodes=2");
    free(r.script);

    char *bad[] = {(char *)"model.path=/models/m", (char *)"cluster.time=2h"};
    o = (tl_submit_opts){.overrides = bad, .n_overrides = 2, .dry_run = 1};
    quiet_begin(&c);
    s = tl_submit(&o, &r, &err);
    quiet_end(&c, "tl_submit of a bad cluster.time");
    CHECK(s == TL_ERR_INPUT && strstr(err.msg, "cluster.time"), "bad cluster.time: status %d, '%s'", (int)s,
          err.msg);
    CHECK(r.script == NULL, "a failed submit returned a script");

    /* not a dry run: the preflight refuses (data.train unset) before anything is written or run */
    o = (tl_submit_opts){.overrides = ov, .n_overrides = 4, .dry_run = 0};
    quiet_begin(&c);
    s = tl_submit(&o, &r, &err);
    quiet_end(&c, "tl_submit without data.train");
    CHECK(s == TL_ERR_INPUT && strstr(err.msg, "data.train"), "no data.train: status %d, '%s'", (int)s, err.msg);
    struct stat st;
    CHECK(stat("/nonexistent/test_voice", &st) != 0, "a refused submit created its run directory");
}

static void test_report(void) {
    tl_error err = {0};
    capture c;
    quiet_begin(&c);
    tl_status s = tl_report_write("/nonexistent/test_voice_run", "/nonexistent/test_voice.html", &err);
    quiet_end(&c, "tl_report_write of a missing run");
    CHECK(s == TL_ERR_INPUT && strstr(err.msg, "/nonexistent/test_voice_run"), "missing run: status %d, '%s'",
          (int)s, err.msg);
}

static void test_generate(void) {
    FILE *out = tmpfile();
    if (!out) {
        CHECK(0, "tmpfile failed");
        return;
    }
    tl_generate_opts o = {.model = "/nonexistent/test_voice_model", .base = 1, .prompt = "hello",
                          .max_new_tokens = 4, .top_p = 1.0f};
    tl_error err = {0};
    capture c;
    quiet_begin(&c);
    tl_status s = tl_generate(&o, out, &err);
    quiet_end(&c, "tl_generate with a missing model");
    CHECK(s != TL_OK && err.msg[0], "missing model: status %d, no message", (int)s);
    CHECK(ftell(out) == 0, "a failed generate wrote %ld byte(s) of answer", ftell(out));
    fclose(out);
}

static void test_slots(void) {
    CHECK(TL_SLOT_BASE == -1 && TL_SLOT_OWN == -2, "slot sentinels %d, %d", (int)TL_SLOT_BASE, (int)TL_SLOT_OWN);
    CHECK(TL_SLOT_BASE < 0 && TL_SLOT_OWN < 0 && TL_SLOT_OWN != TL_SLOT_BASE, "sentinels must be distinct and < 0");
}

int main(void) {
    test_submit();
    test_report();
    test_generate();
    test_slots();
    return tl_check_done("test_voice");
}
