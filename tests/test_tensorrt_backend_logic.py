"""The TensorRT backends' own logic, run on host-memory fakes of TensorRT, PyCUDA and the kernel.

The real libraries' API surface is checked in ``test_gpu_apis.py``; the GPU tests in
``test_tensorrt.py`` run the real thing where a GPU exists. Here ``tests/fake_gpu.py`` stands in for
them so that the backend code itself (I/O discovery, per-batch buffers, addresses, kernel wiring,
stage times, CUDA-graph capture and replay, copies back, frees) runs in CI and its maps are compared
with ONNX Runtime's on the same graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bagcams_deploy.errors import BagcamsError
from bagcams_deploy.export.contract import read_graph_info
from bagcams_deploy.export.onnx_export import export_onnx
from bagcams_deploy.runtime import create_backend
from bagcams_deploy.runtime.ort_backend import OrtBackend
from bagcams_deploy.runtime.tensorrt_build import SIDECAR_FORMAT, sidecar_path
from bagcams_deploy.verify import verify_backend

from . import fake_gpu
from .conftest import TEST_SIZE
from .test_cli import assert_one_line_error

SIZE = TEST_SIZE["resnet18"]
PROFILE = {"min_batch": 1, "opt_batch": 2, "max_batch": 4}


@pytest.fixture
def fakes(monkeypatch):
    """Install the fakes where the backend imports them from; returns (memory, pycuda.driver, tensorrt)."""
    memory = fake_gpu.Memory()
    drv = fake_gpu.make_pycuda(memory)
    trt = fake_gpu.make_tensorrt(memory, drv)
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = drv
    for name, module in {"pycuda": pycuda, "pycuda.driver": drv, "pycuda.autoprimaryctx": types.ModuleType("x"),
                         "tensorrt": trt}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    from bagcams_deploy.kernels import launcher
    from bagcams_deploy.runtime import cuda_graph

    monkeypatch.setattr(launcher, "AggregationKernel", fake_gpu.make_kernel_class(memory, drv))
    monkeypatch.setattr(cuda_graph, "CudaGraph", fake_gpu.FakeCudaGraph)
    return memory, drv, trt


def fake_plan(graph: Path, plan: Path) -> Path:
    """A plan as build-engine records it; its bytes name the graph that the fake engine runs."""
    plan.write_bytes(str(graph).encode())
    info = {k: v for k, v in dataclasses.asdict(read_graph_info(graph)).items() if k != "path"}
    record = {
        "format": SIDECAR_FORMAT,
        "graph": info,
        "class_names": None,
        "profile": PROFILE,
        "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
        "built_with": {
            "tensorrt_version": fake_gpu.TENSORRT_VERSION,
            "device_name": fake_gpu.DEVICE_NAME,
            "compute_capability": list(fake_gpu.COMPUTE_CAPABILITY),
        },
    }
    sidecar_path(plan).write_text(json.dumps(record))
    return plan


@pytest.fixture(scope="module")
def graphs(models, module_tmp) -> dict[str, Path]:
    root = module_tmp("fake-trt")
    out = {}
    for key, kwargs in {"cam": {}, "nocam": {"with_cam": False}, "fp16": {"precision": "fp16"},
                        "fp16_nocam": {"precision": "fp16", "with_cam": False}}.items():  # fmt: skip
        out[key] = root / f"{key}.onnx"
        export_onnx(models["resnet18"], out[key], method="bagcams", target_layer="layer3", input_size=SIZE, **kwargs)
    return out


@pytest.mark.parametrize(
    ("backend", "graph", "reference"),
    [("tensorrt", "nocam", "cam"), ("tensorrt-cam", "cam", "cam"), ("tensorrt-cudagraph", "nocam", "cam"),
     ("tensorrt", "fp16_nocam", "fp16")],
)  # fmt: skip
def test_engine_backends_give_onnx_runtime_maps(fakes, graphs, tmp_path, backend, graph, reference):
    memory, drv, _ = fakes
    plan = fake_plan(graphs[graph], tmp_path / "m.plan")
    rng = np.random.default_rng()
    with OrtBackend(str(graphs[reference])) as ort:
        b = create_backend(backend, graph=plan)
        seen: set[int] = set()
        with b:
            for n in (3, 2, 3):  # two batch sizes, then the first again: its buffers are reused
                before = len(memory.blocks)
                images = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)
                ids = rng.integers(-1, 7, size=n)
                drv.log.clear()
                got, want = b.infer(images, ids), ort.infer(images, ids)
                np.testing.assert_array_equal(got["class_id_used"], want["class_id_used"])
                np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(got["cam"], want["cam"], atol=1e-5)
                assert got["cam"].shape == (n, 1, SIZE, SIZE) and got["cam"].dtype == np.float32
                graphed = backend == "tensorrt-cudagraph"  # one replay: engine and kernel not told apart
                assert set(b.stage_times) == (
                    {"h2d", "graph", "d2h"} if graphed else {"h2d", "engine", "kernel", "d2h"}
                )
                assert all(v >= 0 for v in b.stage_times.values()) and b.gpu_memory_mb > 0
                engine_runs = drv.log.count("engine")
                if backend == "tensorrt-cudagraph":
                    first = n not in seen  # the first call of a batch size also captures the graph
                    assert engine_runs == (2 if first else 1) and drv.log.count("kernel") == engine_runs
                else:
                    assert engine_runs == 1 and drv.log.count("kernel") == (backend == "tensorrt")
                seen.add(n)
            assert len(memory.blocks) == before  # third call: no new allocations
            contexts = {id(buf.context) for buf in b._buffers.values()}
            # a CUDA graph fixes its execution context's shapes: one context per captured batch size
            assert len(contexts) == (2 if backend == "tensorrt-cudagraph" else 1)
        assert memory.blocks == {}  # everything freed on exit
        assert drv.context_depth() == 0  # every push of the primary context was popped


def test_fetch_copies_back_only_what_is_asked(fakes, graphs, tmp_path):
    from bagcams_deploy.runtime.tensorrt_backend import TensorRTBackend

    _, drv, _ = fakes
    with TensorRTBackend(str(fake_plan(graphs["nocam"], tmp_path / "m.plan")), fetch=("cam",)) as b:
        drv.log.clear()
        out = b.infer(np.zeros((2, 3, SIZE, SIZE), np.float32))
    assert set(out) == {"cam"} and drv.log.count("dtoh") == 1


def test_batches_outside_the_profile_and_wrong_backend_kind_are_refused(fakes, graphs, tmp_path):
    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")
    with create_backend("tensorrt", graph=plan) as b, pytest.raises(BagcamsError, match=r"outside .* profile \(1..4\)"):
        b.infer(np.zeros((5, 3, SIZE, SIZE), np.float32))
    with pytest.raises(BagcamsError, match="exported with --no-cam: use backend tensorrt"):
        create_backend("tensorrt-cam", graph=plan)


def test_verify_passes_on_a_plan_with_the_bars_of_its_arithmetic(fakes, graphs, models, tmp_path):
    from bagcams_deploy.verify import Tolerances

    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")  # a record without "tf32": built with TF32 allowed
    with create_backend("tensorrt", graph=plan) as b:
        assert b.math_precision == "tf32"
        report = verify_backend(b, models["resnet18"], str(plan), num_random=3, batch_size=2)
    assert report.passed, report.failures
    assert report.precision == "tf32" and report.tolerances == Tolerances.for_precision("tf32")
    assert min(i.map_pearson for i in report.images) > 0.9999
    record = json.loads(sidecar_path(plan).read_text())
    sidecar_path(plan).write_text(json.dumps(record | {"tf32": False}))
    assert create_backend("tensorrt", graph=plan).math_precision == "fp32"
    half = fake_plan(graphs["fp16_nocam"], tmp_path / "h.plan")
    assert create_backend("tensorrt", graph=half).math_precision == "fp16"  # TF32 only concerns float32 math


@pytest.mark.parametrize("version", ["10.13.3.9", "11.4.0.106"])
def test_build_engine_cli_then_engine_info_and_verify(fakes, graphs, checkpoints, cli, tmp_path, version):
    _, _, trt = fakes
    trt.__version__ = version
    plan, cache = tmp_path / "m.plan", tmp_path / "timing.cache"
    args = ["build-engine", graphs["nocam"], "-o", plan, "--min-batch", "1", "--opt-batch", "2", "--max-batch", "4",
            "--timing-cache", cache, "--no-tf32"]  # fmt: skip
    r = cli(*args)
    assert r.code == 0, r.err
    build = trt.builds[-1]
    # TensorRT 10: strongly typed by flag; 11: always strongly typed (no flag)
    assert build.network.flags == (1 << 5 if version.startswith("10.") else 0)
    assert build.config.flags_cleared == ["tf32"] and build.config.pools["workspace"] == 4 << 30
    (profile,) = build.config.profiles
    shape = (3, SIZE, SIZE)
    assert profile.shapes == {"image": ((1, *shape), (2, *shape), (4, *shape)), "class_id": ((1,), (2,), (4,))}
    record = json.loads(sidecar_path(plan).read_text())
    assert record["tf32"] is False and record["profile"] == PROFILE
    assert record["built_with"] == {"tensorrt_version": version, "device_name": fake_gpu.DEVICE_NAME,
                                    "compute_capability": list(fake_gpu.COMPUTE_CAPABILITY)}  # fmt: skip
    assert record["graph"]["method"] == "bagcams" and record["graph"]["input_size"] == [SIZE, SIZE]
    assert cache.read_bytes() == b"+" and "timing cache" in r.out and "(new)" in r.out
    r = cli(*args)  # the second build starts from the saved timing cache
    assert r.code == 0 and "read 1 bytes" in r.out and cache.read_bytes() == b"++"
    r = cli("engine-info", plan)
    assert r.code == 0 and "bagcams" in r.out and version in r.out, r.out + r.err
    config_class = type(build.config)
    accepting = config_class.set_timing_cache
    config_class.set_timing_cache = lambda self, cache, ignore_mismatch: False  # another GPU's cache
    try:
        assert_one_line_error(cli(*args), "refused the timing cache")
    finally:
        config_class.set_timing_cache = accepting
    r = cli("verify", plan, "--checkpoint", checkpoints["resnet18"], "--num-random", "2", "--seed", "0")
    assert r.code == 0, r.out + r.err
    assert "tensorrt vs torch-reference" in r.out and "PASS" in r.out, r.out


def test_build_engine_never_destroys_its_input_or_the_engine(fakes, graphs, cli, tmp_path, monkeypatch):
    """Outputs are checked before the build: no output may be the graph, the plan must carry a suffix
    the other commands open, the timing cache must be a writable file; and the cache is written
    last, so a cache that fails at the end costs a warning, not the engine."""
    _, _, trt = fakes
    graph = tmp_path / "g.onnx"
    graph.write_bytes(graphs["nocam"].read_bytes())
    digest = hashlib.sha256(graph.read_bytes()).hexdigest()
    builds = len(trt.builds)
    for args, needle in [
        (["-o", graph], "is the ONNX graph"),
        (["-o", tmp_path / "m.bin"], "name the plan *.plan or *.engine"),
        (["-o", tmp_path / "m.plan", "--timing-cache", tmp_path], "--timing-cache"),
        (["-o", tmp_path / "m.plan", "--timing-cache", graph], "is the ONNX graph"),
        (["-o", tmp_path / "m.plan", "--timing-cache", tmp_path / "m.plan"], "is the plan"),
        (["-o", tmp_path / "m.plan", "--timing-cache", tmp_path / "m.plan.json"], "is the plan or its record"),
    ]:
        assert_one_line_error(cli("build-engine", graph, *args), needle)
    assert len(trt.builds) == builds and hashlib.sha256(graph.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "m.plan").exists()

    cache = tmp_path / "t.cache"
    real_write = Path.write_bytes
    monkeypatch.setattr(
        Path, "write_bytes",
        lambda self, data: (_ for _ in ()).throw(OSError(28, "No space left on device")) if self == cache
        else real_write(self, data),
    )  # fmt: skip
    r = cli("build-engine", graph, "-o", tmp_path / "m.plan", "--max-batch", "4", "--timing-cache", cache)
    assert r.code == 0, r.err  # --max-batch 4 alone: --opt-batch follows it down to 4
    assert "warning: timing cache" in r.out and "No space left" in r.out
    record = json.loads(sidecar_path(tmp_path / "m.plan").read_text())
    assert record["profile"] == {"min_batch": 1, "opt_batch": 4, "max_batch": 4}
    assert record["source_onnx_sha256"] == digest and not cache.exists()
    # engine-info on the graph instead of the plan says what the file is
    assert_one_line_error(cli("engine-info", graph), "is an ONNX graph, not a TensorRT plan")
    plain = tmp_path / "graph.plan"
    plain.write_bytes(graph.read_bytes())
    assert_one_line_error(cli("engine-info", plain), "is an ONNX graph, not a TensorRT plan")


def test_rebuild_hint_repeats_the_recorded_build(fakes, graphs, cli, tmp_path, monkeypatch):
    """Following "rebuild it here" must not silently change the batch range, size, workspace or TF32."""
    from bagcams_deploy.runtime.tensorrt_build import SystemInfo, check_plan_compatible

    plan = tmp_path / "m.plan"
    r = cli("build-engine", graphs["nocam"], "-o", plan, "--min-batch", "2", "--max-batch", "16", "--workspace-gb",
            "1.5", "--no-tf32")  # fmt: skip
    assert r.code == 0, r.err
    record = json.loads(sidecar_path(plan).read_text())
    with pytest.raises(BagcamsError) as err:
        check_plan_compatible(record, SystemInfo("10.13.3.9", "NVIDIA L4", (8, 9)), plan)
    hint = str(err.value).split("rebuild it here: ")[1]
    assert hint == (f"bagcams-deploy build-engine {graphs['nocam'].resolve()} --output {plan} --min-batch 2 "
                    "--opt-batch 8 --max-batch 16 --workspace-gb 1.5 --no-tf32")  # fmt: skip
    r = cli(*hint.split()[1:])  # the hint is a working command
    assert r.code == 0, r.err
    again = json.loads(sidecar_path(plan).read_text())
    for key in ("profile", "workspace_gb", "tf32", "source_onnx"):
        assert again[key] == record[key]
    # a graph named relative to the folder of the build is recorded absolute: the hint works from anywhere
    monkeypatch.chdir(graphs["nocam"].parent)
    assert cli("build-engine", graphs["nocam"].name, "-o", plan).code == 0
    assert json.loads(sidecar_path(plan).read_text())["source_onnx"] == str(graphs["nocam"].resolve())
    # a record from before dynamic_size was recorded repeats the size, which a fixed-size graph accepts
    del record["graph"]["dynamic_size"]
    with pytest.raises(BagcamsError) as err:
        check_plan_compatible(record, SystemInfo("10.13.3.9", "NVIDIA L4", (8, 9)), plan)
    assert f"--input-size {SIZE}" in str(err.value)


def test_ort_trt_options_cache_engines_and_profile_the_graphs_size(graphs, models, tmp_path, monkeypatch):
    from bagcams_deploy.runtime.ort_backend import ORT_TRT_BATCHES, ort_trt_options

    monkeypatch.setenv("BAGCAMS_CACHE_DIR", str(tmp_path / "cache"))
    opts = ort_trt_options(graphs["nocam"], read_graph_info(graphs["nocam"]))
    lo, opt, hi = ORT_TRT_BATCHES
    assert opts["trt_profile_min_shapes"] == f"image:{lo}x3x{SIZE}x{SIZE},class_id:{lo}"
    assert opts["trt_profile_opt_shapes"] == f"image:{opt}x3x{SIZE}x{SIZE},class_id:{opt}"
    assert opts["trt_profile_max_shapes"] == f"image:{hi}x3x{SIZE}x{SIZE},class_id:{hi}"
    cache = Path(opts["trt_engine_cache_path"])
    assert cache.parent == tmp_path / "cache" / "ort-trt" and opts["trt_engine_cache_enable"] == "True"
    assert "trt_fp16_enable" not in opts  # precision is the graph's
    other = ort_trt_options(graphs["cam"], read_graph_info(graphs["cam"]))
    assert other["trt_engine_cache_path"] != str(cache)  # one cache per graph content
    dynamic = tmp_path / "dyn.onnx"
    export_onnx(models["resnet18"], dynamic, target_layer="layer3", input_size=SIZE, dynamic_size=True)
    assert not any(k.startswith("trt_profile") for k in ort_trt_options(dynamic, read_graph_info(dynamic)))


def test_kernel_bandwidth_times_the_kernel_on_the_engine_buffers(fakes, graphs, tmp_path):
    from bagcams_deploy.kernels.bandwidth import aggregation_bytes

    memory, drv, _ = fakes
    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")
    with create_backend("tensorrt", graph=plan) as b:
        assert b.kernel_bandwidth() is None  # nothing run yet
        out = b.infer(np.random.default_rng().standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
        blocks = len(memory.blocks)
        drv.log.clear()
        bw = b.kernel_bandwidth(iters=4, copy_mib=1)
        assert len(memory.blocks) == blocks  # the copy buffers were freed
        assert drv.log.count("kernel") == 4 + 2 * 5 and drv.log.count("engine") == 0  # warm-up, enqueue probe, timed
        assert drv.log.count("dtod") > 0
        assert set(bw) == {"kernel_ms", "kernel_gbps", "copy_gbps", "kernel_fraction_of_copy"}
        assert bw["kernel_ms"] > 0 and bw["kernel_fraction_of_copy"] == pytest.approx(
            bw["kernel_gbps"] / bw["copy_gbps"]
        )
        k, fh = out["features"].shape[1], out["features"].shape[2]
        moved = aggregation_bytes(2, k, fh, fh, SIZE, SIZE, 4)
        assert bw["kernel_gbps"] == pytest.approx(moved / (bw["kernel_ms"] * 1e-3) / 1e9)
        np.testing.assert_allclose(b.infer(np.zeros((2, 3, SIZE, SIZE), np.float32))["cam"].shape, (2, 1, SIZE, SIZE))
    with create_backend("tensorrt-cam", graph=fake_plan(graphs["cam"], tmp_path / "c.plan")) as b:
        b.infer(np.zeros((1, 3, SIZE, SIZE), np.float32))
        assert b.kernel_bandwidth() is None  # no kernel in this variant


def test_bench_prints_a_gpu_table_from_the_stage_and_bandwidth_figures():
    from rich.console import Console

    from bagcams_deploy.commands.bench import gpu_table

    extra = {"stage_h2d_s": 0.001, "stage_engine_s": 0.004, "stage_kernel_s": 0.0002, "stage_d2h_s": 0.0005,
             "gpu_memory_mb": 812.5, "kernel_gbps": 2900.0, "kernel_fraction_of_copy": 0.87}  # fmt: skip
    report = {"rows": [{"backend": "ort-cpu", "batch_size": 8, "extra": {}},
                       {"backend": "tensorrt", "batch_size": 8, "extra": extra}]}  # fmt: skip
    console = Console(record=True, width=200)
    console.print(gpu_table(report))
    text = console.export_text()
    assert "tensorrt" in text and "ort-cpu" not in text
    for cell in ("1.00", "4.00", "0.20", "0.50", "812.50", "2900.00", "87.00"):
        assert cell in text
    assert gpu_table({"rows": [report["rows"][0]]}) is None


def test_verify_cli_picks_the_bars_of_the_engines_arithmetic(fakes, graphs, checkpoints, cli, tmp_path):
    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")  # TF32 allowed when built
    args = ["verify", plan, "--checkpoint", checkpoints["resnet18"], "--num-random", "2", "--report"]
    r = cli(*args, tmp_path / "tf32.json")
    assert r.code == 0 and "(tf32, 64x64 input)" in r.out, r.out + r.err
    tol = json.loads((tmp_path / "tf32.json").read_text())["tolerances"]
    assert tol["gradient_rel_l2"] == 0.1 and tol["map_pearson"] == 0.9995
    r = cli(*args, tmp_path / "fp32.json", "--bars", "fp32")
    assert r.code == 0, r.out + r.err  # the fakes compute in exact float32, so the float32 bars hold too
    assert json.loads((tmp_path / "fp32.json").read_text())["tolerances"]["gradient_rel_l2"] == 5e-3
    r = cli(*args, tmp_path / "x.json", "--bars", "int8")
    assert r.code == 1 and "unknown --bars 'int8'" in r.err and len(r.err.strip().splitlines()) == 1


def test_backends_command_on_a_machine_with_tensorrt_and_a_gpu(fakes, cli):
    from bagcams_deploy.runtime.environment import backend_statuses

    rows = {s.name: s for s in backend_statuses()}
    for name in ("tensorrt", "tensorrt-cam", "tensorrt-cudagraph"):
        assert rows[name].available, rows[name]
        assert f"tensorrt {fake_gpu.TENSORRT_VERSION}" in rows[name].detail
    r = cli("backends")
    assert r.code == 0 and f"CUDA device: {fake_gpu.DEVICE_NAME} (sm_90, seen by pycuda)" in r.out, r.out
    assert "kernels: prebuilt machine code (sm_90)" in r.out


def test_backends_command_names_a_tensorrt_too_old(fakes):
    from bagcams_deploy.runtime.environment import backend_statuses

    _, _, trt = fakes
    trt.__version__ = "10.0.1.6"
    row = {s.name: s for s in backend_statuses()}["tensorrt"]
    assert not row.available and "TensorRT 10.0.1.6 is too old" in row.detail


def test_an_engine_backend_serves_calls_from_any_thread(fakes, graphs, tmp_path):
    """PyCUDA needs its context on the calling thread's own stack: each call pushes the primary
    context, so a backend activated in one thread serves calls from others (as a server's pool)."""
    from concurrent.futures import ThreadPoolExecutor

    _, drv, _ = fakes
    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")
    images = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with create_backend("tensorrt", graph=plan) as b, OrtBackend(str(graphs["cam"])) as ort:
        want = ort.infer(images)["cam"]
        with ThreadPoolExecutor(3) as pool:
            outs = list(pool.map(lambda n: b.infer(images[:n]), (1, 2, 1, 2, 2)))
        assert drv.context_depth() == 0
    for out in outs:
        np.testing.assert_allclose(out["cam"], want[: len(out["cam"])], atol=1e-5)


def test_the_device_checked_is_the_device_used(fakes, graphs, tmp_path, monkeypatch):
    """The plan is checked against, and run on, one device: the current context's, else CUDA_DEVICE."""
    plan = fake_plan(graphs["nocam"], tmp_path / "m.plan")
    monkeypatch.setenv("CUDA_DEVICE", "3")
    with pytest.raises(BagcamsError, match="CUDA_DEVICE='3' is not one of the 1 visible devices"):
        create_backend("tensorrt", graph=plan).activate()
    monkeypatch.setenv("CUDA_DEVICE", "0")
    with create_backend("tensorrt", graph=plan) as b:
        assert b._cuda.device.name() == fake_gpu.DEVICE_NAME
