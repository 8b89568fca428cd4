# Run-directory cases (checkpoints, export, resume, report, thread counts): each bad input must exit with code 2
# and print exactly one line on stderr naming the file, field or line, and leave the user's files as they were.
# A few cases check the good path that the fix must keep (rd_resume_never_*, rd_export_default_*).
# `rundir.sh --list` prints the case names (CMake registers one test per case).
CASES="rd_ckpt_bad_format rd_ckpt_names_repeated rd_ckpt_names_empty rd_ckpt_n_layers_negative rd_ckpt_nan_params rd_ckpt_step_2p62 rd_ckpt_cursor_negative rd_resume_past_steps
rd_steps_huge_no_hang rd_threads_config rd_threads_env rd_threads_env_nested rd_report_step_1e300 rd_report_step_2p62
rd_report_step_negative rd_report_step_fraction rd_report_loss_inf rd_report_eval_tokens_2p62
rd_report_eval_loss_inf rd_export_out_foreign_index
rd_export_out_unlisted_file rd_export_out_symlink rd_export_ckpt_outside_run rd_export_default_in_run
rd_init_from_dotdot rd_init_from_absolute rd_init_from_symlink rd_init_from_nan rd_resume_never_sets_aside
rd_resume_given_sets_later_aside rd_report_adapter_loss_inf rd_report_adapter_not_string rd_report_rss_inf
rd_report_eval_huge_values"
if [ "${1:-}" = "--list" ]; then echo $CASES; exit 0; fi
source "$TAILOR_SRC/tests/lib/common.sh"
case_name=$1

make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" good "$T/good.h5"
write_config "$T/c.yaml" "$T/model" "$T/good.h5" "" "$T/run" "steps: 4" "checkpoint_every: 1" "keep_checkpoints: 10"
RUN="$T/run" CFG="$T/c.yaml"

