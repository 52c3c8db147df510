"""Open whatever a user passes as ``--model``: an ONNX graph, a TensorRT plan or a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BagcamsError
from ..export.contract import GraphInfo, read_graph_info
from .base import Backend
from .registry import (
    GRAPH_BACKENDS,
    MODEL_BACKENDS,
    PLAN_SUFFIXES,
    check_graph_computes,
    check_model_kind,
    create_backend,
    default_backend,
)

if TYPE_CHECKING:  # a graph backend opens without torch
    import torch

    from ..models.wsol import WSOLModel

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".npz")  # .npz: the demo's packed weights


def read_model_info(path: str | Path) -> GraphInfo:
    """Export metadata of a deployed model: an ONNX graph's own, or a TensorRT plan's record."""
    if str(path).lower().endswith(PLAN_SUFFIXES):
        from .tensorrt_build import graph_info_of_plan

        return graph_info_of_plan(path)
    return read_graph_info(path)


def load_checkpoint_for(checkpoint: str | Path, info: GraphInfo) -> WSOLModel:
    """The checkpoint a deployed model came from, built as the export recorded it (architecture and
    feature-map size, which DA-WSOL checkpoints do not carry), and checked to have its classes."""
    from ..models import load_model

    model = load_model(checkpoint, info.architecture, large_feature_map=info.large_feature_map)
    if model.num_classes != info.num_classes:
        raise BagcamsError(
            f"checkpoint {checkpoint} does not match {info.path}: it has {model.num_classes} classes, the model "
            f"{info.num_classes} classes (not the checkpoint it was exported from)"
        )
    return model


def open_model(
    model: str | Path,
    backend: str | None = None,
    checkpoint: str | Path | None = None,
    method: str | None = None,
    target_layer: str | None = None,
    threads: int | None = None,
    exact: bool = False,
    device: str | torch.device = "cpu",
    large_feature_map: bool | None = None,
    checkpoint_option: str | None = "--checkpoint",
) -> Backend:
    """``.onnx`` -> a graph backend (default: :func:`default_backend`); ``.plan`` -> TensorRT; a
    checkpoint -> the PyTorch reference (or ``torch-analytic``) for ``method`` (default bagcams) at
    ``target_layer``. A graph or plan computes one method at one layer, fixed at export: asking it for
    another is an error rather than a map of something else.

    A torch backend on a graph runs ``checkpoint`` as the graph records it. ``checkpoint_option`` is
    how the caller takes that checkpoint (None: it takes none), so the error for a missing one names
    what this command accepts rather than an option it does not have."""
    from ..models import load_model

    if not isinstance(model, str | os.PathLike):
        raise BagcamsError(f"model must be a path to a .onnx, .plan or checkpoint file, got {model!r}")
    path = Path(model)
    if not path.exists():
        raise BagcamsError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".onnx", *PLAN_SUFFIXES):
        name = backend or ("tensorrt" if suffix != ".onnx" else default_backend())
        if name in GRAPH_BACKENDS:
            check_model_kind(name, path)  # a plan for an ONNX backend (or the reverse) is named first
        info = read_model_info(path)
        check_graph_computes(info, method, target_layer, path)
        recorded = info.large_feature_map
        if large_feature_map is not None and recorded is not None and recorded != large_feature_map:
            size = "large" if recorded else "small"
            raise BagcamsError(f"{path} was exported from a {size}-feature-map model; the option contradicts it")
        torch_model = None
        if name in MODEL_BACKENDS:
            if checkpoint is None:
                raise BagcamsError(_checkpoint_needed(name, path, checkpoint_option))
            torch_model = load_checkpoint_for(checkpoint, info)
        return create_backend(name, graph=path, model=torch_model, threads=threads, exact=exact, device=device)
    if suffix in CHECKPOINT_SUFFIXES or path.name.endswith(".pth.tar"):
        name = backend or "torch-reference"
        if not name.startswith("torch"):
            raise BagcamsError(f"backend {name} runs an exported model; export {path} first (bagcams-deploy export)")
        method = method or "bagcams"
        net = load_model(path, large_feature_map=large_feature_map)
        net.check_layer_for(method, target_layer)
        return create_backend(name, model=net, method=method, target_layer=target_layer, threads=threads,
                              device=device)  # fmt: skip
    raise BagcamsError(
        f"cannot tell what {path} is: expected .onnx, .plan or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
    )


def _checkpoint_needed(backend: str, graph: Path, checkpoint_option: str | None) -> str:
    """Why a torch backend cannot run on ``graph`` alone, and how this caller can give the checkpoint."""
    head = f"backend {backend} runs the PyTorch model, which {graph} does not hold"
    if checkpoint_option is None:
        return f"{head}: pass the checkpoint it was exported from as --model"
    return f"{head}: give the checkpoint it was exported from ({checkpoint_option} CKPT), or pass it as --model"
