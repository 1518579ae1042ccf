#!/usr/bin/env bash
# device-kit.sh — pack what the GPU machine needs to run dpep and its GPU
# checks without installing anything (it reaches no package registry):
#   scripts/device-kit.sh OUTDIR            pack ./build (or $DPEP_BUILD_DIR)
#   scripts/device-kit.sh OUTDIR BUILD_DIR  pack another build folder
#   scripts/device-kit.sh --lean OUTDIR     without tests/ configs/ bench/ (about 11 MiB
#       less): for carrying next to the repo's working tree, which has them
# OUTDIR must be empty or absent. Layout (mirrors the source tree, so the test
# scripts' relative paths keep working):
#   env.sh            source it: OPAL_* / PMIX / PATH / LD_LIBRARY_PATH for the kit
#   build/            dpep, dpep_launcher (if built), the GPU tests gpu-check.sh runs and
#                     every bench executable (stripped)
#   tests/ configs/ scripts/ bench/   the sources' scripts and data (tests/reference incl.)
#   lib/              the non-system shared libraries the binaries and Open MPI load
#   lib/fallback/     libcudart (appended last to LD_LIBRARY_PATH: used only when
#                     the machine has no CUDA runtime of its own)
#   ompi/             a relocatable Open MPI runtime: bin/ (mpirun, orterun,
#                     orted, ompi_info), lib/openmpi3 (MCA components),
#                     lib/pmix (PMIx components), share/openmpi (help files), etc/
#   README.md         what is in it and how to use it
# Not packed: glibc / libstdc++ / libgcc level libraries (the GPU machine's are
# newer and compatible), the CUDA driver and toolkit libraries, and NCCL
# (libnccl.so.2 is ~210 MB; env.sh finds it on the GPU machine under
# /usr/local/cuda or in python3's nvidia-nccl-cu13 wheel). Components of Open
# MPI that need UCX, libfabric, verbs or PSM are left out (single-node use:
# shared memory and TCP). The kit must stay under 60 MiB (checked).
#
# Proof without a GPU (about 30 s on 2 cores; also the CTest `device_kit`):
#   scripts/device-kit.sh /tmp/kit build && env -i PATH=/usr/bin:/bin HOME=/tmp \
#       bash /tmp/kit/scripts/gpu-check.sh /tmp/kit
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lean=""
[ "${1:-}" = --lean ] && { lean=1; shift; }
out=${1:?usage: device-kit.sh [--lean] OUTDIR [BUILD_DIR]}
build=${2:-${DPEP_BUILD_DIR:-$root/build}}
build=$(cd "$build" && pwd)
[ -x "$build/dpep" ] && [ -s "$build/dpep" ] || { echo "device-kit: no dpep in $build (build first)" >&2; exit 1; }
if [ -e "$out" ] && [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "device-kit: $out is not empty" >&2; exit 1
fi
mkdir -p "$out"; out=$(cd "$out" && pwd)
limit_mib=${DPEP_KIT_LIMIT_MIB:-60}

ompi_path() { ompi_info --path "$1" --parsable 2>/dev/null | awk -F: '{print $NF}'; }
ompi_pkglib=$(ompi_path pkglibdir)
ompi_share=$(ompi_path pkgdatadir); ompi_share=${ompi_share:-/usr/share/openmpi}
ompi_etc=$(ompi_path sysconfdir); ompi_etc=${ompi_etc:-/etc/openmpi}
pmix_comp=$(ls -d /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix 2>/dev/null | head -1 || true)
[ -d "$ompi_pkglib" ] && [ -d "$ompi_share" ] || { echo "device-kit: Open MPI (Debian openmpi-bin) not found" >&2; exit 1; }

# Libraries the GPU machine provides (system level) or that must match its
# driver/toolkit: never packed.
system_re='^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libutil\.so|libresolv|libanl|libcrypt\.so|libBrokenLocale|libstdc\+\+|libgcc_s|libcuda\.so|libcudart|libnccl|libcublas|libcufft|libcurand|libcusparse|libcusolver|libnvrtc|libnvJitLink|libnvidia)'
# Open MPI components that need interconnect stacks not packed here.
skip_comp_re='lib(ucp|uct|ucs|fabric|ibverbs|rdmacm|psm_infinipath|psm2)\.so|libmca_common_(ucx|ofi|verbs)'

mkdir -p "$out/build" "$out/lib/fallback" "$out/ompi/bin" "$out/ompi/lib/openmpi3" \
         "$out/ompi/lib/pmix" "$out/ompi/share" "$out/ompi/etc"

# 1. The binaries the GPU machine runs (not the CPU-only unit tests, which CI
# runs, nor CMake's own probes): dpep and dpep_launcher, the tests
# gpu-check.sh runs (test_cuda_devices, tests/comm/test_comm, every test_*ops*
# and test_*_cuda) and every bench executable. Each executable links the
# modules' CUDA kernels statically, so every extra one costs megabytes.
gpu_exe_re='^(dpep|dpep_launcher|tests/test_cuda_devices|tests/comm/test_comm|tests/comm/test_comm_dshm|tests/.*/?test_[^/]*ops[^/]*|tests/.*/?test_[^/]*_cuda|bench/[^/]*)$'
mapfile -t exes < <(cd "$build" && find . -path ./CMakeFiles -prune -o -path '*/CMakeFiles/*' -prune -o \
  -type f -perm -u+x -print | sort | while read -r f; do
    [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] && [[ ${f#./} =~ $gpu_exe_re ]] && echo "${f#./}"; done)
for f in "${exes[@]}"; do
  mkdir -p "$out/build/$(dirname "$f")"
  cp "$build/$f" "$out/build/$f"
  strip --strip-unneeded "$out/build/$f" 2>/dev/null || true
done

# 2. Open MPI: launcher binaries, components, help files, config.
for b in orterun orted ompi_info; do
  [ -x /usr/bin/$b ] && cp /usr/bin/$b "$out/ompi/bin/$b"
done
# mpirun / mpiexec are orterun in Open MPI 4 (copies: links may not travel)
for b in mpirun mpiexec; do cp "$out/ompi/bin/orterun" "$out/ompi/bin/$b"; done
[ -x /usr/bin/prted ] && cp /usr/bin/prted "$out/ompi/bin/prted"  # Open MPI 5 (not on Debian 12)
comps=()
for c in "$ompi_pkglib"/*.so; do
  deps=$(ldd "$c" 2>/dev/null || true)   # (not piped into grep -q: SIGPIPE under pipefail)
  if grep -Eq "$skip_comp_re" <<< "$deps"; then continue; fi
  cp "$c" "$out/ompi/lib/openmpi3/"; comps+=("$c")
done
if [ -n "$pmix_comp" ]; then
  for c in "$pmix_comp"/*.so; do cp "$c" "$out/ompi/lib/pmix/"; comps+=("$c"); done
fi
cp -r "$ompi_share" "$out/ompi/share/openmpi"
cp "$ompi_etc"/openmpi-mca-params.conf "$out/ompi/etc/" 2>/dev/null || true
: > "$out/ompi/etc/openmpi-default-hostfile"

# 3. The non-system shared libraries all of these load (ldd: transitive).
elfs=("${exes[@]/#/$build/}" "${comps[@]}")
for b in orterun orted ompi_info; do [ -x "/usr/bin/$b" ] && elfs+=("/usr/bin/$b"); done
declare -A seen=()
for e in "${elfs[@]}"; do
  while read -r name path; do
    [ -n "$path" ] || continue
    [[ $name =~ $system_re ]] && continue
    case $path in /usr/local/cuda*|/usr/local/nvidia*) continue ;; esac
    [ -n "${seen[$name]:-}" ] && continue
    seen[$name]=1
    cp -L "$path" "$out/lib/$name"
  done < <(ldd "$e" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
done
grep -q 'not found' <<< "$(ldd "$build/dpep")" && { echo "device-kit: dpep has unresolved libraries here:" >&2; ldd "$build/dpep" | grep 'not found' >&2; exit 1; }
# libcudart as a last resort only (the machine's own CUDA 13 comes first)
cudart=$(ldd "$build/dpep" | awk '$1 ~ /^libcudart\.so/ && $3 ~ /^\// {print $3}')
[ -n "$cudart" ] && cp -L "$cudart" "$out/lib/fallback/$(basename "$cudart")"
strip --strip-unneeded "$out"/lib/*.so* "$out"/ompi/lib/*/*.so "$out"/ompi/bin/* 2>/dev/null || true
# Libraries over 8 MiB (OpenBLAS: 36 MiB, all CPU kernels) travel xz-compressed
# (about 8x smaller); env.sh unpacks them on first use (xz, else python3's lzma).
for f in "$out"/lib/*.so*; do
  [ "$(stat -c %s "$f")" -gt $((8 * 1048576)) ] && xz -6 -T0 "$f"
done

# 4. Scripts and data from the source tree.
copy_tree() { # DIR: everything but build products, venvs and caches
  (cd "$root" && find "$1" \( -name .venv -o -name __pycache__ -o -name '*.o' \) -prune -o -type f -print) |
    while read -r f; do mkdir -p "$out/$(dirname "$f")"; cp -p "$root/$f" "$out/$f"; done
}
# --lean: only scripts/ (the working tree that travels with the device tool
# already holds tests/ and configs/; gpu-check.sh then reads them from there).
for d in tests configs scripts bench; do
  [ -n "$lean" ] && [ "$d" != scripts ] && continue
  [ -d "$root/$d" ] && copy_tree "$d"
done

# 5. env.sh: relocates Open MPI (every install dir it looks up, by OPAL_*),
# PMIx's components, and the library search path.
cat > "$out/env.sh" <<'ENV'
# env.sh — source this (bash) to use the dpep kit from wherever it is unpacked.
DPEP_KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DPEP_KIT
_o=$DPEP_KIT/ompi
export OPAL_PREFIX=$_o OPAL_EXEC_PREFIX=$_o OPAL_BINDIR=$_o/bin OPAL_SBINDIR=$_o/bin \
       OPAL_LIBEXECDIR=$_o/bin OPAL_LIBDIR=$DPEP_KIT/lib OPAL_PKGLIBDIR=$_o/lib/openmpi3 \
       OPAL_DATAROOTDIR=$_o/share OPAL_DATADIR=$_o/share OPAL_PKGDATADIR=$_o/share/openmpi \
       OPAL_SYSCONFDIR=$_o/etc OPAL_INCLUDEDIR=$_o/include OPAL_PKGINCLUDEDIR=$_o/include \
       OPAL_SHAREDSTATEDIR=$_o/com OPAL_LOCALSTATEDIR=/var OPAL_INFODIR=$_o/share/info OPAL_MANDIR=$_o/share/man
export PMIX_MCA_mca_base_component_path=$_o/lib/pmix PMIX_MCA_pcompress_base_silence_warning=1
# Open MPI as root, more ranks than cores, no busy-waiting; shared memory + TCP.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 \
       OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp \
       OMPI_MCA_btl_base_warn_component_unused=0
# no cross-memory attach (process_vm_readv): sandboxes such as gVisor refuse it
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
# The machine's CUDA runtime and NCCL: the toolkit's folders, else python3's
# nvidia wheels (nvidia-nccl-cu13 carries libnccl.so.2). Found once, cached.
_cuda=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && _cuda=$_cuda:$d
done
_have() { { ldconfig -p 2>/dev/null | grep -q "^[[:space:]]*$1 " ; } || \
          for d in ${_cuda//:/ }; do [ -e "$d/$1" ] && return 0; done; return 1; }
for _lib in libnccl.so.2 libcudart.so.13; do
  _have "$_lib" && continue
  if [ ! -f "$DPEP_KIT/.${_lib}.path" ] && command -v python3 >/dev/null; then
    _p=$(timeout 60 python3 -c 'import nvidia, os; print(" ".join(nvidia.__path__))' 2>/dev/null || true)
    _f=$( [ -n "$_p" ] && find $_p -maxdepth 4 -name "$_lib" 2>/dev/null | head -1 || true)
    echo "${_f:+$(dirname "$_f")}" > "$DPEP_KIT/.${_lib}.path" 2>/dev/null || true
  fi
  _d=$(cat "$DPEP_KIT/.${_lib}.path" 2>/dev/null || true)
  [ -n "$_d" ] && _cuda=$_cuda:$_d
done
for _f in "$DPEP_KIT"/lib/*.xz; do
  [ -e "$_f" ] && [ ! -e "${_f%.xz}" ] || continue
  { xz -dc "$_f" 2>/dev/null || python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$_f"; } \
    > "${_f%.xz}.tmp$$" && mv "${_f%.xz}.tmp$$" "${_f%.xz}" || { rm -f "${_f%.xz}.tmp$$"; echo "env.sh: cannot unpack $_f" >&2; }
done
export PATH=$_o/bin:$DPEP_KIT/build:$PATH
export LD_LIBRARY_PATH=$DPEP_KIT/lib$_cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:$DPEP_KIT/lib/fallback
unset _o _cuda _lib _p _f _d
unset -f _have
ENV

# 6. README.
size_b=$(du -sb "$out" | cut -f1)
cat > "$out/README.md" <<EOF
# dpep device kit

Packed by \`scripts/device-kit.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') from \`$build\`
($(uname -m), $(ldd --version | head -1)); $((size_b / 1048576)) MiB.
Runs dpep and its tests on a machine that has a newer glibc and, optionally,
NVIDIA's driver + CUDA 13, without installing anything.

    source env.sh                     # Open MPI, libraries, PATH (from wherever this folder is)
    bash scripts/gpu-check.sh .       # machine facts, GPU tests, goldens; table at the end
    mpirun -np 4 build/dpep run configs/tiny.yaml    # the tiny model on 4 ranks (CPU)

Logs go to \$OUT/ (a tarball + the table; the device tool brings back at most 8
files) when OUT is set, else to ./gpu-check-out/.

| folder | what |
|---|---|
| build/ | dpep, dpep_launcher, the GPU tests gpu-check.sh runs, every bench executable; stripped, at their build-tree paths |
| tests/ configs/ scripts/ bench/ | the sources' scripts and data (tests/reference: HF goldens, xz tokenizers) |
| lib/ | non-system shared libraries: $(cd "$out/lib" && ls *.so* | sed 's/\.so.*//' | sort -u | tr '\n' ' ')(\*.xz: unpacked by env.sh on first use) |
| lib/fallback/ | libcudart, appended last to LD_LIBRARY_PATH: used only if the machine has none |
| ompi/ | Open MPI $(ompi_info --version 2>/dev/null | head -1 | grep -o '[0-9][0-9.]*' || echo '?') runtime: bin (mpirun = orterun, orted), lib/openmpi3 (MCA components), lib/pmix (PMIx components), share/openmpi (help files), etc |

Not packed: glibc, libstdc++, libgcc_s (the machine's own); the CUDA driver
and toolkit libraries; NCCL (libnccl.so.2, ~210 MB) — env.sh takes it from
/usr/local/cuda, the loader's cache, or python3's \`nvidia-nccl-cu13\` wheel.
Open MPI's UCX, libfabric, verbs and PSM components are left out: the kit
runs on one node over shared memory (vader) and TCP, with pml ob1.
Relocation: env.sh sets OPAL_PREFIX and every OPAL_*DIR (Debian's Open MPI
has absolute libdir/pkglibdir/sysconfdir that OPAL_PREFIX alone does not move)
and PMIX_MCA_mca_base_component_path for PMIx's own components.
EOF

libs=("$out"/lib/*.so*)
echo "device-kit: $out: ${#exes[@]} executables, ${#libs[@]} libraries," \
     "$(ls "$out/ompi/lib/openmpi3" | wc -l) MCA components; $(awk -v b="$size_b" 'BEGIN {printf "%.1f", b / 1048576}') MiB"
if [ "$size_b" -gt $((limit_mib * 1048576)) ]; then
  echo "device-kit: over the ${limit_mib} MiB limit" >&2; exit 1
fi
