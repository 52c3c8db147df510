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
    classes.json                               class names, counts, seed, size

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

import json
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

from .generator import CLASS_NAMES, ProgressFn, generate_scene

SPLITS: tuple[str, ...] = ("train", "val", "test")
MASK_SPLITS: tuple[str, ...] = ("val", "test")
IGNORE_NAME = "ignore.png"  # all-zero ignore mask per split (see module docstring)
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; PNG is lossless so the level does not change pixels


def scene_seed(seed: int, split: str, index: int) -> int:
    """The per-image seed: a 64-bit hash of (data seed, split number, index)."""
    k = SPLITS.index(split)
    return int(np.random.SeedSequence([seed, k, index]).generate_state(1, np.uint64)[0])


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def write_dataset(
    root: str | Path,
    counts: Mapping[str, int] | None = None,
    seed: int = 0,
    size: int = 224,
    progress: ProgressFn | None = None,
) -> Path:
    """Generate and write the splits; ``progress(split, done, total)`` is called after each image."""
    counts = dict(counts) if counts is not None else {"train": 2000, "val": 200, "test": 500}
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; use {SPLITS}")
    root = Path(root)
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
            cv2.imwrite(str(root / "masks" / ignore_rel), np.zeros((size, size), np.uint8), _PNG)
        ids, labels, sizes, boxes, masks = [], [], [], [], []
        for i in range(n):
            sc = generate_scene(scene_seed(seed, split, i), size, label=i % n_cls)
            rel = f"{split}/{i:05d}.png"
            cv2.imwrite(str(root / "images" / rel), cv2.cvtColor(sc.image, cv2.COLOR_RGB2BGR), _PNG)
            ids.append(rel)
            labels.append(f"{rel},{sc.label}")
            sizes.append(f"{rel},{size},{size}")
            boxes.append(f"{rel},{sc.box[0]},{sc.box[1]},{sc.box[2]},{sc.box[3]}")
            if with_masks:
                cv2.imwrite(str(root / "masks" / rel), sc.mask.astype(np.uint8) * 255, _PNG)
                masks.append(f"{rel},{rel},{ignore_rel}")
            if progress is not None:
                progress(split, i + 1, n)
        metas = ["metadata", "metadata_masks"] if with_masks else ["metadata"]
        for meta in metas:
            d = root / meta / split
            _write_lines(d / "image_ids.txt", ids)
            _write_lines(d / "class_labels.txt", labels)
            _write_lines(d / "image_sizes.txt", sizes)
            _write_lines(d / "localization.txt", masks if meta == "metadata_masks" else boxes)
    info = {
        "class_names": list(CLASS_NAMES),
        "counts": {s: int(counts.get(s, 0)) for s in SPLITS},
        "seed": seed,
        "size": size,
        "generator": "bagcams_deploy.scenes",
    }
    (root / "classes.json").write_text(json.dumps(info, indent=2) + "\n")
    return root
