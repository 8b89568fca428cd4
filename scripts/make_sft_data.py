#!/usr/bin/python3
"""make_sft_data: writes a synthetic multi-user SFT dataset in tailor's HDF5 schema (docs/data-format.md).

Each user (or each group, with --groups) owns a random permutation pi over a small alphabet of tokens
[3, 3 + K). An example is a random prompt over the alphabet and a response that follows pi: the first response
token is pi(last prompt token), each next one is pi(previous) with probability --p-follow (default 0.9) and a
uniformly random alphabet token otherwise. A per-user adapter can learn its user's pi; a global one cannot, so
the data separates personalized from shared training. Tokens 0..2 are never used (room for pad/bos/eos).

The lowest achievable mean loss over response tokens is stored in the root attribute synthetic_min_loss (nats):
the first response token is deterministic, every later one has the entropy of the follow/random mixture.

--eval-out writes held-out examples of the same users (same permutations, a different random stream).
Deterministic given --seed. Prints one summary line.
"""
import argparse
import math
import sys

import h5py
import numpy as np

RESERVED = 3  # tokens 0, 1, 2 stay unused

# Names that stress export: path separators, dot names, spaces, non-ASCII, shell and Windows specials.
HOSTILE = [
    "a/b", "..", ".", "with space", "ünïcødé", "日本語ユーザー", "../../etc/passwd", "CON", "nul.txt",
    "trailing ", " leading", "semi;colon", "quote\"d", "back\\slash", "star*q?", "-dash", "emoji-\U0001F600",
    "x" * 200, "UPPER", "upper",
]


def fail(msg):
    """Bad input: one line on stderr, exit code 2 (tailor's convention)."""
    print(f"make_sft_data: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="training dataset path (.h5)")
    p.add_argument("--eval-out", help="held-out dataset path (.h5), same users and patterns")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--examples-per-user", type=int, default=64)
    p.add_argument("--eval-examples-per-user", type=int, default=16)
    p.add_argument("--vocab", type=int, default=64, help="vocab_size attribute; must be >= alphabet + 3")
    p.add_argument("--alphabet", type=int, default=32, help="K, the number of tokens the patterns use")
    p.add_argument("--prompt-len", type=int, nargs=2, default=[4, 12], metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=[4, 16], metavar=("MIN", "MAX"))
    p.add_argument("--p-follow", type=float, default=0.9, help="probability a response token follows pi")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, default=0,
                   help="write /users/group with G groups (users assigned round robin); users of one group share pi")
    p.add_argument("--user-prefix", default="user", help="user names are PREFIX0000, PREFIX0001, ...")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--names-file", help="UTF-8 file with one user name per line (the first --users are used)")
    names.add_argument("--hostile-names", action="store_true",
                       help="odd user names (/, .., spaces, unicode, ...) for export safety tests")
    a = p.parse_args(argv)
    err = None
    if a.users < 1:
        err = "--users must be >= 1"
    elif a.examples_per_user < 0 or a.eval_examples_per_user < 0:
        err = "--examples-per-user and --eval-examples-per-user must be >= 0"
    elif a.users * a.examples_per_user == 0:
        err = "the training set would be empty (--users * --examples-per-user = 0)"
    elif a.alphabet < 2:
        err = "--alphabet must be >= 2"
    elif a.vocab < a.alphabet + RESERVED:
        err = f"--vocab {a.vocab} must be >= --alphabet + 3 = {a.alphabet + RESERVED}"
    elif not (1 <= a.prompt_len[0] <= a.prompt_len[1]):
        err = "--prompt-len needs 1 <= MIN <= MAX (the response starts from the last prompt token)"
    elif not (1 <= a.response_len[0] <= a.response_len[1]):
        err = "--response-len needs 1 <= MIN <= MAX"
    elif not (0.0 <= a.p_follow <= 1.0):
        err = "--p-follow must be in [0, 1]"
    elif a.groups < 0 or a.groups > a.users:
        err = "--groups must be in [0, --users]"
    elif a.eval_out and a.eval_examples_per_user == 0:
        err = "--eval-out needs --eval-examples-per-user >= 1"
    if err:
        p.error(err)
    return a


def user_names(a):
    if a.names_file:
        with open(a.names_file, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f]
        names = [n for n in names if n != ""]
        if len(names) < a.users:
            fail(f"{a.names_file}: {len(names)} names, need --users {a.users}")
        names = names[: a.users]
    elif a.hostile_names:
        # cycle through the odd names; later rounds get a suffix so every name stays unique
        names = [HOSTILE[i % len(HOSTILE)] + ("" if i < len(HOSTILE) else f"#{i // len(HOSTILE)}")
                 for i in range(a.users)]
    else:
        names = [f"{a.user_prefix}{i:04d}" for i in range(a.users)]
    if len(set(names)) != len(names):
        fail("user names must be unique")
    return names


