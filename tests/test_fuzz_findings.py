"""Regression tests for what property-based fuzzing of the pure numeric functions found.

The fuzzing itself (hypothesis, against independent numpy oracles and a literal transcription of
wsolevaluation) is not part of the suite; each case here is a fixed input it reduced a failure to.
"""

from __future__ import annotations

import numpy as np
import torch

from bagcams_deploy.evaluation import BoxEvaluator, boxes_from_scoremap
from bagcams_deploy.methods.aggregation import upsample_normalize

# normalize_minmax's overflow guard itself: tests/test_reference.py (a signed map wider than the float range).


def test_cam_grid_spanning_more_than_the_float_range_gives_a_finite_map():
    # CAM's raw map is not ReLU'd: a classifier row can give finite values of both signs this far apart.
    raw = torch.tensor([[3e38, -3e38], [1e38, 0.0]], dtype=torch.float32).view(1, 1, 2, 2)
    out = upsample_normalize(raw, (5, 6), "cam")
    assert torch.isfinite(out).all() and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_a_half_precision_map_is_binarised_like_its_float32_copy():
    # Found: float16(0.2) = 0.19995 times 255 rounds to 51.0 in float16 (exactly 50.99 -> level 50), so
    # a float16 map passed to the evaluators got other boxes than the same map saved and evaluated
    # (to_eval_size widens to float32, where the product is exact).
    m = np.zeros((6, 8), dtype=np.float16)
    m[1:3, 1:3] = 1.0
    m[1:5, 4:7] = 0.2
    t = 0.197  # int(0.197 * 255) = 50: the 0.2 blob is background at its true level 50
    assert boxes_from_scoremap(m, t).tolist() == [[1, 1, 3, 3]]
    assert boxes_from_scoremap(m, t).tolist() == boxes_from_scoremap(m.astype(np.float32), t).tolist()
    gt = np.array([[1, 1, 3, 3]])
    half, single = BoxEvaluator(thresholds=[t], iou_deltas=[50]), BoxEvaluator(thresholds=[t], iou_deltas=[50])
    half.accumulate(m, gt)
    single.accumulate(m.astype(np.float32), gt)
    assert half.num_correct.tolist() == single.num_correct.tolist() == [[1]]


def test_otsu_boxes_split_the_map_where_otsu_does():
    # Found: Otsu's level 15 on a map peaking at 22 came back as t = 15 / 22, and int(t * 22) = 14, so
    # the boxes took the pixels at exactly 15 (Otsu's background) as foreground: here the whole image.
    # 1087 (level, peak) pairs with peak <= 255 are affected; peaks below 255 are common after the
    # map is resized to the image.
    from bagcams_deploy.evaluation import object_boxes
    from bagcams_deploy.localize import otsu_threshold

    m = np.full((12, 16), 15.5 / 255, np.float32)
    m[3:6, 4:9] = 22.5 / 255
    t = otsu_threshold(m)
    assert int(t * 22) == 15 and abs(t - 15 / 22) < 1e-15
    assert object_boxes(m, t) == [[4, 3, 8, 5]]
