"""fp16 graphs under stress: range, rounding and the cases half precision gets wrong, on the shipped model.

    python benchmarks/fp16_stress.py [--quick] [--threads 2] [--out benchmarks/results]

The shipped ResNet-18 scene model (``bagcams_deploy/assets/scenes_resnet18.npz``, layer3), against its
float32 twin. Writes fp16_stress.json (every number) and fp16_stress.md (made from the JSON alone by
:func:`markdown`). Fixed seeds throughout; ``--quick`` runs fewer PyTorch half-precision passes
(PyTorch's CPU computes float16 convolutions with a slow generic kernel, ~9 s per 128 px image).

Sections (the JSON's keys):

- ``calibration``: each method's calibrated ``gradient_scale`` (``calibrate_gradient_scale`` on the
  export's default set, ``random_images(8, size, 0)``) and, per calibration image, the peak |value| of
  the scaled backward pass computed in float32, as the calibration measures it (``backward_peaks``:
  the seed and every rule's output, nested rules too; see :class:`BackwardRecorder`);
  ``subnormal_share_max``: the largest share of nonzero scaled backward values below half
  precision's smallest normal 2^-14; ``flushed_share_max``: below 2^-25, which round to zero.
- ``ort_cpu_range``: a BagCAMs fp16 graph exported with a forced ``gradient_scale`` 2^27 (2^7 above
  the calibrated one): its float32 backward peaks, ``verify`` under ``ort-cpu`` (fp16 bars), and
  PyTorch's half precision (``AnalyticCAM(precision="fp16")``) at the same scale.
- ``stress``: constant, saturated, noisy and bound inputs (pixels at ``-PIXEL_MARGIN`` and
  ``1 + PIXEL_MARGIN``, the widest a backend takes); for BagCAMs and GradCAM and the predicted, the
  least-scoring and the closest-to-zero class (of the float32 reference): the scaled backward peak,
  and the fp16 graph under ``ort-cpu`` against verify's float32 reference (``compare_outputs``);
  for BagCAMs' predicted class also PyTorch's half precision (peak, finiteness, the same measures).
- ``dynamic_size``: a dynamic-size BagCAMs graph calibrated at 224 px: the scaled backward peak at
  other sizes with the seed of ``W_c / (h w)`` (``seed_positions=None``, before the fix) and seeded
  at the calibrated size's h w (``seed_positions``, as ``export_onnx`` does now).
- ``gradcampp``: GradCAM++ fp16 graphs verified under ``ort-cpu`` on random scenes at 128 and 224 px
  and on test scenes of the generator (the model's data seed); PyTorch's half precision on the
  128 px scenes ort-cpu failed and the first; the float32 graph against the float64 reference.
- ``near_zero``: BagCAMs where the class score s_c is near 0: the predicted class's bias moved so
  that the float32 s_c is a given small value; PyTorch's half precision's s_c and map.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HALF_MAX = 65504.0
HALF_MIN_NORMAL = 2.0**-14
HALF_FLUSH = 2.0**-25  # half the smallest subnormal 2^-24: smaller magnitudes round to zero
SIZE = 128  # the size of the stress tests (and of the GradCAM++ and near-zero ones)
FORCED_SCALE = 2.0**27
METHODS = ("bagcams", "gradcam", "gradcampp", "pcs")
STRESS_METHODS = ("bagcams", "gradcam")
QUICK_HALF_INPUTS = ("black", "white", "noise", "checkerboard_at_bound", "half_half_bounds")
NEAR_ZERO_TARGETS = (-1e-3, 1e-4, 1e-3, 1e-2)
STRESS_INPUTS = (
    "black", "white", "red", "green", "blue", "noise", "checkerboard", "noise_at_bound",
    "checkerboard_at_bound", "low_bound", "high_bound", "half_half_bounds",
)  # fmt: skip


def stress_images(size: int, seed: int) -> tuple[list[str], np.ndarray]:
    """The stress inputs, normalised [N, 3, size, size]: real pixels go through ``preprocess``; the
    bound ones are pixels at -PIXEL_MARGIN and 1 + PIXEL_MARGIN, normalised as ``input_bounds`` does."""
    from bagcams_deploy.preprocessing import MEAN, STD, preprocess
    from bagcams_deploy.runtime.base import PIXEL_MARGIN

    rng = np.random.default_rng(seed)
    lo, hi = -PIXEL_MARGIN, 1.0 + PIXEL_MARGIN
    checker = (np.add.outer(np.arange(size), np.arange(size)) % 2).astype(bool)[:, :, None]
    half = (np.arange(size) >= size // 2)[None, :, None].repeat(size, 0)

    def rgb(c):
        return np.broadcast_to(np.asarray(c, np.uint8), (size, size, 3)).copy()

    def pixels(p):
        p = np.broadcast_to(np.asarray(p, np.float64), (size, size, 3))
        x = (p - np.asarray(MEAN)) / np.asarray(STD)  # in float64, then float32: as input_bounds
        return x.astype(np.float32).transpose(2, 0, 1)

    real = {
        "black": rgb((0, 0, 0)), "white": rgb((255, 255, 255)), "red": rgb((255, 0, 0)),
        "green": rgb((0, 255, 0)), "blue": rgb((0, 0, 255)),
        "noise": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "checkerboard": np.where(checker, 255, 0).astype(np.uint8).repeat(3, 2),
    }  # fmt: skip
    bound = {
        "noise_at_bound": pixels(np.where(rng.random((size, size, 3)) < 0.5, lo, hi)),
        "checkerboard_at_bound": pixels(np.where(checker, hi, lo)),
        "low_bound": pixels(lo),
        "high_bound": pixels(hi),
        "half_half_bounds": pixels(np.where(half, hi, lo)),
    }
    x = {name: preprocess([im], size).numpy()[0] for name, im in real.items()} | bound
    assert tuple(x) == STRESS_INPUTS
    return list(x), np.stack(list(x.values()))


class BackwardRecorder:
    """Every backward value of an :class:`AnalyticCAM` run, per image: wraps each rule's ``vjp`` and
    ``vjp_seed`` (nested rules too) to keep what it returns, and the seed ``vjp_seed`` is given."""

    def __init__(self, net):
        from bagcams_deploy.export.rules import Rule

        self.net, self.values = net, {}
        for rule in (m for m in net.suffix.modules() if isinstance(m, Rule)):
            rule.vjp = self._wrap(rule.vjp)
            rule.vjp_seed = self._wrap(rule.vjp_seed, seeded=True)

    def _wrap(self, fn, seeded=False):
        def recorded(*args):
            out = fn(*args)
            for v in (out, args[1]) if seeded else (out,):
                self.values[id(v)] = v  # a chain returns its last rule's tensor: counted once
            return out

        return recorded

    def run(self, images, class_ids=None) -> tuple[list[dict], dict]:
        """Per-image stats of the scaled backward pass and the network's outputs (numpy, float32)."""
        import torch

        self.values = {}
        ids = None if class_ids is None else torch.as_tensor(class_ids)
        out = self.net.run(torch.as_tensor(images), ids)
        vals = [v.detach().abs().float().reshape(v.shape[0], -1) for v in self.values.values()]
        self.values = {}
        peak = torch.stack([v.max(1).values for v in vals]).max(0).values
        nonfinite = sum((~torch.isfinite(v)).sum(1) for v in vals)
        nonzero = sum((v > 0).sum(1) for v in vals).clamp(min=1)
        subnormal = sum(((v > 0) & (v < HALF_MIN_NORMAL)).sum(1) for v in vals)
        flushed = sum(((v > 0) & (v < HALF_FLUSH)).sum(1) for v in vals)
        stats = [
            {"backward_peak": float(peak[i]), "nonfinite_values": int(nonfinite[i]),
             "subnormal_share": float(subnormal[i] / nonzero[i]), "flushed_share": float(flushed[i] / nonzero[i])}
            for i in range(len(peak))
        ]  # fmt: skip
        return stats, {k: v.detach().float().numpy() for k, v in out.items()}


