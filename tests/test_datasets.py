"""Reading wsolevaluation metadata folders, GT masks and images, and the errors for bad input."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.evaluation import (
    BoxEvaluator,
    MaskEvaluator,
    align_mask_ids,
    load_gt_mask,
    load_image,
    load_mask_metadata,
    load_metadata,
    resize_box,
)
from bagcams_deploy.evaluation.runner import Scorer


def write(folder: Path, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


BOX_FILES = {
    "image_ids": "a/1.png\nb/2.png\n",
    "class_labels": "a/1.png,3\nb/2.png,7\n",
    "image_sizes": "a/1.png,500,300\nb/2.png,224,224\n",
    "localization": "a/1.png,100,50,499,299\na/1.png,0,0,10,10\nb/2.png,20,30,120,130\n",
}


@pytest.fixture
def box_set(tmp_path) -> Path:
    return write(tmp_path / "meta", **BOX_FILES)


def test_box_metadata(box_set):
    meta = load_metadata(box_set)
    assert meta.kind == "boxes"
    assert meta.image_ids == ["a/1.png", "b/2.png"]
    assert meta.class_labels == {"a/1.png": 3, "b/2.png": 7}
    assert meta.image_sizes["a/1.png"] == (500, 300)
    assert meta.boxes["a/1.png"] == [(100, 50, 499, 299), (0, 0, 10, 10)]
    # 500x300 -> 224x224 with int() truncation: 100*224/500 = 44.8 -> 44, 50*224/300 = 37.33 -> 37,
    # 499*224/500 = 223.55 -> 223, 299*224/300 = 223.25 -> 223; 10*224/500 = 4.48 -> 4, 10*224/300 -> 7.
    assert meta.resized_boxes("a/1.png").tolist() == [[44, 37, 223, 223], [0, 0, 4, 7]]
    assert meta.resized_boxes("b/2.png").tolist() == [[20, 30, 120, 130]]
    assert resize_box((1, 1, 3, 3), (3, 3), (2, 2)) == (0, 0, 2, 2)  # 0.67 -> 0, 2.0 -> 2


def test_boxes_flow_into_the_evaluator(box_set):
    meta = load_metadata(box_set)
    m = np.zeros((224, 224), dtype=np.float32)
    m[30:131, 20:121] = 1.0  # box (20, 30, 121, 131) vs GT (20, 30, 120, 130): IoU 101^2 / 102^2 > .7
    ev = BoxEvaluator(interval=0.01)
    ev.accumulate(m, meta.resized_boxes("b/2.png"), pred_correct=True)
    assert ev.compute().gt_known_loc[70] == 100.0


def test_blank_lines_and_crlf_are_tolerated(tmp_path):
    files = {k: v.replace("\n", "\r\n") + "\n" for k, v in BOX_FILES.items()}
    assert load_metadata(write(tmp_path / "m", **files)).image_ids == ["a/1.png", "b/2.png"]


@pytest.fixture
def mask_set(tmp_path) -> tuple[Path, Path]:
    """Two images; masks are 112x112 so the nearest-neighbour resize to 224 doubles each pixel."""
    masks = tmp_path / "masks"
    (masks / "a").mkdir(parents=True)
    inst1 = np.zeros((112, 112), np.uint8)
    inst1[0:10, 0:10] = 255  # -> 224 rows/cols 0..19
    inst2 = np.zeros((112, 112), np.uint8)
    inst2[50:60, 50:60] = 1  # value 1 > 0.5 counts as foreground too -> 100..119
    ignore = np.zeros((112, 112), np.uint8)
    ignore[0:20, 0:20] = 255  # -> 0..39, minus the foreground
    for name, img in (("i1", inst1), ("i2", inst2), ("ign", ignore)):
        cv2.imwrite(str(masks / "a" / f"{name}.png"), img)
    meta = write(
        tmp_path / "meta",
        image_ids="a/1.jpg\na/2.jpg\n",
        class_labels="a/1.jpg,0\na/2.jpg,1\n",
        image_sizes="a/1.jpg,112,112\na/2.jpg,112,112\n",
        localization="a/1.jpg,a/i1.png,a/ign.png\na/1.jpg,a/i2.png,\na/2.jpg,a/i2.png,\n",
    )
    return meta, masks


def test_mask_metadata_and_gt_mask(mask_set):
    meta_dir, masks = mask_set
    meta = load_metadata(meta_dir)
    assert meta.kind == "masks"
    assert meta.mask_paths == {"a/1.jpg": ["a/i1.png", "a/i2.png"], "a/2.jpg": ["a/i2.png"]}
    assert meta.ignore_paths == {"a/1.jpg": "a/ign.png", "a/2.jpg": None}
    gt = load_gt_mask(masks, meta.mask_paths["a/1.jpg"], meta.ignore_paths["a/1.jpg"])
    assert gt.dtype == np.float32 and gt.shape == (224, 224)
    # Foreground 20*20 + 20*20 = 800 pixels; ignore 40*40 - 20*20 (overlap with instance 1) = 1200.
    assert (gt == 1).sum() == 800 and (gt == 255).sum() == 1200
    assert gt[0, 0] == 1 and gt[30, 30] == 255 and gt[110, 110] == 1 and gt[200, 200] == 0
    no_ignore = load_gt_mask(masks, meta.mask_paths["a/2.jpg"], None)
    assert (no_ignore == 255).sum() == 0 and (no_ignore == 1).sum() == 400
    ev = MaskEvaluator(interval=0.01)
    ev.accumulate((gt == 1).astype(np.float32), gt)
    assert ev.compute().pxap == pytest.approx(100.0)


def test_load_image(tmp_path):
    img = np.zeros((5, 6, 3), np.uint8)  # tiny images are scored, as by the published loader
    img[..., 2] = 200  # red in BGR
    (tmp_path / "x").mkdir()
    cv2.imwrite(str(tmp_path / "x" / "im.png"), img)
    rgb = load_image(tmp_path, "x/im.png")
    assert rgb.shape == (5, 6, 3) and rgb[0, 0].tolist() == [200, 0, 0]


# --------------------------------------------------------------------------- errors


def error_of(fn, *args) -> str:
    with pytest.raises(BagcamsError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def broken(tmp_path: Path, **changes: str) -> Path:
    files = dict(BOX_FILES)
    files.update(changes)
    return write(tmp_path / "broken", **files)


@pytest.mark.parametrize("missing", ["image_ids", "class_labels", "image_sizes", "localization"])
def test_missing_metadata_file(tmp_path, missing):
    folder = write(tmp_path / "m", **{k: v for k, v in BOX_FILES.items() if k != missing})
    assert re.search(rf"{missing}\.txt: metadata file not found", error_of(load_metadata, folder))


def test_missing_folder(tmp_path):
    assert "metadata folder not found" in error_of(load_metadata, tmp_path / "nope")


@pytest.mark.parametrize(
    "name,text,expected",
    [
        ("class_labels", "a/1.png,3\nb/2.png\n", r"class_labels\.txt:2: malformed line"),
        (
            "class_labels",
            "a/1.png,3\nb/2.png,seven\n",
            r"class_labels\.txt:2: class label must be an integer",
        ),
        ("image_sizes", "a/1.png,500\nb/2.png,224,224\n", r"image_sizes\.txt:1: malformed line"),
        (
            "image_sizes",
            "a/1.png,500,0\nb/2.png,224,224\n",
            r"image_sizes\.txt:1: image size must be positive",
        ),
        ("image_ids", "a/1.png\na/1.png\nb/2.png\n", r"image_ids\.txt:2: duplicate image id"),
        ("image_ids", "a/1.png,3\n", r"image_ids\.txt:1: malformed line"),
        ("localization", "a/1.png,1,2,3,4\nb/2.png,1,2,3\n", r"localization\.txt:2: malformed line"),
        (
            "localization",
            "a/1.png,1,2,3,4\nb/2.png,1,2,x,4\n",
            r"localization\.txt:2: box coordinate must be",
        ),
        ("localization", "a/1.png,1,2,3,4\nb/2.png,a.png,\n", r"localization\.txt:2: malformed line"),
        ("localization", "a/1.png,10,2,3,4\nb/2.png,1,2,3,4\n", r"localization\.txt:1: box .* x1 < x0"),
        (
            "localization",
            "a/1.png,1,20,3,4\nb/2.png,1,2,3,4\n",
            r"localization\.txt:1: box .* x1 < x0 or y1 < y0",
        ),
        ("localization", "a/1.png,-1,2,3,4\nb/2.png,1,2,3,4\n", r"localization\.txt:1: box .* negative coordinate"),
        # ids without label / size / localization: the image_ids.txt line and the file lacking it
        (
            "class_labels",
            "a/1.png,3\n",
            r"image_ids\.txt:2: image 'b/2\.png' has no class label in .*class_labels",
        ),
        (
            "image_sizes",
            "b/2.png,224,224\n",
            r"image_ids\.txt:1: image 'a/1\.png' has no size in .*image_sizes",
        ),
        (
            "localization",
            "a/1.png,1,2,3,4\n",
            r"image_ids\.txt:2: image 'b/2\.png' has no box in .*localization",
        ),
        ("localization", "\n", r"localization\.txt: no localization lines"),
    ],
)
def test_bad_metadata_lines(tmp_path, name, text, expected):
    assert re.search(expected, error_of(load_metadata, broken(tmp_path, **{name: text})))


def test_boxes_past_the_edge_are_scored_as_given_with_a_note(tmp_path):
    # wsolevaluation rescales such boxes unclipped; refusing them aborted a whole split for one line
    loc = "a/1.png,100,50,499,299\na/1.png,0,0,501,10\nb/2.png,20,30,120,226\nb/2.png,1,1,224,224\n"
    meta = load_metadata(broken(tmp_path, localization=loc))
    assert meta.boxes["a/1.png"][1] == (0, 0, 501, 10) and meta.boxes["b/2.png"][0] == (20, 30, 120, 226)
    assert meta.resized_boxes("a/1.png")[1].tolist() == [0, 0, int(501 * 224 / 500), int(10 * 224 / 300)]
    (note,) = meta.notes
    assert "2 box(es) reach past" in note and "first: line 2, (0, 0, 501, 10) in a 500x300 image" in note
    assert (
        load_metadata(broken(tmp_path / "ok", localization=loc.replace("501", "500")))
        .notes[0]
        .startswith(str(tmp_path / "ok" / "broken" / "localization.txt") + ": 1 box(es)")
    )  # x1 == w (an exclusive edge) is inside; only b/2.png's y1 = 226 > 224 is noted
    assert load_metadata(broken(tmp_path / "none")).notes == []


def test_mask_split_needs_no_image_sizes(mask_set):
    meta_dir, _ = mask_set
    (meta_dir / "image_sizes.txt").unlink()  # wsolevaluation's OpenImages folders have none
    meta = load_metadata(meta_dir)
    assert meta.kind == "masks" and meta.image_sizes == {} and set(meta.mask_paths) == {"a/1.jpg", "a/2.jpg"}


def test_mask_only_folder_with_prefixed_ids_is_aligned(mask_set, tmp_path):
    """BagCAMs' CUBMask folder: a localization.txt only, ids with one more leading folder than CUB's."""
    meta_dir, masks = mask_set
    cub = load_metadata(meta_dir)
    only = write(
        tmp_path / "cubmask",
        localization="test/a/1.jpg,a/i1.png,a/ign.png\ntest/a/1.jpg,a/i2.png,\ntest/a/2.jpg,a/i2.png,\n",
    )
    prefixed = load_mask_metadata(only)
    assert prefixed.image_ids == ["test/a/1.jpg", "test/a/2.jpg"] and prefixed.notes == []
    aligned = align_mask_ids(cub.image_ids, prefixed)
    assert aligned.mask_paths == cub.mask_paths and aligned.ignore_paths == cub.ignore_paths
    assert "without their first folder ('test/a/1.jpg' -> 'a/1.jpg')" in aligned.notes[0]
    assert align_mask_ids(cub.image_ids, cub) is cub  # ids that match as written are kept
    unrelated = align_mask_ids(["z/9.jpg"], prefixed)
    assert unrelated is prefixed  # nothing to align with: the scorer names the missing mask
    # scored through the aligned ids, the masks give the same numbers as the verbatim ones
    m = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    pxap = []
    for mm in (cub, prefixed):
        scorer = Scorer(cub, mm, masks, interval=0.01)
        for image_id in cub.image_ids:
            scorer.add(image_id, m, None)
        pxap.append(scorer.result(0.0).masks.pxap)
    assert pxap[0] == pxap[1]
    partial = load_mask_metadata(write(tmp_path / "partial", localization="test/a/1.jpg,a/i1.png,\n"))
    with pytest.raises(BagcamsError, match=r"no mask for image a/2\.jpg in .*partial/localization\.txt"):
        Scorer(cub, partial, masks).add("a/2.jpg", m, None)
    assert "lists boxes, not masks" in error_of(load_mask_metadata, write(tmp_path / "boxes", **BOX_FILES))
    clash = load_mask_metadata(
        write(tmp_path / "clash", localization="x/a/1.jpg,a/i1.png,\ny/a/1.jpg,a/i2.png,\nx/a/2.jpg,a/i2.png,\n")
    )
    message = error_of(align_mask_ids, cub.image_ids, clash)
    assert "'x/a/1.jpg' and 'y/a/1.jpg' both become 'a/1.jpg'" in message


def test_mask_set_errors(mask_set):
    meta_dir, _ = mask_set
    loc = meta_dir / "localization.txt"
    loc.write_text("a/1.jpg,a/i1.png,a/ign.png\na/1.jpg,a/i2.png,a/other.png\na/2.jpg,a/i2.png,\n")
    assert re.search(r"localization\.txt:2: second ignore mask", error_of(load_metadata, meta_dir))
    loc.write_text("a/1.jpg,a/i1.png,a/ign.png\n")
    assert re.search(r"image_ids\.txt:2: image 'a/2\.jpg' has no mask", error_of(load_metadata, meta_dir))
    loc.write_text("a/1.jpg,,a/ign.png\na/2.jpg,a/i2.png,\n")
    assert re.search(r"localization\.txt:1: empty mask path", error_of(load_metadata, meta_dir))


def test_unreadable_mask_and_image(mask_set, tmp_path):
    _, masks = mask_set
    msg = error_of(load_gt_mask, masks, ["a/i1.png", "a/none.png"], None)
    assert "none.png: cannot read mask (no such file)" in msg
    (masks / "a" / "junk.png").write_bytes(b"not a png")
    assert "junk.png: cannot read ignore mask (not a readable image)" in error_of(
        load_gt_mask, masks, ["a/i1.png"], "a/junk.png"
    )
    assert "image not found:" in error_of(load_image, tmp_path, "missing.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"\x00\x01")
    assert "cannot read image" in (msg := error_of(load_image, tmp_path, "bad.jpg")) and "bad.jpg" in msg
