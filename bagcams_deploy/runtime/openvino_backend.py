"""``ov-cpu``: the exported ONNX graph run by the OpenVINO runtime on the CPU.

OpenVINO is what the C++ example links (its wheel ships headers, CMake package and libraries), so this
backend is the Python twin of that program: same runtime, same compile settings, comparable numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import OPENVINO_HINT, BagcamsError, require
from ..export.contract import class_names_of, read_graph_info
from .base import Backend, BackendSpec, Timer
from .ort_backend import spec_from_graph

OV_RUNTIME_CACHE_ENTRIES = 512


def compile_config(threads: int | None = None) -> dict[str, Any]:
    """CPU plugin settings shared with the C++ example.

    fp32 is pinned because the CPU plugin defaults to bf16 on CPUs with AMX/AVX512-BF16, which would
    move the maps away from the exported graph's arithmetic; LATENCY keeps one stream per request.
    The runtime cache keeps compiled kernels per input shape. With its default capacity a
    dynamic-size ResNet-18 graph grew by 749 MB over 1500 calls at random sizes; with 512 entries by
    227 MB, levelling off, for 12% more time on that workload and none at a fixed shape
    (``benchmarks/ov_runtime_cache.py``, results in ``benchmarks/results/ov_runtime_cache.md``).
    """
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "CPU_RUNTIME_CACHE_CAPACITY": OV_RUNTIME_CACHE_ENTRIES,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def _contract_name(names: set[str], contract: tuple[str, ...]) -> str:
    for name in contract:
        if name in names:
            return name
    return sorted(names)[0]


class OpenVINOBackend(Backend):
    """An OpenVINO compiled model over an exported graph (dynamic batch, named outputs)."""

    name = "ov-cpu"
    concurrent_infer = False  # one InferRequest, reused by every call

    def __init__(self, path: str, threads: int | None = None, allow_bf16: bool = False) -> None:
        """``allow_bf16`` runs a bf16 graph anyway: only for measuring it (benchmarks/bf16_on_cpu.py)."""
        super().__init__()
        self.path, self.threads = str(path), threads
        self.info = read_graph_info(path)  # checks names and metadata before OpenVINO sees the file
        if self.info.precision == "bf16" and not allow_bf16:
            # OpenVINO runs bf16 convolutions, but its maps miss the reduced-precision bars
            # (benchmarks/bf16_on_cpu.py): refused rather than run silently worse
            raise BagcamsError(
                f"{path} is a bf16 graph, which is for TensorRT on Ampere or newer GPUs (build-engine); on a CPU "
                "its maps miss the reduced-precision bars: export --precision fp16 or fp32 for the CPU"
            )
        self._spec = spec_from_graph(self.info, class_names_of(path))
        self._ov = require("openvino", "the ov-cpu backend", OPENVINO_HINT)
        self.compiled: Any = None
        self.request: Any = None

    @property
    def spec(self) -> BackendSpec:
        return self._spec

    def activate_impl(self) -> None:
        core = self._ov.Core()
        try:
            model = core.read_model(self.path)
            self.compiled = core.compile_model(model, "CPU", compile_config(self.threads))
        except Exception as exc:
            raise BagcamsError(f"OpenVINO cannot load {self.path}: {_reason(exc)}") from None
        self.request = self.compiled.create_infer_request()
        # a port may carry several tensor names; report it under the contract's one
        self.output_names = [_contract_name(o.get_names(), self.info.outputs) for o in self.compiled.outputs]

    def deactivate_impl(self) -> None:
        self.request = None
        self.compiled = None

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        try:
            with Timer() as t:
                self.request.infer({"image": images, "class_id": class_ids})
        except Exception as exc:
            raise BagcamsError(f"{self.name} failed on {self.path}: {_reason(exc)}") from None
        self.last_inference_time = t.seconds
        # copy: the request's output buffers are reused by the next call
        return {n: np.array(self.request.get_tensor(n).data, copy=True) for n in self.output_names}


def _reason(exc: Exception) -> str:
    """OpenVINO's messages open with a source location ("Exception from src/...cpp:117:"): keep the reason."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[-1][:200]
