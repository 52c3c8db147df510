"""The ONNX I/O contract that consumers (Python backends, C++ pipelines, TensorRT) rely on.

Inputs: ``image`` float32 [N,3,H,W] (normalised), ``class_id`` int64 [N] (negative = argmax).
Outputs: ``logits`` [N,C], ``class_id_used`` int64 [N], ``features`` [N,K,h,w], ``gradients``
[N,K,h,w] (not for method ``cam``), ``cam`` float32 [N,1,H,W] (unless exported with ``--no-cam``).
``metadata_props`` carry what a consumer needs to pre-process and to interpret the outputs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BagcamsError, CheckpointNotGraphError
from ..methods.names import METHODS

GRAPH_PRECISIONS = ("fp32", "fp16", "bf16")

GRAPH_SUFFIX = ".onnx"  # how every command tells a graph from a plan or a checkpoint
INPUT_NAMES = ("image", "class_id")
REQUIRED_OUTPUTS = ("logits", "class_id_used", "features")
PRODUCER = "bagcams-deploy"


@dataclass(frozen=True)
class GraphInfo:
    """What an exported graph says about itself (from its metadata_props and I/O)."""

    path: str
    method: str
    target_layer: str
    architecture: str
    num_classes: int
    input_size: tuple[int, int] | None  # None when exported with dynamic H, W
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    gradient_scale: float
    precision: str
    outputs: tuple[str, ...]
    producer_version: str
    large_feature_map: bool | None = None  # None: a graph exported before it was recorded

    def __post_init__(self) -> None:
        """Metadata is read from a file a user hands us: a value no export writes is an error here,
        not a wrong map later."""
        where = f"{self.path}: metadata"
        if self.method not in METHODS:
            raise BagcamsError(f"{where} 'method' is {self.method!r}; valid: {', '.join(METHODS)}")
        if self.num_classes < 1:
            raise BagcamsError(f"{where} 'num_classes' must be >= 1, got {self.num_classes}")
        if self.input_size is not None and min(self.input_size) < 1:
            raise BagcamsError(f"{where} 'input_size' must be positive, got {self.input_size}")
        if not 0 < self.gradient_scale < float("inf"):
            raise BagcamsError(f"{where} 'gradient_scale' must be a finite positive number, got {self.gradient_scale}")
        if self.precision not in GRAPH_PRECISIONS:
            raise BagcamsError(f"{where} 'precision' is {self.precision!r}; valid: {', '.join(GRAPH_PRECISIONS)}")
        finite = all(abs(v) < float("inf") for v in (*self.mean, *self.std))
        if not finite or min(self.std) <= 0:
            raise BagcamsError(f"{where} 'mean'/'std' must be finite with std > 0, got {self.mean} / {self.std}")

    @property
    def has_cam(self) -> bool:
        return "cam" in self.outputs

    @property
    def has_gradients(self) -> bool:
        return "gradients" in self.outputs


def metadata_props(
    method: str,
    target_layer: str,
    architecture: str,
    num_classes: int,
    input_size: tuple[int, int] | None,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    gradient_scale: float,
    precision: str,
    producer_version: str,
    class_names: tuple[str, ...] | None = None,
    large_feature_map: bool | None = None,
    exporter: str = "torchscript",
) -> dict[str, str]:
    props = {
        "method": method,
        "target_layer": target_layer,
        "architecture": architecture,
        "num_classes": str(num_classes),
        "input_size": "dynamic" if input_size is None else f"{input_size[0]}x{input_size[1]}",
        "mean": ",".join(f"{v:.6g}" for v in mean),
        "std": ",".join(f"{v:.6g}" for v in std),
        "gradient_scale": repr(float(gradient_scale)),
        "precision": precision,
        "producer": PRODUCER,
        "producer_version": producer_version,
        "exporter": exporter,  # which torch exporter wrote the graph (--exporter): provenance only
    }
    if class_names:
        props["class_names"] = json.dumps(list(class_names))
    if large_feature_map is not None:
        props["large_feature_map"] = "true" if large_feature_map else "false"
    return props


def float_triple(
    values: Iterable[str | float], key: str, where: str, shown: object = None
) -> tuple[float, float, float]:
    """One number per RGB channel (``mean``, ``std``) from export metadata, or an error naming ``key``:
    a graph's comma-separated text and a plan record's JSON list are held to the same rule."""
    shown = values if shown is None else shown
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise BagcamsError(f"{where}: metadata '{key}' is not a list of numbers: {shown!r}") from None
    if len(vals) != 3:
        raise BagcamsError(f"{where}: metadata '{key}' must hold 3 numbers, got {shown!r}")
    return vals[0], vals[1], vals[2]


def _floats(text: str, key: str, path: str) -> tuple[float, float, float]:
    return float_triple(text.split(","), key, path, text)


def _number(kind: type, text: str, key: str, path: str):
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BagcamsError(f"{path}: metadata '{key}' is not {what}: {text!r}") from None


def _flag(text: str | None, key: str, path: str) -> bool | None:
    if text is None:
        return None
    if text not in ("true", "false"):
        raise BagcamsError(f"{path}: metadata '{key}' must be 'true' or 'false', got {text!r}")
    return text == "true"


def check_graph_name(path: str | Path, flag: str = "output") -> None:
    """Refuse to write a graph under another suffix than ``.onnx``: every later command tells a graph
    from a plan or a checkpoint by its suffix, so the export would succeed and each use of it fail."""
    if not str(path).lower().endswith(GRAPH_SUFFIX):
        raise BagcamsError(
            f"{flag} {path}: name the graph *{GRAPH_SUFFIX} (the suffix every command opens as an ONNX graph)"
        )


def looks_like_checkpoint(path: Path) -> bool:
    """Whether a file is what ``torch.save`` writes (a zip holding ``data.pkl``, or a bare pickle):
    read from its bytes, so a graph backend can say so without importing torch."""
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("data.pkl") for name in archive.namelist())
        with path.open("rb") as f:
            head = f.read(2)
    except (OSError, zipfile.BadZipFile):
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle PROTO opcode, protocols 2-5


def _not_onnx(path: Path, detail: str) -> BagcamsError:
    """The error for a file that is no ONNX graph; a checkpoint given in the graph's place is named as
    such, since protobuf's own complaint ("Wire format was corrupt") does not say what went wrong."""
    if looks_like_checkpoint(path):
        return CheckpointNotGraphError(path)  # each command says how it takes a checkpoint instead
    return BagcamsError(f"{path} is not an ONNX model ({detail})")