def _analytic(model, method, scale, precision="fp32", seed_positions=None):
    from bagcams_deploy.export.analytic import AnalyticCAM

    net = AnalyticCAM(model, method, gradient_scale=scale, precision=precision, seed_positions=seed_positions)
    return BackwardRecorder(net)


def _measures(rep) -> dict:
    """verify's per-image measures (an ImageReport) that the tables quote."""
    return {
        "class_id": rep.class_id, "score": rep.score, "map_pearson": rep.map_pearson, "iou50": rep.map_iou["0.5"],
        "pixels_off": rep.map_pixels_off, "gradient_rel_l2": rep.gradients_rel_l2,
        "logits_rel_l2": rep.logits_rel_l2, "passes_fp16_bars": not rep.failures, "failures": rep.failures,
    }  # fmt: skip


def _compare(ref: dict, got: dict, scale: float, sources: list[str]) -> list[dict]:
    """``got`` (a backend's or PyTorch half precision's outputs, gradients scaled) against the float32
    reference, with verify's measures and fp16 bars."""
    from bagcams_deploy.verify import Tolerances, compare_outputs

    got = {**got, "gradients": got["gradients"] / np.float32(scale)}
    reports, _ = compare_outputs(ref, got, Tolerances.for_precision("fp16"), sources)
    return [_measures(r) for r in reports]


