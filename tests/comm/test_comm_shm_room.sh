#!/usr/bin/env bash
# test_comm_shm_room.sh MPIEXEC BINARY — node-shared memory on a full tmpfs:
# mounts a 2 MiB tmpfs, points Open MPI's shared windows at it and runs
# test_comm_shm --room 8 on 2 ranks (8 MiB per rank cannot fit: every rank
# must get "out of memory" before any page is touched, instead of SIGBUS).
# Needs root and a private mount namespace (unshare -m); skips (77) without.
set -u
mpiexec=$1 bin=$2
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! unshare -m true 2>/dev/null; then
  echo "SKIP: needs root and unshare -m to mount a small tmpfs"; exit 77
fi
dir=$(mktemp -d)
trap 'rmdir "$dir" 2>/dev/null' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_osc_sm_backing_directory=$dir
exec unshare -m bash -c 'mount -t tmpfs -o size=2m tmpfs "$0" && \
  timeout 60 "$1" -n 2 --oversubscribe --mca btl self,vader "$2" --room 8' "$dir" "$mpiexec" "$bin"
