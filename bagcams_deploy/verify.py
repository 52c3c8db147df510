"""``verify``: a deployment against the PyTorch reference, on fresh inputs, reported honestly.

The guided rule and every ReLU mask are discontinuous where an activation is near zero, so a
backend whose convolutions round differently (ONNX Runtime's fused kernels, half precision) flips a
few masks and moves the gradient there. The report therefore says how many pixels differ, by how
much, and whether boxes change, instead of a single pass/fail bit; tolerances decide the exit code.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import BagcamsError
from .export.contract import GraphInfo, read_graph_info
from .images import check_images
from .models.wsol import WSOLModel
from .outputs import json_safe
from .preprocessing import image_path_list, load_image, preprocess
from .runtime.base import Backend, run_input_size, score_maps
from .runtime.torch_backends import TorchReferenceBackend

IOU_THRESHOLDS = (0.2, 0.5, 0.8)
HOST_MAP_SOURCE = "host aggregation of features and gradients (the graph has no cam output)"


@dataclass
class Tolerances:
    """Per-image bars a deployment must meet (defaults: float32-tight)."""

    map_pearson: float = 0.9995
    map_pixels_off: float = 0.01  # at most this share of pixels ...
    map_pixel_delta: float = 0.01  # ... may differ by more than this
    map_iou50: float = 0.99
    gradient_rel_l2: float = 5e-3
    logits_rel_l2: float = 1e-4
    features_rel_l2: float = 1e-4
    box_iou: float = 0.9

    @classmethod
    def for_precision(cls, precision: str) -> Tolerances:
        """Half-precision graphs: the bars of the reduced-precision goal (Pearson 0.995, IoU 0.95).

        ``tf32``: a float32 graph whose convolutions run in TF32 (TensorRT's and cuDNN's default on
        Ampere and later). The maps keep the float32 bars; gradients, logits and features get the
        half-precision ones, 4-10x above the worst of ``benchmarks/tf32_emulation.py`` (gradients
        2.6e-2, logits 4.4e-4, features 1.0e-3 relative L2)."""
        if precision == "tf32":
            return cls(gradient_rel_l2=0.1, logits_rel_l2=5e-3, features_rel_l2=5e-3)
        if precision in ("fp16", "bf16"):
            return cls(
                map_pearson=0.995,
                map_pixels_off=0.10,
                map_iou50=0.95,
                gradient_rel_l2=0.1,
                logits_rel_l2=5e-3,
                features_rel_l2=5e-3,
                box_iou=0.8,
            )
        return cls()


@dataclass
class ImageReport:
    index: int
    source: str
    class_id: int
    score: float
    argmax_agrees: bool
    logits_rel_l2: float
    features_rel_l2: float
    gradients_rel_l2: float | None
    gradients_max_abs: float | None
    map_max_abs: float
    map_pearson: float
    map_pixels_off: float
    map_iou: dict[str, float]
    box_iou: float
    boxes_equal: bool
    failures: list[str] = field(default_factory=list)


@dataclass
class VerifyReport:
    model: str
    backend: str
    reference: str
    method: str
    target_layer: str
    precision: str
    seed: int
    tolerances: Tolerances
    images: list[ImageReport]
    frozen_gradient: bool
    nonpositive_scores: list[int]
    failures: list[str]
    map_source: str = "cam output"  # or the host aggregation, for graphs exported with --no-cam
    #: which bars judged it: the precision preset, or what the caller says (the CLI names overrides)
    bars: str = ""
    #: [H, W] the backend and the reference were fed (a dynamic-size graph runs at any size)
    input_size: list[int] | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        """Standard JSON values only: a non-finite measure (it fails its bar anyway) becomes null."""
        d = json_safe(asdict(self))
        d["passed"] = self.passed
        return d

    def checkpoint_mismatch(self) -> float | None:
        """The worst finite logits/features relative L2 when it is far past any rounding (> 1e-2): then
        the checkpoint is not the one the graph was made from, rather than a mask flip. Non-finite
        values are :meth:`non_finite_outputs`, not a mismatch."""
        finite = [v for i in self.images for v in (i.logits_rel_l2, i.features_rel_l2) if np.isfinite(v)]
        worst = max(finite, default=0.0)
        return worst if worst > 1e-2 else None

    def non_finite_outputs(self) -> bool:
        """Whether some logits/features comparison is NaN or infinite (e.g. half-precision overflow)."""
        return any(not np.isfinite(v) for i in self.images for v in (i.logits_rel_l2, i.features_rel_l2))

    def only_maps_fail(self) -> bool:
        """Whether every failure is the map's while logits, features, class and gradients all pass:
        then the graph computed the reference's network and gradient, and the map formula amplified a
        rounding difference (GradCAM++'s near-cancelling alpha denominator), not a wrong export."""
        failing = [i for i in self.images if i.failures]
        upstream = ("class_id_used", "logits", "features", "gradients")
        return (
            bool(failing)
            and not self.frozen_gradient
            and len(self.failures) == sum(len(i.failures) for i in failing)
            and all(not f.startswith(upstream) for i in failing for f in i.failures)
        )

    def worst(self) -> dict[str, float | int]:
        """The worst image on each measure (what accuracy tables report)."""
        imgs = self.images
        return {
            "images": len(imgs),
            "worst_map_pearson": min(i.map_pearson for i in imgs),
            "worst_iou50": min(i.map_iou["0.5"] for i in imgs),
            "worst_pixels_off": max(i.map_pixels_off for i in imgs),
            "worst_map_max_abs": max(i.map_max_abs for i in imgs),
            "worst_gradient_rel_l2": max(i.gradients_rel_l2 or 0.0 for i in imgs),
            "boxes_changed": sum(not i.boxes_equal for i in imgs),
            "worst_box_iou": min(i.box_iou for i in imgs),
        }


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||, the reference ``b`` setting the scale; where the reference is all zero and
    ``a`` is not, 1.0 (all of ``a`` is error: a zero gradient normalises to a zero map, any noise to a
    full-range one), so the measure stays finite and such a backend still fails."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = float(np.linalg.norm(a64 - b64))
    denom = float(np.linalg.norm(b64)) or float(np.linalg.norm(a64))
    return 0.0 if diff == 0 else diff / denom


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    sa, sb = a64.std(), b64.std()
    if sa == 0 or sb == 0:
        return 1.0 if np.array_equal(a64, b64) else 0.0
    return float(((a64 - a64.mean()) * (b64 - b64.mean())).mean() / (sa * sb))


def _mask_iou(a: np.ndarray, b: np.ndarray, t: float) -> float:
    ma, mb = a >= t, b >= t
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


def _box(score_map: np.ndarray) -> tuple[int, int, int, int]:
    from .evaluation.boxes import boxes_from_scoremap

    return tuple(int(v) for v in boxes_from_scoremap(score_map, 0.5, multi_contour=False)[0])  # type: ignore[return-value]


def _box_iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    from .evaluation.boxes import box_iou

    return float(box_iou(np.asarray([a]), np.asarray([b]))[0, 0])


def random_images(n: int, size: tuple[int, int], seed: int) -> np.ndarray:
    """Smooth random RGB scenes (low-frequency noise plus blobs), normalised: realistic activations."""
    return np.stack(list(_random_image_stream(n, size, seed)))


def _random_image_stream(n: int, size: tuple[int, int], seed: int) -> Iterator[np.ndarray]:
    """:func:`random_images` one normalised [3, H, W] image at a time (the same images)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = size
    for _ in range(n):
        base = rng.random((max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            r = int(rng.integers(max(h // 10, 2), max(h // 3, 3)))
            colour = tuple(float(v) for v in rng.random(3))
            cv2.circle(img, (int(cx), int(cy)), r, colour, -1)
        img += rng.normal(0, 0.03, img.shape).astype(np.float32)
        yield preprocess([np.uint8(np.clip(img, 0, 1) * 255)], size).numpy()[0]


def _batches(items: Iterator[tuple[np.ndarray, str]], size: int) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Images with their sources, ``size`` at a time as one array: only one batch is ever in memory
    (``verify --images`` of a 50,000-image folder used to pre-process every image into one array)."""
    while chunk := list(itertools.islice(items, size)):
        yield np.stack([image for image, _ in chunk]), [source for _, source in chunk]


def check_checkpoint_matches(graph: str | GraphInfo, model: WSOLModel) -> None:
    info = graph if isinstance(graph, GraphInfo) else read_graph_info(graph)
    if info.architecture != model.architecture or info.num_classes != model.num_classes:
        raise BagcamsError(
            f"checkpoint does not match {info.path}: graph is {info.architecture} with {info.num_classes} classes, "
            f"checkpoint is {model.architecture} with {model.num_classes}"
        )


def compare_outputs(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray], tol: Tolerances, sources: list[str]
) -> tuple[list[ImageReport], bool]:
    """Per-image comparison of a backend's outputs with the reference's; also detects a frozen gradient."""
    reports = []
    n = ref["logits"].shape[0]
    has_grad = "gradients" in got and "gradients" in ref
    for i in range(n):
        r_cam, g_cam = ref["cam"][i, 0], got["cam"][i, 0]
        diff = np.abs(r_cam.astype(np.float64) - g_cam.astype(np.float64))
        b_ref, b_got = _box(r_cam), _box(g_cam)
        rep = ImageReport(
            index=i,
            source=sources[i],
            class_id=int(ref["class_id_used"][i]),
            score=float(ref["logits"][i, int(ref["class_id_used"][i])]),
            argmax_agrees=bool(np.argmax(got["logits"][i]) == np.argmax(ref["logits"][i])),
            logits_rel_l2=_rel_l2(got["logits"][i], ref["logits"][i]),
            features_rel_l2=_rel_l2(got["features"][i], ref["features"][i]),
            gradients_rel_l2=_rel_l2(got["gradients"][i], ref["gradients"][i]) if has_grad else None,
            gradients_max_abs=float(np.abs(got["gradients"][i] - ref["gradients"][i]).max()) if has_grad else None,
            map_max_abs=float(diff.max()),
            map_pearson=_pearson(g_cam, r_cam),
            map_pixels_off=float((diff > tol.map_pixel_delta).mean()),
            map_iou={f"{t:.1f}": _mask_iou(g_cam, r_cam, t) for t in IOU_THRESHOLDS},
            box_iou=_box_iou(b_ref, b_got),
            boxes_equal=b_ref == b_got,
        )
        f = rep.failures
        if int(got["class_id_used"][i]) != rep.class_id:
            f.append(f"class_id_used {int(got['class_id_used'][i])} != {rep.class_id}")
        if not rep.logits_rel_l2 <= tol.logits_rel_l2:  # NaN fails too
            f.append(f"logits rel L2 {rep.logits_rel_l2:.2e} > {tol.logits_rel_l2:.0e}")
        if not rep.features_rel_l2 <= tol.features_rel_l2:
            f.append(f"features rel L2 {rep.features_rel_l2:.2e} > {tol.features_rel_l2:.0e}")
        if rep.gradients_rel_l2 is not None and not rep.gradients_rel_l2 <= tol.gradient_rel_l2:
            f.append(f"gradients rel L2 {rep.gradients_rel_l2:.2e} > {tol.gradient_rel_l2:.0e}")
        if not rep.map_pearson >= tol.map_pearson:
            f.append(f"map Pearson {rep.map_pearson:.5f} < {tol.map_pearson}")
        if not rep.map_pixels_off <= tol.map_pixels_off:
            f.append(
                f"{rep.map_pixels_off:.2%} of map pixels off by > {tol.map_pixel_delta} (max {tol.map_pixels_off:.0%})"
            )
        if not rep.map_iou["0.5"] >= tol.map_iou50:
            f.append(f"map IoU@0.5 {rep.map_iou['0.5']:.4f} < {tol.map_iou50}")
        if not rep.box_iou >= tol.box_iou:
            f.append(f"box IoU {rep.box_iou:.3f} < {tol.box_iou}")
        reports.append(rep)

    frozen = False
    if has_grad and n >= 2:
        # The classic failure of exporting autograd by tracing: the gradient is a constant of the graph.
        g, gr = got["gradients"].reshape(n, -1), ref["gradients"].reshape(n, -1)
        same_got = all(_rel_l2(g[i], g[0]) < 1e-6 for i in range(1, n))
        same_ref = all(_rel_l2(gr[i], gr[0]) < 1e-6 for i in range(1, n))
        frozen = same_got and not same_ref
    return reports, frozen


