/* tl_dataset: the HDF5 SFT dataset (schema in docs/data-format.md), loaded into memory and validated on open.
 *
 * Root attributes tailor_format = 1 (integer), kind = "sft". /users/name [U] strings, optional /users/group
 * [U]; /sft/tokens int32 [T], /sft/offsets int64 [N+1] (0, nondecreasing, last = T), /sft/prompt_len int32 [N]
 * (0 <= prompt_len <= length), /sft/user int32 [N] (index into /users). Every token < model_vocab; the
 * optional root attribute vocab_size must not exceed model_vocab, and every token is also < vocab_size when
 * that is present. User and group names are non-empty valid UTF-8 (trailing NUL padding stripped); user names
 * are unique. Each violation is TL_ERR_INPUT naming the file, the dataset and the index ("<file>: <dataset or
 * attribute>: <problem>"). An empty dataset (N = 0) is an error, and so is one where no example has a token
 * to train on (a response token at position >= 1). Every object must be reached through hard links only and
 * store its data in this file (contiguous or chunked; filters deflate, shuffle, fletcher32), and its declared
 * size must be stored in the file before anything is allocated (docs/data-format.md, "What is trusted and
 * what is checked"). The open runs first in a child process (tl_h5_isolated below) so a libhdf5 crash or hang
 * on a corrupt file is an error line, not a dead run. HDF5's own error printing is silenced during the open
 * and the caller's setting restored. */
#ifndef TL_DATASET_H
#define TL_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

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

/* The root attribute `kind` of a tailor HDF5 file ("sft", "preference", ...), copied into kind[cap], so a
 * caller can pick the reader (tl_sft_open or tl_pref_open in tl_pref.h) before opening the file. Only the
 * attribute is read; the reader of that kind validates the rest. A file that cannot be opened, is not HDF5,
 * has no string `kind` or one of cap bytes or more is TL_ERR_INPUT. */
tl_status tl_h5_kind(const char *path, char *kind, size_t cap, tl_error *err);

/* ------------------------------------------------------------------------------------------------------------
 * Building blocks of the readers of each kind (tl_sft_open in dataset.c, tl_pref_open in pref_dataset.c), so
 * the schema rules common to all kinds are written and checked once. The trainer needs none of this. Every
 * message has the form "<file>: <dataset or attribute>: <problem>". */

typedef struct tl_h5_reader tl_h5_reader;

/* Runs job(path, arg, err) in a forked child process (its stdout/stderr on /dev/null, HDF5 error printing off)
 * and returns its status and message; a child that crashes (a signal, or an exit without reporting, as under
 * AddressSanitizer) or runs longer than the limit (killed) is TL_ERR_INPUT "<file>: libhdf5 crashed|hung
 * reading it ...: the file is corrupt". The child's results are discarded: the caller runs the job again in
 * its own process once this returns TL_OK. Environment: TAILOR_HDF5_ISOLATE=0 skips the child (trusted files;
 * returns TL_OK at once), TAILOR_HDF5_TIMEOUT_S sets the limit (default 60 s + 1 s per 16 MiB of file); a
 * malformed value is TL_ERR_INPUT naming the variable. tl_sft_open, tl_pref_open and tl_h5_kind all use it.
 * The job must touch nothing but the file, HDF5 and memory (no MPI, CUDA, OpenMP or stdio). */
typedef tl_status (*tl_h5_job)(const char *path, void *arg, tl_error *err);
tl_status tl_h5_isolated(const char *path, tl_h5_job job, void *arg, tl_error *err);

/* The open every kind shares. A kind's reader describes its dataset struct: where it keeps the common fields
 * (fields), how it reads and checks its own arrays once the root attributes (kind, model_vocab) and the users
 * table are read (body), and how it is freed. tl_h5_open_isolated zeroes *out, runs the whole open in the
 * isolation child (tl_h5_isolated, into a scratch struct freed there) and then in this process: reader open, a
 * copy of the path, root attributes, users table, body, reader close; on any failure *out is freed (zeroed). */
typedef struct {
    char **path;
    int *n_users;
    char ***user_names, ***user_groups;
    int64_t *vocab_size_attr;
} tl_h5_common;
typedef struct {
    const char *kind; /* the root attribute `kind` */
    size_t size;      /* of the dataset struct */
    tl_h5_common (*fields)(void *ds);
    tl_status (*body)(tl_h5_reader *r, void *ds, int model_vocab, tl_error *err);
    void (*free)(void *ds);
} tl_h5_kind_reader;
tl_status tl_h5_open_isolated(const char *path, int model_vocab, const tl_h5_kind_reader *k, void *out,
                              tl_error *err);

