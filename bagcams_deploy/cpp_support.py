"""Helpers for building the C++ example against the ``openvino`` wheel.

The wheel on PyPI carries OpenVINO's C++ headers, its CMake package and the shared libraries, so a
C++ consumer needs no separate OpenVINO install: point CMake at the wheel's ``cmake`` folder.

    cmake -S examples/cpp -B build \\
        -DCMAKE_PREFIX_PATH="$(python -m bagcams_deploy.cpp_support --cmake-prefix)"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import OPENVINO_HINT, BagcamsError, require

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "cpp"  # in a source checkout only


def example_dir() -> Path:
    """The C++ example's source folder: it is in the repository, not in the installed wheel."""
    if not (EXAMPLE_DIR / "CMakeLists.txt").is_file():
        raise BagcamsError(
            f"the C++ example's sources (examples/cpp) are not installed with the package (looked in {EXAMPLE_DIR}): "
            "they are in bagcams-deploy's source repository"
        )
    return EXAMPLE_DIR


def openvino_cmake_dir() -> Path:
    """The folder holding ``OpenVINOConfig.cmake`` inside the installed openvino wheel."""
    ov = require("openvino", "building the C++ example", OPENVINO_HINT)
    base = Path(ov.__file__).resolve().parent
    for candidate in (base / "cmake", base / "runtime" / "cmake"):
        if (candidate / "OpenVINOConfig.cmake").is_file():
            return candidate
    try:  # newer wheels also say where it is
        from openvino.utils import get_cmake_path

        found = Path(get_cmake_path())
        if (found / "OpenVINOConfig.cmake").is_file():
            return found
    except Exception:
        pass
    raise BagcamsError(f"the openvino wheel at {base} ships no OpenVINOConfig.cmake (a C++-less build?)")


def openvino_lib_dir() -> Path:
    """The folder with ``libopenvino.so*`` and the plugins (for LD_LIBRARY_PATH where rpath is not used)."""
    ov = require("openvino", "running the C++ example", OPENVINO_HINT)
    return Path(ov.__file__).resolve().parent / "libs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bagcams_deploy.cpp_support", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--cmake-prefix", action="store_true", help="print the CMake prefix path (OpenVINO_DIR)")
    group.add_argument("--lib-dir", action="store_true", help="print the folder of the OpenVINO libraries")
    group.add_argument("--example-dir", action="store_true", help="print the C++ example's source folder")
    args = parser.parse_args(argv)
    try:
        if args.cmake_prefix:
            print(openvino_cmake_dir())
        elif args.lib_dir:
            print(openvino_lib_dir())
        else:
            print(example_dir())
    except BagcamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
