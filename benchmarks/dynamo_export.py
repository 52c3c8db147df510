"""The torch.export-based ONNX exporter (``--exporter dynamo``) against the TorchScript one.

Each export runs in its own process (so that its peak RSS is its own): export time, file size, node
count, peak RSS and ONNX Runtime's layout changes (``ReorderInput``/``ReorderOutput``) per exporter;
then both graphs run on ONNX Runtime's CPU provider on the same smooth random images, at several
batch sizes (and, for ``--dynamic-size`` graphs, several input sizes), and every output is compared:
max |dynamo - torchscript| per output, and each against the float32 PyTorch analytic network.
Needs onnxscript (``pip install 'bagcams-deploy[dynamo]'``).

    python benchmarks/dynamo_export.py                   # the small matrix (random weights, test sizes)
    python benchmarks/dynamo_export.py --full-size       # ResNet-50 / Inception-v3 at 224, 200 classes
    python benchmarks/dynamo_export.py --only inception_v3/bagcams --exclude bf16   # some cases

Writes ``benchmarks/results/dynamo_export[_full][_partial].{json,md}`` (``_partial`` with --only/--exclude).
bf16 graphs are exported and checked but not run: ONNX Runtime's CPU provider has no bfloat16 Conv.
Where a ReLU pre-activation sits within rounding of 0, the two graphs (like either graph and PyTorch)
take a different mask there: gradients then differ by up to ~1e-2 of their maximum, maps by ~1e-3.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = {"resnet50": 64, "resnet18": 64, "inception_v3": 96}
LAYERS = {"resnet50": "layer2", "resnet18": "layer2", "inception_v3": "Mixed_6e"}  # a second, deeper target
METHODS = ("bagcams", "gradcam", "gradcampp", "pcs", "cam")


def small_cases() -> list[dict]:
    """Every method on ResNet-50 and Inception-v3 (default target), a deeper target, dynamic H/W, fp16/bf16."""
    cases = []
    for arch in ("resnet50", "inception_v3"):
        size = SMALL[arch]
        cases += [{"arch": arch, "method": method, "layer": None, "size": size} for method in METHODS]
        cases.append({"arch": arch, "method": "bagcams", "layer": LAYERS[arch], "size": size})
        for method in ("bagcams", "cam"):
            cases.append({"arch": arch, "method": method, "layer": None, "size": size, "dynamic_size": True})
        for precision in ("fp16", "bf16"):
            cases.append({"arch": arch, "method": "bagcams", "layer": None, "size": size, "precision": precision})
    return cases


def full_cases() -> list[dict]:
    return [
        {"arch": arch, "method": method, "layer": None, "size": 224, "classes": 200, **extra}
        for arch in ("resnet50", "inception_v3")
        for method in ("bagcams", "gradcampp")
        for extra in ({}, {"precision": "fp16"})
    ] + [{"arch": "resnet50", "method": "bagcams", "layer": None, "size": 224, "classes": 200, "dynamic_size": True}]


def build(case: dict):
    from bagcams_deploy.models import build_model

    return build_model(case["arch"], case.get("classes", 7), seed=3, randomize_batchnorm=True)


def high_water_mb() -> int:
    """This process's peak RSS (VmHWM starts anew at exec; getrusage's ru_maxrss keeps the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def worker(case: dict, exporter: str, path: str) -> dict:
    """One export in this process: what it cost."""
    import torch

    from bagcams_deploy.export.onnx_export import export_onnx

    torch.set_num_threads(2)
    model = build(case)
    before = high_water_mb()
    t0 = time.perf_counter()
    r = export_onnx(
        model,
        path,
        method=case["method"],
        target_layer=case["layer"],
        input_size=case["size"],
        dynamic_size=case.get("dynamic_size", False),
        precision=case.get("precision", "fp32"),
        exporter=exporter,
    )
    seconds = time.perf_counter() - t0
    peak = high_water_mb()
    return {"seconds": round(seconds, 2), "size_mb": round(r.size_bytes / 1e6, 2), "peak_rss_mb": peak,
            "rss_before_mb": before, "opset": r.opset, "gradient_scale": r.gradient_scale}  # fmt: skip


def graph_facts(path: Path) -> dict:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    ops = Counter(n.op_type for n in proto.graph.node)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    opts.log_severity_level = 3
    reorders = None
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        plan = onnx.load(opts.optimized_model_filepath, load_external_data=False)
        reorders = sum(n.op_type in ("ReorderInput", "ReorderOutput") for n in plan.graph.node)
        path.with_suffix(".opt.onnx").unlink()
    except Exception as exc:  # bf16: no CPU kernels
        reorders = f"no CPU session: {str(exc).splitlines()[0][:80]}"
    opset = max(o.version for o in proto.opset_import if o.domain == "")
    return {"nodes": len(proto.graph.node), "ops": dict(ops.most_common()), "ort_reorders": reorders,
            "ir_version": proto.ir_version, "opset": opset}  # fmt: skip


def run_graph(path: Path, images, ids, repeats: int = 0):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {"image": images, "class_id": ids.astype(np.int64)}
    out = dict(zip(names, session.run(None, feeds), strict=True))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return out, (min(times) if times else None)