def _span(values) -> list[float]:
    values = [float(v) for v in values]
    return [min(values), max(values)]


def calibration_section(model) -> dict:
    import torch

    from bagcams_deploy.export.analytic import calibrate_gradient_scale
    from bagcams_deploy.verify import random_images

    rows = []
    for method, size in [(m, SIZE) for m in METHODS] + [("bagcams", 224)]:
        calib = random_images(8, (size, size), 0)  # export_onnx's default calibration set
        scale = calibrate_gradient_scale(model, method, None, torch.from_numpy(calib))
        per, _ = _analytic(model, method, scale).run(calib)
        peaks = [p["backward_peak"] for p in per]
        rows.append({
            "method": method, "size": size, "gradient_scale": scale, "log2_scale": round(math.log2(scale)),
            "backward_peaks": peaks, "headroom": HALF_MAX / max(peaks),
            "subnormal_share_max": max(p["subnormal_share"] for p in per),
            "flushed_share_max": max(p["flushed_share"] for p in per),
        })  # fmt: skip
        print(f"calibration {method} {size}: 2^{rows[-1]['log2_scale']}, peaks {_range(peaks)}", flush=True)
    return {"images": "random_images(8, size, seed 0), export_onnx's default", "target": 2.0**10, "rows": rows}


def ort_range_section(model, tmp: Path, threads: int, quick: bool) -> dict:
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.verify import random_images, verify_backend

    graph = tmp / "bagcams_fp16_forced.onnx"
    export_onnx(model, graph, method="bagcams", input_size=SIZE, precision="fp16", gradient_scale=FORCED_SCALE)
    n, seed, n_half = 8, 1, (1 if quick else 2)
    with create_backend("ort-cpu", graph=graph, threads=threads) as b:
        rep = verify_backend(b, model, str(graph), num_random=n, seed=seed)
    images = random_images(n, (SIZE, SIZE), seed)  # verify's images
    f32, _ = _analytic(model, "bagcams", FORCED_SCALE).run(images)
    half, got = _analytic(model, "bagcams", FORCED_SCALE, "fp16").run(images[:n_half])
    print(f"forced 2^27: ort-cpu Pearson {rep.worst()['worst_map_pearson']:.4f}", flush=True)
    return {
        "gradient_scale": FORCED_SCALE, "images": f"random_images({n}, {SIZE}, seed {seed})",
        "float32_backward_peaks": [p["backward_peak"] for p in f32],
        "ort_cpu": {"all_finite": not rep.non_finite_outputs(), **rep.worst(), "passed": rep.passed},
        "torch_fp16": {
            "images": n_half, "backward_peaks": [p["backward_peak"] for p in half],
            "nonfinite_backward_values": [p["nonfinite_values"] for p in half],
            "gradients_output_finite": bool(np.isfinite(got["gradients"]).all()),
        },
    }  # fmt: skip


