"""Check our TensorRT code against the real TensorRT Python bindings of each release we support, on a
machine without a GPU or TensorRT.

The bindings wheel (``tensorrt-cu12-bindings`` / ``tensorrt-cu13-bindings``, ~1.3 MB, on PyPI) holds
the whole Python API as a pybind11 extension; only its native libraries (``libnvinfer`` & co., GBs,
served from NVIDIA's own index) are missing. The extension needs a dozen C entry points from them at
load time and none until a Builder or Runtime is created, so we compile empty stand-ins for those
entry points (the names come from the extension's own undefined dynamic symbols), load them first,
import the bindings, and let :mod:`api_surface` check every TensorRT attribute and call in
``runtime/tensorrt_build.py`` and ``runtime/tensorrt_backend.py``. Nothing here can build or run an
engine; it proves the names, enum members and call shapes exist in that release.

    python tools/check_tensorrt_api.py                       # 10.13.3.9 and 11.4.0.106
    python tools/check_tensorrt_api.py --version 10.8.0.43 --report out.md

Needs ``pip`` (network to PyPI), ``gcc`` and ``nm``. Exit status 1 when any use is wrong.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_VERSIONS = ("10.13.3.9", "11.4.0.106")
CHECKED_FILES = ("bagcams_deploy/runtime/tensorrt_build.py", "bagcams_deploy/runtime/tensorrt_backend.py")
NATIVE_LIBS = ("nvinfer", "nvonnxparser", "nvinfer_plugin")


class Unavailable(RuntimeError):
    """The bindings or the tools to load them cannot be had on this machine (a skip, not a failure)."""


def bindings_package(version: str) -> str:
    major = int(version.split(".")[0])
    return f"tensorrt-cu{12 if major < 11 else 13}-bindings"


def fetch_bindings(version: str, cache: Path) -> Path:
    """Download (once) and unpack the bindings wheel for this interpreter; returns the unpack root."""
    root = cache / f"trt-{version}"
    if (root / "tensorrt_bindings" / "__init__.py").is_file():
        return root
    wheels = cache / "wheels"
    spec = f"{bindings_package(version)}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(wheels), spec]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    found = sorted(wheels.glob(f"{bindings_package(version).replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not found:
        raise Unavailable(f"cannot download {spec}: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    with zipfile.ZipFile(found[-1]) as z:
        z.extractall(root)
    return root


def build_stub_libraries(extension: Path, out: Path) -> list[Path]:
    """Empty stand-ins for the native entry points the extension links against (load-time only)."""
    for tool in ("gcc", "nm", "readelf"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is needed to build the stand-in libraries")
    needed = subprocess.run(["readelf", "-d", str(extension)], capture_output=True, text=True).stdout
    major = next(
        (
            line.split("libnvinfer.so.")[1].rstrip("]").strip()
            for line in needed.splitlines()
            if "libnvinfer.so." in line
        ),
        None,
    )
    if major is None:
        raise Unavailable(f"{extension} does not link libnvinfer.so.N")
    nm = subprocess.run(["nm", "-D", "--undefined-only", str(extension)], capture_output=True, text=True, check=True)
    symbols = []
    for line in nm.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U" and "@" not in parts[1] and not parts[1].startswith(("Py", "_Py", "dl")):
            symbols.append(parts[1])
    out.mkdir(parents=True, exist_ok=True)
    source = out / "stubs.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in symbols))
    libs = []
    for name in NATIVE_LIBS:
        lib = out / f"lib{name}.so.{major}"
        cmd = ["gcc", "-shared", "-fPIC", "-o", str(lib), f"-Wl,-soname,lib{name}.so.{major}", str(source)]
        subprocess.run(cmd, check=True, capture_output=True)
        libs.append(lib)
    return libs


def check_one(root: Path, stubs: list[Path]) -> dict:
    """In this process: load the stand-ins, import the bindings, check our files; returns the report."""
    for lib in stubs:
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    sys.path[:0] = [str(root), str(HERE)]
    import tensorrt_bindings as trt  # only importable once the stand-ins are loaded
    from api_surface import check_files

    files = {REPO / f: {"trt": trt, "self._trt": trt} for f in CHECKED_FILES}
    report = check_files(trt, files, trt.__version__)
    return {
        "version": trt.__version__,
        "summary": report.summary(),
        "findings": [f.__dict__ for f in report.findings],
    }


def run_version(version: str, cache: Path) -> dict:
    """Fetch, stub and check one release in a fresh interpreter (two releases cannot share a process)."""
    root = fetch_bindings(version, cache)
    stubs = build_stub_libraries(root / "tensorrt_bindings" / "tensorrt.so", cache / f"stubs-{version}")
    args = [sys.executable, __file__, "--_one", str(root), *(["--_stub", str(s)] for s in stubs)]
    flat = [a for item in args for a in (item if isinstance(item, list) else [item])]
    done = subprocess.run(flat, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"checking TensorRT {version} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def markdown(results: list[dict]) -> str:
    lines = ["# TensorRT API uses checked against the real bindings", "",
             "Made by `python tools/check_tensorrt_api.py --report benchmarks/results/tensorrt_api_check.md`.",
             "It imports each release's Python bindings (no GPU, no engine) and checks every TensorRT",
             "attribute and call in " + ", ".join(f"`{f}`" for f in CHECKED_FILES) + ".", ""]  # fmt: skip
    for r in results:
        lines += [f"## TensorRT {r['version']}", "", r["summary"], "", "| line | use | result |", "|---|---|---|"]
        for f in r["findings"]:
            mark = {"ok": "ok", "error": "**ERROR**", "optional-missing": "absent (code has a fallback)"}[f["level"]]
            lines.append(f"| {f['file']}:{f['line']} | `{f['use'].replace('|', '/')}` | {mark}: {f['message']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="append", help="TensorRT release(s) to check (default: 10.13.3.9, 11.4.0.106)")
    ap.add_argument("--cache", type=Path, default=None, help="where wheels and stand-ins go (default: a temp dir)")
    ap.add_argument("--report", type=Path, default=None, help="write a markdown report here")
    ap.add_argument("--_one", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_stub", type=Path, action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        print(json.dumps(check_one(args._one, args._stub)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        try:
            results = [run_version(v, cache) for v in (args.version or DEFAULT_VERSIONS)]
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
