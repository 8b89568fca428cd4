# One voice to the user (issue 12, kernels/tl_status.h): outside trainer/cli/ no code writes to stdout or stderr
# by itself. The library writes only to streams its caller hands it (progress, tables, generated text, the
# script) and returns errors in tl_error for the CLI to print. The one sanctioned exception is a failing rank of
# a multi-process job, which prints its error line and ends the job through tl_dist_abort: only a file that calls
# tl_dist_abort may print to stderr, and only a "tailor: error:" line. Reads the sources; no binary is run.
set -euo pipefail
: "${TAILOR_SRC:?set by ctest}"
die() { echo "FAIL: $*" >&2; exit 1; }
cd "$TAILOR_SRC"
# code, not comments: a use of stdout/stderr as an argument, or a function that writes to one of them
pat='[(,][[:space:]]*(stdout|stderr)[[:space:]]*[,)]|(^|[^a-z_>.])(printf|puts|putchar|perror|vprintf)[[:space:]]*\('
bad=0
while IFS= read -r hit; do
  file=${hit%%:*}
  code=${hit#*:*:}
  case "$code" in [[:space:]]*'/*'* | [[:space:]]*'*'* | [[:space:]]*'//'*) continue ;; esac
  if grep -q 'tl_dist_abort(' "$file" && [[ "$code" == *'fprintf(stderr, "tailor: error: '* ]]; then
    continue # the sanctioned message of a rank that ends the job (tl_dist_abort)
  fi
  echo "library code writes to the terminal itself: $hit" >&2
  bad=1
done < <(grep -rnE "$pat" trainer kernels data --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' \
         --exclude-dir=cli || true)
[ "$bad" = 0 ] || die "only trainer/cli/ prints to the user; the library returns tl_status (kernels/tl_status.h)"
# the CLI really is where the messages live
grep -q 'tailor: error: ' trainer/cli/cli.c || die "trainer/cli/cli.c prints no 'tailor: error:' line"
echo "one voice: ok"
