"""PyTorch backends: the autograd reference and the analytic graph as a module (no autograd)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BagcamsError
from ..export.analytic import AnalyticCAM, output_names_for
from ..models.wsol import WSOLModel
from ..preprocessing import MEAN, STD
from ..reference.cams import compute_cams, resolve_target
from .base import Backend, BackendSpec, Timer


def torch_device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BagcamsError(f"device {device!r} requested but this torch build sees no CUDA GPU")
    return torch.device(device)


class _TorchBackend(Backend):
    def __init__(
        self,
        model: WSOLModel,
        method: str,
        target_layer: str | None,
        input_size: tuple[int, int] | None = None,
        device: str = "cpu",
    ):
        super().__init__()
        self.model = model  # its training flags stay the caller's: every pass runs in eval mode
        self.device = torch_device(device)
        method, layer = resolve_target(model, method, target_layer)  # no copy of the model just to check
        self._spec = BackendSpec(
            method=method,
            target_layer=layer,
            architecture=model.architecture,
            num_classes=model.num_classes,
            input_size=input_size,
            mean=MEAN,
            std=STD,
            outputs=output_names_for(method),
            class_names=model.class_names,
        )

    @property
    def spec(self) -> BackendSpec:
        return self._spec

    @property
    def load_notes(self) -> tuple[str, ...]:
        """The model's own (:func:`~bagcams_deploy.models.load_model` sets them; a model built in code
        has none), so a checkpoint opened by ``open_model`` reports what its loading ignored."""
        return tuple(getattr(self.model, "load_notes", ()))

    def activate_impl(self) -> None:
        """Autograd runs on the model itself, so it is moved to ``device`` (in place, as ``.to`` does)."""
        self.model.to(self.device)

    @property
    def math_precision(self) -> str:
        """``tf32`` on an Ampere or later GPU while cuDNN may use TF32 (PyTorch's default for
        convolutions, which the published code runs with), else ``fp32``."""
        on_ampere = self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 8
        return "tf32" if on_ampere and torch.backends.cudnn.allow_tf32 else "fp32"

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class TorchReferenceBackend(_TorchBackend):
    """The PyTorch reference (autograd). ``published_autograd`` mirrors the published code's cost."""

    name = "torch-reference"
    concurrent_infer = False  # autograd state lives on the model (compute_cams also locks per model)

    def __init__(self, *args, published_autograd: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.published_autograd = published_autograd

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        with Timer() as t:  # host to host, as every backend: the copies to and from a GPU are timed
            x = torch.from_numpy(images).to(self.device)
            ids = torch.from_numpy(class_ids).to(self.device)
            r = compute_cams(
                self.model,
                x,
                self.spec.method,
                self.spec.target_layer,
                ids,
                published_autograd=self.published_autograd,
                check_finite=False,  # Backend.infer checks every backend's outputs, untimed
            )
            out = {"logits": r.logits, "class_id_used": r.class_ids, "features": r.features, "cam": r.maps}
            if r.gradients is not None:
                out["gradients"] = r.gradients
            # float32 as the contract says for a half or bfloat16 model; a double model (verify's
            # --fp64-reference) keeps its float64, the ground truth it is there for
            half = (torch.float16, torch.bfloat16)
            result = {k: (v.float() if v.dtype in half else v).cpu().numpy() for k, v in out.items()}
            self._sync()
        self.last_inference_time = t.seconds
        return result


class TorchAnalyticBackend(_TorchBackend):
    """The analytic graph run as a PyTorch module: what the ONNX export contains, without ONNX.

    ``cuda_graph=True`` (CUDA only) captures the whole forward once per input shape and replays it:
    the network has no data-dependent control flow and allocates nothing the graph pool cannot hold,
    so a replay is the same computation with one launch instead of hundreds.
    """

    name = "torch-analytic"

    def __init__(self, *args, cuda_graph: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if cuda_graph and self.device.type != "cuda":
            raise BagcamsError("CUDA-graph capture needs --device cuda")
        self.cuda_graph = cuda_graph
        if cuda_graph:
            self.name = "torch-analytic-cudagraph"
            self.concurrent_infer = False  # replays write one set of static buffers
        self._graphs: dict[tuple[int, ...], tuple] = {}
        self.net: AnalyticCAM | None = None
        self._weights_seen: tuple = ()

    def _weights_state(self) -> tuple:
        """Which tensors the model holds, their storage, dtype and in-place versions: ``load_state_dict``
        bumps the versions, assigning a new Parameter changes the identity, ``p.data = ...`` and
        ``model.double()`` / ``.half()`` change the storage and dtype. Not seen: in-place edits through
        ``p.data`` (``.data`` has its own version counter); rebuild with ``deactivate``/``activate``."""
        return tuple(
            (id(t), t._version, t.data_ptr(), t.dtype, t.device)
            for t in (*self.model.parameters(), *self.model.buffers())
        )

    def activate_impl(self) -> None:
        # No super(): the analytic module is a float32 snapshot moved to the device by itself, so the
        # caller's model stays where and as it is.
        self._weights_seen = self._weights_state()
        self.net = AnalyticCAM(self.model, self.spec.method, self.spec.target_layer).to(self.device)

    def deactivate_impl(self) -> None:
        self._graphs.clear()
        self.net = None

    def _current_net(self) -> AnalyticCAM:
        """The analytic module, rebuilt if the model's weights changed since it was built: it folds
        BatchNorm and copies the classifier, so it would otherwise mix new and old weights."""
        if self._weights_state() != self._weights_seen:
            with self._lock:
                if self._weights_state() != self._weights_seen:
                    self._graphs.clear()
                    self.activate_impl()
        net = self.net
        if net is None:
            raise BagcamsError(f"{self.name}: the backend was closed while this call was starting")
        return net

    def _captured(self, shape: tuple[int, ...]) -> tuple:
        """(graph, static image, static ids, static outputs) for one input shape, captured once."""
        if shape not in self._graphs:
            static_x = torch.zeros(shape, device=self.device)
            static_ids = torch.full((shape[0],), -1, dtype=torch.int64, device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(3):  # warm-up outside capture (cuDNN autotuning, allocator)
                    self.net(static_x, static_ids)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                static_out = self.net(static_x, static_ids)
            self._graphs[shape] = (graph, static_x, static_ids, static_out)
        return self._graphs[shape]

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        net = self._current_net()
        if self.cuda_graph:  # captured once per shape, outside the timed region (warm-up covers it)
            graph, static_x, static_ids, static_out = self._captured(tuple(images.shape))
            with Timer() as t:  # host to host, as every backend: the copies to and from the GPU are timed
                static_x.copy_(torch.from_numpy(images))
                static_ids.copy_(torch.from_numpy(class_ids))
                graph.replay()
                result = {k: v.cpu().numpy() for k, v in zip(net.output_names, static_out, strict=True)}
                self._sync()
        else:
            with Timer() as t, torch.no_grad():
                x = torch.from_numpy(images).to(self.device)
                ids = torch.from_numpy(class_ids).to(self.device)
                outputs = net(x, ids)
                result = {k: v.cpu().numpy() for k, v in zip(net.output_names, outputs, strict=True)}
                self._sync()
        self.last_inference_time = t.seconds
        return result
