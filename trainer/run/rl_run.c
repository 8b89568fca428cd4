/* rl_run: task.type grpo / rloo inside tl_train (see rl_run.h): the reward pool, the prompts of each step, the
 * metrics. */
#include "trainer/run/rl_run.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "data/tl_io.h"
#include "data/tl_model_tokenizer.h"
#include "kernels/tl_math.h"
#include "kernels/tl_text.h"
#include "trainer/eval/tl_generate.h"
#include "trainer/run/tl_export.h"
#include "trainer/step/tl_rl_step.h"

#define METRICS_CAP (96 << 10)
#define METRICS_USERS 64

struct tl_rl_run {
    tl_lora_pool reward;
    int have_reward;
    tl_rl *rl;
    tl_rl_prompt *prompts; /* [max prompts of a step] */
    tl_rl_stats *stats;    /* [pool slots] */
    tl_rl_timing timing;
    int G, max_prompts;
    int n_prompts; /* of the last step */
    char *metrics; /* [METRICS_CAP] */
};

void tl_rl_run_free(tl_rl_run *rr, tl_backend *be) {
    if (!rr) return;
    tl_rl_free(rr->rl);
    if (rr->have_reward) tl_lora_pool_free(&rr->reward, be);
    free(rr->prompts), free(rr->stats), free(rr->metrics);
    free(rr);
}

/* The reward adapters' folder: <run>/adapters of a run directory, else the path itself (an adapters/ folder
 * with index.json, or one PEFT directory for every adapter). */
static tl_status reward_dir(const char *path, char *out, size_t cap, tl_error *err) {
    char idx[TL_PATH_MAX + 32];
    snprintf(idx, sizeof idx, "%s/adapters/index.json", path);
    if (tl_is_file(idx)) return tl_path_join(out, cap, path, "adapters", err);
    if ((size_t)snprintf(out, cap, "%s", path) >= cap)
        return tl_fail(err, TL_ERR_INPUT, "task.reward_model: path longer than %zu bytes", cap);
    return TL_OK;
}

/* index.json of an adapters folder (NULL root when there is none: one PEFT directory). */
static tl_status read_index(const char *dir, cJSON **root, tl_error *err) {
    *root = NULL;
    char idx[TL_PATH_MAX + 16];
    TL_TRY(tl_path_join(idx, sizeof idx, dir, "index.json", err));
    if (!tl_is_file(idx)) return TL_OK;
    char *text = NULL;
    size_t n = 0;
    TL_TRY(tl_read_file(idx, 64u << 20, &text, &n, err));
    *root = cJSON_ParseWithLength(text, n);
    free(text);
    const cJSON *arr = *root ? cJSON_GetObjectItemCaseSensitive(*root, "adapters") : NULL;
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) < 1) {
        cJSON_Delete(*root);
        *root = NULL;
        return tl_fail(err, TL_ERR_INPUT,
                       "task.reward_model: %s: expected {\"adapters\": [...]} with at least one "
                       "adapter",
                       idx);
    }
    return TL_OK;
}

/* The folder of the adapter named `name` in index (NULL: none), confined to dir. */
static tl_status entry_dir(const char *dir, const cJSON *root, const char *name, char *out, size_t cap, int *found,
                           tl_error *err) {
    *found = 0;
    const cJSON *it, *d = NULL;
    cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(root, "adapters")) {
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(it, "name");
        if (cJSON_IsString(nm) && (!name || !strcmp(nm->valuestring, name))) {
            d = cJSON_GetObjectItemCaseSensitive(it, "dir");
            break;
        }
    }
    if (!d) return TL_OK;
    char nb[TL_ESC_CAP];
    if (!cJSON_IsString(d) || !tl_plain_name(d->valuestring))
        return tl_fail(err, TL_ERR_INPUT,
                       "task.reward_model: %s/index.json: adapter '%s': dir: expected a folder "
                       "name inside %s",
                       dir, tl_escape(nb, sizeof nb, name ? name : "?"), dir);
    TL_TRY(tl_path_join(out, cap, dir, d->valuestring, err));
    TL_TRY(tl_path_inside(dir, out, "task.reward_model: adapter dir", err));
    *found = 1;
    return TL_OK;
}

