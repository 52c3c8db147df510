"""ONNX Runtime backends: ``ort-cpu`` always; ``ort-cuda``/``ort-trt`` with onnxruntime-gpu."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BagcamsError, MissingDependencyError
from ..export.contract import GraphInfo, class_names_of, read_graph_info
from .base import Backend, BackendSpec, Timer, file_sha256

PROVIDERS = {
    "ort-cpu": ["CPUExecutionProvider"],
    "ort-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "ort-trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def spec_from_graph(info: GraphInfo, class_names: tuple[str, ...] | None = None) -> BackendSpec:
    return BackendSpec(
        method=info.method,
        target_layer=info.target_layer,
        architecture=info.architecture,
        num_classes=info.num_classes,
        input_size=info.input_size,
        mean=info.mean,
        std=info.std,
        outputs=info.outputs,
        gradient_scale=info.gradient_scale,
        class_names=class_names,
        precision=info.precision,
    )


# The ONNX-TensorRT EP profile: the same batch range as build-engine's default.
ORT_TRT_BATCHES = (1, 8, 32)


def cache_dir() -> Path:
    """Where engines built on behalf of the user are kept (``BAGCAMS_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("BAGCAMS_CACHE_DIR") or Path.home() / ".cache" / "bagcams-deploy")


def ort_trt_options(path: str | Path, info: GraphInfo) -> dict[str, str]:
    """TensorRT EP options: without an engine cache every session rebuilds the engine (minutes), and
    without explicit profile shapes a new batch size rebuilds it again. Precision is the graph's: no
    ``trt_fp16_enable``, which would let TensorRT run the float32 graph's ReLU-mask gain (2^100) in fp16."""
    cache = cache_dir() / "ort-trt" / file_sha256(path)[:16]
    opts = {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
    }
    if info.input_size is not None:  # a dynamic-size graph has no H, W to give; the EP then profiles itself
        hh, ww = info.input_size
        for key, n in zip(("min", "opt", "max"), ORT_TRT_BATCHES, strict=True):
            opts[f"trt_profile_{key}_shapes"] = f"image:{n}x3x{hh}x{ww},class_id:{n}"
    return opts


def available_ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


class OrtBackend(Backend):
    """An ONNX Runtime session over an exported graph.

    ``exact`` turns graph optimisations off: ONNX Runtime's fused, re-laid-out convolutions round
    differently from PyTorch, which flips a few ReLU masks near zero and so moves the gradient at
    those spots. Off, the outputs follow PyTorch's arithmetic more closely, at some speed cost.
    """

    def __init__(self, path: str, kind: str = "ort-cpu", threads: int | None = None, exact: bool = False):
        super().__init__()
        if kind not in PROVIDERS:
            raise BagcamsError(f"unknown ONNX Runtime backend {kind!r}; valid: {', '.join(PROVIDERS)}")
        self.name = kind
        self.path, self.threads, self.exact = str(path), threads, exact
        self.info = read_graph_info(path)
        self._spec = spec_from_graph(self.info, class_names_of(path))
        wanted = PROVIDERS[kind][0]
        if wanted not in available_ort_providers():
            raise MissingDependencyError(
                "onnxruntime-gpu",
                f"backend {kind} ({wanted})",
                "pip install onnxruntime-gpu and use a CUDA GPU",
            )

    @property
    def spec(self) -> BackendSpec:
        return self._spec

    def activate_impl(self) -> None:
        try:
            providers: list = list(PROVIDERS[self.name])
            if self.name == "ort-trt":
                options = ort_trt_options(self.path, self.info)
                Path(options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
                providers[0] = (providers[0], options)
            self.session = plain_session(self.path, self.threads, self.exact, providers)
        except Exception as exc:
            if self.info.precision == "bf16" and self.name == "ort-cpu":
                raise BagcamsError(
                    f"{self.path} is a bf16 graph and ONNX Runtime's CPU provider has no bfloat16 convolutions: "
                    "run it as a TensorRT engine (build-engine) on an Ampere or newer GPU, or export "
                    "--precision fp16 or fp32 for the CPU"
                ) from None
            raise BagcamsError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0][:200]}") from None
        self._check_provider()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _check_provider(self) -> None:
        """onnxruntime-gpu lists its CUDA and TensorRT providers whenever it was built with them, and a
        session whose provider cannot start (no GPU, no cuDNN) falls back to the next one with only a
        log line: refuse that, so an ``ort-cuda`` result never comes from the CPU. Fallback during
        ``run()`` is turned off for the same reason."""
        wanted = PROVIDERS[self.name][0]
        used = list(self.session.get_providers())
        if not used or used[0] != wanted:
            self.session = None
            raise BagcamsError(
                f"{self.name}: ONNX Runtime could not start {wanted} (the session fell back to "
                f"{', '.join(used) or 'no provider'}); check the CUDA/cuDNN"
                f"{'/TensorRT' if self.name == 'ort-trt' else ''} libraries and that a GPU is visible"
            )
        disable = getattr(self.session, "disable_fallback", None)  # onnxruntime's InferenceSession has it
        if disable is not None:
            disable()

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually runs on, in priority order."""
        session = getattr(self, "session", None)
        return list(session.get_providers()) if session is not None else []

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"image": images, "class_id": class_ids}
        session = self.session  # sessions run concurrently; one closed by another thread is an error
        if session is None:
            raise BagcamsError(f"{self.name}: the backend was closed while this call was starting")
        try:
            with Timer() as t:
                values = session.run(self.output_names, feed)
        except Exception as exc:
            raise BagcamsError(f"{self.name} failed on {self.path}: {str(exc).splitlines()[0][:200]}") from None
        self.last_inference_time = t.seconds
        return dict(zip(self.output_names, values, strict=True))


def plain_session(path: str, threads: int | None = None, exact: bool = False, providers: list | None = None):
    """An ONNX Runtime session: explicit threads, optimisation level and providers, nothing global."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if (providers or ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]:
        # The memory pattern pre-plans one block per input shape and keeps it: on the CPU it raised the
        # ResNet-50 layer3 peak at batch 8 from 0.86 to 1.33 GB with no speed gain (measured here).
        opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
