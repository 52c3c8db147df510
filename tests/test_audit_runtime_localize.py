"""Audit follow-ups: ``localize --multi-contour`` (library and CLI), ONNX Runtime session options
(threads, ``exact``) and the ort-trt profile shapes of a non-square graph.

Everything runs on one hand-made ONNX graph of the bagcams-deploy contract (milliseconds to build and
to run): its ``cam`` output is a fixed map with two separated blobs, whatever the image, so the boxes
``localize`` reports are known exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from bagcams_deploy.export.contract import metadata_props, read_graph_info
from bagcams_deploy.localize import localize_images
from bagcams_deploy.runtime import create_backend, ort_backend
from bagcams_deploy.runtime.ort_backend import ORT_TRT_BATCHES, OrtBackend, ort_trt_options, plain_session

# A non-square graph: H=32 rows, W=48 columns (input_size is HxW).
H, W = 32, 48
NUM_CLASSES = 3
# Two blobs above the default threshold (0.5): the small one first in scan order, the large one below it.
SMALL = (5, 4, 14, 9)  # x0, y0, x1, y1 inclusive: 10 x 6 pixels
LARGE = (30, 20, 43, 27)  # 14 x 8 pixels


def two_blob_map() -> np.ndarray:
    m = np.zeros((H, W), dtype=np.float32)
    for (x0, y0, x1, y1), v in ((SMALL, 0.9), (LARGE, 1.0)):
        m[y0 : y1 + 1, x0 : x1 + 1] = v
    return m


def write_graph(path: Path, input_size: tuple[int, int] = (H, W)) -> Path:
    """A graph with the contract's inputs, outputs and metadata (method ``cam``): logits = per-channel
    image means, class_id_used = max(class_id, argmax), features = the image, cam = the two-blob map."""
    hh, ww = input_size
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, hh, ww])
    class_id = helper.make_tensor_value_info("class_id", TensorProto.INT64, ["batch"])
    outputs = [
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES]),
        helper.make_tensor_value_info("class_id_used", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 3, hh, ww]),
        helper.make_tensor_value_info("cam", TensorProto.FLOAT, ["batch", 1, hh, ww]),
    ]
    cam_map = np.zeros((1, 1, hh, ww), dtype=np.float32)
    cam_map[0, 0, : min(hh, H), : min(ww, W)] = two_blob_map()[:hh, :ww]
    inits = [
        numpy_helper.from_array(cam_map, "cam_map"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0),
        helper.make_node("ArgMax", ["logits"], ["argmax"], axis=1, keepdims=0),
        helper.make_node("Max", ["class_id", "argmax"], ["class_id_used"]),
        helper.make_node("Identity", ["image"], ["features"]),
        helper.make_node("ReduceMean", ["image"], ["grey"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["grey", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "cam_map"], ["cam"]),
    ]
    graph = helper.make_graph(nodes, "two_blobs", [image, class_id], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    props = metadata_props(
        "cam", "layer4", "resnet18", NUM_CLASSES, input_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
        1.0, "fp32", "test",
    )  # fmt: skip
    onnx.helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    return write_graph(tmp_path_factory.mktemp("audit_graph") / "two_blobs.onnx")


@pytest.fixture
def image(tmp_path) -> Path:
    """An image of the graph's size, so the map reaches the boxes unresized."""
    arr = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    path = tmp_path / "imgs" / "scene.png"
    path.parent.mkdir()
    Image.fromarray(arr).save(path)
    return path


def _box(b: tuple[int, int, int, int]) -> list[int]:
    return list(b)


# --- 1: localize --multi-contour ------------------------------------------------------------------


def test_the_graph_gives_the_two_blob_map(graph):
    with create_backend("ort-cpu", graph=graph) as b:
        assert b.spec.input_size == (H, W)
        res = b.infer(np.zeros((2, 3, H, W), dtype=np.float32))
    np.testing.assert_array_equal(res["cam"], np.broadcast_to(two_blob_map(), (2, 1, H, W)))


def test_localize_images_one_box_from_the_largest_contour_or_one_per_contour(graph, image, tmp_path):
    with create_backend("ort-cpu", graph=graph) as b:
        (single,) = localize_images(b, [image], tmp_path / "single")
        (multi,) = localize_images(b, [image], tmp_path / "multi", multi_contour=True)
    assert single["boxes"] == [_box(LARGE)]
    assert sorted(multi["boxes"]) == sorted([_box(SMALL), _box(LARGE)]) and len(multi["boxes"]) == 2
    assert single["image_size"] == multi["image_size"] == [W, H]
    for name, expected in (("single", False), ("multi", True)):
        doc = json.loads((tmp_path / name / "boxes.json").read_text())
        assert doc["multi_contour"] is expected
        assert doc["images"][0]["boxes"] == (multi if expected else single)["boxes"]
    # at a threshold above the small blob's 0.9 only the large blob is left, in either mode
    with create_backend("ort-cpu", graph=graph) as b:
        (high,) = localize_images(b, [image], tmp_path / "high", threshold=0.95, multi_contour=True)
    assert high["boxes"] == [_box(LARGE)]


