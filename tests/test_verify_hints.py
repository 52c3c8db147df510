"""verify's hint says what its failures mean: a map that fails while logits, features and gradients all
pass is the map formula amplifying rounding (GradCAM++/PCS), not a wrong export, and --fp64-reference
(which a reviewer saw fail worse there) is then not what to try."""

from __future__ import annotations

import pytest

from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.verify import ImageReport, Tolerances, VerifyReport


def _image(k: int, failures: list[str]) -> ImageReport:
    return ImageReport(k, "x", 0, 1.0, True, 1e-7, 1e-7, 1e-6, 1e-9, 0.1, 0.99, 0.05, {"0.5": 0.9}, 0.9, False,
                       failures)  # fmt: skip


@pytest.mark.parametrize(
    ("per_image", "extra", "expected"),
    [
        ([["map Pearson 0.99 < 0.999"], []], [], True),
        ([["map Pearson 0.99 < 0.999", "box IoU 0.5 < 0.8"]], [], True),
        ([["map Pearson 0.99 < 0.999"], ["gradients rel L2 1e-2 > 5e-3"]], [], False),
        ([["logits rel L2 1e-2 > 1e-4"]], [], False),
        ([["class_id_used 3 != 2"]], [], False),
        ([["map Pearson 0.99 < 0.999"]], ["gradients are the same for every input (frozen by tracing?)"], False),
        ([[], []], [], False),
    ],
)
def test_only_maps_fail_is_true_only_when_everything_upstream_of_the_map_passes(per_image, extra, expected):
    images = [_image(k, f) for k, f in enumerate(per_image)]
    failures = extra + [f"image {i.index} (x): {m}" for i in images for m in i.failures]
    rep = VerifyReport("m", "b", "r", "gradcampp", "layer1", "fp32", 0, Tolerances(), images, bool(extra), [],
                       failures)  # fmt: skip
    assert rep.only_maps_fail() is expected


def test_the_cli_hint_for_a_gradcampp_map_that_alone_fails(cli, models, checkpoints, tmp_path):
    graph = tmp_path / "gpp.onnx"
    export_onnx(models["resnet18"], graph, method="gradcampp", target_layer="layer3", input_size=64)
    r = cli("verify", graph, "--checkpoint", checkpoints["resnet18"], "--num-random", "2", "--seed", "0",
            "--min-pearson", "1")  # fmt: skip
    assert r.code == 1 and "map Pearson" in r.err
    assert "only the gradcampp map differs" in r.err and "--fp64-reference" not in r.err
    ok = cli("verify", graph, "--checkpoint", checkpoints["resnet18"], "--num-random", "2", "--seed", "0")
    assert ok.code == 0, ok.err
