"""``ov-cpu`` (OpenVINO runtime) against ``ort-cpu`` on the same exported graphs and inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError, MissingDependencyError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino is not importable (pip install -e '.[openvino]')"
)

SIZE = 96
NUM_CLASSES = 6


@pytest.fixture(scope="module")
def graphs(module_tmp) -> dict[str, Path]:
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model

    model = build_model("resnet18", NUM_CLASSES, seed=3, randomize_batchnorm=True)
    root = module_tmp("ov_graphs")
    out = {}
    for method in ("bagcams", "cam"):
        out[method] = root / f"{method}.onnx"
        layer = None if method == "cam" else "layer3"
        export_onnx(model, out[method], method=method, target_layer=layer, input_size=SIZE)
    return out


def _inputs(n: int, seed: int) -> np.ndarray:
    """Smooth colour blobs plus noise, normalised: activations that are not degenerate."""
    import cv2

    from bagcams_deploy.preprocessing import normalize

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (5, 5, 3)).astype(np.uint8)
        big = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC).astype(np.int32)
        out.append(normalize(np.clip(big + rng.integers(-25, 25, big.shape), 0, 255).astype(np.uint8)))
    return np.stack(out)


def _maps_agree(ref: np.ndarray, got: np.ndarray) -> None:
    for i in range(ref.shape[0]):
        r, g = ref[i].astype(np.float64).ravel(), got[i].astype(np.float64).ravel()
        pearson = float(np.corrcoef(r, g)[0, 1]) if r.std() > 0 else float(np.allclose(r, g))
        assert pearson >= 0.9995, f"map {i}: Pearson {pearson:.6f}"
        assert (np.abs(r - g) > 0.01).mean() <= 0.01, f"map {i}: too many pixels off by > 0.01"
        a, b = ref[i] >= 0.5, got[i] >= 0.5
        union = np.logical_or(a, b).sum()
        assert union == 0 or np.logical_and(a, b).sum() / union >= 0.99, f"map {i}: IoU < 0.99"


def _rel_l2(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.linalg.norm((got - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-30))


def test_ov_matches_ort(graphs):
    from bagcams_deploy.runtime.registry import create_backend

    x = _inputs(4, seed=0)
    ids = np.array([-1, 2, -1, 5], dtype=np.int64)
    with (
        create_backend("ov-cpu", graphs["bagcams"], threads=2) as ov,
        create_backend("ort-cpu", graphs["bagcams"], threads=2) as ort,
    ):
        assert ov.name == "ov-cpu"
        assert ov.spec == ort.spec
        got, ref = ov.infer(x, ids), ort.infer(x, ids)
        assert ov.last_inference_time is not None and ov.last_inference_time > 0
    assert set(got) == set(ref) == {"logits", "class_id_used", "features", "gradients", "cam"}
    for name in ref:
        assert got[name].shape == ref[name].shape and got[name].dtype == ref[name].dtype, name
    np.testing.assert_array_equal(got["class_id_used"], ref["class_id_used"])
    assert got["class_id_used"][1] == 2 and got["class_id_used"][3] == 5
    np.testing.assert_allclose(got["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    assert _rel_l2(ref["features"], got["features"]) <= 1e-4
    assert _rel_l2(ref["gradients"], got["gradients"]) <= 5e-3
    _maps_agree(ref["cam"][:, 0], got["cam"][:, 0])


def test_ov_dynamic_batch_and_cam_method(graphs):
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend
    from bagcams_deploy.runtime.ort_backend import OrtBackend

    x = _inputs(5, seed=1)
    ov = OpenVINOBackend(str(graphs["bagcams"]), threads=2)
    one = ov.infer(x[:1])
    five = ov.infer(x)
    assert one["cam"].shape == (1, 1, SIZE, SIZE) and five["cam"].shape == (5, 1, SIZE, SIZE)
    _maps_agree(five["cam"][:1, 0], one["cam"][:, 0])  # the batch does not change an image's map
    assert five["cam"].min() >= 0.0 and five["cam"].max() <= 1.0 + 1e-6
    ov.deactivate()

    cam_ov = OpenVINOBackend(str(graphs["cam"]), threads=2).infer(x[:2])
    cam_ort = OrtBackend(str(graphs["cam"]), threads=2).infer(x[:2])
    assert "gradients" not in cam_ov and set(cam_ov) == set(cam_ort)
    _maps_agree(cam_ort["cam"][:, 0], cam_ov["cam"][:, 0])


def test_ov_input_checks_come_from_the_base_class(graphs):
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend

    ov = OpenVINOBackend(str(graphs["bagcams"]))
    x = _inputs(2, seed=2)
    with pytest.raises(BagcamsError, match="out of range"):
        ov.infer(x, np.array([NUM_CLASSES, 0]))
    with pytest.raises(BagcamsError, match="model takes 96x96"):
        ov.infer(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(BagcamsError, match="not found"):
        OpenVINOBackend(str(Path(graphs["bagcams"]).with_name("missing.onnx")))


def test_ov_missing_dependency_is_a_clear_error(graphs, monkeypatch):
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install .bagcams-deploy\[openvino\]."):
        OpenVINOBackend(str(graphs["bagcams"]))


def test_cpp_support_prints_the_wheel_cmake_dir(capsys):
    from bagcams_deploy import cpp_support

    assert cpp_support.main(["--cmake-prefix"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert (path / "OpenVINOConfig.cmake").is_file()
    assert cpp_support.main(["--lib-dir"]) == 0
    assert any(Path(capsys.readouterr().out.strip()).glob("libopenvino.so*"))
