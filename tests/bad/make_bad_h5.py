#!/usr/bin/python3
"""Writes an SFT dataset with one specific defect, for the bad-input tests: make_bad_h5.py KIND OUT.

KIND is one of: good, missing_dataset, wrong_dtype, decreasing_offsets, token_out_of_vocab, user_out_of_range,
prompt_len_gt_length, empty, user_without_examples."""
import sys

import h5py
import numpy as np

kind, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
names = ["ann", "ben", "cid"]
lens = [8, 12, 5, 9, 7, 10]
users = [0, 1, 2, 0, 1, 2]
toks = rng.integers(0, 60, sum(lens)).astype(np.int32)
offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
pl = np.array([3, 4, 1, 2, 0, 5], dtype=np.int32)
us = np.array(users, dtype=np.int32)

if kind == "decreasing_offsets":
    offs[3], offs[4] = offs[4], offs[3]
elif kind == "token_out_of_vocab":
    toks[17] = 1000
elif kind == "user_out_of_range":
    us[4] = 7
elif kind == "prompt_len_gt_length":
    pl[2] = 6
elif kind == "empty":
    toks = np.zeros(0, np.int32); offs = np.zeros(1, np.int64); pl = np.zeros(0, np.int32); us = np.zeros(0, np.int32)
elif kind == "user_without_examples":
    names.append("dan")
elif kind not in ("good", "missing_dataset", "wrong_dtype"):
    sys.exit(f"unknown kind {kind}")

with h5py.File(out, "w") as f:
    f.attrs["tailor_format"] = 1
    f.attrs["kind"] = "sft"
    f.create_dataset("users/name", data=np.array(names, dtype=h5py.string_dtype()))
    f.create_dataset("sft/tokens", data=toks.astype(np.float32) if kind == "wrong_dtype" else toks)
    f.create_dataset("sft/offsets", data=offs)
    if kind != "missing_dataset":
        f.create_dataset("sft/prompt_len", data=pl)
    f.create_dataset("sft/user", data=us)
