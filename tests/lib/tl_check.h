/* Failure counting shared by the unit tests: CHECK(cond) or CHECK(cond, fmt, ...) reports a false condition
 * (file:line and the condition or the message) and counts it in g_fail without stopping the test, so one run
 * lists every broken case; CHECK_OK(status, err) does the same for a call that should have succeeded; the
 * tl_check_done* epilogues print the verdict and give main's exit code. Header-only: each test is one
 * translation unit, so the counter is per test. */
#ifndef TL_CHECK_H
#define TL_CHECK_H

#include <stdarg.h>
#include <stdio.h>

static int g_fail = 0;

__attribute__((format(printf, 3, 4))) static inline void tl_check_fail_(const char *file, int line, const char *fmt,
                                                                        ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    g_fail++;
}

#define TL_CHECK_BARE_(cond)                                                      \
    do {                                                                          \
        if (!(cond)) tl_check_fail_(__FILE__, __LINE__, "CHECK failed: %s", #cond); \
    } while (0)
#define TL_CHECK_MSG_(cond, ...)                                         \
    do {                                                                 \
        if (!(cond)) tl_check_fail_(__FILE__, __LINE__, __VA_ARGS__);    \
    } while (0)
/* Picks the bare form for one argument and the message form for 2..24 (strict C11 has no empty __VA_ARGS__). */
#define TL_CHECK_PICK_(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, a20, \
                       a21, a22, a23, a24, m, ...)                                                                \
    m
#define CHECK(...)                                                                                                \
    TL_CHECK_PICK_(__VA_ARGS__, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_,         \
                   TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_,       \
                   TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_,       \
                   TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_, TL_CHECK_MSG_,       \
                   TL_CHECK_BARE_, unused_)                                                                       \
    (__VA_ARGS__)
#define CHECK_OK(s, e)                                                                         \
    do {                                                                                       \
        if ((s) != TL_OK) tl_check_fail_(__FILE__, __LINE__, "unexpected error: %s", (e).msg); \
    } while (0)

/* main's epilogue: the verdict line and the exit code. */
static inline int tl_check_done(const char *test) {
    if (g_fail) {
        fprintf(stderr, "%s: %d failure(s)\n", test, g_fail);
        return 1;
    }
    printf("%s: ok\n", test);
    return 0;
}
/* The same, naming the seed that reproduces a failing run. */
static inline int tl_check_done_seed(const char *test, unsigned long long seed) {
    if (g_fail) {
        fprintf(stderr, "%s: %d failure(s) (seed %llu)\n", test, g_fail, seed);
        return 1;
    }
    printf("%s: ok\n", test);
    return 0;
}

#endif
