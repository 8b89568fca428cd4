/* tl_text: the two text rules every layer shares, kept at the bottom so that data/, trainer/ and tl_fail itself
 * use one copy.
 *
 * - Display escaping: a name that comes from a file or the command line (user, group, adapter, tensor, key,
 *   path) may hold terminal escapes (ESC [31m), a BEL, a carriage return or bytes that are not UTF-8. Printed
 *   raw, such a name rewrites the user's terminal or hides the rest of the line. tl_escape writes it with C0
 *   controls, DEL and stray bytes as \xNN, C1 controls and the bidirectional overrides (U+202A..U+202E,
 *   U+2066..U+2069) as \u{NNNN}; valid printable UTF-8 is kept as it is.
 * - Strict numbers: tl_parse_i64/u64/f64 take exactly a number as written (decimal digits with an optional sign,
 *   or a finite decimal float), nothing before or after it, and refuse values outside [lo, hi] instead of
 *   truncating them: "1e3", "12abc", " 5", "0x10" and 2^64 are refused as integers; "nan", "inf" and hex floats
 *   as floats. The error names `what` (an option or key) and the range. */
#ifndef TL_TEXT_H
#define TL_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/tl_status.h"

/* A buffer for one escaped name on a print line; longer names are cut with "..." (never inside an escape). */
#define TL_ESC_CAP 512

/* Writes s, escaped for display, into dst (cap bytes, cap >= 8) and returns dst. */
char *tl_escape(char *dst, size_t cap, const char *s);
/* The same for n bytes that need not end in a NUL. */
char *tl_escape_n(char *dst, size_t cap, const char *s, size_t n);

tl_status tl_parse_i64(const char *what, const char *s, int64_t lo, int64_t hi, int64_t *out, tl_error *err);
tl_status tl_parse_u64(const char *what, const char *s, uint64_t lo, uint64_t hi, uint64_t *out, tl_error *err);
tl_status tl_parse_f64(const char *what, const char *s, double lo, double hi, double *out, tl_error *err);

#endif
