"""ONNX Runtime backends: ``ort-cpu`` always; ``ort-cuda``/``ort-trt`` with onnxruntime-gpu."""

from __future__ import annotations

import numpy as np

from ..errors import BagcamsError, MissingDependencyError
from ..export.contract import GraphInfo, class_names_of, read_graph_info
from .base import Backend, BackendSpec, Timer

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
    )


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
            self.session = plain_session(self.path, self.threads, self.exact, PROVIDERS[self.name])
        except Exception as exc:
            if self.info.precision == "bf16" and self.name == "ort-cpu":
                raise BagcamsError(
                    f"{self.path} is a bf16 graph and ONNX Runtime's CPU provider has no bfloat16 convolutions: "
                    "run it as a TensorRT engine (build-engine) on an Ampere or newer GPU, or export "
                    "--precision fp16 or fp32 for the CPU"
                ) from None
            raise BagcamsError(f"ONNX Runtime cannot load {self.path}: {str(exc).splitlines()[0][:200]}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        feed = {"image": images, "class_id": class_ids}
        try:
            with Timer() as t:
                values = self.session.run(self.output_names, feed)
        except Exception as exc:
            raise BagcamsError(f"{self.name} failed on {self.path}: {str(exc).splitlines()[0][:200]}") from None
        self.last_inference_time = t.seconds
        return dict(zip(self.output_names, values, strict=True))


def plain_session(path: str, threads: int | None = None, exact: bool = False, providers: list[str] | None = None):
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
