"""Write generated scenes in the wsolevaluation layout, so the existing WSOL tooling can read them.

Layout under ``root``::

    images/<split>/<NNNNN>.png                 RGB images
    masks/<split>/<NNNNN>.png                  val/test only, 0/255 object masks
    metadata/<split>/image_ids.txt             <split>/<NNNNN>.png
    metadata/<split>/class_labels.txt          <split>/<NNNNN>.png,<label>
    metadata/<split>/image_sizes.txt           <split>/<NNNNN>.png,<w>,<h>
    metadata/<split>/localization.txt          <split>/<NNNNN>.png,<x0>,<y0>,<x1>,<y1>  (inclusive)
    metadata_masks/<split>/...                 val/test: same ids/labels/sizes, and
    metadata_masks/<split>/localization.txt    <split>/<NNNNN>.png,<split>/<NNNNN>.png,<split>/ignore.png
    masks/<split>/ignore.png                   one all-zero png shared by every image of the split
    classes.json                               class names, counts, seed, size, complete

Rewriting a folder: only a folder this writer made (its ``classes.json`` names the generator) or an
empty one is written; any other non-empty folder is refused. A run first writes ``classes.json`` with
``"complete": false`` (set true once every split is written), then deletes every split's metadata files
and the files an earlier run of it wrote (``images/<split>/NNNNN.png`` below the split count its
``classes.json`` recorded, and for val/test the same in ``masks/<split>/`` and ``ignore.png``); nothing
else is touched, and nothing a symlinked folder leads to outside the root. (While a run is incomplete,
``classes.json`` records the larger of the earlier and the new counts, so a rerun after an interruption
still finds every file to remove.) A split's metadata is written only after all its images and masks,
each file complete or absent, ``image_ids.txt`` last, so an interrupted run leaves the split it was
writing, and those after it, without metadata (``evaluate`` then stops at the missing metadata), never
metadata that disagrees with the images. A split whose count is 0 (or that ``counts`` omits) has its old
files removed the same way, so the folder holds exactly the splits ``classes.json`` counts.

``ignore_path`` points to one shared all-zero PNG: every pixel is exactly object or background (the mask
is the rasterised shape), so there is no ignore region. It is not left empty because wsolevaluation's
``get_mask`` opens ``os.path.join(mask_root, ignore_path)`` unconditionally, and an empty path would make
it read the mask directory. Mask and ignore paths are relative to ``<root>/masks``, image paths to
``<root>/images``.

Seeds: image ``i`` of split ``k`` uses ``SeedSequence([seed, k, i])`` — distinct entropy per split and
index, so splits never share a stream and any single image can be regenerated on its own
(``generate_scene(scene_seed(seed, split, i), size, label=i % n_classes)``). Labels cycle over the
classes so every split is balanced.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from ..outputs import write_atomically
from .generator import CLASS_NAMES, ProgressFn, generate_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
MASK_SPLITS: tuple[str, ...] = ("val", "test")
IGNORE_NAME = "ignore.png"  # all-zero ignore mask per split (see module docstring)
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; PNG is lossless so the level does not change pixels
MAX_SIZE = 4096  # the generator rasterises each object at 3x size while placing it: ~150 MB at 4096 px
_METADATA_FILES = ("class_labels.txt", "image_sizes.txt", "localization.txt", "image_ids.txt")  # ids last
GENERATOR = "bagcams_deploy.scenes"  # classes.json's mark of a folder this writer made


def scene_seed(seed: int, split: str, index: int) -> int:
    """The per-image seed: a 64-bit hash of (data seed, split number, index)."""
    k = SPLITS.index(split)
    return int(np.random.SeedSequence([seed, k, index]).generate_state(1, np.uint64)[0])


def _write_lines(path: Path, lines: list[str]) -> None:
    _write_text(path, "".join(line + "\n" for line in lines))


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all."""
    with write_atomically(path) as f:
        f.write(text.encode())


def _imwrite(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, _PNG):
        raise OSError(f"{path}: could not write the image")


