"""A folder given as input may hold an earlier ``localize`` or ``cam`` run's outputs (``--out`` into
the image folder): its overlays are skipped with one ``note:`` line, never localized in turn
(``g16_overlay_overlay.png``), and a rerun into the same folder replaces the earlier run's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.outputs import earlier_run_files
from bagcams_deploy.preprocessing import expand_image_paths

from .test_cli import assert_one_line_error, write_image

SIZE = 64


@pytest.fixture(scope="module")
def graph(models, module_tmp) -> Path:
    """A small fixed-size resnet18 graph: cheap to run, and localize needs a graph or checkpoint."""
    path = module_tmp("earlier") / "g.onnx"
    export_onnx(models["resnet18"], path, method="gradcam", target_layer="layer4", input_size=SIZE)
    return path


def _images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_image(folder / name, seed=i)
    return folder


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_localize_reads_no_earlier_localize_outputs_from_an_input_folder(cli, graph, tmp_path):
    mixed = _images(tmp_path / "mixed2", ["g16.png", "g17.jpg"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    assert {"g16_overlay.png", "g17_overlay.png", "boxes.json"} <= _names(mixed)

    out = tmp_path / "L12"
    r = cli("localize", mixed, "--model", graph, "--out", out)
    assert r.code == 0, r.err
    notes = [line for line in r.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, r.err
    assert "skipped 2 file(s) in" in notes[0] and str(mixed / "boxes.json") in notes[0]
    assert "g16_overlay.png" in notes[0] and "name a file on the command line" in notes[0]
    doc = json.loads((out / "boxes.json").read_text())
    assert [Path(rec["image"]).name for rec in doc["images"]] == ["g16.png", "g17.jpg"]
    assert _names(out) == {"boxes.json", "g16.npy", "g16_overlay.png", "g17.npy", "g17_overlay.png"}


def test_a_rerun_into_the_image_folder_replaces_the_earlier_run(cli, graph, tmp_path):
    mixed = _images(tmp_path / "mixed", ["a.png", "b.png"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    first = _names(mixed)
    r = cli("localize", mixed, "--model", graph, "--out", mixed, "--auto")
    assert r.code == 0, r.err
    assert "note: skipped 2 file(s)" in r.err
    assert _names(mixed) == first  # no a_overlay_overlay.png, nothing lost
    assert json.loads((mixed / "boxes.json").read_text())["threshold"] == "otsu"


def test_cam_reads_no_earlier_outputs_of_localize_or_of_cam(cli, graph, checkpoints, tmp_path):
    mixed = _images(tmp_path / "mixed", ["g16.png"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    r = cli("cam", checkpoints["resnet18"], mixed, "--out", tmp_path / "L13", "--input-size", str(SIZE))
    assert r.code == 0, r.err
    assert "skipped 1 file(s)" in r.err and "boxes.json" in r.err
    assert _names(tmp_path / "L13") == {"g16.npy", "g16_overlay.png"}

    # cam leaves no record: its overlays are known by the map beside them
    camdir = _images(tmp_path / "camdir", ["c.png"])
    assert cli("cam", checkpoints["resnet18"], camdir, "--out", camdir, "--input-size", str(SIZE)).code == 0
    r = cli("cam", checkpoints["resnet18"], camdir, "--out", camdir, "--input-size", str(SIZE))  # a rerun
    assert r.code == 0, r.err
    assert "<stem>_overlay.png beside its <stem>.npy" in r.err and "cam or localize" in r.err
    assert _names(camdir) == {"c.png", "c.npy", "c_overlay.png"}
    r = cli("localize", camdir, "--model", graph, "--out", tmp_path / "L14")
    assert r.code == 0, r.err
    assert _names(tmp_path / "L14") == {"boxes.json", "c.npy", "c_overlay.png"}


def test_a_folder_of_outputs_only_is_refused_with_the_reason(cli, graph, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "out"
    assert cli("localize", imgs, "--model", graph, "--out", out).code == 0
    r = cli("localize", out, "--model", graph, "--out", tmp_path / "again")
    assert_one_line_error(r, f"no image files found in {out}", "earlier localize or cam run's outputs, skipped")


def test_a_file_named_on_the_command_line_is_read(cli, graph, tmp_path):
    mixed = _images(tmp_path / "mixed", ["a.png"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    r = cli("localize", mixed / "a_overlay.png", "--model", graph, "--out", tmp_path / "o")
    assert r.code == 0, r.err
    assert _names(tmp_path / "o") == {"boxes.json", "a_overlay.npy", "a_overlay_overlay.png"}
    # ... but not into the folder whose run wrote it: this run would remove it
    assert_one_line_error(
        cli("localize", mixed / "a_overlay.png", "--model", graph, "--out", mixed), "output of an earlier localize run"
    )


def test_only_recorded_or_paired_overlays_are_skipped(tmp_path):
    folder = _images(tmp_path / "f", ["a.png", "a_overlay.png", "b_overlay.png", "c_overlay.png", "d.png"])
    (folder / "b.npy").write_bytes(b"")  # b_overlay.png beside its map: an output
    # a data set's own boxes.json is no localize record, and a broken one is not an error here
    (folder / "boxes.json").write_text(json.dumps({"images": [{"overlay": "c_overlay.png"}]}))
    assert earlier_run_files(folder, {"a.png", "a_overlay.png", "b_overlay.png", "c_overlay.png"}) == (
        set(),
        {"b_overlay.png"},
    )
    (folder / "boxes.json").write_text("not json")
    notes: list[str] = []
    kept = expand_image_paths([folder], on_note=notes.append)
    assert [p.name for p in kept] == ["a.png", "a_overlay.png", "c_overlay.png", "d.png"] and len(notes) == 1
    record = {"method": "cam", "images": [{"map": "c.npy", "overlay": "c_overlay.png"}], "stale_outputs": ["d.png"]}
    (folder / "boxes.json").write_text(json.dumps(record))
    recorded, paired = earlier_run_files(folder, {"a_overlay.png", "b_overlay.png", "c_overlay.png", "d.png"})
    assert (recorded, paired) == ({"c_overlay.png"}, {"b_overlay.png"})  # d.png: not a name localize writes
    assert expand_image_paths([folder / "b_overlay.png"]) == [folder / "b_overlay.png"]  # named: read
    with pytest.raises(BagcamsError, match="no image files found"):
        expand_image_paths([_images(tmp_path / "empty", [])])
