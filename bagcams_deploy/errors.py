"""One error type for everything a user can get wrong.

The CLI catches :class:`BagcamsError` once at its edge and prints its message as a single line with a
non-zero exit; library users catch it like any exception. Messages name the offending thing (file,
tensor, layer, class id) and, where there is a closed set of valid values, list them.
"""

from __future__ import annotations


def plural(count: int, noun: str) -> str:
    """``1 overlay``, ``2 overlays``: a message should not read "wrote 1 overlays"."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


#: How to get OpenVINO, said the same way wherever it is missing: the extra pins the versions we test.
OPENVINO_HINT = "pip install 'bagcams-deploy[openvino]'"


class BagcamsError(Exception):
    """A user-facing error: bad input, missing optional dependency, failed check."""


class MissingDependencyError(BagcamsError):
    """An optional dependency (tensorrt, pycuda, onnxruntime-gpu, openvino) is needed but absent."""

    def __init__(self, package: str, purpose: str, hint: str | None = None) -> None:
        msg = f"{purpose} needs '{package}', which is not installed"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.package = package


class CheckpointNotGraphError(BagcamsError):
    """A PyTorch checkpoint given where an ONNX graph goes. The message is the neutral fact; how to
    give the checkpoint instead depends on the command (its options), so the CLI adds that hint."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path} is a PyTorch checkpoint, not an ONNX graph")
        self.path = path


def require(module: str, purpose: str, hint: str | None = None):
    """Import an optional module lazily, or raise a clear :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library (OSError)
        raise MissingDependencyError(module.split(".")[0], purpose, hint or str(exc).splitlines()[0]) from exc