/* A reward model is a PEFT SEQ_CLS adapter (task.type reward exports them so). */
static tl_status check_seq_cls(const char *peft, tl_error *err) {
    char path[TL_PATH_MAX + 32];
    TL_TRY(tl_path_join(path, sizeof path, peft, "adapter_config.json", err));
    char *text = NULL;
    TL_TRY(tl_read_file(path, 1u << 20, &text, NULL, err));
    cJSON *o = cJSON_Parse(text);
    free(text);
    const cJSON *t = o ? cJSON_GetObjectItemCaseSensitive(o, "task_type") : NULL;
    int ok = cJSON_IsString(t) && !strcmp(t->valuestring, "SEQ_CLS");
    cJSON_Delete(o);
    if (!ok)
        return tl_fail(err, TL_ERR_INPUT,
                       "task.reward_model: %s: task_type: expected \"SEQ_CLS\" (a reward model: "
                       "train one with task.type reward)",
                       path);
    return TL_OK;
}

/* The reward pool: one reward adapter per policy adapter, the one of the same name (adapter.key user: the
 * user's; group: the group's; global: "global"); a folder holding only "global", or one PEFT directory, scores
 * every adapter. Its layout (rank, alpha, targets) is the reward models' own. */
static tl_status load_reward(tl_rl_run *rr, tl_session *S, const tl_config *cfg, tl_error *err) {
    if (!cfg->task_reward_model[0])
        return tl_fail(err, TL_ERR_INPUT,
                       "task.reward_model: required for task.type %s (a run directory or adapters "
                       "folder of task.type reward)",
                       tl_task_type_names[cfg->task_type]);
    char dir[TL_PATH_MAX], first[TL_PATH_MAX + 256];
    TL_TRY(reward_dir(cfg->task_reward_model, dir, sizeof dir, err));
    cJSON *root = NULL;
    TL_TRY(read_index(dir, &root, err));
    tl_status s = TL_OK;
    int found = 1, only_global = 0;
    if (root) {
        s = entry_dir(dir, root, NULL, first, sizeof first, &found, err);
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "adapters");
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, 0), "name");
        only_global = cJSON_GetArraySize(arr) == 1 && cJSON_IsString(nm) && !strcmp(nm->valuestring, "global");
    } else {
        snprintf(first, sizeof first, "%s", dir);
    }
    int rank = 0, rslora = 0;
    float alpha = 0;
    uint32_t targets = 0;
    if (!s && !found) s = tl_fail(err, TL_ERR_INPUT, "task.reward_model: %s/index.json: no adapter entry", dir);
    if (!s) s = check_seq_cls(first, err);
    if (!s) s = tl_peft_read_layout(first, &rank, &alpha, &rslora, &targets, err);
    tl_lora_opts lo = {.rank = rank,
                       .alpha = alpha,
                       .rslora = rslora,
                       .dropout = 0,
                       .targets = targets,
                       .seed = cfg->seed,
                       .with_head = 1};
    if (!s) s = tl_lora_pool_init(&rr->reward, &S->model, S->pool.n_slots, S->pool.names, &lo, err);
    if (!s) rr->have_reward = 1;
    char path[TL_PATH_MAX + 256], nb[TL_ESC_CAP];
    for (int a = 0; !s && a < S->pool.n_slots; a++) {
        const char *name = S->pool.names[a];
        if (root && !only_global) {
            s = entry_dir(dir, root, name, path, sizeof path, &found, err);
            if (!s && !found)
                s = tl_fail(err, TL_ERR_INPUT,
                            "task.reward_model: %s has no reward adapter named '%s' (adapter.key "
                            "%s: each adapter is scored by the reward adapter of its name, or by one named global)",
                            dir, tl_escape(nb, sizeof nb, name), tl_adapter_key_names[cfg->adapter_key]);
        } else {
            snprintf(path, sizeof path, "%s", first);
        }
        if (!s) s = tl_peft_load(path, &rr->reward, S->be, a, err);
    }
    cJSON_Delete(root);
    /* tl_peft_load's errors name the file; say which key led there */
    if (s && !strstr(err->msg, "task.reward_model")) {
        char msg[sizeof err->msg];
        snprintf(msg, sizeof msg, "%s", err->msg);
        return tl_fail(err, s, "task.reward_model: %s", msg);
    }
    return s;
}

