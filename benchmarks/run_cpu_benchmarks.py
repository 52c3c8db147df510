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
import sys
import tempfile
import time
from pathlib import Path


def _export_child(ckpt: str, out: str, layer: str, queue) -> None:
    import torch

    torch.set_num_threads(2)
    from bagcams_deploy.bench import peak_rss_mb
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import load_model

    t0 = time.perf_counter()
    r = export_onnx(load_model(ckpt), out, method="bagcams", target_layer=layer)
    queue.put({"seconds": time.perf_counter() - t0, "trace_and_check_seconds": r.seconds,
               "peak_rss_mb": peak_rss_mb(), "bytes": r.size_bytes})  # fmt: skip


def measure_export(ckpt: str, out: str, layer: str) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_export_child, args=(ckpt, out, layer, q))
    p.start()
    res = q.get(timeout=900)
    p.join()
    return res


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--layers", default="layer3,layer4")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

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
            report["export"][layer] = measure_export(ckpt, graph, layer)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu_resnet50.json").write_text(json.dumps(report, indent=2))
    (out / "cpu_resnet50.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
