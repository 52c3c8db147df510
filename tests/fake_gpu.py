"""Host-memory stand-ins for ``tensorrt``, ``pycuda.driver``, our CUDA kernel and CUDA graphs.

Why: the TensorRT backend's own logic (name-based I/O discovery, per-batch buffers, profile checks,
addresses bound per call, the kernel reading the engine's output buffers, stage timing, CUDA-graph
capture then replay, which outputs are copied back) never runs without a GPU. These fakes keep the
API surface that ``tools/check_gpu_apis.py`` checks against the real bindings, and implement it with
host memory: a "device" allocation is a byte array at a made-up address, the "engine" runs the ONNX
graph the plan stands for in ONNX Runtime, and the "kernel" is the Python aggregation formula. So the
backend is exercised end to end, and its maps can be compared with ONNX Runtime's.
"""

from __future__ import annotations

import itertools
import threading
import types

import numpy as np
import torch

from bagcams_deploy.methods.aggregation import gradient_map
from bagcams_deploy.runtime.ort_backend import plain_session

DEVICE_NAME, COMPUTE_CAPABILITY, TENSORRT_VERSION = "Fake GPU", (9, 0), "10.13.3.9"


class Memory:
    """The fake device's memory: allocations by base address; pointers may point inside one."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self._next = itertools.count(1)

    def alloc(self, nbytes: int) -> int:
        base = next(self._next) << 32
        self.blocks[base] = np.zeros(int(nbytes), np.uint8)
        return base

    def view(self, ptr: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        base = (int(ptr) >> 32) << 32
        if base not in self.blocks:
            raise RuntimeError(f"invalid device pointer {ptr:#x} (freed or never allocated)")
        offset, nbytes = int(ptr) - base, int(np.prod(shape)) * np.dtype(dtype).itemsize
        block = self.blocks[base]
        if offset + nbytes > block.size:
            raise RuntimeError(f"device access past the end of a {block.size}-byte allocation")
        return block[offset : offset + nbytes].view(dtype).reshape(shape)


def make_pycuda(memory: Memory) -> types.ModuleType:
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class Device:
        @staticmethod
        def count() -> int:
            return 1

        def __init__(self, ordinal: int) -> None:
            if ordinal != 0:
                raise Error(f"invalid device ordinal {ordinal}")

        def name(self) -> str:
            return DEVICE_NAME

        def compute_capability(self) -> tuple[int, int]:
            return COMPUTE_CAPABILITY

    stacks = threading.local()  # PyCUDA's context stack is per thread

    def depth() -> int:
        return getattr(stacks, "depth", 0)

    def require_context() -> None:
        """As PyCUDA: allocations, streams, events and copies need a context on *its* stack."""
        if depth() == 0:
            raise Error("explicit_context_dependent failed: invalid device context - no currently active context?")

    class PrimaryContext:
        def push(self) -> None:
            stacks.depth = depth() + 1

    class Context:
        @staticmethod
        def get_device() -> Device:
            if not (drv.context_current or depth()):
                raise Error("no current context")
            return Device(0)

        @staticmethod
        def pop() -> None:
            if depth() == 0:
                raise Error("cannot pop: the context stack is empty")
            stacks.depth = depth() - 1

    Device.retain_primary_context = lambda self: PrimaryContext()

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            require_context()
            self.ptr = memory.alloc(nbytes)

        def __int__(self) -> int:
            return self.ptr

        def free(self) -> None:
            memory.blocks.pop(self.ptr, None)

    class Stream:
        handle = 0x5151

        def __init__(self) -> None:
            require_context()

        def synchronize(self) -> None:
            require_context()

    class Event:
        def __init__(self) -> None:
            require_context()

        def record(self, stream=None):
            require_context()
            self.t = len(drv.log)  # a monotone "clock": operations so far
            return self

        def time_since(self, earlier) -> float:
            return float(self.t - earlier.t)

        def synchronize(self) -> None:
            pass

    def copy(dst: np.ndarray, src: np.ndarray) -> None:
        dst.reshape(-1)[...] = src.reshape(-1).view(dst.dtype)

    def memcpy_htod_async(dest, src: np.ndarray, stream=None) -> None:
        require_context()
        drv.log.append("htod")
        copy(memory.view(int(dest), src.dtype, src.shape), src)

    def memcpy_dtoh_async(dest: np.ndarray, src, stream=None) -> None:
        require_context()
        drv.log.append("dtoh")
        copy(dest, memory.view(int(src), dest.dtype, dest.shape))

    def memcpy_dtod_async(dest, src, nbytes: int, stream=None) -> None:
        drv.log.append("dtod")
        memory.view(int(dest), np.uint8, (nbytes,))[...] = memory.view(int(src), np.uint8, (nbytes,))

    def memset_d8(dest, value: int, count: int) -> None:
        memory.view(int(dest), np.uint8, (count,))[...] = value

    drv.log = []
    drv.context_current = False  # set by the tests that want one
    drv.Context = Context
    drv.mem_get_info = lambda: (8 << 20, 16 << 20)  # (free, total)
    drv.memcpy_dtod_async, drv.memset_d8 = memcpy_dtod_async, memset_d8
    drv.Error, drv.Device, drv.DeviceAllocation, drv.Stream, drv.Event = Error, Device, DeviceAllocation, Stream, Event
    drv.init = lambda flags=0: None
    drv.mem_alloc = DeviceAllocation

    def pagelocked_empty(shape, dtype) -> np.ndarray:
        require_context()
        return np.empty(shape, dtype)

    drv.pagelocked_empty = pagelocked_empty
    drv.context_depth = depth
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    return drv


def make_tensorrt(memory: Memory, drv: types.ModuleType) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TENSORRT_VERSION

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = "input", "output"

    class ExecutionContext:
        def __init__(self, engine: Engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape) -> bool:
            self.shapes[name] = tuple(int(d) for d in shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self.shapes:
                return self.shapes[name]
            feed = {n: np.zeros(self.shapes[n], self.engine.types[n]) for n in self.engine.inputs}
            feed["class_id"] = feed["class_id"] - 1  # argmax ids
            outs = self.engine.session.run(self.engine.outputs, feed)
            return dict(zip(self.engine.outputs, (o.shape for o in outs), strict=True))[name]

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = int(ptr)

        def execute_async_v3(self, stream_handle: int) -> bool:
            drv.log.append("engine")
            e = self.engine
            feed = {n: memory.view(self.addresses[n], e.types[n], self.shapes[n]).copy() for n in e.inputs}
            for name, value in zip(e.outputs, e.session.run(e.outputs, feed), strict=True):
                memory.view(self.addresses[name], e.types[name], value.shape)[...] = value
            return True

    class Engine:
        device_memory_size_v2 = 1 << 20

        def __init__(self, graph: str) -> None:
            self.session = plain_session(graph)
            to_np = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.types = {v.name: to_np[v.type] for v in (*self.session.get_inputs(), *self.session.get_outputs())}
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return [*self.inputs, *self.outputs][i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str):
            return self.types[name]

        def create_execution_context(self) -> ExecutionContext:
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine:
            return Engine(plan.decode())  # a fake plan's bytes are the path of the graph it stands for

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        TF32 = "tf32"

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.graph = flags, None

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            import onnx

            onnx.checker.check_model(path, full_check=True)
            self.network.graph = path
            return True

        def get_error(self, i: int) -> str:
            raise IndexError(i)

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = bytes(blob) + b"+"  # each build adds to it

        def serialize(self) -> bytes:
            return self.blob

    class OptimizationProfile:
        def __init__(self) -> None:
            self.shapes = {}

        def set_shape(self, name: str, lo, opt, hi) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class BuilderConfig:
        def __init__(self) -> None:
            self.flags_cleared, self.profiles, self.pools, self.cache = [], [], {}, None

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.pools[pool] = size

        def clear_flag(self, flag) -> None:
            self.flags_cleared.append(flag)

        def add_optimization_profile(self, profile: OptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache:
            return TimingCache(blob)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            trt.builds.append(self)

        def create_network(self, flags: int = 0) -> Network:
            self.network = Network(flags)
            return self.network

        def create_builder_config(self) -> BuilderConfig:
            self.config = BuilderConfig()
            return self.config

        def create_optimization_profile(self) -> OptimizationProfile:
            return OptimizationProfile()

        def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
            return str(network.graph).encode()  # the fake plan: the graph the fake engine will run

    trt.builds = []
    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.Builder, trt.OnnxParser, trt.NetworkDefinitionCreationFlag = Builder, OnnxParser, NetworkDefinitionCreationFlag
    trt.MemoryPoolType, trt.BuilderFlag = MemoryPoolType, BuilderFlag
    trt.nptype = lambda dtype: dtype
    return trt


def make_kernel_class(memory: Memory, drv: types.ModuleType) -> type:
    class AggregationKernel:
        """The map from device buffers by the Python formula (the real kernel is tested against it)."""

        def __init__(self, method: str, dtype: str = "float32", keep_old_workspaces: bool = False) -> None:
            self.method, self.dtype, self.keep_old_workspaces = method, np.dtype(dtype), keep_old_workspaces

        def launch(self, f_ptr, g_ptr, out_ptr, n, k, h, w, out_h, out_w, gradient_scale=1.0, stream=None) -> None:
            drv.log.append("kernel")
            f = torch.from_numpy(memory.view(f_ptr, self.dtype, (n, k, h, w)).copy())
            g = torch.from_numpy(memory.view(g_ptr, self.dtype, (n, k, h, w)).copy())
            cam = gradient_map(self.method, f, g, (out_h, out_w), gradient_scale)
            memory.view(out_ptr, np.float32, (n, 1, out_h, out_w))[...] = cam.float().numpy()

    return AggregationKernel


class FakeCudaGraph:
    """Capture records the enqueue function without running it (as stream capture does); launch replays."""

    def capture(self, stream_handle: int, enqueue) -> None:
        self.enqueue = enqueue

    def launch(self, stream_handle: int) -> None:
        self.enqueue()

    def free(self) -> None:
        self.enqueue = None
