/* tl_io: the base I/O layer of tailor. Every layer above kernels/ reads and writes files through these, so that
 * each rule is written once:
 *
 * - Crash-safe outputs: checkpoints and exports are built under a temporary name, flushed to disk and renamed
 *   into place, so a reader (or a resumed run) sees either the old complete state or the new one, never a mix.
 * - Hostile inputs: a path from a config, a command line or a file's metadata can name a FIFO, a device or a
 *   directory. A plain open() of a FIFO waits for a writer forever and a read of /dev/zero never ends, so inputs
 *   are opened without blocking and checked on the descriptor held (tl_open_regular); whole-file reads are
 *   bounded; names from metadata are confined (tl_plain_name, tl_path_inside).
 *
 * Every failure is one line naming the path and the errno text. */
#ifndef TL_IO_H
#define TL_IO_H

#include <stdio.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

/* out = a + "/" + b (no doubled slash when a ends in one). TL_ERR_RUNTIME if it does not fit in cap. */
tl_status tl_path_join(char *out, size_t cap, const char *a, const char *b, tl_error *err);
/* The directory that holds path ("." for a bare name; trailing slashes of path are ignored). */
tl_status tl_path_parent(const char *path, char *out, size_t cap, tl_error *err);
/* path without trailing slashes ("/" stays "/"). */
tl_status tl_path_trim(const char *path, char *out, size_t cap, tl_error *err);

int tl_path_exists(const char *path); /* anything, including a dangling symlink */
int tl_is_dir(const char *path);      /* a directory (a symlink to one counts) */
int tl_is_file(const char *path);     /* a regular file (a symlink to one counts) */

/* mkdir -p with mode 0755. An existing directory is fine; an existing non-directory is TL_ERR_RUNTIME. */
tl_status tl_mkdir_p(const char *path, tl_error *err);

/* Writes len bytes to path atomically: a temporary file beside it is written, fsynced and renamed onto path, then
 * the parent directory is fsynced. On failure the temporary file is removed and path is unchanged.
 * Defined in data/safetensors.c, whose streaming writer shares its steps. */
tl_status tl_write_file_atomic(const char *path, const void *data, size_t len, tl_error *err);

/* Reads a whole (small) file into a malloc'd, NUL-terminated buffer (*n excludes the NUL). Files larger than
 * max_bytes are TL_ERR_INPUT, so a wrong path to a huge file cannot exhaust memory. */
tl_status tl_read_file(const char *path, size_t max_bytes, char **out, size_t *n, tl_error *err);

/* fsync of a regular file / a directory by path. */
tl_status tl_fsync_path(const char *path, tl_error *err);
tl_status tl_fsync_dir(const char *path, tl_error *err);

/* rm -rf that never follows symbolic links: a link inside the tree is unlinked, never entered, so removing a
 * directory cannot delete anything outside it. A missing path is success. */
tl_status tl_remove_tree(const char *path, tl_error *err);

/* rename(from, to), then fsync of the parent directories of to (and of from when it differs), so the rename
 * itself is durable. */
tl_status tl_rename_into_place(const char *from, const char *to, tl_error *err);

/* Puts the complete directory tmp_dir in the place of final_dir. When final_dir does not exist, a plain
 * rename. When it does: final_dir is renamed to "<parent>/.old-<basename>-<pid>[-n]" (the first
 * name that does not exist: nothing existing is removed to make room), tmp_dir is renamed to
 * final_dir, and the old tree is removed; if the second rename fails the old directory is renamed back. Both
 * must be on the same file system (siblings). tmp_dir should already be fsynced (tl_fsync_dir). */
tl_status tl_replace_dir(const char *tmp_dir, const char *final_dir, tl_error *err);

/* name is one plain folder entry: not empty, no '/', shorter than 256 bytes, no leading '.' (so neither "." nor
 * "..", nor hidden or temporary names). For names read from metadata (index.json "dir"). */
int tl_plain_name(const char *name);

/* path, resolved with realpath (every symlink followed), lies inside the folder root (also resolved):
 * TL_ERR_INPUT naming `what` when it resolves elsewhere or does not exist. */
tl_status tl_path_inside(const char *root, const char *path, const char *what, tl_error *err);

/* A number read from a JSON file (cJSON's valuedouble) that claims to be an integer: 1 and *out = d when d is
 * exactly integral and in [lo, hi] (bounds within +-2^53, where doubles are exact), else 0 (NaN, +-inf, 2.5,
 * 2^62 and -1 for lo = 0 are all refused, never truncated). */
int tl_json_int(double d, int64_t lo, int64_t hi, int64_t *out);


/* The longest path tailor builds or accepts in a config (a path buffer's size). */
#define TL_PATH_MAX 4096

/* Seconds on the monotonic clock (for durations: steps, timeouts, throughput). */
double tl_now_s(void);

/* Opens path read-only as a regular file: *fd (close-on-exec, blocking) and, when size is not NULL, its size in
 * bytes. A missing, unreadable or non-regular path (directory, FIFO, device, socket) is TL_ERR_INPUT naming the
 * path and what it is; `what` (may be NULL) says which input it is, e.g. "config file". */
tl_status tl_open_regular(const char *path, const char *what, int *fd, int64_t *size, tl_error *err);
/* The same as a stdio stream ("rb"). */
tl_status tl_fopen_regular(const char *path, const char *what, FILE **out, int64_t *size, tl_error *err);

#endif
