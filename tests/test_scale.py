"""Long runs at data-set scale: progress off a terminal, interruption by SIGTERM, work done once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bagcams_deploy.progress import progress_bar, progress_line


def _run_python(script: str, timeout: float = 120):
    """``script`` in a fresh interpreter that imports this checkout's package (signals and kills must
    not reach pytest itself)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=timeout)


def completed_localize_run(cli, checkpoints, tmp_path) -> tuple[tuple, object, bytes]:
    """A finished localize run over two scenes: its arguments, its folder and its boxes.json bytes."""
    from bagcams_deploy.scenes import write_dataset

    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 2}, seed=1, size=64)
    out = tmp_path / "out"
    args = ("localize", data / "images" / "test", "--model", checkpoints["resnet18"], "--out", out,
            "--input-size", "64")  # fmt: skip
    assert cli(*args).code == 0
    return args, out, (out / "boxes.json").read_bytes()


def test_progress_off_a_terminal_prints_a_line_per_interval_with_rate_and_time_left(capsys):
    ticks = itertools.count(0.0, 10.0)  # every call of the clock is 10 s later
    with progress_bar(100, "localizing", interval=25.0, clock=lambda: next(ticks)) as advance:
        for _ in range(10):
            advance(10)
    lines = capsys.readouterr().err.splitlines()
    # a line at most every 25 s (clock calls at 10, 20, ... 100 s): at 30, 60 and 90 s
    assert lines == [
        "localizing: 30/100 (30.0%), 1.0 img/s, 1m10s left",
        "localizing: 60/100 (60.0%), 1.0 img/s, 40s left",
        "localizing: 90/100 (90.0%), 1.0 img/s, 10s left",
    ]


def test_progress_off_a_terminal_is_silent_for_a_run_shorter_than_the_interval(capsys):
    with progress_bar(1000, "evaluating") as advance:
        advance(1000)
    assert capsys.readouterr().err == ""


def test_progress_line_formats_large_counts_and_hours():
    assert progress_line("evaluating", 1200, 50000, 60.0) == "evaluating: 1,200/50,000 (2.4%), 20.0 img/s, 40m40s left"
    assert progress_line("x", 10, 50000, 100.0).endswith("0.1 img/s, 138h51m left")
    assert progress_line("x", 5, 5, 1.0) == "x: 5/5 (100.0%), 5.0 img/s"


