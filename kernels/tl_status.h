/* tl_status: the one error convention of tailor.
 *
 * Every fallible function returns a tl_status and, on failure, fills a caller-provided tl_error with one
 * line that names the file, field or index and says what was expected. Library code never prints on its own
 * (it writes only to streams its caller hands it: progress, tables, generated text) and never exits; the CLI
 * (trainer/cli/) prints err.msg on stderr and exits with err.code. The one sanctioned exception: a rank of a
 * multi-process job that fails prints its error and ends every rank through tl_dist_abort
 * (trainer/dist/tl_dist.h), since the others may be waiting for it in a collective and would hang. */
#ifndef TL_STATUS_H
#define TL_STATUS_H

#include <stddef.h>

typedef enum {
    TL_OK = 0,
    TL_ERR_RUNTIME = 1, /* something failed while doing valid work (I/O, out of memory, CUDA error) */
    TL_ERR_INPUT = 2    /* bad usage or bad input: config, model files, dataset, command line */
} tl_status;

typedef struct {
    tl_status code;
    char msg[1024];
} tl_error;

/* Sets e->code and e->msg (printf-style) and returns code, so callers can write
 *   return tl_fail(err, TL_ERR_INPUT, "%s: dataset /sft/offsets: decreasing at index %zu", path, i); */
tl_status tl_fail(tl_error *e, tl_status code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Prepends context ("while loading X: ") to an existing message, keeping its code. Returns e->code. */
tl_status tl_wrap(tl_error *e, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

#define TL_TRY(expr)                       \
    do {                                   \
        tl_status tl_try_s_ = (expr);      \
        if (tl_try_s_ != TL_OK) return tl_try_s_; \
    } while (0)

#endif
