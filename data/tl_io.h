/* tl_io: opening an input file the way every reader must. A path from a config, a command line or a file's
 * metadata can name a FIFO, a device or a directory: a plain open() of a FIFO waits for a writer forever, and a
 * read of /dev/zero never ends. tl_open_regular opens without blocking, checks with fstat on the descriptor it
 * holds (so the file cannot be swapped between the check and the read) that it is a regular file, and only then
 * hands it back in blocking mode. This is the start of the base I/O layer of data/ (docs/design.md). */
#ifndef TL_IO_H
#define TL_IO_H

#include <stdint.h>
#include <stdio.h>

#include "kernels/tl_status.h"

/* Opens path read-only as a regular file: *fd (close-on-exec, blocking) and, when size is not NULL, its size in
 * bytes. A missing, unreadable or non-regular path (directory, FIFO, device, socket) is TL_ERR_INPUT naming the
 * path and what it is; `what` (may be NULL) says which input it is, e.g. "config file". */
tl_status tl_open_regular(const char *path, const char *what, int *fd, int64_t *size, tl_error *err);
/* The same as a stdio stream ("rb"). */
tl_status tl_fopen_regular(const char *path, const char *what, FILE **out, int64_t *size, tl_error *err);

#endif
