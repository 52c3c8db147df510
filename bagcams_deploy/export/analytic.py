"""The analytic CAM network: logits, features, exact gradients and the map in one forward pass.

:class:`AnalyticCAM` runs the model up to the target layer, the rest of the network through the rules
of :mod:`.rules` (keeping masks and indices), then seeds the gradient of the method's score at the
classifier in closed form and walks the rules backwards. No autograd is involved, so the same module
is the ``torch-analytic`` backend and, traced, the exported ONNX graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_class_id_shape
from ..errors import BagcamsError
from ..methods.aggregation import GRADIENT_METHODS, cam_raw, gradient_map, upsample_normalize
from ..models.wsol import WSOLModel
from ..reference.cams import resolve_target
from .contract import GRAPH_PRECISIONS
from .rules import rule_for

# the compute type of each precision a graph can record (contract.GRAPH_PRECISIONS, in order)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
PRECISIONS: dict[str, torch.dtype] = dict(zip(GRAPH_PRECISIONS, _DTYPES, strict=True))
OUTPUT_NAMES_GRADIENT = ("logits", "class_id_used", "features", "gradients", "cam")
OUTPUT_NAMES_CAM = ("logits", "class_id_used", "features", "cam")


def output_names_for(method: str, with_cam: bool = True) -> tuple[str, ...]:
    """The contract's outputs, in order, of a graph of ``method`` (``cam`` last unless left out)."""
    names = OUTPUT_NAMES_GRADIENT if method in GRADIENT_METHODS else OUTPUT_NAMES_CAM
    return names if with_cam else names[:-1]


