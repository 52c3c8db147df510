"""``bench`` after its review: inputs never overwritten, every mistake refused before the first run,
like-with-like floors, one timed region for every backend, and reports that say what they measured."""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from bagcams_deploy import bench
from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.runtime import ort_backend
from bagcams_deploy.runtime.ort_backend import OrtBackend

from . import test_cli, test_tensorrt_backend_logic
from .conftest import TEST_SIZE
from .test_cli import assert_one_line_error
from .test_tensorrt_backend_logic import fake_plan

SIZE = TEST_SIZE["resnet18"]
exported = test_cli.exported  # the exported 64x64 ResNet-18 graph (module-scoped fixture)
fakes = test_tensorrt_backend_logic.fakes  # TensorRT/PyCUDA stand-ins (fixture)


@pytest.fixture
def in_process(monkeypatch):
    """Run bench's children in this process (the GPU stand-ins are not inherited by spawned ones);
    returns the list of jobs run. torch's global thread count is restored afterwards."""
    jobs: list[dict] = []
    threads = torch.get_num_threads()

    def run(job: dict, timeout: float) -> dict:
        jobs.append(job)
        q: queue.Queue = queue.Queue()
        bench._child(job, q)
        return q.get()

    monkeypatch.setattr(bench, "_run_isolated", run)
    yield jobs
    torch.set_num_threads(threads)


@pytest.fixture
def no_runs(monkeypatch):
    """Any benchmark run is a failure: the mistake had to be refused before it."""

    def run(job: dict, timeout: float) -> dict:
        raise AssertionError(f"{job['backend']} at batch {job['batch']} ran before the mistake was refused")

    monkeypatch.setattr(bench, "_run_isolated", run)


def fake_result(job: dict, timeout: float) -> dict:
    return {"ok": True, "times": [0.01, 0.012, 0.011], "peak": 100.0, "before": 50.0, "extra": {}}


@pytest.fixture(scope="module")
def nocam(models, module_tmp) -> Path:
    path = module_tmp("bench-nocam") / "nocam.onnx"
    export_onnx(models["resnet18"], path, method="bagcams", target_layer="layer3", input_size=SIZE, with_cam=False)
    return path


# --- B1: an output equal to an input ------------------------------------------------------------------


def test_json_that_is_the_model_or_the_checkpoint_is_refused_before_any_work(cli, checkpoints, exported, no_runs):
    ckpt = checkpoints["resnet18"]
    before = (exported.read_bytes()[:4096], Path(ckpt).stat().st_size)
    args = ["bench", exported, "--checkpoint", ckpt, "--backends", "ort-cpu", "--batch-sizes", "1", "--iters", "1"]
    assert_one_line_error(cli(*args, "--json", exported), "is the model")
    assert_one_line_error(cli(*args, "--json", ckpt), "is the checkpoint")
    assert (exported.read_bytes()[:4096], Path(ckpt).stat().st_size) == before


# --- B3: ort-cuda / ort-trt silently on the CPU -------------------------------------------------------


def test_ort_gpu_backend_whose_session_fell_back_to_the_cpu_is_refused(monkeypatch, exported):
    """onnxruntime-gpu lists CUDAExecutionProvider even where it cannot start; the session then runs on
    the CPU. The real CPU build does the same when told the provider is available."""
    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort_backend, "available_ort_providers", lambda: listed)
    backend = OrtBackend(str(exported), kind="ort-cuda")
    with warnings.catch_warnings(), pytest.raises(BagcamsError) as err:
        warnings.simplefilter("ignore")  # onnxruntime's own "not in available provider names"
        backend.activate()
    msg = str(err.value)
    assert "could not start CUDAExecutionProvider" in msg and "fell back to CPUExecutionProvider" in msg
    assert "\n" not in msg and not backend.active


class _Session:
    def __init__(self, providers: list[str]) -> None:
        self._providers, self.fallback = providers, True

    def get_providers(self) -> list[str]:
        return self._providers

    def get_outputs(self) -> list:
        return []

    def disable_fallback(self) -> None:
        self.fallback = False


