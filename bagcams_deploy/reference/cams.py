"""The PyTorch reference: what every export is judged against (SPEC.md sections 2-3).

Gradients come from ``torch.autograd`` through the real model, the way the published code gets them;
the BagCAMs guided rule is applied at ``nn.ReLU`` modules only (a functional relu keeps the plain
rule) by routing those modules through :class:`GuidedReLUFunction` for the duration of one call.
The maps come from :mod:`bagcams_deploy.methods.aggregation`, the single definition of the formulas.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import check_class_id_shape, check_finite_outputs
from ..errors import BagcamsError
from ..methods.aggregation import GRADIENT_METHODS, METHODS, cam_raw, gradient_map, upsample_normalize
from ..models.wsol import WSOLModel, require_wsol_model


class GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward is max(grad_out, 0) * [y > 0] (guided backpropagation)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = x.clamp(min=0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * (y > 0).to(grad_out.dtype)


@contextlib.contextmanager
def guided_relu_modules(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, every ``nn.ReLU`` module of ``model`` computes a guided ReLU."""
    if not enabled:
        yield
        return
    handles = [
        m.register_forward_hook(lambda _m, inp, _out: GuidedReLUFunction.apply(inp[0]))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class CAMResult:
    """Everything a method computes for a batch; arrays are detached tensors on the model's device."""

    method: str
    target_layer: str
    logits: Tensor  # [N, C]
    class_ids: Tensor  # [N] int64, the classes actually used
    features: Tensor  # [N, K, h, w]
    gradients: Tensor | None  # [N, K, h, w]; None for CAM
    maps: Tensor  # [N, 1, H, W] in [0, 1]

    @property
    def scores(self) -> Tensor:
        """The target logit s_c of each image."""
        return self.logits.gather(1, self.class_ids[:, None])[:, 0]

    def nonpositive_score_images(self) -> list[int]:
        """Images whose target logit is <= 0: log(s_c) is undefined there (BagCAMs flips the sign)."""
        return [int(i) for i in torch.nonzero(self.scores <= 0).flatten()]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise BagcamsError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    return method


def resolve_target(model: WSOLModel, method: str, target_layer: str | None) -> tuple[str, str]:
    """(method, target layer) a map of ``model`` will use, or a clear error: the default layer when
    none is named, and CAM's only layer (the classifier's input). Checked without copying the model,
    so a backend can validate its request before building anything."""
    check_method(method)
    require_wsol_model(model).check_layer_for(method, target_layer)
    if method == "cam":
        return method, model.spec.target_layers[-1]
    return method, model.check_target_layer(target_layer or model.spec.default_target_layer)


def resolve_class_ids(logits: Tensor, class_ids: Tensor | Sequence[int] | int | None) -> Tensor:
    """Given class ids (negative = argmax) or None (argmax for all), validated against the logits."""
    n, c = logits.shape
    argmax = logits.argmax(dim=1)
    if class_ids is None:
        return argmax
    raw = torch.as_tensor(class_ids) if not isinstance(class_ids, str) else None
    if raw is None or raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
        raise BagcamsError(f"class ids must be integers, got {class_ids!r}"[:120])
    check_class_id_shape(tuple(raw.shape), n)
    if raw.dtype in (torch.uint32, torch.uint64) and raw.numel():  # torch has no max() for these
        top = max(raw.flatten().tolist())
        if top > torch.iinfo(torch.int64).max:
            raise BagcamsError(f"class id {top} out of range")  # it would wrap to a negative id: the argmax
    ids = raw.to(dtype=torch.int64, device=logits.device).flatten()
    if ids.numel() == 1 and n > 1:
        ids = ids.expand(n)
    if (ids >= c).any():
        bad = int(ids[ids >= c][0])
        raise BagcamsError(f"class id {bad} out of range: the model has {c} classes (0..{c - 1})")
    return torch.where(ids < 0, argmax, ids)


def score_factor(scores: Tensor, method: str) -> Tensor:
    """d(score)/d(s_c): 1/s_c for BagCAMs' log(s_c) (0 where s_c == 0, to stay finite), else 1."""
    if method != "bagcams":
        return torch.ones_like(scores)
    safe = torch.where(scores != 0, scores, torch.ones_like(scores))
    return torch.where(scores != 0, 1.0 / safe, torch.zeros_like(scores))


def check_images(model: WSOLModel, images: Tensor) -> Tensor:
    """The batch in the model's float type, or a clear error (integer pixels are not normalised images)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise BagcamsError(f"images must be a float tensor [N, 3, H, W], got {shape}")
    if not images.is_floating_point():
        raise BagcamsError(f"images must be normalised floating point (see preprocess), got {images.dtype}")
    param = next(model.parameters())  # float32, or float64 for the exactness tests
    images = images.to(device=param.device, dtype=param.dtype)
    if images.shape[0] == 0:
        raise BagcamsError("no images given (batch of size 0)")
    side = min(images.shape[2:])
    if side < model.spec.min_input_size:
        raise BagcamsError(
            f"input {images.shape[2]}x{images.shape[3]} is too small for {model.architecture} "
            f"(at least {model.spec.min_input_size}x{model.spec.min_input_size})"
        )
    if not torch.isfinite(images).all():
        raise BagcamsError("images contain NaN or Inf")
    return images


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _model_lock(model: nn.Module) -> threading.Lock:
    """One lock per model: the gradient pass toggles ``requires_grad``, fills ``.grad`` and hooks the
    model's ReLU modules, so two passes over one model at once (threads of a server) would corrupt
    each other (guided gradients leaking into GradCAM, or a crash inside autograd)."""
    with _LOCKS_LOCK:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


def compute_cams(
    model: WSOLModel,
    images: Tensor,
    method: str = "bagcams",
    target_layer: str | None = None,
    class_ids: Tensor | Sequence[int] | int | None = None,
    published_autograd: bool = False,
    check_finite: bool = True,
) -> CAMResult:
    """Compute a method's maps (and logits, features, gradients) for a batch of normalised images.

    ``class_ids``: one per image (a negative id means the argmax), a single id for all, or None for
    the argmax. ``target_layer`` defaults to the architecture's default (``layer3`` for ResNets);
    CAM always uses the last layer. ``published_autograd`` makes parameters require gradients and
    runs ``backward()`` as the published code does (slower; used to benchmark that baseline).
    """
    method, layer = resolve_target(model, method, target_layer)
    images = check_images(model, images)
    size = (int(images.shape[2]), int(images.shape[3]))
    if method == "cam":
        # No autograd state here: the lock only guards the training flags, and only if some must change.
        training = any(m.training for m in model.modules())
        with _model_lock(model) if training else contextlib.nullcontext(), _evaluating(model), torch.no_grad():
            features, logits = model.features_and_logits(images, layer)
            ids = resolve_class_ids(logits, class_ids)
            fc = model.classifier.fc
            raw = cam_raw(features, fc.weight[:, :, 0, 0][ids], fc.bias[ids])
            maps = upsample_normalize(raw, size, "cam")
        if check_finite:
            check_finite_outputs("torch-reference", {"logits": logits, "features": features})
        return CAMResult(method, layer, logits, ids, features, None, maps)

    assert method in GRADIENT_METHODS
    with _model_lock(model), _evaluating(model):
        logits, ids, features, gradients = _gradient_pass(model, images, method, layer, class_ids, published_autograd)
    if check_finite:  # a backend checks after its timed region instead
        check_finite_outputs("torch-reference", {"logits": logits, "features": features, "gradients": gradients})
    with torch.no_grad():
        maps = gradient_map(method, features, gradients, size)
    return CAMResult(method, layer, logits, ids, features, gradients, maps)


def _gradient_pass(
    model: WSOLModel,
    images: Tensor,
    method: str,
    layer: str,
    class_ids: Tensor | Sequence[int] | int | None,
    published_autograd: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(logits, class ids, features, gradients of the method's objective at ``layer``), detached."""
    params = list(model.parameters())
    previous = [(p.requires_grad, p.grad) for p in params]  # the caller's, given back afterwards
    for p in params:
        p.requires_grad_(published_autograd)
    try:
        # Autograd also inside a caller's torch.inference_mode() (serving code): inference tensors are
        # cloned into ordinary ones, which is all that mode forbids here.
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            guided_relu_modules(model, enabled=(method == "bagcams")),
        ):
            # The input requires grad so that the target layer is in the graph even with frozen
            # parameters; autograd.grad then stops at the target layer.
            x = (images.clone() if images.is_inference() else images.detach()).requires_grad_(True)
            features, logits = model.features_and_logits(x, layer)
            ids = resolve_class_ids(logits.detach(), class_ids)
            scores = logits.gather(1, ids[:, None])[:, 0]
            objective = (scores * score_factor(scores.detach(), method)).sum()
            if published_autograd:
                features.retain_grad()
                model.zero_grad(set_to_none=True)
                objective.backward()
                gradients = features.grad
                model.zero_grad(set_to_none=True)
            else:
                (gradients,) = torch.autograd.grad(objective, features)
    finally:
        for p, (flag, grad) in zip(params, previous, strict=True):
            p.requires_grad_(flag)
            p.grad = grad  # a training loop's accumulated gradients survive a published_autograd pass
    return logits.detach(), ids, features.detach(), gradients.detach()


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for one pass, then the caller's own flags back: maps are defined in eval mode
    (BatchNorm on running statistics, no dropout), and a training loop that logs maps every N steps
    must go on training afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
