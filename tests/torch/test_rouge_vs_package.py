"""tailor's ROUGE-1 / ROUGE-L (trainer/rouge.c, via tests/tools/tl_rouge_tool) against Google's rouge-score 0.1.2
(rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)): precision, recall and F of both, to 1e-12, on
a fixed set of awkward pairs (empty, punctuation only, case, repeats, digits, unicode letters that the package's
tokenizer turns into separators, U+0130 and the Kelvin sign that Python lowercases to ASCII, newlines and tabs)
plus random pairs drawn from a small vocabulary (seed printed; TL_TEST_SEED replays).

Env: TL_TEST_BIN (build dir holding tl_rouge_tool). Skips (exit 77) without the rouge_score package.
"""

import os
import random
import subprocess
import sys
import tempfile
import time

try:
    from rouge_score import rouge_scorer
except ImportError:
    print("SKIPPED: the rouge_score package is missing (scripts/pyenv.sh)")
    sys.exit(77)

FIXED = [
    ("", ""),
    ("", "the cat"),
    ("the cat", ""),
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "the mat sat on the cat"),
    ("The CAT, sat!", "the cat sat"),
    ("!!! ??? ...", "hello"),
    ("!!! ??? ...", "!!!"),
    ("the the the the", "the"),
    ("the", "the the the the"),
    ("a b a b a b", "b a b a"),
    ("police killed the gunman", "the gunman killed police"),
    ("it's a don't-care case", "it s a don t care case"),
    ("3.14159 is pi", "pi is 3 14159"),
    ("x1y2z3 abc123", "X1Y2Z3 ABC123"),
    ("café naïve résumé", "caf na ve r sum"),
    ("日本語 text 中文", "text"),
    ("Привет мир hello", "hello мир"),
    ("İstanbul İ", "i stanbul i"),
    ("\u212a kelvin \u212aelvin", "k kelvin kelvin"),
    ("emoji 😀 inside😀word", "emoji inside word"),
    ("line one\nline two\ttab", "line\none line\ttwo"),
    ("   leading and trailing   ", "leading trailing and"),
    ("a" * 50, "a" * 50),
    ("a b c d e f g", "g f e d c b a"),
    ("a b c d e f g", "a c e g"),
    ("one two three four five", "six seven eight"),
    ("ÄÖÜ äöü ß", "ss"),
    ("mixed UPPER lower MiXeD", "mixed upper LOWER mixed"),
    ("under_score and-dash", "under score and dash"),
    ("tab\tsep\r\nwindows", "tab sep windows"),
    ("ǅ ǈ ǋ Ω", "dz lj nj"),
    ("the quick brown fox jumps over the lazy dog", "a quick brown dog jumps over the lazy fox"),
    ("0 00 000", "0 0 0"),
    ("repeat repeat other repeat", "repeat other other repeat"),
    ("\u00a0non\u00a0breaking\u2009spaces", "non breaking spaces"),
    ("fullwidth ＡＢＣ １２３", "abc 123"),
    ("a", "b"),
    ("a b", "b a"),
    ("x y z x y z x", "z y x"),
]


def main():
    seed = int(os.environ.get("TL_TEST_SEED", time.time_ns() % 1000000))
    print(f"seed {seed}")
    rng = random.Random(seed)
    vocab = ["the", "The", "cat", "CAT!", "dog,", "a", "é", "b2", "...", " ", "\n", "İ", "ü", "42", "x"]
    pairs = list(FIXED)
    for _ in range(60):
        pairs.append(tuple(" ".join(rng.choice(vocab) for _ in range(rng.randint(0, 25))) for _ in range(2)))
    tool = os.path.join(os.environ.get("TL_TEST_BIN", "build"), "tl_rouge_tool")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "pairs")
        with open(path, "wb") as f:
            for p, r in pairs:
                bp, br = p.encode("utf-8"), r.encode("utf-8")
                f.write(f"{len(bp)} {len(br)}\n".encode() + bp + br)
        out = subprocess.run([tool, path], capture_output=True, check=True).stdout.decode().splitlines()
    if len(out) != len(pairs):
        print(f"FAIL: {len(out)} lines for {len(pairs)} pairs")
        return 1
    bad = 0
    for (p, r), line in zip(pairs, out):
        got = [float(x) for x in line.split()]
        s = scorer.score(r, p)  # target first, then prediction
        want = [s["rouge1"].precision, s["rouge1"].recall, s["rouge1"].fmeasure,
                s["rougeL"].precision, s["rougeL"].recall, s["rougeL"].fmeasure]
        if any(abs(g - w) > 1e-12 for g, w in zip(got, want)):
            bad += 1
            print(f"FAIL: prediction {p!r} reference {r!r}: tailor {got} rouge-score {want}")
    print(f"{len(pairs)} pairs, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