tl_status tl_rl_run_setup(tl_session *S, const tl_config *cfg, int world, tl_rl_run **out, tl_error *err) {
    *out = NULL;
    if (world > 1)
        return tl_fail(err, TL_ERR_INPUT, "task.type %s: runs as one process only for now (%d ranks given)",
                       tl_task_type_names[cfg->task_type], world);
    const tl_prompt_dataset *pd = &S->prompt_train;
    int maxc = cfg->task_max_completion_length;
    int64_t max_prompt = pd->max_prompt_len;
    for (int k = 0; k < 1 + S->have_prompt_eval; k++) {
        const tl_prompt_dataset *d = k ? &S->prompt_eval : pd;
        if (d->max_prompt_len > max_prompt) max_prompt = d->max_prompt_len;
        for (int64_t i = 0; i < d->n_prompts; i++) {
            int64_t len = d->offsets[i + 1] - d->offsets[i];
            if (len + maxc > cfg->data_max_seq_len)
                return tl_fail(err, TL_ERR_INPUT,
                               "%s: prompt %lld has %lld tokens: with task.max_completion_length %d it "
                               "passes data.max_seq_len %d (the context of a rollout)",
                               d->path, (long long)i, (long long)len, maxc, cfg->data_max_seq_len);
        }
    }
    tl_rl_run *rr = calloc(1, sizeof *rr);
    if (!rr) return tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    int n = S->pool.n_slots;
    int active = cfg->adapters_per_step > 0 && cfg->adapters_per_step < n ? cfg->adapters_per_step : n;
    int64_t max_prompts = (int64_t)active * cfg->examples_per_adapter;
    tl_status s = TL_OK;
    if (max_prompts * cfg->task_num_generations > (1 << 24))
        s = tl_fail(err, TL_ERR_INPUT,
                    "train.examples_per_adapter x active adapters x task.num_generations = %lld "
                    "completions per step: too many (at most %d)",
                    (long long)(max_prompts * cfg->task_num_generations), 1 << 24);
    rr->G = cfg->task_num_generations, rr->max_prompts = (int)max_prompts;
    if (!s) {
        rr->prompts = calloc((size_t)max_prompts, sizeof *rr->prompts);
        rr->stats = calloc((size_t)n, sizeof *rr->stats);
        rr->metrics = malloc(METRICS_CAP);
        if (!rr->prompts || !rr->stats || !rr->metrics) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    }
    if (!s) s = load_reward(rr, S, cfg, err);
    tl_rl_opts o = {.adv = cfg->task_type == TL_TASK_RLOO ? TL_RL_ADV_RLOO : TL_RL_ADV_GRPO,
                    .loss = {.norm = (tl_rl_norm)cfg->task_loss_type,
                             .beta = cfg->task_beta,
                             .eps_low = cfg->task_epsilon,
                             .eps_high = cfg->task_epsilon_high > 0 ? cfg->task_epsilon_high : cfg->task_epsilon,
                             .max_completion = maxc},
                    .num_generations = cfg->task_num_generations,
                    .scale_rewards = cfg->task_scale_rewards,
                    .temperature = (float)cfg->task_temperature,
                    .top_p = (float)cfg->task_top_p,
                    .max_prompt_len = (int)max_prompt,
                    .max_prompts = (int)max_prompts,
                    .micro_batch_tokens = cfg->micro_batch_tokens};
    if (!s) { /* stop tokens: the chat end and end-of-text tokens of the model's tokenizer, when it has one */
        tl_tokenizer *tok = NULL;
        tl_error ignore;
        if (tl_tokenizer_for_model(cfg->model_path, &tok, &ignore) == TL_OK) {
            const char *eos_names[] = {"<|im_end|>", "<|endoftext|>"};
            for (int i = 0; i < 2; i++) {
                int32_t id = tl_tokenizer_token_id(tok, eos_names[i]);
                if (id >= 0 && id < S->model.cfg.vocab_size) o.eos[o.n_eos++] = id;
            }
            tl_tokenizer_free(tok);
        }
    }
    if (!s) s = tl_rl_create(&S->model, &S->pool, &rr->reward, &o, &rr->rl, err);
    if (s) {
        tl_rl_run_free(rr, S->be);
        return s;
    }
    *out = rr;
    return TL_OK;
}

