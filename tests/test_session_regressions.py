"""Regressions found reviewing the SIGTERM, run-record checkpoint, verify and evaluate changes."""

from __future__ import annotations

import pytest

from bagcams_deploy import bench, cli


class _FakeProcess:
    def __init__(self, target=None, args=()):
        self.alive = False
        self.killed = False
        self.exitcode = None
        self.pid = None

    def start(self):
        self.alive, self.pid = True, 12345

    def is_alive(self):
        return self.alive

    def kill(self):
        self.killed, self.alive, self.exitcode = True, False, -9

    def join(self, timeout=None):
        assert not self.alive, "join on a live child waits for its whole benchmark"


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, cli.Terminated])
def test_an_interrupted_benchmark_kills_its_child(monkeypatch, interruption):
    """SIGTERM (cli.Terminated) or Ctrl-C in the parent while a backend is timed in its spawned child:
    the child is killed, not left running for multiprocessing's exit handler to join (the parent hung
    until the child had finished every timed call)."""
    procs: list[_FakeProcess] = []

    class Queue:
        def get(self, timeout=None):
            raise interruption

    class Context:
        def Queue(self):
            return Queue()

        def Process(self, target=None, args=()):
            procs.append(_FakeProcess(target, args))
            return procs[-1]

    monkeypatch.setattr(bench.mp, "get_context", lambda method: Context())
    with pytest.raises(interruption):
        bench._run_isolated({"backend": "ort-cpu", "batch": 1}, timeout=60)
    assert procs and procs[0].killed


def test_an_interruption_just_after_the_first_checkpoint_replaced_the_record_still_puts_it_back(
    cli, checkpoints, tmp_path, monkeypatch
):
    """Ctrl-C or SIGTERM (both raised between two bytecodes) landing after the first checkpoint's
    os.replace but before it was counted left the checkpoint in place of the earlier run's record: its
    boxes were gone although the run wrote no file."""
    import os

    import bagcams_deploy.outputs as outputs

    from .test_scale import completed_localize_run

    args, out, before = completed_localize_run(cli, checkpoints, tmp_path)
    real = os.replace

    def interrupted_after_the_replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if os.fspath(dst).endswith("boxes.json"):
            raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "replace", interrupted_after_the_replace)
    r = cli(*args)
    assert r.code == 130, r.err
    monkeypatch.setattr(outputs.os, "replace", real)
    assert (out / "boxes.json").read_bytes() == before
