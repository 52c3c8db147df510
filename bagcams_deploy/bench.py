"""``bench``: latency, throughput and peak memory of backends, side by side, under the same settings.

Each (backend, batch size) runs in its own spawned process so that its peak resident memory is its
own and thread settings cannot leak between backends; all run from one call, on the same machine,
with the same thread count. The timed region is each backend's ``infer_impl`` (its own timer): numpy
arrays in host memory in, numpy arrays in host memory out, with any copy to and from a GPU inside it
and the device synchronised before the clock is read; input checks and Python glue are not counted.
The floor is the forward-only latency of the plain classifier (image -> logits) exported to ONNX and
run by ONNX Runtime on the CPU in float32 with the same threads and ``exact`` setting: it is compared
only with rows that also run on the CPU in float32, the others get no ratio and a reason.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import BagcamsError
from .outputs import json_safe

FLOOR = "ort-forward-only"
FLOOR_DEVICE, FLOOR_PRECISION = "cpu", "fp32"
TIMED_REGION = (
    "infer_impl: numpy in (host) to numpy out (host), copies to and from a GPU included, device synchronised; "
    "input checks and output checks excluded"
)
#: Backends that run on a GPU whatever ``--device`` says.
GPU_GRAPH_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt", "tensorrt-cam", "tensorrt-cudagraph")


@dataclass
class BenchRow:
    backend: str
    batch_size: int
    iters: int  # every percentile is over this many timed calls
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float  # batch / p50
    peak_rss_mb: float | None  # None where the platform does not say
    rss_before_mb: float | None
    extra: dict
    device: str = "cpu"
    precision: str = "fp32"


class BenchmarkIncomplete(BagcamsError):
    """A backend failed mid-run; ``report`` holds the rows measured before it (``"complete": false``)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


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


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mb() -> float | None:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory. VmHWM belongs to the address space, so a spawned child
    starts afresh; ``ru_maxrss`` would carry the parent's peak across fork+exec on Linux, and is in
    bytes on macOS but kilobytes elsewhere. None where neither exists (Windows)."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):
        return None
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


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

            session = plain_session(job["graph"], threads, job["exact"])  # like with like: --exact too
            rss_before = _rss_mb()

            def run() -> float:
                t0 = time.perf_counter()
                session.run(None, {"image": images})
                return time.perf_counter() - t0

            extra: dict = {"providers": list(session.get_providers())}
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

            extra = {"providers": backend.providers} if hasattr(backend, "providers") else {}
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


#: Exit code of a spawned child that found itself re-running the caller's unguarded script.
UNGUARDED_SCRIPT_EXIT = 97
UNGUARDED_SCRIPT = (
    "run_benchmark runs each backend in a spawned process, which re-runs the calling script: call it "
    'under `if __name__ == "__main__":` (the multiprocessing main-module rule)'
)


def _refuse_from_spawned_bootstrap() -> None:
    """Where run_benchmark is called at a script's top level, each spawned child re-runs the script
    and would call it again, dying in multiprocessing's bootstrap with a page of traceback. Such a
    child exits at once with a code of its own instead, which the parent turns into one line."""
    if getattr(mp.current_process(), "_inheriting", False):  # set while spawn re-imports __main__
        raise SystemExit(UNGUARDED_SCRIPT_EXIT)


