"""evaluate and localize end to end: a tiny generated data set in the wsolevaluation layout, scored
through the ONNX backend, through precomputed maps, and against the reference."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model, save_checkpoint
from bagcams_deploy.scenes import write_dataset

from .test_cli import assert_one_line_error


@pytest.fixture(scope="module")
def setup(module_tmp):
    root = module_tmp("eval")
    data = write_dataset(root / "scenes", {"train": 0, "val": 0, "test": 6}, seed=4, size=96)
    model = build_model("resnet18", 10, seed=2, randomize_batchnorm=True)
    ckpt = save_checkpoint(model, root / "m.pth")
    graph = root / "m.onnx"
    export_onnx(model, graph, method="gradcam", target_layer="layer3", input_size=64)
    return {"root": root, "data": data, "ckpt": ckpt, "graph": graph}


def _args(s, *extra):
    d = s["data"]
    return ["evaluate", "--metadata", d / "metadata" / "test", "--data-root", d / "images",
            "--mask-metadata", d / "metadata_masks" / "test", "--mask-root", d / "masks", "--cam-interval", "0.01",
            *extra]  # fmt: skip


def test_evaluate_onnx_then_precomputed_maps_give_the_same_numbers(cli, setup, tmp_path):
    report, maps = tmp_path / "r.json", tmp_path / "maps"
    plots = tmp_path / "plots"
    r = cli(*_args(setup, "--model", setup["graph"], "--save-maps", maps, "--report", report, "--plot", plots,
                   "--compare-reference", "--checkpoint", setup["ckpt"], "--batch-size", "4"))  # fmt: skip
    assert r.code == 0, r.err
    rep = json.loads(report.read_text())
    runs = rep["runs"]
    (deployed,) = [k for k in runs if k != "torch-reference"]  # the default CPU runtime
    assert deployed.endswith(": gradcam@layer3") and deployed.split(":")[0] in ("ov-cpu", "ort-cpu")
    main, ref = runs[deployed]["summary"], runs["torch-reference"]["summary"]
    for k in ("Top-1 Loc", "GT-known Loc", "MaxBoxAccV2", "pIoU", "PxAP", "Top-1 Cls"):
        assert main[k] is not None and 0 <= main[k] <= 100
        assert abs(main[k] - ref[k]) < 0.5  # deployment costs no localisation accuracy (in % points)
    assert "difference" in r.out and "| difference |" in report.with_suffix(".md").read_text()
    assert "-0.00" not in r.out and "-0.00" not in report.with_suffix(".md").read_text()
    # each run is timed on its own (they used to share the combined time)
    assert runs[deployed]["seconds"] > 0 and runs["torch-reference"]["seconds"] > 0
    assert runs[deployed]["seconds"] != runs["torch-reference"]["seconds"]
    assert len(list((tmp_path / "plots").glob("*.png"))) == 4
    saved = sorted(maps.rglob("*.npy"))
    assert len(saved) == 6 and np.load(saved[0]).shape == (224, 224)
    # The same maps, precomputed, scored by --maps (predictions from the first run's classes are not
    # available, so no Top-1 here): identical box and mask metrics.
    report2 = tmp_path / "r2.json"
    r2 = cli(*_args(setup, "--maps", maps, "--report", report2))
    assert r2.code == 0, r2.err
    again = next(iter(json.loads(report2.read_text())["runs"].values()))["summary"]
    for k in ("GT-known Loc", "MaxBoxAccV2", "pIoU", "PxAP"):
        assert again[k] == pytest.approx(main[k], abs=1e-9)
    assert again["Top-1 Loc"] is None
    preds = tmp_path / "preds.csv"
    ids = (setup["data"] / "metadata" / "test" / "image_ids.txt").read_text().split()
    labels = dict(
        line.split(",") for line in (setup["data"] / "metadata" / "test" / "class_labels.txt").read_text().split()
    )
    preds.write_text("\n".join(f"{i},{labels[i]}" for i in ids))  # an oracle classifier
    r3 = cli(*_args(setup, "--maps", maps, "--predictions", preds, "--report", tmp_path / "r3.json"))
    s3 = next(iter(json.loads((tmp_path / "r3.json").read_text())["runs"].values()))["summary"]
    assert r3.code == 0 and s3["Top-1 Loc"] == pytest.approx(s3["GT-known Loc"]) and s3["Top-1 Cls"] == 100.0


def test_evaluate_real_layouts_mask_folder_without_sizes_and_cubmask_ids(cli, setup, tmp_path):
    """OpenImages folders have no image_sizes.txt; BagCAMs' CUBMask folder is a localization.txt whose
    ids have one more leading folder. Both score the same masks as the plain layout."""
    d = setup["data"]
    plain = d / "metadata_masks" / "test"
    cubmask = tmp_path / "CUBMask" / "test"
    cubmask.mkdir(parents=True)
    lines = (plain / "localization.txt").read_text().splitlines()
    (cubmask / "localization.txt").write_text("".join(f"images/{line}\n" for line in lines))
    mask_split = tmp_path / "openimages_like"
    mask_split.mkdir()
    for name in ("image_ids", "class_labels", "localization"):
        (mask_split / f"{name}.txt").write_text((plain / f"{name}.txt").read_text())
    common = ["--model", setup["graph"], "--data-root", d / "images", "--mask-root", d / "masks", "--cam-interval",
              "0.01"]  # fmt: skip
    summaries = []
    for args in (
        ["--metadata", d / "metadata" / "test", "--mask-metadata", plain],
        ["--metadata", d / "metadata" / "test", "--mask-metadata", cubmask],
        ["--metadata", mask_split],
    ):
        report = tmp_path / f"r{len(summaries)}.json"
        r = cli("evaluate", *args, *common, "--report", report)
        assert r.code == 0, r.err
        summaries.append(next(iter(json.loads(report.read_text())["runs"].values()))["summary"])
        if args[-1] == cubmask:
            assert "note: " in r.err and "without their first folder" in r.err
    for k in ("pIoU", "PxAP"):
        assert summaries[0][k] is not None and summaries[1][k] == summaries[0][k] == summaries[2][k]
    # images without a mask are named before the run, not at the first one met
    (cubmask / "localization.txt").write_text("".join(f"images/{line}\n" for line in lines[:1]))
    r = cli("evaluate", "--metadata", d / "metadata" / "test", "--mask-metadata", cubmask, *common)
    assert_one_line_error(r, "5 of 6 images have no mask in", "its ids look like")
    assert "evaluating" not in r.out
    assert summaries[2].get("MaxBoxAccV2") is None  # a mask split has no boxes


def test_evaluate_notes_image_files_whose_size_differs_from_the_metadata(cli, setup, tmp_path):
    # GT boxes are rescaled from image_sizes.txt (as wsolevaluation does): a resized file is worth a note
    d = setup["data"]
    meta = tmp_path / "meta"
    shutil.copytree(d / "metadata" / "test", meta)
    sizes = (meta / "image_sizes.txt").read_text().splitlines()
    image_id, w, h = sizes[1].split(",")
    sizes[1] = f"{image_id},{int(w) * 2},{h}"
    (meta / "image_sizes.txt").write_text("\n".join(sizes) + "\n")
    report = tmp_path / "r.json"
    r = cli("evaluate", "--metadata", meta, "--data-root", d / "images", "--model", setup["graph"], "--report", report,
            "--cam-interval", "0.01")  # fmt: skip
    assert r.code == 0, r.err
    expected = f"1 image file(s) differ in size from {meta}/image_sizes.txt"
    assert f"note: {expected}" in r.err and f"(first: {image_id} is {w}x{h}, listed as {int(w) * 2}x{h})" in r.err
    rep = json.loads(report.read_text())
    assert rep["notes"][0].startswith(expected) and next(iter(rep["runs"].values()))["notes"] == rep["notes"]
    r = cli("evaluate", "--metadata", d / "metadata" / "test", "--data-root", d / "images", "--model", setup["graph"],
            "--cam-interval", "0.01")  # fmt: skip
    assert r.code == 0 and "note:" not in r.err


def test_evaluate_bad_input(cli, setup, tmp_path):
    d = setup["data"]
    assert_one_line_error(cli(*_args(setup)), "give exactly one of --model or --maps")
    assert_one_line_error(cli(*_args(setup, "--model", setup["graph"], "--maps", tmp_path)), "exactly one")
    assert_one_line_error(cli("evaluate", "--metadata", tmp_path, "--maps", tmp_path), "image_ids.txt")
    assert_one_line_error(cli(*_args(setup, "--maps", tmp_path / "nomaps")), "maps folder not found")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli(*_args(setup, "--maps", tmp_path / "empty")), "no score map for image")
    assert_one_line_error(
        cli("evaluate", "--metadata", d / "metadata" / "test", "--mask-metadata", d / "metadata_masks" / "test",
            "--maps", tmp_path), "--mask-root")  # fmt: skip
    five = save_checkpoint(build_model("resnet18", 5, seed=1), tmp_path / "five.pth")
    g5 = tmp_path / "five.onnx"
    export_onnx(build_model("resnet18", 5, seed=1), g5, input_size=64)
    assert_one_line_error(cli(*_args(setup, "--model", g5)), "the model has 5 classes")
    assert five.exists()
    assert_one_line_error(cli(*_args(setup, "--model", setup["graph"], "--cam-interval", "2")), "--cam-interval")


def test_localize_writes_overlays_maps_and_boxes(cli, setup, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 150, 3), dtype=np.uint8)).save(imgs / "wide.png")
    src = sorted((setup["data"] / "images" / "test").glob("*.png"))[0]
    Image.open(src).save(imgs / "scene.jpg")
    out = tmp_path / "loc"
    r = cli("localize", imgs, "--model", setup["graph"], "--out", out, "--auto", "--multi-contour")
    assert r.code == 0, r.err
    doc = json.loads((out / "boxes.json").read_text())
    assert doc["method"] == "gradcam" and len(doc["images"]) == 2
    wide = next(rec for rec in doc["images"] if rec["image"].endswith("wide.png"))
    assert wide["image_size"] == [150, 90] and 0 < wide["threshold"] <= 1 and 0 <= wide["probability"] <= 1
    for x0, y0, x1, y1 in wide["boxes"]:  # boxes in original-image pixels
        assert 0 <= x0 <= x1 < 150 and 0 <= y0 <= y1 < 90
    assert np.load(out / "wide.npy").shape == (90, 150)
    with Image.open(out / "wide_overlay.png") as im:
        assert im.size == (150, 90)
    r2 = cli("localize", imgs / "wide.png", "--model", setup["graph"], "--out", tmp_path / "l2", "--threshold", "0.3",
             "--class-id", "4")  # fmt: skip
    assert r2.code == 0 and json.loads((tmp_path / "l2" / "boxes.json").read_text())["images"][0]["class_id"] == 4
    assert_one_line_error(cli("localize", imgs, "--model", tmp_path / "none.onnx", "--out", out), "model not found")
    assert_one_line_error(
        cli("localize", imgs, "--model", setup["graph"], "--out", out, "--threshold", "1.5"), "--threshold"
    )
    assert_one_line_error(
        cli("localize", imgs, "--model", setup["graph"], "--out", out, "--class-id", "10"), "out of range"
    )


@pytest.fixture(scope="module")
def no_cam_graph(setup):
    """The same gradcam graph without its in-graph map (the form meant for the TensorRT kernel)."""
    path = setup["root"] / "m_nocam.onnx"
    model = build_model("resnet18", 10, seed=2, randomize_batchnorm=True)
    export_onnx(model, path, method="gradcam", target_layer="layer3", input_size=64, with_cam=False)
    return path


def test_graph_without_cam_output_localizes_and_evaluates_like_the_full_graph(cli, setup, no_cam_graph, tmp_path):
    """Consumers of maps make them on the host from features and gradients: same maps, same metrics."""
    src = sorted((setup["data"] / "images" / "test").glob("*.png"))[:2]
    for name, graph in (("full", setup["graph"]), ("nocam", no_cam_graph)):
        r = cli("localize", *src, "--model", graph, "--out", tmp_path / name, "--backend", "ort-cpu")
        assert r.code == 0, r.err
    for p in src:
        full, host = np.load(tmp_path / "full" / f"{p.stem}.npy"), np.load(tmp_path / "nocam" / f"{p.stem}.npy")
        assert np.isfinite(host).all() and np.abs(full - host).max() < 1e-4
    boxes = [json.loads((tmp_path / n / "boxes.json").read_text())["images"] for n in ("full", "nocam")]
    assert [b["boxes"] for b in boxes[0]] == [b["boxes"] for b in boxes[1]]
    summaries = []
    for name, graph in (("full", setup["graph"]), ("nocam", no_cam_graph)):
        report = tmp_path / f"{name}.json"
        r = cli(*_args(setup, "--model", graph, "--backend", "ort-cpu", "--report", report))
        assert r.code == 0, r.err
        summaries.append(next(iter(json.loads(report.read_text())["runs"].values()))["summary"])
    for k in ("GT-known Loc", "MaxBoxAccV2", "pIoU", "PxAP"):
        assert summaries[1][k] == pytest.approx(summaries[0][k], abs=0.5)


def test_verify_of_a_graph_without_cam_says_where_its_maps_come_from(cli, setup, no_cam_graph, tmp_path):
    report = tmp_path / "v.json"
    # --exact: the gradient bars are about mask flips from fused kernels, not about where the map is made
    r = cli(
        "verify",
        no_cam_graph,
        "--checkpoint",
        setup["ckpt"],
        "--num-random",
        "2",
        "--backend",
        "ort-cpu",
        "--exact",
        "--seed",
        "0",
        "--report",
        report,
    )  # fmt: skip  (unseeded, 2 of 8 draws missed 5e-3)
    assert r.code == 0, r.out + r.err
    assert "maps from the host aggregation" in r.out
    rep = json.loads(report.read_text())
    assert rep["passed"] and rep["map_source"].startswith("host aggregation")


def test_localize_refuses_what_the_graph_does_not_compute(cli, setup, tmp_path):
    img = sorted((setup["data"] / "images" / "test").glob("*.png"))[0]
    out = tmp_path / "loc"
    assert_one_line_error(cli("localize", img, "--model", setup["graph"], "--out", out, "--method", "bagcams"),
                          "computes gradcam, not bagcams")  # fmt: skip
    assert_one_line_error(cli("localize", img, "--model", setup["graph"], "--out", out, "--target-layer", "layer4"),
                          "maps layer3, not layer4")  # fmt: skip
    assert_one_line_error(
        cli("localize", img, "--model", setup["graph"], "--out", out, "--threshold", "0.4", "--auto"),
        "--threshold and --auto",
    )
    # the same options on a checkpoint are honoured, and CAM's layer is not negotiable
    cam_at_layer3 = cli("localize", img, "--model", setup["ckpt"], "--out", out, "--method", "cam",
                        "--target-layer", "layer3")  # fmt: skip
    assert_one_line_error(cam_at_layer3, "method cam maps the classifier's input (layer4)")
    r = cli(
        "localize", img, "--model", setup["ckpt"], "--out", out, "--method", "gradcampp", "--target-layer", "layer2"
    )
    assert r.code == 0, r.err
    doc = json.loads((out / "boxes.json").read_text())
    assert doc["method"] == "gradcampp" and doc["target_layer"] == "layer2"
    assert not list(out.glob("*.onnx"))


def test_evaluate_maps_honours_limit(cli, setup, tmp_path):
    maps = tmp_path / "maps"
    r = cli(*_args(setup, "--model", setup["graph"], "--save-maps", maps, "--limit", "3"))
    assert r.code == 0, r.err
    assert len(list(maps.rglob("*.npy"))) == 3
    report = tmp_path / "r.json"
    r2 = cli(*_args(setup, "--maps", maps, "--limit", "3", "--report", report))
    assert r2.code == 0, r2.err
    run = next(iter(json.loads(report.read_text())["runs"].values()))
    assert run["count"] == 3


def test_evaluate_report_names_and_single_contour_label(cli, setup, tmp_path):
    maps = tmp_path / "maps"
    assert cli(*_args(setup, "--model", setup["graph"], "--save-maps", maps, "--limit", "3")).code == 0
    # --report is the JSON; a .md name would have been overwritten by the Markdown table
    for name in ("r.md", "r.MD"):
        assert_one_line_error(cli(*_args(setup, "--maps", maps, "--limit", "3", "--report", tmp_path / name)),
                              "names the JSON report")  # fmt: skip
        assert not (tmp_path / name).exists()
    report = tmp_path / "single.json"
    r = cli(*_args(setup, "--maps", maps, "--limit", "3", "--single-contour", "--report", report))
    assert r.code == 0, r.err
    summary = next(iter(json.loads(report.read_text())["runs"].values()))["summary"]
    # the mean over IoU 30/50/70 with the largest contour only is not MaxBoxAccV2 and is not called so
    assert "MaxBoxAccV2" not in summary and "MaxBoxAccV2" not in report.with_suffix(".md").read_text()
    assert summary["MaxBoxAcc 30/50/70 (largest contour)"] is not None and "largest contour" in r.out


def test_localize_folder_holds_one_run(cli, setup, tmp_path):
    """A second run into the same folder replaces the first run's files (only those) and never reads
    them back as images or overwrites an input."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    srcs = sorted((setup["data"] / "images" / "test").glob("*.png"))[:3]
    for src in srcs:
        Image.open(src).save(imgs / src.name)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli("localize", imgs / srcs[0].name, imgs / srcs[1].name, "--model", setup["graph"], "--out", out).code == 0
    r = cli("localize", imgs / srcs[1].name, imgs / srcs[2].name, "--model", setup["graph"], "--out", out,
            "--multi-contour", "--auto")  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads((out / "boxes.json").read_text())
    stems = [src.stem for src in srcs[1:]]
    expected = {"boxes.json", "notes.txt", *(f"{s}.npy" for s in stems), *(f"{s}_overlay.png" for s in stems)}
    assert {p.name for p in out.iterdir()} == expected
    assert doc["complete"] and doc["threshold"] == "otsu" and doc["multi_contour"] and "inclusive" in doc["box_format"]
    assert [rec["map"] for rec in doc["images"]] == [f"{s}.npy" for s in stems]
    for rec in doc["images"]:
        h, w = rec["image_size"][1], rec["image_size"][0]
        for x0, y0, x1, y1 in rec["boxes"]:
            assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
    # outputs into the input folder: a second run skips the first one's overlays (tests/test_earlier_outputs.py)
    assert cli("localize", imgs, "--model", setup["graph"], "--out", imgs).code == 0
    r = cli("localize", imgs, "--model", setup["graph"], "--out", imgs)
    assert r.code == 0 and "note: skipped 3 files an earlier localize run" in r.err, r.err
    assert not list(imgs.glob("*_overlay_overlay.png"))
    # an input named like another input's overlay would be overwritten
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.open(srcs[0]).save(clash / "a.png")
    Image.open(srcs[0]).save(clash / "a_overlay.png")
    assert_one_line_error(cli("localize", clash, "--model", setup["graph"], "--out", clash), "would be overwritten")
    assert (clash / "a_overlay.png").exists() and not (clash / "boxes.json").exists()
    # a failed run (an unreadable image) costs nothing of the earlier run
    (imgs / "junk.png").write_bytes(b"not a png")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_one_line_error(cli("localize", imgs / "junk.png", "--model", setup["graph"], "--out", out), "junk.png")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # only files of the shape localize writes are ever removed, whatever a boxes.json lists
    (out / "precious.jpg").write_bytes(b"mine")
    (out / "boxes.json").write_text(
        json.dumps(
            {
                "method": "bagcams",
                "images": [
                    {"map": "precious.jpg", "overlay": "", "image": "x.png"},
                    {"map": "../notes.txt", "overlay": "/etc/hosts"},
                ],
            }
        )
    )
    assert cli("localize", imgs / srcs[0].name, "--model", setup["graph"], "--out", out).code == 0
    assert (out / "precious.jpg").read_bytes() == b"mine" and (out / "notes.txt").exists()
    (out / "boxes.json").write_text("not json")
    assert_one_line_error(cli("localize", imgs / srcs[0].name, "--model", setup["graph"], "--out", out),
                          "was not written by localize")  # fmt: skip


