"""Our TensorRT and PyCUDA calls exist in the releases we support, checked without a GPU.

``tools/check_gpu_apis.py`` imports each library's real Python bindings (their native libraries
replaced by empty stand-ins) and ``tools/api_surface.py`` checks every attribute and call our GPU
modules make against them. The checker itself is tested here on a small fake library so that it is
known to catch what it claims to catch.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.runtime.tensorrt_build import MIN_TENSORRT, tensorrt_release

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import api_surface  # noqa: E402
import check_gpu_apis  # noqa: E402


def _fake_library() -> types.ModuleType:
    lib = types.ModuleType("fakelib")
    code = """
import enum

class Tensor:
    pass

class Network:
    def add_input(self, name: str, dtype: int, shape: tuple) -> "Tensor": ...

class Builder:
    def __init__(self, logger): ...
    def create_network(self, flags: int = 0) -> "Network": ...

class Event:
    def record(self, stream=None) -> None: ...

def launch(func, grid, block, *args, shared_size: int = 0) -> None: ...

class Mode(enum.Enum):
    INPUT = 0
"""
    exec(code, lib.__dict__)
    return lib


SOURCE = textwrap.dedent("""
    def build(lib):
        b = lib.Builder(1)
        n = b.create_network(0)
        n.add_input("x", 1, (1,))
        n.add_inptu("x")
        b.create_network(flags=1, extra=2)
        lib.Builder()
        lib.Mode.OUTPUT
        probe = getattr(n, "newer_api", None)
        m = lib.Mode.INPUT
        return n, probe, m

    class Holder:
        def make(self, lib):
            self.net = lib.Builder(0).create_network()

        def use(self):
            net = self.net
            net.add_input("y", 2, (2,), "too many")

        def _pair(self, lib, fast):
            if fast:
                return lib.Builder(0), "fast"
            return lib.Builder(1).create_network(), "slow"

        def more(self, lib, args):
            thing, how = self._pair(lib, True)
            thing.create_network()
            events = [lib.Event() for _ in range(3)]
            events[0].record(None)
            events[1].recrd()
            for ev, n in [(lib.Event(), 1), (lib.Event(), 2)]:
                ev.record(n, 2)
            lib.launch(1, 2, 3, *args, shared_size=4)
            lib.launch(1, 2, *args, shared=4)
