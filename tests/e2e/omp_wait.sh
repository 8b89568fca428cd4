# How tailor's OpenMP workers wait (trainer/cli/main.c, docs/performance.md "Short spins"): when the user set
# neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT, tailor runs with PASSIVE and a spin count of 10000 (it re-executes
# itself once to set them); a user's setting of either is kept as it is and the other is left unset.
# `tailor version` prints the settings the process runs with.
source "$TAILOR_SRC/tests/lib/common.sh"
v() { env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$@" "$TAILOR_BIN" version | sed -n 's/.*OpenMP: //p'; }
got=$(v)
[ "$got" = "OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=10000" ] || die "defaults: got '$got'"
got=$(v OMP_WAIT_POLICY=active)
[ "$got" = "OMP_WAIT_POLICY=active GOMP_SPINCOUNT=(unset)" ] || die "user's OMP_WAIT_POLICY: got '$got'"
got=$(v GOMP_SPINCOUNT=0)
[ "$got" = "OMP_WAIT_POLICY=(unset) GOMP_SPINCOUNT=0" ] || die "user's GOMP_SPINCOUNT: got '$got'"
"$TAILOR_BIN" version | grep -qE '^cpu kernels: built for' || die "tailor version names no kernel build"
echo "omp_wait: ok"
