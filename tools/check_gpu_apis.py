"""Check our TensorRT and PyCUDA code against the real Python bindings of those libraries, on a machine
without a GPU, TensorRT or a CUDA driver.

Both libraries' Python APIs are native extensions whose names and signatures can be read once they are
imported; what stops the import here is only the native libraries they link (``libnvinfer`` & co.,
GBs on NVIDIA's own index; ``libcuda.so.1``, the GPU driver). Neither is touched until an engine or a
context is made, so we compile empty stand-ins for exactly the entry points each extension links
(read from its own undefined dynamic symbols), load them first, import the bindings, and let
:mod:`api_surface` check every attribute and call our GPU modules make. Nothing here can build or run
an engine or a kernel; it proves that the names, enum members and call shapes exist in that release.

- TensorRT: the bindings wheels (``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings``, ~1.3 MB)
  come from PyPI; ``runtime/tensorrt_build.py`` and ``runtime/tensorrt_backend.py`` are checked.
- PyCUDA: built from its sdist for the running interpreter by ``tools/build_pycuda_wheel.sh`` (needs
  the CUDA headers and nvcc, ~1.5 min); ``kernels/cuda_context.py``, ``kernels/launcher.py``, ``kernels/bandwidth.py``,
  ``runtime/environment.py`` and both TensorRT modules are checked.

    python tools/check_gpu_apis.py --report benchmarks/results/gpu_api_check.md
    python tools/check_gpu_apis.py --tensorrt 10.8.0.43 --skip-pycuda

Needs pip (network to PyPI), gcc, nm and readelf. Exit status 1 when any use is wrong, 2 when a
library cannot be had here.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_TENSORRT = ("10.13.3.9", "11.4.0.106")
TENSORRT_FILES = ("bagcams_deploy/runtime/tensorrt_build.py", "bagcams_deploy/runtime/tensorrt_backend.py")
PYCUDA_FILES = (
    "bagcams_deploy/kernels/cuda_context.py",
    "bagcams_deploy/kernels/launcher.py",
    "bagcams_deploy/kernels/bandwidth.py",
    "bagcams_deploy/runtime/environment.py",
    *TENSORRT_FILES,
)
NATIVE = {"tensorrt": ("libnvinfer", "libnvonnxparser"), "pycuda": ("libcuda.so",)}


class Unavailable(RuntimeError):
    """A library or the tools to load it cannot be had on this machine (a skip, not a failure)."""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# -- getting the bindings ----------------------------------------------------------------------------


def bindings_package(version: str) -> str:
    major = int(version.split(".")[0])
    return f"tensorrt-cu{12 if major < 11 else 13}-bindings"


def fetch_tensorrt(version: str, cache: Path) -> Path:
    """Download (once) and unpack the TensorRT bindings wheel for this interpreter; returns its root."""
    root = cache / f"trt-{version}"
    if (root / "tensorrt_bindings" / "__init__.py").is_file():
        return root
    wheels = cache / "wheels"
    spec = f"{bindings_package(version)}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = sorted(wheels.glob(f"{bindings_package(version).replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise Unavailable(f"cannot download {spec}: {_last_line(done.stderr or done.stdout)}")
    with zipfile.ZipFile(found[-1]) as z:
        z.extractall(root)
    return root


def build_pycuda(cache: Path) -> Path:
    """Build (once) PyCUDA for this interpreter and install it into a private folder; returns it."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    site = cache / f"pycuda-{tag}"
    if (site / "pycuda" / "driver.py").is_file():
        return site
    if shutil.which("nvcc") is None and not Path("/usr/local/cuda/bin/nvcc").is_file():
        raise Unavailable("building PyCUDA needs the CUDA toolkit (nvcc and headers)")
    wheels = cache / f"pycuda-wheels-{tag}"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(HERE / "build_pycuda_wheel.sh"), str(wheels)], env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    if done.returncode != 0 or not list(wheels.glob("pycuda-*.whl")):
        raise Unavailable(f"cannot build PyCUDA here: {_last_line(done.stderr or done.stdout)}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(site)]
    subprocess.run([*cmd, *map(str, sorted(wheels.glob("*.whl")))], check=True, capture_output=True)
    return site


def build_stubs(extension: Path, out: Path, prefixes: tuple[str, ...]) -> list[Path]:
    """Empty stand-ins, one per linked library whose soname starts with a prefix, that define every
    C entry point the extension leaves undefined (only resolved at load time; never called)."""
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is needed to build the stand-in libraries")
    dynamic = subprocess.run(["readelf", "-d", str(extension)], capture_output=True, text=True, check=True).stdout
    sonames = [
        line.split("[", 1)[1].rstrip("]").strip()
        for line in dynamic.splitlines()
        if "(NEEDED)" in line and line.split("[", 1)[1].startswith(prefixes)
    ]
    if not sonames:
        raise Unavailable(f"{extension.name} links none of {prefixes}")
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(extension)], capture_output=True, text=True, check=True)
    symbols = []
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1] and not parts[1].startswith(("Py", "_Py", "dl")):
            symbols.append(parts[1])
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stubs.c"
    source.write_text("".join(f"int {s}(void) {{ return 999; }}\n" for s in symbols))
    libs = []
    for soname in sonames:
        lib = out / soname
        cmd = ["gcc", "-shared", "-fPIC", "-o", str(lib), f"-Wl,-soname,{soname}", str(source)]
        subprocess.run(cmd, check=True, capture_output=True)
        libs.append(lib)
    return libs


