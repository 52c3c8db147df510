"""Third mutation audit: behaviour of the run records, the image decoder and pre-processing, the
output checks and the pixel metrics that no earlier test pinned down (each test fails with a
small change to the line it guards: a wrong file removed, a transposed resize, a NaN pixel read as
black, the wrong image named, a wrong pIoU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bagcams_deploy.checks import NonFiniteOutputError, check_finite_outputs, checked_size, name_non_finite
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation import MaskEvaluator
from bagcams_deploy.export.contract import check_graph_name, class_names_of, read_graph_info
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.export.rules import rule_for
from bagcams_deploy.images import load_image
from bagcams_deploy.localize import earlier_outputs
from bagcams_deploy.models import build_model, load_model
from bagcams_deploy.outputs import finish_run_record
from bagcams_deploy.preprocessing import MEAN, STD, expand_image_paths, load_images, preprocess
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.runtime.base import Backend, BackendSpec, run_input_size
from bagcams_deploy.runtime.registry import parse_backends

from .test_cli import write_image

# --- run records: what a rerun may remove ------------------------------------------------------------


def _record(out: Path, images: list[dict], stale: list[str] = ()) -> None:
    doc = {"command": "localize", "method": "gradcam", "complete": False, "images": images}
    doc["stale_outputs"] = list(stale)
    (out / "boxes.json").write_text(json.dumps(doc))


def _complete_empty_run(out: Path) -> list[str]:
    """What a successful rerun that rewrote none of the earlier files does at its end."""
    earlier = earlier_outputs(out, "localize")
    return finish_run_record(out, "localize", {"command": "localize", "complete": True, "images": []}, earlier)


def test_a_record_can_never_make_a_rerun_remove_a_file_outside_its_folder_or_of_another_shape(tmp_path):
    """A record is a file anyone can edit: only bare names of the commands' shapes are ever removed."""
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    keep = [tmp_path / "victim.npy", out / "sub" / "x_overlay.png", out / ".npy", out / "_overlay.png"]
    for p in [*keep, out / "a.npy", out / "a_overlay.png"]:
        p.write_bytes(b"data")
    _record(
        out,
        [{"image": "a.png", "map": "a.npy", "overlay": "a_overlay.png"},
         {"image": "b.png", "map": "../victim.npy", "overlay": "sub/x_overlay.png"},
         {"image": "c.png", "map": ".npy", "overlay": "_overlay.png"}],
        stale=[str(tmp_path / "victim.npy")],
    )  # fmt: skip
    assert _complete_empty_run(out) == []
    assert all(p.exists() for p in keep), [p for p in keep if not p.exists()]
    assert not (out / "a.npy").exists() and not (out / "a_overlay.png").exists()


def test_a_listed_output_that_is_a_dangling_or_folder_link_is_removed_not_left_behind(tmp_path):
    """The link itself is the earlier run's file: left behind, no record would list it, and the next
    run planning that name would refuse it as the user's own."""
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "folder").mkdir()
    os.symlink(tmp_path / "missing.npy", out / "a.npy")
    os.symlink(tmp_path / "folder", out / "a_overlay.png")
    _record(out, [{"image": "a.png", "map": "a.npy", "overlay": "a_overlay.png"}])
    assert _complete_empty_run(out) == []
    assert not os.path.lexists(out / "a.npy") and not os.path.lexists(out / "a_overlay.png")
    assert (tmp_path / "folder").is_dir()


# --- pre-processing and decoding ---------------------------------------------------------------------


