"""Heatmap overlays: the map over the image, boxes drawn, the class written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import BagcamsError


def resize_map(score_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a [h,w] map in [0,1] to (H, W) bilinearly (to draw it on the original image)."""
    h, w = size
    if score_map.shape == (h, w):
        return score_map.astype(np.float32)
    return np.clip(cv2.resize(score_map.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def _jet_rgb() -> np.ndarray:
    """OpenCV's JET colour map as a [256,1,3] lookup table in RGB order (``applyColorMap``'s user map)."""
    ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
    return np.ascontiguousarray(cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[:, :, ::-1])


_JET_RGB = _jet_rgb()
LABEL_MAX_COVER = 0.25  # a label that would hide more of the image than this is left out


def render_overlay(
    image_rgb: np.ndarray,
    score_map: np.ndarray,
    boxes: Sequence[Sequence[int]] = (),
    label: str | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a JET-coloured map over an RGB uint8 image; write a label and draw boxes (x0,y0,x1,y1).

    The blend is uint8 (``cv2.addWeighted``, rounded): a large photo costs the map at its size and
    two uint8 images, not several float copies. Boxes are drawn last so the label never hides a box
    edge on the top border; a label that would cover more than a quarter of a small image is left out."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise BagcamsError(f"overlay needs an RGB image [H,W,3], got {image_rgb.shape}")
    m = np.asarray(score_map, dtype=np.float32)
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise BagcamsError(f"overlay needs a 2-D map, got shape {m.shape}")
    h, w = image_rgb.shape[:2]
    m = np.nan_to_num(m, nan=0.0)  # a copy: the in-place steps below never touch the caller's map
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    np.clip(m, 0.0, 1.0, out=m)
    m *= 255.0
    heat = cv2.applyColorMap(m.astype(np.uint8), _JET_RGB)  # astype truncates, as the float blend did
    del m
    image = np.ascontiguousarray(image_rgb, dtype=np.uint8)
    out = cv2.addWeighted(image, 1.0 - alpha, heat, alpha, 0.0)
    del heat
    if label:
        scale = max(0.4, min(h, w) / 500)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        lw, lh = tw + 6, th + base + 6
        if min(lw + 1, w) * min(lh + 1, h) <= LABEL_MAX_COVER * h * w:  # the rectangle includes both corners
            cv2.rectangle(out, (0, 0), (lw, lh), (0, 0, 0), -1)
            cv2.putText(out, label, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    thick = max(1, round(min(h, w) / 150))
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box[:4])
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), thick)
    return out


def save_png(path: str | Path, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG (creating the folder); a refused write is an error, not False."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise BagcamsError(f"cannot write {path}")
    return path
