"""The PyTorch reference implementation of the CAM family (autograd, the published semantics)."""

from .cams import CAMResult, GuidedReLUFunction, compute_cams, guided_relu_modules, resolve_class_ids

__all__ = ["CAMResult", "GuidedReLUFunction", "compute_cams", "guided_relu_modules", "resolve_class_ids"]
