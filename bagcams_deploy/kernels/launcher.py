"""PyCUDA launcher of the fused CUDA aggregation kernels (``bagcams_kernels.cuh``).

:class:`AggregationKernel` turns the ``features``/``gradients`` outputs of a TensorRT engine (or any
device buffers ``[N, K, h, w]``, float32 or float16, C-contiguous) into the normalised ``[N, 1, H, W]``
float32 localisation map, in place on the caller's stream::

    kernel = AggregationKernel("bagcams", "float16")
    kernel.launch(features_ptr, gradients_ptr, out_ptr, n, k, h, w, H, W, gradient_scale, stream)

PyCUDA is imported lazily (it is an optional dependency). The prebuilt fatbin shipped next to this
file is loaded first; when it has no image the driver can use (new GPU without a usable PTX, driver
older than the toolkit that built it), the shipped source is compiled at run time with nvcc.

The launch plan below mirrors ``kernels/bagcams_kernels.cu`` (the C API): keep them in sync.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bagcams_deploy.errors import BagcamsError, require
from bagcams_deploy.kernels.cuda_context import PrimaryContext, in_context

KERNEL_DIR = Path(__file__).resolve().parent
FATBIN = KERNEL_DIR / "bagcams_kernels.fatbin"
SOURCE = KERNEL_DIR / "bagcams_kernels.cuh"

METHODS: tuple[str, ...] = ("bagcams", "gradcam", "gradcampp", "pcs")
DTYPES: dict[str, str] = {"float32": "f32", "float16": "f16"}

# Geometry constants of bagcams_kernels.cuh / bagcams_kernels.cu.
WARPS = 4
PARTIAL_THREADS = WARPS * 32
REDUCE_X, REDUCE_Y = 32, 8
OUT_THREADS = 256
TARGET_PARTIAL_BLOCKS = 1024
MAX_PARTIAL_FLOATS = 1 << 24
OUT_PER_BLOCK = 2048
MAX_OUT_BLOCKS = 1024
ALIGN = 256
DEFAULT_SMEM = 48 * 1024
MAX_GRID_Y = 65535
INT_MAX = 2**31 - 1

# Per method: floats staged per element in shared memory, ReLU after the channel sum.
METHOD_TRAITS: dict[str, tuple[int, bool]] = {
    "bagcams": (1, False),
    "gradcam": (1, True),
    "gradcampp": (2, True),
    "pcs": (1, True),
}

_PYCUDA_HINT = "pip install 'bagcams-deploy[gpu]' (pycuda) on a machine with a CUDA GPU"
# PyCUDA ``prepare`` argument types (P pointer, i int, f float) of each entry point in SOURCE, by name
# prefix (the partial kernels are one per method, dtype and memory variant). tests/test_kernels.py
# parses the CUDA signatures and checks these against them.
ARG_TYPES = {
    "bagcams_partial": "PPPiiif",
    "bagcams_reduce_partials": "PPiii",
    "bagcams_minmax": "PPiiiiii",
    "bagcams_normalize": "PPPiiiiii",
}


def _error(message: str) -> BagcamsError:
    return BagcamsError("aggregation kernel: " + message)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(v: int, a: int) -> int:
    return _ceil_div(v, a) * a


@dataclass(frozen=True)
class LaunchPlan:
    """Grid sizes and workspace layout for one shape (pure function of the shape and method)."""

    n: int
    k: int
    h: int
    w: int
    out_h: int
    out_w: int
    groups: int
    channels_per_block: int
    blocks: int
    chunk: int
    partial_offset: int
    raw_offset: int
    stats_offset: int
    workspace_bytes: int
    smem_bytes: int
    relu_after_sum: bool

    @property
    def p(self) -> int:
        return self.h * self.w


def check_dims(n: int, k: int, h: int, w: int, out_h: int, out_w: int) -> None:
    """Raise :class:`BagcamsError` (one line) unless every dimension is a usable positive int."""
    dims = {"N": n, "K": k, "h": h, "w": w, "H": out_h, "W": out_w}
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise _error(f"{name} must be an int, got {type(v).__name__}")
        if v <= 0:
            raise _error(f"{name} must be > 0, got {v}")
    if n > MAX_GRID_Y:
        raise _error(f"N={n} exceeds {MAX_GRID_Y}; split the batch")
    if h * w > INT_MAX or out_h * out_w > INT_MAX:
        raise _error(f"map too large ({h}x{w} -> {out_h}x{out_w})")


def make_plan(method: str, n: int, k: int, h: int, w: int, out_h: int, out_w: int) -> LaunchPlan:
    """The launch plan of ``bagcams_aggregate`` (kernels/bagcams_kernels.cu) for this shape."""
    if method not in METHOD_TRAITS:
        raise BagcamsError(f"unknown kernel method {method!r}; valid: {', '.join(METHODS)}")
    check_dims(n, k, h, w, out_h, out_w)
    n, k, h, w, out_h, out_w = (int(v) for v in (n, k, h, w, out_h, out_w))
    p = h * w
    hw = out_h * out_w
    want = min(_ceil_div(TARGET_PARTIAL_BLOCKS, n), max(1, MAX_PARTIAL_FLOATS // (n * p)))
    cpb = _round_up(_ceil_div(k, want), WARPS)
    groups = _ceil_div(k, cpb)
    blocks = min(_ceil_div(hw, OUT_PER_BLOCK), MAX_OUT_BLOCKS)
    chunk = _ceil_div(hw, blocks)
    partial = n * groups * p * 4
    raw = n * p * 4
    stats = n * blocks * 3 * 4
    raw_off = _round_up(partial, ALIGN)
    stats_off = raw_off + _round_up(raw, ALIGN)
    total = stats_off + _round_up(stats, ALIGN)
    stored, relu_after = METHOD_TRAITS[method]
    return LaunchPlan(
        n=n,
        k=k,
        h=h,
        w=w,
        out_h=out_h,
        out_w=out_w,
        groups=groups,
        channels_per_block=cpb,
        blocks=blocks,
        chunk=chunk,
        partial_offset=0,
        raw_offset=raw_off,
        stats_offset=stats_off,
        workspace_bytes=total,
        smem_bytes=p * (1 + WARPS * stored) * 4,
        relu_after_sum=relu_after,
    )


def _dtype_key(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise _error(f"unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return name


def _ptr(value: Any, what: str) -> int:
    """A raw device address from an int, a DeviceAllocation/GPUArray-like or a torch CUDA tensor."""
    if hasattr(value, "data_ptr"):
        value = value.data_ptr()
    elif hasattr(value, "gpudata"):
        value = value.gpudata
    try:
        addr = int(value)
    except (TypeError, ValueError) as exc:
        raise _error(f"{what} must be a device pointer (int), got {value!r}") from exc
    if addr <= 0:
        raise _error(f"{what} is a null device pointer")
    return addr


class AggregationKernel:
    """One method x input dtype of the fused aggregation, bound to the current CUDA context.

    ``launch`` enqueues the four kernels on ``stream`` (a ``pycuda.driver.Stream``, or ``None`` /
    ``0`` for the legacy default stream) and returns at once. The scratch workspace is allocated
    on first use and grown when a larger shape comes; use one instance per concurrently used
    stream (the workspace is not shared safely between streams running at the same time).
    """

    def __init__(
        self, method: str, dtype: Any = "float32", *, force_source: bool = False, keep_old_workspaces: bool = False
    ) -> None:
        """``keep_old_workspaces``: a grown workspace keeps the old one until :meth:`close`, for callers
        that capture launches into CUDA graphs (a graph keeps the address it captured)."""
        if method not in METHOD_TRAITS:
            raise BagcamsError(f"unknown kernel method {method!r}; valid: {', '.join(METHODS)}")
        self.method = method
        self.dtype = _dtype_key(dtype)
        self._drv = require("pycuda.driver", "the CUDA aggregation kernel", _PYCUDA_HINT)
        self._context = PrimaryContext(self._drv, what="the CUDA aggregation kernel")
        self._workspace = None
        self._workspace_bytes = 0
        self._keep_old = keep_old_workspaces
        self._retired: list = []  # earlier workspaces a captured CUDA graph may still use (freed by close)
        with self._context:
            self._setup(force_source)

    def _setup(self, force_source: bool) -> None:
        """Load the module and query the device (inside the primary context)."""
        self.module, self.module_origin = self._load_module(force_source)
        method = self.method
        suffix = f"{method}_{DTYPES[self.dtype]}"
        self.partial_name = f"bagcams_partial_{suffix}"
        self._partial_smem = self._function(self.partial_name, ARG_TYPES["bagcams_partial"])
        self._partial_gmem = self._function(self.partial_name + "_gmem", ARG_TYPES["bagcams_partial"])
        self._reduce = self._function("bagcams_reduce_partials", ARG_TYPES["bagcams_reduce_partials"])
        self._minmax = self._function("bagcams_minmax", ARG_TYPES["bagcams_minmax"])
        self._normalize = self._function("bagcams_normalize", ARG_TYPES["bagcams_normalize"])
        try:
            dev = self._drv.Context.get_device()
            attr = self._drv.device_attribute
            self.device_name = dev.name()
            self._smem_default = int(dev.get_attribute(attr.MAX_SHARED_MEMORY_PER_BLOCK))
            optin = getattr(attr, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN", None)
            self._smem_optin = int(dev.get_attribute(optin)) if optin is not None else self._smem_default
            self._smem_limit = self._raise_smem_limit()
        except self._drv.Error as exc:
            raise _error(f"cannot query the CUDA device for {self.partial_name}: {exc}") from exc

    def close(self) -> None:
        """Free the workspaces (after the last launch that uses them has completed)."""
        with self._context:
            for buf in [*self._retired, *([self._workspace] if self._workspace is not None else [])]:
                buf.free()
        self._retired, self._workspace, self._workspace_bytes = [], None, 0

    # -- setup ----------------------------------------------------------------------------------

    def _load_module(self, force_source: bool):
        drv = self._drv
        errors = []
        if not force_source and FATBIN.is_file():
            try:
                return drv.module_from_file(str(FATBIN)), "fatbin"
            except drv.Error as exc:  # no image for this GPU, PTX too new for the driver, ...
                errors.append(f"prebuilt fatbin: {exc}")
        elif not force_source:
            errors.append(f"prebuilt fatbin missing ({FATBIN})")
        if not SOURCE.is_file():
            raise BagcamsError(f"CUDA kernel source missing ({SOURCE}); " + "; ".join(errors))
        purpose = "run-time compilation of the CUDA aggregation kernel"
        compiler = require("pycuda.compiler", purpose, _PYCUDA_HINT)
        try:
            module = compiler.SourceModule(
                f'#include "{SOURCE.name}"\n',
                no_extern_c=True,
                include_dirs=[str(KERNEL_DIR)],
                options=["-std=c++17", "-O3"],
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BagcamsError(
                "could not load the CUDA aggregation kernel: " + "; ".join([*errors, f"nvcc: {first}"])
            ) from exc
        return module, "source"

    def _function(self, name: str, arg_types: str):
        try:
            fn = self.module.get_function(name)
        except self._drv.Error as exc:
            origin = self.module_origin
            raise BagcamsError(f"CUDA kernel {name} not found in the {origin} module: {exc}") from exc
        fn.prepare(arg_types)
        return fn

    def _raise_smem_limit(self) -> int:
        """Opt the shared-memory partial kernel into the device's maximum dynamic shared memory."""
        fn = self._partial_smem
        static = int(fn.get_attribute(self._drv.function_attribute.SHARED_SIZE_BYTES))
        attr = getattr(self._drv.function_attribute, "MAX_DYNAMIC_SHARED_SIZE_BYTES", None)
        setter = getattr(fn, "set_attribute", None)
        if attr is not None and setter is not None and self._smem_optin > self._smem_default:
            try:
                setter(attr, self._smem_optin - static)
                return self._smem_optin - static
            except self._drv.Error:
                pass
        return self._smem_default - static

    # -- launching ------------------------------------------------------------------------------

    def plan(self, n: int, k: int, h: int, w: int, out_h: int, out_w: int) -> LaunchPlan:
        return make_plan(self.method, n, k, h, w, out_h, out_w)

    def uses_shared_memory(self, plan: LaunchPlan) -> bool:
        """Whether this shape runs the shared-memory (read-once) partial kernel or the fallback."""
        return plan.smem_bytes <= self._smem_limit

    def _ensure_workspace(self, nbytes: int) -> int:
        if self._workspace is None or self._workspace_bytes < nbytes:
            if self._workspace is not None:
                if self._keep_old:
                    self._retired.append(self._workspace)
                else:
                    self._workspace.free()  # cuMemFree waits for the launches that use it
            try:
                self._workspace = self._drv.mem_alloc(nbytes)
            except self._drv.Error as exc:
                self._workspace = None
                self._workspace_bytes = 0
                raise _error(f"cannot allocate {nbytes} bytes of workspace: {exc}") from exc
            self._workspace_bytes = nbytes
        return int(self._workspace)

    def _stream(self, stream: Any):
        if stream is None or (isinstance(stream, (int, np.integer)) and int(stream) == 0):
            return None
        if isinstance(stream, self._drv.Stream):
            return stream
        raise _error(
            "stream must be a pycuda.driver.Stream or None (PyCUDA cannot launch on a raw cudaStream_t "
            f"handle), got {type(stream).__name__}"
        )

    @in_context("_context")
    def launch(
        self,
        features_ptr: Any,
        gradients_ptr: Any,
        out_ptr: Any,
        n: int,
        k: int,
        h: int,
        w: int,
        out_h: int,
        out_w: int,
        gradient_scale: float = 1.0,
        stream: Any = None,
    ) -> None:
        """Enqueue the map computation on device buffers given as raw device pointers (ints).

        ``features_ptr``/``gradients_ptr``: ``[n, k, h, w]`` C-contiguous arrays of this kernel's
        dtype; ``out_ptr``: ``[n, 1, out_h, out_w]`` float32. Nothing is synchronised. Runs in the
        device's primary context, from any thread.
        """
        plan = self.plan(n, k, h, w, out_h, out_w)
        scale = float(gradient_scale)
        if not math.isfinite(scale) or scale <= 0.0:
            raise _error(f"gradient_scale must be finite and > 0, got {gradient_scale!r}")
        f_ptr = _ptr(features_ptr, "features_ptr")
        g_ptr = _ptr(gradients_ptr, "gradients_ptr")
        o_ptr = _ptr(out_ptr, "out_ptr")
        s = self._stream(stream)
        ws = self._ensure_workspace(plan.workspace_bytes)
        partial = ws + plan.partial_offset
        raw = ws + plan.raw_offset
        stats = ws + plan.stats_offset
        p = plan.p
        n, k, h, w, out_h, out_w = plan.n, plan.k, plan.h, plan.w, plan.out_h, plan.out_w
        smem = self.uses_shared_memory(plan)
        steps = [
            (
                self.partial_name + ("" if smem else "_gmem"),
                self._partial_smem if smem else self._partial_gmem,
                (plan.groups, n, 1),
                (PARTIAL_THREADS, 1, 1),
                (f_ptr, g_ptr, partial, k, p, plan.channels_per_block, np.float32(scale)),
                plan.smem_bytes if smem else 0,
            ),
            (
                "bagcams_reduce_partials",
                self._reduce,
                (_ceil_div(p, REDUCE_X), n, 1),
                (REDUCE_X, REDUCE_Y, 1),
                (partial, raw, plan.groups, p, int(plan.relu_after_sum)),
                0,
            ),
            (
                "bagcams_minmax",
                self._minmax,
                (plan.blocks, n, 1),
                (OUT_THREADS, 1, 1),
                (raw, stats, h, w, out_h, out_w, plan.chunk, plan.blocks),
                0,
            ),
            (
                "bagcams_normalize",
                self._normalize,
                (plan.blocks, n, 1),
                (OUT_THREADS, 1, 1),
                (raw, stats, o_ptr, h, w, out_h, out_w, plan.chunk, plan.blocks),
                0,
            ),
        ]
        for name, fn, grid, block, args, shared in steps:
            try:
                fn.prepared_async_call(grid, block, s, *args, shared_size=shared)
            except self._drv.Error as exc:
                raise BagcamsError(
                    f"CUDA kernel {name} failed for N={n} K={k} h={h} w={w} -> {out_h}x{out_w} ({self.dtype}): {exc}"
                ) from exc

    @in_context("_context")
    def compute(
        self,
        features: np.ndarray,
        gradients: np.ndarray,
        size: tuple[int, int],
        gradient_scale: float = 1.0,
    ) -> np.ndarray:
        """Host convenience (tests, benchmark): copy in, launch, copy the ``[N, 1, H, W]`` map out."""
        for name, arr in (("features", features), ("gradients", gradients)):
            if not isinstance(arr, np.ndarray):
                raise _error(f"{name} must be a numpy array, got {type(arr).__name__}")
            if arr.ndim != 4:
                raise _error(f"{name} must be [N, K, h, w], got shape {arr.shape}")
            if arr.dtype.name != self.dtype:
                raise _error(f"{name} is {arr.dtype.name}, this kernel takes {self.dtype}")
            if not arr.flags.c_contiguous:
                raise _error(f"{name} must be C-contiguous (use np.ascontiguousarray)")
        if features.shape != gradients.shape:
            shapes = f"features {features.shape} and gradients {gradients.shape}"
            raise _error(f"{shapes} differ")
        if len(size) != 2:
            raise _error(f"size must be (H, W), got {size!r}")
        out_h, out_w = (int(v) for v in size)
        n, k, h, w = features.shape
        self.plan(n, k, h, w, out_h, out_w)  # validates before allocating
        drv = self._drv
        out = np.empty((n, 1, out_h, out_w), dtype=np.float32)
        buffers = []
        try:
            for nbytes in (features.nbytes, gradients.nbytes, out.nbytes):
                buffers.append(drv.mem_alloc(nbytes))
            d_f, d_g, d_o = buffers
            drv.memcpy_htod(d_f, features)
            drv.memcpy_htod(d_g, gradients)
            stream = drv.Stream()
            self.launch(int(d_f), int(d_g), int(d_o), n, k, h, w, out_h, out_w, gradient_scale, stream)
            stream.synchronize()
            drv.memcpy_dtoh(out, d_o)
        except drv.Error as exc:
            raise BagcamsError(
                f"CUDA aggregation ({self.method}, {self.dtype}) failed for shape {features.shape} -> "
                f"{out_h}x{out_w}: {exc}"
            ) from exc
        finally:
            for buf in buffers:
                buf.free()
        return out


def source_sha256() -> str:
    """sha256 of the kernel sources as build.sh stamps it (cuh, cu, h concatenated).

    The wheel ships all three beside the fatbin and its stamp; ``BAGCAMS_KERNEL_SRC`` points elsewhere.
    """
    import hashlib

    root = Path(os.environ.get("BAGCAMS_KERNEL_SRC", KERNEL_DIR))
    digest = hashlib.sha256()
    for name in ("bagcams_kernels.cuh", "bagcams_kernels.cu", "bagcams_kernels.h"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()