def _run_isolated(job: dict, timeout: float) -> dict:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, queue))
    what = f"benchmark of {job['backend']} at batch {job['batch']}"
    try:
        proc.start()  # inside: an interruption while it spawns must not leave the child behind either
        deadline = time.monotonic() + timeout
        while True:  # poll, so a child that dies (out of memory, a crash in native code) is reported at once
            try:
                result = queue.get(timeout=1.0)
                break
            except Exception:
                if not proc.is_alive():
                    if proc.exitcode == UNGUARDED_SCRIPT_EXIT:
                        raise BagcamsError(UNGUARDED_SCRIPT) from None
                    raise BagcamsError(f"{what}: the benchmark process died (exit code {proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise BagcamsError(f"{what} timed out after {timeout:.0f}s") from None
    except BaseException:
        # a timeout, Ctrl-C or SIGTERM (the CLI's Terminated): the child must not outlive the run, and
        # multiprocessing's exit handler would otherwise wait for it to finish its timed calls
        if proc.pid is not None:  # started (killing one that has ended is a no-op)
            proc.kill()
            proc.join()
        raise
    proc.join()
    return result


def backend_device(name: str, device: str) -> str:
    """Where a backend's timed region runs: GPU graph backends on CUDA, torch backends on ``device``."""
    if name in GPU_GRAPH_BACKENDS:
        return "cuda"
    if name == "torch-analytic-cudagraph":
        return device if device.startswith("cuda") else "cuda"
    if name.startswith("torch"):
        return device
    return "cpu"


def backend_precision(name: str, graph_precision: str) -> str:
    """The arithmetic a backend runs: graph backends the graph's, torch backends the checkpoint's float32."""
    return "fp32" if name.startswith("torch") or name == FLOOR else graph_precision


def floor_mismatch(device: str, precision: str) -> str | None:
    """Why a row cannot be divided by the floor (ONNX Runtime, CPU, float32), or None when it can."""
    if device != FLOOR_DEVICE:
        return f"runs on {device}; the floor runs on the CPU"
    if precision != FLOOR_PRECISION:
        return f"runs the {precision} graph; the floor is the float32 forward-only graph"
    return None


def check_device(device: object, backends: list[str]) -> None:
    """``--device`` picks where the torch backends run: a typo, a GPU torch cannot see, or a device no
    named backend would use is refused before any run."""
    from .runtime.registry import MODEL_BACKENDS

    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise BagcamsError(f"unknown --device {device!r}; valid: cpu, cuda, cuda:N")
    torch_names = [b for b in backends if b in MODEL_BACKENDS]
    if device != "cpu" and not torch_names:
        raise BagcamsError(
            f"--device {device} applies to torch backends only, and none is named ({', '.join(backends)}); "
            "the graph backends run where their runtime does (ort-cuda, ort-trt and tensorrt on the GPU)"
        )
    if device.startswith("cuda") and torch_names:
        import torch

        if not torch.cuda.is_available():
            raise BagcamsError(f"--device {device}: this torch build ({torch.__version__}) sees no CUDA GPU")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise BagcamsError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def check_backends_can_run(
    backends: list[str], model_path: str, batch_sizes: list[int] | tuple[int, ...] = (), device: str = "cpu"
) -> None:
    """Refuse, before minutes are spent benchmarking the others, every backend that would fail mid-run:
    unknown or not installed, the wrong kind of model file, a device torch cannot use, a bf16 graph on
    a CPU runtime, a batch size outside a plan's profile, or ``tensorrt-cam`` on a plan with no map."""
    from .runtime.environment import backend_statuses
    from .runtime.open import read_model_info
    from .runtime.registry import ALL_BACKENDS, GRAPH_BACKENDS, PLAN_SUFFIXES, check_model_kind

    statuses = {s.name: s for s in backend_statuses()}
    for name in backends:
        if name not in ALL_BACKENDS:
            raise BagcamsError(f"unknown backend {name!r}; valid: {', '.join(ALL_BACKENDS)}")
        if name in GRAPH_BACKENDS:
            check_model_kind(name, model_path)
        if name in statuses and not statuses[name].available:
            raise BagcamsError(f"backend {name} cannot run here: {statuses[name].detail}")
    check_device(device, backends)
    info = read_model_info(model_path)
    for name in ("ort-cpu", "ov-cpu"):
        if name in backends and info.precision == "bf16":
            raise BagcamsError(
                f"backend {name} cannot run {model_path}: it is a bf16 graph, which is for TensorRT on an Ampere "
                "or newer GPU (build-engine); export --precision fp16 or fp32 for the CPU"
            )
    engines = [b for b in backends if b.startswith("tensorrt")]
    if engines and str(model_path).lower().endswith(PLAN_SUFFIXES):
        from .runtime.tensorrt_build import read_sidecar

        profile = read_sidecar(model_path).get("profile") or {}
        lo, hi = profile.get("min_batch"), profile.get("max_batch")
        outside = [b for b in batch_sizes if lo is not None and hi is not None and not lo <= b <= hi]
        if outside:
            raise BagcamsError(
                f"--batch-sizes {','.join(map(str, outside))}: {model_path} was built for batch {lo}..{hi}; "
                "drop them or rebuild with build-engine --min-batch/--max-batch"
            )
        if "tensorrt-cam" in engines and "cam" not in info.outputs:
            raise BagcamsError(
                f"backend tensorrt-cam reads the engine's cam output, and {model_path} has none (exported with "
                "--no-cam): use tensorrt, which makes the map with the CUDA kernel"
            )


def _input_size(info, input_size: int | tuple[int, int] | None, model_path: str) -> tuple[tuple[int, int], str]:
    """(H, W) to benchmark at, and where it came from (:func:`~bagcams_deploy.runtime.base.run_input_size`,
    the rule ``localize``, ``verify`` and ``evaluate`` share)."""
    from .runtime.base import run_input_size

    return run_input_size(info, input_size, model_path)


def default_backends(model_path: str | Path, checkpoint: str | Path | None) -> list[str]:
    """What ``bench`` runs when no backends are named: the model's own runtime (``ort-cpu`` for a graph,
    ``tensorrt`` for a plan), after the two torch backends when a checkpoint is there to run them: the
    speed-ups are against ``torch-reference``, and without a checkpoint there is nothing for it to run."""
    from .runtime.registry import PLAN_SUFFIXES

    own = "tensorrt" if str(model_path).lower().endswith(PLAN_SUFFIXES) else "ort-cpu"
    return ["torch-reference", "torch-analytic", own] if checkpoint else [own]


def _count(value: object, name: str, least: int) -> int:
    """A whole number >= ``least`` (warmup, iters), refused before minutes of runs rather than after."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise BagcamsError(f"{name} must be an integer >= {least}, got {value!r}")
    return int(value)


def run_benchmark(
    model_path: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    backends: str | list[str],
    batch_sizes: int | list[int],
    warmup: int = 3,
    iters: int = 20,
    threads: int | None = None,
    exact: bool = False,
    device: str = "cpu",
    include_floor: bool = True,
    timeout: float = 1800.0,
    on_row: Callable[[BenchRow], None] | None = None,
    input_size: int | tuple[int, int] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark ``backends`` at each batch size; returns a JSON-able report (rows + machine info).

    Everything that can be checked is checked before the first run; a failure during the runs raises
    :class:`BenchmarkIncomplete` carrying the rows measured so far. ``threads`` None leaves each runtime
    its default (ONNX Runtime, torch and OpenVINO all take the physical cores), which the report says.
    ``backends`` may be one name and ``batch_sizes`` one int. The torch backends need ``checkpoint``;
    without one the forward-only floor (the checkpoint's classifier) is skipped, and the report says so.

    Each run is a spawned process, which re-imports the calling script: a script must call this
    under ``if __name__ == "__main__":`` (else it is refused with one line saying so)."""
    _refuse_from_spawned_bootstrap()
    from .export.onnx_export import export_forward_onnx
    from .runtime.registry import ALL_BACKENDS, _checked_threads

    note = on_note or (lambda text: None)
    if isinstance(backends, str):  # one name, not a sequence of one-letter names
        backends = [backends]
    try:
        backends = list(backends)
    except TypeError:
        backends = [backends]  # refused just below, by what it is
    if not backends or not all(isinstance(b, str) for b in backends):
        raise BagcamsError(f"backends must be backend names, got {backends!r}; valid: {', '.join(ALL_BACKENDS)}")
    if isinstance(batch_sizes, int | np.integer):
        batch_sizes = [batch_sizes]
    try:
        batch_sizes = list(dict.fromkeys(batch_sizes))  # a size twice would run twice and mix up the ratios
    except TypeError:  # not iterable, or unhashable items
        raise BagcamsError(f"batch sizes must be positive integers, got {batch_sizes!r}") from None
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1 for b in batch_sizes):
        raise BagcamsError(f"batch sizes must be positive integers, got {batch_sizes}")
    batch_sizes = [int(b) for b in batch_sizes]
    warmup, iters = _count(warmup, "warmup", 0), _count(iters, "iters", 1)
    threads = _checked_threads(threads) or None  # 0 is the runtimes' default too
    torch_names = [b for b in backends if b.startswith("torch")]
    if torch_names and not checkpoint:
        alone = ",".join(default_backends(model_path, None))
        raise BagcamsError(
            f"{', '.join(torch_names)} {'runs' if len(torch_names) == 1 else 'run'} the PyTorch model: give its "
            f"checkpoint (--checkpoint CKPT), or benchmark the graph backends alone (--backends {alone})"
        )
    check_backends_can_run(backends, model_path, batch_sizes, device)
    from .runtime.open import load_checkpoint_for, read_model_info

    info = read_model_info(model_path)
    size, size_source = _input_size(info, input_size, model_path)
    note(f"input size {size[0]}x{size[1]} ({size_source})")
    where = {b: (backend_device(b, device), backend_precision(b, info.precision)) for b in backends}
    comparable = [b for b, (dev, prec) in where.items() if floor_mismatch(dev, prec) is None]
    floor: dict = {"runtime": "onnxruntime CPUExecutionProvider", "device": FLOOR_DEVICE,
                   "precision": FLOOR_PRECISION, "exact": exact}  # fmt: skip
    if not include_floor:
        floor = {"skipped": "--no-floor"}
    elif not checkpoint:  # the floor is the checkpoint's own classifier; a graph alone is still timed
        floor = {"skipped": "no checkpoint (the floor is the checkpoint's classifier)"}
    elif not comparable:
        floor = {"skipped": "no backend runs on the CPU in float32, which is where the floor runs: "
                 + "; ".join(f"{b} {floor_mismatch(*w)}" for b, w in where.items())}  # fmt: skip
        note(f"forward-only floor skipped: {floor['skipped']}")
    plan = None
    if str(model_path).lower().endswith((".plan", ".engine")):
        from .runtime.tensorrt_build import read_sidecar

        record = read_sidecar(model_path)
        plan = {"profile": record.get("profile"), "built_with": record.get("built_with")}
    rows: list[BenchRow] = []

    def report(complete: bool, error: str | None = None) -> dict:
        out = {
            "complete": complete,
            "bagcams_deploy": _version(),
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "model": model_path,
            "checkpoint": checkpoint,
            "method": info.method,
            "target_layer": info.target_layer,
            "precision": info.precision,
            "input_size": list(size),
            "input_size_source": size_source,
            "backends": list(backends),
            "batch_sizes": batch_sizes,
            "threads": threads,
            "threads_source": "--threads" if threads else "each runtime's default (its count of physical cores)",
            "warmup": warmup,
            "iters": iters,
            "exact": exact,
            "device": device,
            "timed_region": TIMED_REGION,
            "images_per_s": "batch / p50",
            "floor": floor,
            "plan": plan,
            "machine": machine_info(),
            "rows": [asdict(r) for r in rows],
            "ratios": ratios([asdict(r) for r in rows]),
        }
        if error is not None:
            out["error"] = error
        return out

    with tempfile.TemporaryDirectory() as tmp:
        floor_path = None
        names = list(backends)
        if "skipped" not in floor:
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
                try:
                    res = _run_isolated(job, timeout)
                    if not res["ok"]:
                        raise BagcamsError(f"benchmark of {name} at batch {batch} failed: {res['error']}")
                except BagcamsError as exc:
                    raise BenchmarkIncomplete(str(exc), report(False, str(exc))) from None
                t = [v * 1000 for v in res["times"]]
                dev, prec = where.get(name, (FLOOR_DEVICE, FLOOR_PRECISION))
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
                    device=dev,
                    precision=prec,
                )
                rows.append(row)
                if on_row:
                    on_row(row)
    return report(True)


def _version() -> str:
    from . import __version__

    return __version__


def ratios(rows: list[dict]) -> dict:
    """Speed-ups against torch-reference and overheads against the forward-only floor, per batch size.
    A row that runs elsewhere than the floor (another device or precision) gets ``x_forward_only``
    null and the reason, rather than a ratio of two different things."""
    out: dict = {}
    by = {(r["backend"], r["batch_size"]): r for r in rows}
    for (name, batch), r in by.items():
        ref = by.get(("torch-reference", batch))
        floor = by.get((FLOOR, batch))
        entry: dict = {}
        if ref and name != "torch-reference":
            entry["speedup_vs_torch_reference"] = ref["p50_ms"] / r["p50_ms"]
        if floor and name != FLOOR:
            why = floor_mismatch(r.get("device", FLOOR_DEVICE), r.get("precision", FLOOR_PRECISION))
            entry["x_forward_only"] = None if why else r["p50_ms"] / floor["p50_ms"]
            if why:
                entry["x_forward_only_not_computed"] = why
        if entry:
            out[f"{name}@{batch}"] = entry
    return out


def save_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False))
    return path