tl_status tl_rl_run_step(tl_rl_run *rr, tl_session *S, const tl_step_batch *B, double *adapter_loss, tl_error *err) {
    int64_t n_units = 0, skipped = 0;
    const tl_unit_place *u = tl_batcher_units(S->batcher, &n_units, &skipped);
    const tl_prompt_dataset *pd = &S->prompt_train;
    for (int64_t i = 0; i < n_units; i++) {
        int64_t p = u[i].unit;
        const tl_host_mb *mb = &B->mb[u[i].mb];
        /* the pool slot is the one the step's batch gives the prompt's segment */
        int32_t row = mb->cu_seqlens[u[i].seq], slot = u[i].adapter;
        for (int g = 0; g < mb->n_seg; g++)
            if (mb->segs[g].row0 <= row && row < mb->segs[g].row1) slot = mb->segs[g].slot;
        /* the engine's row seed of the prompt's first row hashes (run.seed, adapter name, the adapter's own step,
         * the prompt's index among its prompts of the step): the sampling stream depends on nothing else */
        rr->prompts[i] = (tl_rl_prompt){.tokens = pd->tokens + pd->offsets[p],
                                        .n = (int)(pd->offsets[p + 1] - pd->offsets[p]),
                                        .slot = slot,
                                        .seed = mb->row_seed[mb->cu_seqlens[u[i].seq]]};
    }
    rr->n_prompts = (int)n_units;
    TL_TRY(tl_rl_step(rr->rl, &S->pool, S->have_ref ? &S->ref : NULL, &rr->reward, S->ws, rr->prompts, (int)n_units,
                      rr->stats, &rr->timing, err));
    for (int i = 0; i < B->n_active; i++) adapter_loss[B->active[i]] = rr->stats[B->active[i]].loss;
    return TL_OK;
}