""")


def test_checker_catches_wrong_names_and_call_shapes_and_types_through_assignments():
    lib = _fake_library()
    found = api_surface.SurfaceChecker(lib, {"lib": lib}, "src.py").check(SOURCE)
    bad = {(f.line, f.level) for f in found if f.level != "ok"}
    assert bad == {(6, "error"), (7, "error"), (8, "error"), (9, "error"), (10, "optional-missing"), (20, "error"),
                   (29, "error"), (32, "error"), (34, "error"), (36, "error")}  # fmt: skip
    ok = {f.use for f in found if f.level == "ok"}
    assert 'n.add_input("x", 1, (1,))'.replace('"', "'") in ok  # typed through create_network's return
    assert "lib.Mode.INPUT" in ok
    messages = " ".join(f.message for f in found if f.level == "error")
    assert "'add_inptu'" in messages and "'OUTPUT'" in messages and "'recrd'" in messages
    # line 29: `thing` is a Builder or a Network (two return paths); a Network has no create_network
    assert any(f.line == 29 and "Network has no attribute 'create_network'" in f.message for f in found)
    assert any(f.line == 29 and f.level == "ok" and "Builder.create_network" in f.message for f in found)
    assert any(f.line == 31 and f.level == "ok" and "Event.record" in f.message for f in found)


def test_boost_python_docstrings_give_optional_parameters():
    doc = "\nrecord( (Event)arg1 [, (object)stream=None]) -> Event :\n\n    C++ signature :\n        pycuda::event"
    (sig,) = api_surface.signatures_of(types.SimpleNamespace(__doc__=doc), drop_self=True)
    assert [(p.name, p.has_default) for p in sig.params] == [("stream", True)] and sig.returns == "Event"
    assert sig.accepts(0, []) and sig.accepts(1, []) and sig.accepts(0, ["stream"]) and not sig.accepts(2, [])


def test_pybind_docstrings_give_every_overload():
    doc = textwrap.dedent("""\
        set_input_shape(*args, **kwargs)
        Overloaded function.

        1. set_input_shape(self: trt.IExecutionContext, name: str, shape: tuple) -> bool

        2. set_input_shape(self: trt.IExecutionContext, name: str, shape: trt.Dims, strict: bool = True) -> bool
        """)
    sigs = api_surface.signatures_of(types.SimpleNamespace(__doc__=doc), drop_self=True)
    assert [[p.name for p in s.params] for s in sigs] == [["name", "shape"], ["name", "shape", "strict"]]
    assert sigs[1].accepts(2, ["strict"]) and not sigs[0].accepts(3, []) and not sigs[1].accepts(1, [])


def test_tensorrt_release_gate():
    assert tensorrt_release("11.4.0.106") == (11, 4)
    assert tensorrt_release("10.1.0") == MIN_TENSORRT
    for old in ("10.0.1", "8.6.1"):
        with pytest.raises(BagcamsError, match=r"too old.*10\.1 or later"):
            tensorrt_release(old)
    with pytest.raises(BagcamsError, match="cannot read"):
        tensorrt_release("ten")


@pytest.fixture(scope="module")
def bindings_cache(module_tmp) -> Path:
    return module_tmp("trt-bindings")


@pytest.mark.parametrize("version", check_gpu_apis.DEFAULT_TENSORRT)
def test_our_tensorrt_calls_exist_in_the_real_bindings(version, bindings_cache):
    try:
        result = check_gpu_apis.run_tensorrt(version, bindings_cache)
    except check_gpu_apis.Unavailable as exc:
        pytest.skip(f"TensorRT {version} bindings not available here: {exc}")
    assert result["version"] == version
    errors = [f for f in result["findings"] if f["level"] != "ok"]
    assert not errors, errors
    checked = " ".join(f["message"] for f in result["findings"])
    for use in ("Builder.build_serialized_network", "IBuilderConfig.set_timing_cache", "OnnxParser.parse_from_file",
                "Runtime.deserialize_cuda_engine", "IExecutionContext.execute_async_v3",
                "IExecutionContext.set_tensor_address", "ICudaEngine.device_memory_size_v2"):  # fmt: skip
        assert use in checked, f"{use} was not reached by the checker"


def test_our_pycuda_calls_exist_in_pycuda(bindings_cache):
    """Builds PyCUDA from its sdist for this interpreter (about 1.5 min; needs the CUDA headers)."""
    try:
        result = check_gpu_apis.run_pycuda(bindings_cache)
    except check_gpu_apis.Unavailable as exc:
        pytest.skip(f"PyCUDA cannot be built here: {exc}")
    errors = [f for f in result["findings"] if f["level"] != "ok"]
    assert not errors, errors
    checked = " ".join(f"{f['use']} {f['message']}" for f in result["findings"])
    wanted = ("Function.prepare", "Function.prepared_async_call", "Module.get_function", "module_from_file",
              "Event.record", "Event.time_since", "memcpy_htod_async", "Stream.handle", "pagelocked_empty",
              "Device.retain_primary_context", "Context.push", "self._drv.Context.pop()")  # fmt: skip
    for use in wanted:
        assert use in checked, f"{use} was not reached by the checker"


def test_cuda_graph_driver_calls_match_cuda_h(tmp_path):
    """Every ``self._cu.<fn>(...)`` call of runtime/cuda_graph.py (ctypes, so nothing checks it at
    run time) must name a function cuda.h declares, with the same number of arguments, and the capture
    mode constant must have cuda.h's value: a C file making the same calls is compiled against it."""
    import ast
    import shutil
    import subprocess

    from bagcams_deploy.runtime import cuda_graph

    from .test_kernels import CUDA_INCLUDE

    gcc = shutil.which("gcc")
    if gcc is None or CUDA_INCLUDE is None or not (CUDA_INCLUDE / "cuda.h").is_file():
        pytest.skip("needs gcc and the CUDA headers (cuda.h)")
    tree = ast.parse(Path(cuda_graph.__file__).read_text())
    calls = {
        (node.func.attr, len(node.args))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "_cu"
    }
    assert {name for name, _ in calls} >= {"cuStreamBeginCapture_v2", "cuStreamEndCapture", "cuGraphLaunch"}
    body = "".join(f"  (void){name}({', '.join(['0'] * n)});\n" for name, n in sorted(calls))
    mode = cuda_graph.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
    source = tmp_path / "calls.c"
    source.write_text(f'#include <cuda.h>\n_Static_assert(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL == {mode}, "mode");\n'
                      f"void calls(void) {{\n{body}}}\n")  # fmt: skip
    cmd = [gcc, "-std=c11", "-fsyntax-only", "-Werror", "-Wall", "-I", str(CUDA_INCLUDE), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
