"""Checks on what a model computed, shared by the reference and every backend (numpy only: graph
backends run without torch)."""

from __future__ import annotations

import numpy as np

from .errors import BagcamsError

FLOAT_OUTPUTS = ("logits", "features", "gradients", "cam")


_WHY = "the model's weights are invalid or overflow float range on these inputs"
# An fp16 graph's half-precision tensors stop at 65504 (on a GPU; ONNX Runtime's CPU provider computes
# its convolutions in float32), where its float32 twin may not overflow at all.
_WHY_HALF = (
    "the fp16 graph passed half precision's range (largest value 65504) on these inputs, or the model's "
    "weights are invalid; export it with --precision fp32 (or bf16 for TensorRT on Ampere or newer)"
)


class NonFiniteOutputError(BagcamsError):
    """NaN or Inf in output ``key`` of backend ``name``; ``indices`` are the affected images' places in
    the batch, so a caller that knows the files can name them (:func:`name_non_finite`)."""

    def __init__(self, name: str, key: str, indices: list[int], why: str = _WHY) -> None:
        super().__init__(f"{name}: {key} is NaN or infinite for image(s) {indices[:8]} of the batch: {why}")
        self.name, self.key, self.indices, self.why = name, key, indices, why


def name_non_finite(exc: NonFiniteOutputError, names: list[str]) -> BagcamsError:
    """The same error naming the files of the batch instead of their places in it."""
    files = ", ".join(str(names[i]) for i in exc.indices[:4] if i < len(names))
    more = f" (+{len(exc.indices) - 4} more)" if len(exc.indices) > 4 else ""
    return BagcamsError(f"{exc.name}: {exc.key} is NaN or infinite for {files}{more}: {exc.why}")


def check_finite_outputs(name: str, outputs: dict, precision: str = "fp32") -> None:
    """NaN or Inf in a model's outputs is an error naming the images, never a NaN score or a zero map;
    ``precision`` is the graph's (an fp16 graph's error says that half precision overflowed)."""
    for key in FLOAT_OUTPUTS:
        v = outputs.get(key)
        if v is None:
            continue
        v = v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)  # torch bf16 too
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            bad = np.nonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1))[0].tolist()
            raise NonFiniteOutputError(name, key, bad, _WHY_HALF if precision == "fp16" else _WHY)


def check_class_id_shape(shape: tuple[int, ...], n: int, who: str = "") -> None:
    """One rule for class ids everywhere (backends, the reference, AnalyticCAM): one per image or one
    for all, in any shape with at most one axis longer than 1, so a label column ``[N, 1]`` works while
    ``[[1, 2], [3, 4]]`` for 4 images, a guess at an order, is refused."""
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if sum(d > 1 for d in shape) > 1 or size not in (1, n):
        prefix = f"{who}: " if who else ""
        raise BagcamsError(f"{prefix}class ids must be one per image ({n}) or one for all, got shape {tuple(shape)}")


def checked_size(size: object, what: str = "size") -> tuple[int, int]:
    """An int (a square, as ``export_onnx`` takes it) or an (H, W) pair of positive integers: the one
    rule for every image size a caller gives (``load_images``, ``--input-size``); anything else is one
    clear error rather than a traceback from deep inside a resize. (``torch.Size`` is a tuple.)"""
    pair = (size, size) if isinstance(size, int | np.integer) and not isinstance(size, bool) else size
    if isinstance(pair, np.ndarray):
        pair = tuple(pair.tolist())
    ok = isinstance(pair, tuple | list) and len(pair) == 2
    if not (ok and all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise BagcamsError(f"{what} must be a positive integer or an (H, W) pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])
