"""The library leaves the caller's model as it found it, and the model's state cannot change a map.

Maps are defined in eval mode. A training loop that logs maps every N steps hands us a model in
train mode with gradients accumulated: the maps must be the eval-mode ones, and the loop must go on
training afterwards with its flags, BatchNorm statistics, gradients and device untouched. A half or
double model, torch's inference mode and a CAM target layer that CAM cannot use are handled here too.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.analytic import AnalyticCAM
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model
from bagcams_deploy.reference import compute_cams
from bagcams_deploy.runtime import create_backend

SIZE = 64


def _model(arch: str = "resnet18", seed: int = 5):
    return build_model(arch, 6, seed=seed, randomize_batchnorm=True)


def _images(n: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["resnet18", "inception_v3"])
def test_torch_analytic_ignores_train_mode_set_after_it_was_built(arch):
    """The analytic module is a snapshot: ``model.train()`` later neither changes its maps (BatchNorm
    on batch statistics, Inception's dropout) nor lets it overwrite the model's running statistics."""
    model = _model(arch)
    x = _images(2, 96 if arch == "inception_v3" else SIZE).numpy()
    with create_backend("torch-analytic", model=model) as b:
        before = b.infer(x)["cam"]
        state = _state(model)
        model.train()
        during = [b.infer(x)["cam"] for _ in range(2)]
    assert model.training and all(m.training for m in model.modules())
    assert _same_state(model, state), "a call changed the model's BatchNorm running statistics"
    for cam in during:
        np.testing.assert_array_equal(cam, before)


def test_compute_cams_gives_eval_maps_and_hands_back_flags_and_gradients():
    """A model in train mode with accumulated gradients: eval-mode maps, and afterwards the same
    training flags, gradients and statistics, also with the published autograd (which zeroes grads)."""
    model = _model()
    x = _images()
    model.train()
    model(x).sum().backward()  # a training step's forward (it updates the running statistics) and backward
    model.classifier.fc.eval()  # a mixed state must come back as it was, module by module
    expected = compute_cams(copy.deepcopy(model).eval(), x, "gradcam").maps
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: m.training for n, m in model.named_modules()}
    state = _state(model)
    for published in (False, True):
        for method in ("gradcam", "bagcams", "cam"):
            r = compute_cams(model, x, method, published_autograd=published)
            if method == "gradcam":
                torch.testing.assert_close(r.maps, expected, rtol=0, atol=1e-6)
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert _same_state(model, state)
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), f"{n}: the caller's gradient was replaced"


def test_backends_and_export_leave_the_models_mode_alone(tmp_path):
    model = _model().train()
    state = _state(model)
    x = _images().numpy()
    with create_backend("torch-reference", model=model) as b:
        ref = b.infer(x)["cam"]
    export_onnx(model, tmp_path / "g.onnx", input_size=SIZE)
    with create_backend("ort-cpu", graph=tmp_path / "g.onnx") as g:
        np.testing.assert_allclose(g.infer(x)["cam"], ref, atol=2e-4)
    assert model.training and all(m.training for m in model.modules())
    assert _same_state(model, state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_double_or_half_model_gives_float32_outputs_close_to_its_float32_self(dtype):
    x = _images().numpy()
    with create_backend("torch-analytic", model=_model().to(dtype).float()) as b:  # the same weights
        want = b.infer(x)
    other = _model().to(dtype)
    for kind in ("torch-analytic", "torch-reference"):
        if kind == "torch-reference" and dtype == torch.float16:
            continue  # autograd through a half model on a CPU is its own precision study, not ours
        with create_backend(kind, model=other) as b:
            got = b.infer(x)
        # float32 as the contract says; a double model's reference keeps float64 (verify's ground truth)
        want_dtype = np.float64 if (kind, dtype) == ("torch-reference", torch.float64) else np.float32
        assert {k: v.dtype for k, v in got.items() if k != "class_id_used"} == {
            k: np.dtype(want_dtype) for k in got if k != "class_id_used"
        }
        tol = 1e-6 if kind == "torch-analytic" else 1e-4
        np.testing.assert_allclose(got["cam"], want["cam"], atol=tol)
    assert next(other.parameters()).dtype == dtype  # the caller's model keeps its type


def test_export_of_a_double_model_writes_the_float32_graph(tmp_path):
    model = _model()
    double = _model().double()
    x = _images().numpy()
    export_onnx(model, tmp_path / "f.onnx", input_size=SIZE)
    export_onnx(double, tmp_path / "d.onnx", input_size=SIZE)
    with (
        create_backend("ort-cpu", graph=tmp_path / "f.onnx") as a,
        create_backend("ort-cpu", graph=tmp_path / "d.onnx") as b,
    ):
        np.testing.assert_allclose(b.infer(x)["cam"], a.infer(x)["cam"], atol=1e-5)
    assert next(double.parameters()).dtype == torch.float64


def test_inference_mode_is_no_obstacle():
    """Serving code wraps calls in ``torch.inference_mode()``; autograd still gives the same maps."""
    model = _model()
    x = _images()
    want = compute_cams(model, x, "bagcams").maps
    with torch.inference_mode():
        inside = compute_cams(model, x, "bagcams").maps
        made_inside = x.clone()
        with create_backend("torch-reference", model=model) as b:
            served = b.infer(x.numpy())["cam"]
    outside = compute_cams(model, made_inside, "bagcams").maps
    for got in (inside, outside, torch.from_numpy(served)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_cam_at_another_layer_is_refused_everywhere(tmp_path):
    """CAM maps the classifier's input: a named layer2 is an error in every entry point, not a silent
    switch to layer4 (the CLI refused it already)."""
    model = _model()
    x = _images()
    calls = {
        "compute_cams": lambda: compute_cams(model, x, "cam", "layer2"),
        "AnalyticCAM": lambda: AnalyticCAM(model, "cam", "layer2"),
        "create_backend": lambda: create_backend("torch-analytic", model=model, method="cam", target_layer="layer2"),
        "export_onnx": lambda: export_onnx(model, tmp_path / "c.onnx", "cam", "layer2", input_size=SIZE),
    }
    for name, call in calls.items():
        with pytest.raises(BagcamsError, match="method cam maps the classifier's input"):
            call()
        assert not (tmp_path / "c.onnx").exists(), name
    assert compute_cams(model, x, "cam", "layer4").target_layer == "layer4"


def test_analytic_run_checks_its_class_ids():
    net = AnalyticCAM(_model(), "gradcam")
    x = _images()
    with pytest.raises(BagcamsError, match="out of range: the model has 6 classes"):
        net.run(x, torch.tensor([0, 6]))
    with pytest.raises(BagcamsError, match=r"one per image \(2\) or one for all, got shape \(3,\)"):
        net.run(x, torch.tensor([0, 1, 2]))
    with pytest.raises(BagcamsError, match="integers"):
        net.run(x, torch.tensor([0.0, 1.0]))
    assert net.run(x, torch.tensor([3, -1]))["class_id_used"][0] == 3


def test_fp16_calibration_images_must_be_at_the_graphs_size(tmp_path):
    with pytest.raises(BagcamsError, match="calibration images are 96x96, the graph's input is 64x64"):
        export_onnx(_model(), tmp_path / "h.onnx", input_size=SIZE, precision="fp16", calibration_images=_images(2, 96))
    assert not (tmp_path / "h.onnx").exists()


def test_a_model_that_is_not_a_wsol_model_is_named():
    with pytest.raises(BagcamsError, match=r"model must be a WSOLModel.*got Linear"):
        export_onnx(torch.nn.Linear(2, 2), "never.onnx")
    with pytest.raises(BagcamsError, match=r"model must be a WSOLModel.*got Linear"):
        AnalyticCAM(torch.nn.Linear(2, 2))


def test_hooks_on_the_callers_model_neither_break_nor_leak_into_the_analytic_copy(tmp_path):
    """A recorder hook that keeps a layer's outputs (pytorch-grad-cam's pattern) made the deep copy
    fail once it held tensors of an autograd graph, and a copied hook kept recording out of sight.
    The copy is built from tensors alone: it works, shares the float32 weights (no second copy in
    memory) and runs none of the caller's hooks, while torch-reference still runs the model itself."""

    class Recorder:
        def __init__(self) -> None:
            self.outputs: list[torch.Tensor] = []

        def __call__(self, module, inputs, output) -> None:
            self.outputs.append(output)

    model = _model()
    rec = Recorder()
    model.extractor.layer1.register_forward_hook(rec)
    x = _images()
    model.train()
    model(x).sum().backward()  # the hook now holds tensors of an autograd graph
    model.eval()
    seen = len(rec.outputs)
    net = AnalyticCAM(model, "bagcams")
    assert next(net.prefix.parameters()).data_ptr() == next(model.parameters()).data_ptr()
    with create_backend("torch-analytic", model=model) as b:
        for _ in range(3):
            analytic = b.infer(x.numpy())["cam"]
    assert len(rec.outputs) == seen
    with create_backend("torch-reference", model=model) as b:
        reference = b.infer(x.numpy())["cam"]
    assert len(rec.outputs) == seen + 1
    np.testing.assert_allclose(analytic, reference, atol=2e-4)
    export_onnx(model, tmp_path / "hooked.onnx", input_size=SIZE)  # the export's copy works too


def test_compute_cams_refuses_a_uint64_class_id_that_would_wrap_to_the_argmax():
    with pytest.raises(BagcamsError, match="class id 18446744073709551615 out of range"):
        compute_cams(_model(), _images(1), "gradcam", class_ids=np.array([2**64 - 1], dtype=np.uint64))