def test_localize_cli_writes_the_multi_contour_boxes(cli, graph, image, tmp_path):
    r = cli("localize", image, "--model", graph, "--out", tmp_path / "single", "--backend", "ort-cpu")
    assert r.code == 0, r.err
    doc = json.loads((tmp_path / "single" / "boxes.json").read_text())
    assert doc["multi_contour"] is False
    assert [rec["boxes"] for rec in doc["images"]] == [[_box(LARGE)]]

    r = cli("localize", image, "--model", graph, "--out", tmp_path / "multi", "--backend", "ort-cpu", "--multi-contour")
    assert r.code == 0, r.err
    doc = json.loads((tmp_path / "multi" / "boxes.json").read_text())
    assert doc["multi_contour"] is True
    (boxes,) = [rec["boxes"] for rec in doc["images"]]
    assert sorted(boxes) == sorted([_box(SMALL), _box(LARGE)]) and len(boxes) == 2


# --- 2: ONNX Runtime session options ----------------------------------------------------------------


def _options(backend: OrtBackend) -> ort.SessionOptions:
    return backend.session.get_session_options()


def test_threads_set_intra_op_threads_and_one_inter_op_thread(graph):
    with create_backend("ort-cpu", graph=graph, threads=2) as b:
        opts = _options(b)
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    with OrtBackend(str(graph), threads=3) as b:
        opts = _options(b)
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 1)
    with OrtBackend(str(graph)) as b:  # no threads: the runtime's defaults (0 = its own choice)
        opts = _options(b)
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (0, 0)
    opts = plain_session(str(graph), threads=4).get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (4, 1)


def test_exact_turns_graph_optimisations_off_and_the_default_keeps_them(graph):
    off = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    on = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with create_backend("ort-cpu", graph=graph, exact=True) as b:
        assert _options(b).graph_optimization_level == off
    with OrtBackend(str(graph), exact=True) as b:
        assert _options(b).graph_optimization_level == off
    with create_backend("ort-cpu", graph=graph) as b:
        assert _options(b).graph_optimization_level == on
    with OrtBackend(str(graph), threads=2, exact=False) as b:
        assert _options(b).graph_optimization_level == on
    assert plain_session(str(graph), exact=True).get_session_options().graph_optimization_level == off
    assert plain_session(str(graph)).get_session_options().graph_optimization_level == on


# --- 3: ort-trt profile shapes on a non-square graph -----------------------------------------------


def test_ort_trt_profile_shapes_are_batch_by_3_by_height_by_width(tmp_path, monkeypatch):
    monkeypatch.setenv("BAGCAMS_CACHE_DIR", str(tmp_path / "cache"))
    path = write_graph(tmp_path / "wide.onnx", (H, W))
    info = read_graph_info(path)
    assert info.input_size == (H, W) and H != W
    opts = ort_trt_options(path, info)
    assert ORT_TRT_BATCHES == (1, 8, 32)
    assert opts["trt_profile_min_shapes"] == "image:1x3x32x48,class_id:1"
    assert opts["trt_profile_opt_shapes"] == "image:8x3x32x48,class_id:8"
    assert opts["trt_profile_max_shapes"] == "image:32x3x32x48,class_id:32"
    tall = write_graph(tmp_path / "tall.onnx", (W, H))  # 48 rows, 32 columns: the other way round
    assert ort_trt_options(tall, read_graph_info(tall))["trt_profile_opt_shapes"] == "image:8x3x48x32,class_id:8"


def test_ort_trt_backend_hands_the_profile_threads_and_exact_to_the_session(graph, tmp_path, monkeypatch):
    """The EP needs onnxruntime-gpu: the session is faked, the options the backend builds are real."""
    monkeypatch.setenv("BAGCAMS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ort_backend, "available_ort_providers", lambda: list(ort_backend.PROVIDERS["ort-trt"]))
    calls = []

    class FakeSession:
        def get_providers(self):
            return list(ort_backend.PROVIDERS["ort-trt"])

        def get_outputs(self):
            return []

    def fake_session(path, threads=None, exact=False, providers=None):
        calls.append((path, threads, exact, providers))
        return FakeSession()

    monkeypatch.setattr(ort_backend, "plain_session", fake_session)
    with OrtBackend(str(graph), kind="ort-trt", threads=2, exact=True):
        pass
    ((path, threads, exact, providers),) = calls
    assert (path, threads, exact) == (str(graph), 2, True)
    (trt, trt_options), *rest = providers
    assert trt == "TensorrtExecutionProvider" and rest == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert trt_options["trt_profile_min_shapes"] == f"image:1x3x{H}x{W},class_id:1"
    assert trt_options["trt_profile_max_shapes"] == f"image:32x3x{H}x{W},class_id:32"
    assert Path(trt_options["trt_engine_cache_path"]).is_dir()  # made before the session starts
