"""``exporter="dynamo"`` (torch.export-based ONNX exporter) against the TorchScript exporter's graphs.

The dynamo graph must keep the contract (names, axes, metadata), compute what the TorchScript graph
computes (ONNX Runtime, within float32 rounding), take any H, W when exported with dynamic size
(Inception's strided arithmetic included) and stay inside TensorRT's support in bf16, whose fused
BatchNorm weights onnxscript's optimiser leaves float32. Skipped where onnxscript is not installed.
"""

from __future__ import annotations

import builtins

import numpy as np
import onnx
import pytest
import torch

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.contract import read_graph_info
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.reference import compute_cams
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.verify import random_images

from .conftest import TEST_SIZE
from .test_export import assert_maps_agree
from .test_tensorrt_onnx_support import unsupported_uses

try:
    import onnxscript  # noqa: F401

    HAVE_ONNXSCRIPT = True
except ImportError:
    HAVE_ONNXSCRIPT = False

needs_onnxscript = pytest.mark.skipif(
    not HAVE_ONNXSCRIPT, reason="the dynamo exporter needs onnxscript (pip install 'bagcams-deploy[dynamo]')"
)


def dims(proto: onnx.ModelProto) -> dict[str, list]:
    values = (*proto.graph.input, *proto.graph.output)
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def run(path, x, ids):
    with create_backend("ort-cpu", graph=path, threads=2) as b:
        return b.infer(x, ids)


@needs_onnxscript
def test_dynamo_graph_keeps_the_contract_and_equals_the_torchscript_graph(models, tmp_path):
    model, size = models["resnet18"], TEST_SIZE["resnet18"]
    paths = {}
    for exporter in ("torchscript", "dynamo"):
        paths[exporter] = tmp_path / f"{exporter}.onnx"
        r = export_onnx(model, paths[exporter], method="bagcams", target_layer="layer3", input_size=size,
                        exporter=exporter)  # fmt: skip
        assert r.opset == 18
    ts, dy = (onnx.load(str(paths[e])) for e in ("torchscript", "dynamo"))
    assert dims(dy) == dims(ts) and dims(dy)["cam"] == ["N", 1, 64, 64]
    props = {name: {p.key: p.value for p in g.metadata_props} for name, g in (("ts", ts), ("dy", dy))}
    assert (props["ts"].pop("exporter"), props["dy"].pop("exporter")) == ("torchscript", "dynamo")
    assert props["dy"] == props["ts"]
    assert dy.producer_name == "bagcams-deploy" and not any(n.metadata_props for n in dy.graph.node)
    assert not {"BatchNormalization", "Dropout"} & {n.op_type for n in dy.graph.node}
    x = random_images(3, (size, size), 5)  # batch 3: the export's example had 1
    ids = np.array([-1, 2, -1])
    a, b = run(paths["torchscript"], x, ids), run(paths["dynamo"], x, ids)
    assert a.keys() == b.keys() and a["class_id_used"].tolist() == b["class_id_used"].tolist()
    for name in ("logits", "features", "gradients", "cam"):
        scale = np.abs(a[name]).max()
        assert np.abs(a[name] - b[name]).max() <= 1e-5 * scale, name


@needs_onnxscript
def test_dynamo_dynamic_size_inception_runs_at_odd_sizes(models, tmp_path):
    """Named torch.export Dims fail on Inception's strided size arithmetic (the constraint solver's
    report asserts); the export uses Dim.DYNAMIC and names the axes itself."""
    path = tmp_path / "dyn.onnx"
    export_onnx(models["inception_v3"], path, method="bagcams", input_size=TEST_SIZE["inception_v3"],
                dynamic_size=True, exporter="dynamo")  # fmt: skip
    assert read_graph_info(path).input_size is None
    d = dims(onnx.load(str(path)))
    assert d["image"] == ["N", 3, "H", "W"] and d["cam"] == ["N", 1, "H", "W"] and d["features"][2:] == ["h", "w"]
    x = torch.from_numpy(random_images(2, (97, 113), 6))
    out = run(path, x.numpy(), np.array([-1, 3]))
    ref = compute_cams(models["inception_v3"], x, "bagcams", None, [-1, 3])
    assert out["cam"].shape == (2, 1, 97, 113) and out["class_id_used"].tolist() == ref.class_ids.tolist()
    assert_maps_agree(out["cam"], ref.maps.numpy())


@needs_onnxscript
def test_dynamo_bf16_graph_has_bfloat16_convolutions_inside_tensorrt_support(models, tmp_path):
    path = tmp_path / "bf16.onnx"
    r = export_onnx(models["resnet18"], path, method="bagcams", target_layer="layer3", input_size=64,
                    precision="bf16", exporter="dynamo")  # fmt: skip
    assert r.opset == 22
    proto = onnx.load(str(path))
    weights = {i.name: i.data_type for i in proto.graph.initializer}
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "ConvTranspose")]
    assert convs and all(weights.get(n.input[1], onnx.TensorProto.BFLOAT16) == onnx.TensorProto.BFLOAT16 for n in convs)
    assert unsupported_uses(proto) == []


def test_exporter_is_checked_and_a_missing_onnxscript_is_one_clear_line(models, tmp_path, monkeypatch, cli,
                                                                         checkpoints):  # fmt: skip
    with pytest.raises(BagcamsError, match="unknown exporter 'jit'; valid: torchscript, dynamo"):
        export_onnx(models["resnet18"], tmp_path / "x.onnx", exporter="jit")
    if HAVE_ONNXSCRIPT:  # torch's down-conversion to 17 fails on our graphs and would silently keep 18
        with pytest.raises(BagcamsError, match="--exporter dynamo writes opset 18 or newer, got --opset 17"):
            export_onnx(models["resnet18"], tmp_path / "x.onnx", exporter="dynamo", opset=17)
    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript" or name.startswith("onnxscript."):
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    with pytest.raises(BagcamsError, match=r"--exporter dynamo needs onnxscript: pip install"):
        export_onnx(models["resnet18"], tmp_path / "x.onnx", exporter="dynamo")
    r = cli("export", checkpoints["resnet18"], "-o", tmp_path / "y.onnx", "--exporter", "dynamo")
    assert r.code == 1 and "needs onnxscript" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("export", checkpoints["resnet18"], "-o", tmp_path / "y.onnx", "--exporter", "jit")
    assert r.code == 1 and "unknown --exporter 'jit'" in r.err and len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "y.onnx").exists()
