"""Behaviours a mutation audit found uncaught: where the analytic BagCAMs graph applies the guided ReLU
(nn.ReLU modules only, never Inception's functional relu), how Top-1 Loc picks its CAM threshold, and
MaxBoxAccV2 when the evaluator is given IoU deltas other than the default 30/50/70."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bagcams_deploy.evaluation import BoxEvaluator
from bagcams_deploy.export.analytic import AnalyticCAM
from bagcams_deploy.export.rules import ReLURule, rule_for
from bagcams_deploy.models import build_model
from bagcams_deploy.models.inception import BasicConv2d, InceptionC
from bagcams_deploy.reference import compute_cams

# --------------------------------------------------------------------------- guided ReLU placement


def _relu_rules(module: nn.Module) -> list[ReLURule]:
    return [m for m in module.modules() if isinstance(m, ReLURule)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_bagcams_rules_guide_relu_modules_but_not_basicconv2d_functional_relu():
    """With ``guided=True`` (BagCAMs) an nn.ReLU module gets the guided rule and a BasicConv2d, whose
    relu is functional, the plain one, also inside an Inception block."""
    assert [r.guided for r in _relu_rules(rule_for(BasicConv2d(4, 8, 3), guided=True))] == [False]
    assert [r.guided for r in _relu_rules(rule_for(nn.ReLU(), guided=True))] == [True]
    assert [r.guided for r in _relu_rules(rule_for(nn.ReLU(), guided=False))] == [False]
    seq = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    assert [r.guided for r in _relu_rules(rule_for(seq, guided=True))] == [True]
    block = rule_for(InceptionC(16, channels_7x7=8), guided=True)
    assert len(_relu_rules(block)) == 10  # one per BasicConv2d of the four branches
    assert not any(r.guided for r in _relu_rules(block))


def test_inception_bagcams_through_basicconv2d_layers_matches_reference_gradients():
    """Target Mixed_6d: the backward pass runs through Mixed_6e's ten BasicConv2d (functional relu:
    plain rule) and SPG_A3_1b/SPG_A3_2b's nn.ReLU modules (guided rule). The analytic network must give
    the reference's (autograd) gradients and maps; guiding every relu, or none, must not."""
    torch.set_num_threads(2)
    model = build_model("inception_v3", 5, seed=2024, randomize_batchnorm=True)
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(99))
    ref = compute_cams(model, x, "bagcams", "Mixed_6d")
    assert (ref.scores > 0).all()  # log(s_c) defined: no sign flip muddles the comparison
    net = AnalyticCAM(model, "bagcams", "Mixed_6d")
    out = net.run(x, ref.class_ids)
    assert out["class_id_used"].tolist() == ref.class_ids.tolist()
    for i in range(2):
        rel = _rel(out["gradients"][i], ref.gradients[i])
        assert rel <= 1e-4, f"image {i}: gradient rel L2 {rel}"
    torch.testing.assert_close(out["cam"], ref.maps, rtol=0, atol=1e-4)
    rules = _relu_rules(net.suffix)
    assert sorted(r.guided for r in rules) == [False] * 10 + [True] * 2

    # The check has teeth on these inputs: the rule at BasicConv2d (and at the nn.ReLU modules) matters.
    guided = {id(r): r.guided for r in rules}
    try:
        for everywhere in (True, False):
            for r in rules:
                r.guided = everywhere
            wrong = net.run(x, ref.class_ids)["gradients"]
            assert _rel(wrong, ref.gradients) > 0.1, f"guided={everywhere} everywhere is indistinguishable"
    finally:
        for r in rules:
            r.guided = guided[id(r)]


# --------------------------------------------------------------------------- box metrics by hand

# One score map for every image: three nested filled squares, values 0.3 / 0.6 / 1.0, i.e. uint8 76 /
# 153 / 255 (max 255). CAM thresholds 0.1 / 0.4 / 0.7 binarise at int(t * 255) = 25 / 102 / 178 (pixel >
# level), so each threshold sees exactly one filled square, whose wsolevaluation box is
# (x, y, x + w, y + h), one past the last pixel:
#   t = 0.1: outer  pixels 40..179 -> box (40, 40, 180, 180), 141 x 141 = 19881 px in box_iou's count
#   t = 0.4: middle pixels 80..139 -> box (80, 80, 140, 140),  61 x  61 =  3721 px
#   t = 0.7: inner  pixels 100..119 -> box (100, 100, 120, 120), 21 x 21 = 441 px
THRESHOLDS = [0.1, 0.4, 0.7]