const char *tl_rl_run_metrics(tl_rl_run *rr, const tl_session *S, const tl_step_batch *B) {
    char *b = rr->metrics;
    size_t k = 0, cap = METRICS_CAP;
    tl_rl_stats all = {0};
    for (int i = 0; i < B->n_active; i++) {
        const tl_rl_stats *s = &rr->stats[B->active[i]];
        all.completions += s->completions, all.tokens += s->tokens, all.groups += s->groups;
        all.clipped += s->clipped, all.reward += s->reward, all.reward_sq += s->reward_sq;
        all.group_std += s->group_std, all.kl += s->kl, all.eos_stops += s->eos_stops;
    }
    double nc = all.completions ? (double)all.completions : NAN, nt = all.tokens ? (double)all.tokens : NAN;
    char j[8][48];
#define PUT(...)                                                                                                       \
    do {                                                                                                               \
        int w_ = snprintf(b + k, k < cap ? cap - k : 0, __VA_ARGS__);                                                  \
        if (w_ > 0) k = k + (size_t)w_ < cap ? k + (size_t)w_ : cap - 1;                                               \
    } while (0)
    const tl_rl_timing *t = &rr->timing;
    PUT(", \"reward\": %s, \"reward_std\": %s, \"kl\": %s, \"completion_length\": %s, \"clip_ratio\": %s, "
        "\"eos_fraction\": %s, \"rollout_tokens\": %lld, \"rollout_tokens_per_s\": %s, \"train_tokens_per_s\": %s",
        tl_json_num(j[0], "%.6f", all.reward / nc), tl_json_num(j[1], "%.6f", all.group_std / (double)all.groups),
        tl_json_num(j[2], "%.6g", all.kl / nt), tl_json_num(j[3], "%.3f", (double)all.tokens / nc),
        tl_json_num(j[4], "%.6f", (double)all.clipped / nt), tl_json_num(j[5], "%.4f", (double)all.eos_stops / nc),
        (long long)t->rollout_tokens, tl_json_num(j[6], "%.1f", (double)t->rollout_tokens / t->rollout_s),
        tl_json_num(j[7], "%.1f", (double)t->train_tokens / t->train_s));
    /* per adapter: all of them up to METRICS_USERS, else an even sample of the step's */
    int n = B->n_active, shown = n < METRICS_USERS ? n : METRICS_USERS;
    PUT(", \"users\": {");
    for (int i = 0; i < shown; i++) {
        int a = B->active[(int)((int64_t)i * n / shown)];
        const tl_rl_stats *s = &rr->stats[a];
        double c = s->completions ? (double)s->completions : NAN, m = s->reward / c;
        double var = c > 1 ? (s->reward_sq - c * m * m) / (c - 1) : NAN;
        char nb[TL_ESC_CAP * 2], esc[TL_ESC_CAP];
        /* a JSON string of the name: tl_escape leaves no control byte, quotes and backslashes are escaped here */
        const char *e = tl_escape(esc, sizeof esc, S->pool.names[a]);
        size_t q = 0;
        for (; *e && q + 3 < sizeof nb; e++) {
            if (*e == '"' || *e == '\\') nb[q++] = '\\';
            nb[q++] = *e;
        }
        nb[q] = 0;
        PUT("%s\"%s\": {\"reward\": %s, \"reward_std\": %s, \"kl\": %s, \"completion_length\": %s, \"clip_ratio\": %s",
            i ? ", " : "", nb, tl_json_num(j[0], "%.6f", m),
            tl_json_num(j[1], "%.6f", isnan(var) ? NAN : sqrt(var > 0 ? var : 0)),
            tl_json_num(j[2], "%.6g", s->kl / (double)s->tokens), tl_json_num(j[3], "%.3f", (double)s->tokens / c),
            tl_json_num(j[4], "%.6f", (double)s->clipped / (double)s->tokens));
        /* the adapter's first completion of the step (token ids, its prompt's first sample): what it writes now */
        int first = -1;
        for (int pi = 0; pi < rr->n_prompts && first < 0; pi++)
            if (rr->prompts[pi].slot == a) first = pi * rr->G;
        const int32_t *toks = NULL;
        int n_toks = first >= 0 ? tl_rl_completion(rr->rl, first, &toks) : 0;
        PUT(", \"sample\": [");
        for (int ti = 0; ti < n_toks; ti++) PUT("%s%d", ti ? ", " : "", (int)toks[ti]);
        PUT("]}");
    }
    PUT("}");
#undef PUT
    return b;
}

/* Mean reward per adapter over its eval prompts' sampled answers, answered by `policy` (NULL: the base model). */
static tl_status eval_variant(tl_rl_run *rr, tl_session *S, const tl_config *cfg, const tl_adapter_map *map,
                              const tl_lora_pool *policy, double *sum, int64_t *count, tl_error *err) {
    const tl_prompt_dataset *pd = &S->prompt_eval;
    const int G = rr->G;
    for (int a = 0; a < map->n_adapters; a++) {
        sum[a] = 0, count[a] = 0;
        for (int64_t k0 = 0; k0 < map->n_examples[a];) {
            int n = 0;
            for (; k0 < map->n_examples[a] && n < rr->max_prompts; k0++, n++) {
                int64_t p = map->examples[a][k0];
                /* the same stream for every variant: the comparison differs in the policy only */
                rr->prompts[n] = (tl_rl_prompt){.tokens = pd->tokens + pd->offsets[p],
                                                .n = (int)(pd->offsets[p + 1] - pd->offsets[p]),
                                                .slot = a,
                                                .seed = tl_mix64(cfg->seed ^ tl_mix64(0x6576616cULL + (uint64_t)p))};
            }
            TL_TRY(tl_rl_sample_score(rr->rl, policy, &rr->reward, rr->prompts, n, err));
            for (int c = 0; c < n * G; c++) sum[a] += tl_rl_reward(rr->rl, c);
            count[a] += (int64_t)n * G;
        }
    }
    return TL_OK;
}

