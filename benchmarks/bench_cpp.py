"""CPU latency of the exported graph: the C++ example (OpenVINO) vs Python ``ov-cpu`` vs ``ort-cpu``.

ResNet-50 (random weights, 200 classes), 224x224, BagCAMs at layer3. Each runtime gets the same
thread count and the same pre-processed batch; each times only its own inference call (the C++
program prints its per-batch ``request.infer()`` times, the Python backends their
``last_inference_time``), after warm-up, and the median is reported. Maps are compared with
``ort-cpu`` as the reference.

    python benchmarks/bench_cpp.py --name <machine> [--threads 2] [--iters 3] [--rounds 3]

writes benchmarks/results/cpp_<name>.json and benchmarks/results/cpu_runtimes_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SIZE = 224


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
        return (out.stdout or out.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def environment(threads: int) -> dict:
    """What the numbers depend on: CPU, cores the process may use, library and compiler versions."""
    import onnxruntime
    import openvino
    import PIL
    import torch

    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "os": platform.platform(),
        "python": platform.python_version(),
        "openvino": openvino.get_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "cxx": _first_line([os.environ.get("CXX", "c++"), "--version"]),
        "cmake": _first_line(["cmake", "--version"]),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def build_example(build: Path) -> Path:
    """Configure and build examples/cpp exactly as its README says."""
    prefix = subprocess.run(
        [sys.executable, "-m", "bagcams_deploy.cpp_support", "--cmake-prefix"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        ["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={prefix}"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    subprocess.run(["cmake", "--build", str(build), "-j2"], check=True, capture_output=True, text=True)
    return build / "bagcams_localize"


def write_images(folder: Path, n: int) -> list[Path]:
    """Smooth random scenes at assorted sizes (PNG), so resizing is part of the pipeline."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(180, 480)), int(rng.integers(180, 480))
        small = rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int32)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def time_backend(backend, x: np.ndarray, warmup: int, iters: int) -> tuple[list[float], dict[str, np.ndarray]]:
    out: dict[str, np.ndarray] = {}
    for _ in range(warmup):
        backend.infer(x)
    times = []
    for _ in range(iters):
        out = backend.infer(x)
        times.append(backend.last_inference_time * 1e3)
    return times, out


