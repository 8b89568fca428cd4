/* eval: per-adapter held-out loss and perplexity, against the base model on the same examples. */
#include "trainer/eval/tl_eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data/tl_io.h"
#include "kernels/tl_text.h"

/* What every pass of one evaluation shares. */
typedef struct {
    const tl_model *m;
    tl_lora_pool *p;
    tl_workspace *ws;
    const tl_sft_dataset *ds;
    int micro_batch_tokens, max_seq_len;
} eval_ctx;

/* One pass over the map's examples with segments forced to force_slot (TL_SLOT_OWN: own adapter): summed
 * target-token losses and counts per column of the map, and examples per column when examples is not NULL. */
static tl_status eval_pass(const eval_ctx *c, const tl_adapter_map *map, int force_slot, double *sum,
                           int64_t *count, int64_t *examples, tl_error *err) {
    const tl_model *m = c->m;
    tl_lora_pool *p = c->p;
    tl_workspace *ws = c->ws;
    const tl_sft_dataset *ds = c->ds;
    int micro_batch_tokens = c->micro_batch_tokens, max_seq_len = c->max_seq_len;
    tl_eval_iter *it = NULL;
    TL_TRY(tl_eval_iter_init(ds, map, micro_batch_tokens, max_seq_len, &it, err));
    float *logp = malloc((size_t)micro_batch_tokens * sizeof(float));
    tl_status s = logp ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
    int done = 0;
    while (!s) {
        tl_host_mb *mb = NULL;
        s = tl_eval_iter_next(it, force_slot, &mb, &done, err);
        if (s || done) break;
        s = tl_model_step(m, p, ws, mb, 0, logp, err);
        if (s) break;
        for (int i = 0; i < mb->n_tok; i++)
            if (mb->targets[i] >= 0) {
                sum[mb->adapter[i]] -= logp[i];
                count[mb->adapter[i]]++;
            }
        if (examples)
            for (int q = 0; q < mb->n_seq; q++) examples[mb->adapter[mb->cu_seqlens[q]]]++;
    }
    free(logp);
    tl_eval_iter_free(it);
    return s;
}

tl_status tl_eval_run(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_sft_dataset *ds,
                      const tl_eval_opts *o, tl_eval_result *res, tl_error *err) {
    memset(res, 0, sizeof *res);
    const eval_ctx c = {.m = m, .p = p, .ws = ws, .ds = ds, .micro_batch_tokens = o->micro_batch_tokens,
                        .max_seq_len = o->max_seq_len};
    tl_adapter_key key = o->key;
    int with_base = o->with_base, with_cross = o->with_cross;
    const tl_eval_part *part = o->part;
    int n = p->n_slots;
    const uint8_t *only = part ? part->only : NULL;
    char *const *cnames = part && part->cols ? part->cols : p->names;
    int nc = part && part->cols ? part->n_cols : n;
    tl_adapter_map map, all;
    TL_TRY(tl_adapter_map_build(ds, key, p->names, n, &map, err));
    tl_adapter_map_keep(&map, only);
    memset(&all, 0, sizeof all);
    /* the cross matrix's columns: every listed adapter's users; the pool's own map when nothing was left out */
    int own_cols = !only && cnames == p->names;
    if (with_cross && !own_cols) {
        tl_status st = tl_adapter_map_build(ds, key, cnames, nc, &all, err);
        if (st) {
            tl_adapter_map_free(&map);
            return st;
        }
    }
    const tl_adapter_map *cols = own_cols ? &map : &all;
    res->n = n, res->n_cols = nc;
    res->examples = calloc((size_t)n, sizeof(int64_t));
    res->tokens = calloc((size_t)n, sizeof(int64_t));
    res->loss = calloc((size_t)n, sizeof(double));
    res->base_loss = calloc((size_t)n, sizeof(double));
    double *bsum = calloc((size_t)(n > nc ? n : nc), sizeof(double));
    int64_t *bcount = calloc((size_t)(n > nc ? n : nc), sizeof(int64_t));
    tl_status s = TL_OK;
    if (!res->examples || !res->tokens || !res->loss || !res->base_loss || !bsum || !bcount) {
        s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
        goto done;
    }
    s = eval_pass(&c, &map, TL_SLOT_OWN, res->loss, res->tokens, res->examples, err);
    if (!s && with_base)
        s = eval_pass(&c, &map, TL_SLOT_BASE, bsum, bcount, NULL, err);
    if (s) goto done;
    for (int a = 0; a < n; a++) {
        res->loss[a] = res->tokens[a] ? res->loss[a] / (double)res->tokens[a] : NAN;
        res->base_loss[a] = with_base && bcount[a] ? bsum[a] / (double)bcount[a] : NAN;
    }
    if (with_cross) {
        res->cross = calloc((size_t)n * nc, sizeof(double));
        if (!res->cross) {
            s = tl_fail(err, TL_ERR_RUNTIME, "eval: out of host memory");
            goto done;
        }
        for (int a = 0; a < n && !s; a++) {
            if (only && !only[a]) continue; /* another rank's row: left 0 */
            double *row = res->cross + (size_t)a * nc;
            memset(bcount, 0, (size_t)nc * sizeof(int64_t));
            s = eval_pass(&c, cols, a, row, bcount, NULL, err);
            for (int b = 0; b < nc; b++) row[b] = bcount[b] ? row[b] / (double)bcount[b] : NAN;
        }
        if (s) goto done;
    }
done:
    free(bsum);
    free(bcount);
    tl_adapter_map_free(&map);
    tl_adapter_map_free(&all);
    if (s) tl_eval_result_free(res);
    return s;
}

