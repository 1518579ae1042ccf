#!/usr/bin/env bash
# test_device_kit.sh — scripts/device-kit.sh packs BUILD_DIR into an empty
# temporary folder, and scripts/gpu-check.sh runs from that kit in a clean
# environment (env -i): the CPU path passes (goldens on 1 and 4 ranks through
# the kit's own mpirun, dpep launch of the tiny config) and, without a GPU, the
# GPU rows say SKIP. Exit 77 where this machine has no Debian Open MPI to pack.
#   tests/test_device_kit.sh SRC_DIR BUILD_DIR
set -uo pipefail
src=$(cd "${1:?source dir}" && pwd)
build=$(cd "${2:?build dir}" && pwd)
command -v ompi_info >/dev/null || { echo "SKIP: no ompi_info (Open MPI) to pack"; exit 77; }
[ -z "${DPEP_KIT_SANITIZED:-}" ] ||
  { echo "SKIP: a sanitizer build (-fsanitize=$DPEP_KIT_SANITIZED) is not packed for the GPU machine"; exit 77; }
tmp=$(mktemp -d /tmp/dpep-kit-test-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
bash "$src/scripts/device-kit.sh" "$tmp/kit" "$build" || { echo "FAIL: device-kit.sh"; exit 1; }
cd "$tmp" || exit 1
# A sanitizer build's test set-up (tests/sanitize) goes through the clean
# environment: the kit's ranks are that build's.
san=()
for v in LD_PRELOAD ASAN_OPTIONS LSAN_OPTIONS UBSAN_OPTIONS; do
  [ -n "${!v:-}" ] && san+=("$v=${!v}")
done
env -i PATH=/usr/bin:/bin HOME="$tmp" GPU_CHECK_QUICK=1 "${san[@]}" bash "$tmp/kit/scripts/gpu-check.sh" "$tmp/kit" > check.log 2>&1
rc=$?
sed -n '/^check /,$p' check.log
[ $rc = 0 ] || { echo "FAIL: gpu-check.sh exited $rc"; tail -30 check.log; exit 1; }
for c in cpu_golden_v3_np4 cpu_tiny_launch; do
  grep -q "^$c  *PASS" check.log || { echo "FAIL: $c did not pass"; exit 1; }
done
if ! command -v nvidia-smi >/dev/null; then
  grep -q '^cuda_golden_v3  *SKIP' check.log || { echo "FAIL: no SKIP row for the CUDA golden"; exit 1; }
fi
echo "PASSED"
