#!/usr/bin/env bash
# Creates .pyenv/: a virtual environment over Debian's /usr/bin/python3 (--system-site-packages: Debian's torch,
# numpy, h5py) with the PyPI packages of tests/requirements.txt. Idempotent; prints the interpreter's path.
set -euo pipefail
cd "$(dirname "$0")/.."
req=tests/requirements.txt
stamp=.pyenv/.requirements
if [ ! -x .pyenv/bin/python ] || ! cmp -s "$req" "$stamp"; then
  echo "pyenv: installing $(grep -c '^[a-z]' "$req") packages into .pyenv/" >&2
  /usr/bin/python3 -m venv --system-site-packages .pyenv
  grep '^[a-z]' "$req" | grep -v -e '^peft' -e '^llama-cpp-python' | xargs .pyenv/bin/pip install -q --disable-pip-version-check >&2
  grep '^peft' "$req" | xargs .pyenv/bin/pip install -q --no-deps --disable-pip-version-check >&2
  # llama-cpp-python: PyPI has only its source package, so pip compiles llama.cpp (CPU, portable: no
  # -march=native; ~20 min on 2 cores); pip's wheel cache keeps that build for later venvs on the same machine
  grep '^llama-cpp-python' "$req" | CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    xargs .pyenv/bin/pip install -q --no-deps --disable-pip-version-check >&2
  .pyenv/bin/python -c "import torch, h5py, numpy, gguf, tokenizers, transformers, peft, llama_cpp" >&2
  cp "$req" "$stamp"
fi
echo "$PWD/.pyenv/bin/python"
