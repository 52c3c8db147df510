"""Analytic vector-Jacobian products of the layers between a target layer and the class score.

Each rule is an ``nn.Module`` with ``forward(x) -> (y, tape)`` (the layer's forward, keeping only what
its backward needs: boolean ReLU masks, max-pool indices, input shapes) and ``vjp(tape, grad_y) ->
grad_x`` written with ordinary forward operators, so that tracing the whole thing gives an ONNX graph
that recomputes exact gradients for every input. :func:`rule_for` maps the model's modules to rules
and refuses any module it has no rule for, naming it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BagcamsError
from ..models.inception import BasicConv2d, InceptionA, InceptionB, InceptionC
from ..models.resnet import BasicBlock, Bottleneck

Tape = Any


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Rule(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:  # pragma: no cover - interface
        raise NotImplementedError

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def vjp_seed(self, tape: Tape, seed: Tensor, shape: torch.Size) -> Tensor:
        """The VJP of a gradient [N,K,1,1] constant over space (the classifier's seed) at an output of
        ``shape``. Rules that end in a ReLU let its mask broadcast the seed instead of expanding it.
        """
        return self.vjp(tape, seed.expand(shape))


class ConvBNRule(Rule):
    """Conv2d (any stride/padding/dilation/groups) optionally followed by eval BatchNorm.

    Forward runs the original modules (so masks downstream match the reference bit for bit). The
    backward folds BN's per-channel scale into the weight once, at build time. A stride-1 input
    gradient is an ordinary convolution with transposed, flipped weights (much faster than
    ConvTranspose on ONNX Runtime's CPU kernels); other strides use ConvTranspose with the maximal
    output padding and crop to the input size, which is right for any input size.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise BagcamsError(f"no analytic rule for Conv2d with padding {conv.padding!r}/{conv.padding_mode}")
        self.conv, self.bn = conv, bn
        self.stride, self.padding = _pair(conv.stride), _pair(conv.padding)
        self.dilation, self.groups = _pair(conv.dilation), conv.groups
        w = conv.weight.detach()
        if bn is not None:
            scale = bn.weight.detach() / torch.sqrt(bn.running_var.detach() + bn.eps)
            w = w * scale[:, None, None, None]
        kh, kw = w.shape[2:]
        self.kernel = (kh, kw)
        back_pad = (
            self.dilation[0] * (kh - 1) - self.padding[0],
            self.dilation[1] * (kw - 1) - self.padding[1],
        )
        self.as_conv = self.stride == (1, 1) and min(back_pad) >= 0
        if self.as_conv:
            g = self.groups
            cout, cin_g = w.shape[:2]
            wt = w.reshape(g, cout // g, cin_g, kh, kw).transpose(1, 2).reshape(g * cin_g, cout // g, kh, kw)
            self.back_padding = back_pad
            self.register_buffer("back_weight", wt.flip(2, 3).contiguous(), persistent=False)
        else:
            self.register_buffer("back_weight", w.contiguous(), persistent=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        return y, (x.shape[2], x.shape[3])

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        w = self.back_weight.to(grad.dtype)
        if self.as_conv:
            return F.conv2d(grad, w, None, 1, self.back_padding, self.dilation, self.groups)
        h, wd = tape
        out_pad = (self.stride[0] - 1, self.stride[1] - 1)
        full = F.conv_transpose2d(grad, w, None, self.stride, self.padding, out_pad, self.groups, self.dilation)
        return full[:, :, :h, :wd]


# A float32 ReLU mask is clip(MASK_GAIN * y, 0, 1) of the ReLU output y: exactly 0 where y == 0 and
# exactly 1 for y >= 2**-100 (smaller positive activations, if any, get a fractional mask). As a
# depthwise 1x1 convolution with a fused clip and a multiply, it stays in ONNX Runtime's blocked
# (NCHWc) layout, where a boolean Where forces the backward pass out of it and back for every mask.
MASK_GAIN = 2.0**100


def _scale_channels(x: Tensor, factor: float) -> Tensor:
    """``factor * x`` written as a 1x1 depthwise convolution (an operator of ONNX Runtime's blocked layout)."""
    c = int(x.shape[1])
    return F.conv2d(x, torch.full((c, 1, 1, 1), factor, dtype=x.dtype), groups=c)


def relu_mask(y: Tensor) -> Tensor:
    """1.0 where the ReLU output ``y`` (float32) is positive, 0.0 where it is zero."""
    return torch.clamp(_scale_channels(y, MASK_GAIN), 0.0, 1.0)


def blocked(x: Tensor) -> Tensor:
    """``x`` through a 1x1 depthwise identity convolution.

    A no-op in value; it gives the broadcast seed of the backward pass a convolution as producer, so
    that ONNX Runtime puts it in its blocked layout and fuses every later skip add, guided ReLU and
    mask multiply into the backward convolutions instead of running them as separate NCHW passes.
    """
    return _scale_channels(x, 1.0)


class ReLURule(Rule):
    """ReLU: plain rule grad*[y>0], or guided max(grad,0)*[y>0] (BagCAMs at nn.ReLU modules).

    The tape is the ReLU output itself in float32 graphs (mask built by :func:`relu_mask` in the
    backward pass) and a boolean mask in half-precision graphs, where MASK_GAIN does not fit.
    """

    def __init__(self, guided: bool):
        super().__init__()
        self.guided = guided

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        y = torch.relu(x)
        return y, (y if y.dtype == torch.float32 else y > 0)

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        if self.guided:
            grad = torch.relu(grad)
        if tape.dtype == torch.bool:
            return torch.where(tape, grad, torch.zeros((), dtype=grad.dtype))
        return grad * relu_mask(tape)

    def vjp_seed(self, tape: Tape, seed: Tensor, shape: torch.Size) -> Tensor:
        grad = self.vjp(tape, seed)  # the mask broadcasts the seed to ``shape``
        return blocked(grad) if tape.dtype == torch.float32 else grad


class IdentityRule(Rule):
    """Dropout at eval time and nn.Identity."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        return x, None

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        return grad


class MaxPoolRule(Rule):
    """Max-pool (padding, ceil_mode): the gradient goes to each window's arg-max, accumulated."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        if pool.dilation not in (1, (1, 1)):
            raise BagcamsError("no analytic rule for dilated max-pooling")
        self.pool = pool

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        p = self.pool
        y, idx = F.max_pool2d(x, p.kernel_size, p.stride, p.padding, 1, p.ceil_mode, return_indices=True)
        return y, (idx, x.shape)

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        idx, shape = tape
        n, c = grad.shape[0], grad.shape[1]
        # Accumulate in float32 (ONNX Runtime has no half-precision ScatterElements-add; and it is exact).
        out = torch.zeros((n, c, shape[2] * shape[3]), dtype=torch.float32)
        out = out.scatter_add(2, idx.flatten(2), grad.float().flatten(2))
        return out.reshape(n, c, shape[2], shape[3]).to(grad.dtype)


class AvgPoolRule(Rule):
    """Average pool: each output spreads grad/(k*k) over its window (count_include_pad=True)."""

    def __init__(self, pool: nn.AvgPool2d):
        super().__init__()
        if not pool.count_include_pad or pool.ceil_mode or pool.divisor_override:
            raise BagcamsError("analytic avg-pool rule needs count_include_pad=True, no ceil_mode/divisor")
        self.pool = pool
        self.k, self.s, self.p = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        return self.pool(x), (x.shape[2], x.shape[3])

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        k, s, p = self.k, self.s, self.p
        if s == (1, 1) and (k[0] - 1 - p[0], k[1] - 1 - p[1]) == p:
            # The transpose of a symmetric, uniform stride-1 window is the same window.
            return F.avg_pool2d(grad, k, 1, p, count_include_pad=True)
        c = grad.shape[1]
        w = torch.full((c, 1, k[0], k[1]), 1.0 / (k[0] * k[1]), dtype=grad.dtype)
        full = F.conv_transpose2d(grad, w, None, s, p, (s[0] - 1, s[1] - 1), c)
        h, wd = tape
        return full[:, :, :h, :wd]


class ChainRule(Rule):
    """A sequence of rules (nn.Sequential, a BasicConv2d, a branch of an Inception block)."""

    def __init__(self, rules: list[Rule]):
        super().__init__()
        self.rules = nn.ModuleList(rules)

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        tapes = []
        for r in self.rules:
            x, t = r(x)
            tapes.append(t)
        return x, tapes

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        for r, t in zip(reversed(self.rules), reversed(tape), strict=True):
            grad = r.vjp(t, grad)
        return grad

    def vjp_seed(self, tape: Tape, seed: Tensor, shape: torch.Size) -> Tensor:
        if not self.rules:
            return seed.expand(shape)
        grad = self.rules[-1].vjp_seed(tape[-1], seed, shape)
        for r, t in zip(reversed(self.rules[:-1]), reversed(tape[:-1]), strict=True):
            grad = r.vjp(t, grad)
        return grad


class ResidualRule(Rule):
    """relu_out(main(x) + shortcut(x)): ResNet Bottleneck and BasicBlock."""

    def __init__(self, main: ChainRule, shortcut: Rule, out_relu: ReLURule):
        super().__init__()
        self.main, self.shortcut, self.out_relu = main, shortcut, out_relu

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        m, tm = self.main(x)
        s, ts = self.shortcut(x)
        y, tr = self.out_relu(m + s)
        return y, (tm, ts, tr)

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        tm, ts, tr = tape
        g = self.out_relu.vjp(tr, grad)
        return self.main.vjp(tm, g) + self.shortcut.vjp(ts, g)

    def vjp_seed(self, tape: Tape, seed: Tensor, shape: torch.Size) -> Tensor:
        tm, ts, tr = tape
        g = self.out_relu.vjp_seed(tr, seed, shape)
        return self.main.vjp(tm, g) + self.shortcut.vjp(ts, g)


class ConcatRule(Rule):
    """Parallel branches concatenated on channels (Inception blocks): split the gradient, sum back."""

    def __init__(self, branches: list[ChainRule]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: Tensor) -> tuple[Tensor, Tape]:
        outs, tapes, sizes = [], [], []
        for b in self.branches:
            y, t = b(x)
            outs.append(y)
            tapes.append(t)
            sizes.append(int(y.shape[1]))
        return torch.cat(outs, 1), (tapes, sizes)

    def vjp(self, tape: Tape, grad: Tensor) -> Tensor:
        tapes, sizes = tape
        parts = torch.split(grad, sizes, dim=1)
        total = None
        for b, t, g in zip(self.branches, tapes, parts, strict=True):
            gx = b.vjp(t, g)
            total = gx if total is None else total + gx
        assert total is not None
        return total


def _sequence_rules(modules: list[nn.Module], guided: bool) -> list[Rule]:
    """Rules for a module sequence, folding each Conv2d that is followed by a BatchNorm2d."""
    rules: list[Rule] = []
    i = 0
    while i < len(modules):
        m = modules[i]
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(m, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d):
            rules.append(ConvBNRule(m, nxt))
            i += 2
            continue
        rules.append(rule_for(m, guided))
        i += 1
    return rules


def rule_for(module: nn.Module, guided: bool) -> Rule:
    """The analytic rule of one module; ``guided`` turns on the guided rule at nn.ReLU modules."""
    if isinstance(module, Bottleneck):
        main = ChainRule([
            ConvBNRule(module.conv1, module.bn1), ReLURule(guided),
            ConvBNRule(module.conv2, module.bn2), ReLURule(guided),
            ConvBNRule(module.conv3, module.bn3),
        ])  # fmt: skip
    elif isinstance(module, BasicBlock):
        main = ChainRule([ConvBNRule(module.conv1, module.bn1), ReLURule(guided), ConvBNRule(module.conv2, module.bn2)])
    else:
        main = None
    if main is not None:
        shortcut = IdentityRule() if module.downsample is None else rule_for(module.downsample, guided)
        return ResidualRule(main, shortcut, ReLURule(guided))
    if isinstance(module, BasicConv2d):
        return ChainRule([ConvBNRule(module.conv, module.bn), ReLURule(guided=False)])  # functional relu
    if isinstance(module, InceptionA | InceptionB | InceptionC):
        return ConcatRule([ChainRule([rule_for(m, guided) for m in chain]) for chain in module.branches()])
    if isinstance(module, nn.Sequential):
        return ChainRule(_sequence_rules(list(module), guided))
    if isinstance(module, nn.Conv2d):
        return ConvBNRule(module)
    if isinstance(module, nn.ReLU):
        return ReLURule(guided)
    if isinstance(module, nn.MaxPool2d):
        return MaxPoolRule(module)
    if isinstance(module, nn.AvgPool2d):
        return AvgPoolRule(module)
    if isinstance(module, nn.Dropout | nn.Identity):
        return IdentityRule()
    raise BagcamsError(f"no analytic gradient rule for module type {type(module).__name__}")
