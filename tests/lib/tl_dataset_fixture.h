/* Fixtures shared by the two dataset-reader tests (test_dataset.c for SFT files, test_pref_dataset.c for
 * preference files): the scratch directory their hand-made HDF5 files go to, the check of a loaded /users table
 * against what was written, and the checks every rejected file's error must pass (TL_ERR_INPUT, one line, naming
 * the file and each needle). Header-only: each test is one translation unit (it includes tl_check.h). */
#ifndef TL_DATASET_FIXTURE_H
#define TL_DATASET_FIXTURE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/tl_status.h"
#include "tests/lib/tl_check.h"

/* ---- the scratch directory: $TMPDIR (or /tmp)/{tag}_XXXXXX, files {prefix}000.h5, {prefix}001.h5, ... ---- */

static char g_dir[256];
static int g_file_no = 0;

/* Creates the directory; 0 on success, 1 (after perror) on failure. */
static inline int fx_scratch_init(const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    return 0;
}
/* The path of the next test file. */
static inline void fx_next_path(char *path, size_t n, const char *prefix) {
    snprintf(path, n, "%s/%s%03d.h5", g_dir, prefix, g_file_no++);
}
/* Removes the files fx_next_path named, then the directory (other files there are the caller's to remove). */
static inline void fx_scratch_clean(const char *prefix) {
    for (int i = 0; i < g_file_no; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s%03d.h5", g_dir, prefix, i);
        remove(p);
    }
    rmdir(g_dir);
}

/* ---- checks ---- */

/* A loaded /users table equals the n written names (and groups when has_groups; else no groups at all). */
static inline void fx_check_users(const char *label, int n, const char (*names)[32], int has_groups,
                                  const char (*groups)[32], int got_n, char *const *got_names,
                                  char *const *got_groups) {
    CHECK(got_n == n, "%s: n_users %d", label, got_n);
    for (int u = 0; u < n && u < got_n; u++) {
        CHECK(strcmp(got_names[u], names[u]) == 0, "%s: name %d '%s' != '%s'", label, u, got_names[u], names[u]);
        if (has_groups) CHECK(got_groups && strcmp(got_groups[u], groups[u]) == 0, "%s: group %d", label, u);
    }
    if (!has_groups) CHECK(got_groups == NULL, "%s: groups should be absent", label);
}

/* A rejected open of path: TL_ERR_INPUT returned and recorded, a one-line message naming the file and each
 * non-NULL needle. */
static inline void fx_check_input_error(const char *label, const char *path, tl_status st, const tl_error *err,
                                        const char *const *needles, int n_needles) {
    CHECK(st == TL_ERR_INPUT, "%s: expected TL_ERR_INPUT, got %d (%s)", label, (int)st, err->msg);
    CHECK(err->code == TL_ERR_INPUT, "%s: err.code %d", label, (int)err->code);
    CHECK(strstr(err->msg, path) != NULL, "%s: message does not name the file: %s", label, err->msg);
    for (int i = 0; i < n_needles; i++)
        if (needles[i])
            CHECK(strstr(err->msg, needles[i]) != NULL, "%s: message lacks '%s': %s", label, needles[i], err->msg);
    CHECK(strchr(err->msg, '\n') == NULL, "%s: message must be one line", label);
}

#endif
