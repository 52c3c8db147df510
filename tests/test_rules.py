"""The analytic rules against autograd, module by module, and the broadcast-seed entry point.

``vjp_seed`` takes the classifier's spatially constant seed [N,K,1,1]; rules ending in a ReLU let its
mask broadcast it. Every rule must give exactly what ``vjp`` gives on the expanded seed, and both must
equal autograd, in float32 (float masks) and in float16 (boolean masks).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bagcams_deploy.export.rules import rule_for
from bagcams_deploy.models.inception import InceptionA, InceptionB
from bagcams_deploy.models.resnet import BasicBlock, Bottleneck


def _randomize(module: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


def _modules(gen: torch.Generator) -> dict[str, tuple[nn.Module, int]]:
    down = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32))
    return {
        "bottleneck": (Bottleneck(16, 8, downsample=down), 16),
        "basic block": (BasicBlock(16, 16), 16),
        "inception A (ends in a concat)": (InceptionA(16, 8), 16),
        "inception B (max-pool branch)": (InceptionB(16), 16),
        "conv + relu": (nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()), 16),
        "conv (no relu)": (nn.Sequential(nn.Conv2d(16, 24, 3, padding=1)), 16),
    }


@pytest.mark.parametrize("name", list(_modules(torch.Generator().manual_seed(0))))
@pytest.mark.parametrize("guided", [False, True])
def test_vjp_seed_equals_vjp_of_expanded_seed_and_autograd(name, guided):
    gen = torch.Generator().manual_seed(7)
    module, cin = _modules(gen)[name]
    _randomize(module, gen)
    rule = rule_for(module, guided)
    x = torch.randn(2, cin, 9, 9, generator=gen)
    with torch.no_grad():
        y, tape = rule(x)
        torch.testing.assert_close(y, module(x), rtol=0, atol=0)
        seed = torch.randn(2, y.shape[1], 1, 1, generator=gen)
        by_seed = rule.vjp_seed(tape, seed, y.shape)
        by_expand = rule.vjp(tape, seed.expand(y.shape))
    assert by_seed.shape == x.shape
    torch.testing.assert_close(by_seed, by_expand, rtol=1e-6, atol=1e-7)
    if not guided:  # the plain rules are the true gradient
        xg = x.clone().requires_grad_(True)
        (module(xg) * seed).sum().backward()
        torch.testing.assert_close(by_seed, xg.grad, rtol=1e-4, atol=1e-5)


def test_half_precision_rules_keep_boolean_masks_and_agree_with_float32():
    gen = torch.Generator().manual_seed(3)
    module = _randomize(Bottleneck(16, 8, downsample=nn.Sequential(nn.Conv2d(16, 32, 1, bias=False))), gen)
    rule = rule_for(module, guided=True)
    x = torch.randn(1, 16, 6, 6, generator=gen)
    with torch.no_grad():
        _, tape32 = rule(x)
        seed = torch.randn(1, 32, 1, 1, generator=gen)
        g32 = rule.vjp_seed(tape32, seed, torch.Size((1, 32, 6, 6)))
        rule64 = rule.to(torch.float64)
        _, tape64 = rule64(x.double())
        assert tape64[2].dtype == torch.bool  # non-float32 graphs: boolean masks
        g64 = rule64.vjp_seed(tape64, seed.double(), torch.Size((1, 32, 6, 6)))
    assert tape32[2].dtype == torch.float32  # float32: the ReLU output, masked by relu_mask
    torch.testing.assert_close(g32.double(), g64, rtol=1e-5, atol=1e-6)
