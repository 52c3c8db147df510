"""The CUDA aggregation kernels (kernels/, bagcams_deploy/kernels/).

CPU-only (run everywhere):
  * the sources compile with the machine's nvcc for every shipped target, with no register spill;
  * the shipped fatbin and source copies match kernels/ (sha256 stamp written by build.sh);
  * the Python launch plan matches the C API's (bagcams_workspace_size, compiled and run on the host);
  * the device code itself, run on a CPU emulation of CUDA (kernels/emu), matches the torch
    formulas of bagcams_deploy.methods.aggregation: every method, float32/float16, both partial
    paths, gradient_scale, constant and non-finite maps;
  * the PyCUDA launcher itself (plan, argument packing, workspace offsets, launch configuration,
    shared-memory opt-in and fallback, errors) driving those emulated kernels through a fake
    pycuda.driver whose device memory is host memory;
  * the host C API itself (bagcams_aggregate / bagcams_workspace_size of bagcams_kernels.cu, its
    <<<>>> launches rewritten to emulator calls, CUDA runtime stand-ins in kernels/emu/emu_capi.cpp):
    plan, workspace pointers, launch configuration, shared-memory opt-in and fallback, errors.
GPU (@pytest.mark.gpu, skipped without pycuda and a CUDA device): the real kernels through the
PyCUDA launcher against the same oracle.

Oracle: the aggregation formulas evaluated in float64 on the very values the kernel receives (the
float16 inputs are cast up, so input rounding is the same on both sides), then F.interpolate and
normalize_minmax. Bounds on the normalised [0, 1] map: float32 inputs 1e-5 (float32 accumulation
over K*h*w terms; observed ~1e-6); float16 inputs 5e-5 (same arithmetic, the bound leaves room for
the larger dynamic range of the float16 test data; observed ~1e-6). Against gradient_map itself
(float32 torch on CPU) the bound is 5e-5 for both.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bagcams_deploy.errors import BagcamsError, MissingDependencyError
from bagcams_deploy.kernels import launcher
from bagcams_deploy.methods import aggregation as agg

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "kernels"
PKG = ROOT / "bagcams_deploy" / "kernels"
SOURCES = ("bagcams_kernels.cuh", "bagcams_kernels.cu", "bagcams_kernels.h")
ARCHS = (75, 80, 86, 89, 90)
PTX_ARCH = 90
METHODS = tuple(launcher.METHODS)
TOL = {"float32": 1e-5, "float16": 5e-5}
TOL_VS_GRADIENT_MAP = 5e-5

NVCC = shutil.which(os.environ.get("NVCC", "nvcc"))


def _cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (for cuda_fp16.h), from CUDA_HOME/CUDA_PATH or nvcc."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    if NVCC:
        candidates.append(Path(NVCC).resolve().parent.parent / "include")
        try:  # nvcc may be a wrapper script: ask it where its headers are
            out = subprocess.run([NVCC, "--dryrun", "--version"], capture_output=True, text=True, timeout=30)
            for m in re.finditer(r"INCLUDES=\"-I([^\"]+?)/?\"", out.stdout + out.stderr):
                candidates.append(Path(m.group(1)))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append(Path("/usr/local/cuda/include"))
    return next((c for c in candidates if (c / "cuda_fp16.h").is_file()), None)


CUDA_INCLUDE = _cuda_include()
CXX = shutil.which(os.environ.get("CXX", "g++"))

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH (set NVCC=...)")


# ---------------------------------------------------------------------------------------------
# test data and oracle
# ---------------------------------------------------------------------------------------------


def make_inputs(shape, dtype="float32", gradient_scale=1.0, seed=0):
    """Realistic, well-conditioned inputs: F >= 0 (post-ReLU features); per-channel gradient sign
    with 10 % small opposite-sign entries, so ReLU(g) matters and GradCAM++'s 2g^2 + S_k stays far
    from zero wherever ReLU(g) > 0 (random-sign data makes that formula ill-conditioned and would
    test float32 vs float64 rounding rather than the kernel)."""
    rng = np.random.default_rng(seed)
    n, k = shape[:2]
    f = np.maximum(rng.standard_normal(shape), 0.0)
    sign = np.where(rng.random((n, k, 1, 1)) < 0.5, -1.0, 1.0)
    g = sign * (0.25 + np.abs(rng.standard_normal(shape)))
    flip = rng.random(shape) < 0.1
    g = np.where(flip, -sign * rng.uniform(0.0, 0.3, shape), g) * gradient_scale
    return f.astype(dtype), g.astype(dtype)


def oracle64(method, features, gradients, size, gradient_scale=1.0):
    f = torch.from_numpy(features.astype(np.float64))
    g = torch.from_numpy(gradients.astype(np.float64)) / gradient_scale
    raw = agg.GRADIENT_AGGREGATIONS[method](f, g)
    up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    return agg.normalize_minmax(up).numpy()


def oracle_gradient_map(method, features, gradients, size, gradient_scale=1.0):
    f = torch.from_numpy(features)
    g = torch.from_numpy(gradients)
    return agg.gradient_map(method, f, g, size, gradient_scale).numpy()


def check_against_oracles(out, method, f, g, size, scale):
    dtype = f.dtype.name
    assert out.shape == (f.shape[0], 1, *size)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    err64 = float(np.abs(out - oracle64(method, f, g, size, scale)).max())
    err32 = float(np.abs(out - oracle_gradient_map(method, f, g, size, scale)).max())
    assert err64 <= TOL[dtype], f"{method} {dtype}: max abs err {err64:.3g} vs float64 oracle"
    assert err32 <= TOL_VS_GRADIENT_MAP, f"{method} {dtype}: max abs err {err32:.3g} vs gradient_map"


# ---------------------------------------------------------------------------------------------
# (a) CPU: compilation, shipped binary, plan
# ---------------------------------------------------------------------------------------------


@needs_nvcc
def test_sources_compile_for_all_targets_without_spills(tmp_path):
    listed = subprocess.run([NVCC, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout.split()
    missing = [a for a in ARCHS if f"compute_{a}" not in listed]
    if missing:
        pytest.fail(f"this nvcc dropped compute_{missing}: update ARCHS here and in kernels/build.sh")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    gencode.append(f"-gencode=arch=compute_{PTX_ARCH},code=compute_{PTX_ARCH}")
    cmd = [NVCC, "-fatbin", "-std=c++17", "-O3", "-Xptxas", "-v", "--threads", "0", *gencode]
    cmd += ["-o", str(tmp_path / "k.fatbin"), str(SRC / "bagcams_kernels.cu")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{log[-4000:]}"
    assert "error" not in log.lower()
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", log)
    assert spills, "ptxas -v printed no spill statistics"
    assert all(int(s) == 0 for s in spills), f"register spills:\n{log[-4000:]}"
    entries = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    names = {name for name, _ in entries}
    expected = {f"bagcams_partial_{m}_{t}{v}" for m in METHODS for t in ("f32", "f16") for v in ("", "_gmem")}
    expected |= {"bagcams_reduce_partials", "bagcams_minmax", "bagcams_normalize"}
    assert names == expected
    for arch in ARCHS:
        assert {name for name, a in entries if int(a) == arch} == expected, f"sm_{arch} incomplete"


def _source_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def test_shipped_fatbin_is_built_from_current_sources():
    fatbin = PKG / "bagcams_kernels.fatbin"
    assert fatbin.is_file() and fatbin.stat().st_size > 0, "run kernels/build.sh"
    assert fatbin.read_bytes()[:4] == bytes.fromhex("50ed55ba"), "not a CUDA fatbin"
    stamp = (PKG / "bagcams_kernels.fatbin.sha256").read_text().strip()
    assert stamp == _source_digest(SRC), "kernels/ changed since the fatbin was built: run kernels/build.sh"
    for name in SOURCES:
        assert (PKG / name).read_bytes() == (SRC / name).read_bytes(), f"stale shipped copy of {name}"
    assert launcher.source_sha256() == stamp


def _entry_point_arg_types(source: str) -> dict[str, set[str]]:
    """PyCUDA ``prepare`` strings of every ``extern "C" __global__`` kernel, read from its C signature;
    macro-made names (``bagcams_partial_##NAME``) are keyed by their fixed prefix."""
    code = source.replace("\\\n", " ")  # join macro continuation lines
    pattern = r'extern "C" __global__ void\s+(?:__launch_bounds__\([^)]*\)\s+)?([\w#]+)\(([^)]*)\)'
    found: dict[str, set[str]] = {}
    for name, params in re.findall(pattern, code):
        kinds = ""
        for param in (p.strip() for p in params.split(",")):
            kinds += (
                "P" if "*" in param else "f" if param.startswith("float ") else "i" if param.startswith("int ") else "?"
            )
        found.setdefault(name.split("_##")[0], set()).add(kinds)
    return found


def test_launcher_argument_types_match_the_kernel_signatures():
    parsed = _entry_point_arg_types((SRC / "bagcams_kernels.cuh").read_text())
    assert parsed == {name: {types} for name, types in launcher.ARG_TYPES.items()}


@needs_nvcc
def test_python_plan_matches_c_api(tmp_path):
    shapes = [
        (1, 1024, 28, 28, 224, 224),
        (3, 37, 7, 9, 61, 45),
        (32, 2048, 7, 7, 224, 224),
        (5, 3, 1, 1, 1, 1),
    ]
    main = tmp_path / "main.cpp"
    lines = ['#include "bagcams_kernels.h"', "#include <cstdio>", "int main() {"]
    for s in shapes:
        lines.append(f'  std::printf("%zu\\n", bagcams_workspace_size({", ".join(map(str, s))}));')
    lines.append('  std::printf("%zu\\n", bagcams_workspace_size(0, 1, 1, 1, 1, 1));')
    # argument checks come before any CUDA call, so they run without a GPU
    bad_calls = [
        "PCS, F32, &dummy, &dummy, &out, 0, 4, 7, 7, 14, 14, 1.0f, ws, 1 << 20",
        "PCS, F32, nullptr, &dummy, &out, 1, 4, 7, 7, 14, 14, 1.0f, ws, 1 << 20",
        "PCS, F32, &dummy, &dummy, &out, 1, 4, 7, 7, 14, 14, 0.0f, ws, 1 << 20",
        "PCS, F32, &dummy, &dummy, &out, 1, 4, 7, 7, 14, 14, 1.0f, ws, 16",
        "(bagcams_method)7, F32, &dummy, &dummy, &out, 1, 4, 7, 7, 14, 14, 1.0f, ws, 1 << 20",
    ]
    lines.append("  float dummy = 0.f, out = 0.f; static char ws_buf[1 << 20]; void* ws = ws_buf;")
    lines.append("  const bagcams_method PCS = BAGCAMS_METHOD_PCS;")
    lines.append("  const bagcams_dtype F32 = BAGCAMS_DTYPE_FLOAT32;")
    for call in bad_calls:
        lines.append(f'  std::printf("%d\\n", (int)bagcams_aggregate({call}, nullptr));')
    lines += ["  return 0;", "}"]
    main.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "plan"
    cmd = [NVCC, "-std=c++17", "-arch=sm_90", "-I", str(SRC), str(SRC / "bagcams_kernels.cu"), str(main)]
    cmd += ["-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = [int(v) for v in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]
    want = [launcher.make_plan("bagcams", *s).workspace_bytes for s in shapes] + [0]
    want += [1] * len(bad_calls)  # cudaErrorInvalidValue
    assert got == want


@pytest.mark.parametrize(
    "shape", [(1, 1024, 28, 28), (8, 1024, 28, 28), (32, 1024, 28, 28), (3, 37, 7, 9), (1, 2048, 512, 512)]
)
def test_plan_covers_every_channel_and_output(shape):
    plan = launcher.make_plan("gradcampp", *shape, 224, 224)
    k = shape[1]
    assert plan.channels_per_block % launcher.WARPS == 0
    assert (plan.groups - 1) * plan.channels_per_block < k <= plan.groups * plan.channels_per_block
    assert (plan.blocks - 1) * plan.chunk < 224 * 224 <= plan.blocks * plan.chunk
    assert plan.raw_offset >= plan.n * plan.groups * plan.p * 4
    assert plan.stats_offset >= plan.raw_offset + plan.n * plan.p * 4
    assert plan.workspace_bytes >= plan.stats_offset + plan.n * plan.blocks * 12
    assert plan.smem_bytes == plan.p * (1 + launcher.WARPS * 2) * 4
    assert plan.n * plan.groups * plan.p <= max(launcher.MAX_PARTIAL_FLOATS, plan.n * plan.p)


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((0, 4, 7, 7, 14, 14), "N must be > 0"),
        ((1, 4, 7, -1, 14, 14), "w must be > 0"),
        ((1, 4, 7, 7, 14, 0), "W must be > 0"),
        ((70000, 4, 7, 7, 14, 14), "split the batch"),
        ((1, 4.0, 7, 7, 14, 14), "K must be an int"),
    ],
)
def test_plan_rejects_bad_dims(dims, message):
    with pytest.raises(BagcamsError, match=message):
        launcher.make_plan("pcs", *dims)


