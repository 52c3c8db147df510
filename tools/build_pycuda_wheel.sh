#!/usr/bin/env bash
# Builds a PyCUDA wheel for a GPU machine that runs CPython 3.12 (or $PYTHON's version) on x86-64, here
# on a machine without a GPU, plus the wheels it needs that such a machine may lack, into DIR (default:
# .whl, which .gitignore keeps out of git).
# This machine's CUDA has no curand headers and no libcuda stub, so curand is switched off and the
# driver library is linked against a one-symbol stub whose soname is libcuda.so.1 (the real driver
# resolves it on the GPU machine). benchmarks/gpu_checks.sh installs them there; by hand:
#   python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
out="$(realpath -m "${1:-.whl}")"
ver="${PYCUDA_VERSION:-2026.1}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
# PYTHON=/path/to/python builds for another interpreter (tools/check_gpu_apis.py uses the running one)
if [ -n "${PYTHON:-}" ]; then "$PYTHON" -m venv "$work/venv"; else PYENV_VERSION=3.12.1 python3.12 -m venv "$work/venv"; fi
py="$work/venv/bin/python"
pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
"$py" -m pip install -q numpy setuptools wheel
"$py" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "pycuda==$ver" -d "$work/src"
tar xzf "$work/src/pycuda-$ver.tar.gz" -C "$work/src"
# one real symbol keeps the linker from dropping the (otherwise empty) stub under --as-needed
printf 'int cuInit(unsigned int flags) { (void)flags; return 0; }\n' > "$work/empty.c"
mkdir -p "$work/stubs"
gcc -shared -fPIC -o "$work/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$work/empty.c"
cd "$work/src/pycuda-$ver"
"$py" configure.py --cuda-root=/usr/local/cuda --no-cuda-enable-curand >/dev/null
sed -i "s#^CUDADRV_LIB_DIR = .*#CUDADRV_LIB_DIR = ['$work/stubs']#" siteconf.py
PATH=/usr/local/cuda/bin:$PATH "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$out" .
# what it needs that the GPU machine lacks (numpy, typing-extensions and markupsafe are there already)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" -d "$out" pytools platformdirs mako
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$out" siphash24
ls -1 "$out"
