"""Boxes from score maps, the wsolevaluation way, plus the IoU they are judged by.

One definition of "the boxes of a binarised map" (:func:`_boxes_of_binary`) serves both the
straightforward per-threshold loop (:func:`boxes_at_thresholds_reference`, kept as the ground truth
for tests and the benchmark) and the fast path (:func:`boxes_at_thresholds`). The fast path exploits
that a uint8 map binarised at ``int(t * max)`` only depends on which map values lie above that
integer, so there are at most 256 distinct binary images however fine the threshold grid is.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from bagcams_deploy.errors import BagcamsError

#: wsolevaluation's ``_RESIZE_LENGTH``: maps and GT are compared at 224x224.
RESIZE_LENGTH = 224

#: How far outside [0, 1] a score may stray (float rounding of a normalised map) before it is an error.
SCORE_TOLERANCE = 1e-4
MIN_CAM_INTERVAL = 1e-5

_EMPTY_BOX = np.zeros((1, 4), dtype=np.int64)


def checked_thresholds(thresholds: object, interval: float) -> np.ndarray:
    """The evaluators' CAM thresholds: the published grid for ``interval``, or a user's list, which must
    be finite, in [0, 1) and strictly increasing (the histograms and the contour search assume it)."""
    if thresholds is None:
        return cam_thresholds(interval)
    try:
        t = np.asarray(thresholds, dtype=np.float64)
    except (TypeError, ValueError):
        raise BagcamsError(f"CAM thresholds must be numbers, got {str(thresholds)[:60]}") from None
    if t.ndim != 1 or len(t) == 0:
        raise BagcamsError("CAM thresholds must be a non-empty 1-D sequence")
    if not np.isfinite(t).all() or t.min() < 0 or t.max() >= 1 or (np.diff(t) <= 0).any():
        raise BagcamsError("CAM thresholds must be finite, in [0, 1) and strictly increasing")
    return t


def cam_thresholds(interval: float = 0.001) -> np.ndarray:
    """The CAM threshold grid ``np.arange(0, 1, interval)`` (float64), exactly as wsolevaluation."""
    if not (MIN_CAM_INTERVAL <= interval < 1.0):
        # below 1e-5 the grid (1/interval thresholds) costs memory and time and adds nothing: a uint8
        # map has 256 binarisations
        raise BagcamsError(f"CAM threshold interval must lie in [{MIN_CAM_INTERVAL}, 1), got {interval}")
    return np.arange(0, 1, interval)


def validate_scoremap(scoremap: np.ndarray, name: str = "scoremap") -> np.ndarray:
    """Check a score map is a finite 2-D float array in [0, 1] and return it clipped to [0, 1].

    Clipping only moves values that stray by less than :data:`SCORE_TOLERANCE` (rounding of a
    min-max normalisation); in-range values, and hence every result, stay bit-identical.
    """
    arr = np.asarray(scoremap)
    if arr.ndim != 2:
        raise BagcamsError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.size == 0:
        raise BagcamsError(f"{name} is empty (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.floating):
        raise BagcamsError(f"{name} must be a float array with values in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise BagcamsError(f"{name} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -SCORE_TOLERANCE or hi > 1.0 + SCORE_TOLERANCE:
        raise BagcamsError(f"{name} values must lie in [0, 1], got range [{lo:.6g}, {hi:.6g}]")
    if lo < 0.0 or hi > 1.0:
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def scoremap_to_uint8(scoremap: np.ndarray) -> np.ndarray:
    """``(scoremap * 255).astype(np.uint8)``: the 8-bit image wsolevaluation thresholds.

    A half-precision map is multiplied in float32, where ``value * 255`` is exact (11 + 8 significant
    bits), as the evaluation of saved maps does (``to_eval_size``); in float16 the product rounds
    and 131 of its 7169 values in [0, 1] would land one level too high (0.19995 -> 51, not 50).
    """
    arr = validate_scoremap(scoremap)
    if arr.dtype.itemsize < 4:
        arr = arr.astype(np.float32)
    return (arr * 255).astype(np.uint8)


def threshold_levels(scoremap_image: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The integer ``int(t * max(image))`` cv2.threshold gets for each CAM threshold ``t`` (int64)."""
    peak = float(np.max(scoremap_image))
    products = np.asarray(thresholds, dtype=np.float64) * peak  # same float64 product as t * np.uint8
    return np.trunc(products).astype(np.int64)


def binarize(scoremap_image: np.ndarray, level: int) -> np.ndarray:
    """cv2.threshold(THRESH_BINARY) at an integer level: 255 where the pixel is > level, else 0."""
    _, binary = cv2.threshold(scoremap_image, thresh=int(level), maxval=255, type=cv2.THRESH_BINARY)
    return binary