def test_an_interrupted_localize_run_keeps_track_of_every_file(setup, tmp_path):
    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime import create_backend

    srcs = sorted((setup["data"] / "images" / "test").glob("*.png"))[:3]
    junk = tmp_path / "junk.png"
    junk.write_bytes(srcs[0].read_bytes()[:100])  # a sound header, the pixels cut off: fails only when decoded
    out = tmp_path / "out"
    with create_backend("ort-cpu", graph=setup["graph"]) as b:
        localize_images(b, srcs[:2], out)  # the earlier run: images 0 and 1
        with pytest.raises(BagcamsError, match=r"junk\.png"):
            localize_images(b, [srcs[2], junk], out, batch_size=1)  # writes image 2, then fails
        doc = json.loads((out / "boxes.json").read_text())
        assert not doc["complete"] and [r["map"] for r in doc["images"]] == [f"{srcs[2].stem}.npy"]
        stale = {f"{s.stem}{suffix}" for s in srcs[:2] for suffix in (".npy", "_overlay.png")}
        assert set(doc["stale_outputs"]) == stale and all((out / n).exists() for n in stale)
        localize_images(b, [srcs[0]], out)  # a complete run removes both earlier runs' files
    assert {p.name for p in out.iterdir()} == {"boxes.json", f"{srcs[0].stem}.npy", f"{srcs[0].stem}_overlay.png"}


