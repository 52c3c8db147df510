"""The library as a Python user calls it: every argument a user can get wrong is one clear
``BagcamsError``, never a traceback and never a silently wrong result (a graph's map of another
method, a path read letter by letter, pixels taken as normalised values, a string counted as True)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bagcams_deploy import bench
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation import BoxEvaluator, MaskEvaluator
from bagcams_deploy.export.contract import read_graph_info
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.localize import localize_images
from bagcams_deploy.models import load_model
from bagcams_deploy.preprocessing import MEAN, STD, load_images
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.verify import random_images, verify_backend

from .conftest import TEST_SIZE
from .test_cli import write_image

SIZE = TEST_SIZE["resnet18"]


@pytest.fixture(scope="module")
def setup(models, checkpoints, module_tmp) -> dict:
    """A 64x64 ResNet-18 BagCAMs graph, its checkpoint, and a folder of two images."""
    root = module_tmp("library-inputs")
    graph = root / "m.onnx"
    export_onnx(models["resnet18"], graph, input_size=SIZE)
    imgs = root / "imgs"
    imgs.mkdir()
    for k, name in enumerate(("a.png", "b.png")):
        write_image(imgs / name, seed=k)
    return {"graph": graph, "ckpt": checkpoints["resnet18"], "imgs": imgs, "info": read_graph_info(graph)}


# --- 1: a graph backend computes the method and layer fixed at export, or refuses ----------------------
def test_graph_backends_refuse_a_method_or_layer_the_graph_does_not_compute(setup):
    graph, info = setup["graph"], setup["info"]
    assert (info.method, info.target_layer) == ("bagcams", "layer3")
    with pytest.raises(BagcamsError, match=f"{graph} computes bagcams, not gradcam: export a gradcam graph"):
        create_backend("ort-cpu", graph=graph, method="gradcam")
    with pytest.raises(BagcamsError, match=f"{graph} maps layer3, not layer2: export at --target-layer layer2"):
        create_backend("ort-cpu", graph=graph, target_layer="layer2")
    # naming what the graph computes, or nothing, is fine
    assert create_backend("ort-cpu", graph=graph, method="bagcams", target_layer="layer3").spec.method == "bagcams"
    assert create_backend("ort-cpu", graph=str(graph)).spec.target_layer == "layer3"


# --- 2: one path where a list is expected is one item, not a path per letter ----------------------------
def test_a_single_path_is_one_image_and_a_folder_is_its_images_or_refused(setup, tmp_path):
    a, folder = setup["imgs"] / "a.png", setup["imgs"]
    one = load_images(str(a), size=SIZE)
    assert one.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(one, load_images(a, size=SIZE)) and torch.equal(one, load_images([a], size=SIZE))
    with pytest.raises(BagcamsError, match=r"imgs is a folder \(pass its image files; the CLI expands folders"):
        load_images(folder)
    with pytest.raises(BagcamsError, match="image paths must be file paths, got 3"):
        load_images([a, 3])

    b = create_backend("ort-cpu", graph=setup["graph"])
    (rec,) = localize_images(b, str(a), tmp_path / "one")
    assert rec["image"] == str(a)
    recs = localize_images(b, folder, tmp_path / "all")  # a folder: its images, as the CLI reads it
    assert [Path(r["image"]).name for r in recs] == ["a.png", "b.png"]

    model = load_model(setup["ckpt"])
    rep = verify_backend(b, model, str(setup["graph"]), image_paths=str(a), num_random=0)
    assert [r.source for r in rep.images] == [str(a)]
    rep = verify_backend(b, model, str(setup["graph"]), image_paths=folder, num_random=1, seed=2)
    assert [Path(r.source).name for r in rep.images[1:]] == ["a.png", "b.png"]
    assert rep.images[0].source.startswith("random#")  # verify's own random inputs pass the input bound


def test_paths_given_as_path_objects_are_written_to_reports_as_text(setup, monkeypatch, tmp_path):
    """verify_backend's graph and run_benchmark's model and checkpoint may be Path objects (every other
    path argument is): the reports name them as text instead of failing to serialise."""
    import json

    with create_backend("ort-cpu", graph=setup["graph"]) as b:
        rep = verify_backend(b, load_model(setup["ckpt"]), setup["graph"], num_random=1, seed=0)
    assert json.loads(json.dumps(rep.to_dict()))["model"] == str(setup["graph"])

    monkeypatch.setattr(bench, "_run_isolated", lambda job, timeout: {"ok": True, "times": [0.01], "peak": 1.0,
                                                                      "before": 1.0, "extra": {}})  # fmt: skip
    report = bench.run_benchmark(setup["graph"], Path(setup["ckpt"]), "ort-cpu", 1, warmup=0, iters=1,
                                 include_floor=False)  # fmt: skip
    saved = json.loads(bench.save_report(report, tmp_path / "r.json").read_text())
    assert (saved["model"], saved["checkpoint"]) == (str(setup["graph"]), str(setup["ckpt"]))


def test_run_benchmark_takes_one_backend_name_and_one_batch_size(setup, monkeypatch):
    jobs: list[dict] = []

    def fake_run(job: dict, timeout: float) -> dict:
        jobs.append(job)
        return {"ok": True, "times": [0.01, 0.012], "peak": 100.0, "before": 50.0, "extra": {}}

    monkeypatch.setattr(bench, "_run_isolated", fake_run)
    report = bench.run_benchmark(str(setup["graph"]), None, "ort-cpu", 8, warmup=0, iters=2, include_floor=False)
    assert [(j["backend"], j["batch"]) for j in jobs] == [("ort-cpu", 8)]
    assert report["backends"] == ["ort-cpu"] and report["batch_sizes"] == [8]
    for backends, batches, message in [("ort-cpu", "8", "batch sizes must be positive integers"),
                                       ([1], [1], "backends must be backend names"),
                                       ([], [1], "backends must be backend names")]:  # fmt: skip
        with pytest.raises(BagcamsError, match=message):
            bench.run_benchmark(str(setup["graph"]), None, backends, batches, include_floor=False)
    assert len(jobs) == 1  # refused before any run


# --- 3: arguments of the wrong kind are refused, not a traceback ------------------------------------------
def test_sizes_checkpoints_counts_thresholds_and_flags_are_checked(setup, tmp_path, monkeypatch):
    a = setup["imgs"] / "a.png"
    assert torch.equal(load_images([a], size=SIZE), load_images([a], size=(SIZE, SIZE)))  # as export_onnx
    for size in ((0, 0), (SIZE, 0), -1, "64", (SIZE,), 64.0, True):
        with pytest.raises(BagcamsError, match="size must be a positive integer or an"):
            load_images([a], size=size)

    model = load_model(setup["ckpt"])
    with pytest.raises(BagcamsError, match="load_model takes a checkpoint file path, got a state dict"):
        load_model(model.state_dict())

    monkeypatch.setattr(bench, "_run_isolated", lambda job, timeout: pytest.fail("ran before the refusal"))
    for kwargs, message in [({"iters": 0}, "iters must be an integer >= 1"),
                            ({"warmup": -1}, "warmup must be an integer >= 0"),
                            ({"iters": 2.5}, "iters must be"), ({"warmup": True}, "warmup must be")]:  # fmt: skip
        with pytest.raises(BagcamsError, match=message):
            bench.run_benchmark(str(setup["graph"]), None, ["ort-cpu"], [1], include_floor=False, **kwargs)

    b = create_backend("ort-cpu", graph=setup["graph"])
    for threshold in ("0.5", True, [0.5], -0.1, 1.5, float("nan")):
        with pytest.raises(BagcamsError, match="threshold must be a number in"):
            localize_images(b, [a], tmp_path / "o", threshold=threshold)
    assert not (tmp_path / "o").exists()
    (rec,) = localize_images(b, [a], tmp_path / "o", threshold=np.float32(0.5))
    assert rec["threshold"] == 0.5


def test_box_evaluator_takes_bool_like_predictions_only():
    yy, xx = np.mgrid[0:32, 0:32]
    scoremap = np.exp(-((yy - 16.0) ** 2 + (xx - 16.0) ** 2) / 50).astype(np.float32)
    gt = [[10, 10, 22, 22]]
    want = BoxEvaluator(thresholds=[0.2, 0.5])
    want.accumulate(scoremap, gt, pred_correct=True)
    want.accumulate(scoremap, gt, pred_correct=False)
    for right, wrong in [(np.bool_(True), np.bool_(False)), (1, 0), (np.array(True), np.array(False)),
                         (torch.tensor(True), torch.tensor(False)), (np.int64(1), np.int64(0))]:  # fmt: skip
        got = BoxEvaluator(thresholds=[0.2, 0.5])
        got.accumulate(scoremap, gt, pred_correct=right)
        got.accumulate(scoremap, gt, pred_correct=wrong)
        assert np.array_equal(got.num_correct_top1, want.num_correct_top1)
    ev = BoxEvaluator(thresholds=[0.2, 0.5])
    for bad in ("no", "yes", 2, -1, 0.5, [True], np.array([True, False])):
        with pytest.raises(BagcamsError, match="pred_correct must be a bool"):
            ev.accumulate(scoremap, gt, pred_correct=bad)
    assert ev.count == 0 and ev.count_with_prediction == 0  # nothing was counted


def test_a_mask_of_0_and_255_is_told_that_255_means_ignore():
    scoremap = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    ev = MaskEvaluator(thresholds=[0.0, 0.5])
    ev.accumulate(scoremap, np.where(scoremap > 0.5, 255, 0).astype(np.uint8))  # a binary mask as stored
    with pytest.raises(BagcamsError, match=r"no ground-truth foreground pixel.*255 means ignore, foreground is 1"):
        ev.compute()
    ev = MaskEvaluator(thresholds=[0.0, 0.5])
    ev.accumulate(scoremap, np.zeros((8, 8), np.uint8))  # really no foreground: no hint about 255
    with pytest.raises(BagcamsError, match=r"evaluated mask\(s\)$"):
        ev.compute()


# --- 4: class ids are one per image --------------------------------------------------------------------
def test_class_ids_one_per_image_in_any_single_axis_shape_else_refused(setup):
    """A label column [N, 1] or row [1, N] is one id per image; [[1, 2], [3, 4]] for 4 images is a
    guess at an order and refused; the same rule in the backends, compute_cams and AnalyticCAM.run."""
    from bagcams_deploy.export.analytic import AnalyticCAM
    from bagcams_deploy.reference import compute_cams

    b = create_backend("ort-cpu", graph=setup["graph"])
    x = random_images(4, (SIZE, SIZE), seed=1)
    model = load_model(setup["ckpt"])
    net = AnalyticCAM(model, "bagcams")
    runs = {
        "backend": lambda ids: b.infer(x, ids)["class_id_used"],
        "compute_cams": lambda ids: compute_cams(model, torch.from_numpy(x), "bagcams", class_ids=ids).class_ids,
        "AnalyticCAM.run": lambda ids: net.run(torch.from_numpy(x), torch.as_tensor(ids))["class_id_used"],
    }
    for name, run in runs.items():
        for ids in ([[1, 2], [3, 4]], [[1, 2, 3]], np.zeros((2, 2, 1), np.int64)):
            with pytest.raises(BagcamsError, match=r"class ids must be one per image \(4\) or one for all, got shape"):
                run(ids)
        for ids in ([1, 2, 3, 4], np.array([[1], [2], [3], [4]]), torch.tensor([[1, 2, 3, 4]])):
            assert np.array_equal(np.asarray(run(ids)), [1, 2, 3, 4]), name
        for one in (2, [2], np.int64(2), [[2]]):  # one id for every image, as documented
            assert np.array_equal(np.asarray(run(one)), [2, 2, 2, 2]), name


# --- 5: pixels are not normalised values ------------------------------------------------------------------
def test_unnormalised_images_are_refused_by_every_backend(setup):
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, SIZE, SIZE)).astype(np.float32)
    rgb[0, 0, 0, 0] = 255.0
    model = load_model(setup["ckpt"])
    for b in (create_backend("ort-cpu", graph=setup["graph"]), create_backend("torch-analytic", model=model),
              create_backend("torch-reference", model=model)):  # fmt: skip
        with pytest.raises(BagcamsError, match=r"images look unnormalised \(max 255.0, outside \[-11.0, 11.5\]\): "
                           r"the contract input is \(pixels/255 - mean\)/std; see load_images"):  # fmt: skip
            b.infer(rgb)
        with pytest.raises(BagcamsError, match=r"images look unnormalised \(min -20.0"):
            b.check_inputs(np.full((1, 3, SIZE, SIZE), -20.0, np.float32), None)
        with pytest.raises(BagcamsError, match="NaN or Inf"):  # still said as before
            b.check_inputs(np.full((1, 3, SIZE, SIZE), np.nan, np.float32), None)


def test_every_legitimate_input_is_inside_the_bound():
    from bagcams_deploy.runtime.base import input_bounds

    lo, hi = input_bounds(MEAN, STD)
    assert (round(lo, 2), round(hi, 2)) == (-10.96, 11.53)
    black, white = (np.zeros(3) - MEAN) / STD, (np.ones(3) - MEAN) / STD  # what real pixels give
    assert lo < black.min() - 8 and hi > white.max() + 8
    # standard-normal test inputs far larger than the suite's (bench's batch 64 at 224x224) stay inside
    big = np.random.default_rng(0).standard_normal((64, 3, 224, 224)).astype(np.float32)
    assert lo < big.min() and big.max() < hi


def test_the_bound_lets_normal_inputs_through_a_backend(setup):
    from bagcams_deploy.runtime.base import input_bounds

    b = create_backend("ort-cpu", graph=setup["graph"])
    x = np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32)
    lo, hi = input_bounds(MEAN, STD)
    x[0, 0, 0, :2] = (lo, hi)  # the bound itself is accepted
    assert b.infer(x)["cam"].shape == (8, 1, SIZE, SIZE)


# --- 6: run_benchmark from a script without the main-module guard -----------------------------------------
def test_run_benchmark_from_an_unguarded_script_is_one_line(setup, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""
        from bagcams_deploy.bench import run_benchmark
        from bagcams_deploy.errors import BagcamsError

        try:
            run_benchmark({str(setup["graph"])!r}, None, ["ort-cpu"], [1], warmup=0, iters=1, include_floor=False)
            print("ran")
        except BagcamsError as exc:
            print("error:", exc)
        """)
    )
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "bootstrapping" not in r.stderr, r.stderr
    assert r.stdout.strip() == (
        "error: run_benchmark runs each backend in a spawned process, which re-runs the calling script: call it "
        'under `if __name__ == "__main__":` (the multiprocessing main-module rule)'
    ), r.stdout
