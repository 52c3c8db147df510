"""Deployment accuracy: exported graphs (fp32, fp32 with --exact, fp16) run by ONNX Runtime on the
CPU, verified against the float32 PyTorch reference on the same fresh random scenes.

    python benchmarks/run_accuracy.py [--images 8] [--seed 0] [--out benchmarks/results]

DA-WSOL ResNet-50 (layer3) and Inception-v3 (SPG_A3_1b), BagCAMs, 224x224, random weights with
random BatchNorm statistics (no trained checkpoint can be downloaded here). Writes accuracy.json/.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="bagcams")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.verify import verify_backend

    rows = []
    cases = [("resnet50", "layer3"), ("inception_v3", "SPG_A3_1b")]
    variants = [("fp32", False), ("fp32", True), ("fp16", False)]
    with tempfile.TemporaryDirectory() as tmp:
        for arch, layer in cases:
            model = build_model(arch, 200, seed=0, randomize_batchnorm=True)
            for precision in ("fp32", "fp16"):
                graph = Path(tmp) / f"{arch}_{precision}.onnx"
                t0 = time.perf_counter()
                r = export_onnx(
                    model,
                    graph,
                    method=args.method,
                    target_layer=None if args.method == "cam" else layer,
                    precision=precision,
                )
                export_s = time.perf_counter() - t0
                for prec, exact in variants:
                    if prec != precision:
                        continue
                    with create_backend("ort-cpu", graph=graph, threads=2, exact=exact) as b:
                        rep = verify_backend(b, model, str(graph), num_random=args.images, seed=args.seed)
                    row = {
                        "architecture": arch, "target_layer": layer, "precision": precision, "exact": exact,
                        "gradient_scale": r.gradient_scale, "export_s": export_s, **rep.worst(),
                        "passed": rep.passed, "failures": rep.failures,
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "failures"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps({"seed": args.seed, "method": args.method, "rows": rows}, indent=2))
    lines = [
        "| model | graph | worst map Pearson | worst IoU@0.5 | worst share of pixels off > 0.01 "
        "| worst max abs map diff | worst gradient rel L2 | boxes changed | verify |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        graph = (
            r["precision"]
            + (" --exact" if r["exact"] else "")
            + (f" (scale 2^{round(math.log2(r['gradient_scale']))})" if r["gradient_scale"] != 1 else "")
        )
        lines.append(
            f"| {r['architecture']} {r['target_layer']} | {graph} | {r['worst_map_pearson']:.6f} "
            f"| {r['worst_iou50']:.4f} "
            f"| {r['worst_pixels_off']:.3%} | {r['worst_map_max_abs']:.4f} | {r['worst_gradient_rel_l2']:.2e} "
            f"| {r['boxes_changed']}/{r['images']} | {'pass' if r['passed'] else 'FAIL'} |"
        )
    (out / "accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
