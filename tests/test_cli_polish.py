"""A new user's rough edges in the CLI: help printed as written (Rich markup ate "[min, max]"), every
option explained, ``-o`` for every output, ``bench`` without a checkpoint, errors that name the options
the command has, ``export`` refusing a name no later command opens, and wording (install hint, grammar,
plurals, a checkpoint given where a graph goes, what the README says of CAM's layer)."""

from __future__ import annotations

import inspect
import json
import sys
import types
from pathlib import Path

import pytest
import typer

from bagcams_deploy.cli import app
from bagcams_deploy.errors import BagcamsError, MissingDependencyError

from .test_cli import assert_one_line_error, write_image

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands() -> dict:
    return typer.main.get_command(app).commands


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def graph(checkpoints, module_tmp) -> Path:
    """A small graph (64x64 ResNet-18 BagCAMs at layer3)."""
    from .conftest import run_cli

    path = module_tmp("polish") / "r18.onnx"
    r = run_cli("export", checkpoints["resnet18"], "-o", path, "--input-size", "64")
    assert r.code == 0, r.err
    return path


@pytest.fixture
def one_image(tmp_path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "a.png")
    return folder


# 1. help printed as written


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_help_string_is_printed_as_written(cli, monkeypatch, name):
    """Help is Rich markup: an unescaped "[min, max]" printed as nothing. Each option's help, its
    default string and the command's docstring must appear in ``--help`` as a reader should see them."""
    monkeypatch.setenv("COLUMNS", "400")  # one row per option: no wrapping inside the table
    r = cli(name, "--help")
    assert r.code == 0, r.err
    shown = _flat(r.out)
    command = _commands()[name]
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        assert _flat(paragraph.replace("\\[", "[")) in shown, (name, paragraph)
    for param in command.params:
        text = getattr(param, "help", None) or ""
        assert _flat(text.replace("\\[", "[")) in shown, (name, param.opts, text)
        if isinstance(getattr(param, "show_default", None), str):
            assert f"[default: ({_flat(param.show_default)})]" in shown, (name, param.opts)


def test_build_engine_shows_the_opt_batch_range(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert "8 within [min, max]" in cli("build-engine", "--help").out


# 2. every option explained, defaults shown as defaults


def test_every_option_and_argument_has_help():
    missing = [
        f"{name} {'/'.join(p.opts)}"
        for name, command in _commands().items()
        for p in command.params
        if not (getattr(p, "help", None) or "").strip()
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("localize", "--threshold", "0.5"),
        ("export", "--opset", "18"),
        ("bench", "--input-size", "224"),
        ("localize", "--method", "bagcams"),
    ],
)
def test_defaults_written_only_in_the_text_are_shown_as_defaults(command, option, default):
    param = next(p for p in _commands()[command].params if option in p.opts)
    assert default in str(param.show_default)
    assert f"({default})" not in param.help


def test_target_layer_help_says_the_layers_depend_on_the_architecture():
    for name in ("cam", "export", "localize", "evaluate"):
        param = next(p for p in _commands()[name].params if "--target-layer" in p.opts)
        assert "architecture" in param.help and "`info`" in param.help, name


def test_bench_backends_help_lists_every_backend():
    from bagcams_deploy.runtime.registry import ALL_BACKENDS

    param = next(p for p in _commands()["bench"].params if "--backends" in p.opts)
    assert all(name in param.help for name in ALL_BACKENDS)


# 3. -o and --out for every output


@pytest.mark.parametrize(
    ("command", "spellings"),
    [
        ("export", ("--output", "-o", "--out")),
        ("build-engine", ("--output", "-o", "--out")),
        ("cam", ("--out", "-o")),
        ("localize", ("--out", "-o")),
        ("demo", ("--out", "-o")),
    ],
)
def test_the_output_takes_both_spellings(command, spellings):
    param = next(p for p in _commands()[command].params if p.name in ("out", "output"))
    assert set(spellings) <= set(param.opts), param.opts
    assert param.opts[0] == spellings[0]  # the documented name stays the one --help shows first


