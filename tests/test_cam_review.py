"""Review of ``info``, ``cam`` and the overlays: outputs never replace inputs, bad images fail before any
output, hidden files are no images, uint8 overlays with a visible label and box, probabilities in the
label, class names in ``info``, float TIFFs."""

from __future__ import annotations

import re
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.images import check_images, load_image
from bagcams_deploy.localize import softmax
from bagcams_deploy.models import load_model, save_checkpoint
from bagcams_deploy.preprocessing import expand_image_paths, preprocess
from bagcams_deploy.visualize import render_overlay, resize_map

from .test_cli import assert_one_line_error, write_image


def _folder(root: Path, names: list[str]) -> Path:
    root.mkdir()
    for i, n in enumerate(names):
        write_image(root / n, seed=i)
    return root


# --- 1: cam's outputs never overwrite its inputs (localize's rule, shared) ---------------------------


def test_cam_refuses_to_overwrite_an_input(cli, checkpoints, tmp_path):
    same = _folder(tmp_path / "same", ["a.png"])
    write_image(same / "a_overlay.png", mode="L", seed=5)  # an input that a.png's overlay would replace
    before = (same / "a_overlay.png").read_bytes()
    r = cli("cam", checkpoints["resnet18"], same, "--out", same, "--input-size", "64")
    assert_one_line_error(r, "a_overlay.png would be overwritten")
    assert (same / "a_overlay.png").read_bytes() == before and not (same / "a.npy").exists()


def test_cam_rerun_into_the_image_folder_does_not_snowball(cli, checkpoints, tmp_path):
    same = _folder(tmp_path / "same", ["a.png"])
    assert cli("cam", checkpoints["resnet18"], same / "a.png", "--out", same, "--input-size", "64").code == 0
    r = cli("cam", checkpoints["resnet18"], same, "--out", same, "--input-size", "64")  # skips a_overlay.png
    assert r.code == 0 and "note: skipped 1 file an earlier cam run listed in" in r.err, r.err
    assert not (same / "a_overlay_overlay.png").exists()


# --- 4: unreadable images fail before the first batch; hidden files are skipped in folders -------------


@pytest.mark.parametrize("bad", ["text", "tiny"])
def test_cam_bad_image_late_in_a_folder_fails_before_any_output(cli, checkpoints, tmp_path, bad):
    folder = _folder(tmp_path / "late", ["a1.png", "a2.png", "a3.png"])
    if bad == "text":
        (folder / "z.png").write_text("not a png")
    else:
        write_image(folder / "z.png", size=(4, 20))
    out = tmp_path / "out"
    r = cli("cam", checkpoints["resnet18"], folder, "--out", out, "--input-size", "64", "--batch-size", "1")
    assert_one_line_error(r, "z.png", "cannot read image" if bad == "text" else "too small")
    assert not out.exists() or not any(out.iterdir())


def test_localize_bad_image_late_in_a_folder_fails_before_any_output(cli, checkpoints, tmp_path):
    folder = _folder(tmp_path / "late", ["a1.png", "a2.png"])
    (folder / "z.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    r = cli("localize", folder, "--model", checkpoints["resnet18"], "--out", out, "--batch-size", "1")
    assert_one_line_error(r, "cannot read image", "z.png")
    assert not out.exists() or not any(out.iterdir())


def test_check_images_reads_headers_only(tmp_path):
    good = write_image(tmp_path / "a.png", size=(40, 30))
    check_images([good])
    with pytest.raises(BagcamsError, match="image not found"):
        check_images([tmp_path / "missing.png"])
    # a sound header with its pixels cut off passes the header check and fails only when decoded
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:120])
    check_images([cut])
    with pytest.raises(BagcamsError, match=r"cannot read image .*cut\.png"):
        load_image(cut)


def test_hidden_files_in_folders_are_skipped(cli, checkpoints, tmp_path):
    folder = _folder(tmp_path / "mac", ["a.jpg"])
    (folder / "._a.jpg").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")  # macOS AppleDouble
    (folder / ".hidden.png").write_bytes(b"junk")
    assert [p.name for p in expand_image_paths([folder])] == ["a.jpg"]
    out = tmp_path / "out"
    r = cli("cam", checkpoints["resnet18"], folder, "--out", out, "--input-size", "64")
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "a_overlay.png", "cam.json"]
    # a hidden file named on its own is still read (and this one is no image)
    assert expand_image_paths([folder / "._a.jpg"]) == [folder / "._a.jpg"]
    assert_one_line_error(cli("cam", checkpoints["resnet18"], folder / "._a.jpg", "--out", out), "cannot read image")


