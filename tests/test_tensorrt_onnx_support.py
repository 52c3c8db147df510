"""Every graph we export stays inside what TensorRT's ONNX parser documents it supports.

No session of this project could build an engine (no GPU with TensorRT), so the first contact of a new
export with TensorRT would be a user's ``build-engine``. This checks each exported node against the
operator support matrix of the ONNX-TensorRT parser (TensorRT 10.15, opset 9-24), stored in
``tests/data/tensorrt_onnx_support.json``: the operator is supported, the tensor it computes on has a
type the matrix lists for it, inputs that must be build-time constants are, and Resize uses only
supported modes. It is a documentation check, not a build: layer-level limits it cannot see remain.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, shape_inference

from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.methods.names import METHODS

from .conftest import TEST_SIZE

SUPPORT = json.loads((Path(__file__).parent / "data" / "tensorrt_onnx_support.json").read_text())
# which tensor an operator's "Supported Types" refer to: its data input, or its output for constants
DATA_INPUT = {"Where": 1}
OUTPUT_TYPED = {"Constant", "ConstantOfShape"}

VARIANTS = [
    *[("resnet18", m, "fp32", dict()) for m in METHODS],
    ("resnet18", "bagcams", "fp16", dict()),
    ("resnet18", "bagcams", "bf16", dict()),
    ("resnet18", "gradcam", "fp16", dict(with_cam=False)),
    ("resnet18", "bagcams", "fp32", dict(dynamic_size=True)),
    ("resnet18", "bagcams", "fp16", dict(dynamic_size=True)),  # the seed at the calibrated size (AnalyticCAM)
    ("inception_v3", "bagcams", "fp32", dict()),
    ("inception_v3", "pcs", "fp16", dict()),
]


def unsupported_uses(model: onnx.ModelProto) -> list[str]:
    """Why each node of ``model`` is outside the documented TensorRT ONNX support (empty: all inside)."""
    problems = []
    lo, hi = SUPPORT["opset"]
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not lo <= opset <= hi:
        problems.append(f"opset {opset} outside {lo}..{hi}")
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input,
                                                            *inferred.graph.output)}  # fmt: skip
    types.update({t.name: t.data_type for t in model.graph.initializer})
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name or node.output[0]}"
        group = SUPPORT["operators"].get(node.op_type)
        if group is None:
            problems.append(f"{where}: operator not supported")
            continue
        allowed = SUPPORT["type_groups"][group]
        if node.op_type in OUTPUT_TYPED:
            tensors = [node.output[0]]
        elif node.op_type in ("Cast", "CastLike"):
            tensors = [node.input[0], node.output[0]]
        else:
            tensors = [node.input[DATA_INPUT.get(node.op_type, 0)]]
        for name in tensors:
            elem = types.get(name, TensorProto.UNDEFINED)
            type_name = TensorProto.DataType.Name(elem)
            if type_name not in allowed:
                problems.append(f"{where}: {name} is {type_name}, supported: {', '.join(allowed)}")
        need_const = SUPPORT["constant_inputs"].get(node.op_type)
        if need_const is not None and len(node.input) > need_const and node.input[need_const] not in constants:
            problems.append(f"{where}: input {need_const} ({node.input[need_const]}) must be a build-time constant")
        if node.op_type == "Resize":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for key, ok in SUPPORT["resize"].items():
                value = attrs.get(key)
                value = value.decode() if isinstance(value, bytes) else value
                if value is not None and value not in ok:
                    problems.append(f"{where}: {key}={value!r} not supported ({ok})")
    return problems


@pytest.mark.parametrize(("arch", "method", "precision", "extra"), VARIANTS,
                         ids=[f"{a}-{m}-{p}-{'-'.join(e) or 'default'}" for a, m, p, e in VARIANTS])  # fmt: skip
def test_exported_graph_is_inside_tensorrt_onnx_support(models, tmp_path, arch, method, precision, extra):
    path = tmp_path / "m.onnx"
    target = None if method == "cam" else ("layer3" if arch.startswith("resnet") else None)
    export_onnx(models[arch], path, method=method, target_layer=target, input_size=TEST_SIZE[arch],
                precision=precision, **extra)  # fmt: skip
    problems = unsupported_uses(onnx.load(str(path)))
    assert not problems, "\n".join(problems)


def test_the_check_reports_what_tensorrt_does_not_support(models, tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(models["resnet18"], path, method="bagcams", target_layer="layer3", input_size=TEST_SIZE["resnet18"])
    model = onnx.load(str(path))
    assert unsupported_uses(model) == []
    nodes = model.graph.node
    relu = next(n for n in nodes if n.op_type == "Relu")
    relu.op_type = "Hardmax2"  # an operator the parser has no importer for
    resize = next(n for n in nodes if n.op_type == "Resize")
    for a in resize.attribute:
        if a.name == "mode":
            a.s = b"area"
    reduce = next(n for n in nodes if n.op_type.startswith("Reduce") and len(n.input) > 1)
    reduce.input[1] = model.graph.input[1].name  # axes from a runtime tensor
    problems = "\n".join(unsupported_uses(model))
    assert "Hardmax2 node" in problems and "operator not supported" in problems
    assert "mode='area'" in problems
    assert "must be a build-time constant" in problems
