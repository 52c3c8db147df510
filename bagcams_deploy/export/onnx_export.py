"""Export a WSOL model's analytic CAM network to ONNX, with the contract's names and metadata."""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import BagcamsError
from ..models.wsol import WSOLModel, require_wsol_model
from ..preprocessing import MEAN, STD
from ..reference.cams import check_images
from .analytic import AnalyticCAM, calibrate_gradient_scale, last_stage_positions
from .contract import INPUT_NAMES, check_graph_name, metadata_props

MIN_OPSET = 17
DEFAULT_OPSET = 18
# ONNX Conv (and most arithmetic) accepts bfloat16 from opset 22 on; TensorRT's parser reads up to 24.
BF16_MIN_OPSET = 22
# torchscript: torch.onnx.export(dynamo=False), the default; dynamo: the torch.export-based exporter
# (needs onnxscript), which torch keeps once the TorchScript one is removed.
EXPORTERS = ("torchscript", "dynamo")
# The dynamo exporter's operator library is written at opset 18; below it, torch's down-conversion fails
# on our graphs and silently keeps 18.
DYNAMO_MIN_OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    path: Path
    method: str
    target_layer: str
    outputs: tuple[str, ...]
    opset: int
    seconds: float
    size_bytes: int
    gradient_scale: float
    precision: str


MAX_INPUT_SIDE = 4096  # beyond this the export's example pass alone needs tens of GB


def _input_size(input_size: object) -> tuple[int, int]:
    """An int (square) or an (H, W) pair of positive integers, or a clear error."""
    pair = (input_size, input_size) if isinstance(input_size, int | np.integer) else input_size
    if isinstance(pair, np.ndarray | torch.Size):
        pair = tuple(pair.tolist()) if isinstance(pair, np.ndarray) else tuple(pair)
    ok = isinstance(pair, tuple | list) and len(pair) == 2
    ok = ok and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in pair
    )
    if not ok:
        raise BagcamsError(
            f"input_size must be an integer or an (H, W) pair in 1..{MAX_INPUT_SIDE}, got {input_size!r}"
        )
    return int(pair[0]), int(pair[1])


def max_opset() -> int:
    """The newest opset the installed torch's exporter writes (its constant is private: fall back safely)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return BF16_MIN_OPSET


def _dynamic_axes(outputs: tuple[str, ...], dynamic_size: bool) -> dict[str, dict[int, str]]:
    """The symbolic axes of every input and output: N always; H, W (and h, w of the maps) when dynamic."""
    dyn: dict[str, dict[int, str]] = {"image": {0: "N"}, "class_id": {0: "N"}}
    if dynamic_size:
        dyn["image"].update({2: "H", 3: "W"})
    for name in outputs:
        dyn[name] = {0: "N"}
        if dynamic_size and name in ("features", "gradients"):
            dyn[name].update({2: "h", 3: "w"})
        if dynamic_size and name == "cam":
            dyn[name].update({2: "H", 3: "W"})
    return dyn


def _torchscript_graph(module: torch.nn.Module, example: tuple, outputs: tuple[str, ...], opset: int, dyn: dict):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            example,
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUT_NAMES),
            output_names=list(outputs),
            dynamic_axes=dyn,
            do_constant_folding=True,
        )
    import onnx

    return onnx.load_from_string(buf.getvalue())


def require_onnxscript() -> None:
    """The dynamo exporter translates through onnxscript, an optional dependency: say so in one line."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        raise BagcamsError(
            "--exporter dynamo needs onnxscript: pip install 'bagcams-deploy[dynamo]' (or pip install onnxscript)"
        ) from None


def _restore_fused_weight_types(model) -> None:
    """Give the convolutions of a bf16 graph back their bfloat16 weights.

    onnxscript's optimiser folds BatchNorm into the convolution before it (FuseBatchNormIntoConv) in
    numpy, where bfloat16 arithmetic (ml_dtypes) comes out float32: the Conv then takes a float32 W and
    B with a bfloat16 X, which the ONNX checker refuses. The fused values are cast back to the type of
    the data they are applied to, as the TorchScript exporter's own folding leaves them.
    """
    import onnx_ir as ir

    for node in model.graph:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in ("", "ai.onnx"):
            continue
        want = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
        if want is None or want == ir.DataType.FLOAT:
            continue
        for value in node.inputs[1:]:
            if value is None or value.const_value is None or value.dtype in (None, want):
                continue
            value.const_value = ir.tensor(value.const_value.numpy().astype(want.numpy()), name=value.name)
            value.dtype = want


