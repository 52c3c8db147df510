"""The command line as a user meets it: outputs on disk, one-line errors, non-zero exits."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.analytic import AnalyticCAM
from bagcams_deploy.methods.aggregation import gradient_map
from bagcams_deploy.models import build_model, save_checkpoint


def write_image(path, size=(80, 64), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def assert_one_line_error(result, *needles):
    assert result.code != 0
    lines = [ln for ln in result.err.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error: "), result.err
    assert "Traceback" not in result.err + result.out
    for n in needles:
        assert n in result.err, (n, result.err)


def test_info(cli, checkpoints):
    r = cli("info", checkpoints["inception_v3"])
    assert r.code == 0 and "inception_v3" in r.out and "SPG_A3_1b (1024ch)" in r.out and "classes:           7" in r.out
    j = json.loads(cli("info", checkpoints["resnet18"], "--json").out)
    assert j["architecture"] == "resnet18" and j["layer_channels"]["layer4"] == 512


def test_cam_writes_overlays_and_maps(cli, checkpoints, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_image(imgs / "a.png")
    write_image(imgs / "b.jpg", size=(100, 120), seed=1)
    write_image(imgs / "grey.png", mode="L", seed=2)
    write_image(imgs / "alpha.png", mode="RGBA", seed=3)
    out = tmp_path / "out"
    r = cli("cam", checkpoints["resnet18"], imgs, "--out", out, "--method", "gradcam", "--input-size", "64")
    assert r.code == 0, r.err
    for stem in ("a", "b", "grey", "alpha"):
        m = np.load(out / f"{stem}.npy")
        assert m.shape == (64, 64) and np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
        assert (out / f"{stem}_overlay.png").stat().st_size > 0
    with Image.open(out / "b_overlay.png") as im:  # overlays keep the original image size
        assert im.size == (100, 120)


def test_cam_bad_inputs(cli, checkpoints, tmp_path):
    good = write_image(tmp_path / "ok.png")
    assert_one_line_error(cli("cam", checkpoints["resnet18"], tmp_path / "missing.png", "--out", tmp_path / "o"),
                          "no such image file or folder")  # fmt: skip
    (tmp_path / "notimage.png").write_text("plain text")
    assert_one_line_error(cli("cam", checkpoints["resnet18"], tmp_path / "notimage.png", "--out", tmp_path / "o"),
                          "cannot read image", "notimage.png")  # fmt: skip
    write_image(tmp_path / "tiny.png", size=(4, 4))
    assert_one_line_error(
        cli("cam", checkpoints["resnet18"], tmp_path / "tiny.png", "--out", tmp_path / "o"), "too small"
    )
    assert_one_line_error(cli("cam", checkpoints["resnet18"], good, "--out", tmp_path / "o", "--method", "gradcam++"),
                          "unknown method 'gradcam++'")  # fmt: skip
    assert_one_line_error(cli("cam", checkpoints["resnet18"], good, "--out", tmp_path / "o", "--class-id", "99"),
                          "class id 99 out of range")  # fmt: skip
    assert_one_line_error(cli("cam", checkpoints["resnet18"], good, "--out", tmp_path / "o", "--target-layer", "fc"),
                          "unknown target layer 'fc'", "valid: layer1, layer2, layer3, layer4")  # fmt: skip
    assert_one_line_error(cli("info", tmp_path / "nope.pth"), "checkpoint not found")
    assert_one_line_error(cli("info", good), "is not a PyTorch checkpoint")


@pytest.fixture(scope="module")
def exported(checkpoints, module_tmp):
    from .conftest import run_cli

    path = module_tmp("exp") / "r18.onnx"
    r = run_cli("export", checkpoints["resnet18"], "-o", path, "--input-size", "64", "--target-layer", "layer3")
    assert r.code == 0, r.err
    assert "bagcams at layer3" in r.out
    return path


def test_verify_passes_and_writes_report(cli, checkpoints, exported, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    write_image(imgs / "x.png", size=(90, 70))
    report = tmp_path / "rep.json"
    r = cli("verify", exported, "--checkpoint", checkpoints["resnet18"], "--num-random", "3", "--images", imgs,
            "--seed", "0", "--report", report)  # fmt: skip
    assert r.code == 0, r.out + r.err
    assert "PASS" in r.out
    rep = json.loads(report.read_text())
    assert rep["passed"] and len(rep["images"]) == 4 and rep["method"] == "bagcams"
    first = rep["images"][0]
    for key in ("map_pearson", "map_pixels_off", "map_iou", "box_iou", "gradients_rel_l2", "logits_rel_l2"):
        assert key in first
    assert rep["images"][3]["source"].endswith("x.png")
    assert rep["bars"] == "fp32 preset" and "bars: fp32 preset: map Pearson >= 0.9995" in r.out
    # the bars applied are named, preset and overrides alike, in the table and the report
    r = cli("verify", exported, "--checkpoint", checkpoints["resnet18"], "--num-random", "1", "--seed", "0",
            "--bars", "fp16", "--min-pearson", "0.999", "--report", report)  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(report.read_text())["bars"] == "fp16 preset (--bars), --min-pearson 0.999"
    assert "bars: fp16 preset (--bars), --min-pearson 0.999: map Pearson >= 0.999," in r.out
    # the report cannot be one of the images (it was only compared with the folder)
    r = cli("verify", exported, "--checkpoint", checkpoints["resnet18"], "--num-random", "0", "--images", imgs,
            "--report", imgs / "x.png")  # fmt: skip
    assert_one_line_error(r, f"is the image {imgs / 'x.png'}; writing it would destroy the input")
    r = cli("verify", exported, "--checkpoint", checkpoints["resnet18"], "--seed", "-1")
    assert r.code == 2 and "--seed" in r.err and "Traceback" not in r.err  # Typer's usage error


def test_fp64_reference_is_computed_in_float64(cli, checkpoints, exported, tmp_path):
    """torch-analytic runs the float32 reference's forward pass (features bit for bit); against the
    float64 reference they differ by float32 rounding only, which proves the reference ran in float64."""
    from bagcams_deploy.models import load_model
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.verify import verify_backend

    model = load_model(checkpoints["resnet18"])
    with create_backend("torch-analytic", graph=exported, model=model) as b:
        f32 = verify_backend(b, model, "m", num_random=2, seed=3)
        f64 = verify_backend(b, model, "m", num_random=2, seed=3, fp64_reference=True)
    assert f32.passed and f64.passed and f64.reference == "torch-reference (float64)"
    assert max(r.features_rel_l2 for r in f32.images) == 0.0
    assert 0.0 < min(r.features_rel_l2 for r in f64.images) <= max(r.features_rel_l2 for r in f64.images) < 1e-5
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    with (
        create_backend("torch-analytic", graph=exported, model=model) as b,
        pytest.raises(BagcamsError, match="seed must be a non-negative integer"),
    ):
        verify_backend(b, model, "m", num_random=1, seed=-1)
    report = tmp_path / "r.json"
    r = cli("verify", exported, "--checkpoint", checkpoints["resnet18"], "--num-random", "2", "--seed", "0",
            "--fp64-reference", "--report", report)  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(report.read_text())["reference"] == "torch-reference (float64)" and "float64" in r.out


def test_verify_detects_a_checkpoint_that_does_not_match(cli, exported, tmp_path):
    other = save_checkpoint(build_model("resnet18", 7, seed=99, randomize_batchnorm=True), tmp_path / "other.pth")
    r = cli("verify", exported, "--checkpoint", other, "--num-random", "2")
    assert r.code == 1 and "FAIL" in r.err and "logits rel L2" in r.err
    # far past rounding: the hint names the checkpoint, not float32 mask flips
    assert f"is {other} the checkpoint {exported} was exported from?" in r.err and "--fp64-reference" not in r.err
    wrong_arch = save_checkpoint(build_model("resnet50", 7, seed=1), tmp_path / "r50.pth")
    assert_one_line_error(cli("verify", exported, "--checkpoint", wrong_arch), "does not match")
    wrong_classes = save_checkpoint(build_model("resnet18", 5, seed=1), tmp_path / "c5.pth")
    assert_one_line_error(cli("verify", exported, "--checkpoint", wrong_classes), "does not match", "7 classes")


class FrozenGradientGraph(torch.nn.Module):
    """What tracing autograd into a graph gives: the example input's gradient as a constant."""

    def __init__(self, net: AnalyticCAM, example: torch.Tensor):
        super().__init__()
        self.net = net
        with torch.no_grad():
            self.register_buffer("frozen", net.run(example)["gradients"])

    def forward(self, image, class_id):
        logits, used, features, _ = self.net(image, class_id)[:4]
        grad = self.frozen.expand(image.shape[0], -1, -1, -1)
        return logits, used, features, grad, gradient_map("bagcams", features, grad, tuple(image.shape[2:]))