def test_outputs_are_written_with_either_spelling(cli, checkpoints, graph, one_image, tmp_path):
    r = cli("export", checkpoints["resnet18"], "--out", tmp_path / "g.onnx", "--input-size", "64")
    assert r.code == 0, r.err
    assert (tmp_path / "g.onnx").is_file()
    r = cli("cam", checkpoints["resnet18"], one_image, "-o", tmp_path / "c", "--input-size", "64")
    assert r.code == 0, r.err
    assert (tmp_path / "c" / "a.npy").is_file()
    r = cli("localize", one_image, "--model", graph, "-o", tmp_path / "l")
    assert r.code == 0, r.err
    assert (tmp_path / "l" / "boxes.json").is_file()


def test_build_engine_takes_out(cli, graph, tmp_path):
    """--out reaches build-engine's own checks (exit 1), not Typer's "no such option" (exit 2)."""
    assert_one_line_error(cli("build-engine", graph, "--out", tmp_path / "x.txt"), "name the plan")


# 4. bench without a checkpoint


def test_bench_without_a_checkpoint_times_the_graph_and_says_what_it_left_out(cli, graph, tmp_path):
    out = tmp_path / "r.json"
    r = cli("bench", graph, "--batch-sizes", "1", "--warmup", "0", "--iters", "1", "--json", out)
    assert r.code == 0, r.err
    assert "note: benchmarking ort-cpu only: the torch backends and the forward-only floor need --checkpoint" in r.err
    report = json.loads(out.read_text())
    assert report["backends"] == ["ort-cpu"]
    assert "checkpoint" in report["floor"]["skipped"]
    assert [row["backend"] for row in report["rows"]] == ["ort-cpu"]


def test_bench_names_torch_backends_only_with_a_checkpoint(cli, graph):
    r = cli("bench", graph, "--backends", "torch-analytic,ort-cpu")
    assert_one_line_error(r, "torch-analytic runs the PyTorch model", "--checkpoint", "--backends ort-cpu")


def test_default_bench_backends_follow_the_checkpoint_and_the_model_kind():
    from bagcams_deploy.bench import default_backends

    assert default_backends("g.onnx", "c.pth") == ["torch-reference", "torch-analytic", "ort-cpu"]
    assert default_backends("g.onnx", None) == ["ort-cpu"]
    assert default_backends("g.plan", None) == ["tensorrt"]
    assert default_backends("g.engine", "c.pth") == ["torch-reference", "torch-analytic", "tensorrt"]


# 5. a torch backend on a graph: the message names what the command takes


def test_localize_says_to_pass_the_checkpoint_as_model(cli, graph, one_image, tmp_path):
    r = cli("localize", one_image, "--model", graph, "--out", tmp_path / "o", "--backend", "torch-analytic")
    assert_one_line_error(r, "backend torch-analytic runs the PyTorch model", "as --model")
    assert "--checkpoint" not in r.err  # localize has no such option


