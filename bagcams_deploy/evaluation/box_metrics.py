"""Box localisation metrics (GT-known Loc, MaxBoxAccV2, Top-1 Loc) accumulated image by image.

Follows wsolevaluation's ``BoxEvaluator``: per image and per CAM threshold the best IoU between the
estimated boxes and the GT boxes is compared with each IoU delta; only integer counters of shape
(len(deltas), len(thresholds)) are kept, so memory does not grow with the data set.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation.boxes import (
    box_iou,
    boxes_at_thresholds,
    boxes_at_thresholds_reference,
    checked_thresholds,
)

DEFAULT_IOU_DELTAS: tuple[int, ...] = (30, 50, 70)
_V2_DELTAS = (30, 50, 70)


def box_metric_name(multi_contour: bool) -> str:
    """The name of the mean over IoU 30/50/70: MaxBoxAccV2 is defined with every contour; with the
    largest contour only it is another number and must not carry that name."""
    return "MaxBoxAccV2" if multi_contour else "MaxBoxAcc 30/50/70 (largest contour)"


@dataclass
class BoxMetrics:
    """Final box metrics, all in percent.

    ``gt_known_loc[d]`` is the best-threshold accuracy at IoU >= d/100 and ``best_threshold[d]`` the
    CAM threshold reaching it (first maximum). ``max_box_acc_v2`` is their mean over deltas 30/50/70
    (MaxBoxAccV2 proper when ``multi_contour`` is true; ``None`` if a delta is missing).
    ``top1_loc`` (IoU >= 0.5 and the class prediction right) is ``None`` unless every image came
    with a prediction. ``accuracy_curves[d]`` is the per-threshold GT-known accuracy, for plots.
    """

    count: int
    thresholds: np.ndarray
    iou_deltas: tuple[int, ...]
    multi_contour: bool
    gt_known_loc: dict[int, float]
    best_threshold: dict[int, float]
    max_box_acc_v2: float | None
    top1_loc: float | None
    top1_best_threshold: float | None
    accuracy_curves: dict[int, np.ndarray] = field(repr=False)
    top1_curves: dict[int, np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (curves left out; they are long and only for plotting)."""
        return {
            "kind": "boxes",
            "count": self.count,
            "num_thresholds": len(self.thresholds),
            "threshold_interval": float(self.thresholds[1] - self.thresholds[0]) if len(self.thresholds) > 1 else None,
            "iou_deltas": list(self.iou_deltas),
            "multi_contour": self.multi_contour,
            "gt_known_loc": {str(d): v for d, v in self.gt_known_loc.items()},
            "best_threshold": {str(d): v for d, v in self.best_threshold.items()},
            "max_box_acc_v2": self.max_box_acc_v2,
            "top1_loc": self.top1_loc,
            "top1_best_threshold": self.top1_best_threshold,
        }


def _checked_flag(pred_correct: object) -> bool | None:
    """``pred_correct`` as a bool: True/False, numpy's booleans or a 0/1 integer (scalar or 0-d
    array, e.g. ``pred == label``); anything else, such as the string "no" (truthy), is refused
    rather than counted as a correct prediction."""
    if pred_correct is None:
        return None
    if hasattr(pred_correct, "detach"):  # a torch scalar
        pred_correct = pred_correct.detach().cpu().numpy()
    flag_like = isinstance(pred_correct, bool | np.bool_ | int | np.integer | np.ndarray)
    value = np.asarray(pred_correct) if flag_like else None
    if value is None or value.ndim != 0 or value.dtype.kind not in "biu" or value.item() not in (0, 1):
        raise BagcamsError(
            f"pred_correct must be a bool (or 0/1) for the one image, or None, got {pred_correct!r}"[:200]
        )
    return bool(value.item())


