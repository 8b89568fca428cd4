/* Checkpoints of a hand-made adapter pool: a save/load round trip restores every bit (params, Adam moments,
 * step counts, cursors, global step, config, names), keep-N pruning, tl_checkpoint_latest ignoring temporary and
 * incomplete directories, a failed save leaving no trace, and mismatch errors on load. Also the file-system
 * helpers the checkpoint relies on (a recursive remove that must not follow links out of the tree).
 *
 * The backend is a test double whose "device memory" is host memory (upload/download are memcpy); it counts
 * transfers and can be told to report a failure, as a real backend's status() does. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "data/tl_safetensors.h"
#include "trainer/run/tl_checkpoint.h"
#include "data/tl_io.h"

#include "tests/lib/tl_check.h"
#include "tests/lib/tl_test_host.h"
static float rng_float(void) {
    uint64_t r = rng_next();
    uint32_t bits;
    float f;
    switch (r % 64) { /* values whose bits a lossy path would change */
    case 0: return -0.0f;
    case 1: return 1e-40f; /* subnormal */
    case 2:
        bits = 0x7f7fffffu; /* FLT_MAX (a NaN is refused at load: the state must be finite) */
        memcpy(&f, &bits, 4);
        return f;
    default: return (float)((double)(r >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
}

/* ---- a hand-made pool ---- */

static const int DIM_IN[TL_N_TARGETS] = {12, 12, 12, 12, 12, 12, 20};
static const int DIM_OUT[TL_N_TARGETS] = {12, 4, 4, 12, 20, 20, 12};

static int64_t step_count(void) { return (int64_t)(rng_next() >> 22); /* beyond float precision */ }

static void make_pool(tl_lora_pool *p, tl_backend *be, int n_slots, char *const *names, int rank, int n_layers,
                      uint32_t targets, const int *in) {
    host_make_pool(p, be, n_slots, names, rank, n_layers, targets, 8.0f, 0, 0.0f, in, DIM_OUT, rng_float, step_count);
}

static void poison(tl_lora_pool *p) {
    size_t n = (size_t)p->n_slots * p->P;
    for (size_t i = 0; i < n; i++) p->params[i] = NAN, p->m[i] = NAN, p->v[i] = NAN;
    for (int s = 0; s < p->n_slots; s++) p->steps[s] = -1;
}

static int same_state(const tl_lora_pool *a, const tl_lora_pool *b) {
    size_t n = (size_t)a->n_slots * a->P * sizeof(float);
    return a->n_slots == b->n_slots && a->P == b->P && !memcmp(a->params, b->params, n) &&
           !memcmp(a->m, b->m, n) && !memcmp(a->v, b->v, n) &&
           !memcmp(a->steps, b->steps, (size_t)a->n_slots * sizeof(int64_t));
}

/* ---- helpers ---- */

/* The entries of dir, sorted, joined by spaces ("" when empty, "(missing)" when dir cannot be listed). */
static void listing(const char *dir, char *out, size_t cap) {
    char *names[256];
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(out, cap, "(missing)");
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) names[n++] = strdup(e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            if (strcmp(names[j], names[i]) < 0) {
                char *x = names[i];
                names[i] = names[j], names[j] = x;
            }
    out[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", i ? " " : "", names[i]);
        free(names[i]);
    }
}

static void make_cfg(tl_config *cfg, const tl_lora_pool *p) {
    tl_config_defaults(cfg);
    snprintf(cfg->run_name, sizeof cfg->run_name, "ckpt test");
    snprintf(cfg->model_path, sizeof cfg->model_path, "models/tiny");
    snprintf(cfg->data_train, sizeof cfg->data_train, "data/train.h5");
    cfg->adapter_rank = p->rank;
    cfg->adapter_alpha = p->alpha;
    cfg->adapter_targets = p->targets;
    cfg->steps = 1234;
    cfg->lr = 3e-4;
    cfg->seed = 77;
}

/* ---- file-system helpers ---- */

static void test_fsutil(const char *root) {
    tl_error err = {0};
    char a[TL_PATH_MAX], b[TL_PATH_MAX], c[TL_PATH_MAX], l[TL_PATH_MAX];
    struct {
        const char *in, *parent;
    } pc[] = {{"a/b", "a"}, {"a", "."}, {"/a", "/"}, {"a/b/", "a"}, {"a//b", "a"}, {"/", "/"}, {"x/y/z//", "x/y"}};
    for (size_t i = 0; i < sizeof pc / sizeof pc[0]; i++) {
        CHECK(tl_path_parent(pc[i].in, a, sizeof a, &err) == TL_OK && !strcmp(a, pc[i].parent),
              "parent(%s) = %s, expected %s", pc[i].in, a, pc[i].parent);
    }
    CHECK(tl_path_join(a, sizeof a, "x/", "y", &err) == TL_OK && !strcmp(a, "x/y"), "join: %s", a);
    CHECK(tl_path_join(a, sizeof a, "x", "y", &err) == TL_OK && !strcmp(a, "x/y"), "join: %s", a);
    char tiny[4];
    CHECK(tl_path_join(tiny, sizeof tiny, "ab", "cd", &err) == TL_ERR_RUNTIME, "join must not truncate");

    xpath(a, sizeof a, "%s/fs/one/two/three", root);
    CHECK(tl_mkdir_p(a, &err) == TL_OK && tl_is_dir(a), "mkdir_p: %s", err.msg);
    CHECK(tl_mkdir_p(a, &err) == TL_OK, "mkdir_p on an existing dir: %s", err.msg);
    xpath(b, sizeof b, "%s/file", a);
    CHECK(tl_write_file_atomic(b, "hello", 5, &err) == TL_OK && tl_is_file(b), "write: %s", err.msg);
    xpath(c, sizeof c, "%s/sub", b);
    CHECK(tl_mkdir_p(c, &err) == TL_ERR_RUNTIME, "mkdir_p through a file must fail");
    char *text = NULL;
    size_t n = 0;
    CHECK(tl_read_file(b, 100, &text, &n, &err) == TL_OK && n == 5 && !strcmp(text, "hello"), "read_file");
    free(text);
    CHECK(tl_read_file(b, 4, &text, &n, &err) == TL_ERR_INPUT && !text, "read_file over max_bytes");

    /* remove_tree must unlink links, never follow them */
    xpath(a, sizeof a, "%s/fs/outside", root);
    CHECK(tl_mkdir_p(a, &err) == TL_OK, "mkdir: %s", err.msg);
    xpath(b, sizeof b, "%s/precious", a);
    CHECK(tl_write_file_atomic(b, "x", 1, &err) == TL_OK, "write: %s", err.msg);
    xpath(c, sizeof c, "%s/fs/tree/d1/d2", root);
    CHECK(tl_mkdir_p(c, &err) == TL_OK, "mkdir: %s", err.msg);
    xpath(l, sizeof l, "%s/link-to-dir", c);
    CHECK(symlink(a, l) == 0, "symlink");
    xpath(l, sizeof l, "%s/link-to-file", c);
    CHECK(symlink(b, l) == 0, "symlink");
    for (int i = 0; i < 50; i++) { /* enough entries to notice a skipped one */
        xpath(l, sizeof l, "%s/f%d", c, i);
        CHECK(tl_write_file_atomic(l, "y", 1, &err) == TL_OK, "write: %s", err.msg);
    }
    xpath(c, sizeof c, "%s/fs/tree", root);
    CHECK(tl_remove_tree(c, &err) == TL_OK, "remove_tree: %s", err.msg);
    CHECK(!tl_path_exists(c), "tree still there");
    CHECK(tl_is_file(b), "remove_tree followed a symlink out of the tree");
    CHECK(tl_remove_tree(c, &err) == TL_OK, "removing a missing path is fine");

    /* replace_dir: the new tree takes the old one's place, nothing else remains */
    xpath(a, sizeof a, "%s/rep/final", root);
    xpath(b, sizeof b, "%s/rep/.tmp-final", root);
    xpath(c, sizeof c, "%s/old.txt", a);
    CHECK(tl_mkdir_p(a, &err) == TL_OK && tl_write_file_atomic(c, "o", 1, &err) == TL_OK, "setup: %s", err.msg);
    xpath(l, sizeof l, "%s/new.txt", b);
    CHECK(tl_mkdir_p(b, &err) == TL_OK && tl_write_file_atomic(l, "n", 1, &err) == TL_OK, "setup: %s", err.msg);
    CHECK(tl_replace_dir(b, a, &err) == TL_OK, "replace_dir: %s", err.msg);
    char ls[1024];
    listing(a, ls, sizeof ls);
    CHECK(!strcmp(ls, "new.txt"), "replaced dir holds: %s", ls);
    xpath(c, sizeof c, "%s/rep", root);
    listing(c, ls, sizeof ls);
    CHECK(!strcmp(ls, "final"), "replace_dir left: %s", ls);
    xpath(c, sizeof c, "%s/fs", root);
    CHECK(tl_remove_tree(c, &err) == TL_OK, "cleanup: %s", err.msg);
    xpath(c, sizeof c, "%s/rep", root);
    CHECK(tl_remove_tree(c, &err) == TL_OK, "cleanup: %s", err.msg);
}

/* ---- checkpoints ---- */

static char *NAMES[4] = {"alice", "bob", "\xe5\x90\x8d\xe5\x89\x8d", "x/y \"q\""};
static const uint32_t TARGETS = (1u << TL_T_Q) | (1u << TL_T_K) | (1u << TL_T_V) | (1u << TL_T_O) | (1u << TL_T_UP);

/* The four-adapter pool of NAMES with random state and cursors, saved as a checkpoint of run at step gstep. */
static void saved_pool(const char *run, tl_backend *be, tl_lora_pool *p, tl_config *cfg, tl_cursor cur[4],
                       int64_t gstep) {
    make_pool(p, be, 4, NAMES, 4, 2, TARGETS, DIM_IN);
    make_cfg(cfg, p);
    for (int i = 0; i < 4; i++) cur[i].epoch = (int64_t)(rng_next() >> 30), cur[i].pos = (int64_t)(rng_next() >> 20);
    tl_error err = {0};
    CHECK(tl_checkpoint_save(run, cfg, p, be, gstep, cur, 2, &err) == TL_OK, "save: %s", err.msg);
}

static void test_round_trip(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p, q;
    tl_config cfg;
    tl_cursor cur[4], got[4];
    tl_error err = {0};
    int64_t gstep = 100 + (int64_t)(rng_next() % 1000);
    saved_pool(run, &be, &p, &cfg, cur, gstep);
    CHECK(hc.downloads >= 3, "save must read the state through the backend");
    char dir[TL_PATH_MAX], ls[1024], latest[TL_PATH_MAX];
    xpath(dir, sizeof dir, "%s/checkpoints/step-%08lld", run, (long long)gstep);
    listing(dir, ls, sizeof ls);
    CHECK(!strcmp(ls, "COMPLETE config.yaml state.safetensors"), "checkpoint holds: %s", ls);
    xpath(latest, sizeof latest, "%s/checkpoints", run);
    listing(latest, ls, sizeof ls);
    char want[128];
    snprintf(want, sizeof want, "step-%08lld", (long long)gstep);
    CHECK(!strcmp(ls, want), "checkpoints/ holds: %s", ls);
    int found = 0;
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && found && !strcmp(latest, dir),
          "latest: %s (found %d)", latest, found);

    /* the state file is ordinary safetensors with the documented metadata */
    char sp[TL_PATH_MAX + 32];
    xpath(sp, sizeof sp, "%s/state.safetensors", dir);
    tl_st_file *f = NULL;
    CHECK(tl_st_open(sp, &f, &err) == TL_OK, "open state: %s", err.msg);
    if (f) {
        const char *m = tl_st_metadata(f, "format");
        CHECK(m && !strcmp(m, "tailor-checkpoint-1"), "format");
        char num[32];
        snprintf(num, sizeof num, "%zu", p.P);
        m = tl_st_metadata(f, "P");
        CHECK(m && !strcmp(m, num), "P metadata %s vs %s", m ? m : "-", num);
        m = tl_st_metadata(f, "rank");
        CHECK(m && !strcmp(m, "4"), "rank metadata");
        m = tl_st_metadata(f, "targets");
        cJSON *t = m ? cJSON_Parse(m) : NULL;
        CHECK(cJSON_IsArray(t) && cJSON_GetArraySize(t) == 5 &&
                  !strcmp(cJSON_GetArrayItem(t, 4)->valuestring, "up_proj"),
              "targets metadata %s", m ? m : "-");
        cJSON_Delete(t);
        m = tl_st_metadata(f, "adapter_names");
        t = m ? cJSON_Parse(m) : NULL;
        CHECK(cJSON_IsArray(t) && cJSON_GetArraySize(t) == 4, "adapter_names metadata %s", m ? m : "-");
        for (int i = 0; cJSON_IsArray(t) && i < 4; i++)
            CHECK(!strcmp(cJSON_GetArrayItem(t, i)->valuestring, NAMES[i]), "adapter_names[%d]", i);
        cJSON_Delete(t);
        const tl_st_tensor *ten = tl_st_find(f, "params");
        CHECK(ten && ten->dtype == TL_DT_F32 && ten->ndim == 2 && ten->shape[0] == 4 && ten->shape[1] == (int64_t)p.P,
              "params tensor");
        ten = tl_st_find(f, "cursors");
        CHECK(ten && ten->dtype == TL_DT_I64 && ten->ndim == 2 && ten->shape[0] == 4 && ten->shape[1] == 2,
              "cursors tensor");
        int64_t raw[8];
        CHECK(tl_st_read_bytes(f, "cursors", raw, sizeof raw, &err) == TL_OK && raw[2] == cur[1].epoch &&
                  raw[3] == cur[1].pos,
              "cursors bytes (little-endian I64, [slot][epoch,pos])");
        tl_st_close(f);
    }

    /* load into a fresh, poisoned pool: every bit comes back */
    make_pool(&q, &be, 4, NAMES, 4, 2, TARGETS, DIM_IN);
    poison(&q);
    memset(got, 0xff, sizeof got);
    int64_t gs = -5;
    long up0 = hc.uploads;
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, got, &err) == TL_OK, "load: %s", err.msg);
    CHECK(hc.uploads >= up0 + 3, "load must write through the backend");
    CHECK(same_state(&p, &q), "loaded state differs from the saved one");
    CHECK(gs == gstep, "global step %lld, expected %lld", (long long)gs, (long long)gstep);
    for (int i = 0; i < 4; i++)
        CHECK(got[i].epoch == cur[i].epoch && got[i].pos == cur[i].pos, "cursor %d", i);
    int64_t gs2 = -1;
    CHECK(tl_checkpoint_read_step(dir, &gs2, &err) == TL_OK && gs2 == gstep, "read_step: %s", err.msg);

    char **names = NULL;
    int n = 0;
    CHECK(tl_checkpoint_read_names(dir, &names, &n, &err) == TL_OK && n == 4, "read_names: %s", err.msg);
    for (int i = 0; i < n && i < 4; i++) CHECK(!strcmp(names[i], NAMES[i]), "name %d: %s", i, names[i]);
    tl_checkpoint_free_names(names, n);

    tl_config back;
    memset(&back, 0, sizeof back);
    CHECK(tl_checkpoint_read_config(dir, &back, &err) == TL_OK, "read_config: %s", err.msg);
    CHECK(!strcmp(back.run_name, cfg.run_name) && !strcmp(back.model_path, cfg.model_path) &&
              back.adapter_rank == cfg.adapter_rank && back.adapter_alpha == cfg.adapter_alpha &&
              back.adapter_targets == cfg.adapter_targets && back.steps == cfg.steps && back.lr == cfg.lr &&
              back.seed == cfg.seed,
          "config read back differs");

    /* NULL cursors are saved as zeros; saving an existing step replaces it */
    free_pool(&p, &be);
    make_pool(&p, &be, 4, NAMES, 4, 2, TARGETS, DIM_IN);
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, gstep, NULL, 2, &err) == TL_OK, "re-save: %s", err.msg);
    poison(&q);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, got, &err) == TL_OK, "load: %s", err.msg);
    CHECK(same_state(&p, &q), "re-saved state not the one loaded");
    CHECK(got[3].epoch == 0 && got[3].pos == 0, "NULL cursors saved as zeros");
    xpath(latest, sizeof latest, "%s/checkpoints", run);
    listing(latest, ls, sizeof ls);
    CHECK(!strcmp(ls, want), "after re-save checkpoints/ holds: %s", ls);

    free_pool(&q, &be);
    free_pool(&p, &be);
}

