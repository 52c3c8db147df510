"""OpenVINO's CPU runtime cache on a dynamic-size graph: memory growth and time, by cache capacity.

The CPU plugin keeps compiled kernels per input shape; with its default capacity a server that sees
many image sizes grows without bound. Each capacity runs in a fresh process (clean peak RSS): a
ResNet-18 BagCAMs graph, dynamic size, ``--calls`` calls at random sizes 32..128 and batch 1..2,
then a fixed-shape latency at batch 4, 64x64. ``ov-cpu`` uses ``OV_RUNTIME_CACHE_ENTRIES``.

    python benchmarks/ov_runtime_cache.py [--calls 500] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CAPACITIES = ("default", "0", "512")  # the last is what ov-cpu ships


def rss_mb() -> float:
    """Resident memory now (not the peak, which importing alone can set)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(graph: str, config: dict, calls: int) -> dict:
    """Runs in its own process, without torch: only OpenVINO's memory is measured."""
    import time

    import numpy as np
    import openvino as ov

    capacity = str(config.get("CPU_RUNTIME_CACHE_CAPACITY", "default"))
    core = ov.Core()
    request = core.compile_model(core.read_model(graph), "CPU", config).create_infer_request()
    rng = np.random.default_rng(0)
    start_rss = rss_mb()
    peak = start_rss
    t0 = time.perf_counter()
    for _ in range(calls):
        h, w = (int(v) for v in rng.integers(32, 129, 2))
        n = int(rng.integers(1, 3))
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        request.infer({"image": x, "class_id": np.full(n, -1, np.int64)})
        peak = max(peak, rss_mb())
    varying = time.perf_counter() - t0
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    ids = np.full(4, -1, np.int64)
    for _ in range(5):
        request.infer({"image": x, "class_id": ids})
    t0 = time.perf_counter()
    for _ in range(40):
        request.infer({"image": x, "class_id": ids})
    fixed_ms = (time.perf_counter() - t0) / 40 * 1000
    return {"capacity": capacity, "calls": calls, "start_rss_mb": round(start_rss, 1),
            "peak_rss_mb": round(peak, 1), "varying_sizes_s": round(varying, 2),
            "fixed_b4_ms": round(fixed_ms, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--child", nargs=2, metavar=("GRAPH", "CONFIG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1]), args.calls)))
        return
    from bagcams_deploy.bench import machine_info
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model
    from bagcams_deploy.runtime.openvino_backend import OV_RUNTIME_CACHE_ENTRIES, compile_config

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        graph = str(Path(tmp) / "dyn.onnx")
        model = build_model("resnet18", 7, seed=0, randomize_batchnorm=True)
        export_onnx(model, graph, method="bagcams", target_layer="layer3", input_size=64, dynamic_size=True)
        for capacity in CAPACITIES:
            config = compile_config(2)  # what ov-cpu compiles with, but for the capacity
            del config["CPU_RUNTIME_CACHE_CAPACITY"]
            if capacity != "default":
                config["CPU_RUNTIME_CACHE_CAPACITY"] = int(capacity)
            cmd = [sys.executable, __file__, "--calls", str(args.calls), "--child", graph, json.dumps(config)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine_info(), "shipped_capacity": OV_RUNTIME_CACHE_ENTRIES, "rows": rows}
    (args.out / "ov_runtime_cache.json").write_text(json.dumps(doc, indent=2) + "\n")
    head = f"| capacity | RSS after load MB | peak RSS MB | growth MB | {args.calls} calls, any size, s | b4 ms |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        growth = r["peak_rss_mb"] - r["start_rss_mb"]
        lines.append(f"| {r['capacity']} | {r['start_rss_mb']:.0f} | {r['peak_rss_mb']:.0f} | {growth:.0f} | "
                     f"{r['varying_sizes_s']:.1f} | {r['fixed_b4_ms']:.1f} |")  # fmt: skip
    (args.out / "ov_runtime_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
