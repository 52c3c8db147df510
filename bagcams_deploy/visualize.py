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


def render_overlay(
    image_rgb: np.ndarray,
    score_map: np.ndarray,
    boxes: Sequence[Sequence[int]] = (),
    label: str | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend a JET-coloured map over an RGB uint8 image; draw boxes (x0,y0,x1,y1) and a label."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise BagcamsError(f"overlay needs an RGB image [H,W,3], got {image_rgb.shape}")
    m = np.asarray(score_map, dtype=np.float32)
    if m.ndim == 3:
        m = m[0]
    if m.ndim != 2:
        raise BagcamsError(f"overlay needs a 2-D map, got shape {m.shape}")
    m = resize_map(np.nan_to_num(m, nan=0.0), image_rgb.shape[:2])
    heat_bgr = cv2.applyColorMap(np.uint8(np.clip(m, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    out = np.uint8(np.clip((1 - alpha) * image_rgb.astype(np.float32) + alpha * heat, 0, 255))
    thick = max(1, round(min(image_rgb.shape[:2]) / 150))
    for box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box[:4])
        cv2.rectangle(out, (x0, y0), (x1, y1), (0, 255, 0), thick)
    if label:
        scale = max(0.4, min(image_rgb.shape[:2]) / 500)
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
        cv2.putText(out, label, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def save_png(path: str | Path, image_rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise BagcamsError(f"cannot write {path}")
    return path
