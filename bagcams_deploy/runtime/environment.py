"""Which backends can run on this machine, and for each one that cannot, what is missing.

Why: on a new deployment machine the first question is what works (is TensorRT new enough, does
PyCUDA see the GPU, will the kernels load prebuilt or need a compiler), and the answer should name the
missing piece instead of failing later inside a benchmark. Nothing here loads a model or a GPU context
beyond querying the device.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass

from ..errors import OPENVINO_HINT, BagcamsError
from .ort_backend import PROVIDERS
from .registry import GRAPH_BACKENDS, MODEL_BACKENDS


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    runs_on: str
    detail: str  # the version that will run, or what is missing


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: tuple[int, int]
    seen_by: str  # "pycuda" or "torch"


def _installed(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _version(module: str) -> str | None:
    if not _installed(module):
        return None
    try:
        m = importlib.import_module(module)
        return str(getattr(m, "__version__", None) or getattr(m, "VERSION_TEXT", "?"))
    except Exception as exc:  # a broken native library: report it rather than crash the report
        return f"broken ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"


def cuda_device() -> CudaDevice | str:
    """The CUDA device our GPU code would run on, as PyCUDA (which our kernels use; the same rule as
    the backends, :func:`bagcams_deploy.kernels.cuda_context.cuda_device`) or torch (device 0) sees
    it, or why there is none."""
    reasons = []
    if _installed("pycuda"):
        from ..kernels.cuda_context import cuda_device as kernel_device

        try:
            dev = kernel_device(importlib.import_module("pycuda.driver"), "pycuda")
            return CudaDevice(dev.name(), tuple(dev.compute_capability()), "pycuda")
        except BagcamsError as exc:  # e.g. "pycuda needs a CUDA GPU; none is visible"
            reasons.append(str(exc))
        except Exception as exc:
            reasons.append(f"pycuda cannot use the CUDA driver ({str(exc).splitlines()[0][:80] if str(exc) else exc})")
    else:
        reasons.append("pycuda not installed")
    if _installed("torch"):
        import torch

        if torch.cuda.is_available():
            return CudaDevice(torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)), "torch")
        reasons.append("torch sees no CUDA device")
    return "; ".join(reasons)


def backend_statuses() -> list[BackendStatus]:
    """One line per registered backend: can it run here, with which version, or what is missing."""
    torch_v, ort_v, ov_v = _version("torch"), _version("onnxruntime"), _version("openvino")
    trt_v, pycuda_v = _version("tensorrt"), _version("pycuda")
    device = cuda_device()
    gpu = None if isinstance(device, str) else device
    providers: list[str] = []
    if ort_v and not ort_v.startswith("broken"):
        providers = list(importlib.import_module("onnxruntime").get_available_providers())
    out = []
    for name, what in MODEL_BACKENDS.items():
        if torch_v is None:
            out.append(BackendStatus(name, False, what, "torch not installed"))
        elif name == "torch-analytic-cudagraph" and (gpu is None or gpu.seen_by != "torch"):
            out.append(BackendStatus(name, False, what, "needs a CUDA build of torch that sees a GPU"))
        else:
            out.append(BackendStatus(name, True, what, f"torch {torch_v}"))
    for name, (_, _, what) in GRAPH_BACKENDS.items():
        missing = []
        if name.startswith("ort-"):
            provider = PROVIDERS[name][0]
            if ort_v is None:
                missing.append("onnxruntime not installed")
            elif provider not in providers:
                missing.append(f"onnxruntime {ort_v} has no {provider} (pip install onnxruntime-gpu)")
            version = f"onnxruntime {ort_v}"
        elif name == "ov-cpu":
            if ov_v is None:
                missing.append(f"openvino not installed ({OPENVINO_HINT})")
            version = f"openvino {ov_v}"
        else:  # tensorrt*
            from .tensorrt_build import tensorrt_release

            if trt_v is None:
                missing.append("tensorrt not installed")
            else:
                try:
                    tensorrt_release(trt_v)
                except BagcamsError as exc:
                    missing.append(str(exc))
            if pycuda_v is None:
                missing.append("pycuda not installed")
            if gpu is None and pycuda_v is not None:
                missing.append(f"no CUDA device ({device})")
            elif gpu is None and "torch sees no CUDA device" in str(device):
                missing.append("no CUDA GPU visible to torch either")
            version = f"tensorrt {trt_v}, pycuda {pycuda_v}"
        out.append(BackendStatus(name, not missing, what, "; ".join(missing) if missing else version))
    return out
