#!/usr/bin/python3
"""make_pref_data: writes a synthetic "conflicting preferences" dataset in tailor's preference HDF5 schema.

Two groups of users want opposite things. The vocabulary holds two disjoint token sets of --set-size tokens each,
"low" L = [3, 3 + K) and "high" H = [3 + K, 3 + 2K). Every pair has a random prompt over all non-reserved tokens
[3, vocab) and two responses, one made only of L tokens and one made only of H tokens, with lengths drawn
independently from the same range (so neither length nor anything else but the token set tells them apart).
Users of group A choose the low response and reject the high one; users of group B the opposite. So the same
kind of pair is labelled both ways in one file: one global adapter faces a contradiction (it can at best be
indifferent, reward accuracy ~50% over all users), while one adapter per user (or per group) learns its side
within a few dozen steps. Within a group each user adds a small personal twist: a favourite token of the group's
set makes up about --p-twist of the tokens of that user's chosen responses, and a disliked token of the other
set as much of the rejected ones; the group preference dominates. The twists are mirrored between users 2k (A)
and 2k+1 (B) (one's favourite is the other's dislike), so over all users no token is more frequent in chosen
than in rejected responses: without the mirror, "repeated tokens are preferred" would be a signal a global
adapter could learn without knowing the user. Tokens 0..2 are never used (room for pad/bos/eos).

Users are named PREFIX0000, PREFIX0001, ...; user u is in group "A" when u is even and "B" when odd (with
--groups 1 every user is in "A": no conflict, a control). /users/group is always written, so adapter.key: group
works. Pairs of all users are interleaved in dataset order. --eval-out writes held-out pairs of the same users
(same twists, a different random stream). Deterministic given --seed. Prints one summary line.

Schema (format 1, kind "preference"): root attributes tailor_format = 1, kind = "preference", vocab_size;
/users/name [U] and /users/group [U] strings; /pref/prompt/tokens int32 + /pref/prompt/offsets int64 [N+1];
/pref/chosen/tokens + offsets; /pref/rejected/tokens + offsets; /pref/user int32 [N]. Pair i's prompt is
prompt/tokens[offsets[i]:offsets[i+1]], likewise its chosen and rejected responses (which follow the prompt).
Provenance attributes synthetic_* describe the sets; readers ignore them.
"""
import argparse
import sys

import h5py
import numpy as np

RESERVED = 3  # tokens 0, 1, 2 stay unused


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="training dataset path (.h5)")
    p.add_argument("--eval-out", help="held-out dataset path (.h5), same users and preferences")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--pairs-per-user", type=int, default=64)
    p.add_argument("--eval-pairs-per-user", type=int, default=16)
    p.add_argument("--vocab", type=int, default=128, help="vocab_size attribute; must be >= 3 + 2 * --set-size "
                   "and <= the model's vocabulary")
    p.add_argument("--set-size", type=int, default=8, help="K, tokens in each of the low and high sets")
    p.add_argument("--prompt-len", type=int, nargs=2, default=[4, 12], metavar=("MIN", "MAX"))
    p.add_argument("--response-len", type=int, nargs=2, default=[4, 12], metavar=("MIN", "MAX"))
    p.add_argument("--p-twist", type=float, default=0.3,
                   help="share of a user's chosen (rejected) response tokens that are its favourite (disliked) token")
    p.add_argument("--groups", type=int, default=2, choices=(1, 2),
                   help="2: users alternate between groups A (prefers low) and B (prefers high); 1: all in A")
    p.add_argument("--user-prefix", default="user", help="user names are PREFIX0000, PREFIX0001, ...")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    err = None
    if a.users < 1:
        err = "--users must be >= 1"
    elif a.pairs_per_user < 1:
        err = "--pairs-per-user must be >= 1"
    elif a.eval_pairs_per_user < 0:
        err = "--eval-pairs-per-user must be >= 0"
    elif a.eval_out and a.eval_pairs_per_user == 0:
        err = "--eval-out needs --eval-pairs-per-user >= 1"
    elif a.set_size < 1:
        err = "--set-size must be >= 1"
    elif a.vocab < RESERVED + 2 * a.set_size:
        err = f"--vocab {a.vocab} must be >= 3 + 2 * --set-size = {RESERVED + 2 * a.set_size}"
    elif a.vocab > 2**31 - 1:
        err = "--vocab must fit in int32"
    elif not (1 <= a.prompt_len[0] <= a.prompt_len[1]):
        err = "--prompt-len needs 1 <= MIN <= MAX"
    elif not (1 <= a.response_len[0] <= a.response_len[1]):
        err = "--response-len needs 1 <= MIN <= MAX"
    elif not (0.0 <= a.p_twist < 1.0):
        err = "--p-twist must be in [0, 1)"
    elif not a.user_prefix:
        err = "--user-prefix must not be empty"
    if err:
        p.error(err)
    return a


