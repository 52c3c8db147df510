"""Image reading and pre-processing exactly as the WSOL test transform (SPEC.md section 1).

Resize to the input size with PIL's bilinear filter (what ``torchvision.transforms.Resize`` does on a
PIL image; no crop), scale to [0, 1], normalise with the ImageNet mean/std, NCHW float32.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checks import checked_size
from .errors import BagcamsError, plural
from .images import MIN_IMAGE_SIDE, load_image
from .outputs import RECORDS, earlier_run_files

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
    size: int | tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE),
    mean: Sequence[float] = MEAN,
    std: Sequence[float] = STD,
) -> torch.Tensor:
    """A batch of RGB uint8 images (any sizes) -> normalised float32 tensor [N,3,H,W]; ``size`` is
    (H, W) or one int for a square."""
    size = checked_size(size)
    if len(images) == 0:
        raise BagcamsError("no images to pre-process")
    arrays = []
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            desc = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise BagcamsError(f"image {i} must be RGB uint8 [H, W, 3], got {desc}")
        arrays.append(normalize(resize_rgb(im, size), mean, std))
    return torch.from_numpy(np.stack(arrays))


def image_path_list(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    what: str = "image paths",
    expand_folders: bool = False,
    on_note: Callable[[str], None] | None = None,
) -> list[Path]:
    """One path or an iterable of them -> a list of ``Path``: a lone string is one file (iterating it
    would name a file per letter). A folder is expanded as the CLI does (:func:`expand_image_paths`:
    its visible image files, sorted) where the caller's results name each image, else refused, since
    a bare batch would not say which row is which file, and ``on_note`` gets its notes (files an
    earlier run's record lists, skipped). Files are kept as given (even twice)."""
    items = [paths] if isinstance(paths, str | os.PathLike) else paths
    try:
        items = list(items)
    except TypeError:
        raise BagcamsError(f"{what} must be a file path or a list of them, got {paths!r}"[:200]) from None
    out: list[Path] = []
    for item in items:
        if not isinstance(item, str | os.PathLike):
            raise BagcamsError(f"{what} must be file paths, got {item!r} ({type(item).__name__})"[:200])
        p = Path(item)
        if not p.is_dir():
            out.append(p)
        elif expand_folders:
            out.extend(expand_image_paths([p], on_note=on_note))
        else:
            raise BagcamsError(
                f"{p} is a folder (pass its image files; the CLI expands folders, as "
                "bagcams_deploy.preprocessing.expand_image_paths does)"
            )
    return out


def load_images(
    paths: str | os.PathLike | Sequence[str | os.PathLike], size: int | tuple[int, int] = (DEFAULT_SIZE, DEFAULT_SIZE)
) -> torch.Tensor:
    """Files (or one file) -> normalised batch, one row per file in order (convenience for small
    batches); ``size`` is (H, W) or one int for a square."""
    size = checked_size(size)  # before any file is decoded
    return preprocess([load_image(p) for p in image_path_list(paths)], size)


def _is_image_name(name: str) -> bool:
    """A visible file with an image suffix (what a folder contributes)."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def _skipped_note(folder: Path, command: str, names: set[str]) -> str:
    """One line naming the record that lists the skipped files, the first of them, and how to read one."""
    return (
        f"skipped {plural(len(names), 'file')} an earlier {command} run listed in {folder / RECORDS[command]} "
        f"(first: {min(names)}); name a file on the command line, with another --out, to read it as an image"
    )


def expand_image_paths(inputs: Sequence[str | Path], on_note: Callable[[str], None] | None = None) -> list[Path]:
    """Files and folders (their image files, sorted) -> a list of image paths; refuses an empty result.

    A folder's hidden files (``.name``: macOS ``._a.jpg`` AppleDouble files, editors' temporaries) are
    skipped: they carry image suffixes without being images and would abort the run. So are the
    overlays an earlier ``localize`` or ``cam`` run wrote into it, as its record there lists them
    (:func:`~bagcams_deploy.outputs.earlier_run_files`), which would otherwise be localized in turn
    (``a_overlay_overlay.png``); ``on_note`` gets one line per record saying what was skipped. Files
    no record lists are read, whatever their names. A file named on its own is read like any other."""
    out: list[Path] = []
    skipped: dict[str, int] = {}
    notes: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if _is_image_name(q.name) and q.is_file())
            for command, names in earlier_run_files(p, {q.name for q in found}).items():
                names = names & {q.name for q in found}  # a name two records list is skipped once
                if not names:
                    continue
                found = [q for q in found if q.name not in names]
                skipped[command] = skipped.get(command, 0) + len(names)
                notes.append(_skipped_note(p, command, names))
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise BagcamsError(f"no such image file or folder: {p}")
    if not out:
        why = (
            f" ({plural(sum(skipped.values()), 'file')} with image suffixes skipped: outputs an earlier "
            f"{' and an earlier '.join(skipped)} run listed in its record; name one on the command line, "
            "with another --out, to read it as an image)"
            if skipped
            else ""
        )
        raise BagcamsError("no image files found in " + ", ".join(str(i) for i in inputs) + why)
    if on_note is not None:  # only now: before an error, a note would make it two lines
        for note in notes:
            on_note(note)
    unique: dict[Path, Path] = {}
    for p in out:  # a file named twice (or also by its folder) runs once, where it was first named
        unique.setdefault(p.resolve(), p)
    return list(unique.values())
