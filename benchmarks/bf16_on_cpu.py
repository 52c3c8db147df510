"""Why the CPU backends refuse bf16 graphs: OpenVINO runs them, and this measures how far their maps
fall from the float32 PyTorch reference, against verify's reduced-precision bars.

    python benchmarks/bf16_on_cpu.py [--images 8] [--seed 3] [--size 64] [--out benchmarks/results]

ResNet-18 and ResNet-50 (layer3, random weights with random BatchNorm statistics), the four gradient
methods, bf16 graphs through OpenVINO (``allow_bf16``), fresh random scenes. Writes bf16_on_cpu.json/.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

METHODS = ("bagcams", "gradcam", "gradcampp", "pcs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model
    from bagcams_deploy.runtime.openvino_backend import OpenVINOBackend
    from bagcams_deploy.verify import Tolerances, verify_backend

    bars = Tolerances.for_precision("bf16")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("resnet18", "resnet50"):
            model = build_model(arch, 7, seed=1, randomize_batchnorm=True)
            for method in METHODS:
                graph = str(Path(tmp) / f"{arch}_{method}.onnx")
                export_onnx(model, graph, method=method, input_size=args.size, precision="bf16")
                with OpenVINOBackend(graph, allow_bf16=True) as backend:
                    rep = verify_backend(backend, model, graph, num_random=args.images, seed=args.seed,
                                         tolerances=bars)  # fmt: skip
                w = rep.worst()
                row = {"architecture": arch, "method": method, "passed": rep.passed, **w}
                rows.append(row)
                print(f"{arch} {method}: Pearson {w['worst_map_pearson']:.4f} IoU@0.5 {w['worst_iou50']:.4f} "
                      f"{'pass' if rep.passed else 'FAIL'}", flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = {"images": args.images, "seed": args.seed, "size": args.size, "bars": "verify's bf16 (= fp16) preset"}
    (out / "bf16_on_cpu.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    lines = ["| model | method | worst map Pearson | worst IoU@0.5 | worst pixels off | worst gradient rel L2 | "
             "verify (bf16 bars) |", "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['architecture']} | {r['method']} | {r['worst_map_pearson']:.4f} | {r['worst_iou50']:.4f} | "
                     f"{r['worst_pixels_off']:.1%} | {r['worst_gradient_rel_l2']:.3f} | "
                     f"{'pass' if r['passed'] else 'FAIL'} |")  # fmt: skip
    (out / "bf16_on_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