static void test_keep_and_latest(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p;
    make_pool(&p, &be, 2, NAMES, 2, 1, TARGETS, DIM_IN);
    tl_config cfg;
    make_cfg(&cfg, &p);
    tl_error err = {0};
    char ck[TL_PATH_MAX], ls[2048], path[TL_PATH_MAX], latest[TL_PATH_MAX];
    xpath(ck, sizeof ck, "%s/checkpoints", run);
    int found = 1;
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && !found,
          "no checkpoints dir: found %d (%s)", found, err.msg);

    for (int s = 10; s <= 30; s += 10)
        CHECK(tl_checkpoint_save(run, &cfg, &p, &be, s, NULL, 2, &err) == TL_OK, "save %d: %s", s, err.msg);
    listing(ck, ls, sizeof ls);
    CHECK(!strcmp(ls, "step-00000020 step-00000030"), "keep 2 left: %s", ls);

    /* a step lower than the others: the new one always stays, plus the newest keep-1 others */
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 5, NULL, 2, &err) == TL_OK, "save 5: %s", err.msg);
    listing(ck, ls, sizeof ls);
    CHECK(!strcmp(ls, "step-00000005 step-00000030"), "after saving step 5: %s", ls);
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 40, NULL, 0, &err) == TL_OK, "save 40: %s", err.msg);
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 50, NULL, 0, &err) == TL_OK, "save 50: %s", err.msg);
    listing(ck, ls, sizeof ls);
    CHECK(!strcmp(ls, "step-00000005 step-00000030 step-00000040 step-00000050"), "keep 0 keeps all: %s", ls);

    /* Things latest must ignore: a bigger step without COMPLETE, temporary dirs, names that are not step-N. */
    const char *decoys[] = {"step-99999999", ".tmp-step-100000000-1", ".old-step-00000070-1", "step-1x",
                            "step-", "step-00000080.bak", "step--1"};
    for (size_t i = 0; i < sizeof decoys / sizeof decoys[0]; i++) {
        xpath(path, sizeof path, "%s/%s", ck, decoys[i]);
        CHECK(tl_mkdir_p(path, &err) == TL_OK, "mkdir: %s", err.msg);
        if (i == 0) continue;
        xpath(path, sizeof path, "%s/%s/COMPLETE", ck, decoys[i]);
        CHECK(tl_write_file_atomic(path, "x", 1, &err) == TL_OK, "write: %s", err.msg);
    }
    xpath(path, sizeof path, "%s/step-00000090", ck); /* a file, not a directory */
    CHECK(tl_write_file_atomic(path, "x", 1, &err) == TL_OK, "write: %s", err.msg);
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && found, "latest: %s", err.msg);
    xpath(path, sizeof path, "%s/step-00000050", ck);
    CHECK(!strcmp(latest, path), "latest = %s, expected %s", latest, path);
    xpath(path, sizeof path, "%s/step-99999999", ck);
    int64_t gs;
    tl_cursor cur[2];
    CHECK(tl_checkpoint_load(path, &p, &be, &gs, cur, &err) == TL_ERR_INPUT && strstr(err.msg, "COMPLETE"),
          "loading an incomplete checkpoint: %s", err.msg);

    /* The next save removes leftover temporary dirs (not directories it does not understand). */
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 60, NULL, 3, &err) == TL_OK, "save 60: %s", err.msg);
    listing(ck, ls, sizeof ls);
    CHECK(!strcmp(ls, "step- step--1 step-00000040 step-00000050 step-00000060 step-00000080.bak step-00000090 "
                      "step-1x step-99999999"),
          "after save 60: %s", ls);

    /* A save that fails halfway leaves nothing behind and the older checkpoints intact. */
    hc.fail_after_downloads = hc.downloads + 1;
    err.msg[0] = '\0';
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 70, NULL, 1, &err) == TL_ERR_RUNTIME, "injected failure");
    CHECK(strstr(err.msg, "injected failure") != NULL, "message: %s", err.msg);
    hc.fail_after_downloads = -1;
    char ls2[2048];
    listing(ck, ls2, sizeof ls2);
    CHECK(!strcmp(ls, ls2), "failed save changed checkpoints/: %s", ls2);
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && found, "latest: %s", err.msg);
    xpath(path, sizeof path, "%s/step-00000060", ck);
    CHECK(!strcmp(latest, path), "latest after failed save = %s", latest);
    free_pool(&p, &be);
}

