#!/usr/bin/env bash
# The layering of tailor, checked on every build (the tailor_layers target) and by CI: one line per violation,
# exit 1 if there is any.
#   kernels/  includes kernels/ only, and reads no files (no fopen/open/H5F: the op table computes, data/ does I/O)
#   data/     includes kernels/ and data/ only
#   trainer/  includes kernels/, data/ and trainer/
#   no product file includes a test header, and every project include is root-relative ("data/tl_io.h")
set -uo pipefail
ROOT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT" || exit 2
bad=0
report() { echo "layering: $*" >&2; bad=1; }
check_includes() { # DIR ALLOWED-REGEX WORDS
  local dir=$1 allowed=$2 words=$3 f line inc
  while IFS= read -r f; do
    while IFS= read -r line; do
      inc=${line#*\"}; inc=${inc%%\"*}
      case $inc in
        kernels/*|data/*|trainer/*|tests/*) [[ $inc =~ $allowed ]] || report "$f includes $inc ($dir/ may include only $words)" ;;
        *) report "$f includes \"$inc\": project headers are included root-relative (\"data/tl_io.h\")" ;;
      esac
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f")
  done < <(find "$dir" -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \))
}
check_includes kernels '^kernels/' 'kernels/'
check_includes data '^(kernels|data)/' 'kernels/ and data/'
check_includes trainer '^(kernels|data|trainer)/' 'kernels/, data/ and trainer/'
# kernels/ reads no files
while IFS= read -r hit; do report "kernels/ does I/O: $hit"; done < <(
  grep -nE '\b(fopen|fdopen|open|openat|H5Fopen|mmap)[[:space:]]*\(' -r kernels --include='*.c' --include='*.h' \
    --include='*.cu' --include='*.cuh' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*(/?\*|//)')
exit $bad
