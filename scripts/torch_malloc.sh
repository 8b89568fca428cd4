# torch_malloc.sh: sourced by the benchmark scripts that run a PyTorch peer. torch_malloc_env MODE fills the array
# torch_env with the environment the torch process runs under:
#   jemalloc  Debian's libjemalloc2 preloaded, freed pages kept (MALLOC_CONF dirty_decay_ms:-1,muzzy_decay_ms:-1),
#             as PyTorch's CPU performance guides advise. With glibc's malloc every large activation is a fresh
#             mmap: on the 2-core development machine (2026-12-06) a third of torch's CPU time went to page faults
#             (sys time) and its step time varied 1.5x from one hour to the next with the host's page-fault cost.
#             The library is installed with apt-get when missing.
#   glibc     nothing preloaded: the plain `pip install torch` figure.
# tailor allocates nothing per step, so its side runs as it is. Returns 2 (with a message) on a bad MODE or when
# jemalloc cannot be found or installed.
torch_malloc_env() {
  torch_env=()
  case "$1" in
    glibc) return 0 ;;
    jemalloc) ;;
    *) echo "--torch-malloc must be jemalloc or glibc, not '$1'" >&2; return 2 ;;
  esac
  local lib sudo=
  lib=$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2 2>/dev/null | head -n1 || true)
  if [ -z "$lib" ]; then
    echo "== installing libjemalloc2 (the torch side's allocator; --torch-malloc glibc skips it)" >&2
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get install -y libjemalloc2 >/dev/null 2>&1 ||
      { $sudo apt-get update >/dev/null 2>&1 && $sudo apt-get install -y libjemalloc2 >/dev/null 2>&1; } || true
    lib=$(ls /usr/lib/*-linux-gnu/libjemalloc.so.2 2>/dev/null | head -n1 || true)
  fi
  if [ -z "$lib" ]; then
    echo "libjemalloc.so.2 not found and could not be installed; use --torch-malloc glibc" >&2
    return 2
  fi
  torch_env=(LD_PRELOAD="$lib" MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1)
}
