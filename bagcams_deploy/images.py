"""Image files -> RGB uint8: the one decoder behind ``localize``, ``cam``, ``verify`` and ``evaluate``.

It is the published loader's ``Image.open(path).convert('RGB')`` (no EXIF rotation, so boxes stay in
the stored frame) for every mode the WSOL data sets contain, so ``evaluate`` reproduces the published
numbers. Where that conversion is lossy for other files it does better, the same in every command
and in the C++ example: alpha is composited over white (``convert`` would keep whatever colour lies
under transparent pixels), and 16/32-bit integer and 32-bit float grey images are scaled by their
maximum (``convert`` clips integers to white and truncates floats in [0, 1] to black): a pixel becomes
``clip(value / max * 255, 0, 255)``, negatives black, and an image whose maximum is <= 0 all black.
Float images with NaN or Inf pixels are refused. Torch-free, so the evaluation package can use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BagcamsError

MIN_IMAGE_SIDE = 8
SCALED_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # high-bit grey, scaled by the image's maximum


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` with every way a file can fail as one ``BagcamsError`` line naming it."""
    if not path.is_file():
        raise BagcamsError(f"image not found: {path}")
    try:
        with warnings.catch_warnings():
            # large photos are fine (they are resized at once); only PIL's hard bomb limit is an error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                yield im
    except Image.DecompressionBombError as exc:
        raise BagcamsError(f"image {path} is too large to decode safely ({str(exc).splitlines()[0][:120]})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BagcamsError(f"cannot read image {path}: {str(exc).splitlines()[0][:120]}") from None


def _check_side(path: Path, w: int, h: int, min_side: int) -> None:
    if min(h, w) < min_side:
        raise BagcamsError(f"image {path} is too small ({w}x{h}); at least {min_side}x{min_side}")


def load_image(path: str | Path, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Read any PIL-readable file as RGB uint8 [H, W, 3] (grey, palette, alpha, CMYK, 16-bit converted).

    ``min_side`` refuses tinier images for ``localize``/``cam``, whose maps and boxes at that size
    mean nothing; evaluation passes 1, as the published loader scores any image of its split."""
    path = Path(path)
    with _opened(path) as im:
        im.load()
        if im.mode in SCALED_MODES:
            arr = np.asarray(im, dtype=np.float64)
            if im.mode == "F" and not np.isfinite(arr).all():
                raise BagcamsError(f"cannot read image {path}: float pixels include NaN or Inf")
            hi = arr.max() if arr.size and arr.max() > 0 else 1.0
            im = Image.fromarray(np.uint8(np.clip(arr / hi * 255.0, 0, 255)))
        if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    h, w = rgb.shape[:2]
    _check_side(path, w, h, min_side)
    return rgb


def check_images(paths: Sequence[str | Path], min_side: int = MIN_IMAGE_SIDE) -> None:
    """Refuse unreadable or too small images before a run writes anything: reads each file's header
    only (format, size, mode), not its pixels, so a folder is checked in moments (float images are
    decoded, to refuse NaN pixels); damage inside the pixel data of a file with a sound header still
    shows only when :func:`load_image` decodes it."""
    for p in paths:
        path = Path(p)
        with _opened(path) as im:
            w, h = im.size
            if im.mode == "F":  # float images (rare, scientific) are decoded: NaN/Inf pixels are refused
                im.load()
                if not np.isfinite(np.asarray(im)).all():
                    raise BagcamsError(f"cannot read image {path}: float pixels include NaN or Inf")
        _check_side(path, w, h, min_side)