def _expected(rgb: np.ndarray, hw: tuple[int, int], mean, std) -> np.ndarray:
    """SPEC.md section 1 written out: PIL bilinear to (W, H), /255, (x - mean) / std, CHW."""
    resized = np.asarray(Image.fromarray(rgb).resize((hw[1], hw[0]), Image.BILINEAR), np.float32) / 255.0
    return ((resized - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)


@pytest.mark.parametrize("mean_std", [None, ((0.3, 0.5, 0.7), (0.2, 0.3, 0.4))])
def test_preprocess_is_pil_bilinear_then_mean_std_at_a_non_square_size(mean_std):
    """H and W are not interchangeable, and a caller's mean/std are the ones used."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mean, std = mean_std or (MEAN, STD)
    x = preprocess([rgb], (24, 40)) if mean_std is None else preprocess([rgb], (24, 40), mean, std)
    assert tuple(x.shape) == (1, 3, 24, 40)
    np.testing.assert_allclose(x[0].numpy(), _expected(rgb, (24, 40), mean, std), rtol=0, atol=1e-6)


def test_preprocess_refuses_images_that_are_not_uint8_even_at_the_model_size():
    """A float image in [0, 1] at the target size needs no resize; divided by 255 again it would be
    an almost black image and a meaningless map, not an error."""
    rgb = np.random.default_rng(1).random((16, 16, 3))
    for im in (rgb.astype(np.float32), (rgb * 255).astype(np.int64)):
        with pytest.raises(BagcamsError, match="RGB uint8"):
            preprocess([im], 16)


def test_a_folder_of_upper_case_suffixes_is_read(tmp_path):
    """Cameras write IMG_0001.JPG: a folder of them is images, not 'no image files found'."""
    folder = tmp_path / "dcim"
    folder.mkdir()
    for name in ("IMG_0002.JPG", "IMG_0001.Png", "scan.TIFF"):
        write_image(folder / name, size=(20, 16))
    assert [p.name for p in expand_image_paths([folder])] == ["IMG_0001.Png", "IMG_0002.JPG", "scan.TIFF"]


def test_the_library_loader_refuses_a_float_image_with_nan_pixels(tmp_path):
    """check_images refuses it for the CLI; a library caller of load_image(s) must not get the NaN
    pixels as black, silently."""
    arr = np.full((16, 16), 0.5, np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr).save(tmp_path / "z.tif")
    for load in (load_image, load_images):
        with pytest.raises(BagcamsError, match="NaN or Inf"):
            load(tmp_path / "z.tif")


def test_a_palette_image_with_a_transparent_index_is_composited_over_white(tmp_path):
    """A GIF-style transparent colour is white, as alpha is, not whatever colour the index holds."""
    pixels = np.zeros((16, 16), np.uint8)
    pixels[:, 8:] = 1
    im = Image.fromarray(pixels, mode="P")
    im.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)  # index 0: black (transparent), 1: red
    im.save(tmp_path / "p.png", transparency=0)
    rgb = load_image(tmp_path / "p.png")
    assert (rgb[:, :8] == 255).all()
    assert (rgb[:, 8:] == (200, 30, 10)).all()


# --- checks on outputs and sizes ---------------------------------------------------------------------


@pytest.mark.parametrize("key", ["logits", "cam"])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_output_names_exactly_the_affected_images(key: str, bad: float):
    """Infinity alone (an overflowing logit) is refused like NaN, in every output, and the error names
    the files of the batch that are affected, not their neighbours."""
    shape = (4, 3) if key == "logits" else (4, 1, 5, 5)
    values = np.random.default_rng(2).random(shape).astype(np.float32)
    values[1].flat[2] = bad
    values[3].flat[0] = bad
    with pytest.raises(NonFiniteOutputError) as info:
        check_finite_outputs("ort-cpu", {key: values})
    assert info.value.indices == [1, 3] and info.value.key == key
    message = str(name_non_finite(info.value, ["a.png", "b.png", "c.png", "d.png"]))
    assert f"{key} is NaN or infinite for b.png, d.png:" in message


def test_checked_size_takes_an_int_or_a_pair_and_nothing_longer():
    assert checked_size(5) == (5, 5) and checked_size(np.array([3, 4])) == (3, 4)
    for bad in ((64, 48, 3), [64], (64, 0), True, (True, 4), 64.0):
        with pytest.raises(BagcamsError, match="positive integer"):
            checked_size(bad)


# --- pixel metrics -----------------------------------------------------------------------------------


def _random_masks(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        score = rng.random((12, 10))
        mask = (rng.random((12, 10)) < 0.4).astype(np.uint8)
        mask[rng.random((12, 10)) < 0.1] = 255
        pairs.append((score, mask))
    return pairs


def test_mask_metrics_on_a_grid_not_starting_at_zero_count_every_foreground_pixel():
    """Foreground scored below the lowest threshold is missed at every threshold: the curve on
    thresholds T[k:] is the full grid's curve cut short, never one that forgets those pixels."""
    full_grid = np.arange(0, 1, 0.05)
    full, part = MaskEvaluator(thresholds=full_grid), MaskEvaluator(thresholds=full_grid[6:])
    for score, mask in _random_masks(3, seed=4):
        full.accumulate(score, mask)
        part.accumulate(score, mask)
    a, b = full.compute(), part.compute()
    assert b.count == a.count == 3 and b.to_dict()["count"] == 3
    np.testing.assert_allclose(b.iou_curve, a.iou_curve[: len(a.iou_curve) - 6])
    # by hand: half the foreground at 0.9, half at 0.1; at threshold 0.5 the IoU is 1/2, not 1
    score = np.where(np.arange(16).reshape(4, 4) % 2 == 0, 0.9, 0.1)
    ev = MaskEvaluator(thresholds=[0.5])
    ev.accumulate(score, np.ones((4, 4), np.uint8))
    assert ev.compute().piou == pytest.approx(50.0)


@pytest.mark.parametrize("thresholds", [[0.0, 0.5, 1.0], [0.0, 0.5, 0.5, 0.7]])
def test_mask_thresholds_must_lie_below_one_and_strictly_increase(thresholds: list[float]):
    """A threshold of 1 or a repeated one would make an empty or duplicated histogram bin: a curve
    with points that are no thresholds of the grid."""
    with pytest.raises(BagcamsError, match=r"in \[0, 1\) and strictly increasing"):
        MaskEvaluator(thresholds=thresholds)


# --- the backend base class: what reaches infer_impl -------------------------------------------------


class _Recorder(Backend):
    """A backend that runs nothing: it records what the base class hands ``infer_impl``."""

    name = "recorder"

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def spec(self) -> BackendSpec:
        return BackendSpec("bagcams", "layer3", "resnet18", 10, None, MEAN, STD, ("logits",))

    def infer_impl(self, images: np.ndarray, class_ids: np.ndarray) -> dict[str, np.ndarray]:
        self.seen.append((images, class_ids))
        self.last_inference_time = 0.0
        return {"logits": np.zeros((len(images), 10), np.float32)}


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_one_class_id_for_a_batch_reaches_the_runtime_as_one_per_image():
    """The contract's ``class_id`` is [N]: a single id must be repeated, not handed on as [1]."""
    backend = _Recorder()
    backend.infer(_images(3), 5)
    backend.infer(_images(2), np.array([[4]]))
    assert [ids.tolist() for _, ids in backend.seen] == [[5, 5, 5], [4, 4]]


def test_unsigned_class_ids_beyond_int64_and_empty_batches_are_refused():
    """2**63 + 5 as int64 is negative, which means 'the argmax': a wrong class, silently. An empty
    batch is one clear error, not numpy's zero-size reduction traceback."""
    backend = _Recorder()
    with pytest.raises(BagcamsError, match="out of range"):
        backend.infer(_images(1), np.array([2**63 + 5], np.uint64))
    with pytest.raises(BagcamsError, match="empty batch"):
        backend.infer(np.zeros((0, 3, 32, 32), np.float32))
    assert backend.seen == []


def test_run_input_size_refuses_a_non_square_size_below_the_architecture_minimum():
    """Either side below the minimum (32 for resnet18) is too small, not only both."""
    spec = _Recorder().spec
    assert run_input_size(spec, (32, 200), "m.onnx") == ((32, 200), "--input-size")
    for size in ((200, 16), (16, 200)):
        with pytest.raises(BagcamsError, match="takes inputs of 32x32 or more"):
            run_input_size(spec, size, "m.onnx")


@pytest.fixture(scope="module")
def gradcam_graph(module_tmp) -> tuple[Path, object]:
    """A 64x96 (H x W) ResNet-18 Grad-CAM graph at layer4 (none of them defaults) and its model."""
    model = build_model("resnet18", 5, seed=31, randomize_batchnorm=True)
    path = module_tmp("round3") / "g.onnx"
    export_onnx(model, path, method="gradcam", target_layer="layer4", input_size=(64, 96))
    return path, model


def test_a_torch_backend_given_a_graph_computes_what_the_graph_does(gradcam_graph):
    """bench and verify run the checkpoint beside its graph: the torch side must take the graph's
    method, layer and size, or it times and compares another map."""
    path, model = gradcam_graph
    for name in ("torch-reference", "torch-analytic"):
        spec = create_backend(name, graph=path, model=model).spec
        assert (spec.method, spec.target_layer, spec.input_size) == ("gradcam", "layer4", (64, 96))


def test_a_torch_backend_refuses_a_graph_of_another_model(gradcam_graph):
    path, _ = gradcam_graph
    other = build_model("resnet18", 3, seed=32)
    with pytest.raises(BagcamsError, match="the model does not match"):
        create_backend("torch-reference", graph=path, model=other)


def test_a_backend_named_twice_runs_once_in_the_order_first_given():
    """bench --backends ort-cpu,ort-cpu would time the same backend twice and report two rows."""
    assert parse_backends(" ort-cpu,torch-reference, ort-cpu,") == ["ort-cpu", "torch-reference"]


# --- analytic rules beyond the shipped architectures' layers -----------------------------------------


@pytest.mark.parametrize(
    "module",
    [nn.AvgPool2d((2, 3), stride=(2, 1), padding=(1, 0)), nn.AvgPool2d(3, stride=2, padding=1),
     nn.AvgPool2d((2, 3), stride=1, padding=(0, 1)), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
     nn.Conv2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 1), dilation=(1, 2))],
    ids=repr,
)  # fmt: skip
def test_rules_of_other_pooling_and_strided_layers_are_the_true_gradient(module: nn.Module):
    """rule_for takes any AvgPool2d, MaxPool2d and Conv2d, not only the shipped nets' square ones: a
    non-square or strided window must still give autograd's gradient, at an odd input size."""
    gen = torch.Generator().manual_seed(3)
    rule = rule_for(module, guided=False)
    x = torch.randn(2, 4, 11, 9, generator=gen, requires_grad=True)
    y, tape = rule(x.detach())
    seed = torch.randn(y.shape, generator=gen)
    (module(x) * seed).sum().backward()
    torch.testing.assert_close(rule.vjp(tape, seed), x.grad, rtol=1e-5, atol=1e-6)


