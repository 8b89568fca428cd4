/* tl_text: display escaping and strict number parsing (see tl_text.h). */
#include "kernels/tl_text.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Length of the valid UTF-8 sequence at s (n bytes left) and its code point, or 0 when it is not one
 * (overlong forms, surrogates and values above U+10FFFF are not valid). */
static size_t utf8_seq(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    size_t len;
    uint32_t v, min;
    if (c < 0x80) return *cp = c, 1;
    if (c >= 0xc2 && c <= 0xdf) len = 2, v = c & 0x1f, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, v = c & 0x0f, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, v = c & 0x07, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return len;
}

static int needs_escape(uint32_t cp) {
    return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f) || (cp >= 0x202a && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

/* The escaped form of the character at s (n bytes left) into piece; returns its length and sets *used. */
static size_t escape_one(const unsigned char *s, size_t n, char piece[16], size_t *used) {
    uint32_t cp = 0;
    size_t len = utf8_seq(s, n, &cp);
    if (len == 0) { /* a byte that is not UTF-8 */
        *used = 1;
        return (size_t)snprintf(piece, 16, "\\x%02X", s[0]);
    }
    *used = len;
    if (needs_escape(cp))
        return cp < 0x80 ? (size_t)snprintf(piece, 16, "\\x%02X", (unsigned)cp)
                         : (size_t)snprintf(piece, 16, "\\u{%04" PRIX32 "}", cp);
    memcpy(piece, s, len);
    return len;
}

char *tl_escape_n(char *dst, size_t cap, const char *src, size_t n) {
    if (!dst || cap == 0) return dst;
    const unsigned char *s = (const unsigned char *)src;
    if (!s) n = 0;
    char piece[16];
    size_t used, total = 0;
    for (size_t i = 0; i < n; i += used) total += escape_one(s + i, n - i, piece, &used);
    /* when it does not all fit, keep room for "..."; cut only between whole pieces */
    size_t limit = total <= cap - 1 ? cap - 1 : (cap - 1 >= 3 ? cap - 1 - 3 : 0), k = 0;
    for (size_t i = 0; i < n; i += used) {
        size_t plen = escape_one(s + i, n - i, piece, &used);
        if (k + plen > limit) break;
        memcpy(dst + k, piece, plen);
        k += plen;
    }
    if (total > cap - 1 && k + 3 <= cap - 1) memcpy(dst + k, "...", 3), k += 3;
    dst[k] = 0;
    return dst;
}

char *tl_escape(char *dst, size_t cap, const char *s) { return tl_escape_n(dst, cap, s, s ? strlen(s) : 0); }

/* s as it is shown in a message about it: escaped and cut short */
static const char *shown(const char *s, char *buf, size_t cap) { return tl_escape(buf, cap, s); }

/* optional sign, then one or more decimal digits, then the end */
static int plain_integer(const char *s, int allow_minus) {
    const char *p = s;
    if (*p == '+' || (allow_minus && *p == '-')) p++;
    if (!*p) return 0;
    for (; *p; p++)
        if (*p < '0' || *p > '9') return 0;
    return 1;
}

tl_status tl_parse_i64(const char *what, const char *s, int64_t lo, int64_t hi, int64_t *out, tl_error *err) {
    char b[96];
    if (s && plain_integer(s, 1)) {
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (!errno && !*end && x >= lo && x <= hi) {
            *out = (int64_t)x;
            return TL_OK;
        }
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: expected an integer in [%" PRId64 ", %" PRId64 "], got '%s'", what, lo,
                   hi, shown(s ? s : "", b, sizeof b));
}

tl_status tl_parse_u64(const char *what, const char *s, uint64_t lo, uint64_t hi, uint64_t *out, tl_error *err) {
    char b[96];
    if (s && plain_integer(s, 0)) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (!errno && !*end && x >= lo && x <= hi) {
            *out = (uint64_t)x;
            return TL_OK;
        }
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'", what, lo,
                   hi, shown(s ? s : "", b, sizeof b));
}

tl_status tl_parse_f64(const char *what, const char *s, double lo, double hi, double *out, tl_error *err) {
    char b[96];
    /* strtod also reads hex floats, "inf", "nan" and leading blanks: only [sign] digits [. digits] [e [sign] digits] */
    int ok = s && *s;
    if (ok) {
        const char *p = s;
        int digits = 0;
        if (*p == '+' || *p == '-') p++;
        while (*p >= '0' && *p <= '9') p++, digits++;
        if (*p == '.') {
            p++;
            while (*p >= '0' && *p <= '9') p++, digits++;
        }
        if (digits && (*p == 'e' || *p == 'E')) {
            p++;
            if (*p == '+' || *p == '-') p++;
            if (!(*p >= '0' && *p <= '9')) digits = 0;
            while (*p >= '0' && *p <= '9') p++;
        }
        ok = digits > 0 && *p == 0;
    }
    if (ok) {
        char *end;
        errno = 0;
        double x = strtod(s, &end);
        /* ERANGE on underflow still gives a usable tiny number; overflow gives inf, refused below */
        if (!*end && isfinite(x) && x >= lo && x <= hi) {
            *out = x;
            return TL_OK;
        }
    }
    return tl_fail(err, TL_ERR_INPUT, "%s: expected a number in [%g, %g], got '%s'", what, lo, hi,
                   shown(s ? s : "", b, sizeof b));
}