void tl_eval_result_free(tl_eval_result *r) {
    free(r->examples);
    free(r->tokens);
    free(r->loss);
    free(r->base_loss);
    free(r->cross);
    free(r->sample_cross);
    memset(r, 0, sizeof *r);
}

void tl_eval_totals(const tl_eval_result *r, double *loss, double *base_loss, int64_t *tokens) {
    double l = 0, b = 0;
    int64_t t = 0;
    for (int a = 0; a < r->n; a++) {
        if (!r->tokens[a]) continue;
        l += r->loss[a] * (double)r->tokens[a];
        b += r->base_loss[a] * (double)r->tokens[a];
        t += r->tokens[a];
    }
    *loss = t ? l / (double)t : NAN;
    *base_loss = t ? b / (double)t : NAN;
    *tokens = t;
}

void tl_eval_print(const tl_eval_result *r, const tl_lora_pool *p, FILE *f) {
    fprintf(f, "%-24s %8s %8s %9s %10s %9s %10s\n", "adapter", "examples", "tokens", "loss", "ppl", "base_loss",
            "base_ppl");
    char nb[TL_ESC_CAP]; /* adapter names come from the data: shown escaped (tl_text.h) */
    for (int a = 0; a < r->n; a++) {
        if (!r->tokens[a]) {
            fprintf(f, "%-24.24s %8s %8s %9s %10s %9s %10s\n", tl_escape(nb, sizeof nb, p->names[a]), "0", "0", "-", "-", "-", "-");
            continue;
        }
        fprintf(f, "%-24.24s %8lld %8lld %9.4f %10.3f %9.4f %10.3f\n", tl_escape(nb, sizeof nb, p->names[a]), (long long)r->examples[a],
                (long long)r->tokens[a], r->loss[a], exp(r->loss[a]), r->base_loss[a], exp(r->base_loss[a]));
    }
    double l, b;
    int64_t t;
    tl_eval_totals(r, &l, &b, &t);
    fprintf(f, "%-24s %8s %8lld %9.4f %10.3f %9.4f %10.3f\n", "(all, token-weighted)", "", (long long)t, l, exp(l), b,
            exp(b));
    if (r->rouge1) {
        fprintf(f, "generation (greedy answers vs reference responses):\n%-24s %9s %9s %11s %11s\n", "adapter", "rouge1",
                "rougeL", "base_rouge1", "base_rougeL");
        for (int a = 0; a < r->n; a++)
            fprintf(f, "%-24.24s %9.4f %9.4f %11.4f %11.4f\n", tl_escape(nb, sizeof nb, p->names[a]), r->rouge1[a], r->rougeL[a],
                    r->base_rouge1[a], r->base_rougeL[a]);
    }
    if (r->cross && r->n <= 12) {
        fprintf(f, "cross loss (row: adapter, column: whose data; * marks the row's best):\n%-16s", "");
        for (int b2 = 0; b2 < r->n; b2++) fprintf(f, " %10.10s", tl_escape(nb, sizeof nb, p->names[b2]));
        fputc('\n', f);
        for (int a = 0; a < r->n; a++) {
            fprintf(f, "%-16.16s", tl_escape(nb, sizeof nb, p->names[a]));
            int best = -1;
            for (int b2 = 0; b2 < r->n; b2++) {
                double x = r->cross[(size_t)a * r->n + b2];
                if (isfinite(x) && (best < 0 || x < r->cross[(size_t)a * r->n + best])) best = b2;
            }
            for (int b2 = 0; b2 < r->n; b2++)
                fprintf(f, " %9.4f%c", r->cross[(size_t)a * r->n + b2], b2 == best ? '*' : ' ');
            fputc('\n', f);
        }
    }
}