def test_verify_catches_a_frozen_gradient(cli, checkpoints, exported, tmp_path):
    from bagcams_deploy.models import load_model

    model = load_model(checkpoints["resnet18"])
    frozen = FrozenGradientGraph(AnalyticCAM(model, "bagcams", "layer3"), torch.randn(1, 3, 64, 64))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(frozen, (torch.randn(1, 3, 64, 64), torch.tensor([-1])), buf, dynamo=False, opset_version=18,
                          input_names=["image", "class_id"],
                          output_names=["logits", "class_id_used", "features", "gradients", "cam"],
                          dynamic_axes={"image": {0: "N"}, "class_id": {0: "N"}})  # fmt: skip
    proto = onnx.load_from_string(buf.getvalue())
    proto.metadata_props.extend(onnx.load(str(exported)).metadata_props)
    path = tmp_path / "frozen.onnx"
    onnx.save(proto, str(path))
    r = cli("verify", path, "--checkpoint", checkpoints["resnet18"], "--num-random", "3")
    assert r.code == 1
    assert "gradients are the same for every input" in r.err


def test_verify_and_export_bad_input(cli, checkpoints, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert_one_line_error(
        cli("verify", tmp_path / "junk.onnx", "--checkpoint", checkpoints["resnet18"]), "is not an ONNX model"
    )
    assert_one_line_error(
        cli("export", checkpoints["resnet18"], "-o", tmp_path / "x.onnx", "--method", "lrp"),
        "unknown method 'lrp'",
    )
    out = tmp_path / "x.onnx"
    assert_one_line_error(cli("export", checkpoints["resnet18"], "-o", out, "--target-layer", "Mixed_6e"),
                          "unknown target layer 'Mixed_6e' for resnet18")  # fmt: skip
    assert_one_line_error(
        cli("export", checkpoints["resnet18"], "-o", tmp_path / "x.onnx", "--opset", "11"),
        "opset 11 is too old",
    )
    assert_one_line_error(cli("bench", tmp_path / "junk.onnx", "--backends", "ort-gpu"), "unknown backend 'ort-gpu'")


def test_bench_reports_rows_ratios_and_machine(cli, checkpoints, exported, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", exported, "--checkpoint", checkpoints["resnet18"], "--backends", "torch-reference,ort-cpu",
            "--batch-sizes", "1,2", "--warmup", "1", "--iters", "2", "--threads", "1", "--json", out)  # fmt: skip
    assert r.code == 0, r.err
    rep = json.loads(out.read_text())
    names = {(row["backend"], row["batch_size"]) for row in rep["rows"]}
    assert names == {(b, n) for b in ("torch-reference", "ort-cpu", "ort-forward-only") for n in (1, 2)}
    for row in rep["rows"]:
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"] and row["peak_rss_mb"] > 0
    assert "speedup_vs_torch_reference" in rep["ratios"]["ort-cpu@2"] and "x_forward_only" in rep["ratios"]["ort-cpu@1"]
    assert rep["machine"]["onnxruntime"] and rep["threads"] == 1


def test_usage_errors_and_help(cli):
    r = cli("export")
    assert r.code == 2 and "Missing argument" in r.out + r.err and "Traceback" not in r.out + r.err
    h = cli("--help")
    assert h.code == 0
    for command in ("info", "cam", "export", "verify", "bench", "evaluate", "localize", "demo"):
        assert command in h.out


def test_export_refuses_options_that_would_be_ignored(cli, checkpoints, tmp_path):
    out = tmp_path / "c.onnx"
    ckpt = checkpoints["resnet18"]
    assert_one_line_error(cli("export", ckpt, "-o", out, "--method", "cam", "--target-layer", "layer3"),
                          "method cam maps the classifier's input (layer4)")  # fmt: skip
    assert_one_line_error(cli("export", checkpoints["resnet18"], "-o", out, "--method", "cam", "--no-cam"),
                          "leaves neither a map nor gradients")  # fmt: skip
    assert not out.exists()
    r = cli("export", checkpoints["resnet18"], "-o", out, "--method", "cam", "--target-layer", "layer4",
            "--input-size", "64")  # fmt: skip
    assert r.code == 0 and "cam at layer4" in r.out, r.err


def test_backends_and_model_files_must_match(cli, checkpoints, exported, tmp_path):
    """A plan for an ONNX backend, an ONNX graph for a TensorRT backend: named at once, before any work."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not really a plan")
    ckpt = checkpoints["resnet18"]
    assert_one_line_error(cli("verify", exported, "--checkpoint", ckpt, "--backend", "tensorrt"),
                          "backend tensorrt runs a TensorRT plan", "build-engine")  # fmt: skip
    assert_one_line_error(cli("verify", plan, "--checkpoint", ckpt, "--backend", "ort-cpu"),
                          "is a TensorRT plan: backend ort-cpu runs the .onnx graph")  # fmt: skip
    img = write_image(tmp_path / "x.png")
    assert_one_line_error(cli("localize", img, "--model", exported, "--out", tmp_path / "o", "--backend",
                              "tensorrt-cam"), "runs a TensorRT plan")  # fmt: skip
    # bench refuses a backend that cannot run here before it spends minutes on the others (no row printed)
    r = cli("bench", exported, "--checkpoint", ckpt, "--backends", "torch-reference,ort-cpu,tensorrt")
    assert_one_line_error(r, "backend tensorrt runs a TensorRT plan")
    assert "torch-reference" not in r.out


def test_export_warns_that_pcs_in_half_precision_fails_verify(cli, checkpoints, tmp_path):
    r = cli("export", checkpoints["resnet18"], "-o", tmp_path / "p.onnx", "--method", "pcs", "--precision", "fp16",
            "--input-size", "64")  # fmt: skip
    assert r.code == 0 and "warning: PCS in fp16" in r.err and (tmp_path / "p.onnx").is_file()
    r = cli("export", checkpoints["resnet18"], "-o", tmp_path / "b.onnx", "--precision", "fp16", "--input-size", "64")
    assert r.code == 0 and "warning" not in r.err


def test_verify_measures_stay_finite_and_the_report_is_standard_json():
    """A reference that is all zero used to give an infinite relative error and a report with
    ``Infinity``, which strict JSON parsers refuse; it is 1.0 now (all of the backend's output is
    error), and any non-finite measure is written as null."""
    from bagcams_deploy.verify import Tolerances, VerifyReport, _rel_l2

    zero = np.zeros(10)
    assert _rel_l2(zero, zero) == 0.0 and _rel_l2(zero + 1e-9, zero) == 1.0
    assert _rel_l2(np.array([1.0, 1.0]), np.array([1.0, 2.0])) == pytest.approx(1 / np.sqrt(5))
    rep = VerifyReport("m", "b", "r", "bagcams", "layer3", "fp32", 0, Tolerances(map_pearson=float("nan")), [],
                       False, [], ["x"], bars="fp32 preset")  # fmt: skip
    d = rep.to_dict()  # a NaN measure (it fails its bar anyway) is written as null
    assert d["tolerances"]["map_pearson"] is None and d["passed"] is False
    json.dumps(d, allow_nan=False)
    assert rep.checkpoint_mismatch() is None and not rep.non_finite_outputs()  # no images: no verdict


@pytest.mark.parametrize(
    ("values", "mismatch", "non_finite"),
    [([1e-6, 2e-6], None, False), ([1e-6, 0.5], 0.5, False), ([1e-6, float("nan")], None, True),
     ([float("nan"), 1e-6], None, True), ([float("inf"), 0.3], 0.3, True)],
)  # fmt: skip
def test_the_failure_hint_reads_finite_values_in_any_order(values, mismatch, non_finite):
    """NaN used to decide the checkpoint hint by image order; non-finite outputs get their own hint."""
    from bagcams_deploy.verify import ImageReport, Tolerances, VerifyReport

    images = [ImageReport(k, "x", 0, 1.0, True, v, 1e-7, None, None, 0.0, 1.0, 0.0, {}, 1.0, True)
              for k, v in enumerate(values)]  # fmt: skip
    rep = VerifyReport("m", "b", "r", "bagcams", "layer3", "fp32", 0, Tolerances(), images, False, [], ["x"])
    assert rep.checkpoint_mismatch() == mismatch and rep.non_finite_outputs() is non_finite


def test_each_verify_bar_fails_on_its_own_measure():
    """Each bar is checked on synthetic outputs with every other bar open, so none can be dropped or
    loosened unnoticed; the pixels-off share is exact."""
    import dataclasses

    from bagcams_deploy.verify import Tolerances, compare_outputs

    yy, xx = np.mgrid[0:32, 0:32]
    blob = np.exp(-((yy - 10.0) ** 2 + (xx - 10.0) ** 2) / 20.0).astype(np.float32)
    rng = np.random.default_rng(4)
    ref = {"logits": rng.normal(size=(1, 5)).astype(np.float32), "class_id_used": np.array([2]),
           "features": rng.random((1, 4, 6, 6), dtype=np.float32),
           "gradients": rng.normal(size=(1, 4, 6, 6)).astype(np.float32), "cam": blob[None, None]}  # fmt: skip
    inf = float("inf")
    open_bars = Tolerances(map_pearson=-1.0, map_pixels_off=1.0, map_iou50=0.0, box_iou=0.0, gradient_rel_l2=inf,
                           logits_rel_l2=inf, features_rel_l2=inf)  # fmt: skip
    moved = dict(ref, cam=np.roll(blob, (14, 14), axis=(0, 1))[None, None])
    cases = [
        ("map_pearson", moved, "map Pearson"),
        ("map_iou50", moved, "map IoU@0.5"),
        ("box_iou", moved, "box IoU"),
        ("map_pixels_off", moved, "of map pixels off"),
        ("gradient_rel_l2", dict(ref, gradients=ref["gradients"] * 1.1), "gradients rel L2"),
        ("logits_rel_l2", dict(ref, logits=ref["logits"] * 1.1), "logits rel L2"),
        ("features_rel_l2", dict(ref, features=ref["features"] * 1.1), "features rel L2"),
    ]
    for field_name, got, message in cases:
        tol = dataclasses.replace(open_bars, **{field_name: getattr(Tolerances(), field_name)})
        (rep,), _ = compare_outputs(ref, got, tol, ["x"])
        assert len(rep.failures) == 1 and message in rep.failures[0], (field_name, rep.failures)
        (rep,), _ = compare_outputs(ref, got, open_bars, ["x"])
        assert rep.failures == [], field_name
    (rep,), _ = compare_outputs(ref, dict(ref, class_id_used=np.array([3])), open_bars, ["x"])
    assert rep.failures == ["class_id_used 3 != 2"]
    noisy = blob.copy()
    noisy[:4, :8] += 0.02  # 32 of 1024 pixels off by more than 0.01
    (rep,), _ = compare_outputs(ref, dict(ref, cam=noisy[None, None]), open_bars, ["x"])
    assert rep.map_pixels_off == 32 / 1024
