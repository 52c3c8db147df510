"""A run record is the whole truth about a folder's files: a run cut off between an image's map and
its overlay still records the map (the rerun takes it back instead of refusing its own file), a
listed output that is a symlink is replaced as a link (never written through to a file outside the
folder), and stale files the record cannot remove (a folder in their place) are a note, not a failed
run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .test_cli import write_image

SIZE = 64


@pytest.fixture(scope="module")
def ckpt(checkpoints) -> Path:
    return checkpoints["resnet18"]


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_image(folder / name, seed=i)
    return folder


def _cam(cli, ckpt, *args):
    return cli("cam", ckpt, *args, "--input-size", str(SIZE), "--batch-size", "1")


@pytest.mark.parametrize("command", ["cam", "localize"])
def test_a_map_written_just_before_an_interruption_is_recorded_and_the_rerun_takes_it(
    command, cli, ckpt, tmp_path, monkeypatch
):
    import bagcams_deploy.visualize as visualize

    imgs = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    out = tmp_path / "out"
    real, calls = visualize.save_png, []

    def interrupted_third(path, image):
        calls.append(path)
        if len(calls) == 3:  # c.npy is on disk, its overlay is not
            raise KeyboardInterrupt
        return real(path, image)

    target = "bagcams_deploy.localize.save_png" if command == "localize" else "bagcams_deploy.visualize.save_png"
    monkeypatch.setattr(target, interrupted_third)
    args = ("--input-size", str(SIZE)) if command == "cam" else ("--batch-size", "1")
    run = (lambda: _cam(cli, ckpt, imgs, "--out", out)) if command == "cam" else (
        lambda: cli("localize", imgs, "--model", ckpt, "--out", out, *args))  # fmt: skip
    assert run().code == 130
    record = out / ("cam.json" if command == "cam" else "boxes.json")
    doc = json.loads(record.read_text())
    assert doc["complete"] is False and (out / "c.npy").is_file()
    assert "c.npy" in doc["stale_outputs"]
    monkeypatch.setattr(target, real)
    r = run()
    assert r.code == 0, r.err
    doc = json.loads(record.read_text())
    assert doc["complete"] is True and [Path(i["image"]).name for i in doc["images"]] == ["a.png", "b.png", "c.png"]


def test_a_listed_output_that_is_a_symlink_is_replaced_not_written_through(cli, ckpt, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "out"
    assert _cam(cli, ckpt, imgs, "--out", out).code == 0
    victim = tmp_path / "victim.npy"
    np.save(victim, np.arange(3.0))
    (out / "a.npy").unlink()
    (out / "a.npy").symlink_to(victim)
    r = _cam(cli, ckpt, imgs, "--out", out)
    assert r.code == 0, r.err
    np.testing.assert_array_equal(np.load(victim), np.arange(3.0))
    assert not (out / "a.npy").is_symlink() and np.load(out / "a.npy").shape == (SIZE, SIZE)


def test_a_stale_file_that_cannot_be_removed_is_a_note_not_a_failed_run(cli, ckpt, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert _cam(cli, ckpt, imgs, "--out", out).code == 0
    (out / "b.npy").unlink()
    (out / "b.npy").mkdir()  # something the record names, which is no longer a file of ours
    r = _cam(cli, ckpt, imgs / "a.png", "--out", out)
    assert r.code == 0, r.err
    assert f"note: left {out / 'b.npy'} (not a file), which the earlier run listed" in r.err
    assert not (out / "b_overlay.png").exists() and (out / "b.npy").is_dir()
    assert [Path(i["image"]).name for i in json.loads((out / "cam.json").read_text())["images"]] == ["a.png"]


def test_boxes_json_names_its_command_and_older_records_still_count(cli, ckpt, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "out"
    assert cli("localize", imgs, "--model", ckpt, "--out", out).code == 0
    doc = json.loads((out / "boxes.json").read_text())
    assert doc["command"] == "localize"
    del doc["command"]  # as written before the field existed
    (out / "boxes.json").write_text(json.dumps(doc))
    assert cli("localize", imgs, "--model", ckpt, "--out", out).code == 0  # still its own record
    (out / "boxes.json").write_text(json.dumps({**doc, "command": "cam"}))
    r = cli("localize", imgs, "--model", ckpt, "--out", out)
    assert r.code == 1 and "was not written by localize" in r.err


def test_library_localize_notes_only_once_its_checks_pass(ckpt, tmp_path):
    """The skip note of a folder holding an earlier run comes after the checks, as on the command
    line: a refused call is its error alone."""
    from bagcams_deploy.errors import BagcamsError
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime.open import open_model

    imgs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    backend = open_model(ckpt, "torch-analytic", None, "gradcam", None, None)
    with backend:
        localize_images(backend, imgs, imgs, input_size=SIZE)  # an earlier run, into the image folder
        notes: list[str] = []
        with pytest.raises(BagcamsError, match="threshold must be a number"):
            localize_images(backend, imgs, tmp_path / "o", threshold=2.0, on_note=notes.append)
        assert notes == []
        localize_images(backend, imgs, tmp_path / "o", input_size=SIZE, on_note=notes.append)
    assert len(notes) == 1 and "skipped 2 files an earlier localize run listed" in notes[0]
