"""Review fixes to the command line: the hint for a checkpoint given where a graph goes is each command's
own; ``verify`` and ``evaluate`` record the input size they fed; the README and ``--help`` say what the
options do; ``export`` refuses a wrong output name before it reads the checkpoint."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import typer

from bagcams_deploy.cli import app
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.contract import read_graph_info
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.models import build_model, save_checkpoint
from bagcams_deploy.scenes import write_dataset

from .test_cli import assert_one_line_error, write_image

README = Path(__file__).resolve().parent.parent / "README.md"
S = 96
NUM_CLASSES = 10  # the generated scenes' classes
OLD_HINT = "give it as --checkpoint, and as the model"


@pytest.fixture(scope="module")
def setup(module_tmp) -> dict[str, Path]:
    """A small resnet18 checkpoint, the same file named as a graph, its dynamic-size graph, an image and
    three scenes with wsolevaluation metadata."""
    root = module_tmp("review-fixes")
    model = build_model("resnet18", NUM_CLASSES, seed=3, randomize_batchnorm=True)
    ckpt = save_checkpoint(model, root / "m.pth")
    disguised = root / "m.onnx"  # a checkpoint under a graph's name
    shutil.copy(ckpt, disguised)
    dynamic = root / "dyn.onnx"
    export_onnx(model, dynamic, method="gradcam", target_layer="layer3", input_size=64, dynamic_size=True)
    (root / "img").mkdir()
    image = write_image(root / "img" / "a.png")
    data = write_dataset(root / "scenes", {"train": 0, "val": 0, "test": 3}, seed=7, size=80)
    return {"ckpt": ckpt, "disguised": disguised, "dynamic": dynamic, "image": image, "data": data}


def _commands() -> dict:
    return typer.main.get_command(app).commands


def _option(command: str, flag: str):
    return next(p for p in _commands()[command].params if flag in p.opts)


# 1. A checkpoint where a graph goes: the library says what it is, each command how to give it instead


def test_the_library_names_a_checkpoint_in_a_graphs_place_neutrally(setup):
    with pytest.raises(BagcamsError) as caught:
        read_graph_info(setup["ckpt"])
    assert str(caught.value) == f"{setup['ckpt']} is a PyTorch checkpoint, not an ONNX graph"
    assert type(caught.value).__name__ == "CheckpointNotGraphError" and caught.value.path == setup["ckpt"]


def test_verify_and_bench_say_the_graph_goes_first(cli, setup):
    ckpt = setup["ckpt"]
    for command, args in (("verify", ["--checkpoint", ckpt]), ("bench", []), ("bench", ["--checkpoint", ckpt])):
        r = cli(command, ckpt, *args)
        assert_one_line_error(
            r,
            f"{ckpt} is a PyTorch checkpoint, not an ONNX graph: the graph goes first, the checkpoint as "
            f"--checkpoint (bagcams-deploy {command} model.onnx --checkpoint CKPT; "
            "bagcams-deploy export CKPT -o model.onnx writes the graph)",
        )
        assert OLD_HINT not in r.err
        # bench's note on what a run without --checkpoint leaves out comes only after the model is checked
        assert len(r.err.strip().splitlines()) == 1 and "note:" not in r.err, r.err


def test_build_engine_says_export_first(cli, setup, tmp_path):
    r = cli("build-engine", setup["ckpt"], "-o", tmp_path / "m.plan")
    assert_one_line_error(
        r,
        "is a PyTorch checkpoint, not an ONNX graph: export it first (bagcams-deploy export CKPT -o model.onnx) "
        "and build from the .onnx",
    )
    assert "--checkpoint" not in r.err  # build-engine has no such option


def test_localize_and_evaluate_say_how_model_takes_a_checkpoint(cli, setup, tmp_path):
    d = setup["data"]
    evaluate = ["evaluate", "--model", setup["disguised"], "--metadata", d / "metadata" / "test", "--data-root"]
    runs = {
        "localize": cli("localize", setup["image"], "--model", setup["disguised"], "--out", tmp_path / "o"),
        "evaluate": cli(*evaluate, d / "images"),
    }
    for command, r in runs.items():
        assert_one_line_error(
            r,
            f"{setup['disguised']} is a PyTorch checkpoint, not an ONNX graph: a checkpoint is taken as --model "
            "when named .pth, .pt, .tar, .ckpt or .bin, or export it first (bagcams-deploy export CKPT -o "
            "model.onnx)",
        )
        assert "--checkpoint" not in r.err and ".npz" not in r.err, (command, r.err)
    assert not (tmp_path / "o").exists()
    # the hint is right: named .pth, the same file is taken as --model
    r = cli("localize", setup["image"], "--model", setup["ckpt"], "--out", tmp_path / "o2", "--input-size", "64")
    assert r.code == 0, r.err


# 2. The input size fed is in verify's and evaluate's reports and printed summaries


def test_verify_records_the_input_size(cli, setup, tmp_path):
    report = tmp_path / "vr.json"
    r = cli("verify", setup["dynamic"], "--checkpoint", setup["ckpt"], "--input-size", str(S), "--num-random", "1",
            "--seed", "0", "--report", report)  # fmt: skip
    assert r.code == 0, r.err
    assert json.loads(report.read_text())["input_size"] == [S, S]
    assert f"(fp32, {S}x{S} input)" in r.out, r.out


def test_evaluate_records_the_input_size(cli, setup, tmp_path):
    d = setup["data"]
    common = ["evaluate", "--metadata", d / "metadata" / "test", "--data-root", d / "images", "--cam-interval", "0.01"]
    report, maps = tmp_path / "r.json", tmp_path / "maps"
    r = cli(*common, "--model", setup["dynamic"], "--input-size", str(S), "--report", report, "--save-maps", maps)
    assert r.code == 0, r.err
    assert json.loads(report.read_text())["input_size"] == [S, S]
    assert f"3 images, {S}x{S} input, interval" in r.out, r.out
    # precomputed maps were fed nothing this run
    r = cli(*common, "--maps", maps, "--report", tmp_path / "m.json")
    assert r.code == 0, r.err
    assert json.loads((tmp_path / "m.json").read_text())["input_size"] is None
    assert "3 images, interval" in r.out, r.out


def test_the_readme_lists_input_size_in_both_reports():
    text = " ".join(README.read_text().split())
    assert "`evaluate --report r.json`** writes the JSON (`metadata`, `cam_interval`, `input_size` `[h, w]`" in text
    assert "`precision`, `input_size` `[h, w]` (what the graph was fed), `seed`" in text


# 3. README: which commands take -o


def test_the_readme_names_the_commands_whose_output_is_o():
    text = " ".join(README.read_text().split())
    assert "is `-o` in every command:" not in text
    found = re.search(r"`-o` in every command whose main output is one file or folder \(([^)]*)\)", text)
    assert found, "the README sentence on -o"
    named = re.findall(r"`([a-z-]+)`", found.group(1))
    assert named == ["export", "build-engine", "cam", "localize", "demo"]
    for name, command in _commands().items():
        has_o = any("-o" in p.opts for p in command.params)
        assert has_o == (name in named), name


# 4. --help says what the options are for


def test_input_size_and_checkpoint_help_say_who_takes_them():
    for command in ("localize", "evaluate"):
        text = _option(command, "--input-size").help
        assert "only for graphs" not in text and "checkpoint" in text, (command, text)
    text = _option("evaluate", "--checkpoint").help
    assert "--compare-reference" in text and "torch backend" in text, text


# 5. export: a wrong output name is refused before the checkpoint is read


def test_export_refuses_the_output_name_before_reading_the_checkpoint(cli, tmp_path):
    junk = tmp_path / "junk.pth"  # reading it would fail: the name is the first thing said
    junk.write_bytes(b"\x00" * 64)
    r = cli("export", junk, "-o", tmp_path / "out.plan")
    assert_one_line_error(r, "--output", "out.plan: name the graph *.onnx")
    assert "not a PyTorch checkpoint" not in r.err
    # a missing checkpoint is still said first
    assert_one_line_error(cli("export", tmp_path / "none.pth", "-o", tmp_path / "out.plan"), "checkpoint not found")


# 6. Grammar


def test_one_model_only_option_applies(cli, setup, tmp_path):
    d = setup["data"]
    common = ["evaluate", "--maps", tmp_path, "--metadata", d / "metadata" / "test"]
    assert_one_line_error(cli(*common, "--input-size", "96"), "--input-size applies to --model, not to precomputed")
    assert_one_line_error(
        cli(*common, "--input-size", "96", "--method", "cam"), "--method, --input-size apply to --model"
    )
