#!/usr/bin/env bash
# Ahead-of-time build of the aggregation kernels into the fatbin shipped in the wheel.
#
#   kernels/build.sh            # from anywhere; needs nvcc (CUDA >= 12) on PATH or in $NVCC
#
# Produces, in bagcams_deploy/kernels/:
#   bagcams_kernels.fatbin         SASS for sm_75 sm_80 sm_86 sm_89 sm_90 + PTX compute_90 (JIT
#                                  on newer GPUs)
#   bagcams_kernels.cu/.cuh/.h     copies of the sources, for run-time compilation (PyCUDA
#                                  SourceModule) on GPUs/drivers the fatbin cannot serve
#   bagcams_kernels.fatbin.sha256  sha256 of the three sources the fatbin was built from; the test
#                                  suite refuses a fatbin whose stamp does not match the sources
# Fails on any compile error and on any register spill reported by ptxas (-Xptxas -v).
#
# Targets: CUDA 13.0's nvcc still lists sm_75 (Turing) in `nvcc --list-gpu-arch`; the script checks
# every target against that list and fails with a clear message if a future toolkit drops one
# (override with BAGCAMS_ARCHS="80 86 89 90" and record why).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
dest="$root/bagcams_deploy/kernels"
nvcc="${NVCC:-nvcc}"
archs="${BAGCAMS_ARCHS:-75 80 86 89 90}"
ptx_arch="${BAGCAMS_PTX_ARCH:-90}"
sources=(bagcams_kernels.cuh bagcams_kernels.cu bagcams_kernels.h)

command -v "$nvcc" >/dev/null 2>&1 || { echo "build.sh: nvcc not found (set NVCC=/path/to/nvcc)" >&2; exit 1; }
"$nvcc" --version | tail -n 2

supported="$("$nvcc" --list-gpu-arch)"
gencode=()
for a in $archs; do
  if ! grep -qx "compute_$a" <<<"$supported"; then
    echo "build.sh: this nvcc no longer supports compute_$a (sm_$a); set BAGCAMS_ARCHS without it and document the change" >&2
    exit 1
  fi
  gencode+=(-gencode "arch=compute_$a,code=sm_$a")
done
grep -qx "compute_$ptx_arch" <<<"$supported" || { echo "build.sh: no compute_$ptx_arch for the PTX" >&2; exit 1; }
gencode+=(-gencode "arch=compute_$ptx_arch,code=compute_$ptx_arch")

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/ptxas.log"

echo "build.sh: compiling for sm_${archs// /, sm_} + compute_$ptx_arch PTX"
if ! "$nvcc" -fatbin -std=c++17 -O3 -Xptxas -v --threads 0 "${gencode[@]}" \
    -o "$tmp/bagcams_kernels.fatbin" "$here/bagcams_kernels.cu" >"$log" 2>&1; then
  cat "$log" >&2
  echo "build.sh: nvcc failed" >&2
  exit 1
fi

# ptxas prints "N bytes stack frame, N bytes spill stores, N bytes spill loads" per kernel and arch.
if grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$log" >/dev/null; then
  grep -B2 -E "[1-9][0-9]* bytes spill (stores|loads)" "$log" >&2
  echo "build.sh: register spills (see above); refusing to ship a spilling kernel" >&2
  exit 1
fi
kernels="$(grep -c "Compiling entry function" "$log" || true)"
echo "build.sh: $kernels kernel images, no spills; registers per kernel and arch:"
awk '/Compiling entry function/ { name = $7; arch = $9 }
     /Used [0-9]+ registers/ { printf "  %-40s %-8s %s regs\n", name, arch, $5 }' "$log" | tr -d "'" | sort

mkdir -p "$dest"
cp "$tmp/bagcams_kernels.fatbin" "$dest/bagcams_kernels.fatbin"
for s in "${sources[@]}"; do cp "$here/$s" "$dest/$s"; done
(cd "$here" && cat "${sources[@]}" | sha256sum | cut -d' ' -f1) >"$dest/bagcams_kernels.fatbin.sha256"
echo "build.sh: wrote $dest/bagcams_kernels.fatbin ($(wc -c <"$dest/bagcams_kernels.fatbin") bytes)"
echo "build.sh: source sha256 $(cat "$dest/bagcams_kernels.fatbin.sha256")"
