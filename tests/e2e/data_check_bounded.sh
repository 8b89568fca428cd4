# data build's bounded-memory output check (tl_data_check_bounded, run through tests/tools/tl_h5_check) against
# the reader train uses (`tailor inspect`) on every bad-file case of the three kinds: both accept the same files,
# and both refuse the others naming the same dataset or attribute. (libhdf5_hang and libhdf5_crash are left out:
# the bounded check reads only files tailor just wrote, without the reader's crash isolation.)
source "$TAILOR_SRC/tests/lib/common.sh"
"$TL_PYTHON" -c "import h5py" 2>/dev/null || { echo "SKIPPED: h5py missing (scripts/pyenv.sh)"; exit 77; }
CHECK=${TL_TEST_BIN:-$(dirname "$TAILOR_BIN")}/tl_h5_check
[ -x "$CHECK" ] || die "no $CHECK"
sft="good missing_dataset wrong_dtype decreasing_offsets token_out_of_vocab user_out_of_range prompt_len_gt_length
  empty user_without_examples soft_link external_link group_ext_link external_storage virtual compact huge_chunked
  huge_contiguous huge_deflate lzf_filter vocab_u64_max huge_chunk nothing_trainable user_untrainable"
pref="good missing_group offsets_mismatch user_out_of_range empty_chosen empty_rejected nothing_trainable external_users"
prompt="good long_prompt empty_set empty_prompt user_out_of_range user_length half_reference token_out_of_vocab"
n=0 refused=0
for kind in sft preference prompt; do
  case $kind in
    sft) gen=make_bad_h5.py cases=$sft ;;
    preference) gen=make_bad_pref_h5.py cases=$pref ;;
    prompt) gen=make_bad_prompt_h5.py cases=$prompt ;;
  esac
  for c in $cases; do
    rm -rf "$T/d"; mkdir "$T/d"
    f="$T/d/$c.h5"
    "$TL_PYTHON" "$TAILOR_SRC/tests/bad/$gen" "$c" "$f" >/dev/null
    set +e
    "$TAILOR_BIN" inspect "$f" >/dev/null 2>"$T/reader"; rr=$?
    "$CHECK" $kind "$f" >"$T/bounded" 2>&1; rb=$?
    set -e
    n=$((n + 1))
    if [ $rr -eq 0 ]; then
      [ $rb -eq 0 ] || die "$kind $c: the reader accepts it, the bounded check refuses: $(cat "$T/bounded")"
      continue
    fi
    [ $rb -eq 2 ] || die "$kind $c: the reader refuses it ($(cat "$T/reader")), the bounded check says (rc $rb): $(cat "$T/bounded")"
    refused=$((refused + 1))
    # the object named first after the file name: "<file>: <object>: <problem>"
    obj_r=$(sed -n "s|.*$f: \([^:]*\):.*|\1|p" "$T/reader" | head -1)
    obj_b=$(sed -n "s|.*$f: \([^:]*\):.*|\1|p" "$T/bounded" | head -1)
    [ -n "$obj_r" ] && [ "$obj_r" = "$obj_b" ] || die "$kind $c: reader names '$obj_r' ($(cat "$T/reader")), bounded check '$obj_b' ($(cat "$T/bounded"))"
  done
done
echo "ok: $n cases, $refused refused by both, naming the same object"