def test_localize_and_evaluate_off_a_terminal_report_progress(cli, checkpoints, tmp_path, monkeypatch):
    """A run whose stderr is a log file (here: captured) still says how far it is: every interval."""
    import numpy as np

    from bagcams_deploy.scenes import write_dataset

    monkeypatch.setattr("bagcams_deploy.progress.LOG_INTERVAL", 0.0)  # a line per batch
    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 3}, seed=1, size=64)
    r = cli("localize", data / "images" / "test", "--model", checkpoints["resnet18"], "--out", tmp_path / "out",
            "--input-size", "64", "--batch-size", "2")  # fmt: skip
    assert r.code == 0, r.err
    assert [ln.split(",")[0] for ln in r.err.splitlines() if ln.startswith("localizing:")] == [
        "localizing: 2/3 (66.7%)",
        "localizing: 3/3 (100.0%)",
    ]
    maps = tmp_path / "maps"
    for image_id in (data / "metadata" / "test" / "image_ids.txt").read_text().split():
        (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
        np.save(maps / f"{image_id}.npy", np.random.default_rng(0).random((224, 224), dtype=np.float32))
    r = cli("evaluate", "--maps", maps, "--metadata", data / "metadata" / "test", "--cam-interval", "0.01")
    assert r.code == 0, r.err
    assert sum(ln.startswith("evaluating: ") for ln in r.err.splitlines()) == 3


def test_sigterm_ends_a_command_as_ctrl_c_does_so_its_finally_blocks_write_the_record(tmp_path):
    """``kill``, ``timeout`` and batch systems send SIGTERM, whose default ends Python at once: a
    localize run left its maps without boxes.json, and the rerun refused them as the user's files."""
    marker = tmp_path / "finally-ran"
    script = f"""
import os, signal, sys
from bagcams_deploy import cli

def command():
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pthread_kill(signal.pthread_self(), 0)  # let the handler run
        for _ in range(10**7):
            pass
    finally:
        open({str(marker)!r}, "w").write("record written")
        os.kill(os.getpid(), signal.SIGTERM)  # a second one does not cut the finally short
        open({str(marker)!r}, "a").write(", twice")

cli.app = command
cli.main()
"""
    r = _run_python(script)
    assert r.returncode == 143, (r.returncode, r.stderr)
    assert r.stderr.strip() == "terminated"
    assert marker.read_text() == "record written, twice"


def test_ctrl_c_says_interrupted_and_exits_130_after_the_finally_blocks(tmp_path):
    """Typer turns a KeyboardInterrupt into a silent exit 130 before main() sees it, so Ctrl-C printed
    nothing where SIGTERM prints 'terminated'; a second Ctrl-C is Python's own KeyboardInterrupt again."""
    marker = tmp_path / "finally-ran"
    script = f"""
import os, signal
import typer
from bagcams_deploy import cli

app = typer.Typer()

@app.command()
def command():
    try:
        os.kill(os.getpid(), signal.SIGINT)
        signal.pthread_kill(signal.pthread_self(), 0)  # let the handler run
        for _ in range(10**7):
            pass
    finally:
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        open({str(marker)!r}, "w").write("record written")

cli.app = app  # a real Typer app: Typer is what swallowed the KeyboardInterrupt
cli.main()
"""
    r = _run_python(script)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip() == "interrupted"
    assert marker.read_text() == "record written"


def test_localize_stopped_by_sigterm_leaves_a_record_the_rerun_takes_back(cli, checkpoints, tmp_path, monkeypatch):
    import json
    import os
    import signal

    from bagcams_deploy.scenes import write_dataset

    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 4}, seed=1, size=64)
    out = tmp_path / "out"
    real, calls = np.save, []

    def terminated_on_the_third_map(path, array, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            # without a handler SIGTERM would end pytest itself: fail instead
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, "SIGTERM ends the run without a record"
            os.kill(os.getpid(), signal.SIGTERM)
        return real(path, array, *a, **k)

    monkeypatch.setattr("bagcams_deploy.localize.np.save", terminated_on_the_third_map)
    args = ("localize", data / "images" / "test", "--model", checkpoints["resnet18"], "--out", out,
            "--input-size", "64", "--batch-size", "1")  # fmt: skip
    r = cli(*args)
    assert r.code == 143 and r.err.strip().endswith("terminated"), r.err
    doc = json.loads((out / "boxes.json").read_text())
    assert doc["complete"] is False and len(doc["images"]) >= 2
    monkeypatch.setattr("bagcams_deploy.localize.np.save", real)
    r = cli(*args)
    assert r.code == 0, r.err
    assert json.loads((out / "boxes.json").read_text())["complete"] is True


@pytest.mark.parametrize("missing", ["image", "mask", "map"])
def test_evaluate_refuses_a_missing_file_late_in_the_split_before_scoring_any_image(
    missing, cli, checkpoints, tmp_path, monkeypatch
):
    """The last image's file missing used to stop the run there, after scoring every image before it
    (an hour into ImageNet val): the README promises such mistakes are refused before any long run."""
    from bagcams_deploy.evaluation.runner import Scorer
    from bagcams_deploy.scenes import write_dataset

    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 3}, seed=1, size=64)
    meta = data / "metadata" / "test"
    last = (meta / "image_ids.txt").read_text().split()[-1]
    maps = tmp_path / "maps"
    if missing == "map":
        for image_id in (meta / "image_ids.txt").read_text().split()[:-1]:
            (maps / image_id).parent.mkdir(parents=True, exist_ok=True)
            np.save(maps / f"{image_id}.npy", np.random.default_rng(0).random((224, 224), dtype=np.float32))
        source = ["--maps", maps]
    else:
        (data / ("images" if missing == "image" else "masks") / last).unlink()
        source = ["--model", checkpoints["resnet18"], "--input-size", "64", "--data-root", data / "images"]
    scored = []
    real = Scorer.add
    monkeypatch.setattr(Scorer, "add", lambda self, *a: (scored.append(a[0]), real(self, *a)))
    r = cli("evaluate", *source, "--metadata", meta, "--mask-metadata", data / "metadata_masks" / "test",
            "--mask-root", data / "masks", "--cam-interval", "0.01", "--batch-size", "1")  # fmt: skip
    assert r.code == 1 and r.err.startswith("error: ") and last in r.err, r.err
    assert scored == []


