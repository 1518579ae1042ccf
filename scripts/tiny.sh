#!/usr/bin/env bash
# tiny.sh — the main job on the embedded default (configs/tiny.yaml): the tiny
# model on CPU, 4 MPI ranks, DP attention 4, EP 4. Today that is the config
# check and the real 4-rank start-up (nodes, binding, communicators, placement
# table); `dpep run` takes its place when the engine lands.
#   scripts/tiny.sh [extra overrides, e.g. --dp 2]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dpep=${DPEP_BIN:-$root/build/dpep}
cfg=$root/configs/tiny.yaml
np=4
# Open MPI as root, more ranks than cores, no busy-waiting.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
"$dpep" config check "$cfg" --world "$np" "$@"
echo
# Shared memory (vader) is the one-node transport bench/run_comm_perf.sh picked.
timeout 120 mpirun -np "$np" --oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader \
  "$dpep" placement "$cfg" "$@"