# train [key=value ...]: a run that must succeed
train() { "$TAILOR_BIN" train "$CFG" "$@" >"$T/train.out" 2>"$T/train.err" || die "train failed: $(cat "$T/train.err")"; }
# expect2 NAME CMD...: CMD exits 2 with exactly one stderr line that mentions NAME
expect2() {
  local want=$1; shift
  set +e
  timeout 60 "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  set -e
  echo "exit $rc; stderr: $(cat "$T/err")"
  [ $rc -eq 2 ] || die "expected exit code 2, got $rc"
  [ "$(wc -l <"$T/err")" -eq 1 ] || die "expected exactly one line on stderr"
  grep -qF -- "$want" "$T/err" || die "stderr does not mention '$want'"
}
# st_poke FILE HOW: tamper with a checkpoint's state.safetensors (metadata or one value of a tensor)
st_poke() {
  "$TL_PYTHON" - "$1" "$2" <<'PY'
import json, struct, sys
path, how = sys.argv[1], sys.argv[2]
b = bytearray(open(path, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); base = 8 + n
def at(name, k=0): return base + h[name]["data_offsets"][0] + k
if how == "format" or how.startswith("meta:"):
    k, v = how[5:].split("=", 1) if how.startswith("meta:") else ("format", "tailor-checkpoint-9" + "x" * 300)
    h["__metadata__"][k] = v
    hb = json.dumps(h).encode(); hb += b" " * (-len(hb) % 8)
    b = bytearray(struct.pack("<Q", len(hb)) + hb + b[base:])
elif how == "nan": b[at("params", 4 * 5):at("params", 4 * 5) + 4] = struct.pack("<f", float("nan"))
elif how == "step": b[at("global_step"):at("global_step") + 8] = struct.pack("<q", 2 ** 62)
elif how == "cursor": b[at("cursors", 8):at("cursors", 8) + 8] = struct.pack("<q", -3)
open(path, "wb").write(b)
PY
}
# adapter_poke DIR: a NaN in the first tensor of DIR/adapter_model.safetensors
adapter_poke() {
  "$TL_PYTHON" - "$1/adapter_model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
b = bytearray(open(path, "rb").read()); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
name = sorted(k for k in h if k != "__metadata__")[0]; o = 8 + n + h[name]["data_offsets"][0]
b[o:o + 4] = struct.pack("<f", float("inf")); open(path, "wb").write(b); print(name)
PY
}
metrics() { printf '{"step": 1, "loss": 2.5}\n%s\n' "$1" >"$RUN/metrics.jsonl"; }
CK4="$RUN/checkpoints/step-00000004"

case $case_name in
  rd_ckpt_bad_format)   # the message quoted the format string after the file holding it was freed (ASan)
    train; st_poke "$CK4/state.safetensors" format
    expect2 "metadata format" "$TAILOR_BIN" export "$RUN" --out "$T/exp"; [ ! -e "$T/exp" ] || die "export written" ;;
  rd_ckpt_names_repeated|rd_ckpt_names_empty|rd_ckpt_n_layers_negative)
    case $case_name in
      rd_ckpt_names_repeated) poke='meta:adapter_names=["ann", "ben", "ann"]'; want="'ann' appears twice" ;;
      rd_ckpt_names_empty) poke='meta:adapter_names=[]'; want="adapter_names" ;;
      rd_ckpt_n_layers_negative) poke='meta:n_layers=-1'; want="metadata n_layers" ;;
    esac
    train; st_poke "$CK4/state.safetensors" "$poke"
    expect2 "$want" "$TAILOR_BIN" export "$RUN" --out "$T/exp"; [ ! -e "$T/exp" ] || die "export written" ;;
  rd_ckpt_nan_params)
    train; st_poke "$CK4/state.safetensors" nan
    expect2 "'params'" "$TAILOR_BIN" export "$RUN" --out "$T/exp"; [ ! -e "$T/exp" ] || die "export written"
    expect2 "'params'" "$TAILOR_BIN" train "$CFG" train.steps=6 ;;
  rd_ckpt_step_2p62)
    train; st_poke "$CK4/state.safetensors" step
    expect2 "global_step" "$TAILOR_BIN" export "$RUN" --out "$T/exp"; [ ! -e "$T/exp" ] || die "export written"
    expect2 "global_step" "$TAILOR_BIN" train "$CFG" train.steps=6 ;;
  rd_ckpt_cursor_negative)
    train; st_poke "$CK4/state.safetensors" cursor
    expect2 "'cursors'" "$TAILOR_BIN" train "$CFG" train.steps=6 ;;
  rd_resume_past_steps)  # a checkpoint at step 4 resumed by a run of 2 steps: refused, not saved as step 2
    train; before=$(cd "$RUN" && find checkpoints adapters -type f | sort | xargs md5sum)
    expect2 "beyond train.steps" "$TAILOR_BIN" train "$CFG" train.steps=2
    [ "$before" = "$(cd "$RUN" && find checkpoints adapters -type f | sort | xargs md5sum)" ] || die "run changed" ;;
  rd_steps_huge_no_hang)  # the per-adapter step counts were counted by a loop over every step (2^53 of them)
    set +e
    timeout 60 env TAILOR_FAULT_KILL_AFTER_STEP=1 "$TAILOR_BIN" train "$CFG" train.steps=9007199254740992 \
      train.adapters_per_step=2 >"$T/out" 2>"$T/err"
    rc=$?
    set -e
    [ $rc -eq 137 ] || die "expected the fault kill after step 1 (137), got $rc: $(cat "$T/err")"
    grep -q '"step": 1,' "$RUN/metrics.jsonl" || die "step 1 was not trained"; echo ok; exit 0 ;;
  rd_threads_config)    # libgomp builds its team on the stack: 100000 threads overflowed it
    expect2 "train.threads" "$TAILOR_BIN" train "$CFG" train.threads=100000; [ ! -e "$RUN" ] || die "run dir created" ;;
  rd_threads_env)
    expect2 "OMP_NUM_THREADS" env OMP_NUM_THREADS=100000 "$TAILOR_BIN" train "$CFG"; [ ! -e "$RUN" ] || die "run dir" ;;
  rd_threads_env_nested)  # a nested list: every level is a team
    expect2 "OMP_NUM_THREADS" env "OMP_NUM_THREADS=2, 200000" "$TAILOR_BIN" train "$CFG"; [ ! -e "$RUN" ] || die "run dir" ;;
  rd_report_step_1e300|rd_report_step_2p62)  # every x the same huge step: the tick loop added 1 forever
    train; st=$([ $case_name = rd_report_step_1e300 ] && echo 1e300 || echo 4611686018427387904)
    printf '{"step": %s, "loss": 2}\n' "$st" >"$RUN/metrics.jsonl"
    expect2 "metrics.jsonl line 1" "$TAILOR_BIN" report "$RUN"; [ ! -e "$RUN/report.html" ] || die "report written" ;;
  rd_report_step_negative)
    train; metrics '{"step": -7, "loss": 2}'; expect2 "metrics.jsonl line 2" "$TAILOR_BIN" report "$RUN" ;;
  rd_report_step_fraction)
    train; metrics '{"step": 2.5, "loss": 2}'; expect2 "metrics.jsonl line 2" "$TAILOR_BIN" report "$RUN" ;;
  rd_report_loss_inf)
    train; metrics '{"step": 2, "loss": 1e999}'; expect2 "\"loss\"" "$TAILOR_BIN" report "$RUN" ;;
  rd_report_eval_tokens_2p62|rd_report_eval_loss_inf)  # eval.json counts exact, cells finite
    train; printf '{"step": 4, "adapters": [{"name": "ann", "examples": 3, "tokens": %s, "loss": %s}]}\n' \
      "$([ $case_name = rd_report_eval_loss_inf ] && echo 5 || echo 4611686018427387904)" \
      "$([ $case_name = rd_report_eval_loss_inf ] && echo -1e999 || echo 1.5)" >"$RUN/eval.json"
    expect2 "adapters[0]" "$TAILOR_BIN" report "$RUN"; [ ! -e "$RUN/report.html" ] || die "report written" ;;
  rd_report_adapter_loss_inf)  # the per-adapter records of metrics.jsonl (tl_metrics.h) are checked like the rest
    mkdir -p "$RUN"; metrics '{"step": 1, "adapter": "ann", "adapter_loss": 1e999}'
    expect2 "metrics.jsonl line 2: \"adapter_loss\"" "$TAILOR_BIN" report "$RUN"; [ ! -e "$RUN/report.html" ] || die "report written" ;;
  rd_report_adapter_not_string)
    mkdir -p "$RUN"; metrics '{"step": 1, "adapter": ["<b>"], "adapter_loss": 1}'
    expect2 "metrics.jsonl line 2: \"adapter\" is not a string" "$TAILOR_BIN" report "$RUN" ;;
  rd_report_rss_inf)
    mkdir -p "$RUN"; metrics '{"step": 2, "loss": 2, "rss_mib": -1e999, "tokens_per_s": 5}'
    expect2 "metrics.jsonl line 2: \"rss_mib\"" "$TAILOR_BIN" report "$RUN" ;;
  rd_report_eval_huge_values)  # good path: finite, but base_loss - loss overflows; no value for the histogram
    mkdir -p "$RUN"; metrics '{"step": 2, "loss": 2}'
    printf '{"step": 2, "adapters": [{"name": "ann", "loss": -1e308, "base_loss": 1e308}, {"name": "bo", "loss": 1,
      "base_loss": 1e301}, {"name": "cy", "loss": 1, "base_loss": 1.5}]}\n' >"$RUN/eval.json"
    "$TAILOR_BIN" report "$RUN" >/dev/null || die "report failed"
    grep -q 'data-n="1" data-better="1"' "$RUN/report.html" || die "the histogram should hold cy alone"
    ! grep -qi 'inf\|nan' "$RUN/report.html" || die "a non-finite number reached the page"; echo ok ;;
  rd_export_out_foreign_index)  # a folder of the user's that merely holds a file named index.json
    train; mkdir -p "$T/mine"; echo '{"adapters": []}' >"$T/mine/index.json"; echo keep >"$T/mine/notes.txt"
    expect2 "$T/mine" "$TAILOR_BIN" export "$RUN" --out "$T/mine"
    [ "$(cat "$T/mine/notes.txt")" = keep ] && [ -f "$T/mine/index.json" ] || die "the user's files were touched" ;;
  rd_export_out_unlisted_file)  # a real export with a file of the user's added: not replaced
    train; echo keep >"$RUN/adapters/notes.txt"
    expect2 "notes.txt" "$TAILOR_BIN" export "$RUN"
    [ "$(cat "$RUN/adapters/notes.txt")" = keep ] || die "the user's file was deleted"
    rm "$RUN/adapters/notes.txt"; "$TAILOR_BIN" export "$RUN" >/dev/null || die "a clean export must be replaceable" ;;
  rd_export_out_symlink)
    train; mkdir -p "$T/target"; echo keep >"$T/target/f"; ln -s "$T/target" "$T/link"
    expect2 "$T/link" "$TAILOR_BIN" export "$RUN" --out "$T/link"; [ -f "$T/target/f" ] || die "deleted through a link" ;;
  rd_export_ckpt_outside_run)   # wrote to <ckpt>/../../adapters: here $T/../adapters, outside everything
    train; mkdir -p "$T/x/y"; cp -r "$CK4" "$T/x/y/ck"
    expect2 "--out" "$TAILOR_BIN" export "$T/x/y/ck"
    [ ! -e "$T/x/adapters" ] && [ ! -e "$T/x/y/adapters" ] || die "an export was written outside a run" ;;
  rd_export_default_in_run)     # a checkpoint of a run exports into that run's adapters/, also through a symlink
    train; rm -rf "$RUN/adapters"; mkdir -p "$T/links"; ln -s "$RUN/checkpoints" "$T/links/checkpoints"
    "$TAILOR_BIN" export "$RUN/checkpoints/step-00000003/" >/dev/null || die "export of a checkpoint failed"
    [ -f "$RUN/adapters/index.json" ] || die "not exported into <run>/adapters"
    "$TAILOR_BIN" export "$T/links/checkpoints/step-00000003" >/dev/null || die "export through a link failed"
    [ -f "$T/links/adapters/index.json" ] || die "not exported beside the checkpoints/ named"
    [ ! -e "$T/adapters" ] || die "written two levels up"; echo ok; exit 0 ;;
  rd_init_from_dotdot|rd_init_from_absolute|rd_init_from_symlink)
    train; cp -r "$RUN/adapters" "$T/init"; cp -r "$RUN/adapters/ann" "$T/outside"
    case $case_name in
      rd_init_from_dotdot) entry="../outside" ;;
      rd_init_from_absolute) entry="$T/outside" ;;
      rd_init_from_symlink) ln -s "$T/outside" "$T/init/lnk"; entry="lnk" ;;
    esac
    "$TL_PYTHON" - "$T/init/index.json" "$entry" <<'PY'