def map_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Worst case over the batch of the parity metrics used in the tests."""
    pear, off, iou = [], [], []
    for r, g in zip(ref, got, strict=True):
        r64, g64 = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
        pear.append(float(np.corrcoef(r64, g64)[0, 1]))
        off.append(float((np.abs(r64 - g64) > 0.01).mean()))
        a, b = r >= 0.5, g >= 0.5
        union = np.logical_or(a, b).sum()
        iou.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    return {"min_pearson": min(pear), "max_frac_off_0.01": max(off), "min_iou_0.5": min(iou)}


def summary(times: list[float]) -> dict:
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "times_ms": [round(t, 2) for t in times],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=platform.node() or "cpu", help="suffix of the result files")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3, help="timed inferences per runtime, batch and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the runtimes")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the graph and build here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model
    from bagcams_deploy.preprocessing import load_image, preprocess
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend
    from bagcams_deploy.runtime.ort_backend import OrtBackend

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_cpp_"))
    work.mkdir(parents=True, exist_ok=True)
    graph = work / "resnet50_bagcams_layer3_224.onnx"
    if not graph.is_file():
        print("exporting ResNet-50 (random weights) ...", flush=True)
        model = build_model("resnet50", 200, seed=0, randomize_batchnorm=True)
        export_onnx(model, graph, method="bagcams", target_layer="layer3", input_size=SIZE)
    print("building examples/cpp ...", flush=True)
    exe = build_example(work / "build")
    images = write_images(work, max(batches))
    x_all = preprocess([load_image(p) for p in images], (SIZE, SIZE)).numpy()

    env = environment(args.threads)

    def run_cpp(b: int) -> list[float]:
        out_dir = work / f"out_b{b}"
        shutil.rmtree(out_dir, ignore_errors=True)
        run = subprocess.run(
            [str(exe), "--model", str(graph), "--out", str(out_dir), "--threads", str(args.threads),
             "--batch-size", str(b), "--warmup", str(args.warmup), "--repeat", str(args.iters), "--quiet",
             *map(str, images[:b])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if run.returncode != 0:
            raise SystemExit(f"bagcams_localize failed: {run.stderr.strip()}")
        return next(json.loads(line[6:]) for line in run.stdout.splitlines() if line.startswith("bench "))["times_ms"]

    # Rounds interleave the runtimes so that load from other processes spreads over all of them.
    backends = {
        b: (OpenVINOBackend(str(graph), threads=args.threads), OrtBackend(str(graph), threads=args.threads))
        for b in batches
    }
    times: dict[tuple[int, str], list[float]] = {(b, k): [] for b in batches for k in ("cpp", "ov", "ort")}
    outputs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for rnd in range(args.rounds):
        for b in batches:
            x = x_all[:b]
            times[b, "cpp"] += run_cpp(b)
            ov, ort = backends[b]
            t, outputs[b, "ov"] = time_backend(ov, x, args.warmup, args.iters)
            times[b, "ov"] += t
            t, outputs[b, "ort"] = time_backend(ort, x, args.warmup, args.iters)
            times[b, "ort"] += t
            so_far = ", ".join(f"{k} {statistics.median(times[b, k]):.0f} ms" for k in ("cpp", "ov", "ort"))
            print(f"round {rnd + 1}/{args.rounds} batch {b}: medians so far {so_far}", flush=True)
    rows = []
    for b in batches:
        ov_out, ort_out = outputs[b, "ov"], outputs[b, "ort"]
        cpp_maps = np.stack([np.load(work / f"out_b{b}" / f"{p.stem}.npy") for p in images[:b]])
        ref = ort_out["cam"][:, 0]
        grad_rel = float(
            np.linalg.norm(ov_out["gradients"] - ort_out["gradients"]) / np.linalg.norm(ort_out["gradients"])
        )
        rows.append(
            {
                "batch": b,
                "cpp_ov": summary(times[b, "cpp"]),
                "python_ov_cpu": summary(times[b, "ov"]),
                "python_ort_cpu": summary(times[b, "ort"]),
                "cpp_vs_ort_maps": map_agreement(ref, cpp_maps),
                "ov_vs_ort_maps": map_agreement(ref, ov_out["cam"][:, 0]),
                "ov_vs_ort_gradients_rel_l2": grad_rel,
                "same_classes": bool(np.array_equal(ov_out["class_id_used"], ort_out["class_id_used"])),
            }
        )

    setup = {
        "model": "resnet50, 200 classes, random weights (seed 0, randomised BN)",
        "method": "bagcams",
        "target_layer": "layer3",
        "input": f"{SIZE}x{SIZE}",
        "warmup": args.warmup,
        "iters_per_round": args.iters,
        "rounds": args.rounds,
        "timing": (
            "per-call inference times pooled over interleaved rounds (median and min); "
            "pre-processing, model compilation and output files excluded"
        ),
    }
    env["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    fastest = {
        r["batch"]: min(("cpp_ov", "python_ov_cpu", "python_ort_cpu"), key=lambda k: r[k]["median_ms"]) for r in rows
    }
    (RESULTS / f"cpp_{args.name}.json").write_text(
        json.dumps(
            {
                "benchmark": "C++ example (OpenVINO) vs Python ov-cpu: the Python layer's cost",
                "setup": setup,
                "environment": env,
                "results": [{k: r[k] for k in ("batch", "cpp_ov", "python_ov_cpu", "cpp_vs_ort_maps")} for r in rows],
            },
            indent=2,
        )
        + "\n"
    )
    (RESULTS / f"cpu_runtimes_{args.name}.json").write_text(
        json.dumps(
            {
                "benchmark": "CPU runtimes on the exported graph: OpenVINO (C++, Python) vs ONNX Runtime",
                "setup": setup,
                "environment": env,
                "fastest_by_batch": fastest,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(json.dumps({"fastest_by_batch": fastest, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
