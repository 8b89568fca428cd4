/* pref_eval: held-out preference accuracy and loss per adapter, and the cross matrix (see tl_pref_eval.h). */
#include "trainer/eval/tl_pref_eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data/tl_io.h"
#include "kernels/tl_text.h"

/* One pass over every pair of the map's adapters with segments forced to force_slot (TL_SLOT_OWN: own adapter). */
/* What every pass of one evaluation shares. */
typedef struct {
    const tl_model *m;
    tl_lora_pool *p;
    tl_workspace *ws;
    tl_pref_scratch *sc;
    const tl_pref_dataset *ds;
    int micro_batch_tokens, max_seq_len;
    const tl_pref_eval_opts *o;
} pass_ctx;

static tl_status pass(const pass_ctx *c, const tl_adapter_map *map, int force_slot, tl_pref_stats *by_owner,
                      tl_error *err) {
    const tl_model *m = c->m;
    tl_lora_pool *p = c->p;
    tl_workspace *ws = c->ws;
    tl_pref_scratch *sc = c->sc;
    const tl_pref_dataset *ds = c->ds;
    const tl_pref_eval_opts *o = c->o;
    int micro_batch_tokens = c->micro_batch_tokens, max_seq_len = c->max_seq_len;
    tl_pref_eval_iter *it = NULL;
    TL_TRY(tl_pref_eval_iter_init(ds, map, micro_batch_tokens, max_seq_len, &it, err));
    int cap = 0;
    int32_t *buf = NULL;
    tl_status s = TL_OK;
    for (;;) {
        tl_pref_eval_batch *eb = NULL;
        int done = 0;
        s = tl_pref_eval_iter_next(it, force_slot, &eb, &done, err);
        if (s || done) break;
        int n = (int)eb->n_pairs;
        if (n > cap) {
            int32_t *nb = realloc(buf, (size_t)n * 3 * sizeof(int32_t));
            if (!nb) {
                s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
                break;
            }
            buf = nb, cap = n;
        }
        int32_t *sc_c = buf, *sc_r = buf + n, *owner = buf + 2 * n;
        for (int k = 0; k < n; k++)
            sc_c[k] = eb->pairs[k].chosen, sc_r[k] = eb->pairs[k].rejected, owner[k] = eb->pairs[k].adapter;
        tl_pair_set ps = {.n = n, .seq_c = sc_c, .seq_r = sc_r, .adapter = owner, .ref = o->ref};
        tl_pref_acc acc = {.stats = by_owner};
        /* the stats are keyed by the pairs' owners; the segments carry the slot actually evaluated */
        s = o->reward ? tl_reward_microbatch(m, p, ws, sc, eb->mb, &ps, o->center_rewards, 0, &acc, err)
                      : tl_dpo_microbatch(m, p, ws, sc, eb->mb, &ps, &o->opts, 0, &acc, err);
        if (s) break;
    }
    free(buf);
    tl_pref_eval_iter_free(it);
    return s;
}

