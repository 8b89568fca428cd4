/* tl_checkpoint: the complete training state of a run, one directory per saved step, crash-safe.
 *
 * Layout (docs/export.md has it in full):
 *   <run_dir>/checkpoints/step-<%08lld>/config.yaml          the resolved config (tl_config_write_yaml)
 *                                       state.safetensors    params, m, v F32 [n_slots, P]; steps I64 [n_slots];
 *                                                            cursors I64 [n_slots, 2]; global_step I64 [1];
 *                                                            metadata format, adapter_names, rank, targets, P,
 *                                                            n_layers; a reward model's score head is the last
 *                                                            hidden_size floats of each row of params, m, v
 *                                       COMPLETE             written last
 * A checkpoint is built in "<run_dir>/checkpoints/.tmp-step-<n>-<pid>" and renamed into place, so a crash at any
 * moment leaves either no step-<n> or a complete one. Loading restores every bit of the state, so a resumed run
 * continues exactly as if it had not stopped. */
#ifndef TL_CHECKPOINT_H
#define TL_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "data/tl_batcher.h"
#include "kernels/tl_backend.h"
#include "trainer/config/tl_config.h"
#include "trainer/model/tl_model.h"
#include "trainer/run/tl_store.h"

#define TL_CHECKPOINT_FORMAT "tailor-checkpoint-1"
/* The largest step count, cursor or epoch a checkpoint may hold (2^53: exact as a JSON number). */
#define TL_CHECKPOINT_INT_MAX ((int64_t)1 << 53)

/* Saves the state after `global_step` steps. cursors: [p->n_slots] (adapter i of the batcher is slot i); may be
 * NULL, then saved as zeros. After the new checkpoint is in place, older complete checkpoints beyond the newest
 * `keep` are removed (keep <= 0 keeps all); the one just written is never removed, even if its step is lower
 * than others'. Leftover temporary directories of crashed saves are removed too (one process writes a run's
 * checkpoints). Saving a step that already has a checkpoint replaces it. */
tl_status tl_checkpoint_save(const char *run_dir, const tl_config *cfg, const tl_lora_pool *p, tl_backend *be,
                             int64_t global_step, const tl_cursor *cursors, int keep, tl_error *err);

/* The same with params, m and v read through rd (tl_model.h) while the state file is written, not from p's
 * memory: p gives the layout, names, steps and n_slots (its params, m, v may be NULL). For a many-process run,
 * where rank 0 writes the whole run's state gathered from the ranks chunk by chunk. */
tl_status tl_checkpoint_save_from(const char *run_dir, const tl_config *cfg, const tl_lora_pool *p,
                                  const tl_state_reader *rd, int64_t global_step, const tl_cursor *cursors, int keep,
                                  tl_error *err);

/* The same for a run with an adapter store (tl_store.h): the checkpoint holds the store's manifest (written by
 * tl_store_commit, which first makes the records it names durable) instead of a state file; after the older
 * checkpoints are pruned, so are the store segments none of the kept manifests uses. */
tl_status tl_checkpoint_save_store(const char *run_dir, const tl_config *cfg, tl_store *store, int64_t global_step,
                                   int64_t round_start, int keep, tl_error *err);
/* Whether a checkpoint directory is a store checkpoint (holds manifest.bin). */
int tl_checkpoint_has_store(const char *ckpt_dir);

/* The newest complete checkpoint of run_dir: the step-<digits> directory with the largest step that holds a
 * COMPLETE file. Temporary directories and directories without COMPLETE are ignored. *found = 0 (and TL_OK)
 * when there is none, including when run_dir/checkpoints does not exist. */
tl_status tl_checkpoint_latest(const char *run_dir, char *path, size_t cap, int *found, tl_error *err);

/* Restores a checkpoint into an already built pool (same adapters in the same order, same rank, targets and
 * P; TL_ERR_INPUT naming the checkpoint and the mismatch otherwise): uploads params, m, v, sets p->steps,
 * *global_step and cursors ([p->n_slots], may be NULL). Names, sizes, dtypes, shapes and the integer state are
 * validated before anything is changed; only an I/O error or a non-finite value (TL_ERR_INPUT, naming the tensor)
 * met while reading the large tensors can leave the pool partly loaded (the caller must then stop). */
tl_status tl_checkpoint_load(const char *ckpt_dir, tl_lora_pool *p, tl_backend *be, int64_t *global_step,
                             tl_cursor *cursors, tl_error *err);

/* Every check of tl_checkpoint_load but the large tensors' values, against a layout-only pool (names, rank,
 * targets, P; its params may be NULL): for readers that stream the rows themselves (exports). */
tl_status tl_checkpoint_check(const char *ckpt_dir, const tl_lora_pool *layout, tl_error *err);

/* The same for a pool that holds some of the run's adapters (one rank's share under user_shard): the
 * checkpoint must hold the run's adapters run_names[n_run] in that order (with p's rank, targets and P); slot a
 * of p receives row rows[a] (p->names[a] must be run_names[rows[a]]), reading only those rows of the large
 * tensors, so a rank's memory holds its own share. cursors: [p->n_slots] or NULL. */
tl_status tl_checkpoint_load_rows(const char *ckpt_dir, tl_lora_pool *p, tl_backend *be, char *const *run_names,
                                  int n_run, const int32_t *rows, int64_t *global_step, tl_cursor *cursors,
                                  tl_error *err);

/* The config the checkpoint was written with (config.yaml through tl_config_load: same strict checks). */
tl_status tl_checkpoint_read_config(const char *ckpt_dir, tl_config *cfg, tl_error *err);

/* The adapter names in slot order, so the pool can be rebuilt before loading. *names is a malloc'd array of
 * *n malloc'd strings; free with tl_checkpoint_free_names. */
tl_status tl_checkpoint_read_names(const char *ckpt_dir, char ***names, int *n, tl_error *err);
void tl_checkpoint_free_names(char **names, int n);

/* The global step of a checkpoint (from its state file), without loading it. */
tl_status tl_checkpoint_read_step(const char *ckpt_dir, int64_t *global_step, tl_error *err);

/* Sets the outputs of an earlier run aside, so that export, eval and a later resume never take them for the
 * current run's, and nothing is deleted. after < 0 (train.resume: never): checkpoints/, adapters/, metrics.jsonl,
 * eval.json, report.html and config.yaml of run_dir, when any of the first four exists; after >= 0 (a resume
 * from a given checkpoint at step `after`): the complete checkpoints of run_dir past that step, and a copy of
 * metrics.jsonl (which the resumed run cuts back to step `after`). They are moved
 * (rename, same file system) into a folder built as <run_dir>/previous/.tmp-<stamp>-<pid> and renamed to
 * <run_dir>/previous/<UTC stamp YYYYMMDDTHHMMSSZ>[-k] (its path in dest), so a crash leaves them whole in the
 * temporary folder. *moved = 0 when there was nothing to move. */
tl_status tl_run_set_aside(const char *run_dir, int64_t after, char *dest, size_t cap, int *moved, tl_error *err);

#endif