def _nested_map() -> np.ndarray:
    m = np.zeros((224, 224), dtype=np.float32)
    m[40:180, 40:180] = 0.3
    m[80:140, 80:140] = 0.6
    m[100:120, 100:120] = 1.0
    return m


def _square(lo: int, hi: int) -> list[list[int]]:
    """A GT box with inclusive pixel edges lo..hi on both axes."""
    return [[lo, lo, hi, hi]]


# GT boxes, all concentric with the map's squares, so each IoU is (smaller area) / (larger area), the
# smaller box lying inside the larger one. IoU with the box at t = 0.1 / 0.4 / 0.7:
OUTER = _square(40, 179)  # 140^2 = 19600: 19600/19881 = .986, 3721/19600 = .190, 441/19600 = .023
MIDDLE = _square(80, 139)  # 60^2 = 3600: 3600/19881 = .181, 3600/3721 = .967, 441/3600 = .123
INNER = _square(100, 119)  # 20^2 = 400: 400/19881 = .020, 400/3721 = .107, 400/441 = .907
RING_79 = _square(71, 149)  # 79^2 = 6241: 6241/19881 = .314, 3721/6241 = .596, 441/6241 = .071
RING_81 = _square(70, 150)  # 81^2 = 6561: 6561/19881 = .330, 3721/6561 = .567, 441/6561 = .067
RING_40 = _square(90, 129)  # 40^2 = 1600: 1600/19881 = .080, 1600/3721 = .430, 441/1600 = .276
RING_24 = _square(98, 121)  # 24^2 = 576: 576/19881 = .029, 576/3721 = .155, 441/576 = .766
RING_28 = _square(96, 123)  # 28^2 = 784: 784/19881 = .039, 784/3721 = .211, 441/784 = .563
RING_26 = _square(97, 122)  # 26^2 = 676: 676/19881 = .034, 676/3721 = .182, 441/676 = .652


def test_top1_loc_takes_its_own_best_threshold_not_gt_knowns():
    """Top-1 Loc is the max over CAM thresholds of the Top-1 accuracy at IoU 50 (an image counts where its
    box has IoU >= 0.5 *and* its class prediction is right), at its own best threshold; GT-known Loc
    ignores the prediction and has another best threshold here."""
    images = [  # (GT, prediction right?)
        (OUTER, False),  # IoU .986 / .190 / .023
        (OUTER, False),
        (OUTER, False),
        (MIDDLE, True),  # .181 / .967 / .123
        (RING_28, True),  # .039 / .211 / .563: localised at IoU 30 and 50 at t = 0.7, not at 70
        (RING_26, True),  # .034 / .182 / .652: the same
        (RING_40, True),  # .080 / .430 / .276: localised at IoU 30 only, at t = 0.4
    ]
    ev = BoxEvaluator(thresholds=THRESHOLDS)
    m = _nested_map()
    for gt, right in images:
        ev.accumulate(m, gt, pred_correct=right)
    r = ev.compute()
    # GT-known, IoU 50, per threshold: t=.1 the 3 OUTER; t=.4 MIDDLE; t=.7 RING_28, RING_26.
    assert r.accuracy_curves[50].tolist() == [300 / 7, 100 / 7, 200 / 7]
    assert r.gt_known_loc[50] == 300 / 7 and r.best_threshold[50] == 0.1
    # Top-1, IoU 50: the OUTER images' predictions are wrong -> t=.1: 0; t=.4: MIDDLE; t=.7: RING_28, RING_26.
    assert r.top1_curves is not None
    assert r.top1_curves[50].tolist() == [0.0, 100 / 7, 200 / 7]
    assert r.top1_loc == 200 / 7 and r.top1_best_threshold == 0.7
    # Not the IoU 30 row (t=.4: MIDDLE, RING_40; t=.7: RING_28, RING_26 -> a tie won by 0.4) nor the
    # IoU 70 row (only MIDDLE at t=.4): Top-1 Loc is defined at IoU 50.
    assert r.top1_curves[30].tolist() == [0.0, 200 / 7, 200 / 7]
    assert r.top1_curves[70].tolist() == [0.0, 100 / 7, 0.0]
    assert r.to_dict()["top1_loc"] == 200 / 7 and r.to_dict()["top1_best_threshold"] == 0.7