class BoxEvaluator:
    """Accumulates box-localisation counts over images, then :meth:`compute` gives :class:`BoxMetrics`.

    ``thresholds`` defaults to ``np.arange(0, 1, interval)``. ``fast=False`` runs the straightforward
    per-threshold loop (the reference the fast path is tested against; same counts, much slower).
    """

    def __init__(
        self,
        thresholds: Sequence[float] | np.ndarray | None = None,
        interval: float = 0.001,
        iou_deltas: Sequence[int] = DEFAULT_IOU_DELTAS,
        multi_contour: bool = True,
        fast: bool = True,
    ) -> None:
        self.thresholds = checked_thresholds(thresholds, interval)
        deltas = list(iou_deltas) if not isinstance(iou_deltas, str | bytes) else [iou_deltas]
        # Whole percentages, as the metrics are keyed and reported: int(30.5) would score at 30 unsaid.
        if not deltas or any(isinstance(d, bool) or not isinstance(d, numbers.Real) or not float(d).is_integer()
                             or not 0 < d <= 100 for d in deltas):  # fmt: skip
            raise BagcamsError(f"IoU deltas must be whole percentages in (0, 100], got {deltas}")
        self.iou_deltas = tuple(int(d) for d in deltas)
        self.multi_contour = bool(multi_contour)
        self.fast = bool(fast)
        self._iou_cut = np.array([d / 100 for d in self.iou_deltas], dtype=np.float64)[:, None]
        shape = (len(self.iou_deltas), len(self.thresholds))
        self.num_correct = np.zeros(shape, dtype=np.int64)
        self.num_correct_top1 = np.zeros(shape, dtype=np.int64)
        self.count = 0
        self.count_with_prediction = 0

    def best_ious(self, scoremap: np.ndarray, gt_boxes: np.ndarray | Sequence) -> np.ndarray:
        """Per threshold, the best IoU (float64) between the map's boxes and any GT box."""
        gt = np.asarray(gt_boxes, dtype=np.int64)
        if gt.ndim != 2 or gt.shape[1] != 4 or len(gt) == 0:
            raise BagcamsError(f"GT boxes must be a non-empty (n, 4) x0y0x1y1 array, got shape {gt.shape}")
        if (gt[:, 2] < gt[:, 0]).any() or (gt[:, 3] < gt[:, 1]).any():
            raise BagcamsError(f"GT boxes must have x1 >= x0 and y1 >= y0, got {gt.tolist()}")
        if self.fast:
            unique_boxes, index = boxes_at_thresholds(scoremap, self.thresholds, self.multi_contour)
            sizes = np.array([len(b) for b in unique_boxes])
            per_box = box_iou(np.concatenate(unique_boxes), gt).max(axis=1)
            per_binarisation = np.maximum.reduceat(per_box, np.concatenate(([0], np.cumsum(sizes)[:-1])))
            return per_binarisation[index]
        boxes = boxes_at_thresholds_reference(scoremap, self.thresholds, self.multi_contour)
        return np.array([box_iou(b, gt).max() for b in boxes], dtype=np.float64)

    def accumulate(
        self, scoremap: np.ndarray, gt_boxes: np.ndarray | Sequence, pred_correct: bool | None = None
    ) -> None:
        """Add one image: its score map (H, W) in [0, 1], its GT boxes (n, 4) x0y0x1y1 in the map's
        pixels (see ``resize_box``), and whether the classifier's top-1 class was right (or None)."""
        pred_correct = _checked_flag(pred_correct)  # before anything is counted
        correct = self.best_ious(scoremap, gt_boxes)[None, :] >= self._iou_cut
        self.num_correct += correct
        if pred_correct is not None:
            self.count_with_prediction += 1
            if pred_correct:
                self.num_correct_top1 += correct
        self.count += 1

    def compute(self) -> BoxMetrics:
        """The metrics over every image accumulated so far."""
        if self.count == 0:
            raise BagcamsError("no image was accumulated: nothing to evaluate")
        acc = self.num_correct * 100.0 / float(self.count)
        best = acc.argmax(axis=1)
        gt_known = {d: float(acc[j, best[j]]) for j, d in enumerate(self.iou_deltas)}
        best_thr = {d: float(self.thresholds[best[j]]) for j, d in enumerate(self.iou_deltas)}
        v2 = float(np.mean([gt_known[d] for d in _V2_DELTAS])) if all(d in gt_known for d in _V2_DELTAS) else None
        top1 = top1_thr = None
        top1_curves = None
        if self.count_with_prediction == self.count:
            top1_acc = self.num_correct_top1 * 100.0 / float(self.count)
            top1_curves = {d: top1_acc[j] for j, d in enumerate(self.iou_deltas)}
            if 50 in self.iou_deltas:
                row = top1_acc[self.iou_deltas.index(50)]
                top1, top1_thr = float(row.max()), float(self.thresholds[row.argmax()])
        return BoxMetrics(
            count=self.count,
            thresholds=self.thresholds.copy(),
            iou_deltas=self.iou_deltas,
            multi_contour=self.multi_contour,
            gt_known_loc=gt_known,
            best_threshold=best_thr,
            max_box_acc_v2=v2,
            top1_loc=top1,
            top1_best_threshold=top1_thr,
            accuracy_curves={d: acc[j] for j, d in enumerate(self.iou_deltas)},
            top1_curves=top1_curves,
        )