static void test_mismatch(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p;
    make_pool(&p, &be, 3, NAMES, 4, 2, TARGETS, DIM_IN);
    tl_config cfg;
    make_cfg(&cfg, &p);
    tl_error err = {0};
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 3, NULL, 1, &err) == TL_OK, "save: %s", err.msg);
    char dir[TL_PATH_MAX];
    xpath(dir, sizeof dir, "%s/checkpoints/step-00000003", run);

    char *swapped[3] = {NAMES[1], NAMES[0], NAMES[2]};
    int q_in[TL_N_TARGETS];
    memcpy(q_in, DIM_IN, sizeof q_in);
    q_in[TL_T_Q] = 8;
    /* gate_proj has up_proj's shapes, so swapping them keeps P and only the target list differs */
    uint32_t swapped_targets = (TARGETS & ~(1u << TL_T_UP)) | (1u << TL_T_GATE);
    struct {
        int n;
        char **names;
        int rank, layers;
        uint32_t targets;
        const int *in;
        const char *what;
    } bad[] = {
        {3, swapped, 4, 2, TARGETS, DIM_IN, "adapter 0 is 'alice' in the checkpoint, 'bob' in the run"},
        {2, NAMES, 4, 2, TARGETS, DIM_IN, "3 adapters in the checkpoint, 2 in the run"},
        {4, NAMES, 4, 2, TARGETS, DIM_IN, "3 adapters in the checkpoint, 4 in the run"},
        {3, NAMES, 2, 2, TARGETS, DIM_IN, "rank is 4 in the checkpoint, 2 in the run"},
        {3, NAMES, 4, 2, TARGETS, q_in, "P is"},
        {3, NAMES, 4, 3, TARGETS, DIM_IN, "P is"},
        {3, NAMES, 4, 2, swapped_targets, DIM_IN, "targets are"},
    };
    tl_lora_pool q;
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        make_pool(&q, &be, bad[k].n, bad[k].names, bad[k].rank, bad[k].layers, bad[k].targets, bad[k].in);
        if (k == 6) CHECK(q.P == p.P, "target swap must keep P (%zu vs %zu)", q.P, p.P);
        poison(&q);
        tl_cursor cur[4] = {{7, 7}, {7, 7}, {7, 7}, {7, 7}};
        int64_t gs = -9;
        err.msg[0] = '\0';
        CHECK(tl_checkpoint_load(dir, &q, &be, &gs, cur, &err) == TL_ERR_INPUT, "mismatch %zu must be TL_ERR_INPUT",
              k);
        CHECK(strstr(err.msg, bad[k].what) != NULL && strstr(err.msg, dir) != NULL,
              "mismatch %zu: message '%s' lacks '%s' or the checkpoint path", k, err.msg, bad[k].what);
        int untouched = gs == -9 && cur[0].epoch == 7 && q.steps[0] == -1;
        for (size_t i = 0; i < (size_t)q.n_slots * q.P; i++) untouched &= isnan(q.params[i]) != 0;
        CHECK(untouched, "mismatch %zu changed the pool", k);
        free_pool(&q, &be);
    }

    /* A truncated state file is bad input, not a crash. */
    char sp[TL_PATH_MAX + 32];
    xpath(sp, sizeof sp, "%s/state.safetensors", dir);
    struct stat st;
    CHECK(stat(sp, &st) == 0 && truncate(sp, st.st_size / 2) == 0, "truncate");
    make_pool(&q, &be, 3, NAMES, 4, 2, TARGETS, DIM_IN);
    int64_t gs;
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT, "truncated state must be TL_ERR_INPUT");
    free_pool(&q, &be);
    free_pool(&p, &be);
}