def _boxes_of_binary(
    binary: np.ndarray, multi_contour: bool, width: int, height: int, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The boxes (n, 4) int64 x0y0x1y1 of the contours of a binary image.

    ``binary`` may be a crop of the full image whose top-left corner is ``offset``; ``width`` and
    ``height`` are the full image's (boxes are clamped to ``width - 1`` / ``height - 1`` as in
    wsolevaluation). No contour gives the single box (0, 0, 0, 0); single-contour mode keeps the
    largest contour by ``cv2.contourArea`` (ties: the first, as python ``max``).
    """
    contours = cv2.findContours(binary, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE, offset=offset)[0]
    if len(contours) == 0:
        return _EMPTY_BOX.copy()
    if not multi_contour:
        contours = (max(contours, key=cv2.contourArea),)
    xmax, ymax = width - 1, height - 1
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append((x, y, min(x + w, xmax), min(y + h, ymax)))
    return np.array(boxes, dtype=np.int64)


def boxes_from_scoremap(scoremap: np.ndarray, threshold: float, multi_contour: bool = False) -> np.ndarray:
    """Boxes (n, 4) int64 x0y0x1y1, in the map's pixels, that wsolevaluation reads off one map at one
    CAM threshold (``threshold`` is relative to the map maximum, e.g. 0.2). Used to draw boxes."""
    image = scoremap_to_uint8(scoremap)
    height, width = image.shape
    level = int(threshold_levels(image, [threshold])[0])
    return _boxes_of_binary(binarize(image, level), multi_contour, width, height)


def object_boxes(scoremap: np.ndarray, threshold: float, multi_contour: bool = False) -> list[list[int]]:
    """The boxes to show a user: ``[x0, y0, x1, y1]`` with inclusive pixel edges (the first and last
    foreground column and row, as the GT boxes and :func:`box_iou` count them), one per outer contour
    of the map binarised exactly as the metrics do (``multi_contour``; else the largest contour), and
    none where nothing passes the threshold.

    Not :func:`boxes_from_scoremap`: the metric's boxes keep wsolevaluation's quirks, which would
    mislead a reader of ``boxes.json``: ``RETR_TREE`` turns a hole in the map into a second object, a
    corner is one past the last pixel except at the image edge, and an empty map gives (0, 0, 0, 0).
    """
    image = scoremap_to_uint8(scoremap)
    level = int(threshold_levels(image, [threshold])[0])
    contours = cv2.findContours(binarize(image, level), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    if not contours:
        return []
    if not multi_contour:
        contours = (max(contours, key=cv2.contourArea),)
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, x + w - 1, y + h - 1])
    return boxes


def boxes_at_thresholds_reference(
    scoremap: np.ndarray, thresholds: Sequence[float] | np.ndarray, multi_contour: bool
) -> list[np.ndarray]:
    """The straightforward loop: binarise and find contours once per threshold (slow, the reference)."""
    image = scoremap_to_uint8(scoremap)
    height, width = image.shape
    levels = threshold_levels(image, thresholds)
    return [_boxes_of_binary(binarize(image, int(k)), multi_contour, width, height) for k in levels]


def boxes_at_thresholds(
    scoremap: np.ndarray, thresholds: Sequence[float] | np.ndarray, multi_contour: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """Boxes for every threshold, computed once per distinct binarisation.

    Returns ``(unique_boxes, index)``: the boxes at threshold ``i`` are ``unique_boxes[index[i]]``,
    identical to ``boxes_at_thresholds_reference(...)[i]``. Two levels ``k`` give the same binary
    image exactly when no map value lies in between, so levels are grouped by the first distinct map
    value above them. Each binary image is cropped to its foreground's bounding box before
    findContours (which pads with zeros anyway), with ``offset`` putting points back in place.
    """
    image = scoremap_to_uint8(scoremap)
    height, width = image.shape
    levels = threshold_levels(image, thresholds)
    values = np.unique(image)  # sorted distinct map values
    # Pixels > k  <=>  pixels >= values[j] with j the first distinct value above k.
    groups = np.searchsorted(values, levels, side="right")
    unique_groups, first, index = np.unique(groups, return_index=True, return_inverse=True)
    index = index.reshape(-1)
    present = unique_groups < len(values)  # the others binarise to an empty image: no contour
    cut = values[unique_groups[present]]
    # Each binarisation's foreground bounding box, for all of them at once: the first row whose
    # running maximum (from the top) reaches the cut, and likewise from the bottom / left / right.
    y0s, y1s = _span(image.max(axis=1), cut)
    x0s, x1s = _span(image.max(axis=0), cut)
    crops = iter(zip(y0s.tolist(), y1s.tolist(), x0s.tolist(), x1s.tolist(), strict=True))
    unique_boxes: list[np.ndarray] = []
    for keep, i in zip(present.tolist(), first.tolist(), strict=True):
        if not keep:
            unique_boxes.append(_EMPTY_BOX.copy())
            continue
        y0, y1, x0, x1 = next(crops)
        crop = binarize(image[y0:y1, x0:x1], int(levels[i]))
        unique_boxes.append(_boxes_of_binary(crop, multi_contour, width, height, (x0, y0)))
    return unique_boxes, index


def _span(profile: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each cut, ``(first, last + 1)`` indices where the 1-D ``profile`` is >= the cut."""
    from_start = np.maximum.accumulate(profile)
    from_end = np.maximum.accumulate(profile[::-1])
    first = np.searchsorted(from_start, cuts, side="left")
    last = len(profile) - np.searchsorted(from_end, cuts, side="left")
    return first, last


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x0y0x1y1 boxes with inclusive pixel edges (wsolevaluation's
    ``calculate_multiple_iou``): area = (x1 - x0 + 1) * (y1 - y0 + 1); a non-positive union gives 0."""
    a = np.asarray(boxes_a, dtype=np.int64).reshape(-1, 1, 4)
    b = np.asarray(boxes_b, dtype=np.int64).reshape(1, -1, 4)
    iw = np.maximum(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0)
    ih = np.maximum(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    ious = inter / np.where(degenerate, 1, union)
    ious[degenerate] = 0.0
    return ious