# --- 8: the overlay blends in uint8, as the float blend did to one grey level --------------------------


def _old_render(image_rgb: np.ndarray, score_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The float32 blend ``render_overlay`` used before (label and boxes aside): the oracle."""
    m = np.asarray(score_map, dtype=np.float32)
    m = resize_map(np.nan_to_num(m, nan=0.0), image_rgb.shape[:2])
    heat_bgr = cv2.applyColorMap(np.uint8(np.clip(m, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat_bgr, cv2.COLOR_BGR2RGB)
    return np.uint8(np.clip((1 - alpha) * image_rgb.astype(np.float32) + alpha * heat, 0, 255))


def test_uint8_overlay_matches_the_float_blend():
    rng = np.random.default_rng(0)
    for t in range(40):
        h, w = (int(v) for v in rng.integers(8, 260, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        shape = (h, w) if t % 2 else tuple(int(v) for v in rng.integers(1, 80, 2))
        m = rng.random(shape, dtype=np.float32) * 1.4 - 0.2  # outside [0, 1] too
        m[0, 0] = np.nan
        alpha = 0.5 if t % 3 == 0 else float(rng.random())
        copy = m.copy()
        got = render_overlay(img, m, alpha=alpha)
        diff = np.abs(got.astype(np.int16) - _old_render(img, m, alpha).astype(np.int16))
        assert diff.max() <= 1, (t, diff.max())
        np.testing.assert_array_equal(m, copy)  # the caller's map is not modified in place


def test_overlay_of_a_large_image_allocates_no_float_copies():
    h, w = 1200, 1600
    img = np.full((h, w, 3), 90, np.uint8)
    m = np.random.default_rng(1).random((h, w), dtype=np.float32)  # full size, as localize passes it
    tracemalloc.start()
    try:
        render_overlay(img, m, label="x 0.50")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the map's copy (4 bytes/pixel), its uint8 index and the uint8 heat and result; the float blend took ~60
    assert peak / (h * w) < 12, peak / (h * w)


# --- 9: the label never hides a box edge, and is left out where it would cover a small image ----------


def test_box_on_the_top_border_stays_visible_under_the_label():
    img = np.full((300, 300, 3), 128, np.uint8)
    out = render_overlay(img, np.zeros((300, 300), np.float32), [[0, 0, 200, 100]], "Black_footed_Albatross 0.97")
    assert (out[0, 0:201] == (0, 255, 0)).all()  # the whole top edge
    assert (out[5:12, 120:140] == 0).all(axis=-1).any()  # and the label is still there, beside it


def test_label_left_out_where_it_would_cover_a_small_image():
    rng = np.random.default_rng(2)
    for side in (8, 32):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        m = rng.random((side, side), dtype=np.float32)
        np.testing.assert_array_equal(render_overlay(img, m, label="fish 0.91"), render_overlay(img, m))
    for side in (8, 32, 64, 100, 256, 600):
        img = rng.integers(0, 256, (side, side + 7, 3), dtype=np.uint8)
        m = rng.random((side, side + 7), dtype=np.float32)
        for label in ("fish 0.91", "Black_footed_Albatross 0.97"):
            covered = (render_overlay(img, m, label=label) != render_overlay(img, m)).any(axis=-1).mean()
            assert covered <= 0.25, (side, label, covered)
            if side >= 256:
                assert covered > 0, (side, label)  # large enough: the label is drawn


# --- 10: cam's overlay label is the probability, in localize's format ---------------------------------


def test_cam_label_is_the_probability_as_in_localize(cli, checkpoints, tmp_path, monkeypatch):
    import bagcams_deploy.visualize as visualize

    labels: list[str] = []
    real = visualize.render_overlay

    def spy(image_rgb, score_map, boxes=(), label=None, alpha=0.5):
        labels.append(label)
        return real(image_rgb, score_map, boxes, label, alpha)

    monkeypatch.setattr(visualize, "render_overlay", spy)
    img = write_image(tmp_path / "a.png")
    r = cli("cam", checkpoints["resnet18"], img, "--out", tmp_path / "o", "--input-size", "64")
    assert r.code == 0, r.err
    model = load_model(checkpoints["resnet18"])
    with torch.no_grad():
        logits = model(preprocess([load_image(img)], (64, 64)))[0].numpy()
    c = int(logits.argmax())
    assert labels == [f"class {c} {float(softmax(logits)[c]):.2f}"]
    assert re.fullmatch(r"class \d+ [01]\.\d\d", labels[0])


# --- 11: info prints the first class names and notes names that do not fit ----------------------------


def _named_checkpoint(models, path: Path, names: list[str] | None) -> Path:
    save_checkpoint(models["resnet18"], path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["bagcams_meta"]["class_names"] = names
    torch.save(ckpt, path)
    return path


def test_info_prints_class_names(cli, models, tmp_path):
    names = [f"bird{i}" for i in range(7)]
    r = cli("info", _named_checkpoint(models, tmp_path / "named.pth", names))
    assert r.code == 0 and r.err == "", r.err
    assert "class names:       bird0, bird1, bird2, bird3, bird4, ... (+2 more)" in r.out
    r = cli("info", _named_checkpoint(models, tmp_path / "plain.pth", None))
    assert r.code == 0 and "class names:       none" in r.out


def test_class_names_of_the_wrong_count_are_noted(cli, models, tmp_path):
    ckpt = _named_checkpoint(models, tmp_path / "bad.pth", ["a", "b", "c"])
    model = load_model(ckpt)  # library callers: still loads, the note is on the model
    assert model.class_names is None and "3 class names for 7 classes" in model.load_notes[0]
    for args in (("info", ckpt), ("info", ckpt, "--json")):
        r = cli(*args)
        assert r.code == 0
        notes = [ln for ln in r.err.splitlines() if ln]
        assert len(notes) == 1 and notes[0].startswith("note: ") and "3 class names for 7 classes" in notes[0]
    img = write_image(tmp_path / "a.png")
    r = cli("cam", ckpt, img, "--out", tmp_path / "o", "--input-size", "64")
    assert r.code == 0 and "note: " in r.err and "3 class names for 7 classes" in r.err


# --- 12: float ('F') TIFFs are scaled by their maximum like 32-bit integer ones ------------------------


def test_float_tiff_is_scaled_by_its_maximum(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.random((20, 30), dtype=np.float32) * 0.8  # values in [0, 1]: convert('RGB') gives black
    arr[0, 0] = -0.5
    Image.fromarray(arr).save(tmp_path / "f.tif")
    rgb = load_image(tmp_path / "f.tif")
    expected = np.uint8(np.clip(arr.astype(np.float64) / arr.max() * 255.0, 0, 255))
    assert rgb.max() == 255 and rgb[0, 0, 0] == 0
    np.testing.assert_array_equal(rgb, np.repeat(expected[:, :, None], 3, axis=2))
    # the same rule as a 32-bit integer image
    ints = np.int32(np.round(arr.astype(np.float64) * 1e6))
    Image.fromarray(ints).save(tmp_path / "i.tif")
    i_rgb = load_image(tmp_path / "i.tif")
    assert np.abs(i_rgb.astype(int) - rgb.astype(int)).max() <= 1
    # all zero stays black rather than dividing by zero
    Image.fromarray(np.zeros((10, 10), np.float32)).save(tmp_path / "z.tif")
    assert load_image(tmp_path / "z.tif").max() == 0


def test_float_tiff_with_nan_is_refused_in_one_line(cli, checkpoints, tmp_path):
    arr = np.full((16, 16), 0.5, np.float32)
    arr[3, 3] = np.nan
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "a.png", size=(40, 30))
    Image.fromarray(arr).save(folder / "z.tif")  # after a.png: refused before a.png's outputs are written
    out = tmp_path / "o"
    r = cli("cam", checkpoints["resnet18"], folder, "--out", out, "--input-size", "64", "--batch-size", "1")
    assert_one_line_error(r, "z.tif", "NaN or Inf")
    assert not out.exists() or not any(out.iterdir())
