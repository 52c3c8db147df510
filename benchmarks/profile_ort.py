"""Where ONNX Runtime spends the time of the analytic graph: per operator type, from its own profiler.

ResNet-50 (large map, random weights), 224x224, BagCAMs, batch 1, 2 threads, the CPU session options of
``ort-cpu``; the analytic graph and the forward-only classifier graph side by side.

    python benchmarks/profile_ort.py [--layer layer3] [--runs 6] [--out benchmarks/results]

Writes ``ort_profile_<layer>.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path


def profile(graph: str, feed: dict, runs: int, threads: int) -> dict[str, float]:
    """Mean milliseconds per run by operator type (kernel time), the warm-up run left out."""
    import onnxruntime as ort

    opts = ort.SessionOptions()  # as ort-cpu's plain_session, plus the profiler
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = False
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "bagcams_ort_profile")
    opts.log_severity_level = 3
    session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, feed)
    trace_file = Path(session.end_profiling())
    trace = json.loads(trace_file.read_text())
    trace_file.unlink()
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    after_warmup = model_runs[0][1]
    by_op: collections.Counter = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time") and event["ts"] > after_warmup:
            by_op[event["args"]["op_name"]] += event["dur"]
    return {op: us / runs / 1e3 for op, us in by_op.most_common()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layer", default="layer3")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from bagcams_deploy.export.onnx_export import export_forward_onnx, export_onnx
    from bagcams_deploy.models import build_model

    torch.set_num_threads(args.threads)
    model = build_model("resnet50", 200, seed=0, randomize_batchnorm=True)
    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    report: dict = {"layer": args.layer, "runs": args.runs, "threads": args.threads, "graphs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        analytic, forward = str(Path(tmp) / "a.onnx"), str(Path(tmp) / "f.onnx")
        export_onnx(model, analytic, method="bagcams", target_layer=args.layer)
        export_forward_onnx(model, forward)
        for name, path, feed in (
            ("analytic", analytic, {"image": image, "class_id": np.array([-1])}),
            ("forward-only", forward, {"image": image}),
        ):
            ms = profile(path, feed, args.runs, args.threads)
            total = sum(ms.values())
            report["graphs"][name] = {"total_ms": total, "by_op_ms": ms}
            print(f"{name}: {total:.1f} ms kernel time per run")
            for op, v in list(ms.items())[:8]:
                print(f"  {op:<16} {v:7.1f} ms  {100 * v / total:5.1f}%")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ort_profile_{args.layer}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
