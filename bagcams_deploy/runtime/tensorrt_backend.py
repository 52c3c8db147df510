"""``tensorrt`` / ``tensorrt-cam``: a TensorRT engine (name-based I/O, TensorRT 10 and 11 API) on one
CUDA stream, with our aggregation kernel reading the engine's ``features``/``gradients`` buffers in place.

- ``tensorrt``: the engine computes logits, features and analytic gradients; the map is computed by
  :class:`~bagcams_deploy.kernels.AggregationKernel` on the same stream, straight from the engine's
  output buffers (no host round trip). Export with ``--no-cam`` for this backend: an in-graph ``cam``
  would be computed by the engine and then ignored.
- ``tensorrt-cam``: the engine's own in-graph ``cam`` output (needs a graph exported with the map).

Device buffers are allocated once per batch size and reused; host buffers are page-locked so copies
are asynchronous. ``cuda_graph=True`` captures engine + kernel once per batch size and replays them.
The plan's sidecar (``<plan>.json``, see :mod:`.tensorrt_build`) supplies the export metadata and is
checked against the running TensorRT and GPU before the plan is deserialized.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from ..errors import BagcamsError, require
from ..kernels.cuda_context import in_context
from .base import Backend, BackendSpec
from .ort_backend import spec_from_graph
from .tensorrt_build import (
    _PYCUDA_HINT,
    _TRT_HINT,
    check_plan_compatible,
    current_system,
    graph_info_of_plan,
    read_sidecar,
)


@dataclass
class _Buffers:
    """Device (and page-locked host) memory for one batch size."""

    n: int
    device: dict[str, object]
    host: dict[str, np.ndarray]
    kernel_cam: object | None
    context: object  # the TensorRT execution context these buffers are bound to
    graph: object | None = None

    def free(self) -> None:
        if self.graph is not None:
            self.graph.free()
        for buf in self.device.values():
            buf.free()
        if self.kernel_cam is not None:
            self.kernel_cam.free()


class TensorRTBackend(Backend):
    """Runs a ``build-engine`` plan; see the module docstring for the two variants."""

    concurrent_infer = False  # one execution context, stream and set of buffers per shape

    def __init__(self, path: str, use_kernel: bool = True, cuda_graph: bool = False,
                 fetch: tuple[str, ...] | None = None):  # fmt: skip
        super().__init__()
        self.name = "tensorrt" if use_kernel else "tensorrt-cam"
        self.path, self.use_kernel, self.cuda_graph = str(path), use_kernel, cuda_graph
        self.record = read_sidecar(path)
        self.info = graph_info_of_plan(path, self.record)  # what verify/bench read from any graph backend
        spec = spec_from_graph(self.info, tuple(self.record.get("class_names") or ()) or None)
        graph_outputs = self.info.outputs
        if "cam" not in graph_outputs and spec.method != "cam":  # the kernel supplies the map
            spec = dataclasses.replace(spec, outputs=(*graph_outputs, "cam"))
        self._spec = spec
        if use_kernel and self._spec.method == "cam":
            raise BagcamsError(f"{path}: method cam has no gradients for the kernel; use backend tensorrt-cam")
        if not use_kernel and "cam" not in graph_outputs:
            raise BagcamsError(f"{path} was exported with --no-cam: use backend tensorrt (the CUDA kernel map)")
        self.graph_outputs = graph_outputs
        self.fetch = fetch
        self.stage_times: dict[str, float] = {}
        self.gpu_memory_mb: float | None = None

    @property
    def spec(self) -> BackendSpec:
        return self._spec

    @property
    def math_precision(self) -> str:
        """``tf32`` for a float32 graph built with TF32 allowed (build-engine's default; plans recorded
        before ``--no-tf32`` existed were built so too), else the graph's precision."""
        tf32 = self.record.get("tf32", True)
        return "tf32" if tf32 and self.info.precision == "fp32" else self.info.precision

    # -- lifecycle -------------------------------------------------------------------------------

    def activate_impl(self) -> None:
        self._trt = require("tensorrt", f"backend {self.name}", _TRT_HINT)
        self._drv = require("pycuda.driver", f"backend {self.name}", _PYCUDA_HINT)
        system = current_system()
        check_plan_compatible(self.record, system, self.path)
        from ..kernels.cuda_context import PrimaryContext

        # TensorRT's runtime works in the device's primary context; our PyCUDA calls push that same
        # context around every use (activate, infer, close), so any thread may make them.
        self._cuda = PrimaryContext(self._drv, what=f"backend {self.name}")
        with self._cuda:
            self._activate()

    def _activate(self) -> None:
        from ..kernels.launcher import AggregationKernel

        trt, drv = self._trt, self._drv
        self.kernel = None
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.path, "rb") as f:
            self.engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise BagcamsError(f"TensorRT could not deserialize {self.path} (see the messages above)")
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise BagcamsError(f"TensorRT could not create an execution context for {self.path}")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        missing = [n for n in ("image", "class_id") if n not in self.inputs]
        missing += [n for n in self.graph_outputs if n not in self.outputs]
        if missing:
            raise BagcamsError(f"{self.path}: engine lacks tensors {missing} of the bagcams-deploy contract")
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        if self.use_kernel:
            f_dt, g_dt = self.dtypes["features"], self.dtypes["gradients"]
            if f_dt != g_dt:
                raise BagcamsError(f"{self.path}: features are {f_dt} but gradients {g_dt}; the kernel needs one type")
            self.kernel = AggregationKernel(self._spec.method, f_dt.name, keep_old_workspaces=self.cuda_graph)
        self.stream = drv.Stream()
        self._events = [drv.Event() for _ in range(5)]
        self._buffers: dict[int, _Buffers] = {}
        self._last: _Buffers | None = None
        self._profile = self.record["profile"]

    def deactivate_impl(self) -> None:
        # Everything PyCUDA made is freed and dropped inside the pushed context: freed elsewhere (another
        # thread than the one that activated) it would leak silently.
        drv = self._drv
        with self._cuda:
            with contextlib.suppress(drv.Error):  # a sticky error of an earlier launch: free anyway
                self.stream.synchronize()
            for b in self._buffers.values():
                b.free()
            if self.kernel is not None and hasattr(self.kernel, "close"):
                self.kernel.close()
            self._buffers = {}
            self._last = None
            self.context = None
            self.engine = None
            self.kernel = None
            self.stream = None
            self._events = []

    # -- buffers ---------------------------------------------------------------------------------

    def _buffers_for(self, n: int) -> _Buffers:
        if n in self._buffers:
            return self._buffers[n]
        lo, hi = self._profile["min_batch"], self._profile["max_batch"]
        if not lo <= n <= hi:
            raise BagcamsError(
                f"batch of {n} is outside the engine's profile ({lo}..{hi}); rebuild with build-engine "
                f"--min-batch/--max-batch, or use a batch size in range"
            )
        drv = self._drv
        # A CUDA graph fixes the shapes and addresses of the execution context it was captured with:
        # each captured batch size gets a context of its own.
        ctx = self.engine.create_execution_context() if self.cuda_graph and self._buffers else self.context
        if ctx is None:
            raise BagcamsError(f"TensorRT could not create an execution context for {self.path}")
        h, w = self._spec.input_size
        if not ctx.set_input_shape("image", (n, 3, h, w)) or not ctx.set_input_shape("class_id", (n,)):
            raise BagcamsError(f"TensorRT refused input shape [{n}, 3, {h}, {w}] for {self.path}")
        device, host = {}, {}
        try:
            for name in self.inputs + self.outputs:
                shape = tuple(ctx.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BagcamsError(f"TensorRT left {name} with an unresolved shape {shape}")
                host[name] = drv.pagelocked_empty(shape, self.dtypes[name])
                device[name] = drv.mem_alloc(max(1, host[name].nbytes))
            kernel_cam = None
            if self.use_kernel:
                host["cam"] = drv.pagelocked_empty((n, 1, h, w), np.float32)
                kernel_cam = drv.mem_alloc(host["cam"].nbytes)
        except drv.Error as exc:
            for buf in device.values():
                buf.free()
            raise BagcamsError(f"cannot allocate GPU buffers for a batch of {n}: {exc}") from None
        buffers = _Buffers(n, device, host, kernel_cam, ctx)
        self._buffers[n] = buffers
        total = sum(a.nbytes for b in self._buffers.values() for a in b.host.values())
        contexts = len({id(b.context) for b in self._buffers.values()})
        self.gpu_memory_mb = (total + contexts * int(self.engine.device_memory_size_v2)) / 2**20
        return buffers

    # -- inference -------------------------------------------------------------------------------

    def _context_of(self, b: _Buffers):
        """The execution context ``b`` is bound to: its own when graphs are captured, else the one."""
        return b.context if self.cuda_graph else self.context

    def _enqueue(self, b: _Buffers, timed: bool = True) -> None:
        """Engine + kernel on the stream (the part a CUDA graph captures, untimed)."""
        ctx, s, ev = self._context_of(b), self.stream, self._events
        if timed:
            ev[1].record(s)
        if not ctx.execute_async_v3(s.handle):
            raise BagcamsError(f"TensorRT execute_async_v3 failed on {self.path} (see the messages above)")
        if timed:
            ev[2].record(s)
        if self.use_kernel:
            self._launch_kernel(b)
        if timed:
            ev[3].record(s)

    def _launch_kernel(self, b: _Buffers) -> None:
        """The map from the engine's own features/gradients buffers, on the engine's stream."""
        n, k, fh, fw = b.host["features"].shape
        h, w = self._spec.input_size
        self.kernel.launch(int(b.device["features"]), int(b.device["gradients"]), int(b.kernel_cam),
                           n, k, fh, fw, h, w, self._spec.gradient_scale, self.stream)  # fmt: skip

    @in_context("_cuda")
    def kernel_bandwidth(self, iters: int = 50, copy_mib: int = 256) -> dict | None:
        """The kernel alone on the last batch's engine buffers, launched back to back and timed with
        CUDA events, against a device-to-device copy measured now: achieved GB/s (F and g read, the map
        written) and its fraction of the copy's. None for ``tensorrt-cam`` or before the first batch."""
        if not self.use_kernel or self._last is None:
            return None
        from ..kernels.bandwidth import DeviceCopy, aggregation_bytes, time_events

        b, drv = self._last, self._drv
        n, k, fh, fw = b.host["features"].shape
        h, w = self._spec.input_size
        try:
            copy = DeviceCopy(drv, self.stream, copy_mib)
            try:
                reference = copy.measure(5, iters)["gbps_read_plus_write"]
                ms, _ = time_events(drv, self.stream, lambda: self._launch_kernel(b), 5, iters, copy)
            finally:
                copy.free()
        except drv.Error as exc:
            raise BagcamsError(f"kernel bandwidth measurement failed: {exc}") from None
        gbps = aggregation_bytes(n, k, fh, fw, h, w, self.dtypes["features"].itemsize) / (ms * 1e-3) / 1e9
        return {
            "kernel_ms": ms,
            "kernel_gbps": gbps,
            "copy_gbps": reference,
            "kernel_fraction_of_copy": gbps / reference,
        }

    @in_context("_cuda")
    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        drv, s, ev = self._drv, self.stream, self._events
        n = images.shape[0]
        t0 = time.perf_counter()
        b = self._last = self._buffers_for(n)
        ctx = self._context_of(b)
        h, w = self._spec.input_size
        ctx.set_input_shape("image", (n, 3, h, w))
        ctx.set_input_shape("class_id", (n,))
        for name, buf in b.device.items():
            ctx.set_tensor_address(name, int(buf))
        b.host["image"][...] = images
        b.host["class_id"][...] = class_ids.astype(self.dtypes["class_id"])
        try:
            ev[0].record(s)
            drv.memcpy_htod_async(b.device["image"], b.host["image"], s)
            drv.memcpy_htod_async(b.device["class_id"], b.host["class_id"], s)
            if self.cuda_graph:
                if b.graph is None:
                    self._enqueue(b)  # first run: TensorRT finishes deferred setup outside the capture
                    from .cuda_graph import CudaGraph

                    graph = CudaGraph()
                    graph.capture(s.handle, lambda: self._enqueue(b, timed=False))
                    b.graph = graph
                ev[1].record(s)
                b.graph.launch(s.handle)
                ev[3].record(s)  # one replay: engine and kernel are not told apart
            else:
                self._enqueue(b)
            wanted = self.fetch or (*self.graph_outputs, "cam")
            for name in dict.fromkeys(wanted):
                if name == "cam" and self.use_kernel:
                    drv.memcpy_dtoh_async(b.host["cam"], b.kernel_cam, s)
                elif name in b.device:
                    drv.memcpy_dtoh_async(b.host[name], b.device[name], s)
            ev[4].record(s)
            s.synchronize()
        except drv.Error as exc:
            raise BagcamsError(f"{self.name} failed on {self.path}: {exc}") from None
        self.last_inference_time = time.perf_counter() - t0
        middle = (
            {"graph": ev[3].time_since(ev[1]) / 1e3}
            if self.cuda_graph
            else {"engine": ev[2].time_since(ev[1]) / 1e3, "kernel": ev[3].time_since(ev[2]) / 1e3}
        )
        self.stage_times = {"h2d": ev[1].time_since(ev[0]) / 1e3, **middle, "d2h": ev[4].time_since(ev[3]) / 1e3}
        out = {}
        for name in dict.fromkeys(wanted):
            if name in b.host:
                out[name] = np.array(b.host[name])  # copy: the pinned buffers are reused
        if "class_id_used" in out:
            out["class_id_used"] = out["class_id_used"].astype(np.int64)
        return out