def test_ort_gpu_session_on_its_provider_runs_without_fallback(monkeypatch, exported):
    monkeypatch.setattr(ort_backend, "available_ort_providers", lambda: list(ort_backend.PROVIDERS["ort-trt"]))
    sessions = {"ort-cuda": _Session(["CUDAExecutionProvider", "CPUExecutionProvider"]),
                "ort-trt": _Session(["CUDAExecutionProvider", "CPUExecutionProvider"])}  # fmt: skip
    monkeypatch.setattr(ort_backend, "plain_session", lambda path, threads, exact, providers: sessions[kind])
    kind = "ort-cuda"
    with OrtBackend(str(exported), kind=kind) as b:
        assert b.providers[0] == "CUDAExecutionProvider" and sessions[kind].fallback is False
    kind = "ort-trt"  # the TensorRT EP did not start: CUDA is not what was asked for either
    with pytest.raises(BagcamsError, match=r"could not start TensorrtExecutionProvider .*CUDAExecutionProvider"):
        OrtBackend(str(exported), kind=kind).activate()


# --- M1: the forward-only floor compares like with like --------------------------------------------


def test_floor_runs_with_the_same_exact_setting(monkeypatch):
    seen = []

    class Session:
        def run(self, names, feed):
            return [np.zeros((1, 7), np.float32)]

        def get_providers(self):
            return ["CPUExecutionProvider"]

    def fake_plain_session(path, threads=None, exact=False, providers=None):
        seen.append(exact)
        return Session()

    monkeypatch.setattr(ort_backend, "plain_session", fake_plain_session)
    q: queue.Queue = queue.Queue()
    job = {"backend": bench.FLOOR, "graph": "forward.onnx", "batch": 1, "size": (32, 32), "warmup": 0, "iters": 1,
           "threads": 1, "exact": True, "device": "cpu"}  # fmt: skip
    bench._child(job, q)
    assert q.get()["ok"] and seen == [True]


def test_rows_on_another_device_or_precision_get_no_forward_only_ratio():
    def row(name: str, p50: float, device: str = "cpu", precision: str = "fp32") -> dict:
        return {"backend": name, "batch_size": 1, "p50_ms": p50, "device": device, "precision": precision}

    r = bench.ratios([row("torch-reference", 40), row("ort-cpu", 20), row("tensorrt", 2, "cuda"),
                      row("ov-cpu", 15, precision="fp16"), row(bench.FLOOR, 10)])  # fmt: skip
    assert r["ort-cpu@1"]["x_forward_only"] == 2.0
    assert r["tensorrt@1"]["x_forward_only"] is None and "on cuda" in r["tensorrt@1"]["x_forward_only_not_computed"]
    assert r["ov-cpu@1"]["x_forward_only"] is None and "fp16" in r["ov-cpu@1"]["x_forward_only_not_computed"]
    assert r["tensorrt@1"]["speedup_vs_torch_reference"] == 20.0


def test_a_plan_is_never_divided_by_a_cpu_floor(fakes, in_process, cli, checkpoints, nocam, tmp_path):
    plan = fake_plan(nocam, tmp_path / "m.plan")
    ckpt = checkpoints["resnet18"]
    args = ["--batch-sizes", "1", "--iters", "2", "--warmup", "1", "--threads", "1", "--json"]
    r = cli("bench", plan, "--checkpoint", ckpt, "--backends", "tensorrt", *args, tmp_path / "a.json")
    assert r.code == 0, r.err
    rep = json.loads((tmp_path / "a.json").read_text())
    assert [row["backend"] for row in rep["rows"]] == ["tensorrt"] and rep["rows"][0]["device"] == "cuda"
    assert "tensorrt runs on cuda" in rep["floor"]["skipped"] and "floor skipped" in r.out
    r = cli("bench", plan, "--checkpoint", ckpt, "--backends", "torch-reference,tensorrt", *args, tmp_path / "b.json")
    assert r.code == 0, r.err
    ratios = json.loads((tmp_path / "b.json").read_text())["ratios"]
    assert ratios["torch-reference@1"]["x_forward_only"] > 0  # on the CPU in float32, as the floor
    assert ratios["tensorrt@1"]["x_forward_only"] is None and "speedup_vs_torch_reference" in ratios["tensorrt@1"]


# --- M2: one timed region, host to host -----------------------------------------------------------


