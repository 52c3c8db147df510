"""The library inside a long-running server: backends shared between threads, weights reloaded in
place, odd inputs from callers. Every caller gets its own result or a BagcamsError."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model
from bagcams_deploy.reference import compute_cams
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.runtime.open import open_model

SIZE = 64
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def setup(module_tmp):
    model = build_model("resnet18", 7, seed=0, randomize_batchnorm=True)
    graph = module_tmp("server") / "r18.onnx"
    export_onnx(model, graph, method="bagcams", target_layer="layer3", input_size=SIZE)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32) for n in (1, 2, 3, 4)]
    return {"model": model, "graph": graph, "batches": batches}


def _hammer(backend, batches, calls: int = 24) -> list[dict]:
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda k: backend.infer(batches[k % len(batches)]), range(calls)))


@pytest.mark.parametrize("name", ["ort-cpu", "ov-cpu", "torch-analytic"])
def test_a_backend_shared_by_threads_gives_each_caller_its_own_result(setup, name):
    if name == "ov-cpu" and not HAS_OPENVINO:
        pytest.skip("needs openvino (pip install -e '.[openvino]')")
    batches = setup["batches"]
    with create_backend(name, graph=setup["graph"], model=setup["model"], threads=1) as b:
        alone = [b.infer(x) for x in batches]
        together = _hammer(b, batches)
    for k, out in enumerate(together):
        want = alone[k % len(batches)]
        for key in ("logits", "cam"):
            assert out[key].shape == want[key].shape, (name, k, key)
            np.testing.assert_array_equal(out[key], want[key], err_msg=f"{name} call {k} {key}")


def test_reference_backends_sharing_a_model_across_threads(setup):
    """compute_cams hooks the model's ReLUs (BagCAMs) and toggles requires_grad: two threads over one
    model used to leak guided gradients into GradCAM, or crash inside autograd."""
    model, x = setup["model"], setup["batches"][1]
    alone = compute_cams(model, torch.from_numpy(x), "gradcam", "layer3").gradients
    bag = create_backend("torch-reference", model=model, method="bagcams", target_layer="layer3")
    grad = create_backend("torch-reference", model=model, method="gradcam", target_layer="layer3")
    with bag, grad, ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit((bag if k % 2 else grad).infer, x) for k in range(16)]
        results = [(k % 2, j.result()) for k, j in enumerate(jobs)]
    for is_bagcams, out in results:
        if not is_bagcams:
            np.testing.assert_array_equal(out["gradients"], alone.numpy())
    assert all(p.grad is None for p in model.parameters())


def test_torch_analytic_follows_weights_reloaded_in_place(setup):
    model = build_model("resnet18", 7, seed=0, randomize_batchnorm=True)
    x = setup["batches"][1]
    with create_backend("torch-analytic", model=model, method="bagcams", target_layer="layer3") as b:
        b.infer(x)
        model.load_state_dict(build_model("resnet18", 7, seed=1, randomize_batchnorm=True).state_dict())
        out = b.infer(x)
        ref = compute_cams(model, torch.from_numpy(x), "bagcams", "layer3")
        np.testing.assert_allclose(out["logits"], ref.logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["cam"], ref.maps.numpy(), atol=1e-3)
        other = build_model("resnet18", 7, seed=2, randomize_batchnorm=True)
        for mine, theirs in zip(model.parameters(), other.parameters(), strict=True):
            mine.data = theirs.data.clone()  # new storage, no version bump
        out = b.infer(x)
        ref = compute_cams(model, torch.from_numpy(x), "bagcams", "layer3")
        np.testing.assert_allclose(out["logits"], ref.logits.numpy(), rtol=1e-4, atol=1e-4)
    assert b.net is None  # closing frees the folded copy of the weights


@pytest.mark.parametrize("name", ["ort-cpu", "ov-cpu"])
def test_every_negative_class_id_means_the_argmax(setup, name):
    """OpenVINO runs int64 ids as 32-bit: -2**32 + 3 used to select class 3."""
    if name == "ov-cpu" and not HAS_OPENVINO:
        pytest.skip("needs openvino (pip install -e '.[openvino]')")
    x = setup["batches"][0]
    with create_backend(name, graph=setup["graph"]) as b:
        argmax = int(b.infer(x)["class_id_used"][0])
        for cid in (-1, -(2**32) + 3, np.iinfo(np.int64).min):
            assert int(b.infer(x, np.array([cid]))["class_id_used"][0]) == argmax, cid


def test_odd_library_inputs_get_a_bagcams_error(setup):
    with create_backend("ort-cpu", graph=setup["graph"]) as b:
        bf16 = torch.from_numpy(setup["batches"][0]).to(torch.bfloat16)
        out = b.infer(bf16)  # cast like any float, as compute_cams does
        assert out["cam"].shape == (1, 1, SIZE, SIZE)
        with pytest.raises(BagcamsError, match="not a ragged list"):
            b.infer([[1.0, 2.0], [3.0]])
        with pytest.raises(BagcamsError, match="class ids must be integers"):
            b.infer(setup["batches"][0], torch.tensor([1.0], dtype=torch.bfloat16))
    with pytest.raises(BagcamsError, match="unknown device"):
        create_backend("torch-analytic", model=setup["model"], device=None)
    with pytest.raises(BagcamsError, match="must be a path"):
        open_model(None)
    with open_model(PurePosixPath(setup["graph"])) as b:  # any os.PathLike
        assert b.name in ("ort-cpu", "ov-cpu")
    assert create_backend("torch-analytic", model=setup["model"], device=torch.device("cpu")).device.type == "cpu"
    with pytest.raises(BagcamsError, match="per CPU available here"):
        create_backend("ort-cpu", graph=setup["graph"], threads=100_000)
