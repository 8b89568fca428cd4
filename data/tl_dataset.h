/* tl_dataset: the HDF5 SFT dataset (schema in docs/data-format.md), loaded into memory and validated on open.
 *
 * Root attributes tailor_format = 1 (integer), kind = "sft". /users/name [U] strings, optional /users/group
 * [U]; /sft/tokens int32 [T], /sft/offsets int64 [N+1] (0, nondecreasing, last = T), /sft/prompt_len int32 [N]
 * (0 <= prompt_len <= length), /sft/user int32 [N] (index into /users). Every token < model_vocab; the
 * optional root attribute vocab_size must not exceed model_vocab, and every token is also < vocab_size when
 * that is present. User and group names are non-empty valid UTF-8 (trailing NUL padding stripped); user names
 * are unique. Each violation is TL_ERR_INPUT naming the file, the dataset and the index ("<file>: <dataset or
 * attribute>: <problem>"). An empty dataset (N = 0) is an error. HDF5's own error printing is silenced during
 * the open and the caller's setting restored. */
#ifndef TL_DATASET_H
#define TL_DATASET_H

#include <stdint.h>

#include "../kernels/tl_status.h"

typedef struct {
    char *path;
    int n_users;
    char **user_names;  /* [n_users], UTF-8 */
    char **user_groups; /* [n_users] or NULL when /users/group is absent */
    int64_t n_examples, n_tokens;
    int32_t *tokens;     /* [n_tokens] */
    int64_t *offsets;    /* [n_examples + 1] */
    int32_t *prompt_len; /* [n_examples] */
    int32_t *user;       /* [n_examples] */
    int64_t vocab_size_attr; /* 0 when absent */
} tl_sft_dataset;

/* model_vocab <= 0 skips the vocabulary check (tailor inspect without a model). */
tl_status tl_sft_open(const char *path, int model_vocab, tl_sft_dataset *out, tl_error *err);
void tl_sft_free(tl_sft_dataset *ds);

#endif
