#!/usr/bin/env python3
"""What TF32 does to the deployed maps and gradients, measured on the CPU by emulating it.

TensorRT (its default, ``build-engine`` without ``--no-tf32``) and cuDNN (PyTorch's default for
convolutions) run float32 convolutions in TF32 on Ampere and later GPUs: each input and weight is
rounded to 10 mantissa bits (float32's 8-bit exponent kept) and the products are accumulated in
float32. That is emulated here exactly for the inputs: every ``conv2d``/``conv_transpose2d`` of the
analytic graph (forward, masks and backward) gets TF32-rounded operands (round to nearest), then the
same ``verify`` as a deployment runs against the float32 PyTorch reference. The worst image per
quantity is what ``verify``'s ``tf32`` bars (``Tolerances.for_precision("tf32")``) are set from.
Not emulated: the order of the GPU's float32 accumulation and the classifier's matrix product.

    python benchmarks/tf32_emulation.py [--images 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bagcams_deploy.models import build_model  # noqa: E402
from bagcams_deploy.runtime import create_backend  # noqa: E402
from bagcams_deploy.verify import Tolerances, verify_backend  # noqa: E402

CASES = [("resnet50", "layer3"), ("resnet50", "layer4"), ("inception_v3", "SPG_A3_1b")]  # 224x224 images


def to_tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to TF32 (10 mantissa bits), to nearest with ties away from zero."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


@contextlib.contextmanager
def tf32_convolutions():
    conv, conv_t = F.conv2d, F.conv_transpose2d
    F.conv2d = lambda x, w, *a, **k: conv(to_tf32(x), to_tf32(w), *a, **k)
    F.conv_transpose2d = lambda x, w, *a, **k: conv_t(to_tf32(x), to_tf32(w), *a, **k)
    try:
        yield
    finally:
        F.conv2d, F.conv_transpose2d = conv, conv_t


def worst(report) -> dict:
    imgs = report.images
    return {
        "gradients_rel_l2": max(i.gradients_rel_l2 for i in imgs),
        "logits_rel_l2": max(i.logits_rel_l2 for i in imgs),
        "features_rel_l2": max(i.features_rel_l2 for i in imgs),
        "map_pearson": min(i.map_pearson for i in imgs),
        "map_pixels_off": max(i.map_pixels_off for i in imgs),
        "map_iou50": min(i.map_iou["0.5"] for i in imgs),
        "box_iou": min(i.box_iou for i in imgs),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    bars = Tolerances.for_precision("tf32")
    rows = []
    for arch, layer in CASES:
        model = build_model(arch, 200, seed=3, randomize_batchnorm=True)
        for mode in ("float32", "tf32"):
            backend = create_backend("torch-analytic", model=model, method="bagcams", target_layer=layer)
            if mode == "tf32":  # only the deployed side: the reference stays float32 autograd
                infer = backend.infer_impl

                def emulated(*a, infer=infer):
                    with tf32_convolutions():
                        return infer(*a)

                backend.infer_impl = emulated
            with backend:
                report = verify_backend(backend, model, arch, num_random=args.images, seed=args.seed,
                                        tolerances=bars, batch_size=2)  # fmt: skip
            row = {"architecture": arch, "target_layer": layer, "input_size": 224, "math": mode,
                   "passes_tf32_bars": report.passed, **worst(report)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"images": args.images, "seed": args.seed, "tf32_bars": bars.__dict__, "rows": rows}
    (args.out / "tf32_emulation.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "| model | target | math | worst grad rel L2 | logits rel L2 | features rel L2 | map Pearson | "
        "pixels off | IoU@0.5 | box IoU | tf32 bars |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['architecture']} | {r['target_layer']} | {r['math']} | {r['gradients_rel_l2']:.2e} | "
                     f"{r['logits_rel_l2']:.2e} | {r['features_rel_l2']:.2e} | {r['map_pearson']:.6f} | "
                     f"{r['map_pixels_off']:.4f} | {r['map_iou50']:.4f} | {r['box_iou']:.3f} | "
                     f"{'pass' if r['passes_tf32_bars'] else 'FAIL'} |")  # fmt: skip
    (args.out / "tf32_emulation.md").write_text("\n".join(lines) + "\n")
    return 0 if all(r["passes_tf32_bars"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
