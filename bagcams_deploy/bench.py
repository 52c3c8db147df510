"""``bench``: latency, throughput and peak memory of backends, side by side, under the same settings.

Each (backend, batch size) runs in its own spawned process so that its peak resident memory is its
own and thread settings cannot leak between backends; all run from one call, on the same machine,
with the same thread count. The timed region is each backend's ``infer_impl`` (its own timer), so
input checks and Python glue are not counted. The floor is the forward-only latency of the plain
classifier (image -> logits) exported to ONNX and run by ONNX Runtime with the same settings.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BagcamsError

FLOOR = "ort-forward-only"


@dataclass
class BenchRow:
    backend: str
    batch_size: int
    iters: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    peak_rss_mb: float
    rss_before_mb: float
    extra: dict


def machine_info() -> dict:
    """Where the numbers were taken: CPU, cores, library versions."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import importlib.metadata as md

    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "openvino", "tensorrt", "pycuda"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return info


def _status_mb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, so a spawned child
    starts afresh; ``ru_maxrss`` would carry the parent's peak across fork+exec on Linux."""
    peak = _status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _child(job: dict, queue: mp.Queue) -> None:
    """Runs in a fresh process: build one backend, warm up, time ``iters`` calls, report peak RSS."""
    try:
        threads = job["threads"]
        wants_model = job["backend"].startswith("torch")
        if threads and wants_model:  # graph backends run without torch, as a deployment does
            import torch

            torch.set_num_threads(threads)
        from .runtime import create_backend

        rng = np.random.default_rng(0)
        n, size = job["batch"], job["size"]
        images = rng.standard_normal((n, 3, size[0], size[1])).astype(np.float32)
        if job["backend"] == FLOOR:
            from .runtime.ort_backend import plain_session

            session = plain_session(job["graph"], threads)
            rss_before = _rss_mb()

            def run() -> float:
                t0 = time.perf_counter()
                session.run(None, {"image": images})
                return time.perf_counter() - t0

            extra: dict = {}
        else:
            model = None
            if wants_model and job["checkpoint"]:
                from .runtime.open import load_checkpoint_for, read_model_info

                model = load_checkpoint_for(job["checkpoint"], read_model_info(job["model"]))
            backend = create_backend(
                job["backend"],
                graph=job["model"],
                model=model,
                threads=threads,
                exact=job["exact"],
                device=job["device"],
            )
            backend.activate()
            rss_before = _rss_mb()

            def run() -> float:
                backend.infer(images)
                return float(backend.last_inference_time)

            extra = {}
        for _ in range(job["warmup"]):
            run()
        times = [run() for _ in range(job["iters"])]
        if job["backend"] != FLOOR:
            # GPU backends: per-stage times (engine vs kernel) and device memory where they expose them.
            extra.update({f"stage_{k}_s": v for k, v in getattr(backend, "stage_times", {}).items()})
            if getattr(backend, "gpu_memory_mb", None) is not None:
                extra["gpu_memory_mb"] = backend.gpu_memory_mb
            if hasattr(backend, "kernel_bandwidth"):  # tensorrt: the kernel against the device's copy speed
                extra.update(backend.kernel_bandwidth() or {})
            if wants_model and (job["device"].startswith("cuda") or job["backend"].endswith("cudagraph")):
                import torch

                extra["gpu_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        peak = peak_rss_mb()
        queue.put({"ok": True, "times": times, "peak": peak, "before": rss_before, "extra": extra})
    except Exception as exc:  # reported by the parent as one line
        queue.put({"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


def _run_isolated(job: dict, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, queue))
    proc.start()
    what = f"benchmark of {job['backend']} at batch {job['batch']}"
    deadline = time.monotonic() + timeout
    while True:  # poll, so a child that dies (out of memory, a crash in native code) is reported at once
        try:
            result = queue.get(timeout=1.0)
            break
        except Exception:
            if not proc.is_alive():
                raise BagcamsError(f"{what}: the benchmark process died (exit code {proc.exitcode})") from None
            if time.monotonic() > deadline:
                proc.kill()
                raise BagcamsError(f"{what} timed out after {timeout:.0f}s") from None
    proc.join()
    return result


def check_backends_can_run(backends: list[str], model_path: str) -> None:
    """Refuse a backend that cannot run here before minutes are spent benchmarking the others."""
    from .runtime.environment import backend_statuses
    from .runtime.registry import ALL_BACKENDS, GRAPH_BACKENDS, check_model_kind

    statuses = {s.name: s for s in backend_statuses()}
    for name in backends:
        if name not in ALL_BACKENDS:
            raise BagcamsError(f"unknown backend {name!r}; valid: {', '.join(ALL_BACKENDS)}")
        if name in GRAPH_BACKENDS:
            check_model_kind(name, model_path)
        if name in statuses and not statuses[name].available:
            raise BagcamsError(f"backend {name} cannot run here: {statuses[name].detail}")


def run_benchmark(
    model_path: str,
    checkpoint: str | None,
    backends: list[str],
    batch_sizes: list[int],
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    exact: bool = False,
    device: str = "cpu",
    include_floor: bool = True,
    timeout: float = 1800.0,
    on_row=None,
) -> dict:
    """Benchmark ``backends`` at each batch size; returns a JSON-able report (rows + machine info)."""
    from .export.onnx_export import export_forward_onnx

    if any(b.startswith("torch") for b in backends) and not checkpoint:
        raise BagcamsError("torch backends need --checkpoint")
    check_backends_can_run(backends, model_path)
    from .runtime.open import load_checkpoint_for, read_model_info

    info = read_model_info(model_path)
    size = info.input_size or (224, 224)
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        floor_path = None
        names = list(backends)
        if include_floor:
            if not checkpoint:
                raise BagcamsError("the forward-only floor needs --checkpoint (or pass --no-floor)")
            floor_path = str(Path(tmp) / "forward.onnx")
            export_forward_onnx(load_checkpoint_for(checkpoint, info), floor_path, size)
            names.append(FLOOR)
        for batch in batch_sizes:
            for name in names:
                job = {
                    "backend": name, "model": model_path, "checkpoint": checkpoint, "graph": floor_path,
                    "batch": batch, "size": size, "warmup": warmup, "iters": iters, "threads": threads,
                    "exact": exact, "device": device,
                }  # fmt: skip
                res = _run_isolated(job, timeout)
                if not res["ok"]:
                    raise BagcamsError(f"benchmark of {name} at batch {batch} failed: {res['error']}")
                t = [v * 1000 for v in res["times"]]
                row = BenchRow(
                    backend=name,
                    batch_size=batch,
                    iters=iters,
                    p50_ms=_percentile(t, 50),
                    p90_ms=_percentile(t, 90),
                    p99_ms=_percentile(t, 99),
                    mean_ms=float(np.mean(t)),
                    images_per_s=batch / (_percentile(t, 50) / 1000),
                    peak_rss_mb=res["peak"],
                    rss_before_mb=res["before"],
                    extra=res["extra"],
                )
                rows.append(row)
                if on_row:
                    on_row(row)
    return {
        "model": model_path,
        "method": info.method if info else None,
        "target_layer": info.target_layer if info else None,
        "input_size": list(size),
        "threads": threads,
        "warmup": warmup,
        "exact": exact,
        "machine": machine_info(),
        "rows": [asdict(r) for r in rows],
        "ratios": ratios([asdict(r) for r in rows]),
    }


def ratios(rows: list[dict]) -> dict:
    """Speed-ups against torch-reference and overheads against the forward-only floor, per batch size."""
    out: dict = {}
    by = {(r["backend"], r["batch_size"]): r for r in rows}
    for (name, batch), r in by.items():
        ref = by.get(("torch-reference", batch))
        floor = by.get((FLOOR, batch))
        entry = {}
        if ref and name != "torch-reference":
            entry["speedup_vs_torch_reference"] = ref["p50_ms"] / r["p50_ms"]
        if floor and name != FLOOR:
            entry["x_forward_only"] = r["p50_ms"] / floor["p50_ms"]
        if entry:
            out[f"{name}@{batch}"] = entry
    return out


def save_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
