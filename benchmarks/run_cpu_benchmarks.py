"""The project's published CPU numbers: DA-WSOL ResNet-50 (large map), 224x224, BagCAMs.

For target layers layer3 and layer4: export time and peak RSS (in a fresh process), then latency,
throughput and peak memory of torch-reference (autograd with parameter gradients, as the published
code), torch-analytic, ort-cpu (and ov-cpu when openvino is installed) and the forward-only ONNX
Runtime floor, at batch 1 and 8, all with the same thread count, one script, one machine.

    python benchmarks/run_cpu_benchmarks.py [--threads 2] [--iters 10] [--out benchmarks/results]

Writes ``cpu_resnet50.json`` and ``cpu_resnet50.md`` (the README's table) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from pathlib import Path


def _export_child(ckpt: str, out: str, layer: str, results, threads: int = 2) -> None:
    """Export in a fresh process (its peak RSS is the export's own) with the benchmark's thread count;
    an error goes back as one line, so the parent fails at once instead of waiting for a result."""
    try:
        import torch

        torch.set_num_threads(threads)
        from bagcams_deploy.bench import peak_rss_mb
        from bagcams_deploy.export.onnx_export import export_onnx
        from bagcams_deploy.models import load_model

        t0 = time.perf_counter()
        r = export_onnx(load_model(ckpt), out, method="bagcams", target_layer=layer)
        seconds = time.perf_counter() - t0
        results.put({"seconds": seconds, "trace_and_check_seconds": r.seconds, "peak_rss_mb": peak_rss_mb(),
                     "bytes": r.size_bytes, "threads": torch.get_num_threads()})  # fmt: skip
    except Exception as exc:
        results.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


def measure_export(ckpt: str, out: str, layer: str, threads: int = 2, timeout: float = 900.0) -> dict:
    """Export time and peak RSS of ``layer``'s graph, measured in a spawned process. Polls the child,
    so a failed or crashed export is reported at once with its error (not after ``timeout``)."""
    from bagcams_deploy.errors import BagcamsError

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_export_child, args=(ckpt, out, layer, q, threads))
    p.start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise BagcamsError(f"export of {layer}: the export process died (exit code {p.exitcode})") from None
            if time.monotonic() > deadline:
                p.kill()
                raise BagcamsError(f"export of {layer} timed out after {timeout:.0f}s") from None
    p.join()
    if "error" in res:
        raise BagcamsError(f"export of {layer} failed: {res['error']}")
    return res


# (label, layer, batch, ratio key or "peak_rss_mb", bar, "min" | "max"): the goals
GOALS = [
    ("speed-up vs torch-reference, layer3, batch 1", "layer3", 1, "speedup_vs_torch_reference", 2.5, "min"),
    ("speed-up vs torch-reference, layer3, batch 8", "layer3", 8, "speedup_vs_torch_reference", 3.0, "min"),
    ("x forward-only latency, layer3, batch 1", "layer3", 1, "x_forward_only", 1.7, "max"),
    ("x forward-only latency, layer3, batch 8", "layer3", 8, "x_forward_only", 1.7, "max"),
    ("x forward-only latency, layer4, batch 1", "layer4", 1, "x_forward_only", 1.15, "max"),
    ("x forward-only latency, layer4, batch 8", "layer4", 8, "x_forward_only", 1.15, "max"),
]
GOAL_BACKENDS = ("ort-cpu", "ov-cpu")
PEAK_RSS_BAR_MB = 1024
EXPORT_BARS = (60.0, 4096.0)  # seconds, peak RSS MB


def _ratio_cell(value: float, bar: float, kind: str) -> str:
    """``1.68x ✓``; three decimals when two would hide the verdict (1.7034 is not <= 1.7)."""
    ok = value >= bar if kind == "min" else value <= bar
    text = f"{value:.2f}"
    for decimals in (3, 4, 5, 6):
        if float(text) != bar or value == bar:
            break
        text = f"{value:.{decimals}f}"
    return f"{text}x {'✓' if ok else '✗'}"


def goal_table(report: dict) -> str:
    """The goals with their verdicts, computed from the measurements (the README's first table)."""
    backends = [b for b in GOAL_BACKENDS if any(r["backend"] == b for rep in report["layers"].values()
                                                for r in rep["rows"])]  # fmt: skip
    lines = [
        f"| goal (ResNet-50, 224, BagCAMs, {report['threads']} threads) | target | " + " | ".join(backends) + " |",
        "|---|---|" + "---:|" * len(backends),
    ]
    for label, layer, batch, key, bar, kind in GOALS:
        if layer not in report["layers"]:
            continue
        ratios = report["layers"][layer]["ratios"]
        cells = [_ratio_cell(ratios[f"{b}@{batch}"][key], bar, kind)
                 if ratios.get(f"{b}@{batch}", {}).get(key) is not None else "-" for b in backends]  # fmt: skip
        lines.append(f"| {label} | {'>=' if kind == 'min' else '<='} {bar}x | " + " | ".join(cells) + " |")
    if "layer3" in report["layers"]:
        rows = {(r["backend"], r["batch_size"]): r for r in report["layers"]["layer3"]["rows"]}
        cells = []
        for b in backends:
            r = rows.get((b, 8))
            ok = r is not None and r["peak_rss_mb"] < PEAK_RSS_BAR_MB
            cells.append("-" if r is None else f"{r['peak_rss_mb']:.0f} MB {'✓' if ok else '✗'}")
        lines.append(
            f"| peak RSS, layer3, batch 8 (whole process) | < {PEAK_RSS_BAR_MB} MB | " + " | ".join(cells) + " |"
        )
    if "layer3" in report["export"]:
        e = report["export"]["layer3"]
        ok = e["seconds"] < EXPORT_BARS[0] and e["peak_rss_mb"] < EXPORT_BARS[1]
        cell = f"{e['seconds']:.1f} s, {e['peak_rss_mb']:.0f} MB {'✓' if ok else '✗'}"
        bars = f"< {EXPORT_BARS[0]:.0f} s, < {EXPORT_BARS[1] / 1024:.0f} GB"
        lines.append(f"| export ResNet-50 layer3 | {bars} | {cell} |" + " |" * (len(backends) - 1))
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        goal_table(report),
        f"Machine: {m.get('cpu', '?')}, {m['affinity']} cores, threads={report['threads']}; "
        f"torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}, openvino {m.get('openvino', '-')}",
        "",
        "| target | backend | batch | p50 ms | p90 ms | img/s | peak RSS MB | vs torch-reference | x forward-only |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer, rep in report["layers"].items():
        for r in rep["rows"]:
            ratio = rep["ratios"].get(f"{r['backend']}@{r['batch_size']}", {})
            sp, xf = ratio.get("speedup_vs_torch_reference"), ratio.get("x_forward_only")
            lines.append(
                f"| {layer} | {r['backend']} | {r['batch_size']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
                f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {f'{sp:.2f}x' if sp else '-'} | "
                f"{f'{xf:.2f}x' if xf else '-'} |"
            )
    lines += ["", "| target | export s | export peak RSS MB | graph MB |", "|---|---:|---:|---:|"]
    for layer, e in report["export"].items():
        lines.append(f"| {layer} | {e['seconds']:.1f} | {e['peak_rss_mb']:.0f} | {e['bytes'] / 1e6:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from bagcams_deploy.errors import BagcamsError

    try:
        return run()
    except BagcamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--layers", default="layer3,layer4")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        report = json.loads((out / "cpu_resnet50.json").read_text())
        (out / "cpu_resnet50.md").write_text(markdown(report))
        print(markdown(report))
        return 0

    from bagcams_deploy.bench import machine_info, run_benchmark
    from bagcams_deploy.models import build_model, save_checkpoint

    backends = ["torch-reference", "torch-analytic", "ort-cpu"]
    try:
        import openvino  # noqa: F401

        backends.append("ov-cpu")
    except ImportError:
        pass
    sizes = [int(v) for v in args.batch_sizes.split(",")]
    report: dict = {
        "threads": args.threads,
        "iters": args.iters,
        "machine": machine_info(),
        "layers": {},
        "export": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = str(
            save_checkpoint(build_model("resnet50", 200, seed=0, randomize_batchnorm=True), Path(tmp) / "r50.pth")
        )
        for layer in args.layers.split(","):
            graph = str(Path(tmp) / f"r50_{layer}.onnx")
            report["export"][layer] = measure_export(ckpt, graph, layer, args.threads)
            print(f"export {layer}: {report['export'][layer]['seconds']:.1f}s, "
                  f"{report['export'][layer]['peak_rss_mb']:.0f} MB peak", flush=True)  # fmt: skip

            def show(r, layer=layer):
                print(f"  {layer} {r.backend:<18} batch {r.batch_size:<2} p50 {r.p50_ms:8.1f} ms  "
                      f"peak {r.peak_rss_mb:6.0f} MB", flush=True)  # fmt: skip

            report["layers"][layer] = run_benchmark(
                graph,
                ckpt,
                backends,
                sizes,
                warmup=args.warmup,
                iters=args.iters,
                threads=args.threads,
                on_row=show,
            )
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_resnet50.json").write_text(json.dumps(report, indent=2))
    (out / "cpu_resnet50.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
