#!/usr/bin/env bash
# tiny.sh — the main job on the embedded default (configs/tiny.yaml): the tiny
# model on CPU, 4 MPI ranks, DP attention 4, EP 4. Today that is the config
# check, the memory plan, then the real 4-rank job through `dpep launch`:
# `dpep run` (placement table, the random workload served with DP attention
# and EP, ending with the summary).
#   scripts/tiny.sh [extra overrides, e.g. --dp 2]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dpep=${DPEP_BIN:-$root/build/dpep}
cfg=$root/configs/tiny.yaml
# Open MPI as root, more ranks than cores, no busy-waiting.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
# The tiny model (configs/tiny.yaml's model.path), generated on first use.
model=$root/build/models/tiny-v3
[ -f "$model/config.json" ] || "$dpep" model gen --arch deepseek_v3 --preset tiny --seed 1 "$model"
"$dpep" config check "$cfg" --world 4 "$@"
echo
"$dpep" plan "$cfg" "$@"
echo
timeout 300 "$dpep" launch "$cfg" "$@"