/* One rank's share (user_shard): tl_checkpoint_load_rows fills a smaller pool with chosen rows of a checkpoint
 * of the whole run, exactly, reading only those rows; wrong rows or another run's adapters are refused. */
static void test_load_rows(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p, q;
    tl_config cfg;
    tl_cursor cur[4], got[2];
    tl_error err = {0};
    int64_t gstep = 7 + (int64_t)(rng_next() % 100), back = -1;
    saved_pool(run, &be, &p, &cfg, cur, gstep);
    char dir[TL_PATH_MAX];
    xpath(dir, sizeof dir, "%s/checkpoints/step-%08lld", run, (long long)gstep);
    char *mine[2] = {NAMES[1], NAMES[3]};
    int32_t rows[2] = {1, 3};
    make_pool(&q, &be, 2, mine, 4, 2, TARGETS, DIM_IN);
    poison(&q);
    got[0].epoch = got[1].epoch = got[0].pos = got[1].pos = -5;
    CHECK(tl_checkpoint_load_rows(dir, &q, &be, NAMES, 4, rows, &back, got, &err) == TL_OK, "load rows: %s", err.msg);
    int ok = back == gstep;
    for (int a = 0; a < 2; a++) {
        size_t P = p.P, r = (size_t)rows[a];
        ok &= !memcmp(q.params + a * P, p.params + r * P, P * sizeof(float)) &&
              !memcmp(q.m + a * P, p.m + r * P, P * sizeof(float)) && !memcmp(q.v + a * P, p.v + r * P, P * sizeof(float));
        ok &= q.steps[a] == p.steps[r] && got[a].epoch == cur[r].epoch && got[a].pos == cur[r].pos;
    }
    CHECK(ok, "load rows: slots 0 and 1 must hold rows 1 and 3 of the checkpoint exactly");
    int32_t wrong[2] = {2, 3}; /* slot 0 is bob, row 2 is not */
    CHECK(tl_checkpoint_load_rows(dir, &q, &be, NAMES, 4, wrong, &back, got, &err) == TL_ERR_RUNTIME,
          "rows that name other adapters must be refused");
    char *other[4] = {NAMES[1], NAMES[0], NAMES[2], NAMES[3]};
    int32_t r2[2] = {0, 3};
    err = (tl_error){0};
    CHECK(tl_checkpoint_load_rows(dir, &q, &be, other, 4, r2, &back, got, &err) == TL_ERR_INPUT &&
              strstr(err.msg, "in the checkpoint"),
          "another order of the run's adapters must be refused: '%s'", err.msg);
    free_pool(&q, &be);
    free_pool(&p, &be);
}

