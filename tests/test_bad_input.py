"""What a user can get wrong, found by an adversarial pass over the CLI: each is one line on stderr and a
non-zero exit, before any long run, and never a NaN, a silently overwritten file or a wrong map."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.contract import read_graph_info
from bagcams_deploy.models import build_model, load_model, save_checkpoint
from bagcams_deploy.models.checkpoint import EXTRACTOR_KEY, META_KEY
from bagcams_deploy.scenes import write_dataset

from .test_cli import assert_one_line_error, write_image


@pytest.fixture(scope="module")
def base(module_tmp):
    root = module_tmp("bad")
    model = build_model("resnet18", 7, seed=5, randomize_batchnorm=True)
    ckpt = save_checkpoint(model, root / "m.pth")
    graph = root / "m.onnx"
    from .conftest import run_cli

    assert run_cli("export", ckpt, "-o", graph, "--input-size", "64").code == 0
    imgs = root / "imgs"
    imgs.mkdir()
    write_image(imgs / "a.png", seed=1)
    return {"root": root, "ckpt": ckpt, "graph": graph, "imgs": imgs}


def _edited_checkpoint(path, out, edit):
    obj = torch.load(path, weights_only=True)
    edit(obj)
    torch.save(obj, out)
    return out


# --- checkpoints ---------------------------------------------------------------------------------
def test_invalid_weights_are_refused_or_reported_never_a_nan_score(cli, base, tmp_path):
    def neg_var(obj):
        obj[EXTRACTOR_KEY]["bn1.running_var"][:] = -1.0

    bad = _edited_checkpoint(base["ckpt"], tmp_path / "neg.pth", neg_var)
    assert_one_line_error(cli("cam", bad, base["imgs"], "--out", tmp_path / "o", "--input-size", "64"),
                          "bn1.running_var has negative entries")  # fmt: skip

    def overflow(obj):
        obj[EXTRACTOR_KEY]["conv1.weight"] *= 1e37

    huge = _edited_checkpoint(base["ckpt"], tmp_path / "huge.pth", overflow)
    out = tmp_path / "loc"
    for r in (cli("cam", huge, base["imgs"], "--out", out, "--input-size", "64"),
              cli("localize", base["imgs"], "--model", huge, "--out", out)):  # fmt: skip
        assert_one_line_error(r, "is NaN or infinite for", "a.png")
    assert not (out / "boxes.json").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [(lambda o: o[EXTRACTOR_KEY].__setitem__(1, torch.zeros(1)), "key 1 is not a tensor name"),
     (lambda o: o[EXTRACTOR_KEY].__setitem__("conv1.weight", 1), "conv1.weight (a int, not a tensor)"),
     (lambda o: o.__setitem__(META_KEY, {"architecture": ["resnet18"]}), "['architecture'] must be a str"),
     (lambda o: o.__setitem__(META_KEY, {"large_feature_map": "false"}), "['large_feature_map'] must be a bool")],
)  # fmt: skip
def test_malformed_checkpoint_contents(base, tmp_path, edit, message):
    path = _edited_checkpoint(base["ckpt"], tmp_path / "x.pth", edit)
    with pytest.raises(BagcamsError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_model(path)


# --- options ---------------------------------------------------------------------------------------
def test_option_values_are_checked_before_work(cli, base, tmp_path):
    ckpt, graph, imgs = base["ckpt"], base["graph"], base["imgs"]
    assert_one_line_error(cli("export", ckpt, "-o", tmp_path / "g.onnx", "--gradient-scale", "inf"),
                          "finite positive number")  # fmt: skip
    r = cli("export", ckpt, "-o", tmp_path / "g.onnx", "--opset", "99")
    assert_one_line_error(r, "opset 99 is newer than torch")
    assert "Torch IR" not in r.err
    for args in (("cam", ckpt, imgs, "--out", tmp_path / "o", "--input-size", "0"),
                 ("cam", ckpt, imgs, "--out", tmp_path / "o", "--class-id", "-5"),
                 ("localize", imgs, "--model", graph, "--out", tmp_path / "o", "--threads", "-1")):  # fmt: skip
        r = cli(*args)
        assert r.code == 2 and "Traceback" not in r.out + r.err, r.err
    for flag in ("--min-pearson", "--min-iou", "--max-pixels-off", "--max-grad-rel"):
        assert_one_line_error(cli("verify", graph, "--checkpoint", ckpt, flag, "nan"), f"{flag} must be a number")
    assert_one_line_error(cli("verify", graph, "--checkpoint", ckpt, "--min-iou", "1.5"), "--min-iou must be")


def test_output_paths_are_checked_before_the_run(cli, base, tmp_path):
    ckpt, graph, imgs = base["ckpt"], base["graph"], base["imgs"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (("cam", ckpt, imgs, "--out", a_file), "is a file, not a folder"),
        (("localize", imgs, "--model", graph, "--out", a_file / "sub"), "is a file, not a folder"),
        (("export", ckpt, "-o", tmp_path), "is a folder; give a file name"),
        (("verify", graph, "--checkpoint", ckpt, "--report", a_file / "r.json"), "is a file, not a folder"),
        (("bench", graph, "--checkpoint", ckpt, "--json", tmp_path), "is a folder; give a file name"),
        (("demo", "--out", a_file), "is a file, not a folder"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert_one_line_error(r, message)
        assert "p50" not in r.out and "PASS" not in r.out  # refused before any work


def test_an_output_that_is_an_input_is_refused_and_the_input_survives(cli, base, dataset, tmp_path):
    """``--json model.onnx`` used to replace the model with the report (exit 0); likewise export onto
    its checkpoint and the reports of verify and evaluate. A hard link is the same file too."""
    ckpt, graph = tmp_path / "m.pth", tmp_path / "m.onnx"
    ckpt.write_bytes(base["ckpt"].read_bytes())
    graph.write_bytes(base["graph"].read_bytes())
    link = tmp_path / "link.onnx"
    link.hardlink_to(graph)
    before = {p: p.read_bytes() for p in (ckpt, graph)}
    cases = [
        (("export", ckpt, "-o", ckpt), "--output"),
        (("verify", graph, "--checkpoint", ckpt, "--report", graph), "--report"),
        (("verify", graph, "--checkpoint", ckpt, "--report", ckpt), "--report"),
        (("bench", graph, "--checkpoint", ckpt, "--json", link), "--json"),
        (("bench", graph, "--checkpoint", ckpt, "--json", tmp_path / "." / "m.pth"), "--json"),
        (_eval(dataset, "--model", graph, "--report", graph), "--report"),
        (_eval(dataset, "--model", ckpt.with_suffix(".json"), "--report", ckpt.with_suffix(".json")), "--report"),
    ]
    ckpt.with_suffix(".json").write_text("{}")  # evaluate --report r.json also writes r.md beside it
    for args, flag in cases:
        r = cli(*args)
        assert_one_line_error(r, "writing it would destroy the input")
        assert flag in r.err and "p50" not in r.out and "PASS" not in r.out
    assert {p: p.read_bytes() for p in (ckpt, graph)} == before
    # a missing input is reported as missing, not as destroyed; a symlink loop is no file, not a traceback
    assert_one_line_error(cli("export", tmp_path / "none.pth", "-o", tmp_path / "none.pth"), "not found")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    assert_one_line_error(cli("export", tmp_path / "loop1", "-o", tmp_path / "x.onnx"), "loop1")


def test_images_sharing_a_stem_would_overwrite_each_other(cli, base, tmp_path):
    folder = tmp_path / "dup"
    folder.mkdir()
    write_image(folder / "x.png", seed=2)
    write_image(folder / "x.jpg", seed=3)
    assert_one_line_error(cli("cam", base["ckpt"], folder, "--out", tmp_path / "o", "--input-size", "64"),
                          "would both write x.npy")  # fmt: skip
    assert_one_line_error(cli("localize", folder, "--model", base["graph"], "--out", tmp_path / "o"), "x.npy")
    # the same file named twice is one input, not a clash
    r = cli("localize", folder / "x.png", folder / "x.png", "--model", base["graph"], "--out", tmp_path / "l")
    assert r.code == 0, r.err
    assert len(json.loads((tmp_path / "l" / "boxes.json").read_text())["images"]) == 1


def test_images_past_the_decompression_bomb_limit(cli, base, tmp_path, monkeypatch):
    big = write_image(tmp_path / "big.png", size=(300, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # 60,000 pixels is > 2x: PIL refuses
    assert_one_line_error(cli("localize", big, "--model", base["graph"], "--out", tmp_path / "o"),
                          "too large to decode safely")  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # between 1x and 2x: PIL only warns; we stay quiet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("localize", big, "--model", base["graph"], "--out", tmp_path / "o")
    assert r.code == 0 and r.err.strip() == "", r.err
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# --- graph metadata --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("num_classes", "x", "'num_classes' is not an integer"), ("num_classes", "0", "'num_classes' must be >= 1"),
     ("gradient_scale", "abc", "'gradient_scale' is not a number"),
     ("gradient_scale", "nan", "'gradient_scale' must be a finite positive"), ("input_size", "0x0", "positive"),
     ("method", "foo", "'method' is 'foo'"), ("precision", "fp8", "'precision' is 'fp8'"),
     ("std", "0,0,0", "std > 0"), ("large_feature_map", "yes", "'true' or 'false'")],
)  # fmt: skip
def test_graph_metadata_values_no_export_writes(cli, base, tmp_path, key, value, message):
    proto = onnx.load(str(base["graph"]))
    props = {p.key: p.value for p in proto.metadata_props}
    props[key] = value
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    path = tmp_path / "edited.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(BagcamsError, match=message):
        read_graph_info(path)
    assert_one_line_error(cli("localize", base["imgs"], "--model", path, "--out", tmp_path / "o"), message)


def test_class_names_metadata_must_be_a_json_list(cli, base, tmp_path):
    proto = onnx.load(str(base["graph"]))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "class_names", "[not json"
    path = tmp_path / "names.onnx"
    onnx.save(proto, str(path))
    assert_one_line_error(cli("localize", base["imgs"], "--model", path, "--out", tmp_path / "o"),
                          "'class_names' is not a JSON list")  # fmt: skip


# --- the small feature map (OpenImages' setting) ----------------------------------------------------
def test_small_feature_map_is_recorded_in_the_graph_and_followed_by_verify(cli, base, tmp_path):
    graph = tmp_path / "small.onnx"
    r = cli("export", base["ckpt"], "-o", graph, "--input-size", "64", "--small-feature-map")
    assert r.code == 0, r.err
    info = read_graph_info(graph)
    assert info.large_feature_map is False
    assert read_graph_info(base["graph"]).large_feature_map is True
    # layer3 of the small map is half the size of the large one
    sizes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in onnx.load(str(graph)).graph.output}
    big = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim]
           for o in onnx.load(str(base["graph"])).graph.output}  # fmt: skip
    assert sizes["features"][2] * 2 == big["features"][2]
    # verify builds the reference from the same checkpoint as the graph says: it passes without a flag
    r = cli("verify", graph, "--checkpoint", base["ckpt"], "--num-random", "2", "--exact")
    assert r.code == 0, r.out + r.err
    r = cli("localize", base["imgs"], "--model", graph, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert_one_line_error(cli("localize", base["imgs"], "--model", base["graph"], "--out", tmp_path / "o",
                              "--small-feature-map"), "large-feature-map model")  # fmt: skip


# --- evaluation inputs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(module_tmp):
    root = module_tmp("ds")
    return write_dataset(root / "scenes", {"train": 0, "val": 0, "test": 3}, seed=7, size=96)


def _eval(data, *extra):
    return ["evaluate", "--metadata", data / "metadata" / "test", "--data-root", data / "images",
            "--cam-interval", "0.01", *extra]  # fmt: skip


def test_evaluate_refuses_odd_maps_and_labels(cli, dataset, base, tmp_path):
    ids = (dataset / "metadata" / "test" / "image_ids.txt").read_text().split()
    for name, arr, message in [("three", np.zeros((3, 224, 224), np.float32), "expected (H, W) or (1, H, W)"),
                               ("empty", np.zeros((0, 5), np.float32), "expected (H, W) or (1, H, W)"),
                               ("text", np.array([["a"]]), "not real numbers")]:  # fmt: skip
        maps = tmp_path / name
        for i in ids:
            (maps / i).parent.mkdir(parents=True, exist_ok=True)
            np.save(maps / f"{i}.npy", arr)
        assert_one_line_error(cli(*_eval(dataset, "--maps", maps)), f"score map of {ids[0]}", message)

    # a negative label is not "the predicted class"
    meta = tmp_path / "meta"
    meta.mkdir()
    for f in (dataset / "metadata" / "test").iterdir():
        (meta / f.name).write_text(f.read_text())
    labels = (meta / "class_labels.txt").read_text().splitlines()
    labels[0] = labels[0].split(",")[0] + ",-1"
    (meta / "class_labels.txt").write_text("\n".join(labels))
    r = cli("evaluate", "--metadata", meta, "--data-root", dataset / "images", "--maps", tmp_path / "three")
    assert_one_line_error(r, "class label must be >= 0")


def test_evaluate_compare_reference_needs_the_models_own_checkpoint(cli, dataset, tmp_path):
    model = build_model("resnet18", 10, seed=2, randomize_batchnorm=True)
    graph = tmp_path / "m10.onnx"
    from bagcams_deploy.export.onnx_export import export_onnx

    export_onnx(model, graph, input_size=64)
    other = save_checkpoint(build_model("resnet18", 7, seed=3), tmp_path / "seven.pth")
    assert_one_line_error(
        cli(*_eval(dataset, "--model", graph, "--compare-reference", "--checkpoint", other)),
        "does not match",
        "7 classes",
    )


def test_evaluation_reads_images_as_the_published_loader_does(tmp_path):
    """PIL ``convert('RGB')`` without EXIF rotation: boxes and masks are in the stored pixel frame."""
    from bagcams_deploy.evaluation.metadata import load_image

    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "rot.jpg", exif=exif)
    with Image.open(tmp_path / "rot.jpg") as ref:
        expected = np.asarray(ref.convert("RGB"))
    got = load_image(tmp_path, "rot.jpg")
    assert got.shape == (50, 80, 3) and np.array_equal(got, expected)


def test_evaluate_and_localize_decode_every_image_alike(tmp_path):
    """One decoder: the published ``convert('RGB')`` where the data sets' modes are concerned (RGB,
    grey, CMYK JPEGs), and the same composite-over-white / scale-by-maximum for alpha and 16-bit files
    (``convert`` would keep the colour under transparent pixels and clip 16-bit values to white)."""
    from bagcams_deploy.evaluation.metadata import load_image as evaluation_decode
    from bagcams_deploy.images import load_image as decode

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    alpha = np.zeros((40, 60), np.uint8)
    alpha[:, 30:] = 255
    files = {
        "rgb.png": Image.fromarray(rgb),
        "grey.jpg": Image.fromarray(rgb[..., 0]),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgba.png": Image.fromarray(np.dstack([rgb, alpha])),
        "grey16.png": Image.fromarray(rng.integers(0, 4000, (40, 60), dtype=np.uint16)),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
        got = evaluation_decode(tmp_path, name)
        assert np.array_equal(got, decode(tmp_path / name)), name
        if name.endswith(".jpg") or name == "rgb.png":
            with Image.open(tmp_path / name) as ref:
                assert np.array_equal(got, np.asarray(ref.convert("RGB"))), name
    rgba = evaluation_decode(tmp_path, "rgba.png")
    assert (rgba[:, :30] == 255).all() and np.array_equal(rgba[:, 30:], rgb[:, 30:])  # transparent -> white
    grey16 = evaluation_decode(tmp_path, "grey16.png")
    assert grey16.max() == 255 and grey16.min() < 10 and len(np.unique(grey16)) > 200  # scaled, not clipped


def test_a_nan_measure_fails_verification_rather_than_passing_every_bar():
    """Every comparison with NaN is False, so each bar is written to fail on NaN."""
    from bagcams_deploy.verify import Tolerances, compare_outputs

    rng = np.random.default_rng(0)
    ref = {"logits": rng.normal(size=(2, 5)).astype(np.float32), "class_id_used": np.array([1, 2]),
           "features": rng.random((2, 4, 3, 3), dtype=np.float32),
           "gradients": rng.normal(size=(2, 4, 3, 3)).astype(np.float32),
           "cam": rng.random((2, 1, 16, 16), dtype=np.float32)}  # fmt: skip
    for key in ("logits", "features", "gradients"):
        got = {**ref, key: np.full_like(ref[key], np.nan)}
        reports, _ = compare_outputs(ref, got, Tolerances.for_precision("fp32"), ["a", "b"])
        assert all(any(f"{key} rel L2 nan" in f for f in r.failures) for r in reports), key
    clean, _ = compare_outputs(ref, dict(ref), Tolerances.for_precision("fp32"), ["a", "b"])
    assert not any(r.failures for r in clean)


def test_options_that_would_be_ignored_are_refused(cli, dataset, base, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    assert_one_line_error(cli(*_eval(dataset, "--maps", maps, "--backend", "ort-cpu", "--compare-reference")),
                          "--backend, --compare-reference apply to --model")  # fmt: skip
    preds = tmp_path / "p.csv"
    preds.write_text("x,1")
    assert_one_line_error(cli(*_eval(dataset, "--model", base["graph"], "--predictions", preds)),
                          "--predictions is for --maps")  # fmt: skip
    assert_one_line_error(cli("verify", base["graph"], "--checkpoint", base["ckpt"], "--backend", "torch-reference"),
                          "torch-reference is the reference itself")  # fmt: skip
    from bagcams_deploy.runtime import parse_backends

    assert parse_backends("ort-cpu, torch-reference,ort-cpu") == ["ort-cpu", "torch-reference"]


def test_compare_reference_of_a_small_map_checkpoint_compares_like_with_like(cli, dataset, tmp_path):
    small = save_checkpoint(build_model("resnet18", 10, seed=2, randomize_batchnorm=True, large_feature_map=False),
                            tmp_path / "small.pth")  # fmt: skip
    report = tmp_path / "r.json"
    r = cli(*_eval(dataset, "--model", small, "--checkpoint", small, "--compare-reference", "--report", report))
    assert r.code == 0, r.err
    runs = json.loads(report.read_text())["runs"]
    (mine,) = [k for k in runs if k != "torch-reference"]
    for k in ("GT-known Loc", "MaxBoxAccV2"):
        assert runs[mine]["summary"][k] == runs["torch-reference"]["summary"][k]


def test_maps_off_by_rounding_are_scored_as_the_evaluators_allow(cli, dataset, tmp_path):
    ids = (dataset / "metadata" / "test" / "image_ids.txt").read_text().split()
    maps = tmp_path / "maps"
    for i in ids:
        m = np.random.default_rng(0).random((224, 224)).astype(np.float32)
        m[0, 0] = np.float32(1.0000001)  # a min-max map from another tool
        (maps / i).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{i}.npy", m)
    assert cli(*_eval(dataset, "--maps", maps)).code == 0
    np.save(maps / f"{ids[1]}.npy", np.full((224, 224), 1.5, np.float32))
    assert_one_line_error(cli(*_eval(dataset, "--maps", maps)), f"image {ids[1]}")


def test_an_existing_writable_file_in_a_read_only_folder_is_a_valid_output(tmp_path, monkeypatch):
    import os

    from bagcams_deploy import outputs

    report = tmp_path / "r.json"
    report.write_text("{}")
    monkeypatch.setattr(outputs.os, "access", lambda p, mode: os.path.samefile(p, report))
    assert outputs.output_file(report, "--report") == report
    with pytest.raises(BagcamsError, match="cannot write in"):
        outputs.output_file(tmp_path / "new.json", "--report")


def test_one_file_in_two_spellings_is_one_input(cli, base, tmp_path, monkeypatch):
    monkeypatch.chdir(base["imgs"].parent)
    r = cli("localize", "imgs/a.png", base["imgs"] / "a.png", "--model", base["graph"], "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert len(json.loads((tmp_path / "o" / "boxes.json").read_text())["images"]) == 1


# --- the library, as a Python user calls it ---------------------------------------------------------
def test_backend_inputs_must_be_what_the_contract_says(base):
    from bagcams_deploy.runtime import create_backend

    b = create_backend("ort-cpu", graph=base["graph"])
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    pixels, flags, waves = np.uint8(x * 50 + 100), x.astype(bool), x.astype(np.complex64)
    for images, message in [(pixels, "normalised floating point"), (flags, "normalised floating point"),
                            (waves, "floating")]:  # fmt: skip
        with pytest.raises(BagcamsError, match=message):
            b.infer(images)
    for ids, message in [(1.7, "class ids must be integers"), ("2", "class ids must be integers"),
                         (True, "class ids must be integers"), (np.uint64(2**63 + 5), "out of range")]:  # fmt: skip
        with pytest.raises(BagcamsError, match=message):
            b.infer(x, ids)
    as_tensor = torch.from_numpy(x).requires_grad_(True)  # torch tensors are taken as they are
    assert np.array_equal(b.infer(as_tensor, [3, 4])["class_id_used"], [3, 4])


def test_dynamic_size_graphs_refuse_inputs_below_the_architectures_minimum(base, tmp_path):
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.runtime import create_backend

    graph = tmp_path / "dyn.onnx"
    export_onnx(load_model(base["ckpt"]), graph, dynamic_size=True)
    for name, kwargs in (("ort-cpu", {"graph": graph}), ("torch-analytic", {"model": load_model(base["ckpt"])})):
        b = create_backend(name, **kwargs)
        with pytest.raises(BagcamsError, match="below 32x32"):
            b.infer(np.zeros((1, 3, 31, 40), np.float32))
        assert b.infer(np.zeros((1, 3, 32, 40), np.float32))["cam"].shape == (1, 1, 32, 40)


def test_reference_takes_any_float_dtype_and_refuses_pixels(base):
    from bagcams_deploy.reference import compute_cams

    model = load_model(base["ckpt"])
    x = torch.randn(1, 3, 64, 64)
    want = compute_cams(model, x).maps
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        got = compute_cams(model, x.to(dtype)).maps  # cast to the model's float32
        assert torch.isfinite(got).all() and got.shape == want.shape
    assert torch.equal(compute_cams(model, x.double()).maps, compute_cams(model, x.double().float()).maps)
    with pytest.raises(BagcamsError, match="normalised floating point"):
        compute_cams(model, (x * 50 + 100).to(torch.uint8))
    with pytest.raises(BagcamsError, match="class ids must be integers"):
        compute_cams(model, x, class_ids=2.7)


def test_library_calls_check_sizes_counts_and_paths(base, tmp_path):
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.verify import verify_backend

    model = load_model(base["ckpt"])
    for size in (64.0, "64", (64,), (64, 64, 64), 100_000, True):
        with pytest.raises(BagcamsError, match="input_size must be"):
            export_onnx(model, tmp_path / "x.onnx", input_size=size)
    assert export_onnx(model, tmp_path / "np.onnx", input_size=np.int64(64)).path.exists()
    with pytest.raises(BagcamsError, match="is a folder"):
        export_onnx(model, tmp_path, input_size=64)
    with pytest.raises(BagcamsError, match="opset must be an integer"):
        export_onnx(model, tmp_path / "x.onnx", input_size=64, opset="18")
    b = create_backend("ort-cpu", graph=base["graph"])
    for kwargs, message in [({"batch_size": 0}, "batch_size"), ({"batch_size": -1}, "batch_size")]:
        with pytest.raises(BagcamsError, match=message):
            verify_backend(b, model, str(base["graph"]), num_random=2, **kwargs)
    img = [base["imgs"] / "a.png"]
    for kwargs, message in [({"batch_size": 0}, "batch_size"), ({"threshold": float("nan")}, "threshold"),
                            ({"threshold": 2.0}, "threshold"), ({"class_id": 2.5}, "class_id")]:  # fmt: skip
        with pytest.raises(BagcamsError, match=message):
            localize_images(b, img, tmp_path / "loc", **kwargs)
    with pytest.raises(BagcamsError, match="is a file, not a folder"):
        localize_images(b, img, base["ckpt"])
    records = localize_images(b, [str(img[0])], str(tmp_path / "loc"))  # str paths are fine
    assert len(records) == 1


def test_torch_backends_must_match_the_graph_they_are_paired_with(base):
    from bagcams_deploy.runtime import create_backend

    with pytest.raises(BagcamsError, match="does not match"):
        create_backend("torch-reference", model=build_model("resnet18", 5), graph=base["graph"])
    with pytest.raises(BagcamsError, match="computes bagcams, not gradcam"):
        create_backend("torch-reference", model=load_model(base["ckpt"]), graph=base["graph"], method="gradcam")
    with pytest.raises(BagcamsError, match="needs a loaded model"):
        create_backend("torch-reference", model=str(base["ckpt"]))
    with pytest.raises(BagcamsError, match="threads must be a non-negative integer"):
        create_backend("ort-cpu", graph=base["graph"], threads=-1)
    for threads in (0, np.int64(1)):  # 0: the runtime's default, as in the C++ example
        assert create_backend("ort-cpu", graph=base["graph"], threads=threads).infer(
            np.zeros((1, 3, 64, 64), np.float32)
        )["cam"].shape == (1, 1, 64, 64)
    with pytest.raises(BagcamsError, match="unknown device"):
        create_backend("torch-analytic", model=load_model(base["ckpt"]), device="tpu")


def test_evaluator_thresholds_are_checked():
    from bagcams_deploy.evaluation import BoxEvaluator, MaskEvaluator

    for bad in ([np.nan, 0.5], [0.7, 0.2], [0.2, 1.5], [-0.1, 0.5], ["a"]):
        for evaluator in (BoxEvaluator, MaskEvaluator):
            with pytest.raises(BagcamsError, match="CAM thresholds must be"):
                evaluator(thresholds=bad)


def test_data_set_and_training_scripts_check_options_before_work(tmp_path, capsys):
    from bagcams_deploy.scenes.__main__ import main as scenes_main
    from bagcams_deploy.scenes.train import main as train_main

    a_file = tmp_path / "f"
    a_file.write_text("x")
    for argv, message in [(["--out", str(tmp_path / "s"), "--size", "8"], "--size must be >= 32"),
                          (["--out", str(a_file)], "is a file, not a folder"),
                          (["--out", str(tmp_path / "s"), "--train", "-5"], "--train must be >= 0")]:  # fmt: skip
        assert scenes_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
    for argv, message in [(["--out-dir", str(tmp_path / "m"), "--num-test", "0"], "--num-test must be >= 1"),
                          (["--out-dir", str(a_file)], "is a file, not a folder"),
                          (["--out-dir", str(tmp_path / "m"), "--steps-low", "0", "--steps-high", "0"],
                           "trains nothing"),
                          (["--out-dir", str(tmp_path / "m"), "--float-checkpoint",
                            str(tmp_path / "m" / "scenes_resnet18.npz")], "is the packed weights"),
                          (["--out-dir", str(tmp_path / "m"), "--float-checkpoint",
                            str(tmp_path / "m" / "scenes_resnet18.json")], "is the record")]:  # fmt: skip
        assert train_main(argv) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the shipped model is only replaced when asked for by name
        train_main([])


def test_inputs_keep_the_order_they_were_first_named_in(tmp_path):
    from bagcams_deploy.preprocessing import expand_image_paths

    folder = tmp_path / "d"
    folder.mkdir()
    for name in "abc":
        write_image(folder / f"{name}.png")
    assert [p.name for p in expand_image_paths([folder, folder / "b.png"])] == ["a.png", "b.png", "c.png"]
    named = [folder / "a.png", folder / "c.png", folder / "." / "a.png"]
    assert [p.name for p in expand_image_paths(named)] == ["a.png", "c.png"]


def test_numpy_and_torch_scalars_are_integers_too(base, tmp_path):
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime import create_backend

    model = load_model(base["ckpt"])
    r = export_onnx(model, tmp_path / "a.onnx", input_size=np.array([64, 64]), opset=np.int64(18))
    assert r.opset == 18
    b = create_backend("ort-cpu", graph=r.path)
    for class_id in (np.array(2), torch.tensor(2), np.int32(2)):
        recs = localize_images(b, [base["imgs"] / "a.png"], tmp_path / "o", class_id=class_id)
        assert recs[0]["class_id"] == 2
    same = base["imgs"] / "a.png"
    # the library runs what it is given: one file twice is not a clash of two files
    assert len(localize_images(b, [same, Path(str(same))], tmp_path / "o2")) == 2


def test_demo_in_a_folder_of_an_earlier_larger_run(cli, tmp_path):
    """An earlier run's extra scenes used to be drawn (and crash the label lookup), and its bench.json
    stayed beside a summary without bench figures."""
    out = tmp_path / "demo"
    write_dataset(out / "scenes", {"train": 0, "val": 0, "test": 12}, seed=3, size=64)
    (out / "bench.json").write_text("{}")
    args = ["demo", "--out", out, "--num-test", "10", "--skip-bench", "--cam-interval", "0.01"]
    assert_one_line_error(cli(*args, "--num-localize", "11"), "--num-localize 11 is more than the 10 test scenes")
    r = cli(*args, "--num-localize", "10")
    assert r.code == 0, r.err
    assert "10 overlays with boxes" in r.out
    assert len(list((out / "localize").glob("*_overlay.png"))) == 10
    assert not (out / "bench.json").exists() and "bench" not in json.loads((out / "summary.json").read_text())