def read_graph_info(path: str | Path) -> GraphInfo:
    """Open an ONNX file and check it is one of ours; a clear error says what is missing."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BagcamsError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except OSError as exc:
        raise BagcamsError(f"{path} is not an ONNX model ({str(exc).splitlines()[0][:120]})") from None
    except Exception:  # protobuf's DecodeError and kin
        raise _not_onnx(path, "it does not parse as one") from None
    if not model.graph.node:
        raise _not_onnx(path, "no graph nodes")
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    missing_in = [n for n in INPUT_NAMES if n not in inputs]
    missing_out = [n for n in REQUIRED_OUTPUTS if n not in outputs]
    if missing_in or missing_out:
        what = ", ".join([f"input '{n}'" for n in missing_in] + [f"output '{n}'" for n in missing_out])
        raise BagcamsError(f"{path} is not a bagcams-deploy graph: missing {what}")
    props = {p.key: p.value for p in model.metadata_props}
    for key in ("method", "target_layer", "architecture", "num_classes", "input_size", "mean", "std"):
        if key not in props:
            raise BagcamsError(f"{path} is not a bagcams-deploy graph: metadata '{key}' missing")
    method = props["method"]
    if method != "cam" and "gradients" not in outputs:
        raise BagcamsError(f"{path}: method {method} graph without a 'gradients' output")
    size_text = props["input_size"]
    if size_text == "dynamic":
        input_size = None
    else:
        try:
            h, w = (int(v) for v in size_text.lower().split("x"))
        except ValueError:
            raise BagcamsError(f"{path}: metadata 'input_size' is malformed: {size_text!r}") from None
        input_size = (h, w)
    return GraphInfo(
        path=str(path),
        method=method,
        target_layer=props["target_layer"],
        architecture=props["architecture"],
        num_classes=_number(int, props["num_classes"], "num_classes", str(path)),
        input_size=input_size,
        mean=_floats(props["mean"], "mean", str(path)),
        std=_floats(props["std"], "std", str(path)),
        gradient_scale=_number(float, props.get("gradient_scale", "1.0"), "gradient_scale", str(path)),
        precision=props.get("precision", "fp32"),
        outputs=outputs,
        producer_version=props.get("producer_version", "unknown"),
        large_feature_map=_flag(props.get("large_feature_map"), "large_feature_map", str(path)),
    )


def class_names_of(path: str | Path) -> tuple[str, ...] | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == "class_names":
            try:
                names = json.loads(p.value)
            except ValueError:
                names = None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise BagcamsError(f"{path}: metadata 'class_names' is not a JSON list of names: {p.value[:80]!r}")
            return tuple(names)
    return None