/* ---- values a tampered or corrupt state file may hold ---- */

/* Overwrites bytes [k, k + n) of tensor `name`'s data in the state file of checkpoint dir. */
static void poke_state(const char *dir, const char *name, uint64_t k, const void *bytes, size_t n) {
    char path[TL_PATH_MAX + 32];
    xpath(path, sizeof path, "%s/state.safetensors", dir);
    tl_error err = {0};
    tl_st_file *f = NULL;
    CHECK(tl_st_open(path, &f, &err) == TL_OK, "open: %s", err.msg);
    const tl_st_tensor *t = f ? tl_st_find(f, name) : NULL;
    uint64_t begin = t ? t->begin : 0;
    if (f) tl_st_close(f);
    FILE *fp = fopen(path, "r+b");
    unsigned char hdr[8] = {0};
    uint64_t hn = 0;
    if (fp && fread(hdr, 1, 8, fp) == 8)
        for (int i = 0; i < 8; i++) hn |= (uint64_t)hdr[i] << (8 * i);
    CHECK(t && fp && hn && fseek(fp, (long)(8 + hn + begin + k), SEEK_SET) == 0 && fwrite(bytes, 1, n, fp) == n,
          "poke %s", name);
    if (fp) fclose(fp);
}

static void test_bad_values(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p, q;
    tl_config cfg;
    tl_cursor cur[4];
    tl_error err = {0};
    saved_pool(run, &be, &p, &cfg, cur, 12);
    char dir[TL_PATH_MAX];
    xpath(dir, sizeof dir, "%s/checkpoints/step-00000012", run);
    make_pool(&q, &be, 4, NAMES, 4, 2, TARGETS, DIM_IN);
    int64_t gs = 0;

    /* integers out of range: refused, never truncated */
    int64_t big = (int64_t)1 << 62, neg = -2, gs0 = 12;
    poke_state(dir, "global_step", 0, &big, 8);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "'global_step'"),
          "global_step 2^62 must be refused: %s", err.msg);
    CHECK(tl_checkpoint_read_step(dir, &gs, &err) == TL_ERR_INPUT, "read_step of 2^62 must be refused");
    poke_state(dir, "global_step", 0, &gs0, 8);
    poke_state(dir, "steps", 8, &big, 8);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "'steps'[1]"),
          "steps 2^62 must be refused: %s", err.msg);
    poke_state(dir, "steps", 8, &gs0, 8);
    poke_state(dir, "cursors", 16, &neg, 8);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "'cursors'[2]"),
          "a negative cursor must be refused: %s", err.msg);
    poke_state(dir, "cursors", 16, &gs0, 8);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_OK && gs == 12, "restored file loads: %s", err.msg);

    /* NaN / Inf in params, m or v: refused naming the tensor and the adapter */
    const char *tn[3] = {"params", "m", "v"};
    for (int k = 0; k < 3; k++) {
        float bad = k == 1 ? INFINITY : NAN, good = 0.5f;
        uint64_t at = ((uint64_t)2 * p.P + 7) * sizeof(float); /* adapter 2, element 7 */
        poke_state(dir, tn[k], at, &bad, 4);
        char want[64];
        snprintf(want, sizeof want, "'%s' [adapter 2, element 7]", tn[k]);
        CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, want),
              "non-finite %s must be refused: %s", tn[k], err.msg);
        int32_t rows[1] = {2};
        tl_lora_pool r;
        char *mine[1] = {NAMES[2]};
        make_pool(&r, &be, 1, mine, 4, 2, TARGETS, DIM_IN);
        CHECK(tl_checkpoint_load_rows(dir, &r, &be, NAMES, 4, rows, &gs, NULL, &err) == TL_ERR_INPUT &&
                  strstr(err.msg, want),
              "non-finite %s must be refused by load_rows: %s", tn[k], err.msg);
        free_pool(&r, &be);
        poke_state(dir, tn[k], at, &good, 4);
    }

    /* a format tag that is not ours: the message quotes it (it used to be read after the file was freed) */
    char path[TL_PATH_MAX + 32];
    xpath(path, sizeof path, "%s/state.safetensors", dir);
    tl_st_writer *wr = tl_st_writer_new();
    float one = 1.0f;
    int64_t sh[1] = {1};
    CHECK(wr && tl_st_writer_add_f32(wr, "x", sh, 1, &one, &err) == TL_OK &&
              tl_st_writer_meta(wr, "format", "someone-else-7", &err) == TL_OK &&
              tl_st_writer_write(wr, path, &err) == TL_OK,
          "write: %s", err.msg);
    tl_st_writer_free(wr);
    CHECK(tl_checkpoint_load(dir, &q, &be, &gs, NULL, &err) == TL_ERR_INPUT && strstr(err.msg, "'someone-else-7'"),
          "format message: %s", err.msg);
    free_pool(&q, &be);
    free_pool(&p, &be);
}

