"""Models of the DA-WSOL / wsolevaluation family and their checkpoint loader."""

from .checkpoint import load_model, model_from_state_dicts, save_checkpoint
from .wsol import ARCHITECTURES, ModelDescription, WSOLModel, arch_spec, build_model

__all__ = [
    "ARCHITECTURES",
    "ModelDescription",
    "WSOLModel",
    "arch_spec",
    "build_model",
    "load_model",
    "model_from_state_dicts",
    "save_checkpoint",
]