def judged_precision(backend: Backend) -> str:
    """The arithmetic a backend really runs (a TF32 engine of a float32 graph), else its graph's precision."""
    return getattr(backend, "math_precision", None) or getattr(getattr(backend, "info", None), "precision", "fp32")


def verify_backend(
    backend: Backend,
    model: WSOLModel,
    graph: str | os.PathLike,
    image_paths: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    num_random: int = 8,
    seed: int | None = None,
    tolerances: Tolerances | None = None,
    batch_size: int = 8,
    fp64_reference: bool = False,
    input_size: int | tuple[int, int] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Run ``backend`` and the reference on the same fresh random (+ given) images and compare
    (``on_batch(n)`` after each batch of ``n``, e.g. a progress bar's advance).

    ``fp64_reference`` computes the reference in float64: the ground truth where the float32
    reference's own rounding flips a ReLU mask (GradCAM++ and PCS are ill-conditioned, flat images
    sit on ties), so that a backend closer to the truth than the float32 reference is not failed.
    ``image_paths`` may be one file, and a folder stands for its image files, as ``--images`` does.
    ``input_size`` (an int is H = W) is for dynamic-size graphs, which can run at any size (default
    224x224); a fixed-size graph refuses any but its own (:func:`~bagcams_deploy.runtime.base.run_input_size`)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise BagcamsError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_random, bool) or not isinstance(num_random, int | np.integer):
        raise BagcamsError(f"num_random must be an integer, got {num_random!r}")
    spec = backend.spec
    if spec.architecture != model.architecture or spec.num_classes != model.num_classes:
        raise BagcamsError(
            f"checkpoint does not match {graph}: the model is {spec.architecture} with {spec.num_classes} classes, "
            f"the checkpoint {model.architecture} with {model.num_classes}"
        )
    size, _ = run_input_size(spec, input_size, graph)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0):
        raise BagcamsError(f"seed must be a non-negative integer (or None for a fresh one), got {seed!r}")
    paths = image_path_list(image_paths if image_paths is not None else [], "image_paths", expand_folders=True)
    precision = judged_precision(backend)
    tol = tolerances or Tolerances.for_precision(precision)
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else int(seed)
    if num_random <= 0 and not paths:
        raise BagcamsError("nothing to verify: give --images or --num-random > 0")
    check_images(paths)  # headers: an unreadable file fails now, not after the batches before it
    randoms = ((im, f"random#{i} (seed {seed})") for i, im in enumerate(_random_image_stream(num_random, size, seed)))
    files = ((preprocess([load_image(p)], size).numpy()[0], str(p)) for p in paths)
    batches = _batches(itertools.chain(randoms, files), batch_size)

    device = getattr(getattr(backend, "device", None), "type", "cpu")
    if fp64_reference:
        model = model.snapshot(torch.float64, "cpu")  # never the backend's own model, which stays float32
    elif getattr(backend, "model", None) is model and device != "cpu":
        # torch-reference on a GPU holds this very model there; the CPU reference must not move it back
        model = model.snapshot(torch.float32, "cpu")
    reference = TorchReferenceBackend(model, spec.method, spec.target_layer, input_size=spec.input_size,
                                      published_autograd=False)  # fmt: skip
    reports: list[ImageReport] = []
    frozen_any = False
    map_source = "cam output"
    start = 0
    for chunk, chunk_sources in batches:
        ref = reference.infer(chunk)
        got = backend.infer(chunk, ref["class_id_used"])
        if "cam" not in got and "gradients" in got:
            got = {**got, "cam": score_maps(spec, got, chunk.shape[2:])}
            map_source = HOST_MAP_SOURCE
        if "gradients" in got and spec.gradient_scale != 1.0:
            # The contract: the gradients output is the true gradient times gradient_scale.
            got = {**got, "gradients": got["gradients"] / np.float32(spec.gradient_scale)}
        missing = [k for k in ("logits", "class_id_used", "features", "cam") if k not in got]
        if missing:
            raise BagcamsError(f"{backend.name} returned no {', '.join(missing)} output")
        reps, frozen = compare_outputs(ref, got, tol, chunk_sources)
        for r in reps:
            r.index += start
        reports.extend(reps)
        frozen_any = frozen_any or frozen
        start += len(chunk)
        if on_batch is not None:
            on_batch(len(chunk))
    failures = [f"image {r.index} ({r.source}): {msg}" for r in reports for msg in r.failures]
    if frozen_any:
        failures.insert(
            0,
            "gradients are the same for every input (frozen by tracing?): the graph does not recompute them",
        )
    nonpos = [r.index for r in reports if r.score <= 0]
    return VerifyReport(
        model=graph,
        backend=backend.name,
        reference="torch-reference (float64)" if fp64_reference else "torch-reference",
        method=spec.method,
        target_layer=spec.target_layer,
        precision=precision,
        seed=seed,
        tolerances=tol,
        images=reports,
        frozen_gradient=frozen_any,
        nonpositive_scores=nonpos if spec.method == "bagcams" else [],
        failures=failures,
        map_source=map_source,
        bars=f"{precision} preset" if tolerances is None else "given by the caller",
        input_size=list(size),
    )
