/* test_text: display escaping and the strict number parsers (kernels/tl_text.h), and that tl_fail's messages
 * carry no terminal control (a name quoted in an error is escaped there too). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kernels/tl_text.h"
#include "tests/lib/tl_check.h"

static void test_escape(void) {
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"alice", "alice"},
        {"", ""},
        {"\x1b[31mred\x07", "\\x1B[31mred\\x07"},        /* ESC, BEL */
        {"a\rb\nc\td\x7f", "a\\x0Db\\x0Ac\\x09d\\x7F"},   /* CR, LF, TAB, DEL */
        {"caf\xc3\xa9 \xe6\x97\xa5\xf0\x9f\x98\x80", "caf\xc3\xa9 \xe6\x97\xa5\xf0\x9f\x98\x80"}, /* UTF-8 kept */
        {"x\xc2\x9b" "31m", "x\\u{009B}31m"},              /* C1 CSI */
        {"a\xe2\x80\xae" "b", "a\\u{202E}b"},                 /* right-to-left override */
        {"\xff\xfe", "\\xFF\\xFE"},                        /* not UTF-8 */
        {"\xc0\xaf", "\\xC0\\xAF"},                        /* overlong '/' */
        {"\xed\xa0\x80", "\\xED\\xA0\\x80"},               /* a surrogate */
        {"\xe6\x97", "\\xE6\\x97"},                        /* cut sequence */
    };
    char b[TL_ESC_CAP];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tl_escape(b, sizeof b, cases[i].in);
        CHECK(!strcmp(b, cases[i].want), "case %zu: got '%s', want '%s'", i, b, cases[i].want);
    }
    /* cut short: ends in "...", never inside an escape or a UTF-8 sequence, and fits */
    char small[12];
    tl_escape(small, sizeof small, "abcdefghijklmnop");
    CHECK(!strcmp(small, "abcdefgh..."), "cut: '%s'", small);
    tl_escape(small, sizeof small, "abcdef\x1b\x1b\x1b");
    CHECK(!strcmp(small, "abcdef..."), "cut before an escape: '%s'", small);
    tl_escape(small, sizeof small, "abcdefg\xe6\x97\xa5\xe6\x97\xa5");
    CHECK(!strcmp(small, "abcdefg..."), "cut before UTF-8: '%s'", small);
    tl_escape(small, sizeof small, "abcdefghijk");
    CHECK(!strcmp(small, "abcdefghijk"), "exact fit: '%s'", small);
    tl_escape_n(small, sizeof small, "ab\0cd", 5);
    CHECK(!strcmp(small, "ab\\x00cd"), "NUL inside n bytes: '%s'", small);
    /* every byte value, alone: the output has no control byte */
    for (int c = 1; c < 256; c++) {
        char in[2] = {(char)c, 0};
        tl_escape(b, sizeof b, in);
        for (const unsigned char *p = (const unsigned char *)b; *p; p++)
            CHECK(*p >= 0x20 && *p != 0x7f && *p < 0x80, "byte %02X escaped to '%s'", c, b);
    }
}

static void test_fail_escapes(void) {
    tl_error e = {0};
    tl_fail(&e, TL_ERR_INPUT, "users: name '%s' is bad", "\x1b[31mevil\x07\nline");
    CHECK(!strcmp(e.msg, "users: name '\\x1B[31mevil\\x07 line' is bad"), "tl_fail: %s", e.msg);
    tl_wrap(&e, "while loading %s", "\x1b]0;title\x07");
    CHECK(!strchr(e.msg, 0x1b) && !strchr(e.msg, 0x07), "tl_wrap: %s", e.msg);
    CHECK(strstr(e.msg, "\\x1B]0;title\\x07: users:") != NULL, "tl_wrap: %s", e.msg);
}

static void test_integers(void) {
    tl_error e = {0};
    int64_t x = 0;
    uint64_t u = 0;
    CHECK(tl_parse_i64("--n", "42", 0, 100, &x, &e) == TL_OK && x == 42);
    CHECK(tl_parse_i64("--n", "-7", -10, 10, &x, &e) == TL_OK && x == -7);
    CHECK(tl_parse_i64("--n", "+7", -10, 10, &x, &e) == TL_OK && x == 7);
    CHECK(tl_parse_i64("--n", "9223372036854775807", 0, INT64_MAX, &x, &e) == TL_OK && x == INT64_MAX);
    const char *bad[] = {"", "1e3", "12abc", " 5", "5 ", "0x10", "1.5", "1.0", "-", "+", "99999999999999999999",
                         "9223372036854775808", "101", "-1", "--5", "٣"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        x = 12345;
        tl_status s = tl_parse_i64("--seed", bad[i], 0, 100, &x, &e);
        CHECK(s == TL_ERR_INPUT && x == 12345, "'%s' accepted as %lld", bad[i], (long long)x);
        CHECK(strstr(e.msg, "--seed") && strstr(e.msg, "[0, 100]"), "'%s': %s", bad[i], e.msg);
    }
    CHECK(tl_parse_u64("--seed", "18446744073709551615", 0, UINT64_MAX, &u, &e) == TL_OK && u == UINT64_MAX);
    CHECK(tl_parse_u64("--seed", "18446744073709551616", 0, UINT64_MAX, &u, &e) == TL_ERR_INPUT);
    CHECK(tl_parse_u64("--seed", "-1", 0, UINT64_MAX, &u, &e) == TL_ERR_INPUT, "-1 wraps: %llu",
          (unsigned long long)u);
    CHECK(tl_parse_u64("--seed", "1e3", 0, UINT64_MAX, &u, &e) == TL_ERR_INPUT);
    CHECK(tl_parse_u64("--seed", "4294967301", 0, UINT32_MAX, &u, &e) == TL_ERR_INPUT, "2^32+5 as u32");
    /* a name with escapes in the refused value is shown escaped */
    tl_parse_i64("--n", "\x1b[31m", 0, 1, &x, &e);
    CHECK(!strchr(e.msg, 0x1b), "%s", e.msg);
}

static void test_floats(void) {
    tl_error e = {0};
    double x = 0;
    CHECK(tl_parse_f64("--t", "0.5", 0, 1, &x, &e) == TL_OK && x == 0.5);
    CHECK(tl_parse_f64("--t", "1e-3", 0, 1, &x, &e) == TL_OK && x == 1e-3);
    CHECK(tl_parse_f64("--t", ".5", 0, 1, &x, &e) == TL_OK && x == 0.5);
    CHECK(tl_parse_f64("--t", "1", 0, 1, &x, &e) == TL_OK && x == 1);
    const char *bad[] = {"", "nan", "inf", "-inf", "0x1p-2", " 0.5", "0.5 ", "1.5", "-0.1", "1e", "e5", ".", "1e999",
                         "0.5x", "1,5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        x = 7;
        CHECK(tl_parse_f64("--top-p", bad[i], 0, 1, &x, &e) == TL_ERR_INPUT && x == 7, "'%s' accepted", bad[i]);
        CHECK(strstr(e.msg, "--top-p") != NULL, "%s", e.msg);
    }
}

int main(void) {
    test_escape();
    test_fail_escapes();
    test_integers();
    test_floats();
    return tl_check_done("test_text");
}
