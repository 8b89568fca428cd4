/* tl_status: formatting of the single-line error messages (see tl_status.h). */
#include "kernels/tl_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kernels/tl_text.h"

/* One line that cannot drive the terminal: line breaks and tabs become blanks, and every other control byte,
 * C1 control or stray non-UTF-8 byte that a quoted name brought in is escaped (tl_escape). */
static void one_safe_line(tl_error *e) {
    char raw[sizeof e->msg];
    for (char *p = e->msg; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
    memcpy(raw, e->msg, strlen(e->msg) + 1);
    tl_escape(e->msg, sizeof e->msg, raw);
}

tl_status tl_fail(tl_error *e, tl_status code, const char *fmt, ...) {
    if (!e) return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* One line: a message is printed as-is on stderr, so embedded newlines would break that contract. */
    one_safe_line(e);
    return code;
}

tl_status tl_wrap(tl_error *e, const char *fmt, ...) {
    if (!e) return TL_ERR_RUNTIME;
    char prefix[512], old[sizeof e->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, e->msg, sizeof old);
    snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
    one_safe_line(e);
    return e->code;
}