def test_top1_loc_needs_iou_50():
    """Without IoU 50 among the deltas there is no Top-1 Loc (it is defined at IoU 50), while the
    per-delta Top-1 curves still exist."""
    ev = BoxEvaluator(thresholds=THRESHOLDS, iou_deltas=(30, 70))
    ev.accumulate(_nested_map(), MIDDLE, pred_correct=True)
    r = ev.compute()
    assert r.top1_loc is None and r.top1_best_threshold is None
    assert r.top1_curves is not None and r.top1_curves[30].tolist() == [0.0, 100.0, 0.0]


# Seven images; per IoU delta the number localised at t = 0.1 / 0.4 / 0.7 (from the IoUs above):
#   delta 10: OUTER, MIDDLE, RING_79, RING_81 / all 7 / MIDDLE, INNER, RING_40, RING_24 -> 4 / 7 / 4
#   delta 30: OUTER, RING_79, RING_81 / MIDDLE, RING_79, RING_81, RING_40 / INNER, RING_24 -> 3 / 4 / 2
#   delta 50: OUTER / MIDDLE, RING_79, RING_81 / INNER, RING_24 -> 1 / 3 / 2
#   delta 70: OUTER / MIDDLE / INNER, RING_24 -> 1 / 1 / 2
#   delta 90: OUTER / MIDDLE / INNER -> 1 / 1 / 1
V2_IMAGES = [OUTER, MIDDLE, INNER, RING_79, RING_81, RING_40, RING_24]
EXPECTED_CURVES = {
    10: [4, 7, 4],
    30: [3, 4, 2],
    50: [1, 3, 2],
    70: [1, 1, 2],
    90: [1, 1, 1],
}
# best over CAM thresholds (first maximum): a different value for every delta
EXPECTED_BEST = {10: (700 / 7, 0.4), 30: (400 / 7, 0.4), 50: (300 / 7, 0.4), 70: (200 / 7, 0.7), 90: (100 / 7, 0.1)}


@pytest.mark.parametrize("deltas", [(10, 30, 50, 70, 90), (90, 70, 50, 30, 10)])
def test_max_box_acc_with_other_iou_deltas_is_per_delta_best_then_mean_over_30_50_70(deltas):
    """Every given delta gets its own best CAM threshold; MaxBoxAccV2 is the mean of those bests over
    IoU 30/50/70, whatever other deltas are given and in whatever order (not the mean over all given
    deltas, and not the best threshold of the mean curve)."""
    ev = BoxEvaluator(thresholds=THRESHOLDS, iou_deltas=deltas)
    m = _nested_map()
    for gt in V2_IMAGES:
        ev.accumulate(m, gt)
    r = ev.compute()
    assert r.iou_deltas == deltas
    for d in deltas:
        assert r.accuracy_curves[d].tolist() == [k * 100 / 7 for k in EXPECTED_CURVES[d]], d
        assert (r.gt_known_loc[d], r.best_threshold[d]) == EXPECTED_BEST[d], d
    assert r.max_box_acc_v2 == pytest.approx((400 / 7 + 300 / 7 + 200 / 7) / 3, rel=1e-12)  # 42.857
    # the alternatives it must not be: mean over all five deltas (48.571), best of the mean curve (38.095)
    assert r.max_box_acc_v2 != pytest.approx((700 + 400 + 300 + 200 + 100) / 7 / 5)
    assert r.max_box_acc_v2 != pytest.approx(max(np.mean([EXPECTED_CURVES[d] for d in (30, 50, 70)], 0)) * 100 / 7)
    assert r.top1_loc is None  # no predictions were given


def test_max_box_acc_v2_is_undefined_without_all_of_30_50_70():
    """MaxBoxAccV2 is defined over IoU 30/50/70: with one of them missing it is None, while the per-delta
    GT-known accuracies are still reported."""
    ev = BoxEvaluator(thresholds=THRESHOLDS, iou_deltas=(30, 50))
    m = _nested_map()
    for gt in V2_IMAGES:
        ev.accumulate(m, gt)
    r = ev.compute()
    assert r.max_box_acc_v2 is None
    assert r.gt_known_loc == {30: 400 / 7, 50: 300 / 7}
    assert r.best_threshold == {30: 0.4, 50: 0.4}
