"""The backend interface: one way to run any deployment of a CAM graph.

Shaped after Polygraphy's runners: a backend is a context manager (``activate`` builds sessions and
buffers, ``deactivate`` frees them), ``infer`` checks the inputs once in this base class and calls the
backend's ``infer_impl``, which records its own inference time so benchmarks never time Python glue.
"""

from __future__ import annotations

import hashlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..architectures import MIN_INPUT_SIZE
from ..checks import check_class_id_shape, check_finite_outputs, checked_size
from ..errors import BagcamsError

#: How far beyond real pixels an input value may reach, in whole pixel ranges: ``check_inputs``
#: accepts what ``(p - mean) / std`` gives for some ``p`` in ``[-PIXEL_MARGIN, 1 + PIXEL_MARGIN]``.
PIXEL_MARGIN = 2.0


def input_bounds(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[float, float]:
    """The widest values a backend takes, over the channels: images of real pixels, ``p`` in [0, 1],
    give about [-2.12, 2.64] with ImageNet's mean/std; the bound, about [-10.96, 11.53] there, is wide
    enough for any standard-normal test input (|x| > 10 has probability 1e-23) and still far below
    the 255 of pixels that were never divided by 255, whose maps would come back silently wrong."""
    lo = min((-PIXEL_MARGIN - m) / s for m, s in zip(mean, std, strict=True))
    hi = max((1.0 + PIXEL_MARGIN - m) / s for m, s in zip(mean, std, strict=True))
    return float(np.float32(lo)), float(np.float32(hi))  # as the float32 images hold them


@dataclass(frozen=True)
class BackendSpec:
    """What a backend computes: consumers use it to pre-process and to read outputs."""

    method: str
    target_layer: str
    architecture: str
    num_classes: int
    input_size: tuple[int, int] | None  # None: any size
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    outputs: tuple[str, ...]
    gradient_scale: float = 1.0
    class_names: tuple[str, ...] | None = None
    precision: str = "fp32"  # the graph's (an fp16 graph's non-finite output is named as an overflow)


DEFAULT_INPUT_SIZE = (224, 224)  # what a dynamic-size graph is fed unless told otherwise


def run_input_size(model: object, input_size: int | tuple[int, int] | None, name: str) -> tuple[tuple[int, int], str]:
    """(H, W) to feed ``model`` and where it came from: the one rule of ``bench``, ``localize``,
    ``verify`` and ``evaluate``, so they never disagree on what ``--input-size`` means.

    ``model`` is a :class:`BackendSpec` or a graph's ``GraphInfo`` (anything with ``input_size`` and
    ``architecture``). A fixed-size graph runs only at its own size, so any other ``input_size`` is
    refused (silently resizing would answer a question nobody asked); a dynamic-size graph, or a
    checkpoint's torch backend, takes ``input_size`` (an int is H = W), 224x224 by default, but
    not below the architecture's minimum. ``name`` (the model's path) goes into the messages."""
    asked = None if input_size is None else checked_size(input_size, "--input-size")
    fixed = getattr(model, "input_size", None)
    if fixed is not None:
        if asked is not None and asked != tuple(fixed):
            h, w = fixed
            raise BagcamsError(
                f"{name} takes {h}x{w} images; --input-size is only for graphs exported with --dynamic-size"
            )
        return (int(fixed[0]), int(fixed[1])), "the graph's"
    size, source = (asked, "--input-size") if asked else (DEFAULT_INPUT_SIZE, "default for a dynamic-size graph")
    architecture = getattr(model, "architecture", None)
    least = MIN_INPUT_SIZE.get(architecture, 1)
    if min(size) < least:
        raise BagcamsError(f"--input-size {size[0]}: {architecture} takes inputs of {least}x{least} or more")
    return size, source


class Backend(ABC):
    """Runs a batch of normalised images (+ optional class ids) and returns named numpy outputs."""

    name: str = "backend"
    #: Whether ``infer_impl`` may run in several threads at once. Backends that reuse one request,
    #: execution context or set of buffers per call say False, and ``infer`` serialises their calls:
    #: a server may share any backend between threads and always gets each caller's own result.
    concurrent_infer: bool = True

    def __init__(self) -> None:
        self.active = False
        self.last_inference_time: float | None = None  # seconds, set by infer_impl
        # held by activate/deactivate, and around infer_impl where calls must not overlap
        self._lock = threading.RLock()

    # --- lifecycle ----------------------------------------------------------------------------
    def activate(self) -> None:
        with self._lock:
            if not self.active:
                self.activate_impl()
                self.active = True

    def deactivate(self) -> None:
        with self._lock:
            if self.active:
                self.deactivate_impl()
                self.active = False

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate_impl(self) -> None:  # noqa: B027 - optional hook
        """Allocate sessions/buffers (optional)."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        """Free sessions/buffers (optional)."""

    # --- the contract -------------------------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> BackendSpec: ...

    @property
    def load_notes(self) -> tuple[str, ...]:
        """What loading the model ignored, one line each (e.g. a checkpoint's class names of the wrong
        count), for a caller to show as ``info`` does: only a checkpoint carries such optional metadata,
        so graph and plan backends have none."""
        return ()

    def infer(self, images: np.ndarray, class_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Validate inputs, run, return ``{output name: array}`` (the ONNX contract's names)."""
        images, ids = self.check_inputs(images, class_ids)
        if self.concurrent_infer:
            self.activate()
            outputs = self.infer_impl(images, ids)
        else:
            with self._lock:  # also keeps deactivate() from freeing buffers under a running call
                self.activate()
                outputs = self.infer_impl(images, ids)
        check_finite_outputs(self.name, outputs, self.spec.precision)
        return outputs

    @abstractmethod
    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Run on checked inputs; must set ``self.last_inference_time``."""

    def check_inputs(self, images: np.ndarray, class_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        if hasattr(images, "detach"):  # a torch tensor, possibly requiring grad (numpy has no bfloat16)
            images = images.detach().cpu()
            images = (images.float() if images.is_floating_point() else images).numpy()
        try:
            images = np.asarray(images)
        except ValueError:  # a ragged nested list
            raise BagcamsError(f"{self.name}: images must be an [N, 3, H, W] array, not a ragged list") from None
        if images.dtype.kind != "f":
            raise BagcamsError(
                f"{self.name}: images must be normalised floating point (see preprocess), got {images.dtype}"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise BagcamsError(f"{self.name}: images must be [N, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise BagcamsError(f"{self.name}: empty batch")
        if spec.input_size is not None and tuple(images.shape[2:]) != tuple(spec.input_size):
            h, w = spec.input_size
            raise BagcamsError(
                f"{self.name}: images are {images.shape[2]}x{images.shape[3]} but the model takes {h}x{w}"
            )
        least = MIN_INPUT_SIZE.get(spec.architecture, 1)
        if min(images.shape[2:]) < least:
            raise BagcamsError(
                f"{self.name}: images are {images.shape[2]}x{images.shape[3]}, below {least}x{least}, the "
                f"smallest input {spec.architecture} takes"
            )
        if images.dtype != np.float32:
            images = images.astype(np.float32)
        least_seen, most_seen = float(images.min()), float(images.max())  # NaN propagates through both
        if not (np.isfinite(least_seen) and np.isfinite(most_seen)):
            raise BagcamsError(f"{self.name}: images contain NaN or Inf")
        lo, hi = input_bounds(spec.mean, spec.std)
        if not lo <= least_seen <= most_seen <= hi:
            extreme = f"max {most_seen:.1f}" if most_seen > hi else f"min {least_seen:.1f}"
            raise BagcamsError(
                f"{self.name}: images look unnormalised ({extreme}, outside [{lo:.1f}, {hi:.1f}]): the contract "
                "input is (pixels/255 - mean)/std; see load_images"
            )
        n = images.shape[0]
        ids = np.full((n,), -1, dtype=np.int64) if class_ids is None else self._class_ids(class_ids, n)
        return np.ascontiguousarray(images), np.ascontiguousarray(ids)

    def _class_ids(self, class_ids: object, n: int) -> np.ndarray:
        """One integer id per image (a single id is used for all); negative = the argmax."""
        spec = self.spec
        if hasattr(class_ids, "detach"):
            class_ids = class_ids.detach().cpu()
            if class_ids.is_floating_point():  # numpy has no bfloat16; refused below as floats
                class_ids = class_ids.float()
        try:
            raw = np.asarray(class_ids)
        except ValueError:
            raise BagcamsError(f"{self.name}: class ids must be integers, got {str(class_ids)[:40]}") from None
        if raw.dtype.kind not in "iu":
            raise BagcamsError(f"{self.name}: class ids must be integers, got {raw.dtype} ({str(class_ids)[:40]})")
        if raw.dtype.kind == "u" and raw.size and raw.max() > np.iinfo(np.int64).max:
            raise BagcamsError(f"{self.name}: class id {int(raw.max())} out of range")
        check_class_id_shape(raw.shape, n, self.name)
        ids = raw.astype(np.int64).reshape(-1)
        if ids.size == 1 and n > 1:
            ids = np.repeat(ids, n)
        if (ids >= spec.num_classes).any():
            bad = int(ids[ids >= spec.num_classes][0])
            raise BagcamsError(
                f"class id {bad} out of range: the model has {spec.num_classes} classes (0..{spec.num_classes - 1})"
            )
        # every negative id means the argmax; -1 also survives runtimes that narrow ids to int32
        return np.maximum(ids, -1)


class Timer:
    """Wall-clock timer for ``infer_impl`` bodies: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def score_maps(spec: BackendSpec, outputs: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """The normalised ``[N,1,H,W]`` maps of one ``infer`` result.

    The graph's own ``cam`` output when it has one; for a graph exported with ``--no-cam`` (meant for
    the TensorRT kernel) the map is made on the host from ``features`` and ``gradients`` with the one
    aggregation formula, so every consumer of maps also works on such graphs.
    """
    if "cam" in outputs:
        return outputs["cam"]
    if "features" not in outputs or "gradients" not in outputs:
        raise BagcamsError(f"the {spec.method} graph has no cam output and no gradients to make one from")
    import torch

    from ..methods.aggregation import gradient_map

    maps = gradient_map(spec.method, torch.from_numpy(outputs["features"]), torch.from_numpy(outputs["gradients"]),
                        size, spec.gradient_scale)  # fmt: skip
    return maps.float().numpy()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file read in 1 MB blocks (plans and graphs can be hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
