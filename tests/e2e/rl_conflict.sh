# Online RL per user (task.type grpo and rloo, docs/rl.md) on conflicting preferences: per-user Bradley-Terry
# reward models (task.type reward) on scripts/make_pref_data.py's data, where group A prefers one token set and
# group B the other; then per-user GRPO and RLOO policies against them. Checks: every user's mean reward (their
# own reward model, on their sampled answers) rises from the first steps to the last, and on held-out prompts
# (rl_eval.json) it is above the starting adapter's (fresh LoRA: the base model) for every user; one global policy
# trained against one global reward model (which cannot serve both groups) does worse than the per-user policies
# for every user, and clearly so for a whole group (tailor eval with adapter.init_from = the global adapter
# scores it with each user's own reward model); a rerun, and a run killed and resumed, are bit-identical (seeded
# sampling, per-adapter streams from the checkpointed step counts); a user's adapter
# trained alone equals the one trained beside the others (isolation); the metrics records carry the RL fields.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 64 --layers 2 --heads 4 --kv-heads 2 --ffn 128 --seed 3
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/pref.h5" --eval-out "$T/pref_eval.h5" --users 4 \
  --pairs-per-user 48 --eval-pairs-per-user 16 --vocab 64 --seed 6 >/dev/null
write_config "$T/rm.yaml" "$T/model" "$T/pref.h5" "" "$T/rm" "steps: 40" "examples_per_adapter: 8" "lr: 0.005" \
  "warmup_steps: 3" "micro_batch_tokens: 1024"
echo "task: {type: reward, center_rewards: 0.01}" >>"$T/rm.yaml"
"$TAILOR_BIN" train "$T/rm.yaml" >"$T/rm.out" 2>&1 || { cat "$T/rm.out"; die "reward model training failed"; }
"$TL_PYTHON" - "$T" <<'PY'
import sys, h5py, numpy as np
T = sys.argv[1]
rng = np.random.default_rng(0)
def write(path, users, per):
    toks, offs, us = [], [0], []
    for i in range(per):
        for u in range(len(users)):
            n = int(rng.integers(4, 12)); toks += list(rng.integers(3, 64, n)); offs.append(len(toks)); us.append(u)
    with h5py.File(path, "w") as f:
        f.attrs["tailor_format"] = 1; f.attrs["kind"] = "prompt"; f.attrs["vocab_size"] = 64
        f["users/name"] = np.array(users, dtype=h5py.string_dtype())
        f["prompt/tokens"] = np.array(toks, np.int32); f["prompt/offsets"] = np.array(offs, np.int64)
        f["prompt/user"] = np.array(us, np.int32)
write(f"{T}/prompts.h5", [f"user{u:04d}" for u in range(4)], 16)
write(f"{T}/prompts_eval.h5", [f"user{u:04d}" for u in range(4)], 8)
# user0000's prompts alone, the same ones in the same order
with h5py.File(f"{T}/prompts.h5") as f:
    toks, offs, us = f["prompt/tokens"][:], f["prompt/offsets"][:], f["prompt/user"][:]
sel = [i for i in range(len(us)) if us[i] == 0]
t2 = np.concatenate([toks[offs[i]:offs[i + 1]] for i in sel]).astype(np.int32)
o2 = np.cumsum([0] + [offs[i + 1] - offs[i] for i in sel]).astype(np.int64)
with h5py.File(f"{T}/prompts_one.h5", "w") as f:
    f.attrs["tailor_format"] = 1; f.attrs["kind"] = "prompt"; f.attrs["vocab_size"] = 64
    f["users/name"] = np.array(["user0000"], dtype=h5py.string_dtype())
    f["prompt/tokens"] = t2; f["prompt/offsets"] = o2; f["prompt/user"] = np.zeros(len(sel), np.int32)
PY
rl_config() { # PATH RUN TYPE [extra train lines]
  local path=$1 run=$2 type=$3; shift 3
  write_config "$path" "$T/model" "$T/prompts.h5" "" "$run" "steps: 40" "examples_per_adapter: 4" "lr: 0.02" \
    "micro_batch_tokens: 1024" "log_every: 1" "$@"
  sed -i 's/max_seq_len: 48/max_seq_len: 32/; s/rank: 4, alpha: 8/rank: 8, alpha: 16/' "$path"
  echo "task: {type: $type, reward_model: $T/rm, num_generations: 4, max_completion_length: 8, beta: 0.02}" >>"$path"
}
check_rises() { # RUN: every user's mean reward over the last 5 steps is above that of the first 5 steps
  "$TL_PYTHON" - "$1" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"users"' in l]
for k in ("reward", "reward_std", "kl", "completion_length", "clip_ratio", "rollout_tokens_per_s", "train_tokens_per_s"):
    assert k in rs[0], k
users = sorted(rs[0]["users"])
assert len(users) == 4, users
for u in users:
    first = sum(r["users"][u]["reward"] for r in rs[:5]) / 5
    last = sum(r["users"][u]["reward"] for r in rs[-5:]) / 5
    print(f"{u}: reward {first:+.3f} (steps 1-5) -> {last:+.3f} (last 5)")
    assert last > first + 0.5, (u, first, last)
print(f"rollout {rs[-1]['rollout_tokens_per_s']} tok/s, training {rs[-1]['train_tokens_per_s']} tok/s")
PY
}
for type in grpo rloo; do
  rl_config "$T/$type.yaml" "$T/$type" $type
  sed -i "s|train: $T/prompts.h5,|train: $T/prompts.h5, eval: $T/prompts_eval.h5,|" "$T/$type.yaml"
  "$TAILOR_BIN" train "$T/$type.yaml" >"$T/$type.out" 2>&1 || { cat "$T/$type.out"; die "$type training failed"; }
  echo "== $type"
  check_rises "$T/$type" || die "$type: a user's reward did not rise"
  "$TL_PYTHON" - "$T/$type/rl_eval.json" <<'PY' || die "$type: held-out reward did not rise for every user"
