"""Image reading and pre-processing exactly as the WSOL test transform (SPEC.md section 1).

Resize to the input size with PIL's bilinear filter (what ``torchvision.transforms.Resize`` does on a
PIL image; no crop), scale to [0, 1], normalise with the ImageNet mean/std, NCHW float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import BagcamsError
from .images import MIN_IMAGE_SIDE, load_image

__all__ = ["MIN_IMAGE_SIDE", "load_image"]  # re-exported: the decoder lives in images.py

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize RGB uint8 to (H, W) with PIL bilinear (antialiased when shrinking), as the WSOL test code."""
    h, w = size
    if rgb.shape[0] == h and rgb.shape[1] == w:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR), dtype=np.uint8)


def normalize(rgb: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """uint8 RGB [H,W,3] -> float32 [3,H,W], scaled to [0,1] then normalised."""
    x = rgb.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(
    images: Sequence[np.ndarray],
    size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE),
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """A batch of RGB uint8 images (any sizes) -> normalised float32 tensor [N,3,H,W]."""
    if len(images) == 0:
        raise BagcamsError("no images to pre-process")
    arrays = []
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            desc = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise BagcamsError(f"image {i} must be RGB uint8 [H, W, 3], got {desc}")
        arrays.append(normalize(resize_rgb(im, size), mean, std))
    return torch.from_numpy(np.stack(arrays))


def load_images(paths: Sequence[str | Path], size: tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)) -> torch.Tensor:
    """Files -> normalised batch (convenience for small batches)."""
    return preprocess([load_image(p) for p in paths], size)


def _is_image_name(name: str) -> bool:
    """A visible file with an image suffix (what a folder contributes)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def expand_image_paths(inputs: Sequence[str | Path]) -> list[Path]:
    """Files and folders (their image files, sorted) -> a list of image paths; refuses an empty result.

    A folder's hidden files (``.name``: macOS ``._a.jpg`` AppleDouble files, editors' temporaries) are
    skipped: they carry image suffixes without being images and would abort the run. A hidden file
    named on its own is read like any other."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if _is_image_name(q.name) and q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise BagcamsError(f"no such image file or folder: {p}")
    if not out:
        raise BagcamsError("no image files found in " + ", ".join(str(i) for i in inputs))
    unique: dict[Path, Path] = {}
    for p in out:  # a file named twice (or also by its folder) runs once, where it was first named
        unique.setdefault(p.resolve(), p)
    return list(unique.values())
