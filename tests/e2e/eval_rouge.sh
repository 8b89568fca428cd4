# tl_eval_rouge (trainer/eval_rouge.c, through tests/tools/tl_eval_rouge_tool): on a tiny trained run, every
# held-out example is answered greedily with its adapter and with the base model; each answer must equal what
# `tailor generate` prints for the same prompt and adapter, each reference the example's response text, and the
# per-adapter ROUGE-1 / ROUGE-L F means must equal the means recomputed from those answers (tl_rouge_tool, which
# tests/torch/test_rouge_vs_package.py checks against rouge-score) to 1e-12; and the same ROUGE in eval.json with
# the adapter store as without it, on one rank and (where MPI exists) on two.
source "$TAILOR_SRC/tests/lib/common.sh"
: "${TL_TEST_BIN:?set by ctest}"
"$TL_PYTHON" -c "import tokenizers, h5py" 2>/dev/null || { echo "SKIPPED: the tokenizers package is missing (scripts/pyenv.sh)"; exit 77; }
"$TL_PYTHON" - "$T" <<'PY'
import json, sys
import h5py, numpy as np
import os
sys.path.insert(0, os.environ["TAILOR_SRC"] + "/tests/lib")
from tiny_tokenizer import tiny_tokenizer
d = sys.argv[1]
corpus = ["The quick brown fox jumps over the lazy dog.", "A lazy cat sleeps on the warm mat.",
          "Red apples and green pears fill the basket."]
tok = tiny_tokenizer(corpus * 20, vocab_size=320)
tok.save(f"{d}/tokenizer.json")
end = tok.token_to_id("<|im_end|>")
users = ["alice", "bob"]
ex = {"alice": [("The quick brown", " fox jumps over the lazy dog."), ("A lazy cat", " sleeps on the mat."),
                ("Red apples", " and green pears!")],
      "bob": [("The lazy dog", " sleeps, the fox jumps."), ("Green pears and", " red apples fill the basket."),
              ("A warm mat", " for the lazy cat.")]}
def write(path, reps):
    toks, offs, plens, us, prompts = [], [0], [], [], []
    for _ in range(reps):
        for u, user in enumerate(users):
            for p, r in ex[user]:
                pi, ri = tok.encode(p).ids, tok.encode(r).ids + [end]
                toks += pi + ri; offs.append(len(toks)); plens.append(len(pi)); us.append(u)
                prompts.append({"prompt": p, "response": r})
    s = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs["tailor_format"] = np.int64(1); f.attrs["kind"] = "sft"
        f.create_dataset("users/name", data=np.array(users, dtype=object), dtype=s)
        f.create_dataset("sft/tokens", data=np.array(toks, dtype=np.int32))
        f.create_dataset("sft/offsets", data=np.array(offs, dtype=np.int64))
        f.create_dataset("sft/prompt_len", data=np.array(plens, dtype=np.int32))
        f.create_dataset("sft/user", data=np.array(us, dtype=np.int32))
    return prompts
