#!/usr/bin/python3
"""Writes a preference dataset with one named defect, for the bad-input tests: make_bad_pref_h5.py KIND OUT.

KIND (and what tailor must report, exit code 2, one line naming the file):
  good               a valid file (3 users in 2 groups, 6 pairs, tokens < 60, /users/group present)
  missing_group      valid but without /users/group: fine for adapter.key user or global; with adapter.key
                     group the run fails when the adapter map is built, naming adapter.key and /users/group
  offsets_mismatch   /pref/rejected/offsets has one element fewer than /pref/prompt/offsets
                     -> "/pref/rejected/offsets: length 6, expected 7 ..."
  user_out_of_range  /pref/user of pair 4 is 7 with 3 users -> "/pref/user: pair 4 has user 7 ..."
  empty_chosen       pair 2's chosen response has no token -> "/pref/chosen/offsets: pair 2 has an empty chosen ..."
  empty_rejected     pair 3's rejected response has no token -> "/pref/rejected/offsets: pair 3 has an empty ..."
  nothing_trainable  every prompt empty and every response 1 token: no pair has a token to train on
                     -> "/pref/prompt/offsets: no pair has a token to train on ..."
  external_users     /users/name is an external link to OUT.ext.h5:/name (a valid names array)
                     -> "/users/name: is an external or user-defined link ..."
"""
import sys

import h5py
import numpy as np

KINDS = ("good", "missing_group", "offsets_mismatch", "user_out_of_range", "empty_chosen", "empty_rejected",
         "nothing_trainable", "external_users")


def main(argv):
    if len(argv) != 3 or argv[1] not in KINDS:
        sys.exit(f"usage: make_bad_pref_h5.py KIND OUT, KIND one of {', '.join(KINDS)}")
    kind, out = argv[1], argv[2]
    rng = np.random.default_rng(0)
    names = ["ann", "ben", "cid"]
    groups = ["g1", "g2", "g1"]
    users = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    lens = {
        "prompt": [4, 0, 3, 5, 2, 6],  # pair 1 has an empty prompt, which is allowed
        "chosen": [3, 5, 2, 4, 6, 3],
        "rejected": [5, 2, 4, 3, 3, 4],
    }
    if kind == "empty_chosen":
        lens["chosen"][2] = 0
    elif kind == "empty_rejected":
        lens["rejected"][3] = 0
    elif kind == "user_out_of_range":
        users[4] = 7
    elif kind == "nothing_trainable":
        lens = {"prompt": [0] * 6, "chosen": [1] * 6, "rejected": [1] * 6}

    with h5py.File(out, "w") as f:
        f.attrs["tailor_format"] = 1
        f.attrs["kind"] = "preference"
        s = h5py.string_dtype("utf-8")
        if kind == "external_users":
            with h5py.File(out + ".ext.h5", "w") as g:
                g.create_dataset("name", data=np.array(names, dtype=object), dtype=s)
            f["users/name"] = h5py.ExternalLink(out.rsplit("/", 1)[-1] + ".ext.h5", "/name")
        else:
            f.create_dataset("users/name", data=np.array(names, dtype=object), dtype=s)
        if kind != "missing_group":
            f.create_dataset("users/group", data=np.array(groups, dtype=object), dtype=s)
        for part, ln in lens.items():
            toks = rng.integers(0, 60, sum(ln)).astype(np.int32)
            offs = np.concatenate([[0], np.cumsum(ln)]).astype(np.int64)
            if kind == "offsets_mismatch" and part == "rejected":
                toks = toks[: offs[-2]]  # keep the remaining offsets consistent with their tokens
                offs = offs[:-1]
            f.create_dataset(f"pref/{part}/tokens", data=toks)
            f.create_dataset(f"pref/{part}/offsets", data=offs)
        f.create_dataset("pref/user", data=users)


if __name__ == "__main__":
    main(sys.argv)
