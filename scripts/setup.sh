#!/usr/bin/env bash
# setup.sh — make a fresh Debian machine ready for dpep, then configure and
# build it in ./build. Installs only what is missing (a no-op when all is
# present): Debian packages, and the tests' PyPI clients into ./.venv; needs
# root (or sudo) only when a Debian package must be installed.
#   scripts/setup.sh              Release build in ./build
#   DPEP_BUILD_DIR=b CMAKE_ARGS="-DDPEP_SANITIZE=address,undefined" scripts/setup.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${DPEP_BUILD_DIR:-$root/build}

# Debian packages dpep builds, runs and tests with. CUDA and NCCL come from
# /usr/local/cuda when present and are optional.
pkgs=(build-essential cmake pkg-config git
      openmpi-bin libopenmpi-dev         # MPI (Open MPI, with UCX)
      hwloc libhwloc-dev                 # placement
      libyaml-dev                        # deployment configs
      libjansson-dev                     # JSON
      libpcre2-dev                       # tokenizer regexes (Unicode properties)
      libutf8proc-dev                    # tokenizer normalizers (NFC, NFKC, ...)
      libmicrohttpd-dev                  # dpep serve: the HTTP server
      xz-utils                           # the compressed reference tokenizers
      curl                               # the serving tests' command-line client
      libopenblas-dev                    # CPU GEMM
      libopenblas-openmp-dev             # its OpenMP build: BLAS threads follow the thread plan
      python3                            # test scripts parse JSON with it
      python3-venv)                      # the venv of the serving tests' PyPI clients

missing=()
for p in "${pkgs[@]}"; do
  # python3 may come from elsewhere (pyenv): any python3 on PATH will do.
  [ "$p" = python3 ] && command -v python3 >/dev/null && continue
  # likewise python3-venv: any python3 that can make a venv (with pip) will do.
  [ "$p" = python3-venv ] && python3 -c 'import ensurepip, venv' 2>/dev/null && continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup.sh: need root to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup.sh: all Debian packages present"
fi

# The PyPI clients of the serving tests (tests/serve/test_clients.sh: the
# openai client and sglang-router), pinned, in $root/.venv. A no-op when that
# venv already has these versions; a failure here is a warning (the build does
# not need them; the serve_clients test then fails and says why).
venv=$root/.venv
py_pins=(openai==3.57.0 sglang-router==0.3.2)
if "$venv/bin/python" - "${py_pins[@]}" 2>/dev/null <<'PY'; then
import importlib.metadata as m, sys
sys.exit(0 if all(m.version(n) == v for n, v in (p.split("==") for p in sys.argv[1:])) else 1)
PY
  echo "setup.sh: $venv has ${py_pins[*]}"
else
  echo "setup.sh: installing ${py_pins[*]} into $venv"
  if ! { { "$venv/bin/python" -c '' 2>/dev/null || python3 -m venv --clear "$venv"; } &&
         "$venv/bin/python" -m pip install -q --disable-pip-version-check "${py_pins[@]}"; }; then
    echo "setup.sh: WARNING: could not install ${py_pins[*]} into $venv; the serve_clients test will fail" >&2
  fi
fi

# shellcheck disable=SC2086
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-Release} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
echo "setup.sh: built $build/dpep"