tl_status tl_rl_run_eval(tl_rl_run *rr, tl_session *S, const tl_config *cfg, const tl_ui *ui, tl_error *err) {
    tl_adapter_map map;
    TL_TRY(tl_adapter_map_build_prompt(&S->prompt_eval, cfg->adapter_key, S->pool.names, S->pool.n_slots, &map, err));
    int n = map.n_adapters, nv = S->have_ref ? 3 : 2;
    double *sum = calloc((size_t)n * 3, sizeof(double));
    int64_t *cnt = calloc((size_t)n * 3, sizeof(int64_t));
    tl_status s = sum && cnt ? TL_OK : tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    const tl_lora_pool *variants[3] = {&S->pool, NULL, S->have_ref ? &S->ref : NULL};
    for (int v = 0; !s && v < nv; v++)
        s = eval_variant(rr, S, cfg, &map, variants[v], sum + (size_t)v * n, cnt + (size_t)v * n, err);
    cJSON *root = s ? NULL : cJSON_CreateObject(), *arr = NULL;
    if (!s && (!root || !(arr = cJSON_AddArrayToObject(root, "adapters"))))
        s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
    if (!s) {
        cJSON_AddStringToObject(root, "task", tl_task_type_names[cfg->task_type]);
        cJSON_AddNumberToObject(root, "step", (double)cfg->steps);
        fprintf(ui->out,
                "RL evaluation on %s (mean reward of %d sampled answers per prompt, each user's own reward "
                "model):\n  %-28s %8s %10s %10s%s\n",
                S->prompt_eval.path, rr->G, "adapter", "prompts", "trained", "base", S->have_ref ? "      start" : "");
    }
    char nb[TL_ESC_CAP];
    for (int a = 0; !s && a < n; a++) {
        if (!cnt[a]) continue;
        double m[3];
        for (int v = 0; v < nv; v++) m[v] = sum[(size_t)v * n + a] / (double)cnt[(size_t)v * n + a];
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
            break;
        }
        cJSON_AddStringToObject(o, "name", map.names[a]);
        cJSON_AddNumberToObject(o, "prompts", (double)map.n_examples[a]);
        cJSON_AddNumberToObject(o, "reward", m[0]);
        cJSON_AddNumberToObject(o, "reward_base", m[1]);
        if (nv == 3) cJSON_AddNumberToObject(o, "reward_start", m[2]);
        if (a < 50) {
            fprintf(ui->out, "  %-28.28s %8lld %10.4f %10.4f", tl_escape(nb, sizeof nb, map.names[a]),
                    (long long)map.n_examples[a], m[0], m[1]);
            if (nv == 3) fprintf(ui->out, " %10.4f", m[2]);
            fputc('\n', ui->out);
        }
    }
    if (!s) {
        char *text = cJSON_Print(root);
        char path[TL_PATH_MAX + 32];
        if (!text) s = tl_fail(err, TL_ERR_RUNTIME, "out of host memory");
        if (!s) s = tl_path_join(path, sizeof path, cfg->output_dir, "rl_eval.json", err);
        if (!s) s = tl_write_file_atomic(path, text, strlen(text), err);
        free(text);
    }
    cJSON_Delete(root);
    free(sum), free(cnt);
    tl_adapter_map_free(&map);
    return s;
}
