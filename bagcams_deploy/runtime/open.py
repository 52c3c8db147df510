"""Open whatever a user passes as ``--model``: an ONNX graph, a TensorRT plan or a checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..errors import BagcamsError
from ..export.contract import GraphInfo, read_graph_info
from .base import Backend
from .registry import create_backend, default_backend

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin")
PLAN_SUFFIXES = (".plan", ".engine")


def read_model_info(path: str | Path) -> GraphInfo:
    """Export metadata of a deployed model: an ONNX graph's own, or a TensorRT plan's record."""
    if str(path).lower().endswith(PLAN_SUFFIXES):
        from .tensorrt_build import graph_info_of_plan

        return graph_info_of_plan(path)
    return read_graph_info(path)


def open_model(
    model: str | Path,
    backend: str | None = None,
    checkpoint: str | Path | None = None,
    method: str = "bagcams",
    target_layer: str | None = None,
    threads: int | None = None,
    exact: bool = False,
    device: str = "cpu",
) -> Backend:
    """``.onnx`` -> a graph backend (default: :func:`default_backend`); ``.plan`` -> TensorRT; a
    checkpoint -> the PyTorch reference (or ``torch-analytic``) for ``method`` at ``target_layer``."""
    from ..models import load_model

    path = Path(model)
    if not path.exists():
        raise BagcamsError(f"model not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        name = backend or default_backend()
        torch_model = load_model(checkpoint) if name.startswith("torch") and checkpoint else None
        return create_backend(name, graph=path, model=torch_model, threads=threads, exact=exact, device=device)
    if suffix in (".plan", ".engine"):
        return create_backend(backend or "tensorrt", graph=path, threads=threads)
    if suffix in CHECKPOINT_SUFFIXES or path.name.endswith(".pth.tar"):
        name = backend or "torch-reference"
        if not name.startswith("torch"):
            raise BagcamsError(f"backend {name} runs an exported model; export {path} first (bagcams-deploy export)")
        return create_backend(name, model=load_model(path), method=method, target_layer=target_layer,
                              threads=threads, device=device)  # fmt: skip
    raise BagcamsError(
        f"cannot tell what {path} is: expected .onnx, .plan or a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})"
    )
