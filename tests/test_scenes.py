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


@pytest.mark.parametrize("size", [SIZE, 113, 224])
def test_box_is_tight_box_of_mask_and_area_in_range(size: int) -> None:
    """The area range is promised for every class but the spiral (see generator.MIN_AREA_FRAC): the spiral
    is checked only at 224 px, where the data sets and the demo model live."""
    for seed in range(40 if size != 224 else 10):
        sc = generate_scene(seed, size, label=seed % len(CLASS_NAMES))
        ys, xs = np.nonzero(sc.mask)
        assert sc.box == (xs.min(), ys.min(), xs.max(), ys.max())
        x0, y0, x1, y1 = sc.box
        assert 0 <= x0 <= x1 < size and 0 <= y0 <= y1 < size
        frac = sc.mask.mean()
        if sc.class_name != "spiral" or size == 224:
            assert MIN_AREA_FRAC <= frac <= MAX_AREA_FRAC, (seed, CLASS_NAMES[sc.label], frac)


def test_area_range_exceptions_are_the_documented_ones() -> None:
    """The spiral's whole-pixel line width makes its area a step function of scale, so at some sizes it
    misses the range by a few hundredths (documented at generator.MIN_AREA_FRAC, not corrected: that
    would change the scenes where they hold). The other classes hold at every size."""
    spiral = CLASS_NAMES.index("spiral")
    assert 0.07 < generate_scene(604, 119, label=spiral).mask.mean() < MIN_AREA_FRAC
    assert 0.07 < generate_scene(39, 64, label=spiral).mask.mean() < MIN_AREA_FRAC
    for size in (32, 48, 64, 119):
        for seed in range(10):
            for label in range(len(CLASS_NAMES)):
                frac = generate_scene(seed, size, label=label).mask.mean()
                if label != spiral:
                    assert MIN_AREA_FRAC <= frac <= MAX_AREA_FRAC, (size, seed, CLASS_NAMES[label], frac)
                elif size >= 64:
                    assert 0.06 <= frac <= 0.48, (size, seed, frac)


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


