"""tailor's tokenizer (data/tokenizer.c, via tests/tools/tl_tok) against HF `tokenizers` (the PyPI package).

No tokenizer.json can be downloaded here, so each style is built locally: a small byte-level BPE is trained with
`tokenizers` under the exact pre-tokenizer / normalizer / decoder configuration the real model's tokenizer.json has,
with its special tokens added, and saved as tokenizer.json:
  smollm  SmolLM2:  Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]
  llama3  Llama 3:  Sequence[Split(Regex LLAMA3, Isolated), ByteLevel(use_regex=false)], model.ignore_merges=true,
                    post_processor TemplateProcessing with <|begin_of_text|> (merges saved as "a b" strings)
  qwen2   Qwen2:    normalizer NFC, Sequence[Split(Regex QWEN2, Isolated), ByteLevel(use_regex=false)]
  gpt2    GPT-2:    ByteLevel(add_prefix_space=false, use_regex=true)
  o200k   GPT-4o:   Sequence[Split(Regex O200K, Isolated), ByteLevel(use_regex=false)]: a regex tailor names nowhere
  mixed   Sequence of Splits with Oniguruma's \w \s \S \h and $, each behavior, invert and a String pattern
          (what the PCRE2 translation in data/tokenizer_pretok.c must get right), then ByteLevel(use_regex=false)
Checks, per style: ids of tl_tokenizer_encode == Tokenizer.encode(text, add_special_tokens=False).ids on a fixed
multilingual corpus and on random strings (seed printed; TL_TEST_SEED replays); decode(encode(x)) == x byte for
byte, and HF's decode of the same ids gives x too; the GGUF path (tl_tokenizer_from_vocab with the matching
tokenizer.ggml.pre) gives the same ids; BOS; invalid UTF-8 round-trips; Qwen2 refuses text NFC could change; bad
tokenizer.json files fail with exit code 2 naming the file and field; ChatML rendering equals transformers'
apply_chat_template with the ChatML template.

Env: TL_TEST_BIN (build dir holding tl_tok). Run: TL_TEST_BIN=build .pyenv/bin/python tests/torch/test_tokenizer_vs_hf.py
"""

import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

try:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
except ImportError as e:  # the cross-check needs HF tokenizers; without it the test is skipped, never passed
    print(f"SKIP: {e}")
    sys.exit(77)

BIN = os.path.join(os.environ.get("TL_TEST_BIN", "build"), "tl_tok")
if not os.path.exists(BIN):
    print(f"SKIP: {BIN} not built")
    sys.exit(77)

GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")

O200K_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]

CORPUS = [
    "Hello world! How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "DON'T do that. I'M here, YOU'RE there, WE'VE been, SHE'LL go, HE'D say, it's fine, It'S odd, 'twas.",
    "don't won't can't shouldn't y'all rock'n'roll ''s ' s 'S 'Ll 'lL",
    "Le cœur a ses raisons que la raison ne connaît point. Où est l'hôpital ? À bientôt, élève!",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein. Straße, Größe, Äpfel, Öl.",
    "我们的目标是星辰大海。今天天气很好，我们去公园散步吧！",
    "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。東京タワー",
    "مرحبا بالعالم! كيف حالك اليوم؟ ١٢٣٤٥",
    "Привет, мир! Как дела? Съешь же ещё этих мягких французских булок.",
    "Emoji: 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇯🇵 🧑🏾‍💻",
    "Numbers: 0 12 345 6789 1234567890 3.14159 -42 1e10 1,000,000 ½ ² ³ Ⅻ ٣ ৫",
    "    four spaces then text\n\n\ttab\t\ttabs  \n  \n",
    "Windows line\r\nendings\r\n\r\nhere \r\n  \r\n",
    "trailing spaces   ",
    "   leading spaces",
    " ",
    "\n",
    "\r\n\r\n",
    "a  b   c    d",
    "def f(x):\n    return x ** 2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
    "int main(void) { int a[10] = {0}; for (int i = 0; i < 10; i++) a[i] += i; return a[9]; }",
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "text<|endoftext|>more text<|endoftext|><|endoftext|>",
    "<|im_start|><|im_end|> <|im_start|>x<|im_end|", 
    "nbsp\u00a0here\u3000ideographic\u2003em\u2028line\u2029para\u0085nel\x0bvt\x0cff\x1cfs",
    "long s: 'ſ 'ſt ſ Kelvin K",
    "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    "Mixed123numbers456and789letters abc123def 12ab 1a2b3c",
    "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) ||| ~~~",
    "Ελληνικά κείμενα εδώ. עברית כאן. हिन्दी पाठ। ไทย ภาษา 한국어 텍스트",
    "",
]

