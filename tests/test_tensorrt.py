"""TensorRT engines: plan records and compatibility (pure, run everywhere), CLI errors without TensorRT,
and, on a GPU with TensorRT and PyCUDA, build + run against ONNX Runtime's maps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.runtime.tensorrt_build import (
    SIDECAR_FORMAT,
    BatchProfile,
    SystemInfo,
    check_plan_compatible,
    read_sidecar,
    sidecar_path,
)

from .conftest import TEST_SIZE
from .test_cli import assert_one_line_error

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt and pycuda (pip install 'bagcams-deploy[gpu]')")

HERE = SystemInfo("10.13.3.9", "NVIDIA A10", (8, 6))


def record_for(system: SystemInfo) -> dict:
    return {
        "format": SIDECAR_FORMAT,
        "built_with": {
            "tensorrt_version": system.tensorrt_version,
            "device_name": system.device_name,
            "compute_capability": list(system.compute_capability),
        },
    }


def test_same_system_is_compatible():
    check_plan_compatible(record_for(HERE), HERE, "m.plan")


@pytest.mark.parametrize(
    ("built", "needle"),
    [
        (SystemInfo("10.12.0.36", "NVIDIA A10", (8, 6)), "TensorRT 10.12.0.36 but this is TensorRT 10.13.3.9"),
        (SystemInfo("10.13.3.9", "NVIDIA A40", (8, 6)), "built for NVIDIA A40 (sm_86) but this GPU is NVIDIA A10"),
        (SystemInfo("10.13.3.9", "NVIDIA H100", (9, 0)), "built for NVIDIA H100 (sm_90)"),
    ],
)
def test_other_tensorrt_or_gpu_is_refused_with_both_sides_named(built, needle):
    with pytest.raises(BagcamsError, match="rebuild it here") as err:
        check_plan_compatible(record_for(built), HERE, "m.plan")
    assert needle in str(err.value)


def test_batch_profile_is_checked():
    BatchProfile(1, 1, 1).check()
    for bad in (BatchProfile(0, 1, 2), BatchProfile(4, 2, 8), BatchProfile(1, 16, 8)):
        with pytest.raises(BagcamsError, match="batch"):
            bad.check()


def test_plan_without_record_or_with_tampered_bytes_is_refused(tmp_path):
    plan = tmp_path / "m.plan"
    with pytest.raises(BagcamsError, match="not found"):
        read_sidecar(plan)
    plan.write_bytes(b"\x00plan-bytes")
    with pytest.raises(BagcamsError, match="rebuild the plan with build-engine"):
        read_sidecar(plan)
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(BagcamsError, match="not valid JSON"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps({"format": SIDECAR_FORMAT, "plan_sha256": "0" * 64}))
    with pytest.raises(BagcamsError, match="sha256 differs"):
        read_sidecar(plan)


@pytest.fixture(scope="module")
def small_graph(models, module_tmp) -> Path:
    out = module_tmp("trt") / "r18.onnx"
    export_onnx(models["resnet18"], out, method="bagcams", target_layer="layer3", input_size=TEST_SIZE["resnet18"])
    return out


def test_build_engine_cli_errors_are_one_line(cli, small_graph, tmp_path):
    r = cli("build-engine", tmp_path / "missing.onnx", "--output", tmp_path / "m.plan")
    assert r.code == 1 and "not found" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("build-engine", small_graph, "--output", tmp_path / "m.plan", "--min-batch", "4", "--opt-batch", "2")
    assert r.code == 1 and "min <= opt <= max" in r.err
    r = cli("build-engine", small_graph, "--output", tmp_path / "m.plan", "--workspace-gb", "0")
    assert r.code == 1 and "--workspace-gb" in r.err
    if not HAVE_TRT:  # a valid request on a machine without TensorRT: say what to install
        r = cli("build-engine", small_graph, "--output", tmp_path / "m.plan")
        assert r.code == 1 and "tensorrt" in r.err.lower() and len(r.err.strip().splitlines()) == 1
        assert not (tmp_path / "m.plan").exists()


def test_plan_backends_refuse_a_plan_without_record(cli, tmp_path, checkpoints):
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"\x00plan-bytes")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
    for cmd in (["localize", "--model", plan, image, "--out", tmp_path / "o"], ["engine-info", plan]):
        r = cli(*cmd)
        assert r.code == 1 and "build-engine" in r.err, r.err


# ------------------------------------------------------------------------------------------------ GPU


@pytest.fixture(scope="module")
def engines(small_graph, models, module_tmp):
    from bagcams_deploy.runtime.tensorrt_build import build_engine

    root = module_tmp("plans")
    nocam = root / "r18_nocam.onnx"
    export_onnx(models["resnet18"], nocam, method="bagcams", target_layer="layer3",
                input_size=TEST_SIZE["resnet18"], with_cam=False)  # fmt: skip
    half = root / "r18_fp16.onnx"
    export_onnx(models["resnet18"], half, method="bagcams", target_layer="layer3",
                input_size=TEST_SIZE["resnet18"], precision="fp16")  # fmt: skip
    prof = BatchProfile(1, 4, 8)
    # IEEE float32 engines (no TF32), so that they can be held to float32 agreement with ONNX Runtime
    return {
        "cam": (small_graph, build_engine(small_graph, root / "cam.plan", prof, tf32=False) and root / "cam.plan"),
        "nocam": (nocam, build_engine(nocam, root / "nocam.plan", prof, tf32=False) and root / "nocam.plan"),
        "fp16": (half, build_engine(half, root / "fp16.plan", prof) and root / "fp16.plan"),
    }


def _maps(backend, images, ids=None):
    with backend as b:
        return b.infer(images, ids)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize(("plan_key", "backend", "cuda_graph"),
                         [("nocam", "tensorrt", False), ("cam", "tensorrt-cam", False), ("nocam", "tensorrt", True),
                          ("fp16", "tensorrt", False)])  # fmt: skip
def test_engine_maps_match_onnx_runtime(engines, plan_key, backend, cuda_graph):
    from bagcams_deploy.runtime.ort_backend import OrtBackend
    from bagcams_deploy.runtime.tensorrt_backend import TensorRTBackend

    _, plan = engines[plan_key]
    rng = np.random.default_rng()
    size = TEST_SIZE["resnet18"]
    images = rng.standard_normal((3, 3, size, size)).astype(np.float32)
    ids = np.array([-1, 2, 5])
    ref = _maps(OrtBackend(str(engines["cam"][0])), images, ids)
    trt_out = _maps(TensorRTBackend(str(plan), use_kernel=(backend == "tensorrt"), cuda_graph=cuda_graph), images, ids)
    assert np.array_equal(trt_out["class_id_used"], ref["class_id_used"])
    bar = 0.999 if plan_key == "fp16" else 0.99999
    for i in range(3):
        assert _pearson(trt_out["cam"][i], ref["cam"][i]) > bar
    assert np.isfinite(trt_out["cam"]).all() and trt_out["cam"].min() >= 0 and trt_out["cam"].max() <= 1


@pytest.mark.gpu
@needs_trt
def test_engine_refuses_batches_outside_its_profile_and_edited_records(engines, tmp_path):
    from bagcams_deploy.runtime.tensorrt_backend import TensorRTBackend

    _, plan = engines["nocam"]
    size = TEST_SIZE["resnet18"]
    with TensorRTBackend(str(plan)) as b, pytest.raises(BagcamsError, match="outside the engine's profile"):
        b.infer(np.zeros((9, 3, size, size), np.float32))
    copy = tmp_path / "copy.plan"
    copy.write_bytes(plan.read_bytes())
    record = json.loads(sidecar_path(plan).read_text())
    record["built_with"]["tensorrt_version"] = "0.0.1"
    sidecar_path(copy).write_text(json.dumps(record))
    with pytest.raises(BagcamsError, match=r"built with TensorRT 0\.0\.1"):
        TensorRTBackend(str(copy)).activate()


def _fake_plan(graph: Path, plan: Path) -> None:
    """A plan record as build-engine writes it, over placeholder bytes (no TensorRT needed)."""
    import dataclasses
    import hashlib

    from bagcams_deploy.export.contract import read_graph_info

    plan.write_bytes(b"\x00not-a-real-engine")
    info = {k: v for k, v in dataclasses.asdict(read_graph_info(graph)).items() if k != "path"}
    record = record_for(HERE) | {
        "graph": info,
        "class_names": None,
        "profile": {"min_batch": 1, "opt_batch": 2, "max_batch": 4},
        "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
    }
    sidecar_path(plan).write_text(json.dumps(record))


def test_plan_record_stands_in_for_the_graph_metadata(small_graph, tmp_path):
    from bagcams_deploy.export.contract import read_graph_info
    from bagcams_deploy.runtime.open import read_model_info

    plan = tmp_path / "m.plan"
    _fake_plan(small_graph, plan)
    got, want = read_model_info(plan), read_graph_info(small_graph)
    assert got.path == str(plan)
    for field in ("method", "target_layer", "architecture", "num_classes", "input_size", "mean", "std",
                  "gradient_scale", "precision", "outputs"):  # fmt: skip
        assert getattr(got, field) == getattr(want, field), field


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [("mean", [0.485, 0.456], "'mean' must hold 3 numbers"), ("std", [0.2, 0.2, 0.2, 0.2], "'std' must hold 3"),
     ("mean", 0.5, "'mean' is not a list of numbers"), ("mean", "485", "'mean' is not a list of numbers"),
     ("std", [True, 0.2, 0.2], "'std' is not a list of numbers"),
     ("outputs", "logits,cam", "'outputs' must be a list of output names"),
     ("outputs", ["logits", 3], "'outputs' must be a list of output names"),
     ("large_feature_map", "false", "'large_feature_map' must be true or false"),
     ("num_classes", 5.7, "'num_classes' must be an integer"), ("num_classes", True, "'num_classes' must be an"),
     ("method", ["bagcams"], "'method' must be a method name"),
     ("input_size", [64], "'input_size' must be "),
     ("gradient_scale", "1", "'gradient_scale' must be a number")],
)  # fmt: skip
def test_plan_record_fields_are_held_to_the_types_build_engine_writes(cli, small_graph, checkpoints, tmp_path,
                                                                      field, value, needle):  # fmt: skip
    """A plan record's mean/std, like a graph's, hold one number per RGB channel: a hand-edited record
    with two once became a GraphInfo whose mean had two (its type says three), and ``verify``/``localize``
    ended in a ``zip() argument 2 is longer than argument 1`` traceback at the first batch. The other
    fields likewise: a string ``outputs`` was split into letters, ``"false"`` read as a true flag, 5.7
    classes as 5."""
    from bagcams_deploy.runtime.open import read_model_info

    plan = tmp_path / "m.plan"
    _fake_plan(small_graph, plan)
    record = json.loads(sidecar_path(plan).read_text())
    record["graph"][field] = value
    sidecar_path(plan).write_text(json.dumps(record))
    with pytest.raises(BagcamsError, match=needle):
        read_model_info(plan)
    r = cli("verify", plan, "--checkpoint", checkpoints["resnet18"], "--num-random", "1")
    assert_one_line_error(r, needle, sidecar_path(plan).name)


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where TensorRT is missing")
def test_verify_on_a_plan_without_tensorrt_says_what_to_install(cli, small_graph, checkpoints, tmp_path):
    plan = tmp_path / "m.plan"
    _fake_plan(small_graph, plan)
    r = cli("verify", plan, "--checkpoint", checkpoints["resnet18"], "--num-random", "1")
    assert r.code == 1 and "tensorrt" in r.err.lower() and len(r.err.strip().splitlines()) == 1, r.err
