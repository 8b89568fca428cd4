"""Compares every adapter of two exported adapter directories (RUN/adapters with index.json).

usage: compare_adapters.py DIR_A DIR_B TOL [--l2]
Prints the worst relative difference per adapter (max |a - b| / max |a| over each tensor) and the relative L2
distance over all its tensors, and exits 1 when the first (with --l2: the second) exceeds TOL, when the adapter
sets or their step counts differ, or when an adapter never moved from its initialisation (all B zero). TOL 0
demands bit-identical tensors. --l2 suits runs where fp32 reassociation can flip the sign of a near-zero
gradient entry, which Adam's first steps turn into a full-size difference of that one element."""
import json
import struct
import sys

import numpy as np


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    base = 8 + n
    return {k: np.frombuffer(b[base + v["data_offsets"][0]: base + v["data_offsets"][1]], dtype=np.float32)
            .reshape(v["shape"]) for k, v in h.items() if k != "__metadata__"}


def adapters(d):
    idx = json.load(open(f"{d}/index.json"))
    return {a["name"]: f"{d}/{a['dir']}/adapter_model.safetensors" for a in idx["adapters"]}


def steps(d):
    return {a["name"]: a.get("steps") for a in json.load(open(f"{d}/index.json"))["adapters"]}


def main():
    da, db, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
    use_l2 = "--l2" in sys.argv[4:]
    A, B = adapters(da), adapters(db)
    if A.keys() != B.keys():
        print(f"adapter sets differ: {sorted(A)} vs {sorted(B)}")
        return 1
    if steps(da) != steps(db):
        print(f"adapter step counts differ: {steps(da)} vs {steps(db)}")
        return 1
    bad = 0
    for name in sorted(A):
        a, b = load(A[name]), load(B[name])
        if a.keys() != b.keys():
            print(f"{name}: tensor names differ")
            return 1
        if not any(np.abs(v).max() > 0 for k, v in a.items() if "lora_B" in k):
            print(f"{name}: B matrices are all zero: the adapter never trained")
            bad = 1
        worst = max(float(np.abs(a[k] - b[k]).max() / max(float(np.abs(a[k]).max()), 1e-12)) for k in a)
        num = sum(float(np.square(a[k].astype(np.float64) - b[k]).sum()) for k in a)
        den = sum(float(np.square(a[k].astype(np.float64)).sum()) for k in a)
        l2 = float(np.sqrt(num / max(den, 1e-300)))
        print(f"{name}: max relative difference {worst:.3g} (relative L2 {l2:.3g})")
        if (l2 if use_l2 else worst) > tol:
            bad = 1
    print("ok" if not bad else f"FAIL: difference above {tol:g}")
    return bad


if __name__ == "__main__":
    sys.exit(main())