def stress_section(model, scales: dict, tmp: Path, threads: int, quick: bool) -> dict:
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.runtime.torch_backends import TorchReferenceBackend

    names, images = stress_images(SIZE, 0)
    rows = []
    for method in STRESS_METHODS:
        graph = tmp / f"{method}_fp16.onnx"
        scale = export_onnx(model, graph, method=method, input_size=SIZE, precision="fp16").gradient_scale
        assert scale == scales[method], (method, scale, scales[method])  # the calibration section's
        reference = TorchReferenceBackend(model, method, None, input_size=(SIZE, SIZE), published_autograd=False)
        logits = reference.infer(images)["logits"]
        kinds = {"predicted": logits.argmax(1), "least": logits.argmin(1), "closest_to_zero": np.abs(logits).argmin(1)}
        recorder = _analytic(model, method, scale)
        with create_backend("ort-cpu", graph=graph, threads=threads) as b:
            for kind, ids in kinds.items():
                ids = ids.astype(np.int64)
                ref, got = reference.infer(images, ids), b.infer(images, ids)
                finite = [all(bool(np.isfinite(v[i]).all()) for v in got.values()) for i in range(len(names))]
                measures = _compare(ref, got, scale, names)
                peaks, _ = recorder.run(images, ids)
                for i, name in enumerate(names):
                    rows.append({"input": name, "method": method, "class": kind, **peaks[i],
                                 "ort_cpu": {"finite": finite[i], **measures[i]}})  # fmt: skip
        print(f"stress {method}: ort-cpu done", flush=True)
    # PyTorch's half precision: BagCAMs, the predicted class, at the calibrated scale
    scale = scales["bagcams"]
    half = _analytic(model, "bagcams", scale, "fp16")
    reference = TorchReferenceBackend(model, "bagcams", None, input_size=(SIZE, SIZE), published_autograd=False)
    for name in QUICK_HALF_INPUTS if quick else names:
        x = images[names.index(name)][None]
        ref = reference.infer(x)
        stats, got = half.run(x, ref["class_id_used"])
        row = next(r for r in rows if r["input"] == name and r["method"] == "bagcams" and r["class"] == "predicted")
        row["torch_fp16"] = {
            "backward_peak": stats[0]["backward_peak"],
            "finite": stats[0]["nonfinite_values"] == 0 and all(bool(np.isfinite(v).all()) for v in got.values()),
            "logits_max_abs_error": float(np.abs(got["logits"] - ref["logits"]).max()),
            **_compare(ref, got, scale, [name])[0],
        }
        print(f"stress torch fp16 {name}: peak {stats[0]['backward_peak']:.0f}", flush=True)
    return {"size": SIZE, "inputs": names, "gradient_scales": {m: scales[m] for m in STRESS_METHODS}, "rows": rows}


def dynamic_section(model, quick: bool) -> dict:
    import torch

    from bagcams_deploy.export.analytic import calibrate_gradient_scale, last_stage_positions
    from bagcams_deploy.verify import random_images

    calibrated, n = 224, 2
    scale = calibrate_gradient_scale(model, "bagcams", None, torch.from_numpy(random_images(8, (calibrated,) * 2, 0)))
    positions = last_stage_positions(model, (calibrated, calibrated))
    before, after = _analytic(model, "bagcams", scale), _analytic(model, "bagcams", scale, seed_positions=positions)
    rows = []
    for size in (32, 224) if quick else (32, 224, 1024):
        x = random_images(n, (size, size), 1)
        sb, ob = before.run(x)
        sa, oa = after.run(x)
        rel = float(np.linalg.norm(oa["gradients"] - ob["gradients"]) / np.linalg.norm(ob["gradients"]))
        row = {
            "size": size, "backward_peak_before": max(p["backward_peak"] for p in sb),
            "backward_peak_after": max(p["backward_peak"] for p in sa), "gradients_rel_l2_after_vs_before": rel,
            "backward_peak_before_any_class": None, "backward_peak_after_any_class": None,
        }  # fmt: skip
        if size <= calibrated:  # where the range grows: the first image for every class (the seed is W_c's)
            every = np.repeat(x[:1], model.num_classes, 0), np.arange(model.num_classes)
            row["backward_peak_before_any_class"] = max(p["backward_peak"] for p in before.run(*every)[0])
            row["backward_peak_after_any_class"] = max(p["backward_peak"] for p in after.run(*every)[0])
        rows.append(row)
        print(f"dynamic {size}: before {row['backward_peak_before']:.0f}, after {row['backward_peak_after']:.0f}",
              flush=True)  # fmt: skip
    return {"calibrated_size": calibrated, "gradient_scale": scale, "seed_positions": positions,
            "images": f"random_images({n}, size, seed 1)", "rows": rows}  # fmt: skip


