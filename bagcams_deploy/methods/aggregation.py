"""The map formulas of CAM, GradCAM, GradCAM++, PCS and BagCAMs (SPEC.md section 3), written once.

Every consumer uses these functions: the PyTorch reference, the analytic graph (and so the exported
ONNX graph, which is a trace of it) and the tests of the CUDA kernel. They are pure functions of
tensors, free of data-dependent Python control flow so that they trace into ONNX unchanged.

Shapes: ``features``/``gradients`` are ``[N, K, h, w]``; maps are ``[N, 1, h, w]`` before and
``[N, 1, H, W]`` after :func:`upsample_normalize`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .names import GRADIENT_METHODS, METHOD_LABELS, METHODS  # noqa: F401 - re-exported for callers

# GradCAM++: the published code adds this to the alpha denominator (after replacing zeros by one).
GRADCAMPP_EPS = 1e-7


def bagcams_raw(features: Tensor, gradients: Tensor) -> Tensor:
    """BagCAMs: t = g*F; a_k = 1 + mean_p t_k; M = sum_k ReLU(a_k * t_k)."""
    t = gradients * features
    a = 1.0 + t.mean(dim=(2, 3), keepdim=True)
    return torch.relu(a * t).sum(dim=1, keepdim=True)


def gradcam_raw(features: Tensor, gradients: Tensor) -> Tensor:
    """GradCAM: w_k = mean_p g_k; M = ReLU(sum_k w_k F_k)."""
    w = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((w * features).sum(dim=1, keepdim=True))


def gradcampp_raw(features: Tensor, gradients: Tensor) -> Tensor:
    """GradCAM++ with the published alpha; the positive factor exp(s_c) is left out.

    The published code multiplies the positive gradients by exp(s_c), a per-image positive constant
    that the final min-max normalisation cancels exactly, and that overflows to inf/NaN for
    s_c > ~88 in float32. Leaving it out gives the same normalised map wherever the published one is
    finite, and a finite map everywhere else.
    """
    g2 = gradients * gradients
    g3 = g2 * gradients
    denom = 2.0 * g2 + (features * g3).sum(dim=(2, 3), keepdim=True)
    denom = torch.where(denom != 0.0, denom, torch.ones_like(denom)) + GRADCAMPP_EPS
    alpha = g2 / denom
    w = (alpha * torch.relu(gradients)).sum(dim=(2, 3), keepdim=True)
    return torch.relu((w * features).sum(dim=1, keepdim=True))


def pcs_raw(features: Tensor, gradients: Tensor) -> Tensor:
    """PCS: M = ReLU(sum_k g_k F_k)."""
    return torch.relu((gradients * features).sum(dim=1, keepdim=True))


def cam_raw(features: Tensor, class_weight: Tensor, class_bias: Tensor) -> Tensor:
    """CAM: the classifier row of class c applied at every position of the last feature map.

    ``class_weight`` is ``[N, K]`` (the row of the 1x1-conv classifier for each image's class) and
    ``class_bias`` is ``[N]``.
    """
    m = (features * class_weight[:, :, None, None]).sum(dim=1, keepdim=True)
    return m + class_bias[:, None, None, None]


GRADIENT_AGGREGATIONS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "bagcams": bagcams_raw,
    "gradcam": gradcam_raw,
    "gradcampp": gradcampp_raw,
    "pcs": pcs_raw,
}


def normalize_minmax(maps: Tensor) -> Tensor:
    """Per-image min-max normalisation to [0, 1]; a constant or non-finite map becomes zeros.

    The published code divides by (max - min) and so returns NaN for a constant map; a map with any
    non-finite value has no meaningful normalisation either. Both become all zeros here.
    """
    flat = maps.flatten(1)
    # |x| <= the largest finite value is False exactly for +-inf and NaN. Unlike torch.isfinite it
    # exports without a cast to float64 (torch's ONNX IsInf casts to DOUBLE, which TensorRT lacks).
    is_finite = flat.abs() <= torch.finfo(flat.dtype).max
    finite = is_finite.all(dim=1)
    safe = torch.where(is_finite, flat, torch.zeros_like(flat))
    lo = safe.min(dim=1, keepdim=True).values
    hi = safe.max(dim=1, keepdim=True).values
    # A range wider than the largest finite value (CAM maps are signed) overflows to inf, and
    # inf / inf is NaN. Halving both ends first keeps it finite; a scale of 1 elsewhere leaves every
    # other map bit-identical (scaling by a power of two commutes with rounding).
    fits = (hi - lo) <= torch.finfo(flat.dtype).max
    scale = torch.where(fits, torch.ones_like(hi), torch.full_like(hi, 0.5))
    lo = lo * scale
    rng = hi * scale - lo
    ok = finite[:, None] & (rng > 0)
    denom = torch.where(ok, rng, torch.ones_like(rng))
    out = torch.where(ok, (safe * scale - lo) / denom, torch.zeros_like(safe))
    return out.view_as(maps)


def upsample_normalize(raw: Tensor, size: tuple[int, int], method: str) -> Tensor:
    """Turn a raw ``[N,1,h,w]`` map into the method's normalised ``[N,1,H,W]`` map.

    Gradient methods: bilinear (align_corners=False) upsampling, then min-max normalisation.
    CAM: min-max on the h x w grid, bicubic (a = -0.75, OpenCV's INTER_CUBIC) upsampling, min-max
    again. Half-precision maps are upsampled in float32; float64 stays float64.
    """
    if raw.dtype in (torch.float16, torch.bfloat16):
        raw = raw.float()
    if method == "cam":
        grid = normalize_minmax(raw)
        up = F.interpolate(grid, size=size, mode="bicubic", align_corners=False)
    else:
        up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)
    return normalize_minmax(up)


def gradient_map(
    method: str, features: Tensor, gradients: Tensor, size: tuple[int, int], gradient_scale: float = 1.0
) -> Tensor:
    """Normalised map of a gradient method from features and (possibly scaled) gradients.

    ``gradient_scale`` is the factor an export multiplied the gradients by to keep them in range in
    half precision; it is divided out before the (scale-sensitive) BagCAMs and GradCAM++ formulas.
    """
    if method not in GRADIENT_AGGREGATIONS:
        raise ValueError(f"unknown gradient method {method!r}; valid: {', '.join(GRADIENT_AGGREGATIONS)}")
    f = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    g = gradients if gradients.dtype == f.dtype else gradients.to(f.dtype)
    if gradient_scale != 1.0:
        g = g / gradient_scale
    return upsample_normalize(GRADIENT_AGGREGATIONS[method](f, g), size, method)
