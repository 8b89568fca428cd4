/* tl_eval: per-adapter loss and perplexity on held-out SFT data, with the base model (adapter off) on the same
 * examples as the point of comparison. */
#ifndef TL_EVAL_H
#define TL_EVAL_H

#include <stdio.h>

#include "data/tl_batcher.h"
#include "trainer/model/tl_model.h"

typedef struct {
    int n;                   /* = pool size; adapters without eval examples have tokens = 0 */
    int64_t *examples, *tokens; /* target tokens per adapter */
    double *loss, *base_loss;   /* mean CE per target token, with the adapter and with the bare base model */
    double *cross; /* [n * n_cols] or NULL: cross[a * n_cols + b] = adapter a's loss on adapter b's users' examples */
    /* Above TL_EVAL_CROSS_MAX adapters, the cross matrix of an evenly spaced sample of them (NULL: none):
     * sample_cross[i * n_sample + j] = adapter sample[i]'s loss on adapter sample[j]'s users' examples. */
    int n_sample;
    const int32_t *sample; /* [n_sample] adapter indices, borrowed */
    double *sample_cross;  /* [n_sample * n_sample], owned */
    int n_cols;    /* columns of cross (= n unless a tl_eval_part named others) */
    /* Generation metrics (data.eval_generate > 0), borrowed from a tl_eval_rouge_result, or NULL: mean ROUGE-1 /
     * ROUGE-L F of greedy answers vs the reference responses, with the adapter and with the base model. */
    const double *rouge1, *rougeL, *base_rouge1, *base_rougeL;
} tl_eval_result;

/* Pools up to this size get the cross matrix in tailor eval (it costs one pass over the data per adapter). */
#define TL_EVAL_CROSS_MAX 32

/* One rank's part of an evaluation split across ranks (NULL: the whole evaluation).
 * only: [n_slots] evaluate just the adapters with only[a] != 0 (NULL = all of the pool); the others come out as
 *       adapters without examples (tokens 0, NaN losses) and as cross rows of zeros.
 * cols, n_cols: the cross matrix's columns are these adapters' users (NULL = the pool's own adapters): a pool
 *       that holds one rank's adapters evaluates them on the users of the whole run's adapters. */
typedef struct {
    const uint8_t *only;
    char *const *cols;
    int n_cols;
} tl_eval_part;

/* How an evaluation runs (SFT and preference alike). */
typedef struct {
    tl_adapter_key key;       /* users matched to adapters by name through adapter.key */
    int micro_batch_tokens;   /* tokens per forward pass */
    int max_seq_len;          /* longer examples are truncated as in training */
    int with_base;            /* SFT: also the bare base model's loss (else base_loss is NaN) */
    int with_cross;           /* also the cross matrix (one pass over the data per adapter) */
    const tl_eval_part *part; /* NULL: the whole evaluation */
} tl_eval_opts;

/* Evaluates every adapter of the pool on its own users' examples of ds. The cross matrix is [n, n_cols]. */
tl_status tl_eval_run(const tl_model *m, tl_lora_pool *p, tl_workspace *ws, const tl_sft_dataset *ds,
                      const tl_eval_opts *o, tl_eval_result *res, tl_error *err);
void tl_eval_result_free(tl_eval_result *r);

/* Totals over adapters, weighted by target tokens. */
void tl_eval_totals(const tl_eval_result *r, double *loss, double *base_loss, int64_t *tokens);
/* The table on a stream and the JSON document at path (atomic). */
void tl_eval_print(const tl_eval_result *r, const tl_lora_pool *p, FILE *f);
tl_status tl_eval_write_json(const tl_eval_result *r, const tl_lora_pool *p, const char *path, int64_t step,
                             tl_error *err);

#endif