# -- checking (in a fresh interpreter per library and release) --------------------------------------


def check_one(library: str, root: Path, stubs: list[Path]) -> dict:
    """In this process: load the stand-ins, import the bindings, check our files; returns the report."""
    for lib in stubs:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    sys.path[:0] = [str(root), str(HERE)]
    from api_surface import check_files

    if library == "tensorrt":
        import tensorrt_bindings as trt  # only importable once the stand-ins are loaded

        module, version = trt, trt.__version__
        files = {REPO / f: {"trt": trt, "self._trt": trt} for f in TENSORRT_FILES}
    else:
        import pycuda
        import pycuda.compiler as compiler
        import pycuda.driver as drv

        module, version = drv, pycuda.VERSION_TEXT
        roots = {"drv": drv, "self._drv": drv, "self.drv": drv, "compiler": compiler}
        files = {REPO / f: roots for f in PYCUDA_FILES}
    report = check_files(module, files, version)
    return {"library": library, "version": version, "summary": report.summary(),
            "findings": [f.__dict__ for f in report.findings]}  # fmt: skip


def _run_one(library: str, root: Path, stubs: list[Path]) -> dict:
    cmd = [sys.executable, __file__, "--_one", library, str(root)]
    for s in stubs:
        cmd += ["--_stub", str(s)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"checking {library} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def run_tensorrt(version: str, cache: Path) -> dict:
    root = fetch_tensorrt(version, cache)
    stubs = build_stubs(root / "tensorrt_bindings" / "tensorrt.so", cache / f"stubs-trt-{version}", NATIVE["tensorrt"])
    return _run_one("tensorrt", root, stubs)


def run_pycuda(cache: Path) -> dict:
    site = build_pycuda(cache)
    extension = next(site.glob("pycuda/_driver*.so"))
    return _run_one("pycuda", site, build_stubs(extension, cache / "stubs-pycuda", NATIVE["pycuda"]))


# -- reporting --------------------------------------------------------------------------------------


def markdown(results: list[dict]) -> str:
    lines = ["# GPU library API uses checked against the real bindings", "",
             "Made by `python tools/check_gpu_apis.py --report benchmarks/results/gpu_api_check.md` on a machine",
             "without a GPU: each library's Python bindings are imported (their native libraries replaced by",
             "empty stand-ins) and every attribute and call our GPU modules make of them is checked. It cannot",
             "build or run anything; what it proves is that the names and call shapes exist in that release.",
             ""]  # fmt: skip
    marks = {"ok": "ok", "error": "**ERROR**", "optional-missing": "absent (the code has a fallback)"}
    for r in results:
        lines += [f"## {r['library']} {r['version']}", "", r["summary"], ""]
        lines += ["| where | use | result |", "|---|---|---|"]
        for f in r["findings"]:
            use = f["use"].replace("|", "/")
            lines.append(f"| {f['file']}:{f['line']} | `{use}` | {marks[f['level']]}: {f['message']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensorrt", action="append", metavar="VERSION",
                    help=f"TensorRT release(s) to check (default: {', '.join(DEFAULT_TENSORRT)})")  # fmt: skip
    ap.add_argument("--skip-pycuda", action="store_true", help="do not build and check PyCUDA")
    ap.add_argument("--cache", type=Path, default=None, help="keep wheels and builds here (default: a temp dir)")
    ap.add_argument("--report", type=Path, default=None, help="write a markdown report here")
    ap.add_argument("--_one", nargs=2, metavar=("LIBRARY", "ROOT"), help=argparse.SUPPRESS)
    ap.add_argument("--_stub", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(check_one(args._one[0], Path(args._one[1]), args._stub)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        try:
            results = [run_tensorrt(v, cache) for v in (args.tensorrt or DEFAULT_TENSORRT)]
            if not args.skip_pycuda:
                results.append(run_pycuda(cache))
        except Unavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    failed = False
    for r in results:
        print(r["summary"])
        for f in r["findings"]:
            if f["level"] != "ok":
                print(f"  {f['level']}: {f['file']}:{f['line']} {f['use']}: {f['message']}")
            failed |= f["level"] == "error"
    if args.report:
        args.report.write_text(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