# --------------------------------------------------------------------------------------------------
# Rewriting a folder, interruption, and sizes the machine cannot hold.


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _pngs(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []


def test_rewrite_with_fewer_or_no_images_leaves_no_stale_split_and_keeps_user_files(tmp_path) -> None:
    root = tmp_path / "ds"
    write_dataset(root, {"train": 3, "val": 3, "test": 5}, seed=1, size=48)
    (root / "images" / "test" / "notes.txt").write_text("mine")
    (root / "images" / "val" / "mine.png").write_bytes(b"not a scene")
    (root / "metadata" / "val" / "README").write_text("mine")
    write_dataset(root, {"train": 2, "val": 0, "test": 3}, seed=2, size=48)
    info = json.loads((root / "classes.json").read_text())
    assert info["complete"] is True and info["counts"] == {"train": 2, "val": 0, "test": 3} and info["seed"] == 2
    assert _pngs(root / "images" / "test") == ["00000.png", "00001.png", "00002.png"]
    assert _pngs(root / "masks" / "test") == ["00000.png", "00001.png", "00002.png", "ignore.png"]
    assert len(_lines(root / "metadata" / "test" / "image_ids.txt")) == 3
    # the val split is gone, but not what the writer did not write
    assert _pngs(root / "images" / "val") == ["mine.png"] and not (root / "masks" / "val").exists()
    assert sorted(p.name for p in (root / "metadata" / "val").iterdir()) == ["README"]
    assert not (root / "metadata_masks" / "val").exists()
    assert (root / "images" / "test" / "notes.txt").read_text() == "mine"
    assert not list(root.rglob("*.tmp"))


def test_the_writer_deletes_only_its_own_names_and_only_in_its_own_folders(tmp_path) -> None:
    """Clearing a split once matched any digit-named PNG (a user's 000001.png or 20230101.png), in any
    folder, and followed a symlinked split folder out of the root."""
    root = tmp_path / "ds"
    write_dataset(root, {"train": 2, "val": 1, "test": 1}, seed=1, size=48)
    user = ["000001.png", "20230101.png", "1234.png", "099999.png"]  # not f"{i:05d}" names
    for name in user:
        (root / "images" / "train" / name).write_bytes(b"mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("00000.png", "00001.png"):
        (elsewhere / name).write_bytes(b"not yours")
    (root / "images" / "val").rename(tmp_path / "old_val")
    (root / "images" / "val").symlink_to(elsewhere, target_is_directory=True)
    write_dataset(root, {"train": 0, "val": 0, "test": 1}, seed=2, size=48)
    assert sorted(p.name for p in (root / "images" / "train").iterdir()) == sorted(user)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["00000.png", "00001.png"]
    # a non-empty folder the writer did not make is refused, and left as it was
    theirs = tmp_path / "theirs"
    (theirs / "images" / "test").mkdir(parents=True)
    (theirs / "images" / "test" / "00000.png").write_bytes(b"a real data set")
    with pytest.raises(ValueError, match=r"not empty and was not written by bagcams_deploy\.scenes"):
        write_dataset(theirs, {"test": 1}, seed=0, size=48)
    assert (theirs / "images" / "test" / "00000.png").read_bytes() == b"a real data set"
    assert not (theirs / "classes.json").exists()


def test_interrupted_rewrite_leaves_no_split_whose_metadata_disagrees_with_its_images(
    tmp_path, monkeypatch, capsys
) -> None:
    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.evaluation import load_metadata

    out = tmp_path / "st"
    args = ["--out", str(out), "--train", "0", "--val", "4", "--test", "8", "--size", "48"]
    assert scenes_main([*args, "--seed", "1"]) == 0
    capsys.readouterr()
    real, written = cv2.imwrite, []

    def imwrite(path, img, *rest):  # the 5th test image never gets written
        if "/images/test/" in str(path).replace("\\", "/"):
            written.append(path)
            if len(written) == 5:
                raise KeyboardInterrupt
        return real(path, img, *rest)

    monkeypatch.setattr(cv2, "imwrite", imwrite)
    assert scenes_main([*args, "--seed", "2"]) == 130
    (line,) = _err_lines(capsys)
    assert "interrupted" in line and "complete" in line
    info = json.loads((out / "classes.json").read_text())
    assert info["seed"] == 2 and info["complete"] is False
    # val was rewritten whole: its metadata matches its masks
    for rel, mask_rel, _ in (ln.split(",") for ln in _lines(out / "metadata_masks" / "val" / "localization.txt")):
        assert rel == mask_rel
    boxes = {ln.split(",")[0]: ln.split(",")[1:] for ln in _lines(out / "metadata" / "val" / "localization.txt")}
    for rel, box in boxes.items():
        ys, xs = np.nonzero(cv2.imread(str(out / "masks" / rel), cv2.IMREAD_UNCHANGED))
        assert [xs.min(), ys.min(), xs.max(), ys.max()] == list(map(int, box)), rel
    # test was being written: no metadata at all (not the old run's), and evaluate refuses it
    for meta in ("metadata", "metadata_masks"):
        assert not list((out / meta / "test").glob("*.txt"))
    with pytest.raises(BagcamsError, match=r"metadata (folder|file) not found"):
        load_metadata(out / "metadata" / "test")
    monkeypatch.undo()
    assert scenes_main([*args, "--seed", "2"]) == 0
    assert json.loads((out / "classes.json").read_text())["complete"] is True
    assert len(_lines(out / "metadata" / "test" / "image_ids.txt")) == 8


def test_interrupted_rewrite_keeps_no_split_of_the_earlier_run(tmp_path, monkeypatch) -> None:
    root = tmp_path / "ds"
    write_dataset(root, {"train": 2, "val": 2, "test": 2}, seed=1, size=48)

    def imwrite(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(cv2, "imwrite", imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(root, {"train": 2, "val": 2, "test": 2}, seed=2, size=48)
    assert not list(root.glob("metadata*/*/*.txt")) and not list(root.glob("*/*/0*.png"))
    assert json.loads((root / "classes.json").read_text())["complete"] is False


def test_evaluate_refuses_an_interrupted_rewrite_instead_of_scoring_it(tmp_path, monkeypatch, cli) -> None:
    out, maps = tmp_path / "st", tmp_path / "maps"
    write_dataset(out, {"test": 6}, seed=0, size=48)
    for rel in _lines(out / "metadata" / "test" / "image_ids.txt"):  # perfect maps: the GT masks
        (maps / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{rel}.npy", cv2.imread(str(out / "masks" / rel), cv2.IMREAD_UNCHANGED) / 255.0)
    args = ("evaluate", "--metadata", out / "metadata" / "test", "--mask-metadata", out / "metadata_masks" / "test",
            "--data-root", out / "images", "--mask-root", out / "masks", "--maps", maps)  # fmt: skip
    assert cli(*args).code == 0
    real, calls = cv2.imwrite, iter(range(10**6))

    def imwrite(path, img, *rest):  # the ignore mask, then image and mask of scenes 0, 1, 2: stop there
        if next(calls) == 6:
            raise KeyboardInterrupt
        return real(path, img, *rest)

    monkeypatch.setattr(cv2, "imwrite", imwrite)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, {"test": 6}, seed=1, size=48)
    monkeypatch.undo()
    r = cli(*args)
    assert r.code != 0 and "Traceback" not in r.err + r.out
    assert r.err.startswith("error: ") and "metadata" in r.err and "not found" in r.err, r.err


@pytest.mark.parametrize("size", ["100000", "3000000000"])
def test_huge_size_is_refused_before_any_work(tmp_path, capsys, size) -> None:
    out = tmp_path / "big"
    assert scenes_main(["--out", str(out), "--train", "1", "--val", "0", "--test", "0", "--size", size]) == 1
    (line,) = _err_lines(capsys)
    assert "4096" in line and "memory" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "exc", [MemoryError(), cv2.error("OpenCV(5.0.0) alloc.cpp:73: error: (-4:Insufficient memory) x")]
)
def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch, exc) -> None:
    from bagcams_deploy.scenes import writer

    def boom(*a, **k):
        raise exc

    monkeypatch.setattr(writer, "generate_scene", boom)
    assert scenes_main(["--out", str(tmp_path / "x"), "--train", "1", "--val", "0", "--test", "0"]) == 1
    (line,) = _err_lines(capsys)
    assert "--size" in line


def test_train_script_help_without_docstrings(monkeypatch, capsys):
    """``python -OO`` strips docstrings: the training script's --help took its description from
    ``__doc__.split`` and died with an AttributeError on None (found by pyright's optional-member check)."""
    from bagcams_deploy.scenes import train

    monkeypatch.setattr(train, "__doc__", None)
    with pytest.raises(SystemExit) as exc:
        train.main(["--help"])
    assert exc.value.code == 0 and "--out-dir" in capsys.readouterr().out