def min_loss(a, resp_lens):
    """Mean over response tokens of the best achievable cross-entropy (nats)."""
    K, p = a.alphabet, a.p_follow
    top, rest = p + (1 - p) / K, (1 - p) / K
    h = -top * math.log(top) - ((K - 1) * rest * math.log(rest) if rest > 0 else 0.0)
    n = float(np.sum(resp_lens))
    later = float(np.sum(np.maximum(resp_lens - 1, 0)))
    return h * later / n if n > 0 else 0.0


def make_examples(a, perms, owner_perm, n_per_user, rng):
    """Returns tokens, offsets, prompt_len, user, response lengths; examples of all users interleaved."""
    K = a.alphabet
    users = np.repeat(np.arange(a.users, dtype=np.int32), n_per_user)
    rng.shuffle(users)  # interleave users in dataset order, as real data would be
    toks, offsets, plens, rlens = [], [0], [], []
    for u in users:
        pi = perms[owner_perm[u]]
        pl = int(rng.integers(a.prompt_len[0], a.prompt_len[1] + 1))
        rl = int(rng.integers(a.response_len[0], a.response_len[1] + 1))
        prompt = rng.integers(0, K, size=pl)
        follow = rng.random(rl) < a.p_follow
        noise = rng.integers(0, K, size=rl)
        resp = np.empty(rl, dtype=np.int64)
        prev = prompt[-1]
        for i in range(rl):
            prev = pi[prev] if (i == 0 or follow[i]) else noise[i]
            resp[i] = prev
        toks.append(prompt + RESERVED)
        toks.append(resp + RESERVED)
        offsets.append(offsets[-1] + pl + rl)
        plens.append(pl)
        rlens.append(rl)
    tokens = np.concatenate(toks).astype(np.int32) if toks else np.zeros(0, np.int32)
    return (tokens, np.asarray(offsets, np.int64), np.asarray(plens, np.int32), users.astype(np.int32),
            np.asarray(rlens, np.int64))


def write(path, a, names, groups, data):
    tokens, offsets, plens, users, rlens = data
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs["tailor_format"] = np.int64(1)
        f.attrs["kind"] = "sft"
        f.attrs["vocab_size"] = np.int64(a.vocab)
        f.attrs["synthetic_alphabet"] = np.int64(a.alphabet)
        f.attrs["synthetic_p_follow"] = np.float64(a.p_follow)
        f.attrs["synthetic_min_loss"] = np.float64(min_loss(a, rlens))
        f.create_dataset("users/name", data=np.array(names, dtype=object), dtype=s)
        if groups is not None:
            f.create_dataset("users/group", data=np.array(groups, dtype=object), dtype=s)
        f.create_dataset("sft/tokens", data=tokens, dtype=np.int32)
        f.create_dataset("sft/offsets", data=offsets, dtype=np.int64)
        f.create_dataset("sft/prompt_len", data=plens, dtype=np.int32)
        f.create_dataset("sft/user", data=users, dtype=np.int32)
    return min_loss(a, rlens)


def main(argv):
    a = parse_args(argv)
    names = user_names(a)
    root = np.random.SeedSequence(a.seed)
    s_perm, s_train, s_eval = root.spawn(3)
    n_perm = a.groups if a.groups else a.users
    prng = np.random.default_rng(s_perm)
    perms = [prng.permutation(a.alphabet) for _ in range(n_perm)]
    owner = [u % a.groups for u in range(a.users)] if a.groups else list(range(a.users))
    groups = [f"group{g}" for g in owner] if a.groups else None

    train = make_examples(a, perms, owner, a.examples_per_user, np.random.default_rng(s_train))
    loss = write(a.out, a, names, groups, train)
    summary = (f"make_sft_data: {a.out}: {a.users} users, {len(train[2])} examples, {len(train[0])} tokens, "
               f"alphabet {a.alphabet} of vocab {a.vocab}, {a.groups or 'no'} groups, min response loss "
               f"{loss:.4f} nats")
    if a.eval_out:
        ev = make_examples(a, perms, owner, a.eval_examples_per_user, np.random.default_rng(s_eval))
        write(a.eval_out, a, names, groups, ev)
        summary += f"; eval {a.eval_out}: {len(ev[2])} examples"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
