"""Tokenization speed of tl_tok builds (e.g. before and after a tokenizer change) on one corpus, in one run.

The corpus: the Debian copyright files under /usr/share/doc (English prose, code-like licence text) plus the
multilingual texts of test_tokenizer_vs_hf.py, cut into records of at most 4 KB, about MB megabytes in all. Two
tokenizer.json files are trained with HF `tokenizers` on it (32k vocabulary): "smollm" (Digits + ByteLevel with the
GPT-2 regex, as SmolLM2) and "llama3" (Split with the Llama 3 regex + ByteLevel). Each binary encodes the corpus
REPEAT times per tokenizer, alternating binaries; the time is CPU time (user + system, so other load on a shared
machine counts less than in wall time), the best of the runs, less the best time to load the tokenizer and encode
nothing. HF's own encode_batch time (Rust, one thread) is printed for scale. Ids of every binary are checked
equal.

Run: .pyenv/bin/python tests/torch/bench_tokenizer.py BUILD_DIR [BUILD_DIR...]   (env MB=4 REPEAT=5)
"""

import glob
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import test_tokenizer_vs_hf as T  # noqa: E402  (the styles, corpus and record format)


def corpus(mb):
    texts, total = [], 0
    for path in sorted(glob.glob("/usr/share/doc/*/copyright")):
        with open(path, "rb") as f:
            t = f.read().decode("utf-8", errors="replace")
        for i in range(0, len(t), 4000):
            texts.append(t[i:i + 4000])
            total += len(texts[-1].encode())
        if total >= mb * 2**20 * 0.9:
            break
    texts += T.CORPUS * max(1, int(mb * 2**20 * 0.1) // sum(len(c.encode()) for c in T.CORPUS))
    return texts


def cpu_run(cmd, **kw):
    """Runs cmd; returns (CPU seconds of the child, the CompletedProcess)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, check=True, **kw)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), r


def main():
    bins = [os.path.join(b, "tl_tok") for b in sys.argv[1:]]
    mb, repeat = float(os.environ.get("MB", 4)), int(os.environ.get("REPEAT", 5))
    texts = corpus(mb)
    nbytes = sum(len(t.encode()) for t in texts)
    print(f"corpus: {len(texts)} records, {nbytes / 2**20:.2f} MiB")
    os.environ["RAYON_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as work:
        rec, empty = os.path.join(work, "rec.bin"), os.path.join(work, "empty.bin")
        T.write_records(rec, texts)
        T.write_records(empty, [])
        for style in ["smollm", "llama3"]:
            path = os.path.join(work, f"{style}.json")
            hf, _ = T.build_tokenizer(style, texts, path, 32000)
            t0 = time.perf_counter()
            want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
            hf_s = time.perf_counter() - t0
            best, load, outs = {}, {}, {}
            for _ in range(repeat):
                for b in bins:
                    s, _ = cpu_run([b, "encode", path, empty], stdout=subprocess.DEVNULL)
                    load[b] = min(load.get(b, 1e9), s)
                    s, r = cpu_run([b, "encode", path, rec], capture_output=True)
                    best[b] = min(best.get(b, 1e9), s)
                    outs[b] = r.stdout
            ids = [[int(x) for x in ln.split()] for ln in outs[bins[0]].decode().split("\n")[:-1]]
            same = all(outs[b] == outs[bins[0]] for b in bins)
            print(f"{style}: ids equal across builds: {same}; equal to HF: {ids == want}")
            for b in bins:
                enc = best[b] - load[b]
                print(f"  {b}: encode {enc:.3f} s CPU ({nbytes / 2**20 / enc:.2f} MiB/s), load {load[b] * 1e3:.0f} ms")
            print(f"  HF tokenizers encode_batch (1 thread): {hf_s:.3f} s  {nbytes / 2**20 / hf_s:.2f} MiB/s")


if __name__ == "__main__":
    main()