/* train.resume: never on a run directory with outputs: they move to previous/<stamp>/, nothing is deleted */
static void test_set_aside(const char *run) {
    tl_backend be;
    host_ctx hc;
    host_backend(&be, &hc);
    tl_lora_pool p;
    tl_config cfg;
    tl_cursor cur[4];
    tl_error err = {0};
    char dest[TL_PATH_MAX], path[TL_PATH_MAX + 64], ls[1024], latest[TL_PATH_MAX];
    int moved = -1, found = 0;
    CHECK(tl_mkdir_p(run, &err) == TL_OK, "mkdir");
    CHECK(tl_run_set_aside(run, -1, dest, sizeof dest, &moved, &err) == TL_OK && moved == 0, "nothing to move");
    saved_pool(run, &be, &p, &cfg, cur, 3);
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 4, NULL, 0, &err) == TL_OK, "save 4: %s", err.msg);
    CHECK(tl_checkpoint_save(run, &cfg, &p, &be, 5, NULL, 0, &err) == TL_OK, "save 5: %s", err.msg);
    xpath(path, sizeof path, "%s/metrics.jsonl", run);
    CHECK(tl_write_file_atomic(path, "{}\n", 3, &err) == TL_OK, "metrics");
    xpath(path, sizeof path, "%s/notes.txt", run); /* not an output of a run: stays */
    CHECK(tl_write_file_atomic(path, "x", 1, &err) == TL_OK, "notes");

    /* a resume from step 4: step 5 is another history */
    CHECK(tl_run_set_aside(run, 4, dest, sizeof dest, &moved, &err) == TL_OK && moved == 1, "aside: %s", err.msg);
    xpath(path, sizeof path, "%s/checkpoints", dest);
    listing(path, ls, sizeof ls);
    CHECK(!strcmp(ls, "step-00000005"), "set aside: %s", ls);
    listing(dest, ls, sizeof ls);
    CHECK(!strcmp(ls, "checkpoints metrics.jsonl"), "with a copy of metrics.jsonl: %s", ls);
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && found &&
              strstr(latest, "step-00000004"),
          "latest after setting 5 aside: %s", latest);
    CHECK(tl_run_set_aside(run, 4, dest, sizeof dest, &moved, &err) == TL_OK && moved == 0, "nothing past 4");

    /* resume never: every output goes, in one folder */
    char first[TL_PATH_MAX];
    snprintf(first, sizeof first, "%s", dest);
    CHECK(tl_run_set_aside(run, -1, dest, sizeof dest, &moved, &err) == TL_OK && moved == 1, "aside: %s", err.msg);
    CHECK(strcmp(first, dest) != 0, "a second set-aside gets its own folder: %s", dest);
    listing(dest, ls, sizeof ls);
    CHECK(!strcmp(ls, "checkpoints config.yaml metrics.jsonl") || !strcmp(ls, "checkpoints metrics.jsonl"),
          "moved: %s", ls);
    listing(run, ls, sizeof ls);
    CHECK(!strcmp(ls, "notes.txt previous"), "left in the run: %s", ls);
    CHECK(tl_checkpoint_latest(run, latest, sizeof latest, &found, &err) == TL_OK && !found, "no checkpoint left");
    xpath(path, sizeof path, "%s/previous", run);
    listing(path, ls, sizeof ls);
    CHECK(strchr(ls, '.') == NULL && strchr(ls, ' ') != NULL, "two stamped folders, no temporary one: %s", ls);
    free_pool(&p, &be);
}