class AnalyticCAM(nn.Module):
    """``forward(image [N,3,H,W] float32, class_id [N] int64; <0 = argmax)`` -> the contract outputs.

    Outputs, in order: ``logits`` [N,C], ``class_id_used`` [N], ``features`` [N,K,h,w], ``gradients``
    [N,K,h,w] (gradient methods only; the true gradient times ``gradient_scale``) and, unless
    ``with_cam`` is False, ``cam`` [N,1,H,W].

    ``precision`` fp16/bf16 gives the mixed-precision network that strongly typed TensorRT builds
    want: convolutions (forward and backward) in half precision; the classifier, the score, the
    gradient seed, 1/|s_c| and the map in float32; inputs and outputs float32. The analytic gradient
    is about |W_c| / (h w s_c), far below half precision's normal range, so the seed is multiplied
    by ``gradient_scale`` (see :func:`calibrate_gradient_scale`) and the map divides it out.

    The seed is ``W_c / (h w)``, so the backward pass's magnitudes go as 1/(h w) of the last stage:
    a dynamic-size half-precision graph calibrated at 224 would overflow half precision on small
    inputs and underflow on large ones. ``seed_positions`` (the calibration size's h w) fixes the
    seed at the calibrated magnitude whatever the input size; the factor ``seed_positions / (h w)``
    is then applied after the backward pass, in float32, so the ``gradients`` output is unchanged.
    """

    def __init__(
        self,
        model: WSOLModel,
        method: str = "bagcams",
        target_layer: str | None = None,
        with_cam: bool = True,
        gradient_scale: float = 1.0,
        precision: str = "fp32",
        seed_positions: int | None = None,
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise BagcamsError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        method, layer = resolve_target(model, method, target_layer)
        # A snapshot, in eval mode and float32 (the contract's type; a half model widens exactly): the
        # caller's model keeps its training flags, device and BatchNorm statistics whatever happens to
        # it or to this module later (``.train()`` on a shared module would run BatchNorm on batch
        # statistics and overwrite its running ones). The torch-analytic backend rebuilds on weight changes.
        model = model.snapshot(torch.float32)
        if not 0 < gradient_scale < float("inf"):
            raise BagcamsError(f"gradient_scale must be a finite positive number, got {gradient_scale}")
        names = list(model.stage_names)
        cut = names.index(layer) + 1
        self.method, self.target_layer, self.with_cam = method, layer, with_cam
        self.gradient_scale = float(gradient_scale)
        if seed_positions is not None and not (isinstance(seed_positions, int) and seed_positions > 0):
            raise BagcamsError(f"seed_positions must be a positive integer, got {seed_positions!r}")
        self.seed_positions = seed_positions
        self.precision = precision
        self.compute_dtype = PRECISIONS[precision]
        self.architecture, self.num_classes = model.architecture, model.num_classes
        self.prefix = nn.ModuleList([model.stage(n) for n in names[:cut]])
        guided = method == "bagcams"
        self.suffix_modules = nn.ModuleList([model.stage(n) for n in names[cut:]])
        self.suffix = nn.ModuleList([rule_for(model.stage(n), guided) for n in names[cut:]])
        fc = model.classifier.fc
        self.register_buffer("fc_weight", fc.weight.detach()[:, :, 0, 0].clone(), persistent=False)
        self.register_buffer("fc_bias", fc.bias.detach().clone(), persistent=False)
        if precision != "fp32":
            # Rules were built from float32 weights (BN folded in float32); now cast the network.
            self.prefix.to(self.compute_dtype)
            self.suffix_modules.to(self.compute_dtype)
            self.suffix.to(self.compute_dtype)
        self.calibration: list[float] | None = None  # set to [] to record max |grad| per backward step
        # True while tracing a graph of fixed input size: spatial sizes then enter the graph as constants
        # (a Shape of a tensor in ONNX Runtime's blocked layout would reorder the whole tensor for it).
        self.static_shapes = False
        self.eval()

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names_for(self.method, self.with_cam)

    def forward(self, image: Tensor, class_id: Tensor) -> tuple[Tensor, ...]:
        x = image if image.dtype == self.compute_dtype else image.to(self.compute_dtype)
        for stage in self.prefix:
            x = stage(x)
        features = x
        tapes = []
        for rule in self.suffix:
            x, tape = rule(x)
            tapes.append(tape)
        # Global average pooling (not a mean over axes) lets ONNX Runtime pool the last block's output
        # in its blocked layout; the same numbers either way.
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1) if x.dtype == torch.float32 else x.float().mean(dim=(2, 3))
        logits = pooled @ self.fc_weight.t() + self.fc_bias
        used = torch.where(class_id < 0, logits.argmax(dim=1), class_id)
        w_c = self.fc_weight.index_select(0, used)  # [N, K_last]
        size = (image.shape[2], image.shape[3])

        if features.dtype != torch.float32:
            features = features.float()
        if self.method == "cam":
            outputs: tuple[Tensor, ...] = (logits, used, features)
            if self.with_cam:
                raw = cam_raw(features, w_c, self.fc_bias.index_select(0, used))
                outputs += (upsample_normalize(raw, size, "cam"),)
            return outputs

        hw = int(x.shape[2]) * int(x.shape[3]) if self.static_shapes else x.shape[2] * x.shape[3]
        # With ``seed_positions`` the half-precision backward runs at the calibrated magnitude at every
        # input size, and the true 1/(h w) is restored below in float32.
        seed = w_c * (self.gradient_scale / (hw if self.seed_positions is None else self.seed_positions))
        magnitude = None
        if self.method == "bagcams":
            # d log(s_c) = d s_c / s_c. Guided ReLUs are only positively homogeneous, so the sign of
            # 1/s_c goes into the seed and its magnitude is applied after the backward pass (which
            # keeps half-precision graphs in range); s_c == 0 gives a zero gradient, not inf.
            score = logits.gather(1, used[:, None])  # [N, 1]
            seed = seed * torch.sign(score)
            magnitude = torch.where(score != 0, 1.0 / torch.where(score != 0, score.abs(), 1.0), 0.0)
        seed = seed[:, :, None, None]
        grad = seed if self.compute_dtype == torch.float32 else seed.to(self.compute_dtype)
        if self.calibration is not None:
            self.calibration.append(float(seed.abs().max()))
        for i, (rule, tape) in enumerate(zip(reversed(self.suffix), reversed(tapes), strict=True)):
            grad = rule.vjp_seed(tape, grad, x.shape) if i == 0 else rule.vjp(tape, grad)
            if self.calibration is not None:
                self.calibration.append(float(grad.abs().max()))
        if not self.suffix:  # target = last stage: the gradient is the seed itself, at every position
            grad = grad.expand(x.shape).contiguous()
        if grad.dtype != torch.float32:
            grad = grad.float()
        if magnitude is not None:
            grad = grad * magnitude[:, :, None, None]
        if self.seed_positions is not None:
            grad = grad * (self.seed_positions / hw)
        outputs = (logits, used, features, grad)
        if self.with_cam:
            outputs += (gradient_map(self.method, features, grad, size, self.gradient_scale),)
        return outputs

    @torch.no_grad()
    def run(self, image: Tensor, class_id: Tensor | None = None) -> dict[str, Tensor]:
        """Named outputs for a batch (``class_id`` None = argmax for every image)."""
        n = image.shape[0]
        device = self.fc_weight.device  # the snapshot's, which may not be the caller's tensors'
        image = image.to(device)
        if class_id is None:
            class_id = torch.full((n,), -1, dtype=torch.int64)
        class_id = torch.as_tensor(class_id, device=device)
        if class_id.is_floating_point() or class_id.is_complex() or class_id.dtype == torch.bool:
            raise BagcamsError(f"class ids must be integers, got {class_id.dtype}")
        check_class_id_shape(tuple(class_id.shape), n)
        class_id = class_id.reshape(-1).expand(n) if class_id.numel() == 1 else class_id.reshape(-1)
        if (class_id >= self.num_classes).any():
            raise BagcamsError(f"class id {int(class_id.max())} out of range: the model has {self.num_classes} classes")
        return dict(zip(self.output_names, self(image, class_id.to(torch.int64)), strict=True))


@torch.no_grad()
def last_stage_positions(model: WSOLModel, size: tuple[int, int]) -> int:
    """h x w of the model's last stage for ``size`` (H, W) inputs: the positions the seed spreads over."""
    snap = model.snapshot(torch.float32)
    x = torch.zeros(1, 3, *size, device=snap.classifier.fc.weight.device)
    for name in snap.stage_names:
        x = snap.stage(name)(x)
    return int(x.shape[2]) * int(x.shape[3])


# Half precision: largest finite 65504; keep the largest backward value near 2^10 for headroom.
HALF_TARGET_MAX = 2.0**10


@torch.no_grad()
def calibrate_gradient_scale(
    model: WSOLModel,
    method: str,
    target_layer: str | None,
    images: Tensor,
    target_max: float = HALF_TARGET_MAX,
) -> float:
    """A power of two that puts the largest backward-pass value near ``target_max``.

    Runs the float32 analytic network on ``images`` recording max |grad| after every backward step
    (including the seed), so that every intermediate of the half-precision backward stays finite and
    as far above the subnormal range as possible. Powers of two make the scaling exact.
    """
    net = AnalyticCAM(model, method, target_layer, with_cam=False)
    if method == "cam":
        return 1.0
    net.calibration = []
    net.run(images)
    peak = max(net.calibration) if net.calibration else 0.0
    if not peak > 0 or not math.isfinite(peak):
        return 1.0
    return float(2.0 ** round(math.log2(target_max / peak)))