def _write_scenes(folder: Path, n: int, size: int) -> list[Path]:
    """Test scenes of the generator (the shipped model's data seed) as PNG files, for verify."""
    import cv2

    from bagcams_deploy.demo_model import DEMO_DATA_SEED
    from bagcams_deploy.scenes import generate_scene, scene_seed

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        scene = generate_scene(scene_seed(DEMO_DATA_SEED, "test", i), size)
        paths.append(folder / f"test_{i:02d}.png")
        cv2.imwrite(str(paths[-1]), scene.image[:, :, ::-1])
    return paths


def _verify_rows(rep) -> dict:
    return {**rep.worst(), "failing_images": [i.index for i in rep.images if i.failures], "passed": rep.passed,
            "only_maps_fail": rep.only_maps_fail(), "per_image": [_measures(i) for i in rep.images]}  # fmt: skip


def gradcampp_section(model, scale128: float, tmp: Path, threads: int, quick: bool) -> dict:
    from bagcams_deploy.export.onnx_export import export_onnx
    from bagcams_deploy.runtime import create_backend
    from bagcams_deploy.runtime.torch_backends import TorchReferenceBackend
    from bagcams_deploy.verify import random_images, verify_backend

    seed, n128, n224, n_scenes = 1, 8, (10 if quick else 40), 8
    out: dict = {"seed": seed}
    g16, g32, g224 = tmp / "gradcampp_fp16_128.onnx", tmp / "gradcampp_fp32_128.onnx", tmp / "gradcampp_fp16_224.onnx"
    export_onnx(model, g16, method="gradcampp", input_size=SIZE, precision="fp16")
    export_onnx(model, g32, method="gradcampp", input_size=SIZE)
    with create_backend("ort-cpu", graph=g16, threads=threads) as b:
        out["ort_cpu_128"] = _verify_rows(verify_backend(b, model, str(g16), num_random=n128, seed=seed))
    with create_backend("ort-cpu", graph=g32, threads=threads) as b:
        rep = verify_backend(b, model, str(g32), num_random=n128, seed=seed, fp64_reference=True)
        passed_images = sum(not i.failures for i in rep.images)  # float32 bars
        out["fp32_vs_fp64_128"] = {**rep.worst(), "passed": rep.passed, "passed_images": passed_images}
    # PyTorch's half precision on the images ort-cpu failed, and the first one
    chosen = sorted({0, *out["ort_cpu_128"]["failing_images"]})[:4]
    images = random_images(n128, (SIZE, SIZE), seed)[chosen]  # verify's images
    reference = TorchReferenceBackend(model, "gradcampp", None, input_size=(SIZE, SIZE), published_autograd=False)
    ref = reference.infer(images)
    _, got = _analytic(model, "gradcampp", scale128, "fp16").run(images, ref["class_id_used"])
    out["torch_fp16_128"] = {"images": chosen, "per_image": _compare(ref, got, scale128, [str(i) for i in chosen])}
    print(f"gradcampp {SIZE}: ort-cpu fails images {out['ort_cpu_128']['failing_images']}", flush=True)
    export_onnx(model, g224, method="gradcampp", input_size=224, precision="fp16")
    scenes = _write_scenes(tmp / "scenes", n_scenes, 224)
    with create_backend("ort-cpu", graph=g224, threads=threads) as b:
        out["ort_cpu_224"] = _verify_rows(verify_backend(b, model, str(g224), num_random=n224, seed=seed))
        out["ort_cpu_224_test_scenes"] = _verify_rows(verify_backend(b, model, str(g224), scenes, num_random=0))
    print(f"gradcampp 224: fails random {out['ort_cpu_224']['failing_images']} of {n224}, test scenes "
          f"{out['ort_cpu_224_test_scenes']['failing_images']} of {n_scenes}", flush=True)  # fmt: skip
    return out


