# The adapter store with preference tasks: DPO against a per-user reference (adapter.init_from: each user's SFT
# adapter, moved into and out of the reference pool's slots with the trained one) and a reward model (its score head
# is part of each store record) give, with the store and 2 slots for 4 users, the same adapters and eval.json bit for
# bit as without the store; and one adapter per group keeps eval.json's per-user rows.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 48 --layers 2 --heads 4 --kv-heads 2 --ffn 96 --seed 3
"$TL_PYTHON" "$TAILOR_SRC/scripts/make_pref_data.py" --out "$T/pref.h5" --eval-out "$T/pref_eval.h5" --users 4 \
  --pairs-per-user 12 --eval-pairs-per-user 4 --vocab 64 --seed 5 >/dev/null
make_data "$T/sft.h5" "$T/sft_eval.h5" --users 4 --examples-per-user 8 --eval-examples-per-user 2 --vocab 64 --seed 4
# the per-user starting adapters: a short SFT run (the users of make_pref_data and make_sft_data share names)
write_config "$T/sft.yaml" "$T/model" "$T/sft.h5" "" "$T/sft" "steps: 4" "examples_per_adapter: 2"
"$TAILOR_BIN" train "$T/sft.yaml" >"$T/sft.out" 2>&1 || { cat "$T/sft.out"; die "the SFT run failed"; }
pair() { # NAME TASK-LINE [INIT_FROM]
  local name=$1 task=$2 init=${3:-}
  for store in off on; do
    write_config "$T/$name.$store.yaml" "$T/model" "$T/pref.h5" "$T/pref_eval.h5" "$T/$name.$store" "steps: 12" \
      "examples_per_adapter: 2" "adapters_per_step: 2" "checkpoint_every: 5" "log_every: 1" "store: $store" \
      "micro_batch_tokens: 1024"
    sed -i 's/^data: {\(.*\), max_seq_len: 48}/data: {\1, max_seq_len: 64}/' "$T/$name.$store.yaml"
    [ -n "$init" ] && sed -i "s#^adapter: {#adapter: {init_from: $init, #" "$T/$name.$store.yaml"
    echo "$task" >>"$T/$name.$store.yaml"
    "$TAILOR_BIN" train "$T/$name.$store.yaml" >"$T/$name.$store.out" 2>&1 ||
      { cat "$T/$name.$store.out"; die "$name with store $store failed"; }
  done
  grep -q "adapter store: 4 adapter(s)" "$T/$name.on.out" || { cat "$T/$name.on.out"; die "$name: no store"; }
  same_adapters "$T/$name.off/adapters" "$T/$name.on/adapters" 0 || die "$name: the store changed the adapters"
  cmp "$T/$name.off/eval.json" "$T/$name.on/eval.json" || die "$name: the store changed eval.json"
}
pair dpo "task: {type: dpo, beta: 0.1, loss: sigmoid}" "$T/sft/adapters"
pair reward "task: {type: reward}"
# one adapter per group (2 groups of 2 users; 1 slot, so the groups take turns in it): eval.json
# has the per-user rows of the shared adapters, with the store as without it
pair_group() {
  for store in off on; do
    write_config "$T/grp.$store.yaml" "$T/model" "$T/pref.h5" "$T/pref_eval.h5" "$T/grp.$store" "steps: 8" \
      "examples_per_adapter: 2" "adapters_per_step: 1" "log_every: 1" "store: $store" "micro_batch_tokens: 1024"
    sed -i 's/^data: {\(.*\), max_seq_len: 48}/data: {\1, max_seq_len: 64}/; s/^adapter: {/adapter: {key: group, /' \
      "$T/grp.$store.yaml"
    echo "task: {type: dpo, beta: 0.1}" >>"$T/grp.$store.yaml"
    "$TAILOR_BIN" train "$T/grp.$store.yaml" >"$T/grp.$store.out" 2>&1 ||
      { cat "$T/grp.$store.out"; die "group DPO with store $store failed"; }
  done
  grep -q "adapter store: 2 adapter(s)" "$T/grp.on.out" || { cat "$T/grp.on.out"; die "group DPO: no store"; }
  grep -q '"users"' "$T/grp.on/eval.json" || die "group DPO with the store: eval.json has no per-user rows"
  cmp "$T/grp.off/eval.json" "$T/grp.on/eval.json" || die "group DPO: the store changed eval.json"
}
pair_group
echo ok
