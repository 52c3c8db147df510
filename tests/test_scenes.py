"""Procedural scenes: determinism, exact ground truth, area range, class coverage, written layout."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from bagcams_deploy.scenes import (
    CLASS_NAMES,
    MAX_AREA_FRAC,
    MIN_AREA_FRAC,
    generate_scene,
    scene_seed,
    write_dataset,
)
from bagcams_deploy.scenes.__main__ import main as scenes_main

SIZE = 96  # small images keep the suite fast; the generator scales everything with size


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    a, b = generate_scene(7, SIZE), generate_scene(7, SIZE)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.mask.tobytes() == b.mask.tobytes()
    assert (a.label, a.box) == (b.label, b.box)
    assert generate_scene(8, SIZE).image.tobytes() != a.image.tobytes()


def test_known_scene_digest_is_stable() -> None:
    """Guards against silent changes of the generator (data sets must be reproducible)."""
    sc = generate_scene(0, 64)
    assert sc.image.shape == (64, 64, 3) and sc.image.dtype == np.uint8
    assert sc.mask.shape == (64, 64) and sc.mask.dtype == bool
    digest = hashlib.sha256(sc.image.tobytes() + sc.mask.tobytes()).hexdigest()
    # Recorded with numpy 2.4 / OpenCV 5.0 on x86-64; a change here means data sets are no longer
    # reproducible from their seed (or the generator was changed on purpose: update it then).
    assert (sc.label, sc.box) == (8, (8, 2, 54, 62))
    assert digest == "6529dfd95587d855eaace7d4d2a0b6fbd702d15b452bde4b633f710a7ebf5351"


@pytest.mark.parametrize("size", [SIZE, 224])
def test_box_is_tight_box_of_mask_and_area_in_range(size: int) -> None:
    for seed in range(40 if size == SIZE else 10):
        sc = generate_scene(seed, size, label=seed % len(CLASS_NAMES))
        ys, xs = np.nonzero(sc.mask)
        assert sc.box == (xs.min(), ys.min(), xs.max(), ys.max())
        x0, y0, x1, y1 = sc.box
        assert 0 <= x0 <= x1 < size and 0 <= y0 <= y1 < size
        frac = sc.mask.mean()
        assert MIN_AREA_FRAC <= frac <= MAX_AREA_FRAC, (seed, CLASS_NAMES[sc.label], frac)


def test_every_class_appears() -> None:
    labels = {generate_scene(seed, 48).label for seed in range(300)}
    assert labels == set(range(len(CLASS_NAMES)))


def test_forced_label_and_bad_label() -> None:
    assert generate_scene(3, SIZE, label=4).label == 4
    with pytest.raises(ValueError):
        generate_scene(3, SIZE, label=len(CLASS_NAMES))


def test_split_seeds_are_disjoint() -> None:
    seeds = {s: {scene_seed(0, s, i) for i in range(200)} for s in ("train", "val", "test")}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["train"] & seeds["test"])
    assert not (seeds["val"] & seeds["test"])
    assert scene_seed(0, "train", 0) != scene_seed(1, "train", 0)


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_written_layout_is_consistent(tmp_path) -> None:
    counts = {"train": 12, "val": 5, "test": 6}
    calls: list[tuple[str, int, int]] = []
    root = write_dataset(tmp_path / "ds", counts, seed=3, size=SIZE, progress=lambda *a: calls.append(a))
    assert len(calls) == sum(counts.values())
    info = json.loads((root / "classes.json").read_text())
    assert info["class_names"] == list(CLASS_NAMES)
    for split, n in counts.items():
        meta = root / "metadata" / split
        ids = _lines(meta / "image_ids.txt")
        assert len(ids) == n and all(i.startswith(f"{split}/") for i in ids)
        labels = [ln.split(",") for ln in _lines(meta / "class_labels.txt")]
        sizes = [ln.split(",") for ln in _lines(meta / "image_sizes.txt")]
        boxes = [ln.split(",") for ln in _lines(meta / "localization.txt")]
        assert [r[0] for r in labels] == ids == [r[0] for r in sizes] == [r[0] for r in boxes]
        for rel, (_, lab), (_, w, h), (_, *box) in zip(ids, labels, sizes, boxes, strict=True):
            img = cv2.imread(str(root / "images" / rel), cv2.IMREAD_UNCHANGED)
            assert img.shape == (int(h), int(w), 3) == (SIZE, SIZE, 3)
            assert 0 <= int(lab) < len(CLASS_NAMES)
            x0, y0, x1, y1 = map(int, box)
            assert 0 <= x0 <= x1 < int(w) and 0 <= y0 <= y1 < int(h)
        if split == "train":
            assert not (root / "metadata_masks" / split).exists()
            continue
        mmeta = root / "metadata_masks" / split
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt"):
            assert (mmeta / name).read_text() == (meta / name).read_text()
        rows = [ln.split(",") for ln in _lines(mmeta / "localization.txt")]
        assert [r[0] for r in rows] == ids
        for (rel, mask_rel, ignore), (_, *box) in zip(rows, boxes, strict=True):
            assert ignore == f"{split}/ignore.png"
            ign = cv2.imread(str(root / "masks" / ignore), cv2.IMREAD_UNCHANGED)
            assert ign.shape == (SIZE, SIZE) and not ign.any()
            m = cv2.imread(str(root / "masks" / mask_rel), cv2.IMREAD_UNCHANGED)
            assert m.shape == (SIZE, SIZE) and set(np.unique(m)) <= {0, 255}
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max(), ys.max()] == list(map(int, box)), rel
    # Written images are the generator's images, byte for byte.
    sc = generate_scene(scene_seed(3, "val", 2), SIZE, label=2)
    img = cv2.cvtColor(cv2.imread(str(root / "images" / "val" / "00002.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(img, sc.image)


def test_entry_point(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    assert scenes_main(["--out", str(out), "--train", "2", "--val", "1", "--test", "1", "--size", "64"]) == 0
    assert len(_lines(out / "metadata" / "train" / "image_ids.txt")) == 2
    assert (out / "metadata_masks" / "test" / "localization.txt").exists()
