"""Long runs at data-set scale: progress off a terminal, interruption by SIGTERM, work done once."""

from __future__ import annotations

import itertools

from bagcams_deploy.progress import progress_bar, progress_line


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