tl_status tl_pref_eval_run(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, tl_pref_scratch *sc,
                           const tl_pref_dataset *ds, const tl_eval_opts *e, const tl_pref_eval_opts *o,
                           tl_pref_eval_result *res, tl_error *err) {
    memset(res, 0, sizeof *res);
    const pass_ctx c = {.m = m, .p = p, .ws = ws, .sc = sc, .ds = ds,
                        .micro_batch_tokens = e->micro_batch_tokens, .max_seq_len = e->max_seq_len, .o = o};
    tl_adapter_key key = e->key;
    int with_cross = e->with_cross;
    const tl_eval_part *part = e->part;
    int n = p->n_slots;
    const uint8_t *only = part ? part->only : NULL;
    char *const *cnames = part && part->cols ? part->cols : p->names;
    int nc = part && part->cols ? part->n_cols : n;
    tl_adapter_map map, mine, cols;
    memset(&mine, 0, sizeof mine);
    memset(&cols, 0, sizeof cols);
    TL_TRY(tl_adapter_map_build_pref(ds, key, p->names, n, &map, err));
    /* a rank's own pairs, and the cross matrix's columns, are the pool's map unless a part says otherwise */
    tl_status s = TL_OK;
    if (only) {
        s = tl_adapter_map_build_pref(ds, key, p->names, n, &mine, err);
        if (!s) tl_adapter_map_keep(&mine, only);
    }
    int own_cols = cnames == p->names;
    if (!s && with_cross && !own_cols) s = tl_adapter_map_build_pref(ds, key, cnames, nc, &cols, err);
    const tl_adapter_map *own = only ? &mine : &map, *colmap = own_cols ? &map : &cols;
    res->n = n, res->n_cols = nc;
    res->own = s ? NULL : calloc((size_t)n, sizeof *res->own);
    tl_pref_stats *tmp = s ? NULL : calloc((size_t)nc, sizeof *tmp);
    if (!s && (!res->own || !tmp)) s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    for (int a = 0; !s && a < n; a++) tl_pref_stats_init(&res->own[a]);
    if (!s) s = pass(&c, own, TL_SLOT_OWN, res->own, err);
    if (!s && with_cross) {
        res->cross_acc = calloc((size_t)n * nc, sizeof(double));
        if (!res->cross_acc) s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
        for (int a = 0; !s && a < n; a++) {
            if (only && !only[a]) continue; /* another rank's row: left 0 */
            for (int b = 0; b < nc; b++) tl_pref_stats_init(&tmp[b]);
            s = pass(&c, colmap, a, tmp, err);
            for (int b = 0; !s && b < nc; b++) {
                double mean[TL_PREF_N_METRICS];
                tl_pref_stats_mean(&tmp[b], mean);
                res->cross_acc[(size_t)a * nc + b] = mean[TL_PREF_M_REWARDS_ACCURACIES];
            }
        }
    }
    if (!s && key != TL_KEY_USER) {
        /* users as the unit: one pass per adapter, keeping only the users whose adapter it is */
        tl_adapter_map umap;
        s = tl_adapter_map_build_pref(ds, TL_KEY_USER, NULL, 0, &umap, err);
        if (!s) {
            res->n_users = ds->n_users;
            res->user_names = (const char *const *)ds->user_names;
            res->user_groups = (const char *const *)ds->user_groups;
            res->by_user = calloc((size_t)ds->n_users, sizeof *res->by_user);
            tl_pref_stats *ust = calloc((size_t)umap.n_adapters + 1, sizeof *ust);
            if (!res->by_user || !ust) s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
            for (int u = 0; !s && u < ds->n_users; u++) tl_pref_stats_init(&res->by_user[u]);
            for (int a = 0; !s && a < n; a++) {
                if (only && !only[a]) continue; /* another rank's users: left empty */
                for (int b = 0; b < umap.n_adapters; b++) tl_pref_stats_init(&ust[b]);
                s = pass(&c, &umap, a, ust, err);
                for (int u = 0; !s && u < ds->n_users; u++) {
                    int ua = umap.user_adapter[u];
                    if (ua >= 0 && map.user_adapter[u] == a) res->by_user[u] = ust[ua];
                }
            }
            free(ust);
            tl_adapter_map_free(&umap);
        }
    }
    free(tmp);
    tl_adapter_map_free(&map);
    tl_adapter_map_free(&mine);
    tl_adapter_map_free(&cols);
    if (s) tl_pref_eval_result_free(res);
    return s;
}

void tl_pref_eval_result_free(tl_pref_eval_result *r) {
    free(r->own);
    free(r->cross_acc);
    free(r->sample_cross_acc);
    free(r->by_user);
    memset(r, 0, sizeof *r);
}

void tl_pref_eval_print(const tl_pref_eval_result *r, const tl_lora_pool *p, FILE *f) {
    fprintf(f, "%-24s %6s %9s %9s %9s\n", "adapter", "pairs", "loss", "accuracy", "margin");
    tl_pref_stats all;
    tl_pref_stats_init(&all);
    char nb[TL_ESC_CAP], gb[TL_ESC_CAP]; /* user, group and adapter names come from the data: shown escaped */
    for (int a = 0; a < r->n; a++) {
        double mean[TL_PREF_N_METRICS];
        tl_pref_stats_mean(&r->own[a], mean);
        tl_pref_stats_merge(&all, &r->own[a]);
        fprintf(f, "%-24.24s %6lld %9.4f %9.4f %9.4f\n", tl_escape(nb, sizeof nb, p->names[a]), (long long)r->own[a].n, mean[TL_PREF_M_LOSS],
                mean[TL_PREF_M_REWARDS_ACCURACIES], mean[TL_PREF_M_REWARDS_MARGINS]);
    }
    double mean[TL_PREF_N_METRICS];
    tl_pref_stats_mean(&all, mean);
    fprintf(f, "%-24s %6lld %9.4f %9.4f %9.4f\n", "(all pairs)", (long long)all.n, mean[TL_PREF_M_LOSS],
            mean[TL_PREF_M_REWARDS_ACCURACIES], mean[TL_PREF_M_REWARDS_MARGINS]);
    if (r->by_user) {
        fprintf(f, "per user (each under its %s adapter):\n%-24s %-12s %6s %9s\n", r->n == 1 ? "shared" : "group's",
                "user", "group", "pairs", "accuracy");
        for (int u = 0; u < r->n_users && u < 50; u++) {
            double um[TL_PREF_N_METRICS];
            tl_pref_stats_mean(&r->by_user[u], um);
            fprintf(f, "%-24.24s %-12.12s %6lld %9.4f\n", tl_escape(nb, sizeof nb, r->user_names[u]),
                    tl_escape(gb, sizeof gb, r->user_groups ? r->user_groups[u] : "-"),
                    (long long)r->by_user[u].n, um[TL_PREF_M_REWARDS_ACCURACIES]);
        }
    }
    if (r->cross_acc && r->n <= 12) {
        fprintf(f, "cross accuracy (row: adapter, column: whose pairs):\n%-16s", "");
        for (int b = 0; b < r->n; b++) fprintf(f, " %8.8s", tl_escape(nb, sizeof nb, p->names[b]));
        fputc('\n', f);
        for (int a = 0; a < r->n; a++) {
            fprintf(f, "%-16.16s", tl_escape(nb, sizeof nb, p->names[a]));
            for (int b = 0; b < r->n; b++) fprintf(f, " %8.3f", r->cross_acc[(size_t)a * r->n + b]);
            fputc('\n', f);
        }
    }
}

