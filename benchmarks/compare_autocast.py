"""fp16 graphs two ways, verified the same way: our direct ``export --precision fp16`` against NVIDIA
ModelOpt AutoCast applied to our float32 graph (with the same gradient scale, I/O kept float32).

AutoCast (``python -m modelopt.onnx.autocast``) decides per node from a reference run which nodes may
run in fp16. It needs ``nvidia-modelopt[onnx]``, which pins its own torch/onnxruntime-gpu, so it runs in
a separate environment given by ``--autocast-python``; everything else runs here.

    python -m venv /tmp/mo && /tmp/mo/bin/pip install "nvidia-modelopt[onnx]"
    # or, without modelopt's torch and onnxruntime-gpu pins (how the committed results were made):
    python -m venv /tmp/mo && /tmp/mo/bin/pip install --no-deps nvidia-modelopt && /tmp/mo/bin/pip install \
        numpy onnx onnx-graphsurgeon onnxruntime onnxconverter-common ml_dtypes omegaconf pydantic pyyaml \
        rich scipy tqdm packaging nvidia-ml-py pulp regex safetensors
    python benchmarks/compare_autocast.py --autocast-python /tmp/mo/bin/python [--images 8] [--seed 0]

ResNet-50 (random weights, randomised BatchNorm), layer3 BagCAMs, 224x224, ONNX Runtime on the CPU,
``verify`` against the float32 PyTorch reference with the fp16 tolerances. Writes
``benchmarks/results/autocast_vs_direct.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def copy_metadata(source: Path, target: Path, precision: str) -> None:
    """AutoCast output keeps the graph; our consumers also need the export's metadata_props."""
    import onnx

    src = onnx.load(str(source), load_external_data=False)
    dst = onnx.load(str(target))
    props = {p.key: p.value for p in src.metadata_props}
    props["precision"] = precision
    del dst.metadata_props[:]
    for k, v in props.items():
        dst.metadata_props.add(key=k, value=v)
    onnx.save(dst, str(target))


def float32_convolutions(path: Path) -> dict[str, list[str]]:
    """Conv nodes whose weights stayed float32, split into the 1x1 depthwise ReLU-mask convolutions
    (gain 2^100, out of fp16 range) and the rest (the network's own forward/backward convolutions)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name: i for i in graph.initializer}
    weights.update({n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute})
    found: dict[str, list[str]] = {"mask": [], "network": []}
    for node in graph.node:
        w = weights.get(node.input[1]) if node.op_type == "Conv" else None
        if w is not None and w.data_type == onnx.TensorProto.FLOAT:
            found["mask" if list(w.dims[1:]) == [1, 1, 1] else "network"].append(node.name)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--autocast-python", required=True, help="a python with nvidia-modelopt[onnx] installed")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(2)
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.models import build_model
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.verify import Tolerances, random_images, verify_backend

    model = build_model("resnet50", 200, seed=0, randomize_batchnorm=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        direct = tmp / "direct_fp16.onnx"
        t0 = time.perf_counter()
        r = export_onnx(model, direct, method="bagcams", target_layer="layer3", precision="fp16")
        scale = r.gradient_scale
        graphs = {"direct fp16 export": (direct, time.perf_counter() - t0)}
        fp32 = tmp / "fp32_scaled.onnx"
        export_onnx(model, fp32, method="bagcams", target_layer="layer3", gradient_scale=scale)
        calib = tmp / "calib.npz"  # other images than the ones verified below
        images = random_images(4, (224, 224), args.seed + 1000)
        np.savez(calib, image=images, class_id=np.full(len(images), -1, np.int64))
        variants = {
            "AutoCast (defaults)": [],
            "AutoCast, sensitive ops fp32": ["--op_types_to_exclude", "Log", "ReduceMax", "ReduceMin", "Div",
                                             "Resize", "Softmax", "ReduceMean", "ReduceSum"],
        }  # fmt: skip
        for name, extra in variants.items():
            out = tmp / (name.replace(" ", "_").replace(",", "") + ".onnx")
            t0 = time.perf_counter()
            cmd = [args.autocast_python, "-m", "modelopt.onnx.autocast", "--onnx_path", str(fp32),
                   "--output_path", str(out), "--low_precision_type", "fp16", "--keep_io_types",
                   "--calibration_data", str(calib), "--providers", "cpu", "--log_level", "WARNING",
                   *extra]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not out.is_file():
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                rows.append({"graph": name, "error": " | ".join(tail)})
                print(f"{name}: AutoCast failed: {tail}", flush=True)
                continue
            copy_metadata(fp32, out, "fp16")
            graphs[name] = (out, time.perf_counter() - t0)
        for name, (path, seconds) in graphs.items():
            with create_backend("ort-cpu", graph=path, threads=2) as b:
                rep = verify_backend(b, model, str(path), num_random=args.images, seed=args.seed,
                                     tolerances=Tolerances.for_precision("fp16"))  # fmt: skip
            row = {
                "graph": name, "make_seconds": seconds, "gradient_scale": scale,
                "mb": path.stat().st_size / 1e6, **rep.worst(), "passed": rep.passed,
                "float32_convolutions": float32_convolutions(path),
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "autocast_vs_direct.json").write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")
    lines = [
        "| fp16 graph | worst map Pearson | worst IoU@0.5 | worst max abs map diff | worst gradient rel L2 "
        "| boxes changed | verify (fp16 bars) | MB | float32 convolutions |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]

    def convs(found: dict[str, list[str]]) -> str:
        mask = f", {len(found['mask'])} mask" if found["mask"] else ""
        return f"{len(found['network'])} of the network's{mask}"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['graph']} | failed: {r['error'][:80]} | | | | | | | |")
            continue
        lines.append(
            f"| {r['graph']} | {r['worst_map_pearson']:.6f} | {r['worst_iou50']:.4f} | {r['worst_map_max_abs']:.4f} "
            f"| {r['worst_gradient_rel_l2']:.2e} | {r['boxes_changed']}/{r['images']} | "
            f"{'pass' if r['passed'] else 'FAIL'} | {r['mb']:.0f} | {convs(r['float32_convolutions'])} |"
        )
    (out_dir / "autocast_vs_direct.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
