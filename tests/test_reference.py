"""The reference against an independent computation: autograd with a guided-ReLU autograd function
swapped in for nn.ReLU modules, log(s_c) differentiated by autograd itself, and the map formulas
written out here in numpy with OpenCV resizing (no code shared with the package's formulas)."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.reference import compute_cams

from .conftest import TEST_SIZE

LAYERS = {"resnet50": ["layer2", "layer3", "layer4"], "inception_v3": ["Mixed_6b", "SPG_A3_1b", "SPG_A3_2b"]}


class _Guided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = torch.relu(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, torch.clamp(g, min=0), torch.zeros_like(g))


class _GuidedModule(nn.Module):
    def forward(self, x):
        return _Guided.apply(x)


def _swap_relu_modules(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, _GuidedModule())
        else:
            _swap_relu_modules(child)


def independent_gradients(model, x, layer, guided_log, class_ids):
    """Plain autograd on a copy of the model: guided ReLU modules and log(s_c) when ``guided_log``."""
    m = copy.deepcopy(model)
    if guided_log:
        _swap_relu_modules(m)
    h = x.detach().clone()
    feats = None
    for name in m.extractor.stage_names:
        h = getattr(m.extractor, name)(h)
        if name == layer:
            feats = h
            feats.retain_grad()
    logits = m.classifier(h)
    ids = torch.as_tensor(class_ids)
    s = logits[torch.arange(len(ids)), ids]
    (torch.log(s) if guided_log else s).sum().backward()
    f = feats.detach().numpy().astype(np.float64)
    return (
        f,
        feats.grad.numpy().astype(np.float64),
        s.detach().numpy().astype(np.float64),
        logits.detach().numpy(),
    )


def formula_maps(method, F, g, s, size):
    """SPEC section 3 written out in numpy; OpenCV's bilinear resize (half-pixel, as align_corners=False)."""
    maps = []
    for i in range(F.shape[0]):
        f, gi = F[i], g[i]
        if method == "bagcams":
            t = gi * f
            a = 1 + t.mean(axis=(1, 2))
            raw = np.maximum(a[:, None, None] * t, 0).sum(0)
        elif method == "gradcam":
            raw = np.maximum((gi.mean(axis=(1, 2))[:, None, None] * f).sum(0), 0)
        elif method == "gradcampp":
            denom = 2 * gi**2 + (f * gi**3).sum(axis=(1, 2))[:, None, None]
            denom = np.where(denom != 0, denom, 1.0) + 1e-7
            w = (gi**2 / denom * np.maximum(np.exp(s[i]) * gi, 0)).sum(axis=(1, 2))
            raw = np.maximum((w[:, None, None] * f).sum(0), 0)
        else:  # pcs
            raw = np.maximum((gi * f).sum(0), 0)
        up = cv2.resize(raw, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        maps.append((up - up.min()) / (up.max() - up.min()))
    return np.stack(maps)


def independent(model, x, layer, method, class_ids):
    F, g, s, logits = independent_gradients(model, x, layer, method == "bagcams", class_ids)
    return g, formula_maps(method, F, g, s, tuple(x.shape[2:])), logits


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-5), (torch.float32, 1e-4)])
@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_gradient_methods_match_independent_autograd(models, arch, dtype, tol):
    """Every gradient method, two different random inputs and two target layers per architecture."""
    model = copy.deepcopy(models[arch]).to(dtype)
    size = TEST_SIZE[arch]
    for seed, layer in ((0, LAYERS[arch][0]), (1, LAYERS[arch][1])):
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        with torch.no_grad():
            logits = model(x)
        ids = logits.argmax(1)
        assert (logits.gather(1, ids[:, None]) > 0).all()  # log(s_c) is defined for the independent side
        plain = independent_gradients(model, x, layer, False, ids)
        guided = independent_gradients(model, x, layer, True, ids)
        for method in ("bagcams", "gradcam", "gradcampp", "pcs"):
            F, g, s, ind_logits = guided if method == "bagcams" else plain
            r = compute_cams(model, x, method, layer, ids)
            assert _rel(r.gradients.double().numpy(), g) < tol, method
            assert _rel(r.features.double().numpy(), F) < tol, method
            np.testing.assert_allclose(r.logits.double().numpy(), ind_logits, rtol=tol, atol=tol)
            maps = formula_maps(method, F, g, s, (size, size))
            # float32: min-max normalisation amplifies rounding on nearly flat maps; 1e-3 absolute there
            atol = tol if dtype == torch.float64 else 1e-3
            np.testing.assert_allclose(r.maps[:, 0].double().numpy(), maps, atol=atol, err_msg=method)
            assert r.maps.shape == (2, 1, size, size) and r.class_ids.tolist() == ids.tolist()


