"""``--input-size`` for graphs exported with ``--dynamic-size``: ``localize``, ``verify`` and ``evaluate``
feed them S x S (224 by default), with ``bench``'s one rule (``run_input_size``): a dynamic graph at 96
gives the maps of a graph exported at 96, and a fixed-size graph refuses any other size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model, save_checkpoint
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.runtime.base import run_input_size
from bagcams_deploy.scenes import write_dataset

from .test_cli import assert_one_line_error, write_image

S = 96
NUM_CLASSES = 10  # the generated scenes' classes


@pytest.fixture(scope="module")
def setup(module_tmp) -> dict[str, Path]:
    """One small resnet18 exported twice: dynamic size, and fixed at S x S; scenes to evaluate on."""
    root = module_tmp("input-size")
    model = build_model("resnet18", NUM_CLASSES, seed=5, randomize_batchnorm=True)
    ckpt = save_checkpoint(model, root / "m.pth")
    dynamic, fixed = root / "dyn.onnx", root / "fixed.onnx"
    export_onnx(model, dynamic, method="gradcam", target_layer="layer3", input_size=64, dynamic_size=True)
    export_onnx(model, fixed, method="gradcam", target_layer="layer3", input_size=S)
    images = root / "imgs"
    images.mkdir()
    for i, size in enumerate([(120, 90), (70, 100)]):
        write_image(images / f"im{i}.png", size=size, seed=i)
    data = write_dataset(root / "scenes", {"train": 0, "val": 0, "test": 3}, seed=7, size=80)
    return {"ckpt": ckpt, "dynamic": dynamic, "fixed": fixed, "images": images, "data": data}


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p) for p in sorted(folder.rglob("*.npy"))}


def test_localize_a_dynamic_graph_at_input_size_is_the_fixed_graph(cli, setup, tmp_path):
    dyn, fix, default = tmp_path / "dyn", tmp_path / "fix", tmp_path / "default"
    r = cli("localize", setup["images"], "--model", setup["dynamic"], "--out", dyn, "--input-size", str(S))
    assert r.code == 0, r.err
    assert cli("localize", setup["images"], "--model", setup["fixed"], "--out", fix).code == 0
    assert cli("localize", setup["images"], "--model", setup["dynamic"], "--out", default).code == 0
    got, want, at_224 = _maps(dyn), _maps(fix), _maps(default)
    assert list(got) == list(want) == ["im0.npy", "im1.npy"]
    for name in got:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    assert not np.allclose(at_224["im0.npy"], want["im0.npy"], atol=1e-3)  # the option did change something
    sizes = [json.loads((d / "boxes.json").read_text())["input_size"] for d in (dyn, fix, default)]
    assert sizes == [[S, S], [S, S], [224, 224]]
    boxes = [[rec["boxes"] for rec in json.loads((d / "boxes.json").read_text())["images"]] for d in (dyn, fix)]
    assert boxes[0] == boxes[1]


def test_evaluate_a_dynamic_graph_at_input_size_is_the_fixed_graph(cli, setup, tmp_path):
    d = setup["data"]
    common = ["evaluate", "--metadata", d / "metadata" / "test", "--data-root", d / "images", "--cam-interval", "0.01"]
    reports = []
    for name, model, extra in (("dyn", setup["dynamic"], ["--input-size", str(S)]), ("fix", setup["fixed"], [])):
        report = tmp_path / f"{name}.json"
        r = cli(*common, "--model", model, "--save-maps", tmp_path / name, "--report", report, *extra)
        assert r.code == 0, r.err
        reports.append(next(iter(json.loads(report.read_text())["runs"].values()))["summary"])
    got, want = _maps(tmp_path / "dyn"), _maps(tmp_path / "fix")
    assert len(got) == 3 and list(got) == list(want)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    assert reports[0] == reports[1]
    r = cli(*common, "--maps", tmp_path / "fix", "--input-size", str(S))
    assert_one_line_error(r, "--input-size", "applies to --model, not to precomputed --maps")


def test_verify_runs_a_dynamic_graph_at_input_size(setup):
    from bagcams_deploy.models import load_model
    from bagcams_deploy.verify import verify_backend

    model = load_model(setup["ckpt"])
    seen: list[tuple[int, ...]] = []
    with create_backend("ort-cpu", graph=setup["dynamic"]) as b:
        infer = b.infer
        b.infer = lambda x, ids=None: seen.append(x.shape) or infer(x, ids)
        rep = verify_backend(b, model, str(setup["dynamic"]), setup["images"], num_random=2, seed=1, input_size=S)
    assert rep.passed, rep.failures
    assert {shape[2:] for shape in seen} == {(S, S)} and sum(shape[0] for shape in seen) == 4


def test_fixed_size_graphs_refuse_input_size(cli, setup, tmp_path):
    fixed, d = setup["fixed"], setup["data"]
    message = f"takes {S}x{S} images; --input-size is only for graphs exported with --dynamic-size"
    out = tmp_path / "o"
    assert_one_line_error(
        cli("localize", setup["images"], "--model", fixed, "--out", out, "--input-size", "64"), message
    )
    assert not out.exists()
    assert_one_line_error(cli("verify", fixed, "--checkpoint", setup["ckpt"], "--input-size", "64"), message)
    r = cli("evaluate", "--model", fixed, "--metadata", d / "metadata" / "test", "--data-root", d / "images",
            "--input-size", "64")  # fmt: skip
    assert_one_line_error(r, message)
    # the graph's own size is no contradiction (as in bench)
    r = cli("verify", fixed, "--checkpoint", setup["ckpt"], "--input-size", str(S), "--num-random", "1", "--seed", "0")
    assert r.code == 0, r.err
    # below the architecture's minimum, a dynamic graph refuses too
    r = cli("localize", setup["images"], "--model", setup["dynamic"], "--out", out, "--input-size", "16")
    assert_one_line_error(r, "--input-size 16: resnet18 takes inputs of 32x32 or more")


def test_the_library_takes_the_size_with_the_same_rule(setup, tmp_path):
    from bagcams_deploy.localize import localize_images

    with create_backend("ort-cpu", graph=setup["fixed"]) as b:
        assert run_input_size(b.spec, None, "g") == ((S, S), "the graph's")
        with pytest.raises(BagcamsError, match="--input-size is only for graphs exported with --dynamic-size"):
            localize_images(b, setup["images"], tmp_path / "o", input_size=64)
    assert not (tmp_path / "o").exists()
    with create_backend("ort-cpu", graph=setup["dynamic"]) as b:
        assert run_input_size(b.spec, None, "g") == ((224, 224), "default for a dynamic-size graph")
        assert run_input_size(b.spec, (S, 128), "g") == ((S, 128), "--input-size")
        for bad in (0, True, (S,), "96", 96.0):
            with pytest.raises(BagcamsError, match="--input-size must be a positive integer"):
                run_input_size(b.spec, bad, "g")
        records = localize_images(b, setup["images"], tmp_path / "lib", input_size=np.int64(S))
    assert len(records) == 2 and json.loads((tmp_path / "lib" / "boxes.json").read_text())["input_size"] == [S, S]