def _dynamo_graph(module: torch.nn.Module, example: tuple, outputs: tuple[str, ...], opset: int, dyn: dict):
    """torch.export, then the ONNX translation and onnxscript's optimiser, with the contract's axis names.

    Axes are ``Dim.DYNAMIC`` (named Dims make torch.export's constraint solver fail on Inception's
    strided size arithmetic) and renamed here: torch.export calls them s0, s1, ... throughout.
    """
    import logging
    import re

    from torch.export import Dim

    require_onnxscript()
    shapes = {name: dict.fromkeys(axes, Dim.DYNAMIC) for name, axes in dyn.items() if name in INPUT_NAMES}
    # "torchvision is not installed", the symbolic-shape solver's notes: not the user's business
    noisy = ("torch.onnx", "torch.export", "torch.fx.experimental.symbolic_shapes", "onnxscript")
    quiet = [logging.getLogger(n) for n in noisy]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(outputs),
                dynamic_shapes=shapes,
                optimize=True,
            )
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    _restore_fused_weight_types(program.model)
    proto = program.model_proto
    # torch.export's symbols (s40, s73, ...) -> the contract's names, in every shape the graph states.
    rename: dict[str, str] = {}
    for value in proto.graph.input:
        for axis, d in enumerate(value.type.tensor_type.shape.dim):
            name = dyn.get(value.name, {}).get(axis)
            if name is not None and d.dim_param:
                rename[d.dim_param] = name
    if rename:
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, rename)) + r")\b")
        for value in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output):
            for d in value.type.tensor_type.shape.dim:
                if d.dim_param:
                    d.dim_param = pattern.sub(lambda m: rename[m.group(1)], d.dim_param)
    for node in proto.graph.node:  # stack traces with this machine's paths, FX node dumps: size, no use
        del node.metadata_props[:]
    return proto


def _trace_to_onnx(
    module: torch.nn.Module,
    example: tuple,
    outputs: tuple[str, ...],
    opset: int,
    dynamic_size: bool,
    output_shapes: list[tuple[int, ...]],
    exporter: str = "torchscript",
):
    dyn = _dynamic_axes(outputs, dynamic_size)
    graph = _dynamo_graph if exporter == "dynamo" else _torchscript_graph
    proto = graph(module, example, outputs, opset, dyn)
    # The tracer cannot tell that reshapes keep the map's shape; state the output shapes plainly.
    for out, shape in zip(proto.graph.output, output_shapes, strict=True):
        dims = out.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            symbolic = dyn.get(out.name, {}).get(axis)
            if symbolic is not None:
                d.ClearField("dim_value")
                d.dim_param = symbolic
            else:
                d.ClearField("dim_param")
                d.dim_value = int(shape[axis])
    return proto