@pytest.mark.parametrize("name", ["torch-reference", "torch-analytic"])
def test_torch_backends_time_the_copies_in_and_out(monkeypatch, models, name):
    """Every backend is timed from numpy in to numpy out (TensorRT's timer includes its copies): the
    conversions to and from the device are inside the torch backends' timed region too."""
    from bagcams_deploy.runtime import create_backend

    backend = create_backend(name, model=models["resnet18"], method="gradcam", target_layer="layer4")
    images = np.zeros((1, 3, SIZE, SIZE), np.float32)
    backend.infer(images)
    delay, calls = 0.15, {"in": 0, "out": 0}
    from_numpy, to_cpu = torch.from_numpy, torch.Tensor.cpu

    def slow_from_numpy(a):
        calls["in"] += 1
        time.sleep(delay)
        return from_numpy(a)

    def slow_cpu(t, *args, **kwargs):
        calls["out"] += 1
        time.sleep(delay)
        return to_cpu(t, *args, **kwargs)

    monkeypatch.setattr(torch, "from_numpy", slow_from_numpy)
    monkeypatch.setattr(torch.Tensor, "cpu", slow_cpu)
    backend.infer(images)
    assert calls["in"] == 2 and calls["out"] >= 4
    assert backend.last_inference_time >= delay * (calls["in"] + calls["out"])


# --- M3: every mistake before the first run, and the rows so far on a failure ---------------------


def test_plan_mistakes_are_refused_before_any_run(fakes, no_runs, cli, checkpoints, nocam, tmp_path):
    plan = fake_plan(nocam, tmp_path / "m.plan")  # profile 1..4, no cam output
    ckpt = checkpoints["resnet18"]
    r = cli("bench", plan, "--checkpoint", ckpt, "--backends", "torch-reference,tensorrt", "--batch-sizes", "2,8")
    assert_one_line_error(r, "--batch-sizes 8", "built for batch 1..4")
    r = cli("bench", plan, "--checkpoint", ckpt, "--backends", "torch-reference,tensorrt,tensorrt-cam", "--batch-sizes",
            "1,2")  # fmt: skip
    assert_one_line_error(r, "tensorrt-cam reads the engine's cam output", "--no-cam")


def test_device_and_precision_mistakes_are_refused_before_any_run(monkeypatch, no_runs, cli, checkpoints, exported):
    ckpt = checkpoints["resnet18"]
    args = ["bench", exported, "--checkpoint", ckpt, "--batch-sizes", "1"]
    assert_one_line_error(cli(*args, "--backends", "torch-analytic", "--device", "gpu"), "unknown --device 'gpu'")
    assert_one_line_error(cli(*args, "--backends", "ort-cpu", "--device", "cuda"), "applies to torch backends only")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_one_line_error(cli(*args, "--backends", "ort-cpu,torch-analytic", "--device", "cuda"), "sees no CUDA GPU")
    from bagcams_deploy.runtime import open as runtime_open

    real = runtime_open.read_model_info
    monkeypatch.setattr(runtime_open, "read_model_info", lambda p: dataclasses.replace(real(p), precision="bf16"))
    for name in ("ort-cpu", "ov-cpu"):
        if name == "ov-cpu" and "openvino" not in sys.modules:
            try:
                import openvino  # noqa: F401
            except ImportError:
                continue
        assert_one_line_error(cli(*args, "--backends", f"torch-analytic,{name}"), f"backend {name}", "bf16 graph")


def test_a_failure_midway_writes_the_rows_so_far(monkeypatch, cli, checkpoints, exported, tmp_path):
    def run(job: dict, timeout: float) -> dict:
        if job["backend"] == "ort-cpu" and job["batch"] == 2:
            return {"ok": False, "error": "MemoryError: out of memory"}
        return fake_result(job, timeout)

    monkeypatch.setattr(bench, "_run_isolated", run)
    out = tmp_path / "partial.json"
    r = cli("bench", exported, "--backends", "ort-cpu", "--no-floor", "--batch-sizes", "1,2", "--json", out)
    assert_one_line_error(r, "benchmark of ort-cpu at batch 2 failed: MemoryError", "1 rows measured", str(out))
    rep = json.loads(out.read_text())
    assert rep["complete"] is False and [(x["backend"], x["batch_size"]) for x in rep["rows"]] == [("ort-cpu", 1)]
    assert "MemoryError" in rep["error"]


