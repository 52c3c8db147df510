"""Localisation metrics against hand-worked cases, and the fast path against the straightforward loop."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation import (
    BoxEvaluator,
    MaskEvaluator,
    box_iou,
    boxes_at_thresholds,
    boxes_at_thresholds_reference,
    boxes_from_scoremap,
    cam_thresholds,
    markdown_table,
    object_boxes,
    plot_metrics,
    save_json_report,
    validate_scoremap,
)

S = 224


def blank() -> np.ndarray:
    return np.zeros((S, S), dtype=np.float32)


# --------------------------------------------------------------------------- boxes and IoU


def test_single_rectangle_box_and_iou_by_hand():
    m = blank()
    m[50:100, 40:120] = 1.0  # rows y 50..99, columns x 40..119
    # boundingRect gives x=40, y=50, w=80, h=50 and wsolevaluation's box is (x, y, x + w, y + h).
    assert boxes_from_scoremap(m, 0.5).tolist() == [[40, 50, 120, 100]]
    # Against the exact GT box (40, 50, 119, 99), inclusive pixels:
    #   inter = (min(120,119) - 40 + 1) * (min(100,99) - 50 + 1) = 80 * 50 = 4000
    #   area_pred = 81 * 51 = 4131, area_gt = 80 * 50 = 4000 -> IoU = 4000 / 4131
    assert box_iou([[40, 50, 120, 100]], [[40, 50, 119, 99]])[0, 0] == pytest.approx(4000 / 4131)
    # A larger GT box (40, 50, 160, 120): inter = 81 * 51 = 4131, area_gt = 121 * 71 = 8591,
    # IoU = 4131 / (4131 + 8591 - 4131) = 0.4809: correct at delta 30, wrong at 50 and 70.
    ev = BoxEvaluator(interval=0.01)
    ev.accumulate(m, [[40, 50, 160, 120]])
    metrics = ev.compute()
    # The map is 0/255 so every threshold (level int(t*255) <= 254) gives the same rectangle.
    assert metrics.gt_known_loc == {30: 100.0, 50: 0.0, 70: 0.0}
    assert metrics.max_box_acc_v2 == pytest.approx(100 / 3)
    assert metrics.best_threshold[30] == 0.0
    assert metrics.top1_loc is None  # no prediction given


def test_box_iou_disjoint_and_degenerate():
    # Disjoint: max(min(x1) - max(x0) + 1, 0) = max(5 - 10 + 1, 0) = 0.
    assert box_iou([[0, 0, 5, 5]], [[10, 10, 20, 20]])[0, 0] == 0.0
    # Identical one-pixel boxes: 1 / (1 + 1 - 1) = 1.
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 1.0


def test_two_blobs_single_vs_multi_contour():
    m = blank()
    m[10:30, 10:30] = 1.0  # blob A: 20x20 at value 255
    m[100:160, 100:160] = 0.5  # blob B: 60x60 at uint8(127.5) = 127
    gt = [[10, 10, 29, 29]]  # blob A
    # Contour areas (polygon through pixel centres): A 19*19 = 361, B 59*59 = 3481, so the single
    # largest contour is B while both are present, i.e. while int(t * 255) < 127 <=> t <= 0.49.
    assert boxes_from_scoremap(m, 0.2, multi_contour=False).tolist() == [[100, 100, 160, 160]]
    assert boxes_from_scoremap(m, 0.2, multi_contour=True).tolist() == [
        [100, 100, 160, 160],
        [10, 10, 30, 30],
    ]
    assert boxes_from_scoremap(m, 0.5, multi_contour=False).tolist() == [[10, 10, 30, 30]]
    # IoU(A box, GT) = 20*20 / (21*21 + 20*20 - 20*20) = 400 / 441 = 0.907; IoU(B box, GT) = 0.
    single = BoxEvaluator(interval=0.01, multi_contour=False)
    multi = BoxEvaluator(interval=0.01, multi_contour=True)
    for ev in (single, multi):
        ev.accumulate(m, gt)
    # Thresholds 0.00..0.49 (50 of them): single contour picks B -> wrong; 0.50..0.99 -> right.
    assert single.num_correct[1].tolist() == [0] * 50 + [1] * 50
    assert multi.num_correct[1].tolist() == [1] * 100
    s, mu = single.compute(), multi.compute()
    assert s.gt_known_loc[50] == mu.gt_known_loc[50] == 100.0
    assert s.best_threshold[50] == 0.5 and mu.best_threshold[50] == 0.0
    assert s.accuracy_curves[50].mean() == 50.0 and mu.accuracy_curves[50].mean() == 100.0


def test_nested_contours():
    m = blank()
    m[50:150, 50:150] = 1.0  # outer square x 50..149
    m[80:120, 80:120] = 0.0  # hole x 80..119
    m[95:105, 95:105] = 1.0  # island inside the hole x 95..104
    # RETR_TREE: the outer border, the hole border (traced on the foreground pixels around the
    # hole, x 79..120 -> (79, 79, 79 + 42, 79 + 42)) and the island.
    multi = boxes_from_scoremap(m, 0.5, multi_contour=True).tolist()
    assert multi == [[50, 50, 150, 150], [79, 79, 121, 121], [95, 95, 105, 105]]
    assert boxes_from_scoremap(m, 0.5, multi_contour=False).tolist() == [[50, 50, 150, 150]]


def test_object_boxes_are_outer_contours_with_inclusive_edges():
    """The boxes a user reads (localize): holes are not objects, the corner is the last foreground
    pixel everywhere (also at the image edge), and an empty map has no box."""
    m = blank()
    m[50:150, 50:150] = 1.0  # outer square, pixels 50..149
    m[80:120, 80:120] = 0.0  # a hole in it
    m[95:105, 95:105] = 1.0  # an island inside the hole
    m[200:224, 0:10] = 1.0  # a blob touching the bottom and left edges, pixels x 0..9, y 200..223
    assert object_boxes(m, 0.5, multi_contour=True) == [[0, 200, 9, 223], [50, 50, 149, 149]]
    assert object_boxes(m, 0.5, multi_contour=False) == [[50, 50, 149, 149]]
    assert object_boxes(blank(), 0.5) == []
    one = blank()
    one[7, 9] = 1.0
    assert object_boxes(one, 0.5) == [[9, 7, 9, 7]]  # a one-pixel object is a box, not "nothing"
    # the same binarisation as the metrics: the boxes are the metric's boxes, minus its quirks
    rng = np.random.default_rng(3)
    for _ in range(20):
        r = np.clip(cv2.GaussianBlur(rng.random((S, S)).astype(np.float32), (0, 0), 9) * 3 - 1, 0, 1)
        r /= max(float(r.max()), 1e-6)
        t = float(rng.uniform(0.1, 0.9))
        (metric,) = boxes_from_scoremap(r, t, multi_contour=False).tolist()
        (user,) = object_boxes(r, t, multi_contour=False) or [[0, 0, -1, -1]]
        assert user[:2] == metric[:2] and [min(v + 1, S - 1) for v in user[2:]] == metric[2:]


def test_constant_map_gives_the_whole_image():
    m = np.full((S, S), 0.7, dtype=np.float32)  # uint8(178.5) = 178 everywhere
    # level int(t * 178) <= 177 < 178: all pixels on; the border contour's rect (0, 0, 224, 224) is
    # clamped to (0, 0, 223, 223).
    ub, index = boxes_at_thresholds(m, cam_thresholds(0.01), multi_contour=True)
    assert len(ub) == 1 and ub[0].tolist() == [[0, 0, 223, 223]] and set(index.tolist()) == {0}
    ev = BoxEvaluator(interval=0.01)
    ev.accumulate(m, [[0, 0, 223, 223]])
    assert ev.compute().gt_known_loc == {30: 100.0, 50: 100.0, 70: 100.0}


def test_all_zero_map_gives_the_empty_box():
    m = blank()
    # Nothing is > int(t * 0) = 0: no contour, so the box is (0, 0, 0, 0) at every threshold.
    assert boxes_from_scoremap(m, 0.3).tolist() == [[0, 0, 0, 0]]
    ev = BoxEvaluator(interval=0.01)
    # IoU((0,0,0,0), (0,0,9,9)) = 1 / (1 + 100 - 1) = 0.01 -> wrong everywhere.
    ev.accumulate(m, [[0, 0, 9, 9]])
    assert ev.num_correct.sum() == 0
    assert ev.compute().gt_known_loc[30] == 0.0


def test_threshold_level_truncation_matches_cv2_threshold():
    m = blank()
    m[0:10, 0:10] = 1.0  # 255
    m[50:60, 50:60] = 100 / 255  # uint8 100 (float32 rounding keeps 99.99.. or 100.0)
    v = int(np.float32(100 / 255) * 255)
    # Thresh level int(t * 255): the second blob disappears once the level reaches its value v.
    t_keep = (v - 1) / 255 + 1e-9  # level v - 1: pixels with value v still > level
    t_drop = (v + 0.5) / 255  # level v: pixel == level is not > level
    assert len(boxes_from_scoremap(m, t_keep, multi_contour=True)) == 2
    assert len(boxes_from_scoremap(m, t_drop, multi_contour=True)) == 1


def test_top1_counting():
    m = blank()
    m[20:60, 20:60] = 1.0
    good, bad = [[20, 20, 59, 59]], [[150, 150, 200, 200]]
    ev = BoxEvaluator(interval=0.01)
    ev.accumulate(m, good, pred_correct=True)  # localised, class right -> counts for both
    ev.accumulate(m, good, pred_correct=False)  # localised, class wrong -> GT-known only
    ev.accumulate(m, bad, pred_correct=True)  # not localised -> neither
    metrics = ev.compute()
    assert metrics.gt_known_loc[50] == pytest.approx(200 / 3)  # 2 of 3
    assert metrics.top1_loc == pytest.approx(100 / 3)  # 1 of 3
    ev.accumulate(m, good)  # an image without a prediction: Top-1 Loc is undefined
    assert ev.compute().top1_loc is None


# --------------------------------------------------------------------------- fast path == loop


def _random_map(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "noise":  # many small contours, holes, nesting
        m = cv2.GaussianBlur(rng.random((S, S)), (0, 0), rng.uniform(1.5, 6))
    elif kind == "blobs":
        yy, xx = np.mgrid[0:S, 0:S]
        m = np.zeros((S, S))
        for _ in range(rng.integers(1, 5)):
            cx, cy, sx, sy = *rng.uniform(0, S, 2), *rng.uniform(5, 60, 2)
            m += rng.uniform(0.2, 1) * np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2)))
    else:  # "steps": few distinct values, plateaus touching the border
        m = np.floor(cv2.GaussianBlur(rng.random((S, S)), (0, 0), 8) * 40) % 5
    m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
    if rng.random() < 0.3:
        m = m * rng.uniform(0.2, 0.9)  # peak below 1: levels use int(t * max) with max < 255
    return m.astype(np.float32 if rng.random() < 0.5 else np.float64)


def _random_gt(rng: np.random.Generator) -> np.ndarray:
    x0, y0 = rng.integers(0, S - 30, 2)
    w, h = rng.integers(10, 120, 2)
    return np.array([[x0, y0, min(x0 + w, S - 1), min(y0 + h, S - 1)]])


@pytest.mark.parametrize("interval,n_maps", [(0.01, 24), (0.001, 3)])
def test_fast_path_is_bit_identical_to_the_loop(interval, n_maps):
    rng = np.random.default_rng(1234 + n_maps)
    thresholds = cam_thresholds(interval)
    for multi in (False, True):
        fast = BoxEvaluator(interval=interval, multi_contour=multi, iou_deltas=(10, 30, 50, 70, 90))
        slow = BoxEvaluator(interval=interval, multi_contour=multi, iou_deltas=(10, 30, 50, 70, 90), fast=False)
        for n in range(n_maps):
            m = _random_map(rng, ("noise", "blobs", "steps")[n % 3])
            gt = np.concatenate([_random_gt(rng) for _ in range(rng.integers(1, 4))])
            if n < 6:  # the boxes themselves, threshold by threshold
                reference = boxes_at_thresholds_reference(m, thresholds, multi)
                unique, index = boxes_at_thresholds(m, thresholds, multi)
                assert all(np.array_equal(reference[i], unique[index[i]]) for i in range(len(thresholds)))
            pred = bool(rng.random() < 0.5)
            fast.accumulate(m, gt, pred)
            slow.accumulate(m, gt, pred)
        np.testing.assert_array_equal(fast.num_correct, slow.num_correct)
        np.testing.assert_array_equal(fast.num_correct_top1, slow.num_correct_top1)
        assert fast.compute().to_dict() == slow.compute().to_dict()


# --------------------------------------------------------------------------- masks


def test_pxap_and_piou_with_ignore_by_hand():
    scores = np.array([[0.9, 0.4, 0.7], [0.2, 0.8, 0.1]])
    mask = np.array([[1, 1, 0], [0, 255, 0]])  # the 0.8 pixel is ignored
    ev = MaskEvaluator(thresholds=[0.0, 0.25, 0.5, 0.75])
    ev.accumulate(scores, mask)
    # Bins [0,.25) [.25,.5) [.5,.75) [.75,1) [1,2) [2,3]:
    #   foreground 0.9, 0.4      -> true  = [0, 1, 0, 1, 0, 0]
    #   background 0.7, 0.2, 0.1 -> false = [2, 0, 1, 0, 0, 0]
    assert ev.gt_true_hist.tolist() == [0, 1, 0, 1, 0, 0]
    assert ev.gt_false_hist.tolist() == [2, 0, 1, 0, 0, 0]
    # From the top (score >= 2, 1, .75, .5, .25, 0): tp = [0,0,1,1,2,2], fp = [0,0,0,1,1,3],
    # fn = 2 - tp = [2,2,1,1,0,0]; precision (where tp+fp > 0) = [1, 1/2, 2/3, 2/5],
    # recall = [0,0,.5,.5,1,1]; PxAP = sum precision[1:] * diff(recall) over defined points
    #   = 1 * .5 + 1/2 * 0 + 2/3 * .5 + 2/5 * 0 = 5/6.
    # pIoU = max tp / (tp + fp + fn) = max(0, 0, 1/2, 1/3, 2/3, 2/5) = 2/3 at threshold .25.
    metrics = ev.compute()
    assert metrics.pxap == pytest.approx(500 / 6)
    assert metrics.piou == pytest.approx(200 / 3)
    assert metrics.piou_threshold == 0.25
    assert metrics.precision.tolist() == pytest.approx([1, 1 / 2, 2 / 3, 2 / 5])
    assert metrics.recall.tolist() == pytest.approx([0.5, 0.5, 1, 1])
    # Without the ignore value the 0.8 pixel is background in [.75, 1): fp from the top becomes
    # [0,0,1,2,2,4], precision [1/2, 1/3, 1/2, 1/3] -> PxAP = 1/2 * .5 + 1/2 * .5 = 1/2.
    plain = MaskEvaluator(thresholds=[0.0, 0.25, 0.5, 0.75])
    plain.accumulate(scores, np.where(mask == 255, 0, mask))
    assert plain.compute().pxap == pytest.approx(100 * (0.5 * 0.5 + 0.5 * 0.5))


def test_mask_errors():
    ev = MaskEvaluator(interval=0.01)
    with pytest.raises(BagcamsError, match="no image was accumulated"):
        ev.compute()
    ev.accumulate(np.full((4, 4), 0.5), np.zeros((4, 4)))
    with pytest.raises(BagcamsError, match="no ground-truth foreground pixel"):
        ev.compute()
    with pytest.raises(BagcamsError, match="differs from the score map"):
        ev.accumulate(np.full((4, 4), 0.5), np.zeros((5, 4)))
    with pytest.raises(BagcamsError, match="must be 0, 1 or 255"):
        ev.accumulate(np.full((4, 4), 0.5), np.full((4, 4), 7))


def test_mask_metrics_no_warnings_on_perfect_maps():
    ev = MaskEvaluator(interval=0.01)
    mask = np.zeros((S, S))
    mask[50:100, 50:100] = 1
    with np.errstate(all="raise"):
        ev.accumulate(mask.astype(np.float32), mask)
        metrics = ev.compute()
    assert metrics.pxap == pytest.approx(100.0) and metrics.piou == pytest.approx(100.0)


# --------------------------------------------------------------------------- validation and reports


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((2, 4, 4)), "2-D"),
        (np.zeros((4, 4), dtype=np.uint8), "float array"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), 1.5), r"range \[1.5, 1.5\]"),
        (np.full((4, 4), -0.2), "must lie in"),
    ],
)
def test_scoremap_validation(bad, message):
    with pytest.raises(BagcamsError, match=message):
        validate_scoremap(bad)
    with pytest.raises(BagcamsError, match=message):
        BoxEvaluator(interval=0.1).accumulate(bad, [[0, 0, 1, 1]])


def test_scoremap_tolerance_is_clipped():
    m = np.full((4, 4), 1.0 + 1e-7)
    m[0, 0] = -1e-7
    out = validate_scoremap(m)
    assert out.max() == 1.0 and out.min() == 0.0


def test_bad_gt_boxes_and_settings():
    with pytest.raises(BagcamsError, match="x1 >= x0"):
        BoxEvaluator(interval=0.1).accumulate(blank(), [[10, 0, 5, 5]])
    with pytest.raises(BagcamsError, match=r"\(n, 4\)"):
        BoxEvaluator(interval=0.1).accumulate(blank(), [1, 2, 3])
    with pytest.raises(BagcamsError, match="interval"):
        BoxEvaluator(interval=0)
    with pytest.raises(BagcamsError, match="IoU deltas"):
        BoxEvaluator(iou_deltas=(0, 50))
    # whole percentages only: 30.5 used to be scored at 30 unsaid; a string is no list of deltas
    for deltas in ((30.5, 50), ("50",), "50", (True,), (float("nan"),)):
        with pytest.raises(BagcamsError, match="IoU deltas must be whole percentages"):
            BoxEvaluator(iou_deltas=deltas)
    assert BoxEvaluator(iou_deltas=(np.int64(30), 50.0)).iou_deltas == (30, 50)


def test_reports_and_plots(tmp_path):
    m = blank()
    m[20:60, 20:60] = 1.0
    ev = BoxEvaluator(interval=0.01)
    ev.accumulate(m, [[20, 20, 59, 59]], pred_correct=True)
    box_metrics = ev.compute()
    table = markdown_table(box_metrics, title="CUB test")
    assert "| GT-known Loc @ IoU 50 | 100.00 | 0.000 |" in table and "MaxBoxAccV2" in table
    report = json.loads(save_json_report(tmp_path / "r" / "box.json", box_metrics, {"model": "x"}).read_text())
    assert report["metrics"]["gt_known_loc"]["50"] == 100.0 and report["model"] == "x"
    assert plot_metrics(box_metrics, tmp_path / "box.png").stat().st_size > 1000

    mev = MaskEvaluator(interval=0.01)
    mev.accumulate(m, (m > 0).astype(np.float32))
    mask_metrics = mev.compute()
    assert "| PxAP | 100.00 | - |" in markdown_table(mask_metrics)
    assert plot_metrics(mask_metrics, tmp_path / "pr.png").stat().st_size > 1000


def test_an_iou_exactly_at_the_cut_counts_as_correct():
    """wsolevaluation counts IoU >= delta; with integer boxes an IoU of exactly 0.5 is common."""
    m = np.zeros((224, 224), np.float32)
    m[0:10, 0:10] = 1.0  # wsolevaluation's box of this blob: (0, 0, 10, 10), 11 x 11 = 121 pixels
    ev = BoxEvaluator(interval=0.01, multi_contour=True)
    ev.accumulate(m, np.array([[0, 0, 10, 21]]), pred_correct=True)  # 11 x 22 = 242: IoU 121/242 = 0.5
    metrics = ev.compute()
    assert metrics.gt_known_loc[50] == 100.0 and metrics.gt_known_loc[70] == 0.0


def test_threshold_levels_truncate_like_int():
    """``int(t * max)`` truncates: 0.5 * 255 = 127.5 is level 127, so a pixel of 128 is foreground."""
    from bagcams_deploy.evaluation.boxes import threshold_levels

    image = np.array([[255, 128], [127, 0]], np.uint8)
    assert threshold_levels(image, [0.5, 0.9, 0.999]).tolist() == [127, 229, 254]
    m = np.zeros((224, 224), np.float32)
    m[0:5, 0:5] = 1.0
    m[100:110, 100:110] = 128 / 255 + 1e-6  # 8-bit 128: above level 127 only because 127.5 truncates
    assert boxes_from_scoremap(m, 0.5, multi_contour=True).tolist() == [[100, 100, 110, 110], [0, 0, 5, 5]]


def test_otsu_threshold_separates_a_bimodal_map():
    from bagcams_deploy.localize import otsu_threshold

    m = np.full((60, 80), 0.6, np.float32)
    m[10:30, 20:50] = 1.0
    t = otsu_threshold(m)
    assert 0.6 <= t < 1.0  # between the two modes (a fixed 0.5 would take the whole image)
    from bagcams_deploy.evaluation import object_boxes

    assert object_boxes(m, t) == [[20, 10, 49, 29]]


def test_maps_of_other_sizes_are_resized_bilinearly_to_224_before_scoring():
    """wsolevaluation resizes score maps with cv2.resize (bilinear) to 224 x 224."""
    from bagcams_deploy.evaluation.runner import to_eval_size

    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1))
    out = to_eval_size(ramp)
    assert out.shape == (224, 224)
    np.testing.assert_array_equal(out, cv2.resize(ramp, (224, 224), interpolation=cv2.INTER_LINEAR))
    assert len(np.unique(out[0])) > 64  # interpolated, not repeated (nearest)
