"""``localize`` and ``evaluate`` on a checkpoint say, once, what loading it ignored, as ``info`` and
``cam`` do: class names whose count is not the class count are dropped (outputs say 'class N'), and
a user who packed them into the checkpoint should hear why they do not appear."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bagcams_deploy.models import build_model, save_checkpoint
from bagcams_deploy.models.checkpoint import META_KEY
from bagcams_deploy.runtime.open import open_model
from bagcams_deploy.scenes import write_dataset

CLASSES = 10  # the scene data set's class count


def _checkpoint(path: Path, class_names: list[str] | None) -> Path:
    """One small model saved with the given class names in its metadata."""
    model = build_model("resnet18", CLASSES, seed=2, randomize_batchnorm=True)
    meta = {"architecture": "resnet18", "large_feature_map": True, "class_names": class_names}
    return save_checkpoint(model, path, extra={META_KEY: meta})


@pytest.fixture(scope="module")
def setup(module_tmp) -> dict[str, Path]:
    root = module_tmp("notes")
    data = write_dataset(root / "scenes", {"train": 0, "val": 0, "test": 2}, seed=4, size=64)
    return {
        "data": data,
        "bad": _checkpoint(root / "bad.pth", ["a", "b", "c"]),
        "named": _checkpoint(root / "named.pth", [f"shape{i}" for i in range(CLASSES)]),
        "plain": _checkpoint(root / "plain.pth", None),
    }


def _note(ckpt: Path) -> str:
    return f"note: {ckpt}: {META_KEY} has 3 class names for {CLASSES} classes; ignored (outputs say 'class N')"


def _note_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note:")]


def _evaluate(s: dict[str, Path], model: Path, *extra: object) -> list[object]:
    d = s["data"]
    return ["evaluate", "--model", model, "--metadata", d / "metadata" / "test", "--data-root", d / "images",
            "--cam-interval", "0.01", *extra]  # fmt: skip


def test_the_opened_backend_carries_the_checkpoint_notes(setup):
    """Library callers get the note from ``open_model``'s backend, as from ``load_model``'s model."""
    for backend in ("torch-reference", "torch-analytic"):
        b = open_model(setup["bad"], backend)
        assert b.load_notes == (_note(setup["bad"]).removeprefix("note: "),) and b.spec.class_names is None
    assert open_model(setup["plain"]).load_notes == ()
    named = open_model(setup["named"])
    assert named.load_notes == () and named.spec.class_names == tuple(f"shape{i}" for i in range(CLASSES))


def test_localize_notes_ignored_class_names_once(cli, setup, tmp_path):
    images = setup["data"] / "images" / "test"
    r = cli("localize", images, "--model", setup["bad"], "--out", tmp_path / "bad")
    assert r.code == 0, r.err
    assert _note_lines(r.err) == [_note(setup["bad"])] and r.err == _note(setup["bad"]) + "\n"
    records = json.loads((tmp_path / "bad" / "boxes.json").read_text())["images"]
    assert len(records) == 2 and all(rec["class_name"] == f"class {rec['class_id']}" for rec in records)
    for good in ("plain", "named"):
        r = cli("localize", images, "--model", setup[good], "--out", tmp_path / good)
        assert r.code == 0 and r.err == "", r.err


def test_evaluate_notes_ignored_class_names_once(cli, setup, tmp_path):
    report = tmp_path / "r.json"
    r = cli(*_evaluate(setup, setup["bad"], "--report", report))
    assert r.code == 0, r.err
    assert _note_lines(r.err) == [_note(setup["bad"])]
    assert json.loads(report.read_text())["notes"] == [_note(setup["bad"]).removeprefix("note: ")]
    # the same file as the reference too: still one note
    r = cli(*_evaluate(setup, setup["bad"], "--compare-reference", "--checkpoint", setup["bad"]))
    assert r.code == 0 and _note_lines(r.err) == [_note(setup["bad"])], r.err
    # a sound model with a reference checkpoint whose names are ignored: the reference's note
    r = cli(*_evaluate(setup, setup["plain"], "--compare-reference", "--checkpoint", setup["bad"]))
    assert r.code == 0 and _note_lines(r.err) == [_note(setup["bad"])], r.err
    for good in ("plain", "named"):
        r = cli(*_evaluate(setup, setup[good], "--compare-reference", "--checkpoint", setup[good]))
        assert r.code == 0 and _note_lines(r.err) == [], r.err