def compare(case: dict, paths: dict[str, Path]) -> dict:
    """Max |dynamo - torchscript| per output, and each against the PyTorch analytic network (fp32)."""
    import numpy as np
    import torch

    from bagcams_deploy.export.analytic import AnalyticCAM
    from bagcams_deploy.verify import random_images

    model = build(case)
    net = AnalyticCAM(model, case["method"], case["layer"])
    size = case["size"]
    shapes = [(1, size, size), (3, size, size)]
    if case.get("dynamic_size"):
        extra = size + 17 if case["arch"] == "inception_v3" else size + 13
        shapes += [(2, extra, size + 32), (1, size + 1, size + 3)]
    diffs: dict[str, float] = {}
    rel: dict[str, float] = {}  # the same, over max |torchscript output|
    vs_torch: dict[str, dict[str, float]] = {e: {} for e in paths}
    latency: dict[str, float] = {}
    for i, (n, h, w) in enumerate(shapes):
        x = random_images(n, (h, w), 100 + i)
        ids = np.array([-1, 2, -1][:n])
        outs = {}
        for exporter, path in paths.items():
            outs[exporter], t = run_graph(path, x, ids, repeats=3 if i == 1 else 0)
            if t is not None:
                latency[exporter] = round(t * 1000, 1)
        with torch.no_grad():
            ref = {k: v.numpy() for k, v in net.run(torch.from_numpy(x), torch.from_numpy(ids)).items()}
        for name in outs["torchscript"]:
            a, b = outs["torchscript"][name], outs["dynamo"][name]
            assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
            d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0
            diffs[name] = max(diffs.get(name, 0.0), d)
            rel[name] = max(rel.get(name, 0.0), d / (float(np.abs(a).max()) or 1.0))
            scale = float(np.abs(ref[name]).max()) or 1.0
            for exporter in paths:
                off = float(np.abs(outs[exporter][name].astype(np.float64) - ref[name]).max()) / scale
                vs_torch[exporter][name] = max(vs_torch[exporter].get(name, 0.0), off)
    return {"max_abs_diff": diffs, "max_rel_diff": rel, "max_rel_vs_torch": vs_torch, "ort_ms_batch3": latency,
            "shapes": [list(s) for s in shapes]}  # fmt: skip


def one_case(case: dict, tmp: Path) -> dict:
    row: dict = {"case": case}
    paths = {}
    for exporter in ("torchscript", "dynamo"):
        path = tmp / f"{exporter}.onnx"
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(case), exporter, str(path)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            row[exporter] = {"error": proc.stderr.strip().splitlines()[-1][:400] if proc.stderr.strip() else "?"}
            continue
        row[exporter] = json.loads(proc.stdout.strip().splitlines()[-1])
        row[exporter].update(graph_facts(path))
        paths[exporter] = path
    precision = case.get("precision", "fp32")
    if len(paths) == 2 and precision != "bf16":  # ONNX Runtime's CPU provider has no bfloat16 Conv
        row.update(compare(case, paths))
    for path in paths.values():
        path.unlink()
    return row


def label(case: dict) -> str:
    parts = [case["arch"], case["method"], case["layer"] or "default", str(case["size"])]
    parts += [p for p in (case.get("precision"), "dyn" if case.get("dynamic_size") else None) if p]
    return "/".join(parts)


def markdown(rows: list[dict]) -> str:
    head = ("| case | export s ts/dyn | MB ts/dyn | nodes ts/dyn | peak RSS MB ts/dyn | reorders ts/dyn "
            "| ORT ms (N=3) ts/dyn | max abs diff / max abs (logits, features, gradients, cam) |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        ts, dy = r["torchscript"], r["dynamo"]
        if "error" in ts or "error" in dy:
            lines.append(f"| {label(r['case'])} | {ts.get('error', 'ok')} / {dy.get('error', 'ok')} |||||||")
            continue
        d = r.get("max_rel_diff", {})
        diff = ", ".join(f"{d[k]:.1e}" if k in d else "-" for k in ("logits", "features", "gradients", "cam"))
        ms = r.get("ort_ms_batch3", {})
        lines.append(
            f"| {label(r['case'])} | {ts['seconds']} / {dy['seconds']} | {ts['size_mb']} / {dy['size_mb']} "
            f"| {ts['nodes']} / {dy['nodes']} | {ts['peak_rss_mb']} / {dy['peak_rss_mb']} "
            f"| {ts['ort_reorders']} / {dy['ort_reorders']} | {ms.get('torchscript', '-')} / {ms.get('dynamo', '-')} "
            f"| {diff if d else 'not run (bf16)'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=3, metavar=("CASE", "EXPORTER", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--full-size", action="store_true", help="ResNet-50/Inception-v3 at 224 px, 200 classes")
    ap.add_argument("--only", action="append", help="run the cases whose label contains this text (repeatable)")
    ap.add_argument("--exclude", default=None, help="leave out the cases whose label contains this text")
    args = ap.parse_args()
    if args.worker:
        case, exporter, path = args.worker
        print(json.dumps(worker(json.loads(case), exporter, path)))
        return
    cases = full_cases() if args.full_size else small_cases()
    if args.only:
        cases = [c for c in cases if any(text in label(c) for text in args.only)]
    if args.exclude:
        cases = [c for c in cases if args.exclude not in label(c)]
    stem = "dynamo_export_full" if args.full_size else "dynamo_export"
    if args.only or args.exclude:
        stem += "_partial"
    RESULTS.mkdir(exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            rows.append(one_case(case, Path(tmp)))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=1) + "\n")  # so far, if interrupted
    (RESULTS / f"{stem}.md").write_text(markdown(rows))


if __name__ == "__main__":
    main()
