"""wsolevaluation-compatible localisation metrics and WSOL data-set reading.

Accumulate per image, compute at the end::

    meta = load_metadata("metadata/CUB/test")
    ev = BoxEvaluator(interval=0.001, multi_contour=True)
    for image_id in meta.image_ids:
        ev.accumulate(scoremap_224, meta.resized_boxes(image_id), pred_correct=pred == label)
    metrics = ev.compute()  # BoxMetrics: gt_known_loc, max_box_acc_v2, top1_loc, ...

Masks (OpenImages): ``MaskEvaluator().accumulate(scoremap, load_gt_mask(mask_root, paths, ignore))``.
"""

from bagcams_deploy.evaluation.box_metrics import DEFAULT_IOU_DELTAS, BoxEvaluator, BoxMetrics
from bagcams_deploy.evaluation.boxes import (
    RESIZE_LENGTH,
    box_iou,
    boxes_at_thresholds,
    boxes_at_thresholds_reference,
    boxes_from_scoremap,
    cam_thresholds,
    object_boxes,
    validate_scoremap,
)
from bagcams_deploy.evaluation.mask_metrics import IGNORE_VALUE, MaskEvaluator, MaskMetrics
from bagcams_deploy.evaluation.metadata import (
    WSOLMetadata,
    align_mask_ids,
    load_gt_mask,
    load_image,
    load_mask_metadata,
    load_metadata,
    resize_box,
)
from bagcams_deploy.evaluation.plots import plot_box_accuracy, plot_metrics, plot_precision_recall
from bagcams_deploy.evaluation.report import markdown_table, metrics_rows, save_json_report

__all__ = [
    "DEFAULT_IOU_DELTAS",
    "IGNORE_VALUE",
    "RESIZE_LENGTH",
    "BoxEvaluator",
    "BoxMetrics",
    "MaskEvaluator",
    "MaskMetrics",
    "WSOLMetadata",
    "align_mask_ids",
    "box_iou",
    "boxes_at_thresholds",
    "boxes_at_thresholds_reference",
    "boxes_from_scoremap",
    "cam_thresholds",
    "load_gt_mask",
    "load_image",
    "load_mask_metadata",
    "load_metadata",
    "markdown_table",
    "metrics_rows",
    "object_boxes",
    "plot_box_accuracy",
    "plot_metrics",
    "plot_precision_recall",
    "resize_box",
    "save_json_report",
    "validate_scoremap",
]