def test_evaluate_says_checkpoint(cli, graph, tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    write_image(tmp_path / "a.png")
    for name, line in (("image_ids.txt", "a.png"), ("class_labels.txt", "a.png,0"),
                       ("image_sizes.txt", "a.png,80,64"), ("localization.txt", "a.png,1,1,20,20")):  # fmt: skip
        (meta / name).write_text(line + "\n")
    r = cli("evaluate", "--model", graph, "--metadata", meta, "--data-root", tmp_path, "--backend", "torch-analytic")
    assert_one_line_error(r, "backend torch-analytic runs the PyTorch model", "--checkpoint CKPT")


def test_a_torch_backend_on_a_plan_runs_the_checkpoint_too(checkpoints, graph, tmp_path, monkeypatch):
    """A plan with a torch backend and its checkpoint is the checkpoint's model, as for a graph (the
    checkpoint used to be dropped on the way, and the error asked for it)."""
    from bagcams_deploy.runtime import open as opener

    plan = tmp_path / "g.plan"
    plan.write_bytes(b"")
    monkeypatch.setattr(opener, "read_model_info", lambda path: opener.read_graph_info(graph))
    seen = {}
    monkeypatch.setattr(opener, "create_backend", lambda name, **kw: seen.update(kw) or "backend")
    assert opener.open_model(plan, "torch-analytic", checkpoints["resnet18"]) == "backend"
    assert seen["model"] is not None and seen["model"].architecture == "resnet18"


# 6. export writes *.onnx only


def test_export_refuses_a_name_no_command_opens(cli, checkpoints, tmp_path):
    out = tmp_path / "g" / "x.txt"
    assert_one_line_error(cli("export", checkpoints["resnet18"], "-o", out), "--output", "x.txt", "*.onnx")
    assert not out.exists()


def test_export_onnx_refuses_another_suffix(models, tmp_path):
    from bagcams_deploy.export.onnx_export import export_onnx

    with pytest.raises(BagcamsError, match=r"name the graph \*\.onnx"):
        export_onnx(models["resnet18"], tmp_path / "g.plan", input_size=64)
    assert not (tmp_path / "g.plan").exists()


# 7. wording


def test_openvino_hint_is_the_extra_everywhere(graph, monkeypatch):
    from bagcams_deploy import cpp_support
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    for make in (lambda: OpenVINOBackend(str(graph)), cpp_support.openvino_cmake_dir, cpp_support.openvino_lib_dir):
        with pytest.raises(MissingDependencyError) as info:
            make()
        assert "pip install 'bagcams-deploy[openvino]'" in str(info.value)


def test_tensorrt_messages_are_grammatical(monkeypatch):
    from bagcams_deploy.runtime.tensorrt_build import current_system

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as info:
        current_system()
    assert str(info.value).startswith("a TensorRT engine needs 'tensorrt'"), info.value

    class Error(Exception):
        pass

    no_gpu = types.SimpleNamespace(Error=Error, init=lambda: None, Device=types.SimpleNamespace(count=lambda: 0))
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.1.0"))
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=no_gpu))
    monkeypatch.setitem(sys.modules, "pycuda.driver", no_gpu)
    with pytest.raises(BagcamsError, match=r"^TensorRT needs a CUDA GPU; none is visible$"):
        current_system()


def test_one_image_is_one_overlay(cli, checkpoints, graph, one_image, tmp_path):
    r = cli("cam", checkpoints["resnet18"], one_image, "--out", tmp_path / "c", "--input-size", "64")
    assert f"wrote 1 overlay and 1 map to {tmp_path / 'c'}" in r.out, r.out
    r = cli("localize", one_image, "--model", graph, "--out", tmp_path / "l")
    assert "wrote 1 overlay and 1 map, and" in r.out, r.out
    write_image(one_image / "b.png", seed=1)
    r = cli("localize", one_image, "--model", graph, "--out", tmp_path / "l2")
    assert "wrote 2 overlays and 2 maps, and" in r.out, r.out


def test_a_checkpoint_given_as_the_graph_is_named(cli, checkpoints, tmp_path):
    r = cli("verify", checkpoints["resnet18"], "--checkpoint", checkpoints["resnet18"])
    assert_one_line_error(r, "is a PyTorch checkpoint, not an ONNX graph", "the checkpoint as --checkpoint")
    assert "Wire format" not in r.err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    r = cli("verify", junk, "--checkpoint", checkpoints["resnet18"])
    assert_one_line_error(r, "is not an ONNX model (it does not parse as one)")
    assert "PyTorch checkpoint" not in r.err


# 8. README: CAM with --target-layer


def test_readme_says_which_cam_target_layer_is_refused(cli, checkpoints, tmp_path):
    text = _flat(README.read_text())
    assert "`--target-layer` with `--method cam` is refused" not in text
    assert "`--target-layer` with `--method cam` may name that layer; any other is refused" in text
    ok = cli("export", checkpoints["resnet18"], "-o", tmp_path / "cam.onnx", "--input-size", "64",
             "--method", "cam", "--target-layer", "layer4")  # fmt: skip
    assert ok.code == 0, ok.err
    refused = cli("export", checkpoints["resnet18"], "-o", tmp_path / "c3.onnx", "--method", "cam",
                  "--target-layer", "layer3")  # fmt: skip
    assert_one_line_error(refused, "method cam maps the classifier's input (layer4)")