def near_zero_section(model, scale: float, quick: bool) -> dict:
    import torch

    from bagcams_deploy.runtime.torch_backends import TorchReferenceBackend
    from bagcams_deploy.verify import random_images

    seed, n = 2, 3
    targets = NEAR_ZERO_TARGETS[:2] if quick else NEAR_ZERO_TARGETS
    images = random_images(n, (SIZE, SIZE), seed)
    predicted = TorchReferenceBackend(model, "bagcams", None, input_size=(SIZE, SIZE),
                                      published_autograd=False).infer(images)  # fmt: skip
    rows = []
    for i in range(n):
        c = int(predicted["class_id_used"][i])
        ids, x = np.array([c], np.int64), images[i : i + 1]
        for target in targets:
            moved = copy.deepcopy(model)
            with torch.no_grad():
                moved.classifier.fc.bias[c] += target - float(predicted["logits"][i, c])
            ref = TorchReferenceBackend(moved, "bagcams", None, input_size=(SIZE, SIZE),
                                        published_autograd=False).infer(x, ids)  # fmt: skip
            _, got = _analytic(moved, "bagcams", scale, "fp16").run(x, ids)
            s32, s16 = float(ref["logits"][0, c]), float(got["logits"][0, c])
            m = _compare(ref, got, scale, [f"image {i}"])[0]
            rows.append({"image": i, "class_id": c, "target": target, "s_c_fp32": s32, "s_c_fp16": s16,
                         "sign_kept": (s32 > 0) == (s16 > 0), "logit_error": abs(s16 - s32),
                         "map_pearson": m["map_pearson"], "iou50": m["iou50"]})  # fmt: skip
            print(f"near zero image {i} target {target:g}: fp16 s_c {s16:.2e}, Pearson {m['map_pearson']:.4f}",
                  flush=True)  # fmt: skip
    return {"images": f"random_images({n}, {SIZE}, seed {seed})", "class": "each image's predicted class",
            "rows": rows, "max_logit_error": max(r["logit_error"] for r in rows)}  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# The report: fp16_stress.md is made from fp16_stress.json by this function alone.