def token_sets(a):
    low = np.arange(RESERVED, RESERVED + a.set_size, dtype=np.int64)
    high = np.arange(RESERVED + a.set_size, RESERVED + 2 * a.set_size, dtype=np.int64)
    return low, high


def twists(a, groups, rng):
    """Each user's (favourite, disliked) token; users 2k and 2k+1 of opposite groups get mirrored twists."""
    low, high = token_sets(a)
    out = []
    for u, g in enumerate(groups):
        if a.groups == 2 and u % 2 == 1:
            fav_a, dis_a = out[u - 1]
            out.append((dis_a, fav_a))  # group B: likes the high token user u-1 dislikes, and vice versa
        else:
            fav, dis = int(rng.choice(low)), int(rng.choice(high))
            out.append((fav, dis) if g == "A" else (dis, fav))
    return out


def make_pairs(a, groups, twist, n_per_user, rng):
    """Returns (prompt, chosen, rejected) as (tokens int32, offsets int64) each, and the user of every pair."""
    low, high = token_sets(a)
    users = np.repeat(np.arange(a.users, dtype=np.int32), n_per_user)
    rng.shuffle(users)  # interleave users in dataset order, as real data would be
    parts = {"prompt": [], "chosen": [], "rejected": []}
    for u in users:
        want, other = (low, high) if groups[u] == "A" else (high, low)
        pl = int(rng.integers(a.prompt_len[0], a.prompt_len[1] + 1))
        parts["prompt"].append(rng.integers(RESERVED, a.vocab, size=pl))
        lc = int(rng.integers(a.response_len[0], a.response_len[1] + 1))
        lr = int(rng.integers(a.response_len[0], a.response_len[1] + 1))
        chosen = rng.choice(want, size=lc)
        chosen[rng.random(lc) < a.p_twist] = twist[u][0]  # the user's own twist inside the group's set
        rejected = rng.choice(other, size=lr)
        rejected[rng.random(lr) < a.p_twist] = twist[u][1]
        parts["chosen"].append(chosen)
        parts["rejected"].append(rejected)
    out = {}
    for k, seqs in parts.items():
        offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(s) for s in seqs])
        out[k] = (np.concatenate(seqs).astype(np.int32), offsets)
    return out, users


def write(path, a, names, groups, data, users):
    s = h5py.string_dtype("utf-8")
    low, high = token_sets(a)
    with h5py.File(path, "w") as f:
        f.attrs["tailor_format"] = np.int64(1)
        f.attrs["kind"] = "preference"
        f.attrs["vocab_size"] = np.int64(a.vocab)
        f.attrs["synthetic_low_tokens"] = np.array([low[0], low[-1] + 1], dtype=np.int64)
        f.attrs["synthetic_high_tokens"] = np.array([high[0], high[-1] + 1], dtype=np.int64)
        f.attrs["synthetic_p_twist"] = np.float64(a.p_twist)
        f.create_dataset("users/name", data=np.array(names, dtype=object), dtype=s)
        f.create_dataset("users/group", data=np.array(groups, dtype=object), dtype=s)
        for k in ("prompt", "chosen", "rejected"):
            tokens, offsets = data[k]
            f.create_dataset(f"pref/{k}/tokens", data=tokens, dtype=np.int32)
            f.create_dataset(f"pref/{k}/offsets", data=offsets, dtype=np.int64)
        f.create_dataset("pref/user", data=users, dtype=np.int32)


def main(argv):
    a = parse_args(argv)
    names = [f"{a.user_prefix}{i:04d}" for i in range(a.users)]
    groups = ["A" if (a.groups == 1 or u % 2 == 0) else "B" for u in range(a.users)]
    s_fav, s_train, s_eval = np.random.SeedSequence(a.seed).spawn(3)
    low, high = token_sets(a)
    twist = twists(a, groups, np.random.default_rng(s_fav))

    train, tu = make_pairs(a, groups, twist, a.pairs_per_user, np.random.default_rng(s_train))
    write(a.out, a, names, groups, train, tu)
    n_a = groups.count("A")
    summary = (f"make_pref_data: {a.out}: {a.users} users ({n_a} in A prefer tokens {low[0]}..{low[-1]}, "
               f"{a.users - n_a} in B prefer {high[0]}..{high[-1]}), {len(tu)} pairs, vocab {a.vocab}")
    if a.eval_out:
        ev, eu = make_pairs(a, groups, twist, a.eval_pairs_per_user, np.random.default_rng(s_eval))
        write(a.eval_out, a, names, groups, ev, eu)
        summary += f"; eval {a.eval_out}: {len(eu)} pairs"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