def test_evaluate_explains_the_ground_truth_class_and_localize_writes_what_the_backend_says(setup, tmp_path):
    """wsolevaluation scores maps of the GT class (not the predicted one); localize's files are the
    backend's map at the image's size, its boxes and the requested class's score and probability."""
    from bagcams_deploy.evaluation import load_metadata, object_boxes
    from bagcams_deploy.evaluation.runner import Scorer, evaluate_backend
    from bagcams_deploy.localize import localize_images, softmax
    from bagcams_deploy.preprocessing import preprocess
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.visualize import resize_map

    d = setup["data"]
    meta = load_metadata(d / "metadata" / "test")
    seen: list[list[int]] = []
    with create_backend("ort-cpu", graph=setup["graph"]) as b:
        infer = b.infer
        b.infer = lambda x, ids=None: (seen.append(list(map(int, ids))), infer(x, ids))[1]
        evaluate_backend(b, Scorer(meta, interval=0.01), d / "images", batch_size=4)
        b.infer = infer
        assert [c for ids in seen for c in ids] == [meta.class_labels[i] for i in meta.image_ids]

        img = tmp_path / "wide.png"
        rgb = np.random.default_rng(5).integers(0, 255, (50, 90, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(img)
        (rec,) = localize_images(b, [img], tmp_path / "out", threshold=0.4, class_id=3)
        out = b.infer(preprocess([rgb], (64, 64)).numpy(), np.array([3]))
    full = resize_map(out["cam"][0, 0], (50, 90))
    saved = np.load(tmp_path / "out" / rec["map"])
    np.testing.assert_array_equal(saved, full.astype(np.float32))  # not transposed, at the image's size
    assert rec["boxes"] == object_boxes(full, 0.4) and rec["image_size"] == [90, 50]
    assert rec["class_id"] == 3 and rec["score"] == pytest.approx(float(out["logits"][0, 3]))
    assert rec["probability"] == pytest.approx(float(softmax(out["logits"][0])[3]))
