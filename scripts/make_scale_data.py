#!/usr/bin/python3
"""make_scale_data: synthetic datasets with many users, to measure tailor's data layer at scale (issue 13).

  make_scale_data.py h5 OUT.h5 [--users 100000] [--examples 8] [--min-len 16] [--max-len 64] [--vocab 49152]
  make_scale_data.py jsonl OUT.jsonl [--users 100000] [--examples 8] [--words-min 4] [--words-max 24]

h5 writes tailor's HDF5 SFT schema directly (docs/data-format.md): every user has --examples examples of a
uniformly random length in [--min-len, --max-len] tokens (random ids in [3, vocab)), the first quarter prompt.
Users are named "u000000", ... and the examples are interleaved (example k of every user, then k + 1), as data
gathered over time arrives. jsonl writes `tailor data build` input of the same shape: {"user", "prompt",
"response"} rows of random English-like words. Deterministic given --seed; written in blocks, so memory stays
small for any --users. Prints one summary line.
"""
import argparse
import json
import sys

import numpy as np

WORDS = ("time year people way day man thing woman life child world school state family student group country "
         "problem hand part place case week company system program question work government number night point "
         "home water room mother area money story fact month lot right study book eye job word business issue "
         "side kind head house service friend father power hour game line end member law car city community name "
         "president team minute idea kid body information back parent face others level office door health person "
         "art war history party result change morning reason research girl guy moment air teacher force").split()


def write_h5(a):
    import h5py
    r = np.random.default_rng(a.seed)
    U, E = a.users, a.examples
    n = U * E
    lens = r.integers(a.min_len, a.max_len + 1, size=n).astype(np.int64)
    offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=offs[1:])
    with h5py.File(a.out, "w") as f:
        f.attrs["tailor_format"] = 1
        f.attrs["kind"] = "sft"
        f.create_dataset("users/name", data=np.array([f"u{u:06d}" for u in range(U)], dtype=h5py.string_dtype()))
        tok = f.create_dataset("sft/tokens", shape=(int(offs[-1]),), dtype=np.int32, chunks=(1 << 18,))
        block = 1 << 22
        for t0 in range(0, int(offs[-1]), block):
            t1 = min(int(offs[-1]), t0 + block)
            tok[t0:t1] = r.integers(3, a.vocab, size=t1 - t0).astype(np.int32)
        f.create_dataset("sft/offsets", data=offs)
        f.create_dataset("sft/prompt_len", data=(lens // 4).astype(np.int32))
        f.create_dataset("sft/user", data=np.tile(np.arange(U, dtype=np.int32), E))
    print(f"make_scale_data: wrote {U} users x {E} examples, {int(offs[-1])} tokens to {a.out}")


def write_jsonl(a):
    r = np.random.default_rng(a.seed)
    nw = len(WORDS)
    rows = 0
    with open(a.out, "w", encoding="utf-8") as f:
        for k in range(a.examples):
            for u0 in range(0, a.users, 4096):
                u1 = min(a.users, u0 + 4096)
                lines = []
                for u in range(u0, u1):
                    w = r.integers(0, nw, size=2 * a.words_max)
                    lp, lr = r.integers(a.words_min, a.words_max + 1, size=2)
                    lines.append(json.dumps({"user": f"u{u:06d}",
                                             "prompt": " ".join(WORDS[i] for i in w[:lp]) + "?",
                                             "response": " " + " ".join(WORDS[i] for i in w[a.words_max:a.words_max + lr])}))
                f.write("\n".join(lines) + "\n")
                rows += u1 - u0
    print(f"make_scale_data: wrote {rows} rows of {a.users} users to {a.out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("format", choices=["h5", "jsonl"])
    ap.add_argument("out")
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--examples", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--words-min", type=int, default=4)
    ap.add_argument("--words-max", type=int, default=24)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.users < 1 or a.examples < 1 or not 2 <= a.min_len <= a.max_len or not 1 <= a.words_min <= a.words_max:
        sys.exit("make_scale_data: need --users, --examples >= 1, 2 <= --min-len <= --max-len, "
                 "1 <= --words-min <= --words-max")
    (write_h5 if a.format == "h5" else write_jsonl)(a)


if __name__ == "__main__":
    main()
