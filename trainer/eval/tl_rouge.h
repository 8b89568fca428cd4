/* tl_rouge: ROUGE-1 and ROUGE-L exactly as Google's rouge-score 0.1.2 computes them with
 * RougeScorer(["rouge1", "rougeL"], use_stemmer=False), and tl_eval_rouge, which scores greedy generations of
 * held-out SFT examples per adapter (and with the bare base model) against the reference responses.
 *
 * Tokenization (rouge-score's DefaultTokenizer): Python's str.lower(), every run of characters outside [a-z0-9]
 * becomes one space, split on whitespace, empty tokens dropped. Input is UTF-8; non-ASCII characters are
 * separators, except the two whose Python lowercase contains an ASCII letter: U+0130 (lowercases to "i" plus a
 * combining dot, so it yields "i") and U+212A KELVIN SIGN (lowercases to "k"). */
#ifndef TL_ROUGE_H
#define TL_ROUGE_H

#include <stdint.h>

#include "data/tl_batcher.h"
#include "data/tl_dataset.h"
#include "data/tl_tokenizer.h"
#include "trainer/model/tl_model.h"

typedef struct {
    double precision, recall, fmeasure;
} tl_rouge_prf;

typedef struct {
    tl_rouge_prf rouge1, rougeL;
} tl_rouge_score;

/* Scores prediction against reference (NUL-terminated UTF-8). ROUGE-1: clipped unigram overlap / prediction
 * tokens (precision), / reference tokens (recall); ROUGE-L: LCS length likewise (0 when either side has no
 * tokens); fmeasure = 2PR/(P+R), 0 when P+R = 0. Memory: O(tokens), the LCS keeps two rows. Should the host run
 * out of memory every field is NaN. */
void tl_rouge(const char *prediction, const char *reference, tl_rouge_score *out);

/* Mean ROUGE F-measures per adapter of the pool over its held-out examples. */
typedef struct {
    int n;              /* = pool size */
    int64_t *examples;  /* [n] examples scored per adapter (0: its means are NaN) */
    double *rouge1, *rougeL;           /* [n] mean F with the example's own adapter */
    double *base_rouge1, *base_rougeL; /* [n] mean F with the bare base model on the same examples; NaN when
                                          with_base = 0 */
} tl_eval_rouge_result;

/* Called once per generated answer (NULL: not called): example index into ds, the adapter slot the example
 * belongs to, whether the answer came from the base model, the decoded answer and the decoded reference. */
typedef void (*tl_eval_rouge_cb)(void *ctx, int64_t example, int slot, int is_base, const char *answer,
                                 const char *reference);

/* For every example of map (built over ds with the pool's names, as tl_adapter_map_build does for tl_eval_run),
 * greedily generates up to max_new_tokens tokens from the example's prompt (its first prompt_len tokens) with its
 * adapter's slot of p, stopping at <|im_end|> or <|endoftext|> when the tokenizer has them; decodes the answer and
 * the example's response tokens (those after the prompt, one trailing end token among those dropped) and scores
 * them with tl_rouge. with_base also generates with the base model (slot -1). Up to batch examples are decoded
 * side by side (batch <= 0: 16). Examples with an empty prompt, or whose prompt + max_new_tokens exceed the
 * model's context, are TL_ERR_INPUT naming the example. */
typedef struct {
    int max_new_tokens;  /* >= 1 */
    int with_base;       /* also answer with the bare base model */
    int batch;           /* examples decoded side by side; <= 0: 16 */
    tl_eval_rouge_cb cb; /* NULL: not called */
    void *cb_ctx;
} tl_eval_rouge_opts;

tl_status tl_eval_rouge(const tl_model *m, const tl_lora_pool *p, const tl_tokenizer *tok, const tl_sft_dataset *ds,
                        const tl_adapter_map *map, const tl_eval_rouge_opts *o, tl_eval_rouge_result *res,
                        tl_error *err);
void tl_eval_rouge_result_free(tl_eval_rouge_result *r);

#endif