@pytest.mark.parametrize("arch", ["resnet50", "inception_v3"])
def test_cam_matches_formula_with_opencv_bicubic(models, arch):
    model = copy.deepcopy(models[arch]).double()
    size = TEST_SIZE[arch]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    r = compute_cams(model, x, "cam", class_ids=[0, 3, -1])
    with torch.no_grad():
        feats, logits = model.features_and_logits(x, model.spec.target_layers[-1])
    assert r.target_layer == model.spec.target_layers[-1]
    w = model.classifier.fc.weight[:, :, 0, 0].detach().numpy()
    b = model.classifier.fc.bias.detach().numpy()
    ids = [0, 3, int(logits[2].argmax())]
    for i, c in enumerate(ids):
        m = np.tensordot(w[c], feats[i].numpy(), axes=1) + b[c]
        m = (m - m.min()) / (m.max() - m.min())
        up = cv2.resize(m, (size, size), interpolation=cv2.INTER_CUBIC)
        up = (up - up.min()) / (up.max() - up.min())
        np.testing.assert_allclose(r.maps[i, 0].numpy(), up, atol=1e-5)
    assert r.gradients is None and r.class_ids.tolist() == ids


def test_bagcams_guided_rule_only_at_relu_modules(models):
    """Inception's BasicConv2d relu is functional: guided only at SPG's nn.ReLU. Swapping *every* relu
    for a guided one must therefore give a different gradient at Mixed_6e than the reference."""
    model = copy.deepcopy(models["inception_v3"]).double()
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r = compute_cams(model, x, "bagcams", "Mixed_6b")
    _, g, _, _ = independent_gradients(model, x, "Mixed_6b", True, r.class_ids)
    assert _rel(r.gradients.numpy(), g) < 1e-10
    import bagcams_deploy.models.inception as inc

    original = inc.F.relu
    inc.F.relu = lambda t, inplace=False: _Guided.apply(t)  # all relus guided: must differ
    try:
        r_all = compute_cams(model, x, "bagcams", "Mixed_6b", r.class_ids)
    finally:
        inc.F.relu = original
    assert _rel(r_all.gradients.numpy(), g) > 1e-3


def test_nonpositive_target_logit_stays_finite_and_is_reported(models):
    model = models["resnet50"]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ids = model(x).argmin(1)  # the least likely class: logit < 0
    r = compute_cams(model, x, "bagcams", "layer3", ids)
    assert (r.scores < 0).all() and r.nonpositive_score_images() == [0, 1]
    assert torch.isfinite(r.gradients).all() and torch.isfinite(r.maps).all()
    # The published behaviour: the 1/s_c factor is applied, i.e. a sign flip of the seed.
    m = copy.deepcopy(model)
    _swap_relu_modules(m)
    xg = x.clone()
    feats = None
    h = xg
    for name in m.extractor.stage_names:
        h = getattr(m.extractor, name)(h)
        if name == "layer3":
            feats = h
            feats.retain_grad()
    s = m.classifier(h)[torch.arange(2), ids]
    (s.detach().reciprocal() * s).sum().backward()
    assert _rel(r.gradients.numpy(), feats.grad.numpy()) < 1e-4


def test_constant_image_gives_zero_map_not_nan(models):
    for method in ("bagcams", "gradcam", "gradcampp", "pcs", "cam"):
        r = compute_cams(models["resnet18"], torch.zeros(1, 3, 64, 64), method, "layer4")
        assert torch.isfinite(r.maps).all()
        # layer4 gradients are W_c/hw everywhere and features of a constant image are nearly constant
        assert float(r.maps.min()) >= 0 and float(r.maps.max()) <= 1