# pieces for random strings: every character class the regexes distinguish, and the special tokens
POOL = (list("abcXYZéüßçñøœ") + list("日本語中文字한글") + list("абвГДЕ") + list("عربي") + list("0123456789٣½²Ⅻ")
        + [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000"]
        + list("'\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`") + ["'s", "'T", "'re", "'LL", "'ve", "'D", "'m"]
        + ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️"] + SPECIALS + ["<|im_", "|>"]
        # where PCRE2's \s / \w differ from Oniguruma's: U+180E, NEL, a combining mark, connector punctuation
        + ["\u180e", "\u0085", "e\u0301", "\u203f", "ab12", "ff"])

failures = 0


def check(cond, msg):
    global failures
    if not cond:
        failures += 1
        if failures <= 30:
            print("FAIL:", msg)


def build_tokenizer(style, train_texts, path, vocab_size=1500):
    tok = Tokenizer(models.BPE())
    if style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                              trim_offsets=True, use_regex=True)])
    elif style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    elif style == "o200k":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(O200K_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif style == "mixed":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"\s+$"), behavior="merged_with_previous", invert=False),
            pre_tokenizers.Split(Regex(r"[\w']+|[^\w\s]|\s+(?!\S)"), behavior="isolated", invert=False),
            pre_tokenizers.Split(Regex(r"\h\h"), behavior="contiguous", invert=False),
            pre_tokenizers.Split(" ", behavior="merged_with_next", invert=False),
            pre_tokenizers.Split(Regex(r"\W"), behavior="merged_with_previous", invert=True),
            pre_tokenizers.Split(Regex(r"\S*"), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE if style == "llama3" else QWEN2_RE), behavior="isolated",
                                 invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train_texts, trainer=trainer)
    if style == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(path)
    with open(path) as f:
        j = json.load(f)
    if style == "llama3":  # as Llama 3's file: ignore_merges, and merges written as "a b" strings
        j["model"]["ignore_merges"] = True
        j["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    with open(path, "w") as f:
        json.dump(j, f, ensure_ascii=False)
    return Tokenizer.from_file(path), j


def write_records(path, texts):
    with open(path, "wb") as f:
        for t in texts:
            b = t if isinstance(t, bytes) else t.encode("utf-8")
            f.write(b"%d\n" % len(b))
            f.write(b)


def read_records(data):
    out, p = [], 0
    while p < len(data):
        nl = data.index(b"\n", p)
        n = int(data[p:nl])
        out.append(data[nl + 1:nl + 1 + n])
        p = nl + 1 + n
    return out


def tl_encode(tokpath, texts, work, extra=()):
    rec = os.path.join(work, "rec.bin")
    write_records(rec, texts)
    r = subprocess.run([BIN, "encode", *extra, tokpath, rec], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"tl_tok encode failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    lines = r.stdout.decode().split("\n")[:-1]
    assert len(lines) == len(texts), (len(lines), len(texts))
    return [ln if ln.startswith("ERR") else [int(x) for x in ln.split()] for ln in lines]


def tl_decode(tokpath, id_lists, work, extra=()):
    p = os.path.join(work, "ids.txt")
    with open(p, "w") as f:
        for ids in id_lists:
            f.write(" ".join(map(str, ids)) + "\n")
    r = subprocess.run([BIN, "decode", *extra, tokpath, p], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"tl_tok decode failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return read_records(r.stdout)


def random_texts(rng, n):
    out = []
    for _ in range(n):
        k = rng.randint(0, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


def main():
    seed = int(os.environ.get("TL_TEST_SEED", time.time_ns() % 1000003))
    print(f"seed {seed}")
    rng = random.Random(seed)
    t0 = time.time()
    randoms = random_texts(rng, 400)
    train = CORPUS * 3 + random_texts(random.Random(1), 300)
    gguf_pre = {"smollm": "smollm", "llama3": "llama-bpe", "qwen2": "qwen2", "gpt2": "gpt2"}
    with tempfile.TemporaryDirectory() as work:
        for style in ["smollm", "llama3", "qwen2", "gpt2", "o200k", "mixed"]:
            path = os.path.join(work, f"{style}.json")
            hf, j = build_tokenizer(style, train, path)
            texts = CORPUS + randoms
            if style == "qwen2":  # our texts are NFC already; HF normalizes, tailor refuses non-NFC text (below)
                texts = [unicodedata.normalize("NFC", t) for t in texts]
                assert all(unicodedata.normalize("NFC", t) == t for t in texts)
            want = [hf.encode(t, add_special_tokens=False).ids for t in texts]
            got = tl_encode(path, texts, work)
            for t, w, g in zip(texts, want, got):
                check(g == w, f"{style}: ids differ for {t!r}:\n  hf  {w}\n  tl  {g}")
            if style in gguf_pre:
                got_gguf = tl_encode(path, texts, work, ["--gguf", gguf_pre[style]])
                for t, w, g in zip(texts, want, got_gguf):
                    check(g == w, f"{style} (gguf {gguf_pre[style]}): ids differ for {t!r}:\n  hf  {w}\n  tl  {g}")
            # every special token is one id inside text
            for s in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]:
                check(sum(x == hf.token_to_id(s) for x in want[22] + want[23]) > 0 or s not in CORPUS[22] + CORPUS[23],
                      f"{style}: {s} not found as one id")
            dec = tl_decode(path, [g for g in got if not isinstance(g, str)], work)
            for t, d in zip(texts, dec):
                check(d == t.encode("utf-8"), f"{style}: decode(encode(x)) != x for {t!r}: {d!r}")
            for t, w in zip(texts, want):
                check(hf.decode(w, skip_special_tokens=False) == t, f"{style}: HF decode differs for {t!r}")
            # BOS
            bos = tl_encode(path, ["hi there"], work, ["--bos"])[0]
            if style == "llama3":
                check(bos == [hf.token_to_id("<|begin_of_text|>")] + want_of(hf, "hi there"),
                      f"llama3: --bos gave {bos}")
                check(hf.encode("hi there").ids == bos, "llama3: HF's post-processed ids differ from --bos")
            else:
                check(isinstance(bos, str) and "BOS" in bos, f"{style}: --bos without a BOS token gave {bos}")
            # invalid UTF-8: raw bytes in, the same bytes out; each invalid byte is a token of its own byte
            bad = [b"abc\xff\xfedef", b"\xc3(", b"\xe2\x82", b"caf\xc3\xa9 \xed\xa0\x80 \xf4\x90\x80\x80 \xc0\xaf",
                   b"\x80" * 7 + b" x", b"ok\xf0\x9f\x98"]
            ids_bad = tl_encode(path, bad, work)
            for b, ids in zip(bad, ids_bad):
                check(not isinstance(ids, str), f"{style}: invalid UTF-8 {b!r} refused: {ids}")
            dec_bad = tl_decode(path, ids_bad, work)
            for b, d in zip(bad, dec_bad):
                check(d == b, f"{style}: invalid UTF-8 round trip {b!r} -> {d!r}")
            # an invalid byte splits like punctuation: same ids as HF on text where it is an ASCII symbol that
            # BPE never merged with letters ("\x01" is a control char: class other, byte token alone)
            if style != "qwen2":
                inv = tl_encode(path, [b"abc\xffdef"], work)[0]
                ref = hf.encode("abc\x01def", add_special_tokens=False).ids
                byte_ff = hf.token_to_id("\u00ff")
                check(inv == [byte_ff if x == hf.token_to_id("\u0101") else x for x in ref],
                      f"{style}: invalid byte not handled as one 'other' character: {inv} vs {ref}")
            if style == "qwen2":
                r = tl_encode(path, ["cafe\u0301", "\u1100\u1161", "Å"], work)
                check(all(isinstance(x, str) and "NFC" in x for x in r[:2]), f"qwen2: non-NFC text accepted: {r}")
                check(r[2] == hf.encode("Å", add_special_tokens=False).ids, f"qwen2: NFC text refused: {r[2]}")
            print(f"{style}: {len(texts)} texts compared ({time.time() - t0:.1f}s)")

        bad_files(work)
        chat(work)
    if failures:
        print(f"{failures} failure(s)")
        sys.exit(1)
    print(f"OK ({time.time() - t0:.1f}s)")


def want_of(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


def bad_files(work):
    base = {"version": "1.0", "added_tokens": [], "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "vocab": {"a": 0, "b": 1, "ab": 2},
                      "merges": ["a b"]}}
    cases = []
    j = json.loads(json.dumps(base)); del j["model"]; cases.append(("missing_model", j, "model"))
    j = json.loads(json.dumps(base)); j["model"]["type"] = "WordPiece"; cases.append(("wordpiece", j, "model.type"))
    j = json.loads(json.dumps(base)); j["model"]["type"] = "Unigram"; cases.append(("unigram", j, "model.type"))
    j = json.loads(json.dumps(base)); j["model"]["merges"] = ["a c"]; cases.append(("unknown_merge", j, "model.merges[0]"))
    j = json.loads(json.dumps(base)); j["model"]["merges"] = [["a", "zz"]]; cases.append(("unknown_merge_pair", j, "model.merges[0]"))
    j = json.loads(json.dumps(base)); j["pre_tokenizer"] = {"type": "Whitespace"}; cases.append(("whitespace_pretok", j, "pre_tokenizer.type"))
    j = json.loads(json.dumps(base)); j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\w+(?<=a+)"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}
    cases.append(("pcre2_refuses", j, "pre_tokenizer.pretokenizers[0].pattern.Regex: PCRE2 refuses the regex at offset"))
    j = json.loads(json.dumps(base)); j["normalizer"] = {"type": "NFKC"}; cases.append(("nfkc", j, "normalizer"))
    j = json.loads(json.dumps(base)); j["model"]["dropout"] = 0.1; cases.append(("dropout", j, "model.dropout"))
    for name, j, field in cases:
        p = os.path.join(work, f"bad_{name}.json")
        with open(p, "w") as f:
            json.dump(j, f)
        r = subprocess.run([BIN, "load", p], capture_output=True, text=True, timeout=30)
        check(r.returncode == 2, f"bad {name}: exit {r.returncode}, stderr {r.stderr!r}")
        check(p in r.stderr and field in r.stderr, f"bad {name}: message {r.stderr!r} does not name {p} and {field}")
    p = os.path.join(work, "good.json")
    with open(p, "w") as f:
        json.dump(base, f)
    r = subprocess.run([BIN, "load", p], capture_output=True, text=True, timeout=30)
    check(r.returncode == 0 and r.stdout.strip() == "vocab 3 bos -1", f"good base file: {r.returncode} {r.stdout!r} {r.stderr!r}")
    print(f"bad tokenizer.json: {len(cases)} cases")


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
          "+ '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chat(work):
    try:
        import jinja2  # noqa: F401  (transformers renders chat templates with it)
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        print("chat: transformers or jinja2 missing, ChatML compared with the literal format only")
        PreTrainedTokenizerFast = None
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Héllo\nthere 😀"},
            {"role": "assistant", "content": ""}, {"role": "user", "content": "multi\n\nline  "}]
    p = os.path.join(work, "msgs.json")
    with open(p, "w") as f:
        json.dump(msgs, f, ensure_ascii=False)
    for gen in (False, True):
        r = subprocess.run([BIN, "chat"] + (["--gen"] if gen else []) + [p], capture_output=True, timeout=30)
        check(r.returncode == 0, f"chat: exit {r.returncode} {r.stderr!r}")
        lit = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
        lit += "<|im_start|>assistant\n" if gen else ""
        check(r.stdout.decode() == lit, f"chat gen={gen}: {r.stdout!r}")
        if PreTrainedTokenizerFast is not None:
            tk = PreTrainedTokenizerFast(tokenizer_file=os.path.join(work, "smollm.json"))
            tk.chat_template = CHATML
            ref = tk.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            check(r.stdout.decode() == ref, f"chat gen={gen}: differs from transformers: {ref!r}")
    print("chat: ok")


if __name__ == "__main__":
    main()
