"""A folder given as input may hold an earlier ``localize`` or ``cam`` run's outputs (``--out`` into
the image folder): the overlays its record (``boxes.json``, ``cam.json``) lists are skipped with one
``note:`` line, never localized in turn (``g16_overlay_overlay.png``), and a rerun into the same folder
replaces the earlier run's files. Files no record of the command lists are never overwritten: the
user's own ``x_overlay.png`` and ``x.npy``, and another command's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.outputs import earlier_run_files, read_run_record
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
    assert f"skipped 2 files an earlier localize run listed in {mixed / 'boxes.json'}" in notes[0]
    assert "(first: g16_overlay.png)" in notes[0] and "name a file on the command line" in notes[0]
    doc = json.loads((out / "boxes.json").read_text())
    assert [Path(rec["image"]).name for rec in doc["images"]] == ["g16.png", "g17.jpg"]
    assert _names(out) == {"boxes.json", "g16.npy", "g16_overlay.png", "g17.npy", "g17_overlay.png"}


def test_a_rerun_into_the_image_folder_replaces_the_earlier_run(cli, graph, tmp_path):
    mixed = _images(tmp_path / "mixed", ["a.png", "b.png"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    first = _names(mixed)
    r = cli("localize", mixed, "--model", graph, "--out", mixed, "--auto")
    assert r.code == 0, r.err
    assert "note: skipped 2 files an earlier localize run" in r.err
    assert _names(mixed) == first  # no a_overlay_overlay.png, nothing lost
    assert json.loads((mixed / "boxes.json").read_text())["threshold"] == "otsu"


def test_cam_reads_no_earlier_outputs_of_localize_or_of_cam(cli, graph, checkpoints, tmp_path):
    mixed = _images(tmp_path / "mixed", ["g16.png"])
    assert cli("localize", mixed, "--model", graph, "--out", mixed).code == 0
    r = cli("cam", checkpoints["resnet18"], mixed, "--out", tmp_path / "L13", "--input-size", str(SIZE))
    assert r.code == 0, r.err
    assert "skipped 1 file an earlier localize run" in r.err and "boxes.json" in r.err
    assert _names(tmp_path / "L13") == {"cam.json", "g16.npy", "g16_overlay.png"}

    # cam's own record, cam.json, lists its overlays
    camdir = _images(tmp_path / "camdir", ["c.png"])
    assert cli("cam", checkpoints["resnet18"], camdir, "--out", camdir, "--input-size", str(SIZE)).code == 0
    r = cli("cam", checkpoints["resnet18"], camdir, "--out", camdir, "--input-size", str(SIZE))  # a rerun
    assert r.code == 0, r.err
    assert f"note: skipped 1 file an earlier cam run listed in {camdir / 'cam.json'} (first: c_overlay.png)" in r.err
    assert _names(camdir) == {"c.png", "c.npy", "c_overlay.png", "cam.json"}
    r = cli("localize", camdir, "--model", graph, "--out", tmp_path / "L14")
    assert r.code == 0, r.err
    assert "cam.json" in r.err and "name a file on the command line, with another --out" in r.err
    assert _names(tmp_path / "L14") == {"boxes.json", "c.npy", "c_overlay.png"}


def test_a_folder_of_outputs_only_is_refused_with_the_reason(cli, graph, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    out = tmp_path / "out"
    assert cli("localize", imgs, "--model", graph, "--out", out).code == 0
    r = cli("localize", out, "--model", graph, "--out", tmp_path / "again")
    assert_one_line_error(r, f"no image files found in {out}", "outputs an earlier localize run listed")


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


def test_only_overlays_a_record_lists_are_skipped(tmp_path):
    folder = _images(tmp_path / "f", ["a.png", "a_overlay.png", "b_overlay.png", "c_overlay.png", "d.png"])
    (folder / "b.npy").write_bytes(b"")  # b_overlay.png beside a map, but no record lists it: an image
    # a data set's own boxes.json is no localize record, and a broken one is not an error here
    (folder / "boxes.json").write_text(json.dumps({"images": [{"overlay": "c_overlay.png"}]}))
    assert earlier_run_files(folder, {"a.png", "a_overlay.png", "b_overlay.png", "c_overlay.png"}) == {}
    (folder / "boxes.json").write_text("not json")
    notes: list[str] = []
    kept = expand_image_paths([folder], on_note=notes.append)
    assert [p.name for p in kept] == ["a.png", "a_overlay.png", "b_overlay.png", "c_overlay.png", "d.png"]
    assert notes == []
    record = {"method": "cam", "images": [{"map": "c.npy", "overlay": "c_overlay.png"}], "stale_outputs": ["d.png"]}
    (folder / "boxes.json").write_text(json.dumps(record))
    cam_record = {"command": "cam", "images": [{"image": "x/a.png", "map": "a.npy", "overlay": "a_overlay.png"}]}
    (folder / "cam.json").write_text(json.dumps(cam_record))
    found = earlier_run_files(folder, {"a_overlay.png", "b_overlay.png", "c_overlay.png", "d.png"})
    assert found == {"localize": {"c_overlay.png"}, "cam": {"a_overlay.png"}}  # d.png: not a name either writes
    kept = expand_image_paths([folder], on_note=notes.append)
    assert [p.name for p in kept] == ["a.png", "b_overlay.png", "d.png"] and len(notes) == 2
    assert "an earlier localize run listed in" in notes[0] and "an earlier cam run listed in" in notes[1]
    assert expand_image_paths([folder / "c_overlay.png"]) == [folder / "c_overlay.png"]  # named: read
    (folder / "cam.json").write_text(json.dumps({**cam_record, "command": "other"}))  # not cam's: no record
    assert earlier_run_files(folder, {"a_overlay.png"}) == {}
    with pytest.raises(BagcamsError, match="no image files found"):
        expand_image_paths([_images(tmp_path / "empty", [])])


# --- only a record of the command itself lets a run overwrite a file -------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _run(cli, command: str, graph: Path, checkpoints, inputs, out: Path, *extra):
    if command == "localize":
        return cli("localize", *inputs, "--model", graph, "--out", out, *extra)
    return cli("cam", checkpoints["resnet18"], *inputs, "--out", out, "--input-size", str(SIZE), *extra)


@pytest.mark.parametrize("command", ["localize", "cam"])
def test_the_users_own_photo_named_like_an_overlay_is_never_overwritten(cli, graph, checkpoints, tmp_path, command):
    own = _images(tmp_path / "own3", ["x.png", "x_overlay.png"])  # the user's photo, named like an overlay
    (own / "x.npy").write_bytes(b"the user's own array")
    before = _snapshot(own)
    r = _run(cli, command, graph, checkpoints, [own], own)
    assert_one_line_error(r, f"{own / 'x_overlay.png'} would be overwritten by an output of this run")
    assert "note:" not in r.err  # no note claiming an earlier run wrote the photo
    assert _snapshot(own) == before


@pytest.mark.parametrize("command", ["localize", "cam"])
def test_a_file_no_record_lists_is_never_overwritten(cli, graph, checkpoints, tmp_path, command):
    own = _images(tmp_path / "own", ["x.png"])
    (own / "x.npy").write_bytes(b"the user's own array")
    before = _snapshot(own)
    r = _run(cli, command, graph, checkpoints, [own], own)
    record = "boxes.json" if command == "localize" else "cam.json"
    assert_one_line_error(r, f"{own / 'x.npy'} exists and no earlier {command} run's {record}", "use another --out")
    assert _snapshot(own) == before


def test_cam_into_a_localize_folder_is_refused(cli, graph, checkpoints, tmp_path):
    lc = _images(tmp_path / "lc", ["a.png"])
    assert cli("localize", lc, "--model", graph, "--out", lc).code == 0
    before = _snapshot(lc)
    r = _run(cli, "cam", graph, checkpoints, [lc], lc)
    assert_one_line_error(
        r, f"{lc} holds a localize run (boxes.json) whose files this cam run would overwrite (first: a.npy)",
        "use another --out",
    )  # fmt: skip
    assert _snapshot(lc) == before  # boxes.json still describes the files beside it


def test_localize_into_a_cam_folder_is_refused(cli, graph, checkpoints, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png"])
    cams = tmp_path / "cams"
    assert _run(cli, "cam", graph, checkpoints, [imgs], cams).code == 0
    before = _snapshot(cams)
    r = _run(cli, "localize", graph, checkpoints, [imgs], cams)
    assert_one_line_error(
        r, f"{cams} holds a cam run (cam.json) whose files this localize run would overwrite (first: a.npy)"
    )
    assert _snapshot(cams) == before
    # the image folder itself
    assert _run(cli, "cam", graph, checkpoints, [imgs], imgs).code == 0
    before = _snapshot(imgs)
    assert_one_line_error(_run(cli, "localize", graph, checkpoints, [imgs], imgs), "holds a cam run (cam.json)")
    assert _snapshot(imgs) == before


def test_a_cam_rerun_into_its_own_folder_replaces_the_earlier_run(cli, graph, checkpoints, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    assert _run(cli, "cam", graph, checkpoints, [imgs], imgs).code == 0
    first = _snapshot(imgs)
    doc = json.loads(first["cam.json"])
    assert doc["command"] == "cam" and doc["complete"] and doc["method"] == "bagcams"
    assert doc["target_layer"] == "layer3" and doc["input_size"] == [SIZE, SIZE]
    assert [(Path(r["image"]).name, r["map"], r["overlay"]) for r in doc["images"]] == [
        ("a.png", "a.npy", "a_overlay.png"),
        ("b.png", "b.npy", "b_overlay.png"),
    ]
    r = _run(cli, "cam", graph, checkpoints, [imgs], imgs)
    assert r.code == 0, r.err
    assert "note: skipped 2 files an earlier cam run" in r.err
    assert _snapshot(imgs) == first  # idempotent: no a_overlay_overlay.png, the same maps and record
    # the folder holds one run: b's files, which this run does not rewrite, go once it succeeds
    r = _run(cli, "cam", graph, checkpoints, [imgs / "a.png"], imgs)
    assert r.code == 0, r.err
    assert _names(imgs) == {"a.png", "b.png", "a.npy", "a_overlay.png", "cam.json"}
    assert [rec["map"] for rec in json.loads((imgs / "cam.json").read_text())["images"]] == ["a.npy"]
    assert read_run_record(imgs, "cam") == {"a.npy", "a_overlay.png"}


def test_an_interrupted_cam_run_keeps_track_of_every_file(cli, graph, checkpoints, tmp_path):
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    out = tmp_path / "out"
    assert _run(cli, "cam", graph, checkpoints, [imgs / "a.png"], out).code == 0  # the earlier run
    (imgs / "z.png").write_bytes((imgs / "b.png").read_bytes()[:120])  # a sound header: fails when decoded
    r = _run(cli, "cam", graph, checkpoints, [imgs / "b.png", imgs / "z.png"], out, "--batch-size", "1")
    assert_one_line_error(r, "z.png")
    doc = json.loads((out / "cam.json").read_text())
    assert not doc["complete"] and [rec["map"] for rec in doc["images"]] == ["b.npy"]
    assert set(doc["stale_outputs"]) == {"a.npy", "a_overlay.png"} and (out / "a.npy").exists()
    assert _run(cli, "cam", graph, checkpoints, [imgs / "a.png"], out).code == 0  # removes both runs' files
    assert _names(out) == {"a.npy", "a_overlay.png", "cam.json"}


def _deep(path: Path) -> None:
    path.write_text("[" * 200_000 + "]" * 200_000)


def test_a_deep_or_broken_record_is_no_record_and_never_a_traceback(cli, graph, checkpoints, tmp_path):
    folder = _images(tmp_path / "f", ["a.png"])
    _deep(folder / "boxes.json")
    _deep(folder / "cam.json")
    for command in ("localize", "cam"):
        out = tmp_path / f"out_{command}"
        r = _run(cli, command, graph, checkpoints, [folder], out)
        assert r.code == 0 and "Traceback" not in r.err + r.out, r.err
        assert {"a.npy", "a_overlay.png"} <= _names(out)
        # as --out it is refused, as a foreign boxes.json is
        record = "boxes.json" if command == "localize" else "cam.json"
        r = _run(cli, command, graph, checkpoints, [folder / "a.png"], folder)
        assert_one_line_error(r, f"{folder / record} was not written by {command}")
    with pytest.raises(ValueError):
        read_run_record(folder, "cam")
    assert earlier_run_files(folder, {"a_overlay.png"}) == {}


def test_localize_images_tells_a_library_caller_what_a_folder_skipped(graph, tmp_path):
    from bagcams_deploy.localize import localize_images
    from bagcams_deploy.runtime import create_backend

    imgs = _images(tmp_path / "imgs", ["a.png"])
    notes: list[str] = []
    with create_backend("ort-cpu", graph=graph) as b:
        localize_images(b, imgs, imgs)
        records = localize_images(b, imgs, tmp_path / "o", on_note=notes.append)
        assert localize_images(b, imgs, tmp_path / "o2")  # no callback: silent, as before
    assert [Path(r["image"]).name for r in records] == ["a.png"]
    assert len(notes) == 1 and f"skipped 1 file an earlier localize run listed in {imgs / 'boxes.json'}" in notes[0]