def test_exactly_constant_map_becomes_zeros():
    from bagcams_deploy.methods.aggregation import normalize_minmax

    m = torch.stack([torch.full((1, 5, 5), 3.0), torch.arange(25.0).view(1, 5, 5), torch.full((1, 5, 5), float("nan"))])
    out = normalize_minmax(m)
    assert torch.equal(out[0], torch.zeros(1, 5, 5)) and torch.equal(out[2], torch.zeros(1, 5, 5))
    assert float(out[1].min()) == 0 and float(out[1].max()) == 1


def test_gradcampp_with_huge_logits_is_finite_and_matches_float64_published_formula(models):
    model = copy.deepcopy(models["resnet18"])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # top logits near 300: exp overflows float32 (> ~88) but not float64 (< ~709)
        factor = 300.0 / float(model(x).max(1).values.min())
        model.classifier.fc.weight.mul_(factor)
        model.classifier.fc.bias.mul_(factor)
    r = compute_cams(model, x, "gradcampp", "layer3")
    assert (r.scores > 100).all(), r.scores  # exp(s_c) overflows float32 here
    assert torch.isfinite(r.maps).all()
    model64, x64 = model.double(), x.double()
    _, maps64, _ = independent(model64, x64, "layer3", "gradcampp", r.class_ids)  # exp(s_c) finite in float64
    r64 = compute_cams(model64, x64, "gradcampp", "layer3", r.class_ids)
    np.testing.assert_allclose(r64.maps[:, 0].numpy(), maps64, atol=1e-6)  # same formula without exp(s_c)
    np.testing.assert_allclose(r.maps[:, 0].numpy(), maps64, atol=1e-2)  # float32 rounding only


def test_bad_requests_are_clear(models):
    m = models["resnet18"]
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(BagcamsError, match="unknown method 'gradcam\\+\\+'; valid: bagcams, gradcam"):
        compute_cams(m, x, "gradcam++")
    with pytest.raises(BagcamsError, match="unknown target layer 'layer5' for resnet18; valid: layer1, layer2"):
        compute_cams(m, x, "bagcams", "layer5")
    with pytest.raises(BagcamsError, match="class id 7 out of range: the model has 7 classes"):
        compute_cams(m, x, "gradcam", "layer3", [7])
    with pytest.raises(BagcamsError, match="too small for resnet18"):
        compute_cams(m, torch.randn(1, 3, 16, 16))
    with pytest.raises(BagcamsError, match=r"images must be a float tensor \[N, 3, H, W\]"):
        compute_cams(m, torch.randn(3, 64, 64))
    with pytest.raises(BagcamsError, match="NaN"):
        compute_cams(m, torch.full((1, 3, 64, 64), float("nan")))


def test_a_signed_map_wider_than_the_float_range_normalises_without_nan():
    """CAM maps are signed: max - min can overflow to inf, and inf / inf was NaN in the output."""
    from bagcams_deploy.methods.aggregation import normalize_minmax

    for dtype in (torch.float32, torch.float64, torch.float16):
        big = torch.finfo(dtype).max * 0.9
        m = torch.tensor([-big, big, 0.0, big / 2], dtype=torch.float64).to(dtype).view(1, 1, 2, 2)
        out = normalize_minmax(m)
        assert torch.isfinite(out).all(), (dtype, out)
        expected = torch.tensor([0.0, 1.0, 0.5, 0.75], dtype=torch.float64)
        torch.testing.assert_close(out.flatten().double(), expected, atol=1e-3, rtol=0)
    # Every map whose range fits is bit-identical to the plain (x - min) / (max - min).
    scales = torch.logspace(-30, 30, 16).view(16, 1, 1, 1)
    maps = torch.randn(16, 1, 9, 7, generator=torch.Generator().manual_seed(4)) * scales
    flat = maps.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    assert torch.equal(normalize_minmax(maps).flatten(1), (flat - lo) / (hi - lo))


def test_a_map_with_any_non_finite_value_becomes_zeros_and_others_are_untouched():
    from bagcams_deploy.methods.aggregation import normalize_minmax

    maps = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    maps[0, 0, 3, 3] = float("nan")
    maps[1, 0, 0, 0] = float("inf")
    out = normalize_minmax(maps)
    assert (out[:2] == 0).all()
    expected = (maps[2] - maps[2].min()) / (maps[2].max() - maps[2].min())
    torch.testing.assert_close(out[2], expected)