def _range(values, fmt="{:.0f}") -> str:
    lo, hi = (fmt.format(v) for v in _span(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _peak(v) -> str:
    return "inf" if v is None else f"{v:.0f}"  # the JSON holds a non-finite peak as null


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def markdown(report: dict) -> str:
    s = report["setup"]
    lines = [
        f"# fp16 under stress ({s['model']}, {s['architecture']} {s['target_layer']})",
        "",
        f"Made by `{s['command']}` (torch {s['torch']}, onnxruntime {s['onnxruntime']}, {s['threads']} threads, "
        f"{s['seconds']:.0f} s). A peak is the largest |value| of the scaled backward pass (the seed and every "
        "rule's output), computed in float32 unless the row says PyTorch fp16; half precision's largest value is "
        "65504, its smallest normal 2^-14. Maps are compared with verify's measures against its float32 reference.",
        "",
        "## Calibration (8 calibration images each)",
        "",
        "| method | size | gradient_scale | peaks | headroom to 65504 | nonzero values < 2^-14 "
        "| nonzero values < 2^-25 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["calibration"]["rows"]:
        lines.append(
            f"| {r['method']} | {r['size']} | 2^{r['log2_scale']} | {_range(r['backward_peaks'])} | "
            f"{r['headroom']:.0f}x | {r['subnormal_share_max']:.4%} | {r['flushed_share_max']:.4%} |"
        )
    o = report["ort_cpu_range"]
    oc, t = o["ort_cpu"], o["torch_fp16"]
    lines += [
        "",
        f"## BagCAMs at a forced gradient_scale 2^{round(math.log2(o['gradient_scale']))} ({SIZE} px, {o['images']})",
        "",
        f"- float32 backward peaks: {_range(o['float32_backward_peaks'])}",
        f"- fp16 graph under ort-cpu: all outputs finite: {_yes(oc['all_finite'])}; worst map Pearson "
        f"{oc['worst_map_pearson']:.4f}, IoU@0.5 {oc['worst_iou50']:.4f}; verify (fp16 bars): "
        f"{'pass' if oc['passed'] else 'FAIL'}",
        f"- PyTorch fp16, first {t['images']} images: backward peaks {', '.join(_peak(p) for p in t['backward_peaks'])}"
        f"; non-finite backward values {', '.join(str(v) for v in t['nonfinite_backward_values'])}; gradients "
        f"output finite: {_yes(t['gradients_output_finite'])}",
    ]
    st = report["stress"]
    lines += [
        "",
        f"## Stress inputs ({st['size']} px; BagCAMs and GradCAM, each for the predicted, the least-scoring and the "
        "closest-to-zero class)",
        "",
        "| input | BagCAMs peaks | GradCAM peaks | ort-cpu: all finite | worst map Pearson | worst IoU@0.5 "
        "| failing the fp16 bars | PyTorch fp16, BagCAMs, predicted: peak, gradient rel L2, Pearson, IoU@0.5 |",
        "|---|---:|---:|---|---:|---:|---|---|",
    ]
    for name in st["inputs"]:
        rows = [r for r in st["rows"] if r["input"] == name]
        peaks = {m: _range([r["backward_peak"] for r in rows if r["method"] == m]) for m in STRESS_METHODS}
        fails = [f"{r['method']} {r['class']} ({'; '.join(r['ort_cpu']['failures'])})" for r in rows
                 if r["ort_cpu"]["failures"]]  # fmt: skip
        half = next((r["torch_fp16"] for r in rows if "torch_fp16" in r), None)
        cell = "-"
        if half is not None:
            cell = (f"{_peak(half['backward_peak'])}, {half['gradient_rel_l2']:.1e}, {half['map_pearson']:.4f}, "
                    f"{half['iou50']:.3f}{'' if half['finite'] else ', NOT finite'}")  # fmt: skip
        lines.append(
            f"| {name} | {peaks['bagcams']} | {peaks['gradcam']} | {_yes(all(r['ort_cpu']['finite'] for r in rows))} "
            f"| {min(r['ort_cpu']['map_pearson'] for r in rows):.4f} | {min(r['ort_cpu']['iou50'] for r in rows):.3f} "
            f"| {', '.join(fails) or 'none'} | {cell} |"
        )
    lines += [
        "",
        "Largest share, over these rows, of nonzero backward values below 2^-14: "
        f"{max(r['subnormal_share'] for r in st['rows']):.4%}; below 2^-25: "
        f"{max(r['flushed_share'] for r in st['rows']):.4%}.",
    ]
    d = report["dynamic_size"]
    lines += [
        "",
        f"## Dynamic-size BagCAMs graph calibrated at {d['calibrated_size']} px (gradient_scale "
        f"2^{round(math.log2(d['gradient_scale']))}; {d['images']})",
        "",
        "| input size | peak, seed W_c/(h w) (seed_positions=None): predicted class; any class of image 0 "
        "| peak, seed at the calibrated h w (export's): predicted class; any class of image 0 |",
        "|---:|---:|---:|",
    ]
    for r in d["rows"]:
        before, after = r["backward_peak_before_any_class"], r["backward_peak_after_any_class"]
        lines.append(
            f"| {r['size']} | {r['backward_peak_before']:.0f}; {'-' if before is None else f'{before:.0f}'} | "
            f"{r['backward_peak_after']:.0f}; {'-' if after is None else f'{after:.0f}'} |"
        )
    g = report["gradcampp"]
    lines += [
        "",
        f"## GradCAM++ (random scenes: seed {g['seed']})",
        "",
        "| case | images failing the fp16 bars | worst map Pearson | worst IoU@0.5 | worst pixels off by > 0.01 |",
        "|---|---:|---:|---:|---:|",
    ]
    cases = (("ort_cpu_128", f"fp16 graph, ort-cpu, {SIZE} px"), ("ort_cpu_224", "fp16 graph, ort-cpu, 224 px"),
             ("ort_cpu_224_test_scenes", "fp16 graph, ort-cpu, 224 px, the generator's test scenes 0-7"))  # fmt: skip
    for key, label in cases:
        r = g[key]
        lines.append(
            f"| {label} | {len(r['failing_images'])}/{r['images']} {r['failing_images'] or ''} | "
            f"{r['worst_map_pearson']:.4f} | {r['worst_iou50']:.3f} | {r['worst_pixels_off']:.1%} |"
        )
    t = g["torch_fp16_128"]
    per = t["per_image"]
    lines.append(
        f"| PyTorch fp16, {SIZE} px, images {t['images']} | {sum(not m['passes_fp16_bars'] for m in per)}/{len(per)} "
        f"| {min(m['map_pearson'] for m in per):.4f} | {min(m['iou50'] for m in per):.3f} | "
        f"{max(m['pixels_off'] for m in per):.1%} |"
    )
    r = g["fp32_vs_fp64_128"]
    lines.append(
        f"| float32 graph, ort-cpu, {SIZE} px, against the float64 reference | {r['images'] - r['passed_images']}/"
        f"{r['images']} (float32 bars) | {r['worst_map_pearson']:.4f} | {r['worst_iou50']:.3f} | "
        f"{r['worst_pixels_off']:.1%} |"
    )
    bad = [(i, m) for i, m in enumerate(g["ort_cpu_128"]["per_image"]) if not m["passes_fp16_bars"]]
    bad += [(f"224 px #{i}", m) for i, m in enumerate(g["ort_cpu_224"]["per_image"]) if not m["passes_fp16_bars"]]
    if bad:
        lines += ["", "Failing images under ort-cpu (map Pearson, IoU@0.5, pixels off): " + "; ".join(
            f"{i}: {m['map_pearson']:.2f}, {m['iou50']:.2f}, {m['pixels_off']:.0%}" for i, m in bad) + "."]  # fmt: skip
    z = report["near_zero"]
    lines += [
        "",
        f"## BagCAMs near s_c = 0 (PyTorch fp16; {z['images']}, {z['class']}'s bias moved; largest fp16 error of "
        f"s_c {z['max_logit_error']:.1e})",
        "",
        "| image | s_c float32 | s_c fp16 | sign kept | map Pearson | IoU@0.5 |",
        "|---:|---:|---:|---|---:|---:|",
    ]
    for r in z["rows"]:
        lines.append(
            f"| {r['image']} | {r['s_c_fp32']:.2e} | {r['s_c_fp16']:.2e} | {_yes(r['sign_kept'])} | "
            f"{r['map_pearson']:.4f} | {r['iou50']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer PyTorch half-precision passes and 224 px scenes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()

    import onnxruntime
    import torch

    from bagcams_deploy.demo_model import DEMO_WEIGHTS, load_demo_model
    from bagcams_deploy.outputs import json_safe
    from bagcams_deploy.reference.cams import resolve_target

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = load_demo_model()
    command = "python benchmarks/fp16_stress.py" + (" --quick" if args.quick else "")
    setup = {
        "command": command, "quick": args.quick, "model": f"bagcams_deploy/assets/{DEMO_WEIGHTS}",
        "architecture": model.architecture, "target_layer": resolve_target(model, "bagcams", None)[1],
        "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(), "section_seconds": {},
    }  # fmt: skip
    report: dict = {"setup": setup}

    def timed(key, fn, *a):
        t = time.perf_counter()
        report[key] = fn(*a)
        setup["section_seconds"][key] = round(time.perf_counter() - t, 1)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp, q, th = Path(tmp_name), args.quick, args.threads
        timed("calibration", calibration_section, model)
        scales = {r["method"]: r["gradient_scale"] for r in report["calibration"]["rows"] if r["size"] == SIZE}
        timed("ort_cpu_range", ort_range_section, model, tmp, th, q)
        timed("stress", stress_section, model, scales, tmp, th, q)
        timed("dynamic_size", dynamic_section, model, q)
        timed("gradcampp", gradcampp_section, model, scales["gradcampp"], tmp, th, q)
        timed("near_zero", near_zero_section, model, scales["bagcams"], q)
    setup["seconds"] = round(time.perf_counter() - t0, 1)
    report = json_safe(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fp16_stress.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "fp16_stress.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
