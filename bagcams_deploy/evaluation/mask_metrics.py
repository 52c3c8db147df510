"""Pixel-level metrics (PxAP, pIoU) from score histograms, as wsolevaluation's ``MaskEvaluator``.

Per image, scores at GT-foreground and GT-background pixels (ignored pixels, value 255, excluded)
go into histograms whose bin edges are the CAM thresholds plus [1, 2, 3]; only the two float64
histograms are kept, so memory is flat. PxAP is the area under the pixel precision-recall curve;
pIoU is the best pixel IoU over thresholds.

One deliberate difference: wsolevaluation counts the foreground pixels from its histogram, so
with a threshold grid that starts above 0 (never the published one, ``arange(0, 1, interval)``) the
foreground scored below the first threshold went uncounted and recall was inflated; here every
foreground pixel counts. On grids starting at 0 the two are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation.boxes import checked_thresholds, validate_scoremap

#: Value of ignored pixels in a GT mask (wsolevaluation's convention).
IGNORE_VALUE = 255


@dataclass
class MaskMetrics:
    """PxAP and pIoU in percent.

    ``piou_threshold`` is the score threshold (pixel predicted foreground when score >= it) of the
    best pIoU. ``precision``/``recall`` are the curve points (thresholds from high to low) where the
    precision is defined, for plotting; ``thresholds`` holds the matching score thresholds.
    """

    count: int
    pxap: float
    piou: float
    piou_threshold: float
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    thresholds: np.ndarray = field(repr=False)
    iou_curve: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (curves left out)."""
        return {
            "kind": "masks",
            "count": self.count,
            "pxap": self.pxap,
            "piou": self.piou,
            "piou_threshold": self.piou_threshold,
        }


class MaskEvaluator:
    """Accumulates pixel-score histograms over images; :meth:`compute` gives :class:`MaskMetrics`."""

    def __init__(self, thresholds: Sequence[float] | np.ndarray | None = None, interval: float = 0.001) -> None:
        self.thresholds = checked_thresholds(thresholds, interval)
        # Bins [0, bw), ..., [1 - bw, 1), [1, 2), [2, 3]: scores of exactly 1.0 fall in [1, 2).
        self.bin_edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.gt_true_hist = np.zeros(len(self.bin_edges) - 1, dtype=np.float64)
        self.gt_false_hist = np.zeros(len(self.bin_edges) - 1, dtype=np.float64)
        # Foreground pixels counted apart from the histograms: with a user's grid that starts above 0,
        # those scored below its first threshold fall in no bin, yet are false negatives at every one.
        self.num_true = 0
        self.count = 0
        self.ignored_pixels = 0  # only to explain a 0/255 mask that has no foreground

    def accumulate(self, scoremap: np.ndarray, gt_mask: np.ndarray) -> None:
        """Add one image: score map (H, W) in [0, 1] and GT mask of the same shape with 1 foreground,
        0 background and 255 ignore (as :func:`load_gt_mask` returns)."""
        scoremap = validate_scoremap(scoremap)
        mask = np.asarray(gt_mask)
        if mask.shape != scoremap.shape:
            raise BagcamsError(f"GT mask shape {mask.shape} differs from the score map shape {scoremap.shape}")
        bad = ~np.isin(mask, (0, 1, IGNORE_VALUE))
        if bad.any():
            raise BagcamsError(
                f"GT mask values must be 0, 1 or {IGNORE_VALUE}, found {np.unique(mask[bad])[:5].tolist()}"
            )
        true_hist, _ = np.histogram(scoremap[mask == 1], bins=self.bin_edges)
        false_hist, _ = np.histogram(scoremap[mask == 0], bins=self.bin_edges)
        self.gt_true_hist += true_hist.astype(np.float64)
        self.gt_false_hist += false_hist.astype(np.float64)
        self.num_true += int(np.count_nonzero(mask == 1))
        self.ignored_pixels += int(np.count_nonzero(mask == IGNORE_VALUE))
        self.count += 1

    def compute(self) -> MaskMetrics:
        """PxAP and pIoU over every image accumulated so far."""
        if self.count == 0:
            raise BagcamsError("no image was accumulated: nothing to evaluate")
        num_true = float(self.num_true)
        tp = self.gt_true_hist[::-1].cumsum()
        fn = num_true - tp
        fp = self.gt_false_hist[::-1].cumsum()
        if num_true <= 0:
            hint = ""
            if self.ignored_pixels:  # a 0/255 binary mask read as it is stored
                v = IGNORE_VALUE
                hint = f" ({v} means ignore, foreground is 1: divide a 0/{v} mask by {v})"
            raise BagcamsError(f"no ground-truth foreground pixel in the {self.count} evaluated mask(s){hint}")
        if ((tp + fp) <= 0).all():
            raise BagcamsError(f"no pixel of the {self.count} evaluated map(s) is predicted foreground")
        non_zero = (tp + fp) != 0
        precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=non_zero)
        recall = tp / (tp + fn)
        pxap = float((precision[1:] * np.diff(recall))[non_zero[1:]].sum() * 100)
        union = tp + fp + fn
        iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
        # The curve's point j counts scores >= the j-th lower bin edge, taken from the top.
        lower_edges = self.bin_edges[:-1][::-1]
        best = int(iou.argmax())
        return MaskMetrics(
            count=self.count,
            pxap=pxap,
            piou=float(iou[best] * 100),
            piou_threshold=float(lower_edges[best]),
            precision=precision[non_zero],
            recall=recall[non_zero],
            thresholds=lower_edges[non_zero],
            iou_curve=iou * 100,
        )
