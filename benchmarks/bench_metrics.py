#!/usr/bin/env python3
"""Benchmark the fast box-metric path against the straightforward per-threshold loop (CPU only).

Both run in one process on the same seeded random maps (224x224, several gaussian blobs each, min-max
normalised to [0, 1]) with 1-3 GT boxes per map; the per-threshold counts (``num_correct``) and the
metric values must be bit-identical, otherwise the script exits with status 1. It prints the timings
and the speed-up and writes them, with numpy/opencv versions and CPU info, to
``benchmarks/results/metrics_cpu<N>.json``.

    python benchmarks/bench_metrics.py                       # 200 maps, interval 0.001, multi-contour
    python benchmarks/bench_metrics.py --maps 20 --interval 0.01 --single-contour
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bagcams_deploy.evaluation import BoxEvaluator  # noqa: E402

SIZE = 224


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--maps", type=int, default=200, help="number of random score maps")
    p.add_argument("--interval", type=float, default=0.001, help="CAM threshold interval")
    p.add_argument("--single-contour", action="store_true", help="largest contour only (MaxBoxAcc v1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/...)")
    return p.parse_args(argv)


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """A smooth map of 2-6 gaussian blobs plus faint noise; 1-3 GT boxes around (jittered) blobs, so
    the accuracies are in a realistic range; a random top-1 outcome."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    scoremap = np.zeros((SIZE, SIZE))
    blobs = []
    for _ in range(rng.integers(2, 7)):
        cx, cy = rng.uniform(0, SIZE, 2)
        sx, sy = rng.uniform(8, 50, 2)
        blob = np.exp(-((xx - cx) ** 2 / (2 * sx**2) + (yy - cy) ** 2 / (2 * sy**2)))
        scoremap += rng.uniform(0.3, 1.0) * blob
        blobs.append((cx, cy, sx, sy))
    scoremap += 0.02 * cv2.GaussianBlur(rng.random((SIZE, SIZE)), (0, 0), 3)
    scoremap = (scoremap - scoremap.min()) / (scoremap.max() - scoremap.min())
    boxes = []
    for cx, cy, sx, sy in blobs[: rng.integers(1, 4)]:
        k = rng.uniform(1.0, 2.5, 4)
        x0, y0 = max(int(cx - k[0] * sx), 0), max(int(cy - k[1] * sy), 0)
        x1, y1 = min(int(cx + k[2] * sx), SIZE - 1), min(int(cy + k[3] * sy), SIZE - 1)
        boxes.append((min(x0, x1), min(y0, y1), x1, y1))
    return scoremap.astype(np.float32), np.array(boxes), bool(rng.random() < 0.7)


def cpu_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "cv2_threads": cv2.getNumThreads()}


def run(cases, interval: float, multi_contour: bool, fast: bool) -> tuple[BoxEvaluator, float]:
    ev = BoxEvaluator(interval=interval, multi_contour=multi_contour, fast=fast)
    start = time.perf_counter()
    for scoremap, boxes, correct in cases:
        ev.accumulate(scoremap, boxes, pred_correct=correct)
    return ev, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    cases = [random_case(rng) for _ in range(args.maps)]
    multi = not args.single_contour
    run(cases[:2], args.interval, multi, True)  # warm-up (imports, allocator)
    fast_ev, fast_s = run(cases, args.interval, multi, True)
    ref_ev, ref_s = run(cases, args.interval, multi, False)
    identical = (
        np.array_equal(fast_ev.num_correct, ref_ev.num_correct)
        and np.array_equal(fast_ev.num_correct_top1, ref_ev.num_correct_top1)
        and fast_ev.compute().to_dict() == ref_ev.compute().to_dict()
    )
    metrics = fast_ev.compute()
    result = {
        "benchmark": "box metrics: fast (one findContours per distinct binarisation) vs per-threshold loop",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "maps": args.maps,
        "map_size": SIZE,
        "interval": args.interval,
        "num_thresholds": len(fast_ev.thresholds),
        "multi_contour": multi,
        "seed": args.seed,
        "reference_s": round(ref_s, 4),
        "fast_s": round(fast_s, 4),
        "reference_ms_per_map": round(ref_s * 1e3 / args.maps, 3),
        "fast_ms_per_map": round(fast_s * 1e3 / args.maps, 3),
        "speedup": round(ref_s / fast_s, 2),
        "identical": identical,
        "metrics": metrics.to_dict(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "python": platform.python_version(),
        "cpu": cpu_info(),
    }
    print(
        f"{args.maps} maps, {len(fast_ev.thresholds)} thresholds, multi_contour={multi}: "
        f"reference {ref_s:.2f} s ({result['reference_ms_per_map']} ms/map), "
        f"fast {fast_s:.2f} s ({result['fast_ms_per_map']} ms/map), speed-up x{result['speedup']}, "
        f"identical={identical}"
    )
    out = args.out or ROOT / "benchmarks" / "results" / f"metrics_cpu{os.cpu_count()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