/* Checks that path is a readable file (not a directory) in HDF5 format and opens it read-only. HDF5's own error
 * printing is off from here until tl_h5_reader_close, which restores the caller's setting. `path` must outlive
 * the reader. */
tl_status tl_h5_reader_open(const char *path, tl_h5_reader **out, tl_error *err);
/* Closes and frees r (NULL is allowed) and returns st; a failure to close when st is TL_OK is TL_ERR_RUNTIME. */
tl_status tl_h5_reader_close(tl_h5_reader *r, tl_status st, tl_error *err);
/* Root attributes: tailor_format = 1, kind = `kind`, optional vocab_size > 0 and <= model_vocab (when
 * model_vocab > 0); *vocab_size_attr = 0 when that attribute is absent. */
tl_status tl_h5_read_root(tl_h5_reader *r, const char *kind, int model_vocab, int64_t *vocab_size_attr,
                          tl_error *err);
/* /users/name (unique, non-empty, UTF-8) and the optional /users/group (one non-empty name per user; *groups =
 * NULL when absent). Whatever was read is left in the outputs even on failure: free with tl_free_strings. */
tl_status tl_h5_read_users(tl_h5_reader *r, int *n_users, char ***names, char ***groups, tl_error *err);
void tl_free_strings(char **s, int64_t n); /* frees s[0..n) and s; NULL is allowed */
/* 1 when s[0..len) is well-formed UTF-8 (no overlong forms, no surrogates, at most U+10FFFF): the rule for every
 * name in a dataset, also applied by `tailor data build` to what it writes. */
int tl_utf8_valid(const unsigned char *s, size_t len);
/* A rank-1 dataset of exactly int32 / int64 (either byte order), read whole into a new malloc'd array. */
tl_status tl_h5_read_i32(tl_h5_reader *r, const char *name, int32_t **out, int64_t *len, tl_error *err);
tl_status tl_h5_read_i64(tl_h5_reader *r, const char *name, int64_t **out, int64_t *len, tl_error *err);
/* A rank-1 int32 (width 4) or int64 (width 8) dataset read in pieces, for files too large to hold: open checks it
 * as tl_h5_read_i32/i64 do (links, storage, dtype, declared size against the file) without reading it and gives
 * its length; read copies elements [start, start + count) into out. Close every array before the reader. */
typedef struct tl_h5_array tl_h5_array;
tl_status tl_h5_array_open(tl_h5_reader *r, const char *name, size_t width, tl_h5_array **out, int64_t *len,
                           tl_error *err);
tl_status tl_h5_array_read(tl_h5_array *a, int64_t start, int64_t count, void *out, tl_error *err);
void tl_h5_array_close(tl_h5_array *a); /* NULL is allowed */
/* Whether the object `name` (an absolute path) exists, every component of it a hard link (a soft or external
 * link on the way is TL_ERR_INPUT): for optional datasets. */
tl_status tl_h5_has(tl_h5_reader *r, const char *name, int *exists, tl_error *err);

/* An offsets array off[0..n] (n >= 0 items) into a token array of n_tokens: off[0] = 0, never decreasing,
 * off[n] = n_tokens. `name` and `tokens_name` are the datasets named in the messages. */
tl_status tl_check_offsets(const char *path, const char *name, const int64_t *off, int64_t n,
                           const char *tokens_name, int64_t n_tokens, tl_error *err);
/* 0 <= user[i] < n_users for every i < n; a message names `item` i ("example 3", "pair 3"). */
tl_status tl_check_user_range(const char *path, const char *name, const char *item, const int32_t *user, int64_t n,
                              int n_users, tl_error *err);
/* Every token of items 0..n-1 (item i is tokens[off[i] : off[i+1]]) is >= 0, < model_vocab when that is > 0 and
 * < vocab_size_attr when that is > 0; a message names the item and the position in it. */
tl_status tl_check_tokens(const char *path, const char *name, const char *item, const int32_t *tokens,
                          const int64_t *off, int64_t n, int model_vocab, int64_t vocab_size_attr, tl_error *err);

#endif