# --- checkpoints -------------------------------------------------------------------------------------


def test_a_wsolevaluation_checkpoint_wrapped_in_state_dict_loads(tmp_path):
    """wsolevaluation saves ``{"state_dict": model.state_dict(), "epoch": ...}`` (DataParallel's
    ``module.`` prefix included): it must load as the model, not as 'contains no tensors'."""
    model = build_model("resnet18", 4, seed=41, randomize_batchnorm=True)
    flat = {**model.extractor.state_dict(), **model.classifier.state_dict()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in flat.items()}, "epoch": 9}, tmp_path / "w.pth.tar")
    loaded = load_model(tmp_path / "w.pth.tar")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_graph_metadata_keeps_height_and_width_apart_and_a_gradient_method_needs_gradients(gradcam_graph, tmp_path):
    """A non-square graph is read back as H x W (swapped, every image would be refused or resized
    wrongly), and a Grad-CAM graph stripped of its gradients is no graph of ours."""
    import onnx

    path, _ = gradcam_graph
    info = read_graph_info(path)
    assert info.input_size == (64, 96)
    with create_backend("ort-cpu", graph=path) as backend:
        x = np.random.default_rng(5).standard_normal((1, 3, 64, 96)).astype(np.float32)
        assert backend.infer(x)["cam"].shape == (1, 1, 64, 96)
    graph = onnx.load(str(path))
    kept = [o for o in graph.graph.output if o.name != "gradients"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(tmp_path / "stripped.onnx"))
    with pytest.raises(BagcamsError, match="graph without a 'gradients' output"):
        read_graph_info(tmp_path / "stripped.onnx")
    onnx.helper.set_model_props(graph, {"class_names": "[1, 2, 3, 4, 5]"})
    onnx.save(graph, str(tmp_path / "numbers.onnx"))
    with pytest.raises(BagcamsError, match="not a JSON list of names"):
        class_names_of(tmp_path / "numbers.onnx")
    check_graph_name(tmp_path / "MODEL.ONNX")  # the suffix is matched as every command opens it


def test_a_graph_older_than_the_gradient_scale_field_is_read_at_scale_one(gradcam_graph, tmp_path):
    """Graphs exported before ``gradient_scale`` existed carry unscaled gradients: the field's absence
    must read as 1.0 (any other default rescales every host-side map of such a --no-cam graph)."""
    import onnx

    path, _ = gradcam_graph
    graph = onnx.load(str(path))
    props = {p.key: p.value for p in graph.metadata_props}
    assert "gradient_scale" in props
    for value, expected in ((None, 1.0), ("37.5", 37.5)):
        kept = {k: v for k, v in props.items() if k != "gradient_scale"}
        if value is not None:
            kept["gradient_scale"] = value
        del graph.metadata_props[:]
        onnx.helper.set_model_props(graph, kept)
        onnx.save(graph, str(tmp_path / "old.onnx"))
        assert read_graph_info(tmp_path / "old.onnx").gradient_scale == expected
