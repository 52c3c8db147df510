"""Regression tests for what property-based fuzzing of the pure numeric functions found.

The fuzzing itself (hypothesis, against independent numpy oracles and a literal transcription of
wsolevaluation) is not part of the suite; each case here is a fixed input it reduced a failure to.
"""

from __future__ import annotations

import torch

from bagcams_deploy.methods.aggregation import upsample_normalize

# normalize_minmax's overflow guard itself: tests/test_reference.py (a signed map wider than the float range).


def test_cam_grid_spanning_more_than_the_float_range_gives_a_finite_map():
    # CAM's raw map is not ReLU'd: a classifier row can give finite values of both signs this far apart.
    raw = torch.tensor([[3e38, -3e38], [1e38, 0.0]], dtype=torch.float32).view(1, 1, 2, 2)
    out = upsample_normalize(raw, (5, 6), "cam")
    assert torch.isfinite(out).all() and float(out.min()) == 0.0 and float(out.max()) == 1.0