def test_unknown_method_and_dtype_are_clear_errors():
    with pytest.raises(BagcamsError, match="valid: bagcams, gradcam, gradcampp, pcs"):
        launcher.make_plan("cam", 1, 1, 1, 1, 1, 1)
    with pytest.raises(BagcamsError, match="unsupported dtype"):
        launcher._dtype_key("float64")


def test_missing_pycuda_is_a_clear_error():
    try:
        import pycuda.driver  # noqa: F401
    except Exception:
        with pytest.raises(MissingDependencyError, match="pycuda"):
            launcher.AggregationKernel("bagcams", "float32")
    else:
        pytest.skip("pycuda is installed here")


# ---------------------------------------------------------------------------------------------
# (a) CPU: the device code on a CPU emulation of CUDA
# ---------------------------------------------------------------------------------------------


def _asan_available() -> bool:
    """Whether AddressSanitizer builds and runs here: libasan is a separate package on some systems, and
    some sandboxes refuse its shadow-memory mappings at run time."""
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "t.cpp", Path(tmp) / "t"
        src.write_text("#include <thread>\nint main() { std::thread([] {}).join(); return 0; }\n")
        cmd = [CXX, "-std=c++20", "-pthread", "-fsanitize=address", str(src), "-o", str(exe)]
        if subprocess.run(cmd, capture_output=True, timeout=120).returncode != 0:
            return False
        return subprocess.run([str(exe)], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    if CXX is None or CUDA_INCLUDE is None or not (CUDA_INCLUDE / "cuda_fp16.h").is_file():
        pytest.skip("the CUDA emulation needs g++ (C++20) and the CUDA headers (cuda_fp16.h)")
    exe = tmp_path_factory.mktemp("emu") / "bagcams_emu"
    cmd = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas"]
    # AddressSanitizer: an out-of-bounds access in the device code (a shared-memory stage sized too
    # small, say) fails at once with a report instead of corrupting the heap and hanging the run.
    cmd += ["-fsanitize=address", "-fno-omit-frame-pointer"] if _asan_available() else []
    cmd += ["-I", str(CUDA_INCLUDE), str(SRC / "emu" / "emu_main.cpp"), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the CUDA emulation failed:\n{proc.stderr[-4000:]}")
    return exe


def run_emulator(exe, method, f, g, size, scale=1.0, smem=True):
    n, k, h, w = f.shape
    out_h, out_w = size
    plan = launcher.make_plan(method, n, k, h, w, out_h, out_w)
    work = exe.parent
    f.tofile(work / "f.bin")
    g.tofile(work / "g.bin")
    dt = launcher.DTYPES[f.dtype.name]
    args = [method, dt, n, k, h, w, out_h, out_w, repr(float(scale)), plan.groups, plan.channels_per_block]
    args += [plan.blocks, plan.chunk, int(smem), work / "f.bin", work / "g.bin", work / "out.bin"]
    subprocess.run([str(exe), *map(str, args)], check=True, timeout=600)
    return np.fromfile(work / "out.bin", dtype=np.float32).reshape(n, 1, out_h, out_w)


@pytest.mark.parametrize("smem", [True, False], ids=["smem", "gmem"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_emulated_kernel_matches_oracle(emulator, method, dtype, smem):
    scale = 1.0 if dtype == "float32" else 256.0
    f, g = make_inputs((3, 37, 7, 9), dtype, scale, seed=1)
    out = run_emulator(emulator, method, f, g, (61, 45), scale, smem)
    check_against_oracles(out, method, f, g, (61, 45), scale)


@pytest.mark.parametrize("scale", [8.0, 37.5, 2.0**-20], ids=["pow2", "general", "tiny-pow2"])
@pytest.mark.parametrize("method", METHODS)
def test_emulated_gradient_scale_is_divided_out(emulator, method, scale):
    # power-of-two scales take the exact reciprocal-multiply path, others the IEEE division
    f, g = make_inputs((2, 9, 5, 6), "float32", scale, seed=2)
    out = run_emulator(emulator, method, f, g, (13, 11), scale)
    check_against_oracles(out, method, f, g, (13, 11), scale)


@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 5, 7, 9), (7, 9)), ((2, 6, 12, 10), (5, 4)), ((1, 4, 1, 1), (3, 5)), ((2, 3, 6, 1), (1, 1))],
    ids=["same-size", "downsample", "1x1-source", "1x1-output"],
)
def test_emulated_interpolation_edge_sizes(emulator, shape, size):
    f, g = make_inputs(shape, "float32", seed=3)
    out = run_emulator(emulator, "pcs", f, g, size)
    ref = oracle64("pcs", f, g, size)
    assert np.abs(out - ref).max() <= TOL["float32"]