# --- minor ------------------------------------------------------------------------------------------


def test_report_says_what_it_measured_and_runs_each_batch_size_once(monkeypatch, cli, exported, tmp_path):
    jobs = []
    monkeypatch.setattr(bench, "_run_isolated", lambda job, timeout: jobs.append(job) or fake_result(job, timeout))
    out = tmp_path / "r.json"
    r = cli("bench", exported, "--backends", "ort-cpu", "--no-floor", "--batch-sizes", "2,1,2", "--iters", "3",
            "--warmup", "1", "--json", out)  # fmt: skip
    assert r.code == 0, r.err
    assert [j["batch"] for j in jobs] == [2, 1]
    rep = json.loads(out.read_text())
    from bagcams_deploy import __version__

    assert rep["complete"] is True and rep["bagcams_deploy"] == __version__ and rep["timestamp"].endswith("+00:00")
    assert (rep["iters"], rep["warmup"], rep["device"], rep["batch_sizes"]) == (3, 1, "cpu", [2, 1])
    assert rep["threads"] is None and jobs[0]["threads"] is None and "default" in rep["threads_source"]
    assert "numpy in" in rep["timed_region"] and rep["images_per_s"] == "batch / p50"
    assert "over 3 timed calls" in r.out and "img/s = batch / p50" in r.out


def test_dynamic_size_graphs_take_input_size(monkeypatch, cli, exported):
    from bagcams_deploy.runtime import open as runtime_open

    jobs = []
    monkeypatch.setattr(bench, "_run_isolated", lambda job, timeout: jobs.append(job) or fake_result(job, timeout))
    args = ["bench", exported, "--backends", "ort-cpu", "--no-floor", "--batch-sizes", "1"]
    assert_one_line_error(cli(*args, "--input-size", "96"), f"takes {SIZE}x{SIZE} images")
    real = runtime_open.read_model_info
    monkeypatch.setattr(runtime_open, "read_model_info", lambda p: dataclasses.replace(real(p), input_size=None))
    r = cli(*args)
    assert r.code == 0 and "input size 224x224 (default for a dynamic-size graph)" in r.out, r.err
    r = cli(*args, "--input-size", "96")
    assert r.code == 0 and "input size 96x96 (--input-size)" in r.out, r.err
    assert [j["size"] for j in jobs] == [(224, 224), (96, 96)]


def test_peak_memory_units_and_no_nan_in_the_json(monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "_status_mb", lambda field: None)  # no /proc: macOS
    fake_resource = types.SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: types.SimpleNamespace(ru_maxrss=2**30))
    monkeypatch.setitem(sys.modules, "resource", fake_resource)
    monkeypatch.setattr(sys, "platform", "darwin")  # ru_maxrss in bytes
    assert bench.peak_rss_mb() == 1024
    monkeypatch.setattr(sys, "platform", "freebsd14")  # kilobytes
    assert bench.peak_rss_mb() == 2**20
    path = bench.save_report({"rows": [{"peak_rss_mb": math.nan, "x": [math.inf, 1.5]}]}, tmp_path / "r.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rows": [{"peak_rss_mb": None, "x": [None, 1.5]}]}


def _cpu_bench(monkeypatch):
    """The script as an importable module: its export runs in a spawned child, which imports it by name."""
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("run_cpu_benchmarks")


def test_cpu_benchmark_script_fails_fast_when_the_export_fails(monkeypatch, checkpoints, tmp_path):
    script = _cpu_bench(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(BagcamsError, match=r"export of nosuchlayer failed: .*unknown target layer 'nosuchlayer'"):
        script.measure_export(str(checkpoints["resnet18"]), str(tmp_path / "x.onnx"), "nosuchlayer", threads=1,
                              timeout=120)  # fmt: skip
    assert time.monotonic() - t0 < 100  # the error, not the timeout


def test_cpu_benchmark_script_exports_with_its_thread_count(monkeypatch, checkpoints, tmp_path):
    script = _cpu_bench(monkeypatch)
    threads = torch.get_num_threads()
    try:
        q: queue.Queue = queue.Queue()
        script._export_child(str(checkpoints["resnet18"]), str(tmp_path / "x.onnx"), "layer4", q, threads=1)
        assert q.get()["threads"] == 1
    finally:
        torch.set_num_threads(threads)
