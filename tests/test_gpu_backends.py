"""GPU backends of the PyTorch side (run only where a CUDA device exists; skipped with a reason here)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from bagcams_deploy.reference import compute_cams
from bagcams_deploy.runtime import create_backend

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["torch-analytic", "torch-analytic-cudagraph", "torch-reference"])
def test_cuda_backends_match_the_cpu_reference(models, name):
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    model = models["resnet50"]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    ref = compute_cams(model, x, "bagcams", "layer3")
    b = create_backend(name, model=model, method="bagcams", target_layer="layer3", device="cuda")
    with b:
        for _ in range(2):  # the second call replays the captured graph
            out = b.infer(x.numpy())
    model.cpu()
    for i in range(3):
        r = np.corrcoef(out["cam"][i].ravel(), ref.maps[i].numpy().ravel())[0, 1]
        assert r >= 0.999, (name, i, r)
    assert out["class_id_used"].tolist() == ref.class_ids.tolist()


def test_cuda_arithmetic_meets_the_bars_it_reports(models):
    """On a GPU: torch-analytic under cuDNN's default (TF32 on Ampere+) passes the bars of the math it
    reports, and with TF32 off it is float32 and passes the float32 bars (checks the CPU emulation)."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from bagcams_deploy.verify import verify_backend

    model = copy.deepcopy(models["resnet50"])  # shared by the backend (on the GPU) and verify's CPU reference
    for allow in (True, False):
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow):
            b = create_backend("torch-analytic", model=model, method="bagcams", target_layer="layer3", device="cuda")
            with b:
                expected = "tf32" if allow and torch.cuda.get_device_capability()[0] >= 8 else "fp32"
                assert b.math_precision == expected
                rep = verify_backend(b, model, "torch-analytic", num_random=4, seed=3, batch_size=2)
        assert rep.precision == expected and rep.passed, (expected, rep.failures)