@pytest.mark.parametrize("method", METHODS)
def test_emulated_constant_and_non_finite_maps_are_zero(emulator, method):
    f, g = make_inputs((3, 6, 5, 5), "float32", seed=4)
    f[0] = 0.0  # image 0: zero features -> constant map
    f[1, 2, 3, 1] = np.inf  # image 1: non-finite (a positive channel, so no ReLU can clip -inf away)
    g[1, 2] = np.abs(g[1, 2]) + 0.1
    out = run_emulator(emulator, method, f, g, (9, 8))
    ref = oracle64(method, f, g, (9, 8))
    assert np.all(ref[:2] == 0.0)  # what the oracle says, so the test means what it claims
    assert np.all(out[:2] == 0.0)
    assert np.abs(out[2] - ref[2]).max() <= TOL["float32"]


@pytest.mark.parametrize("smem", [True, False], ids=["smem", "gmem"])
@pytest.mark.parametrize("method", METHODS)
def test_emulated_blocks_with_several_sub_tiles(emulator, monkeypatch, method, smem):
    # Real plans give a partial block many sub-tiles of kWarps channels (N=32, K=2048, 7x7: 64
    # channels, 16 sub-tiles) and the block accumulates over them; the small shapes above get a
    # single sub-tile per block. A lower block target gives a small shape that structure: groups of
    # 20 and 17 channels, i.e. 5 full sub-tiles, then 4 full ones and a one-channel one.
    assert launcher.make_plan(method, 32, 2048, 7, 7, 224, 224).channels_per_block == 16 * launcher.WARPS
    monkeypatch.setattr(launcher, "TARGET_PARTIAL_BLOCKS", 4)
    plan = launcher.make_plan(method, 2, 37, 7, 9, 19, 23)
    assert (plan.groups, plan.channels_per_block) == (2, 20)
    f, g = make_inputs((2, 37, 7, 9), "float32", seed=17)
    out = run_emulator(emulator, method, f, g, (19, 23), smem=smem)
    check_against_oracles(out, method, f, g, (19, 23), 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_emulated_gradcampp_with_realistic_gradient_magnitudes(emulator, monkeypatch, dtype):
    # Gradients of a class score w.r.t. the last feature map are ~1e-3 (a GAP classifier row / h*w),
    # so 2 g^2 + S_k is ~1e-6 and GRADCAMPP_EPS is a visible part of the alpha denominator.
    scale = 1.0 if dtype == "float32" else 4096.0
    f, g = make_inputs((2, 9, 5, 6), "float64", seed=18)
    g = (g * 2e-3 * scale).astype(dtype)
    f = f.astype(dtype)
    out = run_emulator(emulator, "gradcampp", f, g, (13, 11), scale)
    check_against_oracles(out, "gradcampp", f, g, (13, 11), scale)
    monkeypatch.setattr(agg, "GRADCAMPP_EPS", 1e-6)  # the test means what it claims: eps matters here
    assert np.abs(out - oracle64("gradcampp", f, g, (13, 11), scale)).max() > 100 * TOL[dtype]


def test_emulated_many_output_chunks_and_a_late_non_finite_value(emulator):
    # H*W > 32 * OUT_PER_BLOCK: 34 output chunks, more than the 32 lanes of bagcams_normalize that
    # combine the chunk statistics (lanes 0 and 1 take two chunks each).
    shape, size = (2, 2, 10, 260), (260, 260)
    plan = launcher.make_plan("pcs", *shape, *size)
    assert plan.blocks > 32
    f, g = make_inputs(shape, "float32", seed=19)
    g = np.abs(g)  # PCS: no ReLU zeros, so the minimum is not everywhere
    f[0] += np.arange(10, dtype=np.float32)[:, None]  # image 0: minimum only in the first rows (chunk 0)
    # image 1: one infinite raw value whose upsampled non-finite outputs lie in chunks other than 0
    # and 32 and on no lane 0 of a warp, so only a complete non-finite flag reduction sees it
    f[1, 0, 3, 144] = np.inf
    up = F.interpolate(agg.pcs_raw(torch.from_numpy(f[1:2]), torch.from_numpy(g[1:2])), size=size, mode="bilinear")
    bad = np.flatnonzero(~np.isfinite(up.numpy()))
    chunks = bad // plan.chunk
    assert bad.size and not np.isin(chunks, [0, 32]).any() and ((bad - chunks * plan.chunk) % 32 != 0).all()
    out = run_emulator(emulator, "pcs", f, g, size)
    ref = oracle64("pcs", f, g, size)
    assert np.all(ref[1] == 0.0) and np.all(out[1] == 0.0)
    assert np.abs(out[0] - ref[0]).max() <= TOL["float32"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_emulated_kernel_feature_map_28x28(emulator, method):
    f, g = make_inputs((2, 64, 28, 28), "float32", seed=5)
    out = run_emulator(emulator, method, f, g, (224, 224))
    check_against_oracles(out, method, f, g, (224, 224), 1.0)


# ---------------------------------------------------------------------------------------------
# (a) CPU: the PyCUDA launcher driving the emulated kernels through a fake pycuda.driver
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def emulator_lib(tmp_path_factory):
    if CXX is None or CUDA_INCLUDE is None or not (CUDA_INCLUDE / "cuda_fp16.h").is_file():
        pytest.skip("the CUDA emulation needs g++ (C++20) and the CUDA headers (cuda_fp16.h)")
    so = tmp_path_factory.mktemp("emulib") / "libbagcams_emu.so"
    cmd = [
        CXX,
        "-std=c++20",
        "-O1",
        "-ffp-contract=off",
        "-pthread",
        "-Wno-unknown-pragmas",
        "-fPIC",
        "-shared",
    ]
    cmd += ["-I", str(CUDA_INCLUDE), str(SRC / "emu" / "emu_lib.cpp"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the CUDA emulation library failed:\n{proc.stderr[-4000:]}")
    lib = ctypes.CDLL(str(so))
    u, i, p, sz = ctypes.c_uint, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    grid = [u, u, u, u, sz]
    lib.emu_partial.argtypes = [ctypes.c_char_p, i, i, *grid, p, p, p, i, i, i, ctypes.c_float]
    lib.emu_reduce_partials.argtypes = [*grid, p, p, i, i, i]
    lib.emu_minmax.argtypes = [*grid, p, p, i, i, i, i, i, i]
    lib.emu_normalize.argtypes = [*grid, p, p, p, i, i, i, i, i, i]
    return lib


class FakeCudaError(Exception):
    pass


def fake_pycuda(lib, smem_default=48 * 1024, smem_optin=48 * 1024, with_set_attribute=True):
    """A pycuda.driver stand-in: 'device memory' is host memory, kernels run on the emulation."""
    drv = types.ModuleType("pycuda.driver")
    drv.Error = FakeCudaError
    drv.launches = []
    drv.allocations = []
    drv.device_attribute = types.SimpleNamespace(
        MAX_SHARED_MEMORY_PER_BLOCK="smem", MAX_SHARED_MEMORY_PER_BLOCK_OPTIN="optin"
    )
    drv.function_attribute = types.SimpleNamespace(
        SHARED_SIZE_BYTES="static", MAX_DYNAMIC_SHARED_SIZE_BYTES="max_dynamic"
    )
    static_smem = 16

    class DeviceAllocation:
        def __init__(self, nbytes):
            require_context()
            self.buf = np.full(max(int(nbytes), 1), 0xFF, dtype=np.uint8)  # NaN-poisoned floats
            self.freed = False
            drv.allocations.append(self)

        def __int__(self):
            assert not self.freed, "use after free"
            return self.buf.ctypes.data

        __index__ = __int__

        def free(self):
            self.freed = True

    class Stream:
        def synchronize(self):
            pass

    class Device:
        def __init__(self, ordinal=0):
            self.ordinal = ordinal

        @staticmethod
        def count():
            return 1

        def name(self):
            return "Emulated GPU"

        def get_attribute(self, attr):
            return {"smem": smem_default, "optin": smem_optin}[attr]

        def retain_primary_context(self):
            return PrimaryContext()

    drv.context_depth = 0  # PyCUDA's context stack (one thread here)

    def require_context():
        if drv.context_depth == 0:
            raise FakeCudaError("invalid device context - no currently active context?")

    class PrimaryContext:
        def push(self):
            drv.context_depth += 1

    class Context:
        @staticmethod
        def get_device():
            require_context()
            return Device()

        @staticmethod
        def pop():
            assert drv.context_depth > 0, "pop without push"
            drv.context_depth -= 1

    class Function:
        def __init__(self, name):
            self.name = name
            self.max_dynamic = smem_default - static_smem
            if with_set_attribute:
                self.set_attribute = self._set_attribute

        def prepare(self, fmt):
            self.fmt = fmt
            return self

        def get_attribute(self, attr):
            return {"static": static_smem, "max_dynamic": self.max_dynamic}[attr]

        def _set_attribute(self, attr, value):
            assert attr == "max_dynamic"
            if value + static_smem > smem_optin:
                raise FakeCudaError("CUDA_ERROR_INVALID_VALUE")
            self.max_dynamic = value

        def prepared_async_call(self, grid, block, stream, *args, shared_size=0):
            require_context()
            values = struct.unpack(self.fmt, struct.pack(self.fmt, *args))  # what the kernel receives
            if shared_size > self.max_dynamic:
                raise FakeCudaError(f"{self.name}: {shared_size} bytes of dynamic shared memory")
            grid = (*grid, 1, 1)[:3]
            block = (*block, 1, 1)[:3]
            assert grid[2] == 1 and block[2] == 1
            cfg = (grid[0], grid[1], block[0], block[1], shared_size)
            drv.launches.append((self.name, cfg))
            if self.name.startswith("bagcams_partial_"):
                m = re.fullmatch(r"bagcams_partial_(\w+?)_(f32|f16)(_gmem)?", self.name)
                rc = lib.emu_partial(m.group(1).encode(), m.group(2) == "f16", m.group(3) is None, *cfg, *values)
            else:
                rc = getattr(lib, "emu_" + self.name.removeprefix("bagcams_"))(*cfg, *values)
            if rc != 0:
                raise FakeCudaError(f"{self.name}: launch configuration rejected ({rc})")

    known = {f"bagcams_partial_{m}_{t}{v}" for m in METHODS for t in ("f32", "f16") for v in ("", "_gmem")}
    known |= {"bagcams_reduce_partials", "bagcams_minmax", "bagcams_normalize"}

    class Module:
        def get_function(self, name):
            if name not in known:
                raise FakeCudaError(f"CUDA_ERROR_NOT_FOUND: {name}")
            return Function(name)

    def memcpy_htod(dst, src):
        src = np.ascontiguousarray(src)
        ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)

    def memcpy_dtoh(dst, src):
        ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)

    class Event:
        def __init__(self, flags=0):
            self.t = None

        def record(self, stream=None):
            self.t = time.perf_counter()
            return self

        def synchronize(self):
            return self

        def time_since(self, other):
            return max((self.t - other.t) * 1e3, 1e-6)

    def to_device(array):
        alloc = DeviceAllocation(array.nbytes)
        memcpy_htod(alloc, array)
        return alloc

    Device.compute_capability = lambda self: (9, 0)
    drv.Event = Event
    drv.to_device = to_device
    drv.mem_get_info = lambda: (1 << 30, 1 << 31)
    drv.memset_d8 = lambda dst, value, n: ctypes.memset(int(dst), value, n)
    drv.memcpy_dtod_async = lambda dst, src, n, stream=None: ctypes.memmove(int(dst), int(src), n)
    drv.get_driver_version = lambda: 13000
    drv.get_version = lambda: (13, 0, 0)
    drv.init = lambda flags=0: None
    drv.Device = Device
    drv.Context = Context
    drv.Stream = Stream
    drv.mem_alloc = DeviceAllocation
    drv.memcpy_htod = memcpy_htod
    drv.memcpy_dtoh = memcpy_dtoh
    drv.module_from_file = lambda path: Module()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    return pkg, drv


def install_fake(monkeypatch, lib, **kwargs):
    pkg, drv = fake_pycuda(lib, **kwargs)
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return drv


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_launcher_drives_emulated_kernels(monkeypatch, emulator_lib, method, dtype):
    drv = install_fake(monkeypatch, emulator_lib)
    kernel = launcher.AggregationKernel(method, dtype)
    assert kernel.module_origin == "fatbin"
    scale = 1.0 if dtype == "float32" else 512.0
    f, g = make_inputs((3, 37, 7, 9), dtype, scale, seed=12)
    out = kernel.compute(f, g, (61, 45), scale)
    check_against_oracles(out, method, f, g, (61, 45), scale)
    names = [name for name, _ in drv.launches]
    suffix = f"{method}_{launcher.DTYPES[dtype]}"
    assert names == [
        f"bagcams_partial_{suffix}",
        "bagcams_reduce_partials",
        "bagcams_minmax",
        "bagcams_normalize",
    ]
    assert [a for a in drv.allocations if not a.freed] == [kernel._workspace]  # only the workspace stays


@pytest.mark.parametrize("method", METHODS)
def test_launcher_falls_back_to_global_memory_path(monkeypatch, emulator_lib, method):
    # a device with 1 KiB of shared memory per block and no opt-in: the staged path cannot run
    drv = install_fake(monkeypatch, emulator_lib, smem_default=1024, smem_optin=1024)
    kernel = launcher.AggregationKernel(method, "float32")
    f, g = make_inputs((2, 11, 12, 13), "float32", seed=13)
    assert not kernel.uses_shared_memory(kernel.plan(2, 11, 12, 13, 20, 30))
    out = kernel.compute(f, g, (20, 30))
    check_against_oracles(out, method, f, g, (20, 30), 1.0)
    assert drv.launches[0][0].endswith("_gmem")


def test_launcher_opts_in_to_large_shared_memory(monkeypatch, emulator_lib):
    drv = install_fake(monkeypatch, emulator_lib, smem_default=1024, smem_optin=64 * 1024)
    kernel = launcher.AggregationKernel("gradcampp", "float32")
    f, g = make_inputs((2, 6, 8, 8), "float32", seed=14)
    plan = kernel.plan(2, 6, 8, 8, 16, 16)
    assert plan.smem_bytes > 1024 and kernel.uses_shared_memory(plan)
    out = kernel.compute(f, g, (16, 16))
    check_against_oracles(out, "gradcampp", f, g, (16, 16), 1.0)
    assert drv.launches[0] == ("bagcams_partial_gradcampp_f32", (plan.groups, 2, 128, 1, plan.smem_bytes))


def test_launcher_without_set_attribute_stays_within_default_shared_memory(monkeypatch, emulator_lib):
    install_fake(monkeypatch, emulator_lib, smem_default=1024, smem_optin=64 * 1024, with_set_attribute=False)
    kernel = launcher.AggregationKernel("bagcams", "float32")
    assert not kernel.uses_shared_memory(kernel.plan(1, 4, 8, 8, 16, 16))


def test_launcher_reuses_its_workspace(monkeypatch, emulator_lib):
    drv = install_fake(monkeypatch, emulator_lib)
    kernel = launcher.AggregationKernel("pcs", "float32")
    big = make_inputs((2, 9, 7, 7), "float32", seed=15)
    small = make_inputs((1, 5, 4, 4), "float32", seed=16)
    kernel.compute(*big, (14, 14))
    workspace = kernel._workspace
    for f, g in (small, big):
        check_against_oracles(kernel.compute(f, g, (14, 14)), "pcs", f, g, (14, 14), 1.0)
    assert kernel._workspace is workspace
    assert [a for a in drv.allocations if not a.freed] == [workspace]


def test_launcher_validates_arguments(monkeypatch, emulator_lib):
    install_fake(monkeypatch, emulator_lib)
    kernel = launcher.AggregationKernel("pcs", "float32")
    f, g = make_inputs((1, 4, 3, 3), "float32")
    with pytest.raises(BagcamsError, match="this kernel takes float16"):
        launcher.AggregationKernel("pcs", "float16").compute(f, g, (5, 5))
    with pytest.raises(BagcamsError, match="C-contiguous"):
        kernel.compute(np.asfortranarray(f), g, (5, 5))
    with pytest.raises(BagcamsError, match="differ"):
        kernel.compute(f, g[:, :2].copy(), (5, 5))
    with pytest.raises(BagcamsError, match="gradient_scale"):
        kernel.compute(f, g, (5, 5), float("nan"))
    with pytest.raises(BagcamsError, match="null device pointer"):
        kernel.launch(0, 1, 1, 1, 4, 3, 3, 5, 5)
    with pytest.raises(BagcamsError, match="K must be > 0"):
        kernel.launch(1, 1, 1, 1, 0, 3, 3, 5, 5)
    with pytest.raises(BagcamsError, match=r"pycuda\.driver\.Stream"):
        kernel.launch(1, 1, 1, 1, 4, 3, 3, 5, 5, 1.0, 12345)
    with pytest.raises(BagcamsError, match="unknown kernel method"):
        launcher.AggregationKernel("cam", "float32")


def test_launcher_wraps_launch_failures(monkeypatch, emulator_lib):
    drv = install_fake(monkeypatch, emulator_lib)
    kernel = launcher.AggregationKernel("bagcams", "float32")

    def broken(*args, **kwargs):
        raise drv.Error("CUDA_ERROR_LAUNCH_FAILED")

    kernel._reduce.prepared_async_call = broken
    f, g = make_inputs((2, 4, 3, 3), "float32")
    with pytest.raises(BagcamsError, match=r"bagcams_reduce_partials failed for N=2 K=4 h=3 w=3 -> 5x5"):
        kernel.compute(f, g, (5, 5))


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernel", ROOT / "benchmarks" / "bench_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_on_the_emulated_device(monkeypatch, emulator_lib, tmp_path):
    install_fake(monkeypatch, emulator_lib)
    bench = _load_bench()
    out = tmp_path / "kernel.json"
    args = ["--batches", "2", "--channels", "9", "--feature-size", "5", "--out-size", "12"]
    args += ["--methods", "gradcampp", "--warmup", "1", "--iters", "2", "--copy-mib", "1"]
    assert bench.main([*args, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "Emulated GPU"
    rows = result["results"]
    expected = [("gradcampp", "float32", 2), ("gradcampp", "float16", 2)]
    assert [(r["method"], r["dtype"], r["n"]) for r in rows] == expected
    for row in rows:
        assert row["ms"] > 0 and row["gbps"] > 0
        assert row["max_abs_err"] is not None and row["max_abs_err"] <= TOL_VS_GRADIENT_MAP
        assert row["bytes_moved"] == 2 * row["n"] * 9 * 25 * (4 if row["dtype"] == "float32" else 2) + row["n"] * 576


def test_benchmark_without_pycuda_exits_with_a_message():
    try:
        import pycuda.driver  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("pycuda is installed here")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_kernel.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "needs pycuda" in proc.stderr


# ---------------------------------------------------------------------------------------------
# (a) CPU: the host C API (bagcams_kernels.cu) driving the emulated kernels
# ---------------------------------------------------------------------------------------------

CUDA_ERROR_INVALID_VALUE = 1
KIB = 1024
CAPI_METHODS = {"bagcams": 0, "gradcam": 1, "gradcampp": 2, "pcs": 3}
CAPI_DTYPES = {"float32": 0, "float16": 1}
CAPI_STATIC_SMEM = 64  # cudaFuncGetAttributes(...).sharedSizeBytes reported by the stand-in
LAUNCH = re.compile(r"\b(\w+)\s*<<<(.*?)>>>\s*\(", re.S)


def rewrite_launches(source: str) -> str:
    """``kernel<<<cfg>>>(args)`` -> ``emu_chevron(kernel, EmuLaunchConfig{cfg}, args)``; every
    ``<<<`` must be rewritten, so a new launch cannot silently escape the emulation."""
    out, count = LAUNCH.subn(lambda m: f"emu_chevron({m.group(1)}, EmuLaunchConfig{{{m.group(2)}}}, ", source)
    assert count == source.count("<<<") > 0, f"rewrote {count} of {source.count('<<<')} launches"
    return out


@pytest.fixture(scope="session")
def capi_lib(tmp_path_factory):
    if CXX is None or CUDA_INCLUDE is None or not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file():
        pytest.skip("the emulated C API needs g++ (C++20) and the CUDA headers (cuda_fp16.h, cuda_runtime_api.h)")
    work = tmp_path_factory.mktemp("capi")
    cu = work / "bagcams_kernels_emu.cu"
    cu.write_text(rewrite_launches((SRC / "bagcams_kernels.cu").read_text()))
    so = work / "libbagcams_capi_emu.so"
    cmd = [CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-Wno-unknown-pragmas", "-fPIC", "-shared"]
    cmd += ["-Wl,-Bsymbolic", "-I", str(CUDA_INCLUDE), "-I", str(SRC), f'-DBAGCAMS_CAPI_SOURCE="{cu}"']
    cmd += [str(SRC / "emu" / "emu_capi.cpp"), "-o", str(so)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building the emulated C API failed:\n{proc.stderr[-4000:]}")
    lib = ctypes.CDLL(str(so))
    i, p, sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    lib.bagcams_workspace_size.argtypes = [i] * 6
    lib.bagcams_workspace_size.restype = sz
    lib.bagcams_aggregate.argtypes = [i, i, p, p, p, *[i] * 6, ctypes.c_float, p, sz, p]
    lib.bagcams_aggregate.restype = i
    lib.emu_capi_configure.argtypes = [i, i]
    lib.emu_capi_record.argtypes = [ctypes.POINTER(i), ctypes.POINTER(i), p, p, ctypes.POINTER(sz)]
    lib.emu_capi_record.argtypes += [ctypes.POINTER(i), ctypes.POINTER(i)]
    return lib


def capi_record(lib):
    launches, path, calls, raised = (ctypes.c_int() for _ in range(4))
    dyn = ctypes.c_size_t()
    grid, block = (ctypes.c_uint * 3)(), (ctypes.c_uint * 3)()
    refs = [ctypes.byref(v) for v in (launches, path)] + [grid, block, ctypes.byref(dyn)]
    lib.emu_capi_record(*refs, ctypes.byref(calls), ctypes.byref(raised))
    path_name = {1: "smem", 0: "gmem", -1: None}[path.value]
    return {
        "launches": launches.value,
        "path": path_name,
        "grid": tuple(grid),
        "block": tuple(block),
        "dyn": dyn.value,
        "set_attribute": (calls.value, raised.value),
    }


def capi_aggregate(lib, method, f, g, size, scale=1.0, optin=96 * KIB, workspace_bytes=None, **null):
    """bagcams_aggregate on host buffers (NaN-poisoned output and workspace); returns (status, out, record)."""
    n, k, h, w = f.shape
    out = np.full((n, 1, *size), np.nan, np.float32)
    need = lib.bagcams_workspace_size(n, k, h, w, *size)
    ws = np.full(need // 4 + 64, np.nan, np.float32)  # a little slack: a too-small size is told, not real
    nbytes = need if workspace_bytes is None else workspace_bytes
    ptrs = {"features": f.ctypes.data, "gradients": g.ctypes.data, "out": out.ctypes.data, "workspace": ws.ctypes.data}
    ptrs.update(null)
    lib.emu_capi_configure(optin, CAPI_STATIC_SMEM)
    status = lib.bagcams_aggregate(
        CAPI_METHODS.get(method, method),
        CAPI_DTYPES.get(f.dtype.name, 7),
        ptrs["features"],
        ptrs["gradients"],
        ptrs["out"],
        n,
        k,
        h,
        w,
        *size,
        scale,
        ptrs["workspace"],
        nbytes,
        None,
    )
    return status, out, capi_record(lib)


def expected_partial_launch(method, shape, size, optin):
    """What the C API must launch: the plan of the Python launcher (checked against the C one)."""
    plan = launcher.make_plan(method, *shape, *size)
    if plan.smem_bytes + 256 <= 48 * KIB:  # kStaticSmemBound: no attribute call needed
        path, dyn, set_attribute = "smem", plan.smem_bytes, (0, 0)
    elif plan.smem_bytes + CAPI_STATIC_SMEM <= optin:
        path, dyn, set_attribute = "optin", plan.smem_bytes, (1, optin - CAPI_STATIC_SMEM)
    else:
        path, dyn, set_attribute = "gmem", 0, (0, 0)
    record = {
        "launches": 4,
        "path": "gmem" if path == "gmem" else "smem",
        "grid": (plan.groups, shape[0], 1),
        "block": (launcher.WARPS * 32, 1, 1),
        "dyn": dyn,
        "set_attribute": set_attribute,
    }
    return path, record


def test_capi_workspace_size_matches_python_plan(capi_lib):
    for shape in [(1, 1024, 28, 28, 224, 224), (3, 37, 7, 9, 29, 31), (32, 2048, 7, 7, 224, 224), (5, 3, 1, 1, 1, 1)]:
        assert capi_lib.bagcams_workspace_size(*shape) == launcher.make_plan("pcs", *shape).workspace_bytes
    assert capi_lib.bagcams_workspace_size(0, 1, 1, 1, 1, 1) == 0
    assert capi_lib.bagcams_workspace_size(70000, 1, 1, 1, 1, 1) == 0


@pytest.mark.parametrize(("dtype", "scale"), [("float32", 1.0), ("float32", 37.5), ("float16", 256.0)])
@pytest.mark.parametrize("method", METHODS)
def test_capi_matches_oracle(capi_lib, method, dtype, scale):
    # odd sizes: 3 images, 10 channel groups of 4 (the last one 1 channel), 7x9 -> 47x53 in two
    # output chunks of 1246 and 1245 positions
    shape, size = (3, 37, 7, 9), (47, 53)
    plan = launcher.make_plan(method, *shape, *size)
    assert (plan.groups, plan.channels_per_block, plan.blocks, plan.chunk) == (10, 4, 2, 1246)
    f, g = make_inputs(shape, dtype, scale, seed=21)
    status, out, record = capi_aggregate(capi_lib, method, f, g, size, scale)
    assert status == 0
    path, want = expected_partial_launch(method, shape, size, 96 * KIB)
    assert path == "smem" and record == want
    check_against_oracles(out, method, f, g, size, scale)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("optin", "path"), [(96 * KIB, "optin"), (48 * KIB, "gmem")], ids=["optin", "gmem"])
@pytest.mark.parametrize("method", METHODS)
def test_capi_shared_memory_opt_in_and_fallback(capi_lib, method, optin, path, dtype):
    # 50x52: the stage (52 KiB, GradCAM++ 91 KiB) exceeds the default 48 KiB; it fits a 96 KiB
    # opt-in limit (cudaFuncSetAttribute, then the shared-memory kernel) but not a 48 KiB one (_gmem)
    shape, size = (1, 9, 50, 52), (45, 53)
    scale = 1.0 if dtype == "float32" else 64.0
    f, g = make_inputs(shape, dtype, scale, seed=22)
    status, out, record = capi_aggregate(capi_lib, method, f, g, size, scale, optin=optin)
    assert status == 0
    assert expected_partial_launch(method, shape, size, optin) == (path, record)
    check_against_oracles(out, method, f, g, size, scale)


def test_capi_rejects_bad_arguments(capi_lib):
    f, g = make_inputs((2, 5, 4, 3), "float32", seed=23)
    need = capi_lib.bagcams_workspace_size(2, 5, 4, 3, 6, 5)
    bad = [
        {"workspace_bytes": need - 1},
        {"workspace_bytes": 0},
        {"features": None},
        {"gradients": None},
        {"out": None},
        {"workspace": None},
        {"scale": 0.0},
        {"scale": -2.0},
        {"scale": float("inf")},
        {"scale": float("nan")},
        {"method": 7},
    ]
    for kwargs in bad:
        status, out, record = capi_aggregate(capi_lib, kwargs.pop("method", "pcs"), f, g, (6, 5), **kwargs)
        assert status == CUDA_ERROR_INVALID_VALUE, kwargs
        assert record["launches"] == 0 and np.isnan(out).all(), kwargs  # nothing enqueued
    status, out, _ = capi_aggregate(capi_lib, "pcs", f.astype(np.float64), g.astype(np.float64), (6, 5))
    assert status == CUDA_ERROR_INVALID_VALUE  # unknown dtype
    status, out, _ = capi_aggregate(capi_lib, "pcs", f, g, (6, 5), workspace_bytes=need)  # the boundary is fine
    assert status == 0 and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# (b) GPU: the real kernels through PyCUDA
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda_ready():
    try:
        import pycuda.driver as drv
    except Exception as exc:
        pytest.skip(f"pycuda is not usable here ({type(exc).__name__}: {exc})")
    try:
        drv.init()
        count = drv.Device.count()
    except Exception as exc:
        pytest.skip(f"no usable CUDA driver ({exc})")
    if count < 1:
        pytest.skip("no CUDA device")
    return drv


_KERNELS: dict = {}


def gpu_kernel(method, dtype, **kwargs):
    key = (method, dtype, tuple(sorted(kwargs.items())))
    if key not in _KERNELS:
        _KERNELS[key] = launcher.AggregationKernel(method, dtype, **kwargs)
    return _KERNELS[key]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("shape", "size"), [((3, 37, 7, 9), (61, 45)), ((8, 1024, 28, 28), (224, 224))], ids=["odd", "resnet"]
)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("method", METHODS)
def test_gpu_kernel_matches_oracle(cuda_ready, method, dtype, shape, size):
    scale = 1.0 if dtype == "float32" else 1024.0
    f, g = make_inputs(shape, dtype, scale, seed=6)
    out = gpu_kernel(method, dtype).compute(f, g, size, scale)
    check_against_oracles(out, method, f, g, size, scale)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_gpu_gradient_scale(cuda_ready, method):
    f, g = make_inputs((4, 64, 14, 14), "float32", 37.5, seed=7)
    out = gpu_kernel(method, "float32").compute(f, g, (112, 112), 37.5)
    check_against_oracles(out, method, f, g, (112, 112), 37.5)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_gpu_global_memory_fallback(cuda_ready, method):
    # 200 x 200 positions: the staged channels cannot fit any GPU's shared memory.
    kernel = gpu_kernel(method, "float32")
    plan = kernel.plan(2, 10, 200, 200, 256, 256)
    assert not kernel.uses_shared_memory(plan)
    f, g = make_inputs((2, 10, 200, 200), "float32", seed=8)
    out = kernel.compute(f, g, (256, 256))
    check_against_oracles(out, method, f, g, (256, 256), 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("method", METHODS)
def test_gpu_constant_and_non_finite_maps_are_zero(cuda_ready, method):
    f, g = make_inputs((3, 6, 5, 5), "float32", seed=9)
    f[0] = 0.0
    f[1, 2, 3, 1] = np.nan
    out = gpu_kernel(method, "float32").compute(f, g, (9, 8))
    assert np.all(out[:2] == 0.0)
    assert np.abs(out[2] - oracle64(method, f, g, (9, 8))[2]).max() <= TOL["float32"]


@pytest.mark.gpu
def test_gpu_results_are_deterministic(cuda_ready):
    f, g = make_inputs((8, 1024, 28, 28), "float16", 1024.0, seed=10)
    kernel = gpu_kernel("bagcams", "float16")
    first = kernel.compute(f, g, (224, 224), 1024.0)
    for _ in range(3):
        assert np.array_equal(kernel.compute(f, g, (224, 224), 1024.0), first)


@pytest.mark.gpu
def test_gpu_runtime_compiled_source_matches_fatbin(cuda_ready):
    if NVCC is None:
        pytest.skip("run-time compilation needs nvcc")
    f, g = make_inputs((2, 40, 7, 7), "float32", seed=11)
    fat = gpu_kernel("gradcampp", "float32")
    src = gpu_kernel("gradcampp", "float32", force_source=True)
    assert src.module_origin == "source"
    np.testing.assert_array_equal(src.compute(f, g, (30, 30)), fat.compute(f, g, (30, 30)))


@pytest.mark.gpu
def test_gpu_launch_validates_arguments(cuda_ready):
    kernel = gpu_kernel("pcs", "float32")
    f, g = make_inputs((1, 4, 3, 3), "float32")
    with pytest.raises(BagcamsError, match="float16"):
        gpu_kernel("pcs", "float16").compute(f, g, (5, 5))
    with pytest.raises(BagcamsError, match="C-contiguous"):
        kernel.compute(np.asfortranarray(f), g, (5, 5))
    with pytest.raises(BagcamsError, match="gradient_scale"):
        kernel.compute(f, g, (5, 5), 0.0)
    with pytest.raises(BagcamsError, match="null device pointer"):
        kernel.launch(0, 1, 1, 1, 4, 3, 3, 5, 5)
    with pytest.raises(BagcamsError, match="must be > 0"):
        kernel.launch(1, 1, 1, 1, 0, 3, 3, 5, 5)