import json, sys
p, e = sys.argv[1], sys.argv[2]; j = json.load(open(p)); j["adapters"][0]["dir"] = e; json.dump(j, open(p, "w"))
PY
    expect2 "index.json" "$TAILOR_BIN" train "$CFG" "run.output_dir=$T/run2" "adapter.init_from=$T/init"
    grep -qF "dir" "$T/err" || die "the entry is not named"; [ ! -e "$T/run2" ] || die "run dir created" ;;
  rd_init_from_nan)
    train; cp -r "$RUN/adapters" "$T/init"; name=$(adapter_poke "$T/init/ann")
    expect2 "$name" "$TAILOR_BIN" train "$CFG" "run.output_dir=$T/run2" "adapter.init_from=$T/init"
    [ ! -e "$T/run2" ] || die "run dir created" ;;
  rd_resume_never_sets_aside)   # train 4 steps, retrain 2 with resume never: export, eval, resume use the new run
    train; cp -r "$RUN/adapters" "$T/old-adapters"
    train train.resume=never train.steps=2 train.lr=0.05
    grep -q "previous/" "$T/train.err" || die "no note on stderr about the earlier run"
    prev=$(ls -d "$RUN"/previous/*/); [ -d "$prev/checkpoints/step-00000004" ] || die "old checkpoints not kept"
    [ -f "$prev/metrics.jsonl" ] && [ -f "$prev/adapters/index.json" ] || die "old metrics/adapters not kept"
    [ "$(ls "$RUN/checkpoints")" = "$(printf 'step-00000001\nstep-00000002')" ] || die "checkpoints: $(ls "$RUN/checkpoints")"
    "$TAILOR_BIN" export "$RUN" --out "$T/exp" | grep -q "(step 2)" || die "export did not use the new run's step 2"
    same_adapters "$T/exp" "$RUN/adapters" 0 >/dev/null || die "export differs from the new run's adapters"
    if same_adapters "$T/exp" "$T/old-adapters" 0 >/dev/null 2>&1; then die "export equals the old run's"; fi
    "$TAILOR_BIN" eval "$CFG" "data.eval=$T/good.h5" | grep -q "step-00000002 (step 2)" || die "eval did not use step 2"
    "$TAILOR_BIN" train "$CFG" train.steps=3 train.lr=0.05 >"$T/o" 2>&1 || die "resume failed: $(cat "$T/o")"
    grep -q "step-00000002 (step 2)" "$T/o" || die "resume did not continue the new run: $(head -2 "$T/o")"
    echo ok; exit 0 ;;
  rd_resume_given_sets_later_aside)  # resume from step 2 of a run that has 3 and 4: those go aside
    train; "$TAILOR_BIN" train "$CFG" "train.resume=$RUN/checkpoints/step-00000002" train.steps=3 \
      >"$T/o" 2>&1 || die "resume failed: $(cat "$T/o")"
    prev=$(ls -d "$RUN"/previous/*/); [ -d "$prev/checkpoints/step-00000004" ] || die "step 4 not set aside"
    grep -q '"step": 4,' "$prev/metrics.jsonl" || die "the metrics of steps 3-4 were not kept"
    [ ! -e "$RUN/checkpoints/step-00000004" ] || die "step 4 of the other history still in checkpoints/"
    "$TAILOR_BIN" export "$RUN" --out "$T/exp" | grep -q "(step 3)" || die "export did not use step 3"
    echo ok; exit 0 ;;
  *) die "unknown case $case_name" ;;
esac
echo ok