/* JSON numbers that claim to be integers, and names and paths read from metadata */
static void test_checked_values(const char *root) {
    int64_t v = -1;
    CHECK(tl_json_int(42.0, 0, 100, &v) && v == 42, "42");
    CHECK(tl_json_int(9007199254740992.0, 0, (int64_t)1 << 53, &v) && v == ((int64_t)1 << 53), "2^53");
    double bad[] = {2.5, -1.0, 4611686018427387904.0, 1e300, -1e300, NAN, INFINITY, -INFINITY, 101.0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(!tl_json_int(bad[i], 0, 100, &v), "%g must be refused", bad[i]);
    const char *ok[] = {"ann", "a b", "x-2", "_evil-e3b85cb0"};
    const char *no[] = {"", ".", "..", "../x", "/abs", "a/b", ".hidden"};
    for (size_t i = 0; i < 4; i++) CHECK(tl_plain_name(ok[i]), "plain: %s", ok[i]);
    for (size_t i = 0; i < 7; i++) CHECK(!tl_plain_name(no[i]), "not plain: %s", no[i]);
    char in[TL_PATH_MAX], sub[TL_PATH_MAX + 32], out[TL_PATH_MAX + 32], lnk[TL_PATH_MAX + 32];
    tl_error err = {0};
    xpath(in, sizeof in, "%s/inside", root);
    xpath(sub, sizeof sub, "%s/a", in);
    xpath(out, sizeof out, "%s/outside", root);
    CHECK(tl_mkdir_p(sub, &err) == TL_OK && tl_mkdir_p(out, &err) == TL_OK, "mkdir");
    CHECK(tl_path_inside(in, sub, "t", &err) == TL_OK, "a/ is inside: %s", err.msg);
    xpath(lnk, sizeof lnk, "%s/lnk", in);
    CHECK(symlink(out, lnk) == 0, "symlink");
    CHECK(tl_path_inside(in, lnk, "t", &err) == TL_ERR_INPUT && strstr(err.msg, "outside"), "link out: %s", err.msg);
    xpath(lnk, sizeof lnk, "%s/../outside", in);
    CHECK(tl_path_inside(in, lnk, "t", &err) == TL_ERR_INPUT, "../outside: %s", err.msg);
    CHECK(tl_path_inside(in, in, "t", &err) == TL_ERR_INPUT, "the folder itself is not inside it");
    xpath(lnk, sizeof lnk, "%s/missing", in);
    CHECK(tl_path_inside(in, lnk, "t", &err) == TL_ERR_INPUT, "a missing entry");
}

int main(void) {
    uint64_t seed = host_seed();
    char root[TL_PATH_MAX];
    if (host_scratch(root, "tl_test_ckpt")) return 1;
    char r1[TL_PATH_MAX + 8], r2[TL_PATH_MAX + 8], r3[TL_PATH_MAX + 8], r4[TL_PATH_MAX + 8];
    xpath(r1, sizeof r1, "%s/run1", root);
    xpath(r2, sizeof r2, "%s/run2", root);
    xpath(r3, sizeof r3, "%s/run3", root);
    xpath(r4, sizeof r4, "%s/run4", root);
    test_fsutil(root);
    test_round_trip(r1);
    test_keep_and_latest(r2);
    test_mismatch(r3);
    test_load_rows(r4);
    char r5[TL_PATH_MAX + 8], r6[TL_PATH_MAX + 8];
    xpath(r5, sizeof r5, "%s/run5", root);
    xpath(r6, sizeof r6, "%s/run6", root);
    test_bad_values(r5);
    test_set_aside(r6);
    test_checked_values(root);
    host_scratch_remove(root);
    return tl_check_done_seed("test_checkpoint", (unsigned long long)seed);
}
