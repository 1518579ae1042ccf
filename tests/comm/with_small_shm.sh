#!/usr/bin/env bash
# with_small_shm.sh SIZE COMMAND [ARGS...] — runs COMMAND with Open MPI's
# shared-memory windows backed by a fresh tmpfs of SIZE (mount syntax: 2m,
# 64k): a "full /dev/shm", as in a container started with a small
# --shm-size. The tmpfs is mounted in a private mount namespace, so nothing
# outside sees it. Needs root and unshare -m; prints SKIP and exits 77 without.
set -u
size=$1
shift
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! unshare -m true 2>/dev/null; then
  echo "SKIP: needs root and unshare -m to mount a small tmpfs"; exit 77
fi
dir=$(mktemp -d)
trap 'rmdir "$dir" 2>/dev/null' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_osc_sm_backing_directory=$dir
unshare -m bash -c 'mount -t tmpfs -o "size=$1" tmpfs "$0" || { echo "SKIP: cannot mount a tmpfs here"; exit 77; }
  shift && exec timeout 60 "$@"' "$dir" "$size" "$@"
