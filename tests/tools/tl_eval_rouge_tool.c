/* tl_eval_rouge_tool: runs tl_eval_rouge for tests/e2e/eval_rouge.sh and writes what it saw as JSON.
 * usage: tl_eval_rouge_tool MODEL DATA.h5 MAX_NEW RANK ALPHA TARGETS OUT.json NAME=ADAPTER_DIR...
 * TARGETS: comma-separated module names (q_proj,v_proj); each NAME is a user of DATA (adapter key = user).
 * OUT.json: {"adapters": [{name, examples, rouge1, rougeL, base_rouge1, base_rougeL}],
 *            "answers": [{example, adapter, base, answer, reference}]}. Exit 0 ok, 1 runtime, 2 bad input. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/tl_model_tokenizer.h"
#include "trainer/config/tl_config.h"
#include "trainer/run/tl_export.h"
#include "trainer/eval/tl_rouge.h"

static void on_answer(void *ctx, int64_t ex, int slot, int is_base, const char *answer, const char *reference) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "example", (double)ex);
    cJSON_AddNumberToObject(o, "adapter", slot);
    cJSON_AddBoolToObject(o, "base", is_base);
    cJSON_AddStringToObject(o, "answer", answer);
    cJSON_AddStringToObject(o, "reference", reference);
    cJSON_AddItemToArray((cJSON *)ctx, o);
}

static cJSON *num(double x) { return isfinite(x) ? cJSON_CreateNumber(x) : cJSON_CreateNull(); }

int main(int argc, char **argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: tl_eval_rouge_tool MODEL DATA MAX_NEW RANK ALPHA TARGETS OUT NAME=DIR...\n");
        return 2;
    }
    int n = argc - 8, max_new = atoi(argv[3]), rank = atoi(argv[4]);
    float alpha = (float)atof(argv[5]);
    uint32_t targets = 0;
    char tbuf[256];
    snprintf(tbuf, sizeof tbuf, "%s", argv[6]);
    for (char *t = strtok(tbuf, ","); t; t = strtok(NULL, ","))
        for (int j = 0; j < TL_N_TARGETS; j++)
            if (!strcmp(t, tl_target_names[j])) targets |= 1u << j;
    char **names = calloc((size_t)n, sizeof(char *)), **dirs = calloc((size_t)n, sizeof(char *));
    tl_error err = {0};
    tl_status s = TL_OK;
    tl_backend *be = NULL;
    tl_tokenizer *tok = NULL;
    tl_model m;
    tl_sft_dataset ds;
    tl_lora_pool pool;
    tl_adapter_map map;
    tl_eval_rouge_result res;
    int have_m = 0, have_ds = 0, have_pool = 0, have_map = 0;
    cJSON *root = cJSON_CreateObject(), *answers = cJSON_AddArrayToObject(root, "answers");
    if (!names || !dirs || !root || !answers) return 1;
    for (int i = 0; i < n; i++) {
        names[i] = argv[8 + i];
        char *eq = strchr(names[i], '=');
        if (!eq) {
            fprintf(stderr, "tl_eval_rouge_tool: expected NAME=DIR, got %s\n", names[i]);
            return 2;
        }
        *eq = 0, dirs[i] = eq + 1;
    }
    if ((s = tl_backend_open("cpu", 2, &be, &err))) goto out;
    if ((s = tl_tokenizer_for_model(argv[1], &tok, &err))) goto out;
    if ((s = tl_model_load(argv[1], be, &m, &err))) goto out;
    have_m = 1;
    if ((s = tl_sft_open(argv[2], m.cfg.vocab_size, &ds, &err))) goto out;
    have_ds = 1;
    tl_lora_opts lo = {.rank = rank, .alpha = alpha, .targets = targets};
    if ((s = tl_lora_pool_init(&pool, &m, n, names, &lo, &err))) goto out;
    have_pool = 1;
    for (int i = 0; i < n && !s; i++) s = tl_peft_load(dirs[i], &pool, be, i, &err);
    if (s) goto out;
    if ((s = tl_adapter_map_build(&ds, TL_KEY_USER, names, n, &map, &err))) goto out;
    have_map = 1;
    /* batch 3: batches mix adapters, the base model and prompt lengths */
    const tl_eval_rouge_opts ro = {.max_new_tokens = max_new, .with_base = 1, .batch = 3, .cb = on_answer,
                                   .cb_ctx = answers};
    if ((s = tl_eval_rouge(&m, &pool, tok, &ds, &map, &ro, &res, &err))) goto out;
    cJSON *arr = cJSON_AddArrayToObject(root, "adapters");
    for (int a = 0; a < res.n; a++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", names[a]);
        cJSON_AddNumberToObject(o, "examples", (double)res.examples[a]);
        cJSON_AddItemToObject(o, "rouge1", num(res.rouge1[a]));
        cJSON_AddItemToObject(o, "rougeL", num(res.rougeL[a]));
        cJSON_AddItemToObject(o, "base_rouge1", num(res.base_rouge1[a]));
        cJSON_AddItemToObject(o, "base_rougeL", num(res.base_rougeL[a]));
        cJSON_AddItemToArray(arr, o);
    }
    tl_eval_rouge_result_free(&res);
    char *text = cJSON_Print(root);
    FILE *f = fopen(argv[7], "w");
    if (!text || !f || fputs(text, f) < 0 || fclose(f) != 0) s = tl_fail(&err, TL_ERR_RUNTIME, "writing %s", argv[7]);
    free(text);
out:
    if (s) fprintf(stderr, "tl_eval_rouge_tool: %s\n", err.msg);
    cJSON_Delete(root);
    if (have_map) tl_adapter_map_free(&map);
    if (have_pool) tl_lora_pool_free(&pool, be);
    if (have_ds) tl_sft_free(&ds);
    if (have_m) tl_model_free(&m);
    tl_tokenizer_free(tok);
    if (be) be->destroy(be);
    free(names), free(dirs);
    return s ? (int)s : 0;
}
