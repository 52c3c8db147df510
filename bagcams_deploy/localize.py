"""Images -> maps, boxes and pictures with any backend (the library behind ``localize``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .checks import NonFiniteOutputError, name_non_finite
from .errors import BagcamsError
from .evaluation.boxes import boxes_from_scoremap
from .outputs import check_distinct_stems, output_dir
from .preprocessing import load_image, preprocess
from .runtime.base import Backend, score_maps
from .visualize import render_overlay, resize_map, save_png


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def otsu_threshold(score_map: np.ndarray) -> float:
    """Otsu's threshold of the map's uint8 histogram, as a fraction of the map's maximum."""
    img = np.uint8(np.clip(score_map, 0, 1) * 255)
    if img.max() == 0:
        return 1.0
    t, _ = cv2.threshold(img, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) / float(img.max())


def localize_images(
    backend: Backend,
    paths: list[Path],
    out: Path,
    threshold: float | None = 0.5,
    multi_contour: bool = False,
    class_id: int | None = None,
    batch_size: int = 8,
    on_batch=None,
) -> list[dict]:
    """Per image: ``<stem>.npy`` (the map at the original image size), ``<stem>_overlay.png`` and a
    record (class, score, probability, boxes in original-image pixels); ``threshold=None`` = Otsu.
    Writes ``boxes.json`` with all records and returns them."""
    paths, out = [Path(p) for p in paths], Path(out)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BagcamsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if threshold is not None and not 0 <= threshold <= 1:  # NaN fails too
        raise BagcamsError(f"threshold must be in [0, 1] (or None for Otsu's), got {threshold}")
    if class_id is not None:
        value = np.asarray(class_id.detach().cpu() if hasattr(class_id, "detach") else class_id)
        if value.ndim != 0 or value.dtype.kind not in "iu":
            raise BagcamsError(f"class_id must be an integer, got {class_id!r}")
        class_id = int(value)
    check_distinct_stems(paths)
    output_dir(out, "output folder")
    spec = backend.spec
    size = spec.input_size or (224, 224)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        rgbs = [load_image(p) for p in chunk]
        x = preprocess(rgbs, size, spec.mean, spec.std).numpy()
        ids = None if class_id is None else np.full(len(chunk), class_id, dtype=np.int64)
        try:
            res = backend.infer(x, ids)
        except NonFiniteOutputError as exc:
            raise name_non_finite(exc, [str(p) for p in chunk]) from None
        logits = res["logits"]
        maps = score_maps(spec, res, x.shape[2:])
        for k, (p, rgb) in enumerate(zip(chunk, rgbs, strict=True)):
            h, w = rgb.shape[:2]
            full = resize_map(maps[k, 0], (h, w))
            t = otsu_threshold(full) if threshold is None else threshold
            boxes = [
                list(map(int, b)) for b in boxes_from_scoremap(full, t, multi_contour) if b[2] > b[0] or b[3] > b[1]
            ]
            c = int(res["class_id_used"][k])
            prob = float(softmax(logits[k])[c])
            name = spec.class_names[c] if spec.class_names and c < len(spec.class_names) else f"class {c}"
            np.save(out / f"{p.stem}.npy", full.astype(np.float32))
            save_png(out / f"{p.stem}_overlay.png", render_overlay(rgb, full, boxes, f"{name} {prob:.2f}"))
            records.append({
                "image": str(p), "class_id": c, "class_name": name, "score": float(logits[k, c]),
                "probability": prob, "threshold": float(t), "boxes": boxes, "image_size": [w, h],
            })  # fmt: skip
        if on_batch:
            on_batch(len(chunk))
    doc = {
        "method": spec.method,
        "target_layer": spec.target_layer,
        "backend": backend.name,
        "images": records,
    }
    (out / "boxes.json").write_text(json.dumps(doc, indent=2))
    return records