write(f"{d}/train.h5", 4)
json.dump(write(f"{d}/eval.h5", 1), open(f"{d}/prompts.json", "w"))
print(tok.get_vocab_size(), file=open(f"{d}/V", "w"))
PY
V=$(cat "$T/V")
make_model "$T/model" --vocab "$V" --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
cp "$T/tokenizer.json" "$T/model/"
cat >"$T/c.yaml" <<Y
run: {name: t, output_dir: $T/run, seed: 1}
model: {path: $T/model}
adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
data: {train: $T/train.h5, max_seq_len: 48}
train: {backend: cpu, threads: 2, steps: 150, lr: 0.1, micro_batch_tokens: 512, log_every: 100}
Y
"$TAILOR_BIN" train "$T/c.yaml" >/dev/null 2>&1 || die "train failed"
ARGS=$("$TL_PYTHON" -c "
import json, sys
ix = json.load(open(sys.argv[1]))
print(' '.join(a['name'] + '=' + sys.argv[2] + '/' + a['dir'] for a in ix['adapters']))" "$T/run/adapters/index.json" "$T/run/adapters")
# shellcheck disable=SC2086
"$TL_TEST_BIN/tl_eval_rouge_tool" "$T/model" "$T/eval.h5" 8 4 8 q_proj,v_proj,o_proj,gate_proj,up_proj,down_proj "$T/out.json" $ARGS || die "tl_eval_rouge_tool failed"
"$TL_PYTHON" - "$T" "$TAILOR_BIN" "$TL_TEST_BIN/tl_rouge_tool" "$ARGS" <<'PY'
import json, subprocess, sys
d, tailor, rouge_tool, args = sys.argv[1:5]
dirs = dict(a.split("=", 1) for a in args.split())
# answers of a random tiny model may cut UTF-8 sequences: keep the bytes as they are
out = json.loads(open(f"{d}/out.json", "rb").read().decode("utf-8", "surrogateescape"))
prompts = json.load(open(f"{d}/prompts.json"))
names = [a["name"] for a in out["adapters"]]
fail = []
if sorted(names) != sorted(dirs):
    fail.append(f"adapters {names} vs {sorted(dirs)}")
seen = {}
for a in out["answers"]:
    name, ex = names[a["adapter"]], a["example"]
    cmd = [tailor, "generate", "--model", f"{d}/model", "--backend", "cpu", "--threads", "2", "--max-new-tokens", "8",
           "--prompt", prompts[ex]["prompt"]] + (["--base"] if a["base"] else ["--adapter", dirs[name]])
    got = subprocess.run(cmd, capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    if got != a["answer"] + "\n":
        fail.append(f"example {ex} {name} base={a['base']}: eval answered {a['answer']!r}, generate {got!r}")
    if a["reference"] != prompts[ex]["response"]:
        fail.append(f"example {ex}: reference {a['reference']!r}, expected {prompts[ex]['response']!r}")
    seen.setdefault((name, a["base"]), []).append(a)
# the means from the answers, scored independently by tl_rouge_tool
with open(f"{d}/pairs", "wb") as f:
    for a in out["answers"]:
        p, r = (a[k].encode("utf-8", "surrogateescape") for k in ("answer", "reference"))
        f.write(f"{len(p)} {len(r)}\n".encode() + p + r)
lines = subprocess.run([rouge_tool, f"{d}/pairs"], capture_output=True, check=True).stdout.decode().splitlines()
score = {id(a): [float(x) for x in l.split()] for a, l in zip(out["answers"], lines)}
for ad in out["adapters"]:
    for base, k1, kl in ((False, "rouge1", "rougeL"), (True, "base_rouge1", "base_rougeL")):
        items = seen.get((ad["name"], base), [])
        if len(items) != 3 or ad["examples"] != 3:
            fail.append(f"{ad['name']} base={base}: {len(items)} answers, examples {ad['examples']}, expected 3")
            continue
        m1 = sum(score[id(a)][2] for a in items) / len(items)
        ml = sum(score[id(a)][5] for a in items) / len(items)
        if abs(m1 - ad[k1]) > 1e-12 or abs(ml - ad[kl]) > 1e-12:
            fail.append(f"{ad['name']} base={base}: means {ad[k1]}, {ad[kl]}; recomputed {m1}, {ml}")
if not any(ad["rouge1"] for ad in out["adapters"]):
    fail.append("no adapter scored above 0: the trained adapters should reproduce some of their responses")
print("\n".join(f"FAIL: {f}" for f in fail) or f"ok: {len(out['answers'])} answers", file=sys.stderr)
print(json.dumps(out["adapters"]), file=sys.stderr)
if "TL_VERBOSE" in __import__("os").environ: print(json.dumps(out["answers"], indent=0), file=sys.stderr)
sys.exit(1 if fail else 0)
PY

# with the adapter store (K = 1 slot: the adapters are evaluated one at a time from their records), the final
# eval's ROUGE in eval.json equals the run's without the store
for st in off on; do
  cat >"$T/s_$st.yaml" <<Y
run: {name: t, output_dir: $T/s_$st, seed: 1}
model: {path: $T/model}
adapter: {rank: 4, alpha: 8, targets: [q_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}
data: {train: $T/train.h5, eval: $T/eval.h5, max_seq_len: 48, eval_generate: 8}
train: {backend: cpu, threads: 2, steps: 40, lr: 0.1, micro_batch_tokens: 512, log_every: 100, adapters_per_step: 1, store: $st}
Y
  "$TAILOR_BIN" train "$T/s_$st.yaml" >"$T/s_$st.out" 2>&1 || { cat "$T/s_$st.out"; die "train with store $st failed"; }
done
# and with the store on 2 ranks (user_shard: each rank answers its own users' prompts, rank 0 merges the means),
# where MPI exists
mpi=0
if command -v mpirun >/dev/null 2>&1 && "$TAILOR_BIN" version | grep -q "multi-process: mpi"; then
  mpi=1
  sed "s#$T/s_on#$T/s_on2#" "$T/s_on.yaml" >"$T/s_on2.yaml"
  mpirun_tl 2 "$TAILOR_BIN" train "$T/s_on2.yaml" >"$T/s_on2.out" 2>&1 || { cat "$T/s_on2.out"; die "2-rank store run failed"; }
fi
for other in s_on $([ $mpi = 1 ] && echo s_on2); do
"$TL_PYTHON" - "$T/s_off/eval.json" "$T/$other/eval.json" <<'PY' || die "ROUGE with the store ($other) differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
keys = ("rouge1", "rougeL", "base_rouge1", "base_rougeL")
ra = {x["name"]: [x.get(k) for k in keys] for x in a["adapters"]}
rb = {x["name"]: [x.get(k) for k in keys] for x in b["adapters"]}
assert ra.keys() == rb.keys() and all(v[0] is not None for v in ra.values()), (ra, rb)
assert ra == rb, (ra, rb)
print("store ROUGE ok:", sys.argv[2], ra)
PY
done
echo ok