static cJSON *num_or_null(double x) { return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull(); }

static void add_metrics(cJSON *o, const tl_pref_stats *s) {
    double mean[TL_PREF_N_METRICS];
    tl_pref_stats_mean(s, mean);
    cJSON_AddNumberToObject(o, "pairs", (double)s->n);
    for (int k = 0; k < TL_PREF_N_METRICS; k++) cJSON_AddItemToObject(o, tl_pref_metric_names[k], num_or_null(mean[k]));
}

tl_status tl_pref_eval_write_json(const tl_pref_eval_result *r, const tl_lora_pool *p, const char *path,
                                  int64_t step, tl_error *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "step", (double)step);
    tl_pref_stats all;
    tl_pref_stats_init(&all);
    cJSON *arr = cJSON_AddArrayToObject(root, "adapters");
    for (int a = 0; a < r->n; a++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", p->names[a]);
        add_metrics(o, &r->own[a]);
        cJSON_AddItemToArray(arr, o);
        tl_pref_stats_merge(&all, &r->own[a]);
    }
    add_metrics(root, &all);
    if (r->cross_acc) {
        cJSON *cr = cJSON_AddObjectToObject(root, "cross");
        cJSON_AddStringToObject(cr, "meaning", "accuracy[a][b]: adapter a on the pairs of adapter b's users");
        cJSON *rows = cJSON_AddArrayToObject(cr, "accuracy");
        for (int a = 0; a < r->n; a++) {
            cJSON *row = cJSON_CreateArray();
            for (int b = 0; b < r->n; b++) cJSON_AddItemToArray(row, num_or_null(r->cross_acc[(size_t)a * r->n + b]));
            cJSON_AddItemToArray(rows, row);
        }
    }
    if (r->sample_cross_acc) {
        cJSON *cr = cJSON_AddObjectToObject(root, "cross_sample");
        cJSON_AddStringToObject(cr, "meaning", "accuracy[i][j]: adapter adapters[i] on the pairs of adapter adapters[j]'s "
                                               "users; an evenly spaced sample of the adapters");
        cJSON_AddNumberToObject(cr, "of", (double)r->n);
        cJSON *names = cJSON_AddArrayToObject(cr, "adapters");
        for (int i = 0; i < r->n_sample; i++) cJSON_AddItemToArray(names, cJSON_CreateString(p->names[r->sample[i]]));
        cJSON *rows = cJSON_AddArrayToObject(cr, "accuracy");
        for (int i = 0; i < r->n_sample; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int j = 0; j < r->n_sample; j++)
                cJSON_AddItemToArray(row, num_or_null(r->sample_cross_acc[(size_t)i * r->n_sample + j]));
            cJSON_AddItemToArray(rows, row);
        }
    }
    if (r->by_user) {
        cJSON *us = cJSON_AddArrayToObject(root, "users");
        for (int u = 0; u < r->n_users; u++) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", r->user_names[u]);
            if (r->user_groups) cJSON_AddStringToObject(o, "group", r->user_groups[u]);
            add_metrics(o, &r->by_user[u]);
            cJSON_AddItemToArray(us, o);
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory formatting JSON", path);
    tl_status s = tl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return s;
}
