# tailor export --format gguf / merged / merged-gguf through the adapter store (train.store: on, docs/scale.md):
# the store streams adapters one at a time into the same tl_export_run as a checkpoint does, so a run with the store
# exports byte-identical GGUF LoRAs and merged weights to the same run without it (3 users, 1 per step).
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 32 --layers 2 --heads 4 --kv-heads 2 --ffn 64 --seed 9
make_data "$T/train.h5" "$T/eval.h5" --users 3 --examples-per-user 8 --vocab 64 --seed 4
write_config "$T/off.yaml" "$T/model" "$T/train.h5" "" "$T/off" "steps: 6" "examples_per_adapter: 2" \
  "adapters_per_step: 1" "store: off"
sed "s#$T/off#$T/on#; s/store: off/store: on/" "$T/off.yaml" >"$T/on.yaml"
for r in off on; do
  "$TAILOR_BIN" train "$T/$r.yaml" >"$T/$r.out" 2>&1 || { cat "$T/$r.out"; die "run $r failed"; }
  "$TAILOR_BIN" export "$T/$r" --format gguf --dtype bf16 >/dev/null || die "export gguf ($r)"
  "$TAILOR_BIN" export "$T/$r" --format merged --user user0002 >/dev/null || die "export merged ($r)"
done
[ -f "$T/on/store/store.json" ] || die "train.store: on wrote no store"
for u in user0000 user0001 user0002; do
  cmp "$T/off/adapters-gguf/$u.gguf" "$T/on/adapters-gguf/$u.gguf" || die "$u: the store's GGUF LoRA differs"
done
cmp "$T/off/merged/user0002/model.safetensors" "$T/on/merged/user0002/model.safetensors" ||
  die "the store's merged model differs"
echo "ok: 3 GGUF LoRAs and a merged model identical with and without the store"