def _earlier_counts(root: Path) -> dict[str, int]:
    """The split sizes an earlier run of this writer recorded in ``root`` (none for a new or empty
    folder). Any other non-empty folder is refused: clearing splits there could delete a user's data
    set. A folder is ours when its ``classes.json`` says so."""
    if not root.is_dir() or not any(root.iterdir()):
        return {}
    try:
        info = json.loads((root / "classes.json").read_text())
        if info.get("generator") == GENERATOR:
            return {s: int(n) for s, n in info.get("counts", {}).items() if s in SPLITS}
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    raise ValueError(
        f"{root} is not empty and was not written by {GENERATOR} (no classes.json of it): give a new or empty folder"
    )


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` really lies under ``root`` (a symlinked folder can lead elsewhere)."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def _clear_split(root: Path, split: str, earlier: int) -> None:
    """Delete what an earlier run wrote for ``split``: its metadata first, then its images and masks.

    Only names an earlier run wrote for that split (``f"{i:05d}.png"`` for ``i`` below its recorded
    count, ``ignore.png`` in masks, the four metadata files) are removed, in a folder
    :func:`_earlier_counts` accepted, and never through a link leading out of ``root``; other files
    stay, and so do the folders they keep non-empty.
    """
    with_masks = split in MASK_SPLITS
    meta_dirs = [root / m / split for m in (("metadata", "metadata_masks") if with_masks else ("metadata",))]
    for d in meta_dirs:
        for name in _METADATA_FILES[::-1]:  # image_ids.txt first: without it the split reads as absent
            if _inside(d / name, root):
                (d / name).unlink(missing_ok=True)
    file_dirs = [root / k / split for k in (("images", "masks") if with_masks else ("images",))]
    for d in file_dirs:
        if not d.is_dir() or not _inside(d, root):
            continue
        names = [f"{i:05d}.png" for i in range(earlier)] + ([IGNORE_NAME] if d.parent.name == "masks" else [])
        for name in names:
            path = d / name
            if path.is_file() and not path.is_symlink():
                path.unlink()
    for d in meta_dirs + file_dirs:
        with contextlib.suppress(OSError):
            d.rmdir()  # only when empty


def _write_info(root: Path, counts: Mapping[str, int], seed: int, size: int, complete: bool) -> None:
    info = {
        "class_names": list(CLASS_NAMES),
        "counts": {s: int(counts.get(s, 0)) for s in SPLITS},
        "seed": seed,
        "size": size,
        "generator": GENERATOR,
        "complete": complete,
    }
    _write_text(root / "classes.json", json.dumps(info, indent=2) + "\n")


def write_dataset(
    root: str | Path,
    counts: Mapping[str, int] | None = None,
    seed: int = 0,
    size: int = 224,
    progress: ProgressFn | None = None,
) -> Path:
    """Generate and write the splits; ``progress(split, done, total)`` is called after each image.

    Splits with count 0, or missing from ``counts``, are removed from ``root`` (see the module docstring).
    """
    counts = dict(counts) if counts is not None else {"train": 2000, "val": 200, "test": 500}
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
    if not 32 <= size <= MAX_SIZE:
        raise ValueError(f"size must be in [32, {MAX_SIZE}], got {size}")
    root = Path(root)
    earlier = _earlier_counts(root)
    root.mkdir(parents=True, exist_ok=True)
    # the larger of the two counts: an interrupted earlier run may have written up to its own count
    _write_info(root, {s: max(int(counts.get(s, 0)), earlier.get(s, 0)) for s in SPLITS}, seed, size, complete=False)
    for split in SPLITS:  # all first: after an interruption, every split with metadata is this run's
        _clear_split(root, split, earlier.get(split, 0))
    n_cls = len(CLASS_NAMES)
    for split in SPLITS:
        n = int(counts.get(split, 0))
        if n <= 0:
            continue
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        with_masks = split in MASK_SPLITS
        ignore_rel = f"{split}/{IGNORE_NAME}"
        if with_masks:
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            _imwrite(root / "masks" / ignore_rel, np.zeros((size, size), np.uint8))
        ids, labels, sizes, boxes, masks = [], [], [], [], []
        for i in range(n):
            sc = generate_scene(scene_seed(seed, split, i), size, label=i % n_cls)
            rel = f"{split}/{i:05d}.png"
            _imwrite(root / "images" / rel, cv2.cvtColor(sc.image, cv2.COLOR_RGB2BGR))
            ids.append(rel)
            labels.append(f"{rel},{sc.label}")
            sizes.append(f"{rel},{size},{size}")
            boxes.append(f"{rel},{sc.box[0]},{sc.box[1]},{sc.box[2]},{sc.box[3]}")
            if with_masks:
                _imwrite(root / "masks" / rel, sc.mask.astype(np.uint8) * 255)
                masks.append(f"{rel},{rel},{ignore_rel}")
            if progress is not None:
                progress(split, i + 1, n)
        contents = {"image_ids.txt": ids, "class_labels.txt": labels, "image_sizes.txt": sizes}
        for meta in ["metadata_masks", "metadata"] if with_masks else ["metadata"]:
            d = root / meta / split
            contents["localization.txt"] = masks if meta == "metadata_masks" else boxes
            for name in _METADATA_FILES:  # image_ids.txt last: its presence means the rest is there
                _write_lines(d / name, contents[name])
    _write_info(root, counts, seed, size, complete=True)
    return root