def export_onnx(
    model: WSOLModel,
    output: str | Path,
    method: str = "bagcams",
    target_layer: str | None = None,
    input_size: int | tuple[int, int] = 224,
    with_cam: bool = True,
    opset: int | None = None,
    dynamic_size: bool = False,
    gradient_scale: float | None = None,
    precision: str = "fp32",
    calibration_images: torch.Tensor | None = None,
    exporter: str = "torchscript",
) -> ExportResult:
    """Write the analytic CAM graph of ``model`` to ``output`` and check it (full checker + shapes).

    ``precision`` fp16/bf16 writes a mixed-precision graph (see :class:`AnalyticCAM`); its
    ``gradient_scale`` is then calibrated on ``calibration_images`` (default: generated scenes)
    unless given. The scale is recorded in the metadata and undone by the in-graph map and kernels.
    ``opset`` defaults to 18, and to 22 for bf16 (the first opset whose Conv takes bfloat16); a bf16
    graph is for TensorRT on Ampere or newer: ONNX Runtime's CPU provider has no bfloat16 Conv.
    ``exporter`` ``dynamo`` uses torch's torch.export-based exporter (needs onnxscript) instead of
    the TorchScript one; the graphs compute the same outputs.
    """
    import onnx

    from ..outputs import output_file

    require_wsol_model(model)
    output_file(Path(output), "output")
    check_graph_name(output)
    if exporter not in EXPORTERS:
        raise BagcamsError(f"unknown exporter {exporter!r}; valid: {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        require_onnxscript()  # before the calibration and the model pass, which can take long
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int | np.integer)):
        raise BagcamsError(f"opset must be an integer, got {opset!r}")
    if opset is None:  # the default: 18, or the first opset whose convolutions take bfloat16
        opset = BF16_MIN_OPSET if precision == "bf16" else DEFAULT_OPSET
    if method == "cam" and not with_cam:
        raise BagcamsError("--no-cam with --method cam leaves neither a map nor gradients to make one from")
    if opset < MIN_OPSET:
        raise BagcamsError(f"opset {opset} is too old; use {MIN_OPSET} or newer")
    if opset > max_opset():
        raise BagcamsError(f"opset {opset} is newer than torch {torch.__version__} can export (at most {max_opset()})")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise BagcamsError(f"--exporter dynamo writes opset {DYNAMO_MIN_OPSET} or newer, got --opset {opset}")
    if precision == "bf16" and opset < BF16_MIN_OPSET:
        raise BagcamsError(f"--precision bf16 needs --opset {BF16_MIN_OPSET} or newer (ONNX convolutions take "
                           f"bfloat16 from opset {BF16_MIN_OPSET}), got {opset}")  # fmt: skip
    size = _input_size(input_size)
    if min(size) < model.spec.min_input_size:
        raise BagcamsError(
            f"--input-size {size} is below the minimum {model.spec.min_input_size} for {model.architecture}"
        )
    t0 = time.perf_counter()
    calibrated_size = size  # the input size whose backward range the scale was chosen for
    if gradient_scale is None:
        gradient_scale = 1.0
        if precision != "fp32" and method != "cam":
            from ..verify import random_images

            if calibration_images is not None:
                calib = check_images(model, calibration_images)
                if not dynamic_size and tuple(calib.shape[2:]) != size:
                    raise BagcamsError(
                        f"calibration images are {calib.shape[2]}x{calib.shape[3]}, the graph's input is "
                        f"{size[0]}x{size[1]}: the gradient scale depends on the map size, so calibrate at it"
                    )
            else:
                calib = torch.from_numpy(random_images(8, size, 0))
            gradient_scale = calibrate_gradient_scale(model, method, target_layer, calib)
            calibrated_size = (int(calib.shape[2]), int(calib.shape[3]))
    # Traced on the CPU wherever the model lives. A dynamic-size half-precision graph seeds its backward
    # at the calibrated size's magnitude (see AnalyticCAM): otherwise it would overflow half precision
    # on small inputs and underflow on large ones.
    seed_positions = None
    if dynamic_size and precision != "fp32" and method != "cam":
        seed_positions = last_stage_positions(model, calibrated_size)
    net = AnalyticCAM(
        model, method, target_layer, with_cam=with_cam, gradient_scale=gradient_scale, precision=precision,
        seed_positions=seed_positions,
    ).cpu()  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    example = (torch.randn(1, 3, *size, generator=gen), torch.full((1,), -1, dtype=torch.int64))
    with torch.no_grad():
        # Output shapes from the float32 twin: half-precision convolutions are slow on PyTorch's CPU.
        twin = net if precision == "fp32" else AnalyticCAM(model, method, target_layer, with_cam=with_cam).cpu()
        shapes = [tuple(v.shape) for v in twin(*example)]
        net.static_shapes = not dynamic_size
        try:
            proto = _trace_to_onnx(net, example, net.output_names, opset, dynamic_size, shapes, exporter)
        finally:
            net.static_shapes = False
    props = metadata_props(
        method=net.method,
        target_layer=net.target_layer,
        architecture=model.architecture,
        num_classes=model.num_classes,
        input_size=None if dynamic_size else size,  # type: ignore[arg-type]
        mean=MEAN,
        std=STD,
        gradient_scale=gradient_scale,
        precision=precision,
        producer_version=__version__,
        class_names=model.class_names,
        large_feature_map=model.large_feature_map,
        exporter=exporter,
    )
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name, proto.producer_version = "bagcams-deploy", __version__
    proto.doc_string = f"{net.method} at {net.target_layer} of a {model.architecture} WSOL model"
    try:
        onnx.checker.check_model(proto, full_check=True)
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:  # a bug of ours, not the user's: say so clearly
        raise BagcamsError(f"exported graph failed the ONNX checker: {str(exc).splitlines()[0]}") from exc
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    return ExportResult(
        path=path,
        method=net.method,
        target_layer=net.target_layer,
        outputs=net.output_names,
        opset=opset,
        seconds=time.perf_counter() - t0,
        size_bytes=path.stat().st_size,
        gradient_scale=gradient_scale,
        precision=precision,
    )


class _Forward(torch.nn.Module):
    def __init__(self, model: WSOLModel):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def export_forward_onnx(model: WSOLModel, output: str | Path, input_size: tuple[int, int] = (224, 224)) -> Path:
    """The plain classifier (image -> logits): the latency floor that ``bench`` compares against."""
    import onnx

    example = (torch.randn(1, 3, *input_size),)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Forward(model.snapshot(torch.float32)), example, buf, dynamo=False, opset_version=DEFAULT_OPSET,
            input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )  # fmt: skip
    path = Path(output)
    onnx.save(onnx.load_from_string(buf.getvalue()), str(path))
    return path
