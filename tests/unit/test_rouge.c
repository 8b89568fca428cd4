/* test_rouge: tl_rouge on hand-computed cases: empty sides, punctuation, case, repeated words (clipped counts),
 * word order (LCS), digits, and UTF-8 text whose non-ASCII letters rouge-score's tokenizer turns into separators
 * (with its two exceptions, U+0130 and the Kelvin sign). Outputs are poisoned with NaN before each call. */
#include <math.h>
#include <string.h>

#include "trainer/eval/tl_rouge.h"
#include "tests/lib/tl_check.h"

static void expect(const char *pred, const char *ref, double p1, double r1, double pl, double rl, int line) {
    tl_rouge_score s;
    s.rouge1 = s.rougeL = (tl_rouge_prf){NAN, NAN, NAN};
    tl_rouge(pred, ref, &s);
    double f1 = p1 + r1 > 0 ? 2 * p1 * r1 / (p1 + r1) : 0, fl = pl + rl > 0 ? 2 * pl * rl / (pl + rl) : 0;
    double got[6] = {s.rouge1.precision, s.rouge1.recall, s.rouge1.fmeasure,
                     s.rougeL.precision, s.rougeL.recall, s.rougeL.fmeasure};
    double want[6] = {p1, r1, f1, pl, rl, fl};
    for (int i = 0; i < 6; i++)
        CHECK(fabs(got[i] - want[i]) < 1e-15, "line %d: '%s' vs '%s': field %d = %.17g, expected %.17g", line, pred,
              ref, i, got[i], want[i]);
}
#define E(p, r, p1, r1, pl, rl) expect(p, r, p1, r1, pl, rl, __LINE__)

int main(void) {
    E("", "", 0, 0, 0, 0);
    E("", "the cat", 0, 0, 0, 0);
    E("the cat", "", 0, 0, 0, 0);
    E("!!! ,,, ...", "!!!", 0, 0, 0, 0); /* punctuation only: no tokens */
    E("the cat sat", "the cat sat", 1, 1, 1, 1);
    E("The CAT, sat!", "the cat sat", 1, 1, 1, 1); /* case and punctuation */
    E("the cat sat on the mat", "the mat sat on the cat", 1, 1, 4.0 / 6, 4.0 / 6);
    E("the the the the", "the", 1.0 / 4, 1, 1.0 / 4, 1); /* counts clipped */
    E("the", "the the the the", 1, 1.0 / 4, 1, 1.0 / 4);
    E("a b c d e f g", "g f e d c b a", 1, 1, 1.0 / 7, 1.0 / 7);
    E("a b c d e f g", "a c e g", 4.0 / 7, 1, 4.0 / 7, 1);
    E("a b a b a b", "b a b a", 4.0 / 6, 1, 4.0 / 6, 1);
    E("police killed the gunman", "the gunman killed police", 1, 1, 2.0 / 4, 2.0 / 4);
    E("it's don't", "it s don t", 1, 1, 1, 1);
    E("3.14 x1y2", "3 14 X1Y2", 1, 1, 1, 1);
    E("one two", "three four five", 0, 0, 0, 0);
    /* "café" -> "caf"; "naïve" -> "na", "ve"; CJK and Cyrillic vanish */
    E("café naïve", "caf na ve", 1, 1, 1, 1);
    E("日本語 text Привет", "text", 1, 1, 1, 1);
    E("Привет", "text", 0, 0, 0, 0);
    E("ÄÖÜ ß", "a o u ss", 0, 0, 0, 0);
    /* U+0130 lowercases to "i" + combining dot; U+212A (Kelvin) to "k" */
    E("\xc4\xb0stanbul", "i stanbul", 1, 1, 1, 1);
    E("\xe2\x84\xaa" "elvin", "kelvin", 1, 1, 1, 1);
    E("line\none\ttab\r\n", "line one tab", 1, 1, 1, 1);
    E("x y z x y z x", "z y x", 3.0 / 7, 1, 3.0 / 7, 1);
    /* invalid UTF-8 bytes are separators too */
    E("ab\xff\xfe" "cd", "ab cd", 1, 1, 1, 1);
    return tl_check_done("test_rouge");
}