static cJSON *num_or_null(double x) { return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull(); }

tl_status tl_eval_write_json(const tl_eval_result *r, const tl_lora_pool *p, const char *path, int64_t step,
                             tl_error *err) {
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = cJSON_AddArrayToObject(root, "adapters");
    double l, b;
    int64_t t;
    tl_eval_totals(r, &l, &b, &t);
    cJSON_AddNumberToObject(root, "step", (double)step);
    cJSON_AddItemToObject(root, "loss", num_or_null(l));
    cJSON_AddItemToObject(root, "base_loss", num_or_null(b));
    cJSON_AddItemToObject(root, "ppl", num_or_null(exp(l)));
    cJSON_AddItemToObject(root, "base_ppl", num_or_null(exp(b)));
    cJSON_AddNumberToObject(root, "tokens", (double)t);
    for (int a = 0; a < r->n; a++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", p->names[a]);
        cJSON_AddNumberToObject(o, "examples", (double)r->examples[a]);
        cJSON_AddNumberToObject(o, "tokens", (double)r->tokens[a]);
        cJSON_AddItemToObject(o, "loss", num_or_null(r->loss[a]));
        cJSON_AddItemToObject(o, "ppl", num_or_null(exp(r->loss[a])));
        cJSON_AddItemToObject(o, "base_loss", num_or_null(r->base_loss[a]));
        cJSON_AddItemToObject(o, "base_ppl", num_or_null(exp(r->base_loss[a])));
        if (r->rouge1) {
            cJSON_AddItemToObject(o, "rouge1", num_or_null(r->rouge1[a]));
            cJSON_AddItemToObject(o, "rougeL", num_or_null(r->rougeL[a]));
            cJSON_AddItemToObject(o, "base_rouge1", num_or_null(r->base_rouge1[a]));
            cJSON_AddItemToObject(o, "base_rougeL", num_or_null(r->base_rougeL[a]));
        }
        cJSON_AddItemToArray(arr, o);
    }
    if (r->cross) {
        cJSON *cr = cJSON_AddObjectToObject(root, "cross");
        cJSON_AddStringToObject(cr, "meaning", "loss[a][b]: adapter a evaluated on the examples of adapter b's users");
        cJSON *rows = cJSON_AddArrayToObject(cr, "loss");
        for (int a = 0; a < r->n; a++) {
            cJSON *row = cJSON_CreateArray();
            for (int c = 0; c < r->n; c++) cJSON_AddItemToArray(row, num_or_null(r->cross[(size_t)a * r->n + c]));
            cJSON_AddItemToArray(rows, row);
        }
    }
    if (r->sample_cross) {
        cJSON *cr = cJSON_AddObjectToObject(root, "cross_sample");
        cJSON_AddStringToObject(cr, "meaning", "loss[i][j]: adapter adapters[i] evaluated on the examples of adapter "
                                               "adapters[j]'s users; an evenly spaced sample of the adapters");
        cJSON_AddNumberToObject(cr, "of", (double)r->n);
        cJSON *names = cJSON_AddArrayToObject(cr, "adapters");
        for (int i = 0; i < r->n_sample; i++) cJSON_AddItemToArray(names, cJSON_CreateString(p->names[r->sample[i]]));
        cJSON *rows = cJSON_AddArrayToObject(cr, "loss");
        for (int i = 0; i < r->n_sample; i++) {
            cJSON *row = cJSON_CreateArray();
            for (int j = 0; j < r->n_sample; j++)
                cJSON_AddItemToArray(row, num_or_null(r->sample_cross[(size_t)i * r->n_sample + j]));
            cJSON_AddItemToArray(rows, row);
        }
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return tl_fail(err, TL_ERR_RUNTIME, "%s: out of memory formatting JSON", path);
    tl_status s = tl_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return s;
}
