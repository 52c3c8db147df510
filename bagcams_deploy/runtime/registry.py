"""Backend names -> backends. GPU and OpenVINO backends are imported lazily, only when asked for."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BagcamsError
from .base import Backend

if TYPE_CHECKING:  # graph backends must not pull torch into a deployment process
    import torch

    from ..export.contract import GraphInfo
    from ..models.wsol import WSOLModel

# name -> (module, class, what it runs on)
GRAPH_BACKENDS: dict[str, tuple[str, str, str]] = {
    "ort-cpu": ("ort_backend", "OrtBackend", "ONNX Runtime, CPU"),
    "ort-cuda": ("ort_backend", "OrtBackend", "ONNX Runtime, CUDA (onnxruntime-gpu)"),
    "ort-trt": ("ort_backend", "OrtBackend", "ONNX Runtime, TensorRT EP (onnxruntime-gpu)"),
    "ov-cpu": ("openvino_backend", "OpenVINOBackend", "OpenVINO runtime, CPU"),
    "tensorrt": ("tensorrt_backend", "TensorRTBackend", "TensorRT engine + CUDA aggregation kernel"),
    "tensorrt-cam": ("tensorrt_backend", "TensorRTBackend", "TensorRT engine, in-graph cam output"),
    "tensorrt-cudagraph": ("tensorrt_backend", "TensorRTBackend", "TensorRT engine + kernel, replayed as a CUDA graph"),
}
MODEL_BACKENDS: dict[str, str] = {
    "torch-reference": "PyTorch autograd reference (published semantics)",
    "torch-analytic": "the analytic graph as a PyTorch module",
    "torch-analytic-cudagraph": "the analytic graph on CUDA, captured once as a CUDA graph",
}
ALL_BACKENDS = tuple(MODEL_BACKENDS) + tuple(GRAPH_BACKENDS)
PLAN_SUFFIXES = (".plan", ".engine")  # TensorRT plans; everything else a graph backend opens is ONNX


def check_model_kind(name: str, path: str | Path) -> None:
    """TensorRT backends run plans, the others ONNX graphs: say so before anything else fails."""
    path = str(path)
    is_plan = path.lower().endswith(PLAN_SUFFIXES)
    if name.startswith("tensorrt") and not is_plan:
        raise BagcamsError(
            f"backend {name} runs a TensorRT plan, not {path}: build one with "
            f"bagcams-deploy build-engine {path} --output model.plan"
        )
    if is_plan and not name.startswith("tensorrt"):
        raise BagcamsError(f"{path} is a TensorRT plan: backend {name} runs the .onnx graph; use a tensorrt backend")


def check_graph_computes(info: GraphInfo, method: str | None, target_layer: str | None, path: object) -> None:
    """Refuse a method or target layer that an exported graph does not compute: both are fixed at
    export, and a map of something else must not come back silently."""
    if method is not None and method != info.method:
        raise BagcamsError(
            f"{path} computes {info.method}, not {method}: export a {method} graph, or pass the checkpoint"
        )
    if target_layer is not None and target_layer != info.target_layer:
        raise BagcamsError(
            f"{path} maps {info.target_layer}, not {target_layer}: export at --target-layer {target_layer}, "
            "or pass the checkpoint"
        )


#: More threads than this many per available CPU only oversubscribe (ONNX Runtime took 19 s to start
#: 256 threads on 2 cores, and did not finish with 4096).
MAX_THREADS_PER_CPU = 4


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _checked_threads(threads: object) -> int | None:
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 0:
        raise BagcamsError(f"threads must be a non-negative integer (0: the runtime's default), got {threads!r}")
    most = MAX_THREADS_PER_CPU * _available_cpus()
    if threads > most:
        raise BagcamsError(f"threads={int(threads)} is more than {most} ({MAX_THREADS_PER_CPU} per CPU available here)")
    return int(threads)


def _graph_backend(
    name: str, path: str, threads: int | None, exact: bool, method: str | None, target_layer: str | None
) -> Backend:
    """A graph or plan backend; a ``method`` or ``target_layer`` the caller names must be the one fixed
    at export (None: whatever the graph computes), as ``open_model`` and the torch backends insist."""
    module_name, cls_name, _ = GRAPH_BACKENDS[name]
    check_model_kind(name, path)
    if method is not None or target_layer is not None:
        from .open import read_model_info

        check_graph_computes(read_model_info(path), method, target_layer, path)
    try:
        module = importlib.import_module(f"{__package__}.{module_name}")
    except ImportError as exc:
        raise BagcamsError(f"backend {name} is not available in this installation ({exc})") from None
    cls: Callable[..., Backend] = getattr(module, cls_name)
    if name.startswith("ort-"):
        return cls(path, kind=name, threads=threads, exact=exact)
    if name.startswith("tensorrt"):
        return cls(path, use_kernel=(name != "tensorrt-cam"), cuda_graph=name.endswith("cudagraph"))
    return cls(path, threads=threads)


def create_backend(
    name: str,
    graph: str | Path | None = None,
    model: WSOLModel | None = None,
    method: str | None = None,
    target_layer: str | None = None,
    threads: int | None = None,
    exact: bool = False,
    device: str | torch.device = "cpu",
) -> Backend:
    """Build backend ``name``. Graph backends need ``graph``; torch backends need ``model`` and take the
    method, target layer and input size from ``graph``'s metadata when one is given.

    Every backend may be shared between threads (those that cannot run calls at once serialise
    them). ``threads`` is the runtime's own for graph backends; for torch backends it is torch's
    process-wide thread count, since torch has no per-model one."""
    threads = _checked_threads(threads)
    if name in GRAPH_BACKENDS:
        if graph is None:
            raise BagcamsError(f"backend {name} needs an exported model (.onnx or .plan)")
        return _graph_backend(name, str(graph), threads, exact, method, target_layer)
    if name in MODEL_BACKENDS:
        if model is None:
            raise BagcamsError(f"backend {name} needs the PyTorch model: pass model= (models.load_model(checkpoint))")
        import torch

        from ..models.wsol import WSOLModel

        if not isinstance(model, WSOLModel):
            raise BagcamsError(f"backend {name} needs a loaded model (models.load_model), got {type(model).__name__}")
        if isinstance(device, torch.device):
            device = str(device)
        try:
            if not isinstance(device, str):
                raise TypeError
            torch.device(device)
        except (RuntimeError, TypeError):
            raise BagcamsError(f"unknown device {device!r}; e.g. cpu, cuda, cuda:1") from None
        size = None
        if graph is not None and str(graph).lower().endswith((".onnx", *PLAN_SUFFIXES)):
            from .open import read_model_info

            info = read_model_info(graph)
            if (model.architecture, model.num_classes) != (info.architecture, info.num_classes):
                raise BagcamsError(
                    f"the model does not match {graph}: it is {model.architecture} with {model.num_classes} "
                    f"classes, the graph {info.architecture} with {info.num_classes}"
                )
            check_graph_computes(info, method, target_layer, graph)
            method, target_layer, size = info.method, info.target_layer, info.input_size
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model thread count
        from .torch_backends import TorchAnalyticBackend, TorchReferenceBackend

        if name == "torch-reference":
            return TorchReferenceBackend(model, method or "bagcams", target_layer, input_size=size, device=device)
        if name == "torch-analytic-cudagraph":
            return TorchAnalyticBackend(model, method or "bagcams", target_layer, input_size=size,
                                        device="cuda" if device == "cpu" else device, cuda_graph=True)  # fmt: skip
        return TorchAnalyticBackend(model, method or "bagcams", target_layer, input_size=size, device=device)
    raise BagcamsError(f"unknown backend {name!r}; valid: {', '.join(ALL_BACKENDS)}")


def default_backend() -> str:
    """The backend for a graph when none is named: ONNX Runtime on CUDA where onnxruntime-gpu sees a
    GPU, else ONNX Runtime on the CPU. OpenVINO (``ov-cpu``) is as fast on the ResNet-50 layer3
    BagCAMs graph (within 1-2% at batch 1 and 8, either ahead; numbers in the README) with maps that
    agree, but peaks about 20% higher in memory at batch 8, so it runs only when named. Both defaults are
    ONNX Runtime, so ``--exact`` (graph optimisations off) applies to them."""
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "ort-cuda"
    except ImportError:
        pass
    return "ort-cpu"


def available_backends(graph: str | Path | None = None) -> list[str]:
    """The backends that can run here (used to pick benchmark/verify defaults): CPU ones always, GPU
    ones when their packages and a device are present."""
    names = ["torch-reference", "torch-analytic", "ort-cpu"]
    if importlib.util.find_spec("openvino") is not None:
        names.append("ov-cpu")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        names += [n for n, p in (("ort-cuda", "CUDAExecutionProvider"), ("ort-trt", "TensorrtExecutionProvider"))
                  if p in providers]  # fmt: skip
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            names.append("torch-analytic-cudagraph")
    except ImportError:
        pass
    if graph is not None and str(graph).endswith((".plan", ".engine")):
        names = [n for n in names if n.startswith("torch")] + ["tensorrt", "tensorrt-cam", "tensorrt-cudagraph"]
    return names


def parse_backends(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BagcamsError(f"no backend named in {text!r}; valid: {', '.join(ALL_BACKENDS)}")
    for n in names:
        if n not in ALL_BACKENDS:
            raise BagcamsError(f"unknown backend {n!r}; valid: {', '.join(ALL_BACKENDS)}")
    return list(dict.fromkeys(names))  # each backend once, in the order given
