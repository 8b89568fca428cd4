# A user listed in /users without any example is warned about (by name) and skipped; the run succeeds and
# exports adapters only for the users that have data. A user whose examples are all prompt (nothing to train on)
# is warned about by name too: the adapter stays as initialized.
source "$TAILOR_SRC/tests/lib/common.sh"
make_model "$T/model" --vocab 64 --hidden 32 --layers 1 --heads 2 --kv-heads 1 --ffn 64
"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" user_without_examples "$T/d.h5"
write_config "$T/c.yaml" "$T/model" "$T/d.h5" "" "$T/run" "steps: 2"
"$TAILOR_BIN" train "$T/c.yaml" >"$T/out" 2>"$T/err" || { cat "$T/out" "$T/err"; die "train failed"; }
grep -q "warning: .*1 user(s) have no examples and are skipped: 'dan'" "$T/err" || { cat "$T/err"; die "no warning"; }
[ -d "$T/run/adapters/ann" ] && [ ! -e "$T/run/adapters/dan" ] || die "wrong adapters: $(ls "$T/run/adapters")"

"$TL_PYTHON" "$TAILOR_SRC/tests/bad/make_bad_h5.py" user_untrainable "$T/u.h5"
write_config "$T/c2.yaml" "$T/model" "$T/u.h5" "" "$T/run2" "steps: 2"
"$TAILOR_BIN" train "$T/c2.yaml" >"$T/out" 2>"$T/err" || { cat "$T/out" "$T/err"; die "train failed"; }
grep -q "warning: .*1 adapter(s) have no token to train on .*: 'ben'$" "$T/err" || { cat "$T/err"; die "no warning for ben"; }
[ "$(grep -c "no token to train on" "$T/err")" -eq 1 ] || die "one warning expected"
echo ok
