/* tl_status: formatting of the single-line error messages (see tl_status.h). */
#include "tl_status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

tl_status tl_fail(tl_error *e, tl_status code, const char *fmt, ...) {
    if (!e) return code;
    e->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    /* One line: a message is printed as-is on stderr, so embedded newlines would break that contract. */
    for (char *p = e->msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
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
    return e->code;
}