@pytest.mark.parametrize("command", ["localize", "cam"])
def test_a_run_killed_outright_leaves_a_record_listing_its_files_and_the_rerun_takes_them(
    command, cli, checkpoints, tmp_path
):
    """SIGKILL (the out-of-memory killer, a lost node) runs no ``finally``: a long localize or cam run
    so ended left thousands of files without a record, and the rerun refused them as the user's."""
    import json

    from bagcams_deploy.scenes import write_dataset

    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 4}, seed=1, size=64)
    out = tmp_path / "out"
    ckpt = checkpoints["resnet18"]
    if command == "localize":
        args = ["localize", data / "images" / "test", "--model", ckpt, "--out", out, "--input-size", "64"]
        target = "bagcams_deploy.localize"
    else:
        args = ["cam", ckpt, data / "images" / "test", "--out", out, "--input-size", "64"]
        target = "bagcams_deploy.visualize"
    args = [str(a) for a in [*args, "--batch-size", "1"]]
    script = f"""
import os, signal, sys, importlib
from bagcams_deploy import cli
module = importlib.import_module({target!r})
real, calls = module.save_png, []

def killed_on_the_third_overlay(path, image):
    calls.append(path)
    if len(calls) == 3:  # c's map is on disk, its overlay is not, and no finally will run
        os.kill(os.getpid(), signal.SIGKILL)
    return real(path, image)

module.save_png = killed_on_the_third_overlay
sys.argv = ["bagcams-deploy", *{args!r}]
cli.main()
"""
    r = _run_python(script, timeout=300)
    assert r.returncode == -9, (r.returncode, r.stderr)
    record = out / ("boxes.json" if command == "localize" else "cam.json")
    doc = json.loads(record.read_text())  # the checkpoint written before the first file
    assert doc["complete"] is False
    assert len(list(out.glob("*.npy"))) == 3 and len(list(out.glob("*_overlay.png"))) == 2
    r = cli(*args)
    assert r.code == 0, r.err
    assert json.loads(record.read_text())["complete"] is True


def test_the_record_is_written_before_the_first_file_and_at_the_end_not_per_batch(
    cli, checkpoints, tmp_path, monkeypatch
):
    import bagcams_deploy.outputs as outputs
    from bagcams_deploy.scenes import write_dataset

    data = write_dataset(tmp_path / "scenes", {"train": 0, "val": 0, "test": 6}, seed=1, size=64)
    real, writes = outputs.write_atomically, []
    monkeypatch.setattr(outputs, "write_atomically", lambda path: (writes.append(path.name), real(path))[1])
    r = cli("localize", data / "images" / "test", "--model", checkpoints["resnet18"], "--out", tmp_path / "out",
            "--input-size", "64", "--batch-size", "1")  # fmt: skip
    assert r.code == 0, r.err
    assert writes == ["boxes.json", "boxes.json"]  # 6 batches: a checkpoint before the first, and the record


def test_a_run_that_fails_before_writing_a_file_leaves_the_earlier_record_as_it_was(
    cli, checkpoints, tmp_path, monkeypatch
):
    args, out, before = completed_localize_run(cli, checkpoints, tmp_path)

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("bagcams_deploy.localize.np.save", full_disk)
    r = cli(*args)
    assert r.code == 1 and "No space left" in r.err
    assert (out / "boxes.json").read_bytes() == before


def test_verify_of_a_folder_decodes_one_batch_at_a_time(checkpoints, tmp_path, monkeypatch):
    """verify --images DIR pre-processed every image into one array before the first batch: 600 KB
    per image at 224 px, 30 GB for a 50,000-image folder. Now at most one batch is decoded ahead."""
    import bagcams_deploy.verify as verify
    from bagcams_deploy.models import load_model
    from bagcams_deploy.runtime.torch_backends import TorchReferenceBackend

    from .test_cli import write_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        write_image(folder / f"{i}.png", seed=i)
    model = load_model(checkpoints["resnet18"])
    backend = TorchReferenceBackend(model, "gradcam", "layer3", input_size=(64, 64), published_autograd=False)
    decoded, seen = [], []
    real_load, real_infer = verify.load_image, backend.infer
    monkeypatch.setattr(verify, "load_image", lambda p: (decoded.append(p), real_load(p))[1])
    monkeypatch.setattr(
        backend, "infer", lambda x, ids=None: (seen.append((len(x), len(decoded))), real_infer(x, ids))[1]
    )
    batches = []
    rep = verify.verify_backend(
        backend, model, "m", folder, num_random=3, seed=1, batch_size=2, on_batch=batches.append
    )
    assert batches == [2, 2, 2, 2]  # what verify's progress bar counts
    # batches of 2 across the random images and the files; decoded files never run ahead of the batch
    assert [n for n, _ in seen] == [2, 2, 2, 2]
    assert [d for _, d in seen] == [0, 1, 3, 5]
    assert [r.source for r in rep.images][2:] == ["random#2 (seed 1)", *(str(folder / f"{i}.png") for i in range(5))]
    assert [r.index for r in rep.images] == list(range(8))
