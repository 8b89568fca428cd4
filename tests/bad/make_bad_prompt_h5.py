#!/usr/bin/python3
"""Writes a prompt dataset (kind "prompt", for task.type grpo / rloo) with one named defect, for the bad-input
tests: make_bad_prompt_h5.py KIND OUT [VOCAB].

KIND (and what tailor must report, exit code 2, one line naming the file):
  good               a valid file (3 users in 2 groups, 6 prompts of 2..6 tokens, tokens < 60, reference answers)
  long_prompt        valid, but prompt 3 has 300 tokens: longer than a run's context (data.max_seq_len)
  empty_set          /prompt/offsets is [0]: no prompts -> "/prompt/offsets: empty dataset (no prompts)"
  empty_prompt       prompt 2 has no token -> "/prompt/offsets: prompt 2 is empty ..."
  user_out_of_range  /prompt/user of prompt 4 is 7 with 3 users -> "/prompt/user: prompt 4 has user 7 ..."
  user_length        /prompt/user has 5 elements for 6 prompts -> "/prompt/user: length 5, expected 6 ..."
  half_reference     /prompt/reference/tokens without /prompt/reference/offsets
                     -> "/prompt/reference/offsets: missing dataset, expected ... together or neither"
  token_out_of_vocab a prompt token 5000 -> "/prompt/tokens: prompt 1 ... " (vocabulary)
"""
import sys

import h5py
import numpy as np

KINDS = ("good", "long_prompt", "empty_set", "empty_prompt", "user_out_of_range", "user_length", "half_reference",
         "token_out_of_vocab")


def main(argv):
    if len(argv) not in (3, 4) or argv[1] not in KINDS:
        sys.exit(f"usage: make_bad_prompt_h5.py KIND OUT [VOCAB], KIND one of {', '.join(KINDS)}")
    kind, out = argv[1], argv[2]
    vocab = int(argv[3]) if len(argv) == 4 else 60
    rng = np.random.default_rng(0)
    names, groups = ["ann", "ben", "cid"], ["g1", "g2", "g1"]
    users = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    lens = [4, 2, 3, 5, 2, 6]
    if kind == "empty_set":
        lens, users = [], np.zeros(0, dtype=np.int32)
    elif kind == "empty_prompt":
        lens[2] = 0
    elif kind == "long_prompt":
        lens[3] = 300
    elif kind == "user_out_of_range":
        users[4] = 7
    elif kind == "user_length":
        users = users[:5]
    tokens = rng.integers(3, vocab, int(sum(lens))).astype(np.int32)
    if kind == "token_out_of_vocab":
        tokens[lens[0]] = 5000
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    ref_lens = [2] * len(lens)
    with h5py.File(out, "w") as f:
        f.attrs["tailor_format"] = 1
        f.attrs["kind"] = "prompt"
        f.attrs["vocab_size"] = vocab
        f["users/name"] = np.array(names, dtype=h5py.string_dtype())
        f["users/group"] = np.array(groups, dtype=h5py.string_dtype())
        f["prompt/tokens"] = tokens
        f["prompt/offsets"] = offsets
        f["prompt/user"] = users
        f["prompt/reference/tokens"] = rng.integers(3, vocab, int(sum(ref_lens))).astype(np.int32)
        if kind != "half_reference":
            f["prompt/reference/offsets"] = np.concatenate([[0], np.cumsum(ref_lens)]).astype(np.int64)


if __name__ == "__main__":
    main(sys.argv)
