"""Procedural WSOL scenes (one labelled object, clutter, distractors) with exact masks and boxes."""

from .generator import CLASS_NAMES, MAX_AREA_FRAC, MIN_AREA_FRAC, Scene, contact_sheet, generate_scene
from .writer import SPLITS, scene_seed, write_dataset

__all__ = [
    "CLASS_NAMES",
    "MAX_AREA_FRAC",
    "MIN_AREA_FRAC",
    "SPLITS",
    "Scene",
    "contact_sheet",
    "generate_scene",
    "scene_seed",
    "write_dataset",
]