import json, sys
ev = json.load(open(sys.argv[1]))
assert len(ev["adapters"]) == 4
for a in ev["adapters"]:
    print(f'{a["name"]}: held-out reward {a["reward"]:+.3f}, starting adapter (= base) {a["reward_base"]:+.3f}')
    assert a["reward"] > a["reward_base"] + 0.5, a
PY
done
# report.html draws the per-user reward curves
"$TAILOR_BIN" report "$T/grpo" >/dev/null || die "tailor report failed"
[ "$(grep -o 'data-key="user_reward" data-adapter="user000[0-3]"' "$T/grpo/report.html" | sort -u | wc -l)" -eq 4 ] \
  || die "report.html lacks a per-user reward curve"
# one global reward model and one global policy on the same data
"$TAILOR_BIN" train "$T/rm.yaml" adapter.key=global run.output_dir="$T/rm_global" >/dev/null 2>&1 || die "global reward model failed"
"$TAILOR_BIN" train "$T/grpo.yaml" adapter.key=global task.reward_model="$T/rm_global" run.output_dir="$T/grpo_global" \
  train.examples_per_adapter=16 >/dev/null 2>&1 || die "global policy failed"
"$TAILOR_BIN" eval "$T/grpo.yaml" adapter.init_from="$T/grpo_global/adapters/global" >"$T/geval.out" 2>&1 || { cat "$T/geval.out"; die "eval of the global policy failed"; }
"$TL_PYTHON" - "$T/grpo/rl_eval.json" <<'PY' || die "the global policy is not worse than per-user policies"
import json, sys
ev = {a["name"]: a for a in json.load(open(sys.argv[1]))["adapters"]}
group = {"user0000": "A", "user0001": "B", "user0002": "A", "user0003": "B"}
gap = {"A": [], "B": []}
for u, a in sorted(ev.items()):
    print(f'{u} ({group[u]}): per-user policy {a["reward"]:+.3f}, global policy {a["reward_start"]:+.3f}')
    assert a["reward"] > a["reward_start"], a
    gap[group[u]].append(a["reward"] - a["reward_start"])
worst = max(sum(v) / len(v) for v in gap.values())
print(f"mean shortfall of the global policy: A {sum(gap['A']) / 2:.3f}, B {sum(gap['B']) / 2:.3f}")
assert worst > 1.0, gap
PY
# repeatable: the same config gives bit-identical adapters
"$TAILOR_BIN" train "$T/grpo.yaml" train.resume=never run.output_dir="$T/grpo2" >/dev/null 2>&1 || die "rerun failed"
same_adapters "$T/grpo/adapters" "$T/grpo2/adapters" 0 || die "a rerun of the same config differs"
# resume: killed after step 20 (checkpoint at 20), resumed: bit-identical to the uninterrupted run
set +e
TAILOR_FAULT_KILL_AFTER_STEP=20 "$TAILOR_BIN" train "$T/grpo.yaml" run.output_dir="$T/killed" train.checkpoint_every=20 \
  >/dev/null 2>&1
set -e
"$TAILOR_BIN" train "$T/grpo.yaml" run.output_dir="$T/killed" train.checkpoint_every=20 >"$T/resumed.out" 2>&1 \
  || { cat "$T/resumed.out"; die "resume failed"; }
grep -q "resuming from .*step-00000020" "$T/resumed.out" || die "did not resume from step 20: $(cat "$T/resumed.out")"
same_adapters "$T/grpo/adapters" "$T/killed/adapters" 0 || die "a resumed run differs from the uninterrupted one"
# isolation: user0000 trained alone
"$TAILOR_BIN" train "$T/grpo.yaml" data.train="$T/prompts_one.h5" run.output_dir="$T/one" >/dev/null 2>&1 || die "one-user run failed"
"$TL_PYTHON" - "$T" <<'PY' || die "user0000 alone differs from user0000 beside the others"
import json, struct, sys
import numpy as np
T = sys.argv[1]
def load(run):
    idx = {a["name"]: a["dir"] for a in json.load(open(f"{run}/adapters/index.json"))["adapters"]}
    b = open(f"{run}/adapters/{idx['user0000']}/adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return np.concatenate([np.frombuffer(b[8 + n + v["data_offsets"][0]: 8 + n + v["data_offsets"][1]], np.float32)
                           for k, v in sorted(h.items()) if k != "__metadata__"])
a, b = load(f"{T}/grpo"), load(f"{T}/one")
rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
print(f"user0000 alone vs beside others: relative L2 {rel:.3g}")
assert rel < 1e-3, rel
PY
echo ok
